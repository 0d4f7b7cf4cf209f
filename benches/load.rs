//! binderd's load generator (hyper client, loopback, bounded in count):
//!
//! 1. sustained handouts at 64 connections vs `GET /healthcheck` at 64
//!    connections, same server, same run (bench backend: every binder is the
//!    same stand-in, so handouts can be sustained; see BENCHMARKS.md), in
//!    alternating rounds, each followed by a pause whose CPU (the store
//!    catching up) is charged to the round (`BENCH_SERIES=handout` or
//!    `healthcheck` runs one side alone, for a profiler);
//! 2. warm handout p99 before and after loading 10,000 more bindings;
//! 3. a burst of 100 concurrent handouts from a pool of 100 real processes
//!    vs 100 concurrent healthchecks (a classroom clicking at once);
//! 4. refill: filling a process pool of 50 vs spawning the same 50 servers
//!    directly at the same concurrency, each until it answers HTTP;
//! 5. scale: restart with 1,000 recorded binders to adopt, then CPU used by
//!    the reconcilers of 1,000 idle pools.
//!
//! Writes target/bench/load.csv (latency percentiles) for scripts/plot-benchmarks.
//! `cargo bench --bench load`

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use binderd::auth::{ApiKey, Role};
use binderd::backend::process::ProcessBackend;
use binderd::backend::Backend;
use binderd::config::Config;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use support::{cpu_seconds, SharedServerBackend, Standin};

const KEY: &str = "bench-admin-key";
/// The pause after each sustained round, for what it left behind.
const SETTLE: Duration = Duration::from_millis(150);
type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn send(s: &mut Sender, method: &str, path: &str, body: &str) -> (u16, Bytes, Duration) {
    s.ready().await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench")
        .header("authorization", KEY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let t = Instant::now();
    let resp = s.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, bytes, t.elapsed())
}

/// `n` requests over `conns` connections; (req/s, sorted latencies).
async fn load(
    addr: SocketAddr,
    method: &'static str,
    path: String,
    expect: u16,
    n: usize,
    conns: usize,
) -> (f64, Vec<Duration>) {
    let mut senders = Vec::new();
    for _ in 0..conns {
        senders.push(connect(addr).await);
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut s) in senders.into_iter().enumerate() {
        let share = n / conns + usize::from(i < n % conns);
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(share);
            for _ in 0..share {
                let (status, body, d) = send(&mut s, method, &path, "").await;
                assert_eq!(
                    status,
                    expect,
                    "{method} {path}: {}",
                    String::from_utf8_lossy(&body)
                );
                lat.push(d);
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rps = n as f64 / t.elapsed().as_secs_f64();
    all.sort();
    (rps, all)
}

fn pct(v: &[Duration], q: f64) -> f64 {
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e6
}

struct Csv(String);

impl Csv {
    fn row(&mut self, series: &str, lat: &[Duration]) {
        self.0.push_str(&format!(
            "{series},{:.1},{:.1},{:.1},{:.1}\n",
            pct(lat, 0.5),
            pct(lat, 0.9),
            pct(lat, 0.99),
            pct(lat, 0.999)
        ));
    }
}

/// One side of the sustained comparison, accumulated over rounds.
struct Series {
    label: &'static str,
    method: &'static str,
    path: &'static str,
    expect: u16,
    lat: Vec<Duration>,
    seconds: f64,
    cpu: f64,
    /// CPU spent after the rounds, catching up (included in `cpu`).
    behind: f64,
    /// CPU this process spends in a [`SETTLE`] pause with nothing left
    /// to catch up on (the load generator's own timers), not charged.
    idle_cpu: f64,
}

impl Series {
    fn new(label: &'static str, method: &'static str, path: &'static str, expect: u16) -> Series {
        Series {
            label,
            method,
            path,
            expect,
            lat: Vec::new(),
            seconds: 0.0,
            cpu: 0.0,
            behind: 0.0,
            idle_cpu: 0.0,
        }
    }

    async fn run(&mut self, addr: SocketAddr, n: usize, conns: usize) {
        let cpu0 = cpu_seconds("self");
        let t = Instant::now();
        let (_, lat) = load(addr, self.method, self.path.into(), self.expect, n, conns).await;
        let seconds = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds("self") - cpu0;
        // Work the requests left behind (the store's writer catching up
        // with the handouts' journal) must not land in the other series'
        // next round: wait for it here, and charge it to this series — as
        // CPU, and as the time it would have taken at the round's rate of
        // CPU use had it been done during the round, as it must be in a
        // load that never pauses.
        let settle_from = cpu_seconds("self");
        tokio::time::sleep(SETTLE).await;
        let behind = cpu_seconds("self") - settle_from - self.idle_cpu;
        let behind = behind.max(0.0);
        self.seconds += seconds * (1.0 + behind / cpu);
        self.cpu += cpu + behind;
        self.behind += behind;
        self.lat.extend(lat);
        self.lat.sort();
    }

    fn rps(&self) -> f64 {
        self.lat.len() as f64 / self.seconds
    }

    fn cpu_us(&self) -> f64 {
        self.cpu / self.lat.len() as f64 * 1e6
    }

    fn print(&self) {
        println!(
            "{:<30} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>12.1} {:>8.2}",
            self.label,
            self.rps(),
            pct(&self.lat, 0.5),
            pct(&self.lat, 0.99),
            pct(&self.lat, 0.999),
            self.cpu_us(),
            self.behind / self.lat.len() as f64 * 1e6
        );
    }
}

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config::new(dir);
    config.process.helper = Some(env!("CARGO_BIN_EXE_binderd").into());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.api_keys = vec![ApiKey::new("admin", KEY, Role::Admin)];
    config.rate_limit.anonymous_per_minute = 0;
    config.rate_limit.global_per_second = 0;
    config.rate_limit.anonymous_concurrent = 0;
    config.rate_limit.anonymous_total = 0;
    config.max_pool_limit = 100_000;
    config.start_concurrency = 64;
    config
}

struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(config: Config, backend: Arc<dyn Backend>) -> Running {
    let (_exits_tx, exits_rx) = tokio::sync::mpsc::unbounded_channel();
    start_with(config, backend, exits_rx).await
}

/// binderd on the real process backend, cleaning up its processes on stop.
async fn start_process(mut config: Config) -> Running {
    let (exits_tx, exits_rx) = tokio::sync::mpsc::unbounded_channel();
    let backend = Arc::new(
        ProcessBackend::with_config(
            &config.data_dir,
            config.process.clone(),
            config.limits,
            exits_tx,
        )
        .unwrap(),
    );
    config.cleanup_on_exit = true;
    start_with(config, backend, exits_rx).await
}

async fn start_with(
    config: Config,
    backend: Arc<dyn Backend>,
    exits_rx: tokio::sync::mpsc::UnboundedReceiver<binderd::backend::Exit>,
) -> Running {
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        binderd::run_with_backend(
            config,
            listener,
            async {
                let _ = stopped.await;
            },
            backend,
            exits_rx,
        )
        .await
        .unwrap();
    });
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.await;
    }
}

