//! The `process` backend: each binder is a local process tree.
//!
//! The binding's `command` runs with `{port}`, `{base_url}` and `{token}`
//! filled in, in a working directory of its own under the data dir, with
//! stdout and stderr kept in a log file, from a cleared environment (`PATH`,
//! `LANG`, `HOME` = its working dir, `TMPDIR` = `{workdir}/tmp`, then the
//! binding's `env` and binderd's `BINDERD_*` labels): nothing of binderd's
//! own environment (its keys) reaches it.
//!
//! **Isolation** ([`ProcessConfig::isolation`]): where bubblewrap can make
//! Linux namespaces, each binder runs in its own (pid, mount, ipc, uts, and
//! network unless `[process] network = "host"`), sees the host read-only,
//! binderd's data dir, config and key files hidden, a `/tmp` and `/run` of
//! its own, and only its own working dir writable. Where binderd runs as
//! root, each binder runs as a uid of its own ([`ProcessConfig::uid_range`]),
//! never as root; otherwise as binderd's own uid in a user namespace. Inside,
//! `binderd sandbox` ([`sandbox`]) sets the limits (rlimits: open files,
//! processes of the binder's uid, data memory per process) and relays
//! binderd's connections from a host loopback port into the namespace. Where
//! no namespaces can be had, binders run as plain processes with the same
//! environment and limits, binderd says so at start and in `/health`, and
//! that backend then runs trusted code only.
//!
//! Its "labels" are `BINDERD_*` environment variables, which
//! `/proc/{pid}/environ` shows; that is how [`Backend::list`] finds this
//! binderd's processes after a restart and how `stop` makes sure a pid still
//! belongs to the binder before signalling it (pids are reused). Linux only.
//!
//! The backend's jobs, one module each: [`config`] (`[process]`),
//! [`ports`] (where a server listens), [`bubblewrap`] (whether namespaces
//! can be had, and the sandbox's mounts), [`workdir`] (a binder's working
//! dir, log and files), [`uids`] (a uid per binder as root), [`spawn`]
//! (starting a binder from its binding's `command`), [`exits`] (reaping and
//! reporting), [`stop`] (signals), [`procfs`] (what `/proc` says: labels,
//! liveness, memory, adoption), [`unpack`](mod@unpack) (a repository's tar), [`venv`]
//! (`requirements`) and [`sandbox`] (the helper inside). Another way of
//! starting a binder (forked from a warm template, say) is a sibling of
//! `spawn`: it prepares its [`workdir`], labels its processes as `spawn`
//! does and hands its child to [`exits`].

mod bubblewrap;
mod config;
mod exits;
mod ports;
mod procfs;
mod program;
pub mod sandbox;
mod spawn;
mod stop;
mod uids;
mod unpack;
mod venv;
mod workdir;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;

use crate::limits::Limits;

use self::config::DEFAULT_UIDS;
pub use self::config::{IsolationMode, NetworkMode, ProcessConfig};
use self::procfs::{alive, parse_pid, resident_bytes};
pub use self::unpack::unpack;
use super::{
    Backend, BackendError, BackendKind, BuiltEnv, Discovered, EnvRequest, ExitSink, Instance,
    StartSpec,
};

use super::labels::{
    ENV_BASE_URL, ENV_BINDER_ID as ENV_BINDER, ENV_BINDING, ENV_OWNER, ENV_PORT, ENV_UID,
};

/// `PATH` for a binder (and pip) when binderd has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

