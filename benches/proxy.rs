//! The proxy's cost against the proxy a user could put there instead: HTTP
//! throughput and latency of `GET {location}api/status` straight to a
//! stand-in server, through nginx (Debian's package, started here with a
//! config written here: two workers, upstream keepalive, WebSocket upgrade)
//! and through binderd (the release binary, its own process like nginx), at
//! 1, 32 and 256 keep-alive connections; then WebSocket echo round trips
//! through each. All three proxy the same stand-in; the load generator is
//! this process. Prints ratios to nginx, and each proxy's CPU per request.
//!
//! `cargo bench --bench proxy` (`BENCH_REQUESTS` per run, default 20000;
//! `BENCH_ROUNDS`, default 3; `BENCH_CONNECTIONS`, default `1,32,256`;
//! `BENCH_WS_MESSAGES`, default 2000). Without nginx on the PATH (or in
//! /usr/sbin) its column is skipped: `apt-get install nginx-light`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use binderd::backend::process::ProcessBackend;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use support::{cpu_seconds, free_port, wait_listening};
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

/// `n` GETs of `path` over `conns` keep-alive connections, timed from
/// when every connection is open (a burst of connects is not what is
/// measured: on loopback a SYN dropped in it costs a one-second retry).
async fn load(addr: SocketAddr, path: String, n: usize, conns: usize) -> (f64, Vec<Duration>) {
    let mut tasks = Vec::new();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(conns + 1));
    for i in 0..conns {
        let share = n / conns + usize::from(i < n % conns);
        let path = path.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            start.wait().await;
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
    start.wait().await;
    let t = Instant::now();
    let mut all = Vec::with_capacity(n);
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let rps = n as f64 / t.elapsed().as_secs_f64();
    all.sort();
    (rps, all)
}

async fn ws_round_trips(url: &str, n: usize) -> Vec<Duration> {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .unwrap();
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

/// The targets' order in a round: reversed every other round, so no target
/// always runs first (and the machine's drift falls on all alike).
fn alternating(round: usize, targets: usize) -> Vec<usize> {
    if round.is_multiple_of(2) {
        (0..targets).collect()
    } else {
        (0..targets).rev().collect()
    }
}

fn pct(v: &[Duration], q: f64) -> f64 {
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e6
}

/// Kills the stand-in binderd started (its data dir is `{0}/data`) and
/// removes the folder, even if the bench panics.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        ProcessBackend::kill_all(&self.0.join("data"));
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills a child process on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master then stops its workers too.
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx_binary() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([std::path::PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// nginx as a user would put it in front of one server: two workers (this
/// machine's cores), HTTP/1.1 keepalive to the upstream, upgrades passed.
fn start_nginx(dir: &std::path::Path, port: u16, upstream: SocketAddr) -> Option<Child> {
    let binary = nginx_binary()?;
    std::fs::create_dir_all(dir).unwrap();
    let d = dir.display();
    let conf = format!(
        "worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n\
           upstream standin {{ server {upstream}; keepalive 256; keepalive_requests 1000000; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 1000000;\n    location / {{\n\
               proxy_pass http://standin;\n      proxy_http_version 1.1;\n\
               proxy_set_header Host $host;\n\
               proxy_set_header Upgrade $http_upgrade;\n\
               proxy_set_header Connection $connection_upgrade;\n\
               proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
               proxy_read_timeout 300s;\n    }}\n  }}\n}}\n"
    );
    let file = dir.join("nginx.conf");
    std::fs::write(&file, conf).unwrap();
    let child = std::process::Command::new(binary)
        .arg("-c")
        .arg(&file)
        .arg("-p")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    Some(Child(child))
}

