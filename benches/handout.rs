//! Warm handout latency and throughput vs `GET /healthcheck`, same server,
//! same run, loopback only.
//!
//! binderd runs in-process on the process backend with a pool of N stand-in
//! servers (`minPool = maxPool = N`, so nothing refills during the
//! measurement and every handout pops a warm binder). Then:
//!
//! 1. sequential, one keep-alive connection: N/3 `POST /binders/bench`, and
//!    as many `GET /healthcheck` (the baseline);
//! 2. concurrent, 16 connections: the remaining handouts, and as many
//!    healthchecks.
//!
//! 3. launch, one connection: 50 BinderHub launches (`GET /build/gh/...`,
//!    read until the stream's `ready` event) against 50 `POST /binders`.
//!
//! 4. profiles, one connection, interleaved: `POST /binders/bench` (the
//!    default profile, the binding's own pool) against `?profile=large` and
//!    a `{"profile": "large"}` body (the profile's own warm pool), 150 each.
//!
//! `cargo bench --bench handout` (N from `BENCH_POOL`, default 600).

use std::time::{Duration, Instant};

use binderd::auth::{ApiKey, Role};
use binderd::backend::process::ProcessBackend;
use binderd::config::Config;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

const KEY: &str = "bench-admin-key";

type Sender = http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: std::net::SocketAddr) -> Sender {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn one(sender: &mut Sender, method: &Method, path: &str, expect: u16) -> Duration {
    fetch(sender, method, path, expect).await.0
}

/// One request, timed until its whole body arrived; returns the body too.
async fn fetch(
    sender: &mut Sender,
    method: &Method,
    path: &str,
    expect: u16,
) -> (Duration, String) {
    let req = Request::builder()
        .method(method.clone())
        .uri(path)
        .header("host", "bench")
        // Only an event-stream client launches (`/build`); harmless elsewhere.
        .header("accept", "text/event-stream, */*")
        .body(Empty::new())
        .unwrap();
    sender.ready().await.unwrap();
    let t = Instant::now();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let took = t.elapsed();
    assert_eq!(status, expect, "{method} {path}");
    (took, String::from_utf8_lossy(&body).into_owned())
}

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        max: *v.last().unwrap(),
    }
}

async fn sequential(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    expect: u16,
    n: usize,
) -> Vec<Duration> {
    let mut sender = connect(addr).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(one(&mut sender, &method, path, expect).await);
    }
    out
}

