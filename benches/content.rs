//! Content from a repository, against the same binding without it, in one
//! run (process backend, the stand-in server):
//!
//! - fill: the time from `POST /bindings` to 20 warm binders, with no
//!   repository and with a 50 MB one (the copy happens at fill time);
//! - handout: p50/p99 of `POST /binders/{b}` from those full pools (the
//!   handout is a pop either way);
//! - launch: a `/build` link to the `ready` event, p50 of 30, for a
//!   binding that serves its repository (files in the image: a pop) and
//!   for a default binding that takes the repository at launch (cached:
//!   a pop plus the copy of its files into the binder), with a small
//!   repository (a notebook and 20 files of 10 KB) and the 50 MB one;
//! - environment: the first build of a `requirements` file (a virtual
//!   environment, pip from a local wheelhouse) vs a second binding naming
//!   the same file (built before). Needs `scripts/jupyter-venv`'s
//!   wheelhouse; skipped (said so) without it.
//!
//! `cargo bench --bench content` (`BENCH_CONTENT_MB`, default 50).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use http::Method;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use support::{call, Binderd, Cleanup, Http};

const BINDERS: u64 = 20;
const HANDOUTS: usize = 200;

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(["-c", "user.name=b", "-c", "user.email=b@b"])
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

/// A repository of `mb` MB of incompressible files (1 MB each) and a
/// notebook, with a `requirements.txt` naming `cowsay`.
fn repository(dir: &Path, mb: usize) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    git(dir, &["init", "-q"]);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..mb {
        let mut bytes = vec![0u8; 1 << 20];
        for chunk in bytes.chunks_mut(8) {
            // xorshift: no compression for git or the cache to profit from
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(dir.join(format!("data/part{i}.bin")), bytes).unwrap();
    }
    std::fs::write(dir.join("intro.ipynb"), "{}").unwrap();
    std::fs::write(dir.join("requirements.txt"), "cowsay==6.1\n").unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "bench"]);
}

fn binding(name: &str, repo: Option<&Path>) -> Value {
    let mut b = json!({
        "name": name,
        "command": [env!("CARGO_BIN_EXE_binderd-standin"), "--port", "{port}", "--base-url", "{base_url}"],
        "public": true,
        "pool": {"min": BINDERS, "max": BINDERS + 5},
    });
    if let Some(repo) = repo {
        b["repo"] = json!(format!("file://{}", repo.display()));
    }
    b
}

