//! `binderd sandbox`: the part of the process backend that runs inside a
//! binder's sandbox, between bubblewrap and the binding's command.
//!
//! It becomes the command ([`exec`]): it sets the binder's limits on
//! itself (open files, processes of the binder's uid, data memory per
//! process, no core dumps: rlimits, inherited by everything the command
//! starts), sets `no_new_privs`, drops to the binder's own uid when it was
//! started as root, and execs the command. With `--relay` (the binder has a
//! network namespace of its own, loopback only) it first stays behind as a
//! relay, without those limits (binderd's connections are not the binder's
//! open files), and starts itself once more without `--relay` to become the
//! command: its standard input is a TCP listener binderd bound on the host's
//! loopback, and each connection accepted there is joined to the command's
//! server on `127.0.0.1:{port}` inside the namespace. Only binderd reaches
//! that listener's address (binders have no route to the host's loopback),
//! so this is how binderd, and nothing else, reaches the server.
//!
//! Relaying, it stays the command's parent: it waits for it and exits with
//! its status, and on SIGTERM it waits for the command (which binderd
//! signals too) instead of dying first and taking the namespace down before
//! the command has shut down.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{ExitCode, Stdio};

use nix::sys::resource::{setrlimit, Resource};

/// The helper's arguments, as the process backend passes them.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct SandboxArgs {
    /// Relay connections accepted on the listener given as standard input
    /// to 127.0.0.1:PORT (inside the binder's network namespace).
    #[arg(long)]
    pub relay: Option<u16>,
    /// Run the command as this uid (and gid): binderd started as root.
    #[arg(long)]
    pub uid: Option<u32>,
    #[arg(long)]
    pub gid: Option<u32>,
    /// Open files per process.
    #[arg(long)]
    pub nofile: u64,
    /// Processes and threads of the binder's uid.
    #[arg(long)]
    pub nproc: u64,
    /// Bytes of data (heap and private writable mappings) per process.
    #[arg(long)]
    pub memory: u64,
    /// The binding's command.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

impl SandboxArgs {
    /// The arguments after `binderd sandbox`, for the backend to pass.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(port) = self.relay {
            args.extend(["--relay".into(), port.to_string()]);
        }
        if let (Some(uid), Some(gid)) = (self.uid, self.gid) {
            args.extend(["--uid".into(), uid.to_string()]);
            args.extend(["--gid".into(), gid.to_string()]);
        }
        args.extend(["--nofile".into(), self.nofile.to_string()]);
        args.extend(["--nproc".into(), self.nproc.to_string()]);
        args.extend(["--memory".into(), self.memory.to_string()]);
        args.push("--".into());
        args.extend(self.command.iter().cloned());
        args
    }
}

/// Runs the helper; its exit status is the command's.
pub fn main(args: SandboxArgs) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("binderd sandbox: {e}");
            ExitCode::from(125)
        }
    }
}

fn run(args: SandboxArgs) -> Result<ExitCode, String> {
    let Some(port) = args.relay else {
        return Err(exec(&args));
    };
    // The relay keeps its own limits (binderd's connections are not the
    // binder's open files): the command starts through this same helper
    // once more, without `--relay`, which limits itself and then execs it.
    let me = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    let mut command = std::process::Command::new(me);
    command.arg("sandbox").args(
        SandboxArgs {
            relay: None,
            ..args.clone()
        }
        .to_args(),
    );
    // The listener is our standard input; the command gets none.
    let listener = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::net::TcpListener::from)
        .map_err(|e| format!("no listener on standard input: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the relay: {e}"))?;
    // SIGTERM is caught before the command starts (a handler, not an
    // ignored disposition, which the command would inherit).
    let mut term = {
        let _entered = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("cannot catch SIGTERM: {e}"))?
    };
    let mut child = command
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the command's sandbox: {e}"))?;
    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let status = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let relay = async {
            loop {
                let client = match listener.accept().await {
                    Ok((client, _)) => client,
                    // Out of descriptors or memory for a moment: no spinning.
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                tokio::spawn(join(client, upstream));
            }
        };
        let terms = async { while term.recv().await.is_some() {} };
        let wait = tokio::task::spawn_blocking(move || child.wait());
        tokio::select! {
            status = wait => status.map_err(std::io::Error::other)?,
            () = relay => unreachable!("the relay loop does not end"),
            () = terms => unreachable!("signals do not end"),
        }
    });
    let status = status.map_err(|e| format!("waiting for the command: {e}"))?;
    Ok(match status.code() {
        Some(code) => ExitCode::from(code.clamp(0, 255) as u8),
        None => {
            let signal = std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0);
            ExitCode::from(128 + signal.clamp(0, 127) as u8)
        }
    })
}

/// Limits this process, gives up privileges, and becomes the command;
/// returns only why it could not.
fn exec(args: &SandboxArgs) -> String {
    for (resource, value, name) in [
        (Resource::RLIMIT_NOFILE, args.nofile, "open files"),
        (Resource::RLIMIT_NPROC, args.nproc, "processes"),
        (Resource::RLIMIT_DATA, args.memory, "memory"),
        (Resource::RLIMIT_CORE, 0, "core dumps"),
    ] {
        if let Err(e) = setrlimit(resource, value, value) {
            return format!("cannot limit {name} to {value}: {e}");
        }
    }
    // Set-uid programs stay what they are for the command and everything it
    // starts: no way back to root (or to any capability) by exec.
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        return format!("cannot set no_new_privs: {e}");
    }
    let Some((program, rest)) = args.command.split_first() else {
        return "no command to run".into();
    };
    let mut command = std::process::Command::new(program);
    command.args(rest);
    if let (Some(uid), Some(gid)) = (args.uid, args.gid) {
        // std drops the supplementary groups too when it changes uid as root.
        command.uid(uid).gid(gid);
    }
    let e = command.exec();
    format!("cannot run '{program}': {e}")
}

/// Joins one accepted connection to the server; a server not listening yet
/// closes the client's connection (binderd's readiness check then retries).
async fn join(mut client: tokio::net::TcpStream, upstream: SocketAddr) {
    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
