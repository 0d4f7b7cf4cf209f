//! Time to the first output: from `POST /binders/{b}` to the output of
//! `print(6*7)` read over the kernel's WebSocket, all through binderd's
//! proxy, with a real Jupyter server and ipykernel on the process backend.
//! The client does what the classic notebook and thebe do: hand out, `POST
//! {location}api/kernels`, open the kernel's channels, execute.
//!
//! Four pools in one run, each warm (every handout served from the pool,
//! refilled before the next one):
//!
//! - (a) no warm kernel: the client's POST starts the kernel (the usual way);
//! - (b) a warm kernel (`kernel = {name = "python3"}`);
//! - (c) a warm kernel whose warm-up imports pandas (from PyPI);
//! - (a+) no warm kernel, the first cell imports pandas itself: what (c)
//!   saves a reader.
//!
//! Prints p50/p99 per pool, the ratios, and each pool's resident memory of
//! one pooled binder as binderd reports it (`warmBinderMemoryBytes`).
//!
//! Then a cell's round trip on an open kernel WebSocket (`print(6*7)` until
//! the kernel is idle again), through binderd's proxy against the same
//! Jupyter server started the usual way beside it and reached directly:
//! binderd acknowledges what the container sends at once
//! (`upstream::ack`), a client connected directly waits out the server's
//! Nagle and its own delayed ACKs.
//!
//! The client is what a browser is (`PlainChannels`: Nagle off, nothing
//! else), not binderd's own kernel client, which reads with quick ACKs.
//!
//! `cargo bench --bench kernels` (`BENCH_KERNELS_HANDOUTS`, default 20).

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::Method;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use support::{call, Binderd, Cleanup, Http};
use tokio_tungstenite::tungstenite::Message;