async fn wait_available(http: &Http, base: &str, name: &str, n: u64) {
    loop {
        let (_, p) = call(http, Method::GET, &format!("{base}/pools/{name}"), None).await;
        if p["available"].as_u64() == Some(n) {
            return;
        }
        let (_, b) = call(http, Method::GET, &format!("{base}/bindings/{name}"), None).await;
        assert_ne!(b["status"], "error", "{b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Create → `BINDERS` warm: the fill time.
async fn fill(http: &Http, base: &str, body: &Value) -> Duration {
    let began = Instant::now();
    let (status, doc) = call(http, Method::POST, &format!("{base}/bindings"), Some(body)).await;
    assert_eq!(status, 201, "{doc}");
    wait_available(http, base, body["name"].as_str().unwrap(), BINDERS).await;
    began.elapsed()
}

/// p50 and p99 of `HANDOUTS` handouts, taken while the pool refills
/// (one at a time: each is a pop of a warm one).
async fn handouts(http: &Http, base: &str, name: &str) -> (Duration, Duration) {
    let mut took = Vec::with_capacity(HANDOUTS);
    for _ in 0..HANDOUTS {
        wait_available(http, base, name, BINDERS).await;
        let began = Instant::now();
        let (status, doc) = call(http, Method::POST, &format!("{base}/binders/{name}"), None).await;
        took.push(began.elapsed());
        assert_eq!(status, 201, "{doc}");
        let id = doc["id"].as_str().unwrap();
        call(
            http,
            Method::DELETE,
            &format!("{base}/binders/{name}/{id}"),
            None,
        )
        .await;
    }
    took.sort();
    (took[HANDOUTS / 2], took[HANDOUTS * 99 / 100])
}

/// `GET {url}` as an event-stream client, read to its end; the time and
/// the `ready` event's server URL (none: it did not end ready).
async fn launch(http: &Http, url: &str) -> (Duration, Option<String>) {
    let req = http::Request::get(url)
        .header("accept", "text/event-stream")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let began = Instant::now();
    let resp = http.request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let took = began.elapsed();
    let text = String::from_utf8_lossy(&body);
    let ready = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|e| e["phase"] == "ready")
        .and_then(|e| e["url"].as_str().map(str::to_owned));
    (took, ready)
}

fn escaped(url: &str) -> String {
    url.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// p50 of `n` launches of `url`, each from a full pool of `name`.
async fn launches(http: &Http, base: &str, name: &str, url: &str, n: usize, full: u64) -> Duration {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        wait_available(http, base, name, full).await;
        let (t, ready) = launch(http, url).await;
        let server = ready.unwrap_or_else(|| panic!("{url} did not end ready"));
        if i == 0 && name == "default" {
            // A launch's notebook is there (the stand-in reads its working dir).
            let (status, _) = call(
                http,
                Method::GET,
                &format!("{server}file?name=intro.ipynb"),
                None,
            )
            .await;
            assert_eq!(status, 200, "{server}: no intro.ipynb");
        }
        took.push(t);
    }
    took.sort();
    took[n / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn wheelhouse() -> Option<std::path::PathBuf> {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/jupyter-venv"))
        .output()
        .ok()?;
    let venv = String::from_utf8(out.stdout).ok()?;
    let wheels = Path::new(venv.trim()).join("wheelhouse");
    wheels.join(".complete").exists().then_some(wheels)
}

#[tokio::main]
async fn main() {
    let mb: usize = std::env::var("BENCH_CONTENT_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let data_dir =
        std::env::temp_dir().join(format!("binderd-bench-content-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let _cleanup = Cleanup(data_dir.clone());
    let repo = std::env::temp_dir().join(format!("binderd-bench-repo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&repo);
    let _repo_cleanup = Cleanup(repo.clone());
    repository(&repo, mb);
    let wheels = wheelhouse();
    let server = Binderd::start(&data_dir, |c| {
        c.content.allow_local = true;
        c.start_concurrency = 8;
        if Path::new("/usr/bin/python3").exists() {
            c.content.python = "/usr/bin/python3".into();
        }
        if let Some(w) = &wheels {
            c.content.pip_args = vec![
                "--no-index".into(),
                "--find-links".into(),
                w.display().to_string(),
            ];
        }
    })
    .await;
    let base = server.base.clone();
    let http: Http = Client::builder(TokioExecutor::new()).build_http();

    println!("content: {BINDERS} binders, a {mb} MB repository, {HANDOUTS} handouts each");
    let plain = fill(&http, &base, &binding("plain", None)).await;
    let with = fill(&http, &base, &binding("repo", Some(&repo))).await;
    println!(
        "fill to {BINDERS} warm: plain {:.0} ms, with the repository {:.0} ms (x{:.2})",
        ms(plain),
        ms(with),
        with.as_secs_f64() / plain.as_secs_f64()
    );
    let (p50_plain, p99_plain) = handouts(&http, &base, "plain").await;
    let (p50_repo, p99_repo) = handouts(&http, &base, "repo").await;
    println!(
        "handout p50: plain {:.3} ms, with the repository {:.3} ms (x{:.2}); p99 {:.3} vs {:.3} ms",
        ms(p50_plain),
        ms(p50_repo),
        p50_repo.as_secs_f64() / p50_plain.as_secs_f64(),
        ms(p99_plain),
        ms(p99_repo)
    );
    // Those pools go first, and the 200 × 50 MB working dirs the handouts
    // left with them: the launches below are measured on a quiet machine.
    for name in ["plain", "repo"] {
        call(
            &http,
            Method::DELETE,
            &format!("{base}/bindings/{name}?force=true"),
            None,
        )
        .await;
    }
    let quiet_by = Instant::now() + Duration::from_secs(60);
    while Instant::now() < quiet_by
        && (binderd::backend::process::ProcessBackend::count_binders(&data_dir) > 0
            || std::fs::read_dir(data_dir.join("binders")).map_or(0, |d| d.count()) > 0)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Launch links: a binding that serves the repository (its files in the
    // image) vs a default binding taking it at launch (cached).
    let small = std::env::temp_dir().join(format!("binderd-bench-small-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&small);
    let _small_cleanup = Cleanup(small.clone());
    std::fs::create_dir_all(small.join("data")).unwrap();
    git(&small, &["init", "-q"]);
    for i in 0..20 {
        std::fs::write(small.join(format!("data/f{i}.csv")), vec![b'x'; 10 << 10]).unwrap();
    }
    std::fs::write(small.join("intro.ipynb"), "{}").unwrap();
    git(&small, &["add", "-A"]);
    git(&small, &["commit", "-q", "-m", "small"]);
    const LAUNCHES: usize = 30;
    let full = 4;
    let mut served = binding("served", None);
    served["repo"] = json!("https://example.org/served");
    served["content"] = json!({"from": "image"});
    served["pool"] = json!({"min": full, "max": full + 50});
    let mut default = binding("default", None);
    default["content"] =
        json!({"from": "launch", "repos": [format!("{}/*", std::env::temp_dir().display())]});
    default["pool"] = json!({"min": full, "max": full + 50});
    for b in [&served, &default] {
        let (status, doc) = call(&http, Method::POST, &format!("{base}/bindings"), Some(b)).await;
        assert_eq!(status, 201, "{doc}");
    }
    let plain_url = format!(
        "{base}/build/git/{}/HEAD",
        escaped("https://example.org/served")
    );
    let small_url = format!(
        "{base}/build/git/{}/HEAD",
        escaped(&format!("file://{}", small.display()))
    );
    let big_url = format!(
        "{base}/build/git/{}/HEAD",
        escaped(&format!("file://{}", repo.display()))
    );
    // The first launch of each fetches; the rest are cached.
    for url in [&small_url, &big_url] {
        wait_available(&http, &base, "default", full).await;
        assert!(launch(&http, url).await.1.is_some());
    }
    let p_plain = launches(&http, &base, "served", &plain_url, LAUNCHES, full).await;
    let p_small = launches(&http, &base, "default", &small_url, LAUNCHES, full).await;
    let p_big = launches(&http, &base, "default", &big_url, 10, full).await;
    println!(
        "launch to ready, p50: served {:.2} ms; at launch, cached: small {:.2} ms (x{:.2}), {mb} MB {:.1} ms (x{:.1})",
        ms(p_plain),
        ms(p_small),
        p_small.as_secs_f64() / p_plain.as_secs_f64(),
        ms(p_big),
        p_big.as_secs_f64() / p_plain.as_secs_f64()
    );

    // Stop those pools: the environments' fills are measured alone.
    for name in ["served", "default"] {
        call(
            &http,
            Method::DELETE,
            &format!("{base}/bindings/{name}?force=true"),
            None,
        )
        .await;
    }

    if wheels.is_none() {
        println!("environment: skipped (no wheelhouse: run scripts/jupyter-venv)");
    } else {
        let mut first = binding("env1", Some(&repo));
        first["requirements"] = json!("requirements.txt");
        first["pool"] = json!({"min": 1, "max": 2});
        let mut second = first.clone();
        second["name"] = json!("env2");
        let built = Instant::now();
        let (status, doc) = call(
            &http,
            Method::POST,
            &format!("{base}/bindings"),
            Some(&first),
        )
        .await;
        assert_eq!(status, 201, "{doc}");
        wait_available(&http, &base, "env1", 1).await;
        let built = built.elapsed();
        let cached = Instant::now();
        let (status, doc) = call(
            &http,
            Method::POST,
            &format!("{base}/bindings"),
            Some(&second),
        )
        .await;
        assert_eq!(status, 201, "{doc}");
        wait_available(&http, &base, "env2", 1).await;
        let cached = cached.elapsed();
        println!(
            "environment to the first warm binder: first build {:.0} ms, built before {:.0} ms (x{:.1} faster)",
            ms(built),
            ms(cached),
            built.as_secs_f64() / cached.as_secs_f64()
        );
    }
    server.stop().await;
}
