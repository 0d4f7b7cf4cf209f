//! Filling a Docker pool of N from zero with binderd vs creating and starting
//! N containers of the same image directly with bollard at the same
//! concurrency, same run; then warm handout latency from the Docker pool.
//!
//! Needs the engine and `scripts/build-test-image`.
//! `cargo bench --bench docker_fill` (N from `BENCH_POOL`, default 20;
//! concurrency from `BENCH_CONCURRENCY`, default 8).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use binderd::auth::{ApiKey, Role};
use binderd::backend::BackendKind;
use binderd::config::Config;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

const IMAGE: &str = "binderd/stand-in:test";
const KEY: &str = "bench-admin-key";
const BASELINE_LABEL: &str = "binderd.bench-baseline";

async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench")
        .header("authorization", KEY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// Creates and starts `n` containers directly, `concurrency` at a time.
async fn baseline(docker: &Docker, n: usize, concurrency: usize) -> Duration {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let docker = docker.clone();
        let permits = permits.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.unwrap();
            let body = ContainerCreateBody {
                image: Some(IMAGE.into()),
                cmd: Some(vec![
                    "--port".into(),
                    "8888".into(),
                    "--all-interfaces".into(),
                ]),
                labels: Some(HashMap::from([(BASELINE_LABEL.into(), "1".into())])),
                exposed_ports: Some(HashMap::from([("8888/tcp".into(), HashMap::new())])),
                host_config: Some(HostConfig {
                    port_bindings: Some(HashMap::from([(
                        "8888/tcp".into(),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some(String::new()),
                        }]),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let name = format!("binderd-bench-baseline-{}-{i}", std::process::id());
            let created = docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(name),
                        platform: String::new(),
                    }),
                    body,
                )
                .await
                .unwrap();
            docker
                .start_container(
                    &created.id,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    t.elapsed()
}

async fn remove_baseline(docker: &Docker) {
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".into(),
                vec![BASELINE_LABEL.into()],
            )])),
            ..Default::default()
        }))
        .await
        .unwrap();
    for c in list {
        let _ = docker
            .remove_container(
                &c.id.unwrap_or_default(),
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    link: false,
                }),
            )
            .await;
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let status = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/build-test-image"
    ))
    .arg(env!("CARGO_BIN_EXE_binderd-standin"))
    .status()
    .expect("scripts/build-test-image");
    assert!(status.success());
    let docker = Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();

    // Baseline first, then binderd, then baseline again: report the mean.
    remove_baseline(&docker).await;
    let base1 = baseline(&docker, n, concurrency).await;
    remove_baseline(&docker).await;

    let data_dir =
        std::env::temp_dir().join(format!("binderd-bench-docker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let mut config = Config::new(&data_dir);
    config.process.helper = Some(env!("CARGO_BIN_EXE_binderd").into());
    config.listen = "127.0.0.1:0".parse().unwrap();
    // Measuring binderd's own path: no rate limits.
    config.rate_limit.anonymous_per_minute = 0;
    config.rate_limit.global_per_second = 0;
    config.rate_limit.anonymous_concurrent = 0;
    config.rate_limit.anonymous_total = 0;
    config.backend = BackendKind::Docker;
    config.start_concurrency = concurrency;
    config.cleanup_on_exit = true;
    config.api_keys = vec![ApiKey::new("admin", KEY, Role::Admin)];
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(binderd::run(config, listener, async {
        let _ = stopped.await;
    }));
    let binding = serde_json::json!({
        "name": "fill",
        "image": IMAGE,
        "command": ["--port", "{port}", "--base-url", "{base_url}", "--all-interfaces"],
        "port": 8888,
        "public": true,
        "pool": {"min": n, "max": n + 20},
    });
    let t = Instant::now();
    let (status, _) = request(addr, "POST", "/bindings", &binding.to_string()).await;
    assert_eq!(status, 201);
    loop {
        let (_, pool) = request(addr, "GET", "/pools/fill", "").await;
        if pool["available"].as_u64() == Some(n as u64) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "pool did not fill: {pool}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fill = t.elapsed();

    // Warm handouts (each starts a replacement in the background).
    let mut handouts = Vec::new();
    for _ in 0..n.min(20) {
        let t = Instant::now();
        let (status, _) = request(addr, "POST", "/binders/fill", "").await;
        handouts.push(t.elapsed());
        assert_eq!(status, 201);
    }
    handouts.sort();
    let _ = stop.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&data_dir);

    let base2 = baseline(&docker, n, concurrency).await;
    remove_baseline(&docker).await;
    let base = (base1 + base2) / 2;

    println!("Docker pool of {n}, concurrency {concurrency}");
    println!(
        "  bollard create+start (baseline): {:.2}s, {:.2}s (mean {:.2}s)",
        base1.as_secs_f64(),
        base2.as_secs_f64(),
        base.as_secs_f64()
    );
    println!(
        "  binderd fill (create+start+publish+HTTP ready): {:.2}s",
        fill.as_secs_f64()
    );
    println!(
        "  ratio binderd/baseline: {:.2}x   (target ≤ 1.2x)",
        fill.as_secs_f64() / base.as_secs_f64()
    );
    let at = |q: f64| handouts[((handouts.len() as f64 * q) as usize).min(handouts.len() - 1)];
    println!(
        "  warm handout from the Docker pool (new connection each): p50 {:.0} µs, max {:.0} µs",
        at(0.5).as_secs_f64() * 1e6,
        handouts.last().unwrap().as_secs_f64() * 1e6
    );
}
