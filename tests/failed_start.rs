//! binderd that cannot serve says so: `run` returns an error and `binderd
//! serve` exits non-zero with the reason, instead of stopping as after a
//! clean shutdown. Both failures are real: a socket that was never told to
//! listen, and the proxy's event loops refused their file descriptors.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A listener whose `accept` can never succeed (bound, never listening):
/// `run` ends with the reason rather than retrying forever.
#[tokio::test]
async fn a_listener_that_cannot_accept_ends_run_with_an_error() {
    let data = DataDir::new("unlistened");
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    rustix::net::bind(&socket, &any).unwrap();
    let socket = std::net::TcpListener::from(socket);
    socket.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(socket).unwrap();

    let ran = tokio::time::timeout(
        Duration::from_secs(20),
        binderd::run(test_config(&data), listener, std::future::pending()),
    )
    .await
    .expect("binderd kept running on a listener that cannot accept");
    let e = ran.expect_err("run returned Ok without having served");
    assert!(
        matches!(e, binderd::Error::Serve(binderd::ServeError::Listener(_))),
        "{e}"
    );
    assert_eq!(e.exit_code(), 70);
    assert!(e.to_string().contains("cannot accept"), "{e}");
}

/// How one `binderd serve` under a file-descriptor limit ended.
enum Attempt {
    /// It failed before its event loops (the store, the runtime...).
    Earlier,
    /// Its event loops could not start: its exit code and stderr.
    EventLoops(Option<i32>, String),
    /// It got past them and serves.
    Served,
}

/// `binderd serve` with at most `fds` file descriptors.
fn serve_with_fds(fds: u32) -> Attempt {
    let data = DataDir::new("fds");
    let log = data.0.join("binderd.log");
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -n \"$0\" && exec \"$@\""])
        .arg(fds.to_string())
        .arg(binderd_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data.0)
        .current_dir(&data.0)
        .env_remove("BINDERD_API_KEYS")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    if stderr.contains("cannot start the proxy's event loops") {
        return Attempt::EventLoops(status.and_then(|s| s.code()), stderr);
    }
    match status {
        Some(status) => {
            assert!(
                !status.success(),
                "with {fds} fds binderd exited 0 without having served: {stderr}"
            );
            Attempt::Earlier
        }
        // Still running: its event loops started (it may not accept for
        // want of descriptors, but it got past them).
        None => Attempt::Served,
    }
}

/// The proxy's event loops are runtimes of their own, each with its epoll
/// and event fds: with the descriptors for everything before them but not
/// for those, `binderd serve` exits 70 and names the reason, never 0.
#[test]
fn event_loops_that_cannot_start_exit_non_zero_with_the_reason() {
    for fds in 8..=256 {
        match serve_with_fds(fds) {
            Attempt::Earlier => continue,
            Attempt::EventLoops(code, stderr) => {
                assert_eq!(code, Some(70), "with {fds} fds: {stderr}");
                let last = stderr.trim().lines().last().unwrap_or_default();
                assert!(
                    last.starts_with("binderd: serving: cannot start the proxy's event loops"),
                    "with {fds} fds: {stderr}"
                );
                return;
            }
            Attempt::Served => {
                panic!("with {fds} fds binderd started its event loops, with one fewer it did not reach them")
            }
        }
    }
    panic!("binderd did not start even with 256 file descriptors");
}