pub struct ProcessBackend {
    owner: String,
    data_dir: PathBuf,
    work_root: PathBuf,
    log_root: PathBuf,
    exits: ExitSink,
    config: ProcessConfig,
    limits: Limits,
    /// The bubblewrap program, when binders run in namespaces.
    bwrap: Option<PathBuf>,
    /// Why they do not, when they do not.
    no_isolation: Option<String>,
    helper: PathBuf,
    /// Whether binderd runs as root (then each binder gets a uid of its own).
    root: bool,
    /// Uids in use by live binders, uid → binder id.
    uids: Arc<DashMap<u32, String>>,
    /// Our own unreaped children, pid → binder id. Their pids cannot be
    /// reused until we reap them, and right after the fork their
    /// `/proc/{pid}/environ` may still be ours, not their labels.
    children: Arc<DashMap<i32, String>>,
    /// Where environments built from `requirements` live (`venv`).
    envs_root: PathBuf,
    /// One environment build at a time (two bindings may name the same).
    building: tokio::sync::Mutex<()>,
}

impl ProcessBackend {
    /// The backend with the default `[process]` and `[limits]`.
    pub fn new(data_dir: &std::path::Path, exits: ExitSink) -> Result<Self, BackendError> {
        Self::with_config(data_dir, ProcessConfig::default(), Limits::default(), exits)
    }

    pub fn with_config(
        data_dir: &std::path::Path,
        config: ProcessConfig,
        limits: Limits,
        exits: ExitSink,
    ) -> Result<Self, BackendError> {
        let owner = super::owner_key(data_dir);
        fs::create_dir_all(data_dir.join("binders"))?;
        fs::create_dir_all(data_dir.join("logs"))?;
        // Absolute: bubblewrap mounts the working dir at the same path.
        let data_dir = &fs::canonicalize(data_dir)?;
        let work_root = data_dir.join("binders");
        let log_root = data_dir.join("logs");
        // Logs hold what binders print (tokens among it): binderd's only.
        fs::set_permissions(&log_root, fs::Permissions::from_mode(0o700))?;
        let root = nix::unistd::geteuid().is_root();
        let helper = match &config.helper {
            Some(path) => path.clone(),
            None => std::env::current_exe()?,
        };
        // Absolute and without links: bubblewrap mounts it at this path.
        let helper = fs::canonicalize(&helper).unwrap_or(helper);
        let (bwrap, no_isolation) = bubblewrap::choose(&config, root)?;
        if root {
            // Binders run as other uids. In a sandbox their working dir is
            // mounted where they reach it, and the data dir stays binderd's
            // alone; without one they must pass through it to their working
            // dirs (without listing them).
            let mode = if bwrap.is_some() { 0o700 } else { 0o711 };
            for dir in [data_dir, &work_root] {
                fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
            }
        }
        let backend = ProcessBackend {
            owner,
            data_dir: data_dir.to_path_buf(),
            work_root,
            log_root,
            exits,
            config,
            limits,
            bwrap,
            no_isolation,
            helper,
            root,
            uids: Arc::default(),
            children: Arc::default(),
            envs_root: data_dir.join("envs"),
            building: tokio::sync::Mutex::new(()),
        };
        match &backend.no_isolation {
            None => tracing::info!(
                network = ?backend.config.network,
                as_root = root,
                "process binders run in Linux namespaces (bubblewrap)"
            ),
            Some(why) => tracing::warn!(
                reason = %why,
                "process binders run WITHOUT isolation: they see binderd's files and each other; run trusted code only"
            ),
        }
        Ok(backend)
    }

    /// SIGKILLs every process labelled with the owner key of `data_dir`, at
    /// once and without waiting: for test teardown and emergency cleanup.
    /// Returns how many binders were hit.
    pub fn kill_all(data_dir: &std::path::Path) -> usize {
        ProcessBackend::kill_owned(&super::owner_key(data_dir))
    }

    /// Binders with live processes labelled with the owner key of
    /// `data_dir` (a sandboxed binder is several processes).
    pub fn count_binders(data_dir: &std::path::Path) -> usize {
        procfs::binders_of(procfs::scan(&super::owner_key(data_dir), None))
    }
}

