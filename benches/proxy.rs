//! The proxy's cost: HTTP throughput and latency of `GET {location}api/status`
//! through binderd vs straight to the same stand-in server, and WebSocket
//! round trips through binderd vs straight to it, all in one run.
//!
//! `cargo bench --bench proxy` (`BENCH_REQUESTS` default 20000,
//! `BENCH_CONNECTIONS` default 32, `BENCH_WS_MESSAGES` default 2000).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use binderd::auth::{ApiKey, Role};
use binderd::backend::process::ProcessBackend;
use binderd::config::Config;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use support::cpu_seconds;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "bench-admin-key";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn connect(addr: SocketAddr) -> http1::SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// `n` GETs of `path` over `conns` keep-alive connections.
async fn load(addr: SocketAddr, path: String, n: usize, conns: usize) -> (f64, Vec<Duration>) {
    let mut tasks = Vec::new();
    let t = Instant::now();
    for i in 0..conns {
        let share = n / conns + usize::from(i < n % conns);
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            let mut lat = Vec::with_capacity(share);
            for _ in 0..share {
                sender.ready().await.unwrap();
                let req = Request::get(path.as_str())
                    .header("host", "bench")
                    .body(Empty::new())
                    .unwrap();
                let t = Instant::now();
                let resp = sender.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let _ = resp.into_body().collect().await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(n);
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let rps = n as f64 / t.elapsed().as_secs_f64();
    all.sort();
    (rps, all)
}

async fn ws_round_trips(url: &str, n: usize) -> Vec<Duration> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!("ping {i}");
        let t = Instant::now();
        ws.send(Message::text(text.clone())).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        lat.push(t.elapsed());
        assert_eq!(back.into_text().unwrap().as_str(), text);
    }
    let _ = ws.close(None).await;
    lat.sort();
    lat
}

/// The pid of the stand-in started with `--port {port}`.
fn standin_pid(port: u16) -> String {
    let port = port.to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args
            .windows(2)
            .any(|w| w[0] == b"--port" && w[1] == port.as_bytes())
        {
            return entry.file_name().to_string_lossy().into_owned();
        }
    }
    panic!("no stand-in on port {port}");
}

/// `load`, also returning the CPU µs per request of this process (the load
/// generator, and binderd when it is in the path) and of the stand-in.
async fn load_cpu(
    addr: SocketAddr,
    path: String,
    n: usize,
    conns: usize,
    standin: &str,
) -> (f64, Vec<Duration>, f64, f64) {
    let (me0, s0) = (cpu_seconds("self"), cpu_seconds(standin));
    let (rps, lat) = load(addr, path, n, conns).await;
    let per = |d: f64| d / n as f64 * 1e6;
    let me = per(cpu_seconds("self") - me0);
    let st = per(cpu_seconds(standin) - s0);
    (rps, lat, me, st)
}

fn pct(v: &[Duration], q: f64) -> f64 {
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e6
}

struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        ProcessBackend::kill_all(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::main]
async fn main() {
    let n = env("BENCH_REQUESTS", 20_000);
    let conns = env("BENCH_CONNECTIONS", 32);
    let ws_n = env("BENCH_WS_MESSAGES", 2_000);
    let data_dir = std::env::temp_dir().join(format!("binderd-bench-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let _cleanup = Cleanup(data_dir.clone());
    let mut config = Config::new(&data_dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    // Measuring binderd's own path: no rate limits.
    config.rate_limit.anonymous_per_minute = 0;
    config.rate_limit.global_per_second = 0;
    config.api_keys = vec![ApiKey::new("admin", KEY, Role::Admin)];
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(binderd::run(config, listener, async {
        let _ = stopped.await;
    }));

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut admin, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = serde_json::json!({
        "name": "proxied",
        "command": [env!("CARGO_BIN_EXE_binderd-standin"), "--port", "{port}", "--base-url", "{base_url}"],
        "public": true,
        "pool": {"min": 0, "max": 1},
    });
    let send = |method: &str, path: &str, body: String| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", "bench")
            .header("authorization", KEY)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let resp = admin
        .send_request(send("POST", "/bindings", body.to_string()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let _ = resp.into_body().collect().await;
    admin.ready().await.unwrap();
    let resp = admin
        .send_request(send("POST", "/api/spawn/", String::new()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let doc: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let location = doc["url"].as_str().unwrap().to_owned();
    let mut probe = connect(addr).await;
    let req = Request::get(format!("{location}api/status"))
        .header("host", "bench")
        .body(Empty::new())
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(
        &probe
            .send_request(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes(),
    )
    .unwrap();
    let direct: SocketAddr = format!("127.0.0.1:{}", status["port"]).parse().unwrap();
    let path = format!("{location}api/status");

    // Warm both paths, then measure direct, proxied, direct again.
    load(direct, path.clone(), 2_000, conns).await;
    load(addr, path.clone(), 2_000, conns).await;
    let standin = standin_pid(direct.port());
    let (d1, d_lat, d_me1, d_st1) = load_cpu(direct, path.clone(), n, conns, &standin).await;
    let (p_rps, p_lat, p_me, p_st) = load_cpu(addr, path.clone(), n, conns, &standin).await;
    let (d2, _, d_me2, d_st2) = load_cpu(direct, path.clone(), n, conns, &standin).await;
    let d_rps = (d1 + d2) / 2.0;
    let (d_me, d_st) = ((d_me1 + d_me2) / 2.0, (d_st1 + d_st2) / 2.0);
    println!("HTTP GET {{location}}api/status, {n} requests over {conns} connections");
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>22}",
        "", "req/s", "p50 µs", "p99 µs", "CPU µs/req: bench, stand-in"
    );
    println!(
        "{:<24} {:>10.0} {:>10.0} {:>10.0} {:>14.1} {:>9.1}",
        "direct (stand-in)",
        d_rps,
        pct(&d_lat, 0.5),
        pct(&d_lat, 0.99),
        d_me,
        d_st
    );
    println!(
        "{:<24} {:>10.0} {:>10.0} {:>10.0} {:>14.1} {:>9.1}",
        "through binderd",
        p_rps,
        pct(&p_lat, 0.5),
        pct(&p_lat, 0.99),
        p_me,
        p_st
    );
    // The bench process is the load generator plus binderd: binderd's part is
    // what it costs beyond the direct run's.
    let binderd = p_me - d_me;
    println!(
        "binderd's proxying: {:.1} CPU µs per request = {:.2}x the stand-in's own serving ({:.1} µs); \
         all CPU per request {:.1} µs direct vs {:.1} µs proxied",
        binderd,
        binderd / d_st,
        d_st,
        d_me + d_st,
        p_me + p_st
    );
    println!(
        "proxied/direct throughput: {:.2}x   (target ≥ 0.80x)",
        p_rps / d_rps
    );

    let ws_path = format!("{location}ws");
    ws_round_trips(&format!("ws://{direct}{ws_path}"), 200).await;
    ws_round_trips(&format!("ws://{addr}{ws_path}"), 200).await;
    let d = ws_round_trips(&format!("ws://{direct}{ws_path}"), ws_n).await;
    let p = ws_round_trips(&format!("ws://{addr}{ws_path}"), ws_n).await;
    println!();
    println!("WebSocket echo round trip, {ws_n} messages one at a time");
    println!("{:<24} {:>10} {:>10}", "", "p50 µs", "p99 µs");
    println!(
        "{:<24} {:>10.0} {:>10.0}",
        "direct (stand-in)",
        pct(&d, 0.5),
        pct(&d, 0.99)
    );
    println!(
        "{:<24} {:>10.0} {:>10.0}",
        "through binderd",
        pct(&p, 0.5),
        pct(&p, 0.99)
    );
    println!("proxied/direct p50: {:.2}x", pct(&p, 0.5) / pct(&d, 0.5));

    let _ = stop.send(());
    let _ = server.await;
}
