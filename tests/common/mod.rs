//! Test harness: start binderd on 127.0.0.1:0 (in-process through
//! `binderd::run`, or as the real binary), speak HTTP to it, and make sure
//! no process outlives the test.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use binderd::auth::{ApiKey, Role};
use binderd::backend::process::ProcessBackend;
use binderd::config::Config;
use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub const ADMIN: &str = "admin-secret-key";
pub const ALICE: &str = "alice-secret-key";
pub const BOB: &str = "bob-secret-key";

pub fn standin() -> &'static str {
    env!("CARGO_BIN_EXE_binderd-standin")
}

pub fn binderd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_binderd")
}

/// A fresh data dir, removed (with every process labelled for it) on drop.
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn new(name: &str) -> DataDir {
        let dir = std::env::temp_dir().join(format!(
            "binderd-test-{name}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        DataDir(dir)
    }

    pub fn owned_processes(&self) -> usize {
        ProcessBackend::count_owned(&self.0)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        ProcessBackend::kill_all(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub fn keys() -> Vec<ApiKey> {
    vec![
        ApiKey::new("admin", ADMIN, Role::Admin),
        ApiKey::new("alice", ALICE, Role::User),
        ApiKey::new("bob", BOB, Role::User),
    ]
}

pub fn test_config(data: &DataDir) -> Config {
    let mut config = Config::new(&data.0);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.api_keys = keys();
    config.spawn_wait = Duration::from_secs(10);
    config.shutdown_grace = Duration::from_secs(2);
    // Tests spawn fast from one address; the rate-limit tests turn it on.
    config.rate_limit.anonymous_per_minute = 0;
    config.rate_limit.global_per_second = 0;
    config
}

/// The JSON of a binding running the stand-in server.
pub fn standin_binding(name: &str, min: u32, max: u32) -> Value {
    serde_json::json!({
        "name": name,
        "command": [standin(), "--port", "{port}", "--base-url", "{base_url}"],
        "public": true,
        "pool": {"min": min, "max": max},
        "start_timeout_seconds": 10,
    })
}

/// binderd running in this process.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), binderd::Error>>>,
}

impl Server {
    pub async fn start(config: Config) -> Server {
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(binderd::run(config, listener, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A handle on a binderd started some other way (only its address).
    pub fn external(addr: SocketAddr) -> Server {
        Server {
            addr,
            stop: None,
            task: None,
        }
    }

    /// Graceful stop; returns what `run` returned.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("binderd did not stop in time")
                .unwrap()
                .unwrap();
        }
    }
}

/// binderd as a child process (for SIGKILL and exit-code tests).
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Process {
    pub fn spawn(data: &DataDir, extra: &[&str], env: &[(&str, &str)]) -> Process {
        let log = data.0.join(format!("binderd-{}.log", rand_suffix()));
        let mut cmd = Command::new(binderd_bin());
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data.0)
            .args(extra)
            .current_dir(&data.0)
            .env(
                "BINDERD_API_KEYS",
                format!("admin:{ADMIN}:admin,alice:{ALICE}"),
            )
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().unwrap();
        let addr = wait_for_listen_line(&log);
        Process { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_listen_line(log: &Path) -> SocketAddr {
    for _ in 0..300 {
        if let Ok(text) = std::fs::read_to_string(log) {
            if let Some(rest) = text.split("listening on http://").nth(1) {
                let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                return addr.parse().unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "binderd did not log its address: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("request timed out")
            .expect("request failed");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// A request without a body, with an API key or none.
    pub async fn call(&self, method: Method, url: &str, key: Option<&str>) -> Answer {
        let headers: Vec<(&str, &str)> =
            key.map(|k| vec![("authorization", k)]).unwrap_or_default();
        self.send(method, url, &headers, Bytes::new()).await
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.send(Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, url: &str, key: Option<&str>, body: &Value) -> Answer {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(k) = key {
            headers.push(("authorization", k));
        }
        self.send(Method::POST, url, &headers, body.to_string())
            .await
    }
}

/// Polls `GET /pools/{name}` until `check` holds (or fails after `secs`).
pub async fn wait_pool(
    http: &Http,
    base: &str,
    name: &str,
    secs: u64,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let a = http.get(&format!("{base}/pools/{name}")).await;
        if a.status == 200 && check(&a.json()) {
            return a.json();
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "pool {name} never reached the expected state: {} {}",
                a.status, a.body
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts a SPEC error body with this code.
pub fn assert_error(a: &Answer, code: u16) {
    assert_eq!(a.status, code, "{}", a.body);
    let v = a.json();
    assert_eq!(v["error"]["code"], code, "{}", a.body);
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        a.body
    );
}

/// Waits until exactly `n` processes are labelled for `data` (a process is
/// labelled once it has exec'd, a moment after binderd forks it).
pub async fn wait_processes(data: &DataDir, n: usize, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while data.owned_processes() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} processes, found {}",
            data.owned_processes()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Docker tests need the engine (CI has one). Without it they fail, unless
/// BINDERD_SKIP_DOCKER=1 says to skip them on purpose; returns false then.
pub fn docker_ready() -> bool {
    static IMAGE: std::sync::Once = std::sync::Once::new();
    let engine = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine {
        if std::env::var("BINDERD_SKIP_DOCKER").as_deref() == Ok("1") {
            eprintln!("skipping: no Docker engine and BINDERD_SKIP_DOCKER=1");
            return false;
        }
        panic!("the Docker tests need a Docker engine (set BINDERD_SKIP_DOCKER=1 to skip them)");
    }
    IMAGE.call_once(|| {
        let status = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/build-test-image"
        ))
        .arg(standin())
        .status()
        .unwrap();
        assert!(status.success(), "scripts/build-test-image failed");
    });
    true
}

pub const TEST_IMAGE: &str = "binderd/stand-in:test";

/// A binding of the stand-in image on the Docker backend.
pub fn docker_binding(name: &str, min: u32, max: u32) -> Value {
    serde_json::json!({
        "name": name,
        "image": TEST_IMAGE,
        "command": ["--port", "{port}", "--base-url", "{base_url}", "--all-interfaces"],
        "port": 8888,
        "public": true,
        "pool": {"min": min, "max": max},
        "start_timeout_seconds": 20,
    })
}

/// Runs the docker CLI, returning stdout lines.
pub fn docker(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Containers (all states) and networks labelled for this data dir.
pub fn docker_leftovers(data: &DataDir) -> (Vec<String>, Vec<String>) {
    let filter = format!(
        "label=binderd.owner={}",
        binderd::backend::owner_key(&data.0)
    );
    (
        docker(&["ps", "-aq", "--filter", &filter]),
        docker(&["network", "ls", "-q", "--filter", &filter]),
    )
}

/// Removes what a test made on the engine, by its label only.
pub struct DockerCleanup<'a>(pub &'a DataDir);

impl Drop for DockerCleanup<'_> {
    fn drop(&mut self) {
        // A create the engine was still working on may land after a first
        // sweep: sweep until two looks in a row find nothing.
        let mut clean_looks = 0;
        for _ in 0..20 {
            let (containers, networks) = docker_leftovers(self.0);
            if containers.is_empty() && networks.is_empty() {
                clean_looks += 1;
                if clean_looks == 2 {
                    return;
                }
            } else {
                clean_looks = 0;
            }
            if !containers.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(containers.iter().map(String::as_str));
                docker(&args);
            }
            for n in networks {
                docker(&["network", "rm", &n]);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

pub const CAROL: &str = "carol-secret-key";

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `POST {base}/bindings` as the admin; asserts 201.
pub async fn create_binding(http: &Http, base: &str, body: &Value) -> Answer {
    let a = http
        .post_json(&format!("{base}/bindings"), Some(ADMIN), body)
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    a
}

/// Polls `check` until it holds, failing after `secs` with `what`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
