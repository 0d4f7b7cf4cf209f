//! A kernel's frames are acknowledged at once by binderd: a real Jupyter
//! server (process backend) runs cells through binderd's proxy for a plain
//! client, and right after each cell the test reads, from `/proc/net/tcp`,
//! the ACK mode of every TCP connection binderd holds towards containers.
//! The mechanism, not a timing: each must be in quick-ACK mode (Linux's
//! "pingpong" bit clear: it ACKs as segments arrive, not after the 40 ms
//! delayed-ACK timer). The control is the test's own client socket, which
//! nothing re-arms: it must be seen in delayed-ACK mode at least once, or the
//! check could not have failed.
//!
//! Alone in its test binary: it reads the sockets of its own process (the
//! in-process binderd's and its client's), so no other test may hold any.

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::json;

/// Inodes of this process's sockets.
fn own_sockets() -> HashSet<u64> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// One established IPv4 connection of this process: its ports and whether
/// Linux has it in delayed-ACK ("pingpong") mode.
#[derive(Debug)]
struct Conn {
    local: u16,
    remote: u16,
    delaying_acks: bool,
}

fn own_connections() -> Vec<Conn> {
    let ours = own_sockets();
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next().unwrap(), 16).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retr uid timeout inode ref ptr rto ato quick|pingpong
            let inode: u64 = f.get(9)?.parse().ok()?;
            let quick: u32 = f.get(14)?.parse().ok()?;
            (f[3] == "01" && ours.contains(&inode)).then(|| Conn {
                local: port(f[1]),
                remote: port(f[2]),
                delaying_acks: quick & 1 == 1,
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binderd_acks_a_kernels_frames_at_once() {
    let Some(venv) = venv() else { return };
    let data = DataDir::new("quick-ack");
    let server = Server::start(test_config(&data)).await;
    let http = Http::new();
    let base = server.url("");
    // One binder, no refill after the handout: no readiness checks run
    // while the connections are looked at.
    let mut binding = jupyter_binding(&venv, "ack", 1);
    binding["pool"] = json!({"min": 1, "max": 1});
    create_binding(&http, &base, &binding).await;
    wait_pool(&http, &base, "ack", 90, |p| p["available"] == 1).await;
    let (_, location) = hand_out(&http, &base, "ack", None).await;
    let kernel = http
        .post_json(&format!("{base}{location}api/kernels"), None, &json!({}))
        .await;
    assert_eq!(kernel.status, 201, "{}", kernel.body);
    let id = kernel.json()["id"].as_str().unwrap().to_owned();
    let url = format!(
        "{}{location}api/kernels/{id}/channels?session_id=t",
        base.replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, None, true)
        .await
        .unwrap();
    let binderd_port = server.addr.port();
    let mut client_delayed = 0;
    for cell in 0..12 {
        let output = execute_on(&mut ws, "print(6*7)").await;
        // At once: a delayed ACK would be sent (and the mode left) within
        // 40 ms.
        let conns = own_connections();
        assert_eq!(output, "42\n");
        let towards_containers: Vec<&Conn> = conns
            .iter()
            .filter(|c| c.local != binderd_port && c.remote != binderd_port)
            .collect();
        assert!(
            !towards_containers.is_empty(),
            "no connection to the container found: {conns:?}"
        );
        for c in &towards_containers {
            assert!(
                !c.delaying_acks,
                "cell {cell}: binderd's connection {c:?} delays its ACKs"
            );
        }
        let client = conns
            .iter()
            .find(|c| c.remote == binderd_port && c.delaying_acks);
        client_delayed += usize::from(client.is_some());
    }
    assert!(
        client_delayed > 0,
        "the plain client never delayed an ACK: the check above proves nothing here"
    );
    let _ = ws.close(None).await;
    server.stop().await;
}
