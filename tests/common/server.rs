//! binderd under test: in this process through `binderd::run` ([`Server`]),
//! or as the real binary ([`Process`]) for SIGKILL and exit codes; the data
//! dir each test gets, which kills every process labelled for it on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use binderd::auth::{ApiKey, Role};
use binderd::backend::process::ProcessBackend;
use binderd::config::Config;

use super::{ADMIN, ALICE, BOB};

/// The stand-in server, where a binder's own uid can run it: process
/// binders run as uids of their own when the tests run as root, and the
/// build dir may sit where only root may go (a clone under /root).
pub fn standin() -> &'static str {
    static COPY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let built = env!("CARGO_BIN_EXE_binderd-standin");
        let dir = Path::new("/var/tmp/binderd-test-bin");
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        let stamp = std::fs::metadata(built)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let copy = dir.join(format!("binderd-standin-{}-{stamp}", std::process::id()));
        match std::fs::copy(built, &copy) {
            Ok(_) => copy.to_string_lossy().into_owned(),
            Err(_) => built.to_owned(),
        }
    })
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

    pub fn running_binders(&self) -> usize {
        ProcessBackend::count_binders(&self.0)
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
    // In-process binderd: the sandbox helper is the built binary, not this test.
    config.process.helper = Some(binderd_bin().into());
    config.spawn_wait = Duration::from_secs(10);
    config.shutdown_grace = Duration::from_secs(2);
    // Tests spawn fast from one address; the rate-limit tests turn it on.
    config.rate_limit.anonymous_per_minute = 0;
    config.rate_limit.global_per_second = 0;
    config
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
    /// Where its stderr (the log) goes.
    pub log: PathBuf,
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
        Process { child, addr, log }
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
                let addr: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"')
                    .collect();
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

/// Waits until exactly `n` binders have processes labelled for `data` (a
/// process is labelled once it has exec'd, a moment after binderd forks it).
pub async fn wait_binders(data: &DataDir, n: usize, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while data.running_binders() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} binders, found {}",
            data.running_binders()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
