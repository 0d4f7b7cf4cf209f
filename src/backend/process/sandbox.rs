//! `binderd sandbox`: the part of the process backend that runs inside a
//! binder's sandbox, between bubblewrap and the binding's command.
//!
//! It sets the binder's limits on itself (open files, processes, memory per
//! process: rlimits, inherited by everything the command starts), drops to
//! the binder's own uid when it was started as root, and then either
//!
//! - **relays** (the binder has a network namespace of its own, loopback
//!   only): its standard input is a TCP listener binderd bound on the host's
//!   loopback, and each connection accepted there is joined to the
//!   command's server on `127.0.0.1:{port}` inside the namespace. Only
//!   binderd reaches that listener's address (other binders have no route to
//!   the host's loopback), so this is how binderd, and nothing else, reaches
//!   the server; or
//! - **execs** the command in its own place (no network namespace: the
//!   command binds the host's loopback port itself).
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
    for (resource, value, name) in [
        (Resource::RLIMIT_NOFILE, args.nofile, "open files"),
        (Resource::RLIMIT_NPROC, args.nproc, "processes"),
        (Resource::RLIMIT_DATA, args.memory, "memory"),
        (Resource::RLIMIT_CORE, 0, "core dumps"),
    ] {
        setrlimit(resource, value, value)
            .map_err(|e| format!("cannot limit {name} to {value}: {e}"))?;
    }
    // Set-uid programs stay what they are for the command and everything it
    // starts: no way back to root (or to any capability) by exec.
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    let (program, rest) = args.command.split_first().ok_or("no command to run")?;
    let mut command = std::process::Command::new(program);
    command.args(rest);
    if let (Some(uid), Some(gid)) = (args.uid, args.gid) {
        // std drops the supplementary groups too when it changes uid as root.
        command.uid(uid).gid(gid);
    }
    let Some(port) = args.relay else {
        let e = command.exec();
        return Err(format!("cannot run '{program}': {e}"));
    };
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
        .map_err(|e| format!("cannot run '{program}': {e}"))?;
    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let status = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let relay = async {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
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