async fn wait_available(addr: SocketAddr, name: &str, n: u64) -> Duration {
    let t = Instant::now();
    let mut s = connect(addr).await;
    loop {
        let (_, body, _) = send(&mut s, "GET", &format!("/pools/{name}"), "").await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if v["available"].as_u64() == Some(n) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "pool {name} did not fill: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create(addr: SocketAddr, body: serde_json::Value) {
    let mut s = connect(addr).await;
    let (status, b, _) = send(&mut s, "POST", "/bindings", &body.to_string()).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&b));
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("binderd-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::main]
async fn main() {
    let mut csv = Csv("series,p50_us,p90_us,p99_us,p999_us\n".into());
    let standin = Standin::start();

    // 1 + 2: sustained handouts, then 10,000 more bindings.
    let dir = temp("sustained");
    let backend = Arc::new(SharedServerBackend::new(standin.1));
    let server = start(config(&dir), backend).await;
    let n = std::env::var("BENCH_SUSTAINED_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000usize);
    // The sustained run, then 4,000 more for part 2, and spares.
    let n_pool = n + 9_000;
    create(server.addr, serde_json::json!({"name": "load", "command": ["unused"], "public": true, "pool": {"min": n_pool, "max": n_pool}})).await;
    let fill = wait_available(server.addr, "load", n_pool as u64).await;
    println!(
        "bench backend: pool of {n_pool} filled in {:.1}s",
        fill.as_secs_f64()
    );
    // Let the store checkpoint the fill's WAL (it does so once idle) before
    // measuring: that work belongs to the fill, not to the handouts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let conns = 64;
    // Rounds alternate which goes first, so drift in what the machine is
    // doing meanwhile falls on both sides alike. CPU is this process's (binderd
    // and the load generator), per request: steadier than req/s on a shared
    // 2-core machine.
    let rounds = 8;
    let mut series = [
        Series::new("GET /healthcheck", "GET", "/healthcheck", 200),
        Series::new("POST /binders (warm handout)", "POST", "/binders/load", 201),
    ];
    let idle_from = cpu_seconds("self");
    tokio::time::sleep(SETTLE).await;
    let idle_cpu = cpu_seconds("self") - idle_from;
    for s in &mut series {
        s.idle_cpu = idle_cpu;
    }
    // `BENCH_SERIES=healthcheck` or `handout` runs one side only: to
    // profile each alone (`perf record -p`) and compare where the time goes.
    let only = std::env::var("BENCH_SERIES").ok();
    let wanted = |k: usize| only.as_deref().is_none_or(|o| series[k].label.contains(o));
    let wanted = [wanted(0), wanted(1)];
    for round in 0..rounds {
        for k in [round % 2, 1 - round % 2] {
            if wanted[k] {
                series[k].run(server.addr, n / rounds, conns).await;
            }
        }
    }
    if wanted != [true, true] {
        for (s, _) in series.iter().zip(wanted).filter(|(_, w)| *w) {
            s.print();
        }
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let [h, b] = &series;
    println!(
        "\n1. sustained, {conns} connections, {} requests each in {rounds} alternating rounds",
        h.lat.len()
    );
    println!(
        "   (each round then pauses {} ms; \"behind\": CPU µs/req spent in that pause catching up,\n   \
         charged to the round: in its CPU, and in its time at the round's rate of CPU use)",
        SETTLE.as_millis()
    );
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>9} {:>12} {:>8}",
        "", "req/s", "p50 µs", "p99 µs", "p999 µs", "CPU µs/req", "behind"
    );
    h.print();
    b.print();
    println!(
        "ratio: throughput {:.2}x (target ≥ 0.80x), p99 {:.2}x (target ≤ 1.3x), CPU per request {:.2}x",
        b.rps() / h.rps(),
        pct(&b.lat, 0.99) / pct(&h.lat, 0.99),
        b.cpu_us() / h.cpu_us()
    );
    let (h, b) = (&h.lat, &b.lat);
    csv.row("healthcheck (64 conns)", h);
    csv.row("handout (64 conns)", b);
    if std::env::var("BENCH_ONLY").as_deref() == Ok("sustained") {
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }

    let (_, before) = load(server.addr, "POST", "/binders/load".into(), 201, 2_000, 1).await;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut s = connect(addr).await;
            for i in (w..10_000).step_by(16) {
                let body = serde_json::json!({"name": format!("extra-{i}"), "command": ["unused"], "pool": {"min": 0, "max": 1}});
                let (status, _, _) = send(&mut s, "POST", "/bindings", &body.to_string()).await;
                assert_eq!(status, 201);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "\n2. loaded 10,000 more bindings in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let (_, after) = load(server.addr, "POST", "/binders/load".into(), 201, 2_000, 1).await;
    println!(
        "warm handout, one connection: p50 {:.0} → {:.0} µs, p99 {:.0} → {:.0} µs ({:.2}x)",
        pct(&before, 0.5),
        pct(&after, 0.5),
        pct(&before, 0.99),
        pct(&after, 0.99),
        pct(&after, 0.99) / pct(&before, 0.99)
    );
    csv.row("handout (1 binding)", &before);
    csv.row("handout (10001 bindings)", &after);
    let cpu0 = cpu_seconds("self");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu = cpu_seconds("self") - cpu0;
    println!(
        "5b. 10,001 idle pools: {:.2}% of one core over 10 s ({:.3} CPU-seconds)",
        idle_cpu * 10.0,
        idle_cpu
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);

    // 3: burst from real processes.
    let dir = temp("burst");
    let server = start_process(config(&dir)).await;
    let addr = server.addr;
    let standin_cmd = env!("CARGO_BIN_EXE_binderd-standin");
    create(addr, serde_json::json!({"name": "class", "command": [standin_cmd, "--port", "{port}", "--base-url", "{base_url}"], "public": true, "pool": {"min": 100, "max": 100}})).await;
    wait_available(addr, "class", 100).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, h) = load(addr, "GET", "/healthcheck".into(), 200, 100, 100).await;
    let t = Instant::now();
    let (_, b) = load(addr, "POST", "/binders/class".into(), 201, 100, 100).await;
    let burst = t.elapsed();
    println!("\n3. burst: 100 concurrent requests, 100 connections, pool of 100 processes");
    println!(
        "healthcheck p50 {:.0} µs, max {:.0} µs",
        pct(&h, 0.5),
        pct(&h, 1.0)
    );
    println!(
        "handout     p50 {:.0} µs, max {:.0} µs; all 100 handed out in {:.1} ms",
        pct(&b, 0.5),
        pct(&b, 1.0),
        burst.as_secs_f64() * 1e3
    );
    csv.row("burst healthcheck (100 conns)", &h);
    csv.row("burst handout (100 conns)", &b);
    server.stop().await;
    ProcessBackend::kill_all(&dir);
    let _ = std::fs::remove_dir_all(&dir);

    // 4: refill vs spawning directly.
    let n = 50;
    let concurrency = 8;
    let dir = temp("refill");
    let mut cfg = config(&dir);
    cfg.start_concurrency = concurrency;
    let server = start_process(cfg).await;
    let addr = server.addr;
    let direct1 = spawn_directly(standin_cmd, n, concurrency).await;
    let t = Instant::now();
    create(addr, serde_json::json!({"name": "refill", "command": [standin_cmd, "--port", "{port}", "--base-url", "{base_url}"], "pool": {"min": n, "max": n}})).await;
    wait_available(addr, "refill", n as u64).await;
    let fill = t.elapsed();
    server.stop().await;
    ProcessBackend::kill_all(&dir);
    let direct2 = spawn_directly(standin_cmd, n, concurrency).await;
    let direct = (direct1 + direct2) / 2;
    println!("\n4. refill {n} processes at concurrency {concurrency}: direct {:.0} ms (mean of {:.0} and {:.0}), binderd {:.0} ms: {:.2}x (target ≤ 1.2x)",
        direct.as_secs_f64() * 1e3, direct1.as_secs_f64() * 1e3, direct2.as_secs_f64() * 1e3, fill.as_secs_f64() * 1e3, fill.as_secs_f64() / direct.as_secs_f64());
    let _ = std::fs::remove_dir_all(&dir);

    // 5a: adoption at scale.
    let dir = temp("adopt");
    let backend = Arc::new(SharedServerBackend::new(standin.1));
    let server = start(config(&dir), backend.clone()).await;
    create(server.addr, serde_json::json!({"name": "many", "command": ["unused"], "public": true, "pool": {"min": 1000, "max": 1000}})).await;
    wait_available(server.addr, "many", 1000).await;
    let (_, _) = load(server.addr, "POST", "/binders/many".into(), 201, 500, 8).await;
    server.stop().await;
    // What "runs" after the restart: every binder the store recorded.
    let ids = recorded_binders(&dir);
    *backend.discovered.lock().unwrap() = ids
        .iter()
        .map(|(id, handle)| binderd::backend::Discovered {
            binder_id: id.clone(),
            binding: "many".into(),
            instance: binderd::backend::Instance {
                handle: handle.clone(),
                addr: standin.1,
            },
        })
        .collect();
    let t = Instant::now();
    let server = start(config(&dir), backend).await;
    let mut s = connect(server.addr).await;
    let (status, _, _) = send(&mut s, "GET", "/healthcheck", "").await;
    assert_eq!(status, 200);
    let serving = t.elapsed();
    wait_available(server.addr, "many", 1000 - 500).await;
    println!("\n5a. restart with {} recorded binders: serving after {:.0} ms, all re-checked after {:.0} ms", ids.len(), serving.as_secs_f64() * 1e3, t.elapsed().as_secs_f64() * 1e3);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);

    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("load.csv"), csv.0).unwrap();
    println!("\nwrote target/bench/load.csv");
}

