//! Demand-sized vs fixed pools, the same arrivals replayed against each in
//! one run: 150 readers over 60 s, their rate rising to a peak and falling
//! back (a class that arrives, then leaves), on the process backend with a
//! server that takes 2 s to start (`sleep 2`, then the stand-in), as real
//! notebook servers do.
//!
//! For each pool (both `minPool` 2, `maxPool` 250): the share of readers
//! served warm (201), p50/p99 time from the click to a ready location (a
//! cold one waits for its start), and the cost: warm-binder-seconds, the
//! time integral of pool binders not handed out (available + starting).
//!
//! Then a rush that keeps speeding up: 90 readers over 15 s, their rate
//! rising steadily from none to 12 a second, then nobody: the fixed pool
//! and the demand-sized one again.
//!
//! `cargo bench --bench demand` (`BENCH_DEMAND_SECONDS`, default 60;
//! `BENCH_DEMAND_ARRIVALS`, default 150; `BENCH_DEMAND_ONLY_RUSH=1` runs the
//! rush alone; `BENCH_DEMAND_TRACE=1` prints each click and the pool's
//! counts every 100 ms to stderr). Each pool's cold readers are listed by
//! arrival order.

mod support;

use std::time::{Duration, Instant};

use http::Method;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use support::{call, Binderd, Cleanup, Http};

/// Arrival times (seconds from the start) for `n` readers over `span`: a
/// triangular rate, zero at both ends and highest in the middle.
fn arrivals(n: usize, span: f64) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let q = (i as f64 + 0.5) / n as f64;
            let x = if q < 0.5 {
                (q / 2.0).sqrt()
            } else {
                1.0 - ((1.0 - q) / 2.0).sqrt()
            };
            x * span
        })
        .collect()
}

/// Arrival times for `n` readers over `span` whose rate rises steadily from
/// zero (the cumulative count grows as t²): faster and faster.
fn rush(n: usize, span: f64) -> Vec<f64> {
    (0..n)
        .map(|i| span * ((i as f64 + 0.5) / n as f64).sqrt())
        .collect()
}

struct Outcome {
    warm: usize,
    total: usize,
    p50: Duration,
    p99: Duration,
    pool_seconds: f64,
    peak_target: u64,
    /// Which readers (in arrival order) waited for a start.
    cold: Vec<usize>,
}

