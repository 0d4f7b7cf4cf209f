//! Warm handout latency with several replicas (shared mode) against the
//! single-process path, same run, loopback only.
//!
//! The API server is the fake of `tests/kube_api` (a real one cannot be had
//! here), its every answer delayed by 0, 2 or 10 ms (a real API server's
//! range for a small write). For each delay, each of:
//!
//! - `single`: one binderd on the kubernetes backend without shared mode:
//!   a handout pops the local queue (no API call);
//! - `shared x1`, `shared x3`: one or three replicas in shared mode: a
//!   handout pops the local queue and claims the pod (one PATCH fenced by
//!   its `resourceVersion`);
//!
//! binderd processes with a pool of `BENCH_REPLICAS_POOL` warm pods (default
//! 24), then as many sequential `POST /binders` (round robin over the
//! replicas, one keep-alive connection each), all warm. p50 and p99, and
//! the ratio of p50 to `single`'s at the same delay.
//!
//! `cargo bench --bench replicas`

#[path = "../tests/kube_api/mod.rs"]
mod kube_api;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use kube_api::KubeApi;
use support::{free_port, wait_listening};

const KEY: &str = "bench-admin-key";

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_replica(
    dir: &std::path::Path,
    name: &str,
    shared: bool,
    pool: u32,
) -> (Child, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let data = dir.join(name);
    std::fs::create_dir_all(data.join("none")).unwrap();
    let config = dir.join(format!("{name}.toml"));
    let text = kube_api::replica_config(shared.then_some(name), pool, pool * 3, "");
    std::fs::write(
        &config,
        format!(
            "listen = \"{addr}\"\ndata_dir = \"{data}\"\nbindings_dir = \"{data}/none\"\n{text}",
            data = data.display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_binderd"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env("BINDERD_API_KEYS", format!("admin:{KEY}:admin"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the binderd binary");
    (Child(child), addr)
}

async fn connect(addr: SocketAddr) -> http1::SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn warm_count(sender: &mut http1::SendRequest<Empty<Bytes>>) -> u64 {
    let req = Request::get("/pools/nb")
        .header("host", "bench")
        .header("authorization", KEY)
        .body(Empty::new())
        .unwrap();
    sender.ready().await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    doc["available"].as_u64().unwrap_or(0)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// p50 and p99 of `pool` warm handouts over `replicas` replicas.
async fn measure(
    delay: Duration,
    replicas: usize,
    shared: bool,
    pool: u32,
) -> (Duration, Duration) {
    let api = KubeApi::start(env!("CARGO_BIN_EXE_binderd-standin")).await;
    api.expect_shared
        .store(shared, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "binderd-bench-replicas-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kubeconfig"), api.kubeconfig()).unwrap();
    let procs: Vec<(Child, SocketAddr)> = (0..replicas)
        .map(|i| start_replica(&dir, &format!("r{i}"), shared, pool))
        .collect();
    let mut senders = Vec::new();
    for (_, addr) in &procs {
        wait_listening(*addr).await;
        senders.push(connect(*addr).await);
    }
    // Every replica sees the whole pool warm (fills without the delay).
    let deadline = Instant::now() + Duration::from_secs(90);
    for s in senders.iter_mut() {
        while warm_count(s).await < u64::from(pool) {
            assert!(Instant::now() < deadline, "the pool did not fill");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    api.delay_us.store(
        delay.as_micros() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let mut took = Vec::new();
    for k in 0..pool as usize {
        let sender = &mut senders[k % replicas];
        let req = Request::post("/binders/nb")
            .header("host", "bench")
            .header("authorization", KEY)
            .body(Empty::new())
            .unwrap();
        sender.ready().await.unwrap();
        let began = Instant::now();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let _ = resp.into_body().collect().await.unwrap();
        took.push(began.elapsed());
        assert_eq!(status, 201, "a warm handout");
    }
    assert!(api.violations().is_empty(), "{:?}", api.violations());
    drop(senders);
    drop(procs);
    api.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    took.sort();
    (quantile(&took, 0.5), quantile(&took, 0.99))
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let pool: u32 = std::env::var("BENCH_REPLICAS_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    println!("warm handouts: {pool} per row, sequential, round robin over the replicas");
    println!("| API delay | path | p50 ms | p99 ms | p50 vs single |");
    println!("|---|---|---|---|---|");
    for delay_ms in [0u64, 2, 10] {
        let delay = Duration::from_millis(delay_ms);
        let (base50, base99) = measure(delay, 1, false, pool).await;
        println!(
            "| {delay_ms} ms | single (local allocator) | {} | {} | 1.00x |",
            ms(base50),
            ms(base99)
        );
        for replicas in [1usize, 3] {
            let (p50, p99) = measure(delay, replicas, true, pool).await;
            println!(
                "| {delay_ms} ms | shared x{replicas} (claim per handout) | {} | {} | {:.1}x |",
                ms(p50),
                ms(p99),
                p50.as_secs_f64() / base50.as_secs_f64()
            );
        }
    }
}