fn venv() -> PathBuf {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/jupyter-venv"))
        .output()
        .expect("scripts/jupyter-venv");
    assert!(out.status.success(), "scripts/jupyter-venv failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The documented Jupyter binding, with this venv's `jupyter`.
fn binding(venv: &std::path::Path, name: &str, kernel: Option<Value>) -> Value {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/bindings/jupyter.json"
    );
    let mut b: Value = serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    b["command"][0] = json!(venv.join("bin/jupyter").to_str().unwrap());
    b["command"]
        .as_array_mut()
        .unwrap()
        .push(json!("--allow-root"));
    b["name"] = json!(name);
    b["pool"] = json!({"min": 2, "max": 4});
    if let Some(k) = kernel {
        b["kernel"] = k;
    }
    b
}

async fn wait_full(http: &Http, base: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, p) = call(http, Method::GET, &format!("{base}/pools/{name}"), None).await;
        if p["available"] == 2 && p["starting"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "pool {name} did not fill: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One reader: handout → kernel → first output. Returns the time taken,
/// each step's (handout, kernel request, channels open, execute) and the
/// binder's id.
async fn first_output(
    http: &Http,
    base: &str,
    name: &str,
    code: &str,
) -> (Duration, [Duration; 4], String) {
    let began = Instant::now();
    let mut marks = [began; 4];
    let (status, doc) = call(http, Method::POST, &format!("{base}/binders/{name}"), None).await;
    assert_eq!(status, 201, "{doc}");
    let location = doc["location"].as_str().unwrap().to_owned();
    marks[0] = Instant::now();
    let ws = new_kernel(http, &format!("{base}{location}")).await;
    marks[1] = Instant::now();
    let mut channels = PlainChannels::open(&ws).await;
    marks[2] = Instant::now();
    let outcome = channels.execute(code).await;
    marks[3] = Instant::now();
    let took = began.elapsed();
    assert_eq!(outcome.output, "42\n", "{}", outcome.output);
    channels.close().await;
    let steps = [
        marks[0] - began,
        marks[1] - marks[0],
        marks[2] - marks[1],
        marks[3] - marks[2],
    ];
    (took, steps, doc["id"].as_str().unwrap().to_owned())
}

/// A kernel's channels as a browser opens them: `TCP_NODELAY`, no more.
struct PlainChannels {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// What one cell gave: its output, and when the first output and the end
/// (reply and idle) came.
struct Executed {
    output: String,
    first_output: Duration,
    done: Duration,
}

impl PlainChannels {
    async fn open(url: &str) -> PlainChannels {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .unwrap();
        PlainChannels { ws }
    }

    async fn execute(&mut self, code: &str) -> Executed {
        let msg_id = format!("{:x}", rand::random::<u64>());
        let request = binderd::parts::execute_request(&msg_id, "bench", code);
        let began = Instant::now();
        self.ws
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        let mut out = Executed {
            output: String::new(),
            first_output: Duration::ZERO,
            done: Duration::ZERO,
        };
        let (mut replied, mut idle) = (false, false);
        while !(replied && idle) {
            let Some(Ok(Message::Text(text))) = self.ws.next().await else {
                continue;
            };
            let msg: Value = serde_json::from_str(&text).unwrap();
            if msg["parent_header"]["msg_id"].as_str() != Some(msg_id.as_str()) {
                continue;
            }
            match msg["header"]["msg_type"].as_str() {
                Some("stream") => {
                    if out.output.is_empty() {
                        out.first_output = began.elapsed();
                    }
                    out.output
                        .push_str(msg["content"]["text"].as_str().unwrap_or(""));
                }
                Some("execute_reply") => replied = true,
                Some("status") => {
                    idle |= msg["content"]["execution_state"] == "idle";
                }
                _ => {}
            }
        }
        out.done = began.elapsed();
        out
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

/// `POST {base}api/kernels` (a Jupyter server's, `http://…/`): the new (or
/// warm) kernel's channels URL.
async fn new_kernel(http: &Http, base: &str) -> String {
    let (status, kernel) = call(
        http,
        Method::POST,
        &format!("{base}api/kernels"),
        Some(&json!({"name": "python3"})),
    )
    .await;
    assert_eq!(status, 201, "{kernel}");
    let id = kernel["id"].as_str().unwrap();
    format!(
        "{}api/kernels/{id}/channels?session_id=bench",
        base.replacen("http://", "ws://", 1)
    )
}

/// `cells` round trips of `print(6*7)` on the open channels of a new
/// kernel of the server at `base` (`http://…/`), after one to warm up:
/// sorted (first output, done) times.
async fn round_trips(http: &Http, base: &str, cells: usize) -> (Vec<Duration>, Vec<Duration>) {
    let ws = new_kernel(http, base).await;
    let mut channels = PlainChannels::open(&ws).await;
    channels.execute("1").await;
    let (mut first, mut done) = (Vec::new(), Vec::new());
    for _ in 0..cells {
        let e = channels.execute("print(6*7)").await;
        assert_eq!(e.output, "42\n");
        first.push(e.first_output);
        done.push(e.done);
    }
    channels.close().await;
    first.sort();
    done.sort();
    (first, done)
}

/// The Jupyter server of the binding, started the usual way (no binderd)
/// on `port`; killed on drop.
struct Direct(std::process::Child, PathBuf);

impl Direct {
    fn start(venv: &std::path::Path, port: u16) -> Direct {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/bindings/jupyter.json"
        );
        let b: Value = serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!("binderd-bench-direct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let args: Vec<String> = b["command"].as_array().unwrap()[1..]
            .iter()
            .map(|a| {
                a.as_str()
                    .unwrap()
                    .replace("{port}", &port.to_string())
                    .replace("{base_url}", "/")
            })
            .collect();
        let child = Command::new(venv.join("bin/jupyter"))
            .args(&args)
            .arg("--allow-root")
            .current_dir(&dir)
            .env("JUPYTER_RUNTIME_DIR", dir.join("runtime"))
            .env("JUPYTER_CONFIG_DIR", dir.join("config"))
            .env("IPYTHONDIR", dir.join("ipython"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("jupyter server");
        Direct(child, dir)
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Row {
    label: &'static str,
    p50: Duration,
    p99: Duration,
    memory: Option<u64>,
}

fn main() {
    let handouts: usize = std::env::var("BENCH_KERNELS_HANDOUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let venv = venv();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data_dir =
        std::env::temp_dir().join(format!("binderd-bench-kernels-{}", std::process::id()));
    let _cleanup = Cleanup(data_dir.clone());
    let rows = rt.block_on(async {
        let server = Binderd::start(&data_dir, |_| {}).await;
        let base = server.base.clone();
        let http: Http = Client::builder(TokioExecutor::new()).build_http();
        let print = "print(6*7)";
        let heavy = "import pandas\nprint(6*7)";
        let pools: [(&'static str, &str, Option<Value>, &str); 4] = [
            ("(a) no warm kernel", "plain", None, print),
            (
                "(b) warm kernel",
                "warm",
                Some(json!({"name": "python3"})),
                print,
            ),
            (
                "(c) warm kernel, warm-up imports pandas",
                "pandas",
                Some(json!({"name": "python3", "warmup": "import pandas"})),
                print,
            ),
            (
                "(a+) no warm kernel, first cell imports pandas",
                "plain2",
                None,
                heavy,
            ),
        ];
        let mut rows = Vec::new();
        for (label, name, kernel, code) in pools {
            let (status, doc) = call(
                &http,
                Method::POST,
                &format!("{base}/bindings"),
                Some(&binding(&venv, name, kernel)),
            )
            .await;
            assert_eq!(status, 201, "{doc}");
            let mut times = Vec::new();
            let mut steps: [Vec<Duration>; 4] = Default::default();
            for _ in 0..handouts {
                wait_full(&http, &base, name).await;
                let (took, step, id) = first_output(&http, &base, name, code).await;
                times.push(took);
                for (all, one) in steps.iter_mut().zip(step) {
                    all.push(one);
                }
                call(
                    &http,
                    Method::DELETE,
                    &format!("{base}/binders/{name}/{id}"),
                    None,
                )
                .await;
            }
            times.sort();
            let medians: Vec<String> = steps
                .iter_mut()
                .map(|s| {
                    s.sort();
                    format!("{:.1}", percentile(s, 0.5).as_secs_f64() * 1e3)
                })
                .collect();
            println!(
                "{label}: median ms per step: handout {}, kernel request {}, channels open {}, execute {}",
                medians[0], medians[1], medians[2], medians[3]
            );
            let (_, pool) = call(&http, Method::GET, &format!("{base}/pools/{name}"), None).await;
            let row = Row {
                label,
                p50: percentile(&times, 0.5),
                p99: percentile(&times, 0.99),
                memory: pool["warmBinderMemoryBytes"].as_u64(),
            };
            println!(
                "{:<48} p50 {:>8.1} ms  p99 {:>8.1} ms  pooled binder {}",
                row.label,
                row.p50.as_secs_f64() * 1e3,
                row.p99.as_secs_f64() * 1e3,
                row.memory.map_or("?".to_owned(), |b| format!(
                    "{:.0} MiB",
                    b as f64 / 1048576.0
                ))
            );
            // Stop this pool before the next one is measured.
            call(
                &http,
                Method::DELETE,
                &format!("{base}/bindings/{name}?force=true"),
                None,
            )
            .await;
            rows.push(row);
        }
        // A cell's round trip on open channels: through binderd vs the same
        // server reached directly, alternating, three times each.
        let direct_port = support::free_port();
        let _direct = Direct::start(&venv, direct_port);
        let direct_base = format!("http://127.0.0.1:{direct_port}/");
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", direct_port)).await.is_err()
            || call(&http, Method::GET, &format!("{direct_base}api/status"), None).await.0 != 200
        {
            assert!(Instant::now() < deadline, "the direct Jupyter server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, doc) = call(
            &http,
            Method::POST,
            &format!("{base}/bindings"),
            Some(&binding(&venv, "rt", None)),
        )
        .await;
        assert_eq!(status, 201, "{doc}");
        wait_full(&http, &base, "rt").await;
        let (status, doc) = call(&http, Method::POST, &format!("{base}/binders/rt"), None).await;
        assert_eq!(status, 201, "{doc}");
        let through_base = format!("{base}{}", doc["location"].as_str().unwrap());
        let cells = 16;
        let mut trips: [(Vec<Duration>, Vec<Duration>); 2] = Default::default();
        for _ in 0..3 {
            for (i, at) in [&direct_base, &through_base].into_iter().enumerate() {
                let (first, done) = round_trips(&http, at, cells).await;
                trips[i].0.extend(first);
                trips[i].1.extend(done);
            }
        }
        for t in &mut trips {
            t.0.sort();
            t.1.sort();
        }
        server.stop().await;
        (rows, trips)
    });
    let (rows, trips) = rows;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("\nfirst output after the handout, {handouts} handouts per pool, p50 (p99):");
    println!("| pool | p50 | p99 | pooled binder RSS |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} ms | {:.1} ms | {} |",
            r.label,
            ms(r.p50),
            ms(r.p99),
            r.memory.map_or("?".to_owned(), |b| format!(
                "{:.0} MiB",
                b as f64 / 1048576.0
            ))
        );
    }
    let (a, b, c, a_plus) = (&rows[0], &rows[1], &rows[2], &rows[3]);
    println!(
        "\n(b) vs (a): {:.1}x sooner at p50 ({:.1}x at p99)   target ≥ 10x, (b) p50 < 100 ms",
        ratio(a.p50, b.p50),
        ratio(a.p99, b.p99)
    );
    println!(
        "(c) / (b): {:.2}x at p50   target ≤ 1.5x;   (a+) vs (c): {:.1}x sooner",
        ratio(c.p50, b.p50),
        ratio(a_plus.p50, c.p50)
    );
    let [direct, through] = &trips;
    println!(
        "\na cell on open channels (print(6*7)), {} cells each, p50 (p99):",
        direct.1.len()
    );
    println!("| reached | first output | done (reply and idle) |");
    println!("|---|---|---|");
    for (label, t) in [("directly", direct), ("through binderd", through)] {
        println!(
            "| {label} | {:.1} ms ({:.1}) | {:.1} ms ({:.1}) |",
            ms(percentile(&t.0, 0.5)),
            ms(percentile(&t.0, 0.99)),
            ms(percentile(&t.1, 0.5)),
            ms(percentile(&t.1, 0.99))
        );
    }
    println!(
        "through binderd / directly: {:.2}x (first output), {:.2}x (done) at p50   target ≤ 0.25x",
        ratio(percentile(&through.0, 0.5), percentile(&direct.0, 0.5)),
        ratio(percentile(&through.1, 0.5), percentile(&direct.1, 0.5))
    );
}
