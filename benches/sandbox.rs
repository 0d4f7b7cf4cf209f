//! What the process backend's isolation costs: filling a pool of N stand-in
//! binders from zero, and requests proxied to one of them, with each binder
//! in its namespaces (bubblewrap, the helper's relay into its network
//! namespace) against the same binders as plain processes on the host's
//! network (`[process] isolation = "none"`), same run, rounds alternated so
//! the machine's drift falls on both.
//!
//! `cargo bench --bench sandbox` (N from `BENCH_POOL`, default 20; rounds
//! from `BENCH_ROUNDS`, default 3; requests per round from
//! `BENCH_REQUESTS`, default 2000). Needs bubblewrap for the namespaces side.

mod support;

use std::time::{Duration, Instant};

use binderd::backend::process::IsolationMode;
use http::Method;
use support::{call, Binderd, Cleanup, Http};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Round {
    fill: Duration,
    latencies: Vec<Duration>,
}

async fn round(mode: IsolationMode, pool: usize, requests: usize) -> Option<Round> {
    let dir = std::env::temp_dir().join(format!(
        "binderd-bench-sandbox-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _cleanup = Cleanup(dir.clone());
    let binderd = Binderd::start(&dir, |c| {
        c.process.isolation = mode;
        c.start_concurrency = 8;
    })
    .await;
    let http: Http =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let (_, root) = call(&http, Method::GET, &format!("{}/", binderd.base), None).await;
    if mode != IsolationMode::None && root["isolation"]["level"] != "namespaces" {
        println!(
            "no namespaces here ({}): nothing to compare",
            root["isolation"]["message"]
        );
        binderd.stop().await;
        return None;
    }
    let binding = serde_json::json!({
        "name": "sandbox",
        "command": [env!("CARGO_BIN_EXE_binderd-standin"), "--port", "{port}", "--base-url", "{base_url}"],
        "public": true,
        "pool": {"min": pool, "max": pool},
    });
    let started = Instant::now();
    let (status, _) = call(
        &http,
        Method::POST,
        &format!("{}/bindings", binderd.base),
        Some(&binding),
    )
    .await;
    assert_eq!(status, 201);
    loop {
        let (_, p) = call(
            &http,
            Method::GET,
            &format!("{}/pools/sandbox", binderd.base),
            None,
        )
        .await;
        if p["available"].as_u64() == Some(pool as u64) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{p}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fill = started.elapsed();
    let (status, doc) = call(
        &http,
        Method::POST,
        &format!("{}/binders/sandbox", binderd.base),
        None,
    )
    .await;
    assert_eq!(status, 201, "{doc}");
    let url = format!(
        "{}{}api/status",
        binderd.base,
        doc["location"].as_str().unwrap()
    );
    let mut latencies = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        let (status, _) = call(&http, Method::GET, &url, None).await;
        latencies.push(t.elapsed());
        assert_eq!(status, 200);
    }
    binderd.stop().await;
    Some(Round { fill, latencies })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let pool = env_or("BENCH_POOL", 20);
    let rounds = env_or("BENCH_ROUNDS", 3);
    let requests = env_or("BENCH_REQUESTS", 2000);
    let mut plain: Vec<Round> = Vec::new();
    let mut isolated: Vec<Round> = Vec::new();
    for _ in 0..rounds {
        plain.extend(round(IsolationMode::None, pool, requests).await);
        match round(IsolationMode::Namespaces, pool, requests).await {
            Some(r) => isolated.push(r),
            None => return,
        }
    }
    let summary = |rs: &[Round]| {
        let fill = median(rs.iter().map(|r| r.fill).collect());
        let mut all: Vec<Duration> = rs.iter().flat_map(|r| r.latencies.clone()).collect();
        all.sort();
        (fill, percentile(&all, 0.5), percentile(&all, 0.99))
    };
    let (pf, p50, p99) = summary(&plain);
    let (nf, n50, n99) = summary(&isolated);
    println!("process backend, pool of {pool}, {rounds} rounds each, {requests} proxied requests a round (one connection)");
    println!("{:<28}{:>12}{:>12}{:>12}", "", "fill", "p50", "p99");
    println!(
        "{:<28}{:>12.1?}{:>12.1?}{:>12.1?}",
        "plain processes", pf, p50, p99
    );
    println!(
        "{:<28}{:>12.1?}{:>12.1?}{:>12.1?}",
        "namespaces (bubblewrap)", nf, n50, n99
    );
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "{:<28}{:>11.2}x{:>11.2}x{:>11.2}x",
        "namespaces / plain",
        ratio(nf, pf),
        ratio(n50, p50),
        ratio(n99, p99)
    );
    println!(
        "the fill's extra time per binder in namespaces: {:.1} ms (starts run 8 at once)",
        (nf.as_secs_f64() - pf.as_secs_f64()) * 1000.0 / pool as f64
    );
}