/// `n` requests over `conns` connections; returns (latencies, wall time).
async fn concurrent(
    addr: std::net::SocketAddr,
    method: Method,
    path: &'static str,
    expect: u16,
    n: usize,
    conns: usize,
) -> (Vec<Duration>, Duration) {
    let mut senders = Vec::new();
    for _ in 0..conns {
        senders.push(connect(addr).await);
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut sender) in senders.into_iter().enumerate() {
        let share = n / conns + usize::from(i < n % conns);
        let method = method.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(share);
            for _ in 0..share {
                out.push(one(&mut sender, &method, path, expect).await);
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(n);
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    (all, t.elapsed())
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Kills the stand-ins even if the bench panics.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let killed = ProcessBackend::kill_all(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
        println!("\ncleaned up {killed} processes");
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let data_dir = std::env::temp_dir().join(format!("binderd-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let _cleanup = Cleanup(data_dir.clone());
    let mut config = Config::new(&data_dir);
    config.process.helper = Some(env!("CARGO_BIN_EXE_binderd").into());
    config.listen = "127.0.0.1:0".parse().unwrap();
    // Measuring binderd's own path: no rate limits.
    config.rate_limit.anonymous_per_minute = 0;
    config.rate_limit.global_per_second = 0;
    // The anonymous cap's charge runs on every handout, as by default, with
    // a cap this bench never reaches.
    config.rate_limit.anonymous_concurrent = 1_000_000;
    config.rate_limit.anonymous_total = 0;
    config.api_keys = vec![ApiKey::new("admin", KEY, Role::Admin)];
    config.start_concurrency = 32;
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(binderd::run(config, listener, async {
        let _ = stopped.await;
    }));

    // The binding: N stand-ins (and the launches' and the profiles'
    // share), no refill room; its profile `large` has a pool of its own.
    let pool = n + 2 * LAUNCHES + PROFILED;
    let large = 2 * PROFILED;
    let body = serde_json::json!({
        "name": "bench",
        "command": [env!("CARGO_BIN_EXE_binderd-standin"), "--port", "{port}", "--base-url", "{base_url}"],
        "repo": "https://github.com/binderd-bench/launch",
        "content": {"from": "image"},
        "public": true,
        "pool": {"min": pool, "max": pool},
        "profiles": [
            {"name": "standard", "default": true},
            {"name": "large", "env": {"SIZE": "large"}, "resources": {"nofile": 512},
             "pool": {"min": large, "max": large}},
        ],
    });
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut admin, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/bindings")
        .header("host", "bench")
        .header("authorization", KEY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = admin.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 201);

    let fill_start = Instant::now();
    let mut probe = connect(addr).await;
    loop {
        let req = Request::get("/pools/bench")
            .header("host", "bench")
            .body(Empty::new())
            .unwrap();
        let resp = probe.send_request(req).await.unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        if v["available"].as_u64() == Some(pool as u64)
            && v["profiles"]["large"]["available"].as_u64() == Some(large as u64)
        {
            break;
        }
        assert!(
            fill_start.elapsed() < Duration::from_secs(300),
            "pool did not fill: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fill = fill_start.elapsed();
    println!(
        "pools of {pool} + {large} stand-in processes filled in {:.2}s ({:.0} starts/s, start_concurrency 32)",
        fill.as_secs_f64(),
        (pool + large) as f64 / fill.as_secs_f64()
    );
    // Let the machine settle after the fill.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let seq_n = n / 3;
    let warm = sequential(addr, Method::GET, "/healthcheck", 200, 200).await;
    drop(warm);
    let health = stats(sequential(addr, Method::GET, "/healthcheck", 200, seq_n).await);
    let handout = stats(sequential(addr, Method::POST, "/binders/bench", 201, seq_n).await);
    println!();
    println!("sequential, one connection, {seq_n} requests each");
    println!(
        "{:<22} {:>10} {:>10} {:>10}",
        "", "p50 µs", "p99 µs", "max µs"
    );
    println!(
        "{:<22} {:>10.0} {:>10.0} {:>10.0}",
        "GET /healthcheck",
        us(health.p50),
        us(health.p99),
        us(health.max)
    );
    println!(
        "{:<22} {:>10.0} {:>10.0} {:>10.0}",
        "POST /binders (warm)",
        us(handout.p50),
        us(handout.p99),
        us(handout.max)
    );
    println!(
        "ratio handout/healthcheck: p50 {:.2}x, p99 {:.2}x   (target p50 ≤ 1.5x)",
        us(handout.p50) / us(health.p50),
        us(handout.p99) / us(health.p99)
    );

    let conc_n = n - seq_n;
    let conns = 16;
    let (h_lat, h_wall) = concurrent(addr, Method::GET, "/healthcheck", 200, conc_n, conns).await;
    let (b_lat, b_wall) =
        concurrent(addr, Method::POST, "/binders/bench", 201, conc_n, conns).await;
    let (h, b) = (stats(h_lat), stats(b_lat));
    let (h_rps, b_rps) = (
        conc_n as f64 / h_wall.as_secs_f64(),
        conc_n as f64 / b_wall.as_secs_f64(),
    );
    println!();
    println!("concurrent, {conns} connections, {conc_n} requests each");
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10}",
        "", "req/s", "p50 µs", "p99 µs", "max µs"
    );
    println!(
        "{:<22} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
        "GET /healthcheck",
        h_rps,
        us(h.p50),
        us(h.p99),
        us(h.max)
    );
    println!(
        "{:<22} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
        "POST /binders (warm)",
        b_rps,
        us(b.p50),
        us(b.p99),
        us(b.max)
    );
    println!(
        "ratio handout/healthcheck: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
        b_rps / h_rps,
        us(b.p50) / us(h.p50),
        us(b.p99) / us(h.p99)
    );

    // 3. BinderHub's launch: the time from opening the event stream to its
    // `ready` event (a warm binder, so the stream ends there).
    let build = "/build/gh/binderd-bench/launch/HEAD";
    let mut sender = connect(addr).await;
    let mut launches = Vec::with_capacity(LAUNCHES);
    for _ in 0..LAUNCHES {
        let (took, body) = fetch(&mut sender, &Method::GET, build, 200).await;
        assert!(body.contains("\"phase\":\"ready\""), "{body}");
        launches.push(took);
    }
    let launch = stats(launches);
    let posts = stats(sequential(addr, Method::POST, "/binders/bench", 201, LAUNCHES).await);
    println!();
    println!("launch, one connection, {LAUNCHES} each (warm)");
    println!(
        "{:<30} {:>10} {:>10} {:>10}",
        "", "p50 µs", "p99 µs", "max µs"
    );
    println!(
        "{:<30} {:>10.0} {:>10.0} {:>10.0}",
        "POST /binders",
        us(posts.p50),
        us(posts.p99),
        us(posts.max)
    );
    println!(
        "{:<30} {:>10.0} {:>10.0} {:>10.0}",
        "GET /build/... to ready",
        us(launch.p50),
        us(launch.p99),
        us(launch.max)
    );
    println!(
        "ratio launch/handout: p50 {:.2}x, p99 {:.2}x (BinderHub: a pod start, seconds)",
        us(launch.p50) / us(posts.p50),
        us(launch.p99) / us(posts.p99)
    );

    // 4. A profile chosen vs the default, interleaved on one connection so
    // that both see the same moment of the machine.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let chosen_body = Bytes::from_static(b"{\"profile\": \"large\"}");
    let (mut default, mut query, mut body) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..PROFILED {
        default.push(post(&mut sender, "/binders/bench", None, "standard").await);
        query.push(post(&mut sender, "/binders/bench?profile=large", None, "large").await);
        body.push(
            post(
                &mut sender,
                "/binders/bench",
                Some(chosen_body.clone()),
                "large",
            )
            .await,
        );
    }
    let (default, query, body) = (stats(default), stats(query), stats(body));
    println!();
    println!("profiles, one connection, interleaved, {PROFILED} each (warm)");
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "", "p50 µs", "p99 µs", "max µs"
    );
    for (what, s) in [
        ("POST /binders (default profile)", &default),
        ("POST /binders?profile=large", &query),
        ("POST /binders {\"profile\":\"large\"}", &body),
    ] {
        println!(
            "{:<34} {:>10.0} {:>10.0} {:>10.0}",
            what,
            us(s.p50),
            us(s.p99),
            us(s.max)
        );
    }
    println!(
        "ratio chosen/default: query p50 {:.2}x p99 {:.2}x, body p50 {:.2}x p99 {:.2}x",
        us(query.p50) / us(default.p50),
        us(query.p99) / us(default.p99),
        us(body.p50) / us(default.p50),
        us(body.p99) / us(default.p99)
    );

    let _ = stop.send(());
    let _ = server.await;
}

/// One warm handout (201) with an optional JSON body, timed until its whole
/// answer arrived; checks the binder is of `profile`.
async fn post(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    path: &str,
    body: Option<Bytes>,
    profile: &str,
) -> Duration {
    let mut req = Request::post(path).header("host", "bench");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Full::new(body.unwrap_or_default())).unwrap();
    sender.ready().await.unwrap();
    let t = Instant::now();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let took = t.elapsed();
    assert_eq!(status, 201, "POST {path}");
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["profile"], profile, "{doc}");
    took
}

/// BinderHub launches measured (and handouts as their baseline).
const LAUNCHES: usize = 50;

/// Handouts of each kind in the profiles section.
const PROFILED: usize = 150;
