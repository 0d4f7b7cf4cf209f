//! Shared by the benches: the admin key and a JSON call to binderd, the
//! clean-up of the processes a bench started, and a backend whose
//! "containers" cost nothing, so that binderd's own handout path can be
//! measured at sustained rates. Every
//! instance is the same stand-in server; each binder still has its own token
//! and goes through start, readiness check, handout and the store like any
//! other. BENCHMARKS.md says where this backend is used.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use binderd::auth::{ApiKey, Role};
use binderd::backend::process::ProcessBackend;
use binderd::backend::{Backend, BackendError, BackendKind, Discovered, Instance, StartSpec};
use binderd::config::Config;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use serde_json::Value;

pub const KEY: &str = "bench-admin-key";

pub type Http = Client<HttpConnector, Full<Bytes>>;

/// A free loopback port (bound, then released), for a server a bench starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 10 s) until something accepts connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("nothing listens on {addr}");
}

/// binderd in this process on a free loopback port, without rate limits,
/// with the admin key [`KEY`].
pub struct Binderd {
    pub base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), binderd::Error>>,
}

impl Binderd {
    /// Starts it; `tune` adjusts the configuration first.
    pub async fn start(data_dir: &std::path::Path, tune: impl FnOnce(&mut Config)) -> Binderd {
        let mut config = Config::new(data_dir);
        config.process.helper = Some(env!("CARGO_BIN_EXE_binderd").into());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.rate_limit.anonymous_per_minute = 0;
        config.rate_limit.global_per_second = 0;
        config.rate_limit.anonymous_concurrent = 0;
        config.rate_limit.anonymous_total = 0;
        config.api_keys = vec![ApiKey::new("admin", KEY, Role::Admin)];
        tune(&mut config);
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(binderd::run(config, listener, async {
            let _ = stopped.await;
        }));
        Binderd { base, stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// One JSON call to binderd as the admin: the status and the parsed answer
/// (`Null` when it is not JSON).
pub async fn call(http: &Http, method: Method, url: &str, body: Option<&Value>) -> (u16, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", KEY);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let resp = http
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Kills every process binderd started for the data dir `{0}` and removes
/// it, even if the bench panics.
pub struct Cleanup(pub std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        ProcessBackend::kill_all(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct SharedServerBackend {
    pub addr: SocketAddr,
    next: AtomicU64,
    /// What `list` reports (for the adoption-at-scale bench).
    pub discovered: std::sync::Mutex<Vec<Discovered>>,
}

impl SharedServerBackend {
    pub fn new(addr: SocketAddr) -> SharedServerBackend {
        SharedServerBackend {
            addr,
            next: AtomicU64::new(1),
            discovered: std::sync::Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl Backend for SharedServerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    fn isolation(&self) -> binderd::backend::Isolation {
        binderd::backend::Isolation {
            level: "none",
            message: "the bench's one shared server".into(),
        }
    }
    async fn start(&self, _spec: StartSpec<'_>) -> Result<Instance, BackendError> {
        Ok(Instance {
            handle: self.next.fetch_add(1, Ordering::Relaxed).to_string(),
            addr: self.addr,
        })
    }
    async fn is_running(&self, _instance: &Instance) -> Result<bool, BackendError> {
        Ok(true)
    }
    async fn stop(&self, _binder_id: &str, _instance: &Instance) -> Result<(), BackendError> {
        Ok(())
    }
    async fn list(&self) -> Result<Vec<Discovered>, BackendError> {
        Ok(self.discovered.lock().unwrap().clone())
    }
    async fn adopt(&self, _binder_id: &str, _instance: &Instance) -> Result<(), BackendError> {
        Ok(())
    }
    async fn pause(&self, _binder_id: &str, _instance: &Instance) -> Result<(), BackendError> {
        Err(BackendError::Unsupported("bench backend".into()))
    }
    async fn resume(
        &self,
        _spec: StartSpec<'_>,
        _instance: &Instance,
    ) -> Result<Instance, BackendError> {
        Err(BackendError::Unsupported("bench backend".into()))
    }
    async fn logs(
        &self,
        _binder_id: &str,
        _instance: &Instance,
        _tail: usize,
    ) -> Result<String, BackendError> {
        Ok(String::new())
    }
}

/// CPU seconds of process `pid`'s live threads ("self" for this one), from
/// each thread's nanosecond schedstat rather than the 10 ms ticks of `stat`.
pub fn cpu_seconds(pid: &str) -> f64 {
    let mut ns = 0u64;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
    for task in tasks.into_iter().flatten().flatten() {
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += s
                .split(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

/// Starts the stand-in server (base `/`) on a free port; killed on drop.
pub struct Standin(pub std::process::Child, pub SocketAddr);

impl Standin {
    pub fn start() -> Standin {
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_binderd-standin"))
            .args(["--port", &port.to_string(), "--base-url", "/"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..200 {
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Standin(child, addr)
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