#[async_trait]
impl Backend for ProcessBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    fn isolation(&self) -> super::Isolation {
        match &self.no_isolation {
            None => super::Isolation {
                level: "namespaces",
                message: format!(
                    "each binder in Linux namespaces of its own (bubblewrap), {}, {}; limits by rlimits",
                    if self.root { "as a uid of its own" } else { "as binderd's uid in a user namespace" },
                    match self.config.network {
                        NetworkMode::Isolated => "with no network but its own loopback",
                        NetworkMode::Host => "on the host's network (binders can reach each other)",
                    }
                ),
            },
            Some(why) => super::Isolation {
                level: "none",
                message: format!(
                    "process binders run as plain processes ({why}): they can read binderd's files and reach each other; run trusted code only"
                ),
            },
        }
    }

    async fn start(&self, spec: StartSpec<'_>) -> Result<Instance, BackendError> {
        self.spawn_binder(spec, false).await
    }

    async fn put_files(
        &self,
        binder_id: &str,
        _instance: &Instance,
        files: &Path,
    ) -> Result<(), BackendError> {
        if !super::is_binder_id(binder_id) {
            return Err(BackendError::Unsupported(format!(
                "{binder_id:?} is not a binder id"
            )));
        }
        self.put_into_workdir(binder_id, files).await
    }

    async fn build_env(&self, request: EnvRequest<'_>) -> Result<BuiltEnv, BackendError> {
        let _one = self.building.lock().await;
        venv::build(&self.envs_root, request).await
    }

    async fn is_running(&self, instance: &Instance) -> Result<bool, BackendError> {
        Ok(parse_pid(instance).is_some_and(|pid| alive(pid.as_raw()) && self.is_ours(pid, None)))
    }

    /// The sum over every process carrying the binder's label (its kernels
    /// inherit it, whatever session they start).
    async fn memory(&self, binder_id: &str, _instance: &Instance) -> Option<u64> {
        let found = self.scan(Some(binder_id));
        let sizes: Vec<u64> = found
            .iter()
            .filter_map(|(pid, _)| resident_bytes(*pid))
            .collect();
        (!sizes.is_empty()).then(|| sizes.iter().sum())
    }

    async fn stop(&self, binder_id: &str, instance: &Instance) -> Result<(), BackendError> {
        if !super::is_binder_id(binder_id) {
            return Err(BackendError::Unsupported(format!(
                "{binder_id:?} is not a binder id"
            )));
        }
        self.kill_binder(binder_id, instance).await;
        self.release_uid(binder_id);
        self.remove_workdir(binder_id).await;
        Ok(())
    }

    async fn pause(&self, binder_id: &str, instance: &Instance) -> Result<(), BackendError> {
        self.kill_binder(binder_id, instance).await;
        Ok(())
    }

    async fn resume(
        &self,
        spec: StartSpec<'_>,
        _instance: &Instance,
    ) -> Result<Instance, BackendError> {
        self.spawn_binder(spec, true).await
    }

    async fn logs(
        &self,
        binder_id: &str,
        _instance: &Instance,
        tail: usize,
    ) -> Result<String, BackendError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = match tokio::fs::File::open(self.log_path(binder_id)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(e) => return Err(e.into()),
        };
        // Only the end of a large log is read.
        let len = file.metadata().await?.len();
        let from = len.saturating_sub(super::MAX_LOG_BYTES as u64);
        file.seek(std::io::SeekFrom::Start(from)).await?;
        let mut bytes = Vec::with_capacity((len - from) as usize);
        file.read_to_end(&mut bytes).await?;
        Ok(super::tail_lines(&String::from_utf8_lossy(&bytes), tail))
    }

    async fn list(&self) -> Result<Vec<Discovered>, BackendError> {
        Ok(self.discover())
    }

    async fn adopt(&self, binder_id: &str, instance: &Instance) -> Result<(), BackendError> {
        let Some(pid) = parse_pid(instance) else {
            return Err(BackendError::Start("no pid recorded".into()));
        };
        self.watch_adopted(binder_id, pid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::unistd::Pid;

    use super::*;
    use crate::binding::Binding;

    /// The backend as binderd builds it, with the built `binderd` binary as
    /// its sandbox helper (this test binary is not one).
    fn backend(dir: &Path, exits: ExitSink) -> ProcessBackend {
        let bin = std::env::current_exe().unwrap();
        let built = bin.parent().unwrap().parent().unwrap().join("binderd");
        // From under /tmp, which every sandbox covers with its own: the
        // helper must still be there inside (a CI clone may live there).
        let helper = dir.with_extension("helper");
        fs::copy(&built, &helper).unwrap();
        let config = ProcessConfig {
            helper: Some(helper),
            ..ProcessConfig::default()
        };
        ProcessBackend::with_config(dir, config, Limits::default(), exits).unwrap()
    }

    fn binding(command: &[&str]) -> Binding {
        let mut b: Binding = serde_json::from_value(serde_json::json!({
            "name": "t",
            "command": command,
        }))
        .unwrap();
        b.validate(true, 100).unwrap();
        b
    }

    #[tokio::test]
    async fn start_list_stop_a_real_process_group() {
        let dir = std::env::temp_dir().join(format!("binderd-proc-{}", std::process::id()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let backend = backend(&dir, tx);
        // A shell with a child of its own: stop must take both.
        let b = binding(&["sh", "-c", "sleep 300 & echo port={port}; wait"]);
        let inst = backend
            .start(StartSpec {
                binder_id: "b1",
                token: "tok",
                binding: &b,
                base_url: "/user/tok/",
                content: None,
            })
            .await
            .unwrap();
        assert!(backend.is_running(&inst).await.unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let found = backend.list().await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].binder_id, "b1");
        assert_eq!(found[0].instance, inst);
        let log = fs::read_to_string(backend.log_path("b1")).unwrap();
        assert_eq!(log.trim(), format!("port={}", inst.addr.port()));
        // The shell and its sleep (and, in a sandbox, bubblewrap and the helper).
        assert!(backend.scan(Some("b1")).len() >= 2, "shell and sleep");

        backend.stop("b1", &inst).await.unwrap();
        let exit = rx.recv().await.unwrap();
        assert_eq!(exit.binder_id, "b1");
        assert_eq!(exit.handle, inst.handle);
        assert!(backend.scan(Some("b1")).is_empty());
        assert!(!backend.is_running(&inst).await.unwrap());
        assert!(backend.list().await.unwrap().is_empty());
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_file(dir.with_extension("helper"));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_start_error() {
        let dir = std::env::temp_dir().join(format!("binderd-proc2-{}", std::process::id()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let backend = backend(&dir, tx);
        let b = binding(&["/nonexistent/binary"]);
        let started = backend
            .start(StartSpec {
                binder_id: "b2",
                token: "tok",
                binding: &b,
                base_url: "/",
                content: None,
            })
            .await;
        // In a sandbox the helper finds the program missing: an exit whose
        // reason says so, with the program named in the binder's log.
        match started {
            Err(err) => assert!(
                matches!(err, BackendError::Start(ref m) if m.contains("/nonexistent/binary"))
            ),
            Ok(_) => {
                let exit = rx.recv().await.unwrap();
                assert!(
                    exit.reason.contains("cannot run '/nonexistent/binary'"),
                    "{}",
                    exit.reason
                );
                let log = fs::read_to_string(backend.log_path("b2")).unwrap();
                assert!(log.contains("/nonexistent/binary"), "{log}");
            }
        }
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_file(dir.with_extension("helper"));
    }

    #[test]
    fn stop_refuses_a_pid_that_is_not_ours() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let dir = std::env::temp_dir().join(format!("binderd-proc3-{}", std::process::id()));
        let backend = backend(&dir, tx);
        // Our own test process has no BINDERD_OWNER: never "ours".
        let me = Pid::from_raw(std::process::id() as i32);
        assert!(!backend.is_ours(me, None));
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_file(dir.with_extension("helper"));
    }
}
