//! The `process` backend: each binder is a local process group.
//!
//! The binding's `command` runs with `{port}` (a free loopback port chosen
//! here, from 20000–32767, below the ephemeral range: see [`PORTS`]),
//! `{base_url}` and `{token}` filled in, in its own process group (so a
//! SIGKILL of binderd leaves it running, to be adopted), in a working
//! directory of its own under the data dir, with stdout and stderr kept in a
//! log file. `env` values get the same placeholders plus `{workdir}` (that
//! working directory), and `TMPDIR` is `{workdir}/tmp` unless the binding
//! sets it, so a stopped binder leaves nothing of its own outside the data
//! dir (its working directory goes when it stops). Its "labels" are `BINDERD_*` environment variables, which
//! `/proc/{pid}/environ` shows; that is how [`Backend::list`] finds this
//! binderd's processes after a restart and how `stop` makes sure a pid still
//! belongs to the binder before signalling it (pids are reused). Linux only.

use std::collections::HashMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Command;

use super::{
    fill_template, Backend, BackendError, BackendKind, Discovered, ExitSink, Instance, StartSpec,
};

const ENV_OWNER: &str = "BINDERD_OWNER";
const ENV_BINDING: &str = "BINDERD_BINDING";
const ENV_BINDER: &str = "BINDERD_BINDER_ID";
const ENV_PORT: &str = "BINDERD_PORT";
/// How long a process group gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How often adopted processes (not our children) are checked for life.
const ADOPTED_POLL: Duration = Duration::from_millis(500);

pub struct ProcessBackend {
    owner: String,
    work_root: PathBuf,
    log_root: PathBuf,
    exits: ExitSink,
    /// Our own unreaped children, pid → binder id. Their pids cannot be
    /// reused until we reap them, and right after the fork their
    /// `/proc/{pid}/environ` may still be ours, not their labels.
    children: Arc<DashMap<i32, String>>,
}

impl ProcessBackend {
    pub fn new(data_dir: &std::path::Path, exits: ExitSink) -> Result<Self, BackendError> {
        let work_root = data_dir.join("binders");
        let log_root = data_dir.join("logs");
        fs::create_dir_all(&work_root)?;
        fs::create_dir_all(&log_root)?;
        Ok(ProcessBackend {
            owner: super::owner_key(data_dir),
            work_root,
            log_root,
            exits,
            children: Arc::default(),
        })
    }