async fn replay(name: &str, warm_target: Option<f64>, times: Vec<f64>) -> Outcome {
    let n = times.len();
    let data_dir =
        std::env::temp_dir().join(format!("binderd-demand-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let _cleanup = Cleanup(data_dir.clone());
    let server = Binderd::start(&data_dir, |c| c.start_concurrency = 32).await;
    let base = server.base.clone();
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let mut pool = json!({"min": 2, "max": 250});
    if let Some(w) = warm_target {
        pool["warm_target"] = json!(w);
        pool["cooldown_seconds"] = json!(10);
    }
    let binding = json!({
        "name": name,
        "command": ["sh", "-c", format!(
            "sleep 2; exec {} --port {{port}} --base-url {{base_url}}",
            env!("CARGO_BIN_EXE_binderd-standin")
        )],
        "public": true,
        "pool": pool,
        "cull": {"idle_seconds": 3600, "max_age_seconds": 7200, "unvisited_seconds": 0},
    });
    let (status, _) = call(
        &http,
        Method::POST,
        &format!("{base}/bindings"),
        Some(&binding),
    )
    .await;
    assert_eq!(status, 201);
    loop {
        let (_, p) = call(&http, Method::GET, &format!("{base}/pools/{name}"), None).await;
        if p["available"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The pool's cost, sampled every 100 ms while the readers arrive.
    let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
    let sampling = {
        let (http, url) = (http.clone(), format!("{base}/pools/{name}"));
        tokio::spawn(async move {
            let (mut seconds, mut peak) = (0.0, 0);
            let (trace, trace0) = (std::env::var("BENCH_DEMAND_TRACE").is_ok(), Instant::now());
            let mut last = Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = &mut finished => return (seconds, peak),
                }
                let (_, p) = call(&http, Method::GET, &url, None).await;
                let now = Instant::now();
                if trace {
                    eprintln!(
                        "trace {:.2} avail {} starting {} target {} running {}",
                        (now - trace0).as_secs_f64(),
                        p["available"],
                        p["starting"],
                        p["targetPool"],
                        p["running"]
                    );
                }
                let idle =
                    p["available"].as_u64().unwrap_or(0) + p["starting"].as_u64().unwrap_or(0);
                seconds += idle as f64 * (now - last).as_secs_f64();
                peak = peak.max(p["targetPool"].as_u64().unwrap_or(0));
                last = now;
            }
        })
    };
    let t0 = Instant::now();
    let mut readers = Vec::new();
    for at in times {
        let (http, base, name) = (http.clone(), base.clone(), name.to_owned());
        readers.push(tokio::spawn(async move {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(at)).into()).await;
            let clicked = Instant::now();
            if std::env::var("BENCH_DEMAND_TRACE").is_ok() {
                eprintln!("click {:.2}", (clicked - t0).as_secs_f64());
            }
            let (status, doc) =
                call(&http, Method::POST, &format!("{base}/binders/{name}"), None).await;
            assert!(status == 201 || status == 202, "{status} {doc}");
            let id = doc["id"].as_str().unwrap().to_owned();
            if status == 202 {
                loop {
                    let url = format!("{base}/binders/{name}/{id}");
                    let (_, d) = call(&http, Method::GET, &url, None).await;
                    if d["state"] == "ready" {
                        break;
                    }
                    assert_ne!(d["state"], "failed", "{d}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            (status == 201, clicked.elapsed())
        }));
    }
    let mut waits = Vec::new();
    let mut warm = 0;
    let mut cold = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        let (was_warm, took) = r.await.unwrap();
        warm += usize::from(was_warm);
        if !was_warm {
            cold.push(i);
        }
        waits.push(took);
    }
    let _ = done.send(());
    let (pool_seconds, peak_target) = sampling.await.unwrap();
    waits.sort();
    let at = |q: f64| waits[((waits.len() as f64 * q) as usize).min(waits.len() - 1)];
    let (p50, p99) = (at(0.5), at(0.99));
    server.stop().await;
    Outcome {
        warm,
        total: n,
        p50,
        p99,
        pool_seconds,
        peak_target,
        cold,
    }
}

#[tokio::main]
async fn main() {
    let span: f64 = std::env::var("BENCH_DEMAND_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60.0);
    let n: usize = std::env::var("BENCH_DEMAND_ARRIVALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    println!(
        "{n} readers over {span:.0} s (rate rising then falling), servers ready 2 s after start"
    );
    if std::env::var("BENCH_DEMAND_ONLY_RUSH").is_err() {
        let fixed = replay("fixed", None, arrivals(n, span)).await;
        let demand = replay("demand", Some(0.99), arrivals(n, span)).await;
        print_table(&fixed, &demand);
    }
    println!("\n90 readers over 15 s, the rate rising steadily to 12/s (a rush that speeds up)");
    let fixed = replay("rush-fixed", None, rush(90, 15.0)).await;
    let demand = replay("rush-demand", Some(0.99), rush(90, 15.0)).await;
    print_table(&fixed, &demand);
}

fn print_table(fixed: &Outcome, demand: &Outcome) {
    println!();
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>16} {:>12}",
        "", "warm", "p50 ms", "p99 ms", "pool binder·s", "peak target"
    );
    for (name, o) in [
        ("fixed pool (minPool 2)", fixed),
        ("demand-sized (warm_target .99)", demand),
    ] {
        println!(
            "{:<28} {:>9.1}% {:>10.0} {:>10.0} {:>16.0} {:>12}",
            name,
            100.0 * o.warm as f64 / o.total as f64,
            o.p50.as_secs_f64() * 1e3,
            o.p99.as_secs_f64() * 1e3,
            o.pool_seconds,
            o.peak_target
        );
    }
    for (name, o) in [("fixed", fixed), ("demand-sized", demand)] {
        let shown: Vec<String> = o.cold.iter().take(20).map(usize::to_string).collect();
        let more = if o.cold.len() > 20 { ", ..." } else { "" };
        println!(
            "{name}: readers served cold (arrival order): [{}{more}]",
            shown.join(", ")
        );
    }
}