/// Every pid whose parent is `parent`, and `parent` itself.
fn family(parent: u32) -> Vec<String> {
    let mut out = vec![parent.to_string()];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        if after.split_whitespace().nth(1) == Some(parent.to_string().as_str()) {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

fn cpu_of(pids: &[String]) -> f64 {
    pids.iter().map(|p| cpu_seconds(p)).sum()
}

struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// The proxy's processes (none for the direct path).
    pids: Vec<String>,
}

/// One load run against `t`: throughput, sorted latencies, proxy CPU µs
/// per request.
async fn run(t: &Target, path: &str, n: usize, conns: usize) -> (f64, Vec<Duration>, f64) {
    let c0 = cpu_of(&t.pids);
    let (rps, lat) = load(t.addr, path.to_owned(), n, conns).await;
    let cpu = (cpu_of(&t.pids) - c0) / n as f64 * 1e6;
    (rps, lat, cpu)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env("BENCH_REQUESTS", 20_000);
    let rounds = env("BENCH_ROUNDS", 3).max(1);
    let ws_n = env("BENCH_WS_MESSAGES", 2_000);
    let conn_counts: Vec<usize> = std::env::var("BENCH_CONNECTIONS")
        .unwrap_or_else(|_| "1,32,256".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let data_dir = std::env::temp_dir().join(format!("binderd-bench-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir).unwrap();
    let _cleanup = Cleanup(data_dir.clone());

    // binderd, the release binary, as an operator runs it.
    std::fs::create_dir_all(data_dir.join("no-bindings")).unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = data_dir.join("binderd.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{addr}\"\ndata_dir = \"{}\"\nbindings_dir = \"{}\"\n[rate_limit]\nanonymous_per_minute = 0\nglobal_per_second = 0\nanonymous_concurrent = 0\nanonymous_total = 0\n",
            data_dir.join("data").display(),
            data_dir.join("no-bindings").display()
        ),
    )
    .unwrap();
    let binderd = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_binderd"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("BINDERD_API_KEYS", format!("admin:{KEY}:admin"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the binderd binary"),
    );
    wait_listening(addr).await;

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
        .send_request(send("POST", "/binders/proxied", String::new()))
        .await
        .unwrap();
    assert!(resp.status() == 201 || resp.status() == 202);
    let mut doc: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    // A cold start (202): wait until it is ready.
    while doc["state"] != "ready" {
        tokio::time::sleep(Duration::from_millis(50)).await;
        admin.ready().await.unwrap();
        let id = doc["id"].as_str().unwrap().to_owned();
        let resp = admin
            .send_request(send(
                "GET",
                &format!("/binders/proxied/{id}"),
                String::new(),
            ))
            .await
            .unwrap();
        doc =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    }
    let location = doc["location"].as_str().unwrap().to_owned();
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

    let nginx_port = free_port();
    let nginx = start_nginx(&data_dir.join("nginx"), nginx_port, direct);
    let nginx_addr: SocketAddr = format!("127.0.0.1:{nginx_port}").parse().unwrap();
    if nginx.is_some() {
        wait_listening(nginx_addr).await;
    } else {
        println!("nginx not found: its column is skipped (apt-get install nginx-light)");
    }
    let mut targets = vec![Target {
        name: "direct (stand-in)",
        addr: direct,
        pids: Vec::new(),
    }];
    if let Some(nginx) = &nginx {
        targets.push(Target {
            name: "nginx",
            addr: nginx_addr,
            pids: family(nginx.0.id()),
        });
    }
    targets.push(Target {
        name: "binderd",
        addr,
        pids: vec![binderd.0.id().to_string()],
    });
    println!(
        "HTTP GET {{location}}api/status through each, {n} requests per run, {rounds} rounds (median req/s; latencies of all rounds)"
    );
    println!(
        "{:<6} {:<20} {:>9} {:>8} {:>8} {:>12}  {:>22}",
        "conns", "", "req/s", "p50 µs", "p99 µs", "proxy CPU µs", "vs nginx: req/s p50 p99"
    );
    for &conns in &conn_counts {
        let mut results: Vec<(Vec<f64>, Vec<Duration>, Vec<f64>)> =
            targets.iter().map(|_| Default::default()).collect();
        for t in &targets {
            load(t.addr, path.clone(), 2_000.min(n), conns).await;
        }
        for round in 0..rounds {
            for i in alternating(round, targets.len()) {
                let (rps, lat, cpu) = run(&targets[i], &path, n, conns).await;
                results[i].0.push(rps);
                results[i].1.extend(lat);
                results[i].2.push(cpu);
            }
        }
        let summary: Vec<(f64, f64, f64, f64)> = results
            .into_iter()
            .map(|(rps, mut lat, cpu)| {
                lat.sort();
                (median(rps), pct(&lat, 0.5), pct(&lat, 0.99), median(cpu))
            })
            .collect();
        let nginx_row = targets.iter().position(|t| t.name == "nginx");
        for (t, s) in targets.iter().zip(&summary) {
            let vs = match nginx_row {
                Some(i) if t.name != "nginx" => {
                    let g = summary[i];
                    format!("{:.2}x {:.2}x {:.2}x", s.0 / g.0, s.1 / g.1, s.2 / g.2)
                }
                _ => String::new(),
            };
            let cpu = if t.pids.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1}", s.3)
            };
            println!(
                "{:<6} {:<20} {:>9.0} {:>8.0} {:>8.0} {:>12}  {:>22}",
                conns, t.name, s.0, s.1, s.2, cpu, vs
            );
        }
    }

    let ws_path = format!("{location}ws");
    println!();
    println!(
        "WebSocket echo round trip, {ws_n} messages one at a time per round, {rounds} rounds in alternating order"
    );
    println!("{:<20} {:>8} {:>8}", "", "p50 µs", "p99 µs");
    let ws_urls: Vec<String> = targets
        .iter()
        .map(|t| format!("ws://{}{ws_path}", t.addr))
        .collect();
    for url in &ws_urls {
        ws_round_trips(url, 200).await;
    }
    let mut ws_lat: Vec<Vec<Duration>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for i in alternating(round, targets.len()) {
            ws_lat[i].extend(ws_round_trips(&ws_urls[i], ws_n).await);
        }
    }
    let mut ws_rows = Vec::new();
    for (t, mut lat) in targets.iter().zip(ws_lat) {
        lat.sort();
        println!(
            "{:<20} {:>8.0} {:>8.0}",
            t.name,
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
        ws_rows.push((t.name, pct(&lat, 0.5)));
    }
    if let (Some(g), Some(b)) = (
        ws_rows.iter().find(|r| r.0 == "nginx"),
        ws_rows.iter().find(|r| r.0 == "binderd"),
    ) {
        println!(
            "binderd/nginx WebSocket p50: {:.2}x (target ≤ 1.10x)",
            b.1 / g.1
        );
    }
    drop(nginx);
    drop(binderd);
}