    /// SIGKILLs every process labelled with the owner key of `data_dir`, at
    /// once and without waiting: for test teardown and emergency cleanup.
    /// Returns how many were signalled.
    pub fn kill_all(data_dir: &std::path::Path) -> usize {
        let found = Self::labelled_for(data_dir);
        for (pid, _) in &found {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        found.len()
    }

    /// Live processes labelled with the owner key of `data_dir`.
    pub fn count_owned(data_dir: &std::path::Path) -> usize {
        Self::labelled_for(data_dir).len()
    }

    fn labelled_for(data_dir: &std::path::Path) -> Vec<(i32, HashMap<String, String>)> {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let backend = ProcessBackend {
            owner: super::owner_key(data_dir),
            work_root: data_dir.join("binders"),
            log_root: data_dir.join("logs"),
            exits: tx,
            children: Arc::default(),
        };
        backend.scan(None)
    }

    /// Path of a binder's output, for the logs endpoint.
    pub fn log_path(&self, binder_id: &str) -> PathBuf {
        self.log_root.join(format!("{binder_id}.log"))
    }
}

/// Where a binder's `{port}` comes from: below Linux's default ephemeral
/// range (32768–60999). The port is free when it is picked, but the server
/// binds it only once it has started (a second or more for a real one);
/// a port from the ephemeral range could meanwhile be given to any outgoing
/// connection — binderd's own readiness checks and proxied requests make
/// thousands — and the server would then fail to start.
const PORTS: std::ops::Range<u16> = 20_000..32_768;

/// The next port to try, as an offset into [`PORTS`]: one cursor for the
/// whole process, starting at a random place, so concurrent starts (of one
/// backend or several) never pick the same port while a server is still
/// on its way to binding it.
fn next_port() -> u16 {
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
    let len = u32::from(PORTS.end - PORTS.start);
    let next = NEXT.get_or_init(|| rand::random::<u32>().into());
    let offset = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % len;
    PORTS.start + offset as u16
}

/// A loopback port nothing is bound to (a live binder's server holds its
/// own, so it is skipped).
fn free_port() -> Result<u16, BackendError> {
    free_port_from(next_port)
}

fn free_port_from(mut next: impl FnMut() -> u16) -> Result<u16, BackendError> {
    for _ in PORTS {
        let port = next();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(BackendError::Start(format!(
        "no free loopback port in {}–{}",
        PORTS.start,
        PORTS.end - 1
    )))
}

fn parse_pid(instance: &Instance) -> Option<Pid> {
    instance
        .handle
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 1)
        .map(Pid::from_raw)
}

/// The `BINDERD_*` variables of a process, or `None` when it is gone or not
/// readable.
fn binderd_env(pid: i32) -> Option<HashMap<String, String>> {
    let raw = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mut vars = HashMap::new();
    for entry in raw.split(|b| *b == 0) {
        if !entry.starts_with(b"BINDERD_") {
            continue;
        }
        let entry = String::from_utf8_lossy(entry);
        if let Some((k, v)) = entry.split_once('=') {
            vars.insert(k.to_owned(), v.to_owned());
        }
    }
    Some(vars)
}

/// Process state letter and process group of a pid, from `/proc/{pid}/stat`.
fn stat(pid: i32) -> Option<(char, i32)> {
    let raw = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: parse after it.
    let rest = raw.get(raw.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Resident set size of a pid, from `/proc/{pid}/status` (`VmRSS`, kB).
fn resident_bytes(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

impl ProcessBackend {
    /// Every live pid labelled with this owner and `binder_id` (or any binder
    /// when `binder_id` is `None`), with its variables.
    fn scan(&self, binder_id: Option<&str>) -> Vec<(i32, HashMap<String, String>)> {
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Some(vars) = binderd_env(pid) else {
                continue;
            };
            if vars.get(ENV_OWNER) != Some(&self.owner) {
                continue;
            }
            if let Some(id) = binder_id {
                if vars.get(ENV_BINDER).map(String::as_str) != Some(id) {
                    continue;
                }
            }
            if alive(pid) {
                found.push((pid, vars));
            }
        }
        found
    }

    fn is_ours(&self, pid: Pid, binder_id: Option<&str>) -> bool {
        if let Some(child) = self.children.get(&pid.as_raw()) {
            return binder_id.is_none_or(|id| id == child.value());
        }
        binderd_env(pid.as_raw()).is_some_and(|vars| {
            vars.get(ENV_OWNER) == Some(&self.owner)
                && binder_id.is_none_or(|id| vars.get(ENV_BINDER).map(String::as_str) == Some(id))
        })
    }
}

impl ProcessBackend {
    /// Runs the binding's command for a binder; `resume` keeps the working
    /// dir and appends to the log.
    async fn spawn_binder(
        &self,
        spec: StartSpec<'_>,
        resume: bool,
    ) -> Result<Instance, BackendError> {
        let port = free_port()?;
        let args: Vec<String> = spec
            .binding
            .command
            .iter()
            .map(|a| fill_template(a, port, spec.base_url, spec.token))
            .collect();
        let Some((program, rest)) = args.split_first() else {
            return Err(BackendError::Start("the binding has no command".into()));
        };
        let workdir = self.work_root.join(spec.binder_id);
        fs::create_dir_all(&workdir)?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(resume)
            .write(true)
            .truncate(!resume)
            .open(self.log_path(spec.binder_id))?;
        // Temporary files go with the binder: a `tmp/` of its own in its
        // working dir (removed when it stops), unless the binding says where.
        let tmp = workdir.join("tmp");
        fs::create_dir_all(&tmp)?;
        let workdir_text = workdir.to_string_lossy();
        let env = spec.binding.env.iter().map(|(k, v)| {
            let v = fill_template(v, port, spec.base_url, spec.token);
            (k, v.replace("{workdir}", &workdir_text))
        });
        let mut command = Command::new(program);
        command
            .args(rest)
            .current_dir(&workdir)
            .env("TMPDIR", &tmp)
            .envs(env)
            .env(ENV_OWNER, &self.owner)
            .env(ENV_BINDING, &spec.binding.name)
            .env(ENV_BINDER, spec.binder_id)
            .env(ENV_PORT, port.to_string())
            .env("BINDERD_BASE_URL", spec.base_url)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command
            .spawn()
            .map_err(|e| BackendError::Start(format!("cannot run '{program}': {e}")))?;
        let pid = child
            .id()
            .ok_or_else(|| BackendError::Start(format!("'{program}' exited at once")))?;
        // Reap our child and report its exit; the pool ignores exits of
        // binders it is stopping itself.
        let pid_key = pid as i32;
        self.children.insert(pid_key, spec.binder_id.to_owned());
        let exits = self.exits.clone();
        let children = self.children.clone();
        let binder_id = spec.binder_id.to_owned();
        tokio::spawn(async move {
            let _ = child.wait().await;
            children.remove(&pid_key);
            let _ = exits.send(super::Exit {
                binder_id,
                handle: pid_key.to_string(),
                reason: "the process exited".into(),
            });
        });
        Ok(Instance {
            handle: pid.to_string(),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        })
    }

    /// Stops a binder's process group (SIGTERM, then SIGKILL) and anything
    /// else carrying its label; files stay.
    async fn kill_binder(&self, binder_id: &str, instance: &Instance) {
        if let Some(pid) = parse_pid(instance) {
            // Only signal a group whose leader is still this binder's process.
            if self.is_ours(pid, Some(binder_id)) {
                let _ = killpg(pid, Signal::SIGTERM);
                let deadline = tokio::time::Instant::now() + STOP_GRACE;
                while alive(pid.as_raw()) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                let _ = killpg(pid, Signal::SIGKILL);
            }
        }
        // Anything still carrying this binder's label (children that left
        // the group, or a group whose leader died first) goes too.
        for (pid, _) in self.scan(Some(binder_id)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[async_trait]
impl Backend for ProcessBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    async fn start(&self, spec: StartSpec<'_>) -> Result<Instance, BackendError> {
        self.spawn_binder(spec, false).await
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
        self.kill_binder(binder_id, instance).await;
        let workdir = self.work_root.join(binder_id);
        if workdir.exists() {
            let _ = tokio::fs::remove_dir_all(&workdir).await;
        }
        let _ = tokio::fs::remove_file(self.log_path(binder_id)).await;
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
        let mut by_binder: HashMap<String, Discovered> = HashMap::new();
        for (pid, vars) in self.scan(None) {
            let (Some(binder_id), Some(binding)) = (vars.get(ENV_BINDER), vars.get(ENV_BINDING))
            else {
                continue;
            };
            let port: u16 = vars.get(ENV_PORT).and_then(|p| p.parse().ok()).unwrap_or(0);
            let pgrp = stat(pid).map(|(_, g)| g).unwrap_or(pid);
            // The group leader is the binder's handle; a member whose leader
            // is gone names the (dead) leader, so it is found not running.
            let leader = pgrp == pid;
            let entry = by_binder
                .entry(binder_id.clone())
                .or_insert_with(|| Discovered {
                    binder_id: binder_id.clone(),
                    binding: binding.clone(),
                    instance: Instance {
                        handle: pgrp.to_string(),
                        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                    },
                });
            if leader {
                entry.instance.handle = pid.to_string();
            }
        }
        Ok(by_binder.into_values().collect())
    }

    async fn adopt(&self, binder_id: &str, instance: &Instance) -> Result<(), BackendError> {
        // Not our child: nobody will tell us when it exits, so look.
        let Some(pid) = parse_pid(instance) else {
            return Err(BackendError::Start("no pid recorded".into()));
        };
        let exits = self.exits.clone();
        let binder_id = binder_id.to_owned();
        tokio::spawn(async move {
            while alive(pid.as_raw()) && !exits.is_closed() {
                tokio::time::sleep(ADOPTED_POLL).await;
            }
            let _ = exits.send(super::Exit {
                binder_id,
                handle: pid.as_raw().to_string(),
                reason: "the process exited".into(),
            });
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::Binding;

    fn binding(command: &[&str]) -> Binding {
        let mut b: Binding = serde_json::from_value(serde_json::json!({
            "name": "t",
            "command": command,
        }))
        .unwrap();
        b.validate(true, 100).unwrap();
        b
    }

    #[test]
    fn ports_come_from_below_the_ephemeral_range_once_each_and_held_ones_are_skipped() {
        // Other processes on the machine may take a port between its pick
        // and a bind here (that is the race a server start can lose, and
        // why the picks stay below the ephemeral range): so the picks are
        // checked without holding them, and the port held for the skip
        // check is whichever pick this test binds first.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..300 {
            let port = free_port().unwrap();
            assert!(PORTS.contains(&port), "{port}");
            assert!(seen.insert(port), "{port} picked twice");
        }
        let held = std::iter::repeat_with(|| free_port().unwrap())
            .take(20)
            .find_map(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).ok())
            .expect("one of 20 free picks could be bound");
        let taken = held.local_addr().unwrap().port();
        let mut offered = Vec::new();
        let picked = free_port_from(|| {
            let port = if offered.is_empty() {
                taken
            } else {
                next_port()
            };
            offered.push(port);
            port
        })
        .unwrap();
        assert_eq!(offered[0], taken);
        assert_ne!(picked, taken, "a port something holds is passed over");
        assert_eq!(offered.last(), Some(&picked));
    }

    #[tokio::test]
    async fn start_list_stop_a_real_process_group() {
        let dir = std::env::temp_dir().join(format!("binderd-proc-{}", std::process::id()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let backend = ProcessBackend::new(&dir, tx).unwrap();
        // A shell with a child of its own: stop must take both.
        let b = binding(&["sh", "-c", "sleep 300 & echo port={port}; wait"]);
        let inst = backend
            .start(StartSpec {
                binder_id: "b1",
                token: "tok",
                binding: &b,
                base_url: "/user/tok/",
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
        assert_eq!(backend.scan(Some("b1")).len(), 2, "shell and sleep");

        backend.stop("b1", &inst).await.unwrap();
        let exit = rx.recv().await.unwrap();
        assert_eq!(exit.binder_id, "b1");
        assert_eq!(exit.handle, inst.handle);
        assert!(backend.scan(Some("b1")).is_empty());
        assert!(!backend.is_running(&inst).await.unwrap());
        assert!(backend.list().await.unwrap().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_missing_program_is_a_start_error() {
        let dir = std::env::temp_dir().join(format!("binderd-proc2-{}", std::process::id()));
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let backend = ProcessBackend::new(&dir, tx).unwrap();
        let b = binding(&["/nonexistent/binary"]);
        let err = backend
            .start(StartSpec {
                binder_id: "b2",
                token: "tok",
                binding: &b,
                base_url: "/",
            })
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::Start(ref m) if m.contains("/nonexistent/binary")));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn stop_refuses_a_pid_that_is_not_ours() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let dir = std::env::temp_dir().join(format!("binderd-proc3-{}", std::process::id()));
        let backend = ProcessBackend::new(&dir, tx).unwrap();
        // Our own test process has no BINDERD_OWNER: never "ours".
        let me = Pid::from_raw(std::process::id() as i32);
        assert!(!backend.is_ours(me, None));
        let _ = fs::remove_dir_all(&dir);
    }
}