/// Spawns `n` stand-ins `concurrency` at a time, each until it answers HTTP.
async fn spawn_directly(cmd: &str, n: usize, concurrency: usize) -> Duration {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let permits = permits.clone();
        let cmd = cmd.to_owned();
        tasks.push(tokio::spawn(async move {
            let _p = permits.acquire_owned().await.unwrap();
            let port = support::free_port();
            let child = tokio::process::Command::new(cmd)
                .args(["--port", &port.to_string(), "--base-url", "/"])
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            loop {
                if let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    let (mut s, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                        .await
                        .unwrap();
                    tokio::spawn(conn);
                    let req = Request::get("/")
                        .header("host", "x")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    if s.send_request(req).await.is_ok() {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            child
        }));
    }
    let mut children = Vec::new();
    for t in tasks {
        children.push(t.await.unwrap());
    }
    let took = t.elapsed();
    drop(children);
    took
}

fn recorded_binders(dir: &std::path::Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(dir.join("binderd.sqlite3")).unwrap();
    let mut stmt = conn.prepare("SELECT id, instance FROM binders").unwrap();
    stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })
    .unwrap()
    .filter_map(|r| {
        let (id, inst) = r.ok()?;
        let v: serde_json::Value = serde_json::from_str(&inst?).ok()?;
        Some((id, v["handle"].as_str()?.to_owned()))
    })
    .collect()
}
