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
//! With `--log-max` it also stays behind (relaying or not) and copies the
//! command's output into the binder's log, keeping the file under that size.
//!
//! Staying behind, it is the command's parent: it waits for it and exits with
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
    /// Keep the command's output (our standard output, the binder's log
    /// file) under this many bytes: past it the file starts again.
    #[arg(long)]
    pub log_max: Option<u64>,
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
        if let Some(max) = self.log_max {
            args.extend(["--log-max".into(), max.to_string()]);
        }
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
    if args.relay.is_none() && args.log_max.is_none() {
        return Err(exec(&args));
    }
    // Staying behind to relay or to keep the log in bounds, this process
    // keeps its own limits (binderd's connections are not the binder's open
    // files): the command starts through this same helper once more, as
    // neither, which limits itself and then execs it.
    let mut command = myself_as_the_command(&args)?;
    // The listener is our standard input; the command gets none.
    let relay = match args.relay {
        Some(port) => Some((
            listener_on_stdin()?,
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        )),
        None => None,
    };
    let log = match args.log_max {
        Some(max) => Some(Log::new(max)?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the helper: {e}"))?;
    // SIGTERM is caught before the command starts (a handler, not an
    // ignored disposition, which the command would inherit).
    let term = {
        let _entered = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("cannot catch SIGTERM: {e}"))?
    };
    command.stdin(Stdio::null());
    if log.is_some() {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start the command's sandbox: {e}"))?;
    let status = runtime.block_on(stay_behind(child, relay, log, term));
    let status = status.map_err(|e| format!("waiting for the command: {e}"))?;
    Ok(exit_code(status))
}

/// This helper once more, without `--relay` and `--log-max`: it limits
/// itself and becomes the command.
fn myself_as_the_command(args: &SandboxArgs) -> Result<std::process::Command, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    let mut command = std::process::Command::new(me);
    command.arg("sandbox").args(
        SandboxArgs {
            relay: None,
            log_max: None,
            ..args.clone()
        }
        .to_args(),
    );
    Ok(command)
}

/// The TCP listener binderd gave us as standard input, non-blocking.
fn listener_on_stdin() -> Result<std::net::TcpListener, String> {
    let listener = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::net::TcpListener::from)
        .map_err(|e| format!("no listener on standard input: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    Ok(listener)
}

/// The helper's life as the command's parent: relays connections from the
/// listener to `upstream` (with `relay`), copies the command's outputs
/// into `log` (with one), and waits for the command through any SIGTERM.
async fn stay_behind(
    mut child: std::process::Child,
    relay: Option<(std::net::TcpListener, SocketAddr)>,
    log: Option<Log>,
    mut term: tokio::signal::unix::Signal,
) -> std::io::Result<std::process::ExitStatus> {
    let pumps = match (log, child.stdout.take(), child.stderr.take()) {
        (Some(log), Some(out), Some(err)) => {
            let log = std::sync::Arc::new(std::sync::Mutex::new(log));
            vec![
                tokio::spawn(pump(out, log.clone())),
                tokio::spawn(pump(err, log)),
            ]
        }
        _ => Vec::new(),
    };
    let relay = async {
        match relay {
            Some((listener, upstream)) => accept_and_join(listener, upstream).await,
            None => std::future::pending().await,
        }
    };
    let terms = async { while term.recv().await.is_some() {} };
    let wait = tokio::task::spawn_blocking(move || child.wait());
    let status = tokio::select! {
        status = wait => status.map_err(std::io::Error::other)?,
        r = relay => {
            r?;
            unreachable!("the relay loop does not end")
        }
        () = terms => unreachable!("signals do not end"),
    };
    // What the command wrote last (why it could not start, say) reaches
    // the log, unless what it left running keeps the pipes open.
    for p in pumps {
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), p).await;
    }
    status
}

/// Accepts connections on `listener` and joins each to `upstream`; ends
/// only if the listener cannot be used at all.
async fn accept_and_join(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
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
}

/// The helper's exit code for the command's `status`: its code, or 128 +
/// the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    match status.code() {
        Some(code) => ExitCode::from(code.clamp(0, 255) as u8),
        None => {
            let signal = std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0);
            ExitCode::from(128 + signal.clamp(0, 127) as u8)
        }
    }
}

/// The binder's log file (our standard output), kept under `max` bytes: a
/// write that would pass it starts the file again, with a line saying so.
struct Log {
    file: std::fs::File,
    written: u64,
    max: u64,
}

impl Log {
    fn new(max: u64) -> Result<Log, String> {
        let file = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map(std::fs::File::from)
            .map_err(|e| format!("no log on standard output: {e}"))?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Log { file, written, max })
    }

    fn write(&mut self, bytes: &[u8]) {
        use std::io::{Seek, Write};
        if self.written + bytes.len() as u64 > self.max {
            let _ = self.file.set_len(0);
            let _ = self.file.rewind();
            let note = format!(
                "[binderd: the log passed {} bytes and starts again]\n",
                self.max
            );
            let _ = self.file.write_all(note.as_bytes());
            self.written = note.len() as u64;
        }
        let keep = bytes
            .len()
            .min(self.max.saturating_sub(self.written) as usize);
        if self.file.write_all(&bytes[..keep]).is_ok() {
            self.written += keep as u64;
        }
    }
}

/// Copies one of the command's outputs into the log until it closes.
async fn pump(output: impl AsFd, log: std::sync::Arc<std::sync::Mutex<Log>>) {
    use tokio::io::AsyncReadExt;
    let Ok(fd) = output.as_fd().try_clone_to_owned() else {
        return;
    };
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut log) = log.lock() {
                    log.write(&buf[..n]);
                }
            }
        }
    }
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
    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // The relay reads what the server sends: it acknowledges at once, or a
    // server with Nagle on (Jupyter's WebSockets) waits out its delayed ACKs.
    let mut server = crate::tcp::QuickAck(server);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
