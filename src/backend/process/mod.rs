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

pub mod sandbox;
mod venv;

use std::collections::HashMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Command;

use crate::binding::Egress;
use crate::limits::Limits;

use self::sandbox::SandboxArgs;
use super::{
    fill_template, Backend, BackendError, BackendKind, BuiltEnv, Discovered, EnvRequest, ExitSink,
    Instance, StartSpec,
};

const ENV_OWNER: &str = "BINDERD_OWNER";
const ENV_BINDING: &str = "BINDERD_BINDING";
const ENV_BINDER: &str = "BINDERD_BINDER_ID";
const ENV_PORT: &str = "BINDERD_PORT";
const ENV_UID: &str = "BINDERD_UID";

/// `[process]` in the config.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// `auto` (namespaces where they can be had, else none, said at start),
    /// `namespaces` (refuse to start without) or `none` (trusted code only).
    #[serde(default)]
    pub isolation: IsolationMode,
    /// `isolated`: a network namespace of its own per binder, loopback only
    /// (binders reach neither each other, nor the host, nor the internet);
    /// `host`: the host's network (binders reach each other's servers).
    #[serde(default)]
    pub network: NetworkMode,
    /// Where binderd runs as root: binders run as uids (and gids) from
    /// `[first, last]`, one each. Default `[200000, 265535]`.
    pub uid_range: Option<[u32; 2]>,
    /// More host paths to hide from binders (besides the data dir, the
    /// config file, key files and `/run`).
    #[serde(default)]
    pub hide: Vec<PathBuf>,
    /// The binderd binary run inside each sandbox: this one by default.
    pub helper: Option<PathBuf>,
    /// The bubblewrap program: `bwrap` on `PATH` by default.
    pub bwrap: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationMode {
    #[default]
    Auto,
    Namespaces,
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Isolated,
    Host,
}

const DEFAULT_UIDS: [u32; 2] = [200_000, 265_535];
/// Variables of binderd's environment a binder gets too (the rest of it,
/// its keys above all, stays with binderd).
const BASE_ENV: &[&str] = &["LANG", "LC_ALL", "LC_CTYPE", "TZ"];
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A binder's log file is kept under this (as Docker's are, 2 × 10 MB):
/// past it, the file starts again.
const LOG_MAX_BYTES: u64 = 10 << 20;

/// How long a process group gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How often adopted processes (not our children) are checked for life.
const ADOPTED_POLL: Duration = Duration::from_millis(500);

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
        let (bwrap, no_isolation) = match config.isolation {
            IsolationMode::None => (None, Some("[process] isolation = \"none\"".to_owned())),
            mode => match probe_bwrap(&config, root) {
                Ok(bwrap) => (Some(bwrap), None),
                Err(why) if mode == IsolationMode::Namespaces => {
                    return Err(BackendError::Unavailable(format!(
                        "[process] isolation = \"namespaces\", but {why}"
                    )))
                }
                Err(why) => (None, Some(why)),
            },
        };
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
        let found = scan(&super::owner_key(data_dir), None);
        for (pid, _) in &found {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        binders_of(found)
    }

    /// Binders with live processes labelled with the owner key of
    /// `data_dir` (a sandboxed binder is several processes).
    pub fn count_binders(data_dir: &std::path::Path) -> usize {
        binders_of(scan(&super::owner_key(data_dir), None))
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

/// bubblewrap's arguments, with the file systems it mounts over the host's
/// view remembered: a directory bubblewrap makes inside one of them on the
/// way to a mount point would be root's with mode 0700, shutting a binder
/// of another uid out of its own working dir, so those are made first, 0755.
#[derive(Default)]
struct Args {
    args: Vec<std::ffi::OsString>,
    /// Where a tmpfs was mounted so far.
    mounted: Vec<PathBuf>,
    /// The directories made inside them so far.
    made: std::collections::HashSet<PathBuf>,
}

impl Args {
    fn add<'s>(
        &mut self,
        items: impl IntoIterator<Item = &'s (impl AsRef<std::ffi::OsStr> + ?Sized + 's)>,
    ) {
        self.args
            .extend(items.into_iter().map(|i| i.as_ref().to_owned()));
    }

    /// A tmpfs at `dir` (and the directories on the way, see [`Args::parents`]).
    fn tmpfs(&mut self, dir: &Path) {
        self.parents(dir);
        self.add(["--tmpfs".as_ref(), dir.as_os_str()]);
        self.mounted.push(dir.to_path_buf());
    }

    /// `--dir` (0755) for each directory above `target` that lies inside a
    /// tmpfs made earlier.
    fn parents(&mut self, target: &Path) {
        let mut above: Vec<&Path> = target.ancestors().skip(1).collect();
        above.reverse();
        for dir in above {
            let inside = self.mounted.iter().any(|t| dir.starts_with(t) && dir != t);
            if inside && self.made.insert(dir.to_path_buf()) {
                self.add([
                    "--perms".as_ref(),
                    "0755".as_ref(),
                    "--dir".as_ref(),
                    dir.as_os_str(),
                ]);
            }
        }
    }
}

/// Whether bubblewrap can make a binder's namespaces here: runs `true` in
/// one, as a binder would be run. The reason when it cannot.
fn probe_bwrap(config: &ProcessConfig, root: bool) -> Result<PathBuf, String> {
    let bwrap = config
        .bwrap
        .clone()
        .unwrap_or_else(|| PathBuf::from("bwrap"));
    let mut probe = std::process::Command::new(&bwrap);
    probe.args(["--unshare-pid", "--unshare-ipc", "--unshare-uts"]);
    if config.network == NetworkMode::Isolated {
        probe.arg("--unshare-net");
    }
    if !root {
        probe.args(["--unshare-user", "--disable-userns"]);
    }
    probe.args([
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--",
        "true",
    ]);
    match probe.stdin(Stdio::null()).stdout(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(bwrap),
        Ok(out) => Err(format!(
            "bubblewrap cannot make namespaces here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!(
            "bubblewrap ('{}') cannot be run: {e}; install it (Debian: apt install bubblewrap)",
            bwrap.display()
        )),
    }
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

/// Process state letter, parent and process group of a pid, from
/// `/proc/{pid}/stat`.
fn stat(pid: i32) -> Option<(char, i32, i32)> {
    let raw = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: parse after it.
    let rest = raw.get(raw.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
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
    matches!(stat(pid), Some((s, _, _)) if s != 'Z' && s != 'X')
}

/// Why a binder's sandbox did not start its command, if that is why it
/// exited: the last line bubblewrap or the helper wrote to its log
/// ("cannot run '/x': No such file or directory").
fn sandbox_failure(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with("binderd sandbox: ") || l.starts_with("bwrap: "))?;
    let said = line
        .trim_start_matches("binderd sandbox: ")
        .trim_start_matches("bwrap: ");
    // The binder writes to this log too: keep it short and printable.
    Some(said.chars().filter(|c| !c.is_control()).take(300).collect())
}

/// How many binders the labelled processes `found` belong to.
fn binders_of(found: Vec<(i32, HashMap<String, String>)>) -> usize {
    let ids: std::collections::HashSet<String> = found
        .into_iter()
        .filter_map(|(_, mut vars)| vars.remove(ENV_BINDER))
        .collect();
    ids.len()
}

/// Every live pid labelled with `owner` and `binder_id` (or any binder when
/// `binder_id` is `None`), with its variables.
fn scan(owner: &str, binder_id: Option<&str>) -> Vec<(i32, HashMap<String, String>)> {
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
        if vars.get(ENV_OWNER).map(String::as_str) != Some(owner) {
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

impl ProcessBackend {
    fn scan(&self, binder_id: Option<&str>) -> Vec<(i32, HashMap<String, String>)> {
        scan(&self.owner, binder_id)
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
        let isolated_net = self.own_network(spec.binding)?;
        // With a network namespace of its own, binderd holds the host side:
        // a listener on the host's loopback, handed to the helper, which
        // relays into the namespace (the same port number inside).
        // Otherwise the server binds the host's loopback port itself.
        let (port, listener) = if isolated_net {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            (listener.local_addr()?.port(), Some(listener))
        } else {
            (free_port()?, None)
        };
        let args: Vec<String> = spec
            .binding
            .command
            .iter()
            .map(|a| fill_template(a, port, spec.base_url, spec.token))
            .collect();
        let Some(program) = args.first().cloned() else {
            return Err(BackendError::Start("the binding has no command".into()));
        };
        let workdir = self.work_root.join(spec.binder_id);
        fs::create_dir_all(&workdir)?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(resume)
            .write(true)
            .truncate(!resume)
            .mode(0o600)
            .open(self.log_path(spec.binder_id))?;
        // Temporary files go with the binder: a `tmp/` of its own in its
        // working dir (removed when it stops), unless the binding says where.
        let tmp = workdir.join("tmp");
        // A resumed binder had the run of its working dir: its `tmp` may
        // now be a link to anywhere, which binderd (root) must not chown.
        if fs::symlink_metadata(&tmp).is_ok_and(|m| !m.is_dir()) {
            fs::remove_file(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        let uid = if self.root {
            // A resumed binder keeps the uid that owns its files.
            let owner = fs::symlink_metadata(&workdir).ok().map(|m| m.uid());
            let uid = self.take_uid(spec.binder_id, owner)?;
            // Its own; others may pass through (bubblewrap, root without
            // capabilities, enters it) but not list it. Neither is a link
            // (checked above; the working dir is binderd's to make).
            for (dir, mode) in [(&workdir, 0o711), (&tmp, 0o700)] {
                std::os::unix::fs::lchown(dir, Some(uid), Some(uid))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
            }
            Some(uid)
        } else {
            None
        };
        // The repository's files, before the binder runs (a resumed one
        // has them, and its own changes to them).
        if let (false, Some(files)) = (resume, spec.content.and_then(|c| c.files.as_ref())) {
            let (files, dir) = (files.clone(), workdir.clone());
            tokio::task::spawn_blocking(move || unpack(&files, &dir, uid))
                .await
                .map_err(|e| BackendError::Start(e.to_string()))?
                .map_err(|e| {
                    BackendError::Start(format!("cannot put the repository's files in place: {e}"))
                })?;
        }
        let env = spec.content.and_then(|c| c.env.as_ref());
        let workdir_text = workdir.to_string_lossy();
        let limits = self.limits.with(spec.binding.resources.wanted());
        let helper_args = SandboxArgs {
            relay: listener.is_some().then_some(port),
            uid,
            gid: uid,
            nofile: limits.nofile.into(),
            nproc: limits.pids.into(),
            memory: limits.memory_bytes,
            log_max: Some(LOG_MAX_BYTES),
            command: args,
        };
        let mut command = match &self.bwrap {
            Some(bwrap) => {
                let mut c = Command::new(bwrap);
                c.args(self.bwrap_args(&workdir, uid.is_some(), isolated_net, env));
                c.arg("--").arg(&self.helper);
                c
            }
            None => Command::new(&self.helper),
        };
        command
            .arg("sandbox")
            .args(helper_args.to_args())
            .current_dir(&workdir)
            .env_clear()
            .envs(
                BASE_ENV
                    .iter()
                    .filter_map(|k| Some((k, std::env::var_os(k)?))),
            )
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
            )
            .envs(venv::variables(
                env,
                &std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
            ))
            .env("HOME", &workdir)
            .env("TMPDIR", &tmp)
            .envs(spec.binding.env.iter().map(|(k, v)| {
                let v = fill_template(v, port, spec.base_url, spec.token);
                (k, v.replace("{workdir}", &workdir_text))
            }))
            .env(ENV_OWNER, &self.owner)
            .env(ENV_BINDING, &spec.binding.name)
            .env(ENV_BINDER, spec.binder_id)
            .env(ENV_PORT, port.to_string())
            .env("BINDERD_BASE_URL", spec.base_url)
            .stdin(match listener {
                Some(l) => Stdio::from(std::os::fd::OwnedFd::from(l)),
                None => Stdio::null(),
            })
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(false);
        if let Some(uid) = uid {
            command.env(ENV_UID, uid.to_string());
        }
        let spawned = command.spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                self.uids.retain(|_, b| b != spec.binder_id);
                return Err(BackendError::Start(format!("cannot run '{program}': {e}")));
            }
        };
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
        let log_path = self.log_path(spec.binder_id);
        tokio::spawn(async move {
            let status = child.wait().await;
            children.remove(&pid_key);
            let reason = match status {
                Ok(s) if !s.success() => sandbox_failure(&log_path)
                    .unwrap_or_else(|| format!("the process exited ({s})")),
                Ok(s) => format!("the process exited ({s})"),
                Err(e) => format!("the process exited ({e})"),
            };
            let _ = exits.send(super::Exit {
                binder_id,
                handle: pid_key.to_string(),
                reason,
            });
        });
        Ok(Instance {
            handle: pid.to_string(),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        })
    }

    /// Whether the binder gets a network namespace of its own: always in a
    /// sandbox unless `[process] network = "host"`, and then still when its
    /// binding closes egress. Without a sandbox such a binding cannot start.
    fn own_network(&self, binding: &crate::binding::Binding) -> Result<bool, BackendError> {
        let closed = binding.network.egress == Egress::None;
        match &self.bwrap {
            Some(_) => Ok(closed || self.config.network == NetworkMode::Isolated),
            None if closed => Err(BackendError::Start(
                "network.egress = \"none\" needs namespaces, which this process backend does not have".into(),
            )),
            None => Ok(false),
        }
    }

    /// bubblewrap's arguments for one binder: its namespaces, the host
    /// read-only with binderd's own files hidden, its working dir writable.
    fn bwrap_args(
        &self,
        workdir: &Path,
        as_other_uid: bool,
        own_network: bool,
        env: Option<&BuiltEnv>,
    ) -> Vec<std::ffi::OsString> {
        let mut a = Args::default();
        a.add([
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]);
        a.add(["--hostname", "binder", "--new-session"]);
        if own_network {
            a.add(["--unshare-net"]);
        }
        if as_other_uid {
            // Root outside: the helper drops to the binder's uid itself, so
            // it keeps only what that takes.
            a.add([
                "--cap-drop",
                "ALL",
                "--cap-add",
                "CAP_SETUID",
                "--cap-add",
                "CAP_SETGID",
            ]);
        } else {
            a.add(["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]);
        }
        a.add(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]);
        for dir in ["/tmp", "/run", "/dev/shm"] {
            a.tmpfs(Path::new(dir));
        }
        for hidden in self.hidden_paths() {
            if hidden.is_dir() {
                a.tmpfs(&hidden);
            } else if hidden.exists() {
                a.parents(&hidden);
                a.add([
                    "--ro-bind".as_ref(),
                    "/dev/null".as_ref(),
                    hidden.as_os_str(),
                ]);
            }
        }
        // The helper runs inside: wherever it lives (a build dir under
        // /tmp, say), it is there, read-only.
        a.parents(&self.helper);
        let helper = self.helper.as_os_str();
        a.add(["--ro-bind".as_ref(), helper, helper]);
        // Its environment (under the hidden data dir), read-only.
        if let Some(BuiltEnv::Venv { dir, .. }) = env {
            a.parents(dir);
            a.add(["--ro-bind".as_ref(), dir.as_os_str(), dir.as_os_str()]);
        }
        a.parents(workdir);
        a.add(["--bind".as_ref(), workdir.as_os_str(), workdir.as_os_str()]);
        a.add(["--chdir".as_ref(), workdir.as_os_str()]);
        a.args
    }

    /// What binders must not see: binderd's data dir (the store, the
    /// journal, other binders' working dirs and logs), its config and key
    /// files, the operator's list, and where a user's credentials usually
    /// are when binderd runs as that user.
    fn hidden_paths(&self) -> Vec<PathBuf> {
        let mut hidden = vec![self.data_dir.clone()];
        // Where `/var/run` is a directory of its own (not `/run`), it holds
        // the engine's socket.
        if fs::symlink_metadata("/var/run").is_ok_and(|m| m.is_dir()) {
            hidden.push("/var/run".into());
        }
        hidden.extend(self.config.hide.iter().cloned());
        if !self.root {
            if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
                for dir in [
                    ".ssh",
                    ".docker",
                    ".kube",
                    ".aws",
                    ".gnupg",
                    ".config/gcloud",
                ] {
                    hidden.push(home.join(dir));
                }
            }
        }
        hidden
            .into_iter()
            .map(|p| fs::canonicalize(&p).unwrap_or(p))
            .filter(|p| p.is_absolute() && p != Path::new("/"))
            .collect()
    }

    /// A uid of its own for a binder (binderd runs as root): the one it has,
    /// or `owner` (the uid owning its working dir, when resumed) if that is
    /// in the range and free, or a free one.
    fn take_uid(&self, binder_id: &str, owner: Option<u32>) -> Result<u32, BackendError> {
        if let Some(uid) = self.uids.iter().find(|e| e.value() == binder_id) {
            return Ok(*uid.key());
        }
        let [first, last] = self.config.uid_range.unwrap_or(DEFAULT_UIDS);
        if let Some(uid) = owner.filter(|u| (first..=last).contains(u) && *u != 0) {
            if let dashmap::Entry::Vacant(v) = self.uids.entry(uid) {
                v.insert(binder_id.to_owned());
                return Ok(uid);
            }
        }
        let span = last.saturating_sub(first).saturating_add(1).max(1);
        let start = rand::random::<u32>() % span;
        for i in 0..span.min(1 << 20) {
            let uid = first + (start + i) % span;
            if uid == 0 {
                continue;
            }
            if let dashmap::Entry::Vacant(v) = self.uids.entry(uid) {
                v.insert(binder_id.to_owned());
                return Ok(uid);
            }
        }
        Err(BackendError::Start(format!(
            "every uid of [process] uid_range {first}–{last} is in use"
        )))
    }

    /// Stops a binder's process group (SIGTERM, then SIGKILL) and anything
    /// else carrying its label; files stay.
    async fn kill_binder(&self, binder_id: &str, instance: &Instance) {
        // SIGTERM to everything carrying the binder's label but the process
        // binderd started (in a sandbox that is bubblewrap, which would die
        // at once and leave the sandbox behind; the helper inside waits for
        // the command), so the server shuts down cleanly and the started
        // process exits after it; without a sandbox, to its group as well.
        // Then SIGKILL to whatever is left: the sandbox's first process
        // going takes its whole pid namespace with it, including anything
        // that rewrote its own labels.
        let leader = parse_pid(instance).filter(|pid| self.is_ours(*pid, Some(binder_id)));
        if let Some(pid) = leader.filter(|_| self.bwrap.is_none()) {
            let _ = killpg(pid, Signal::SIGTERM);
        }
        for (pid, _) in self.scan(Some(binder_id)) {
            if Some(pid) != leader.map(Pid::as_raw) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        if let Some(pid) = leader {
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            while alive(pid.as_raw()) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _ = killpg(pid, Signal::SIGKILL);
        }
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
        let workdir = self.work_root.join(binder_id);
        // As the uid that owns the working dir (the binder's, as root).
        let owner = if self.root {
            Some(fs::symlink_metadata(&workdir)?.uid())
        } else {
            None
        };
        let files = files.to_path_buf();
        tokio::task::spawn_blocking(move || unpack(&files, &workdir, owner))
            .await
            .map_err(|e| BackendError::Start(e.to_string()))?
            .map_err(|e| {
                BackendError::Start(format!("cannot put the repository's files in place: {e}"))
            })
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
        self.uids.retain(|_, b| b != binder_id);
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
            // A binder's code can give a process any labels: one naming a
            // path would otherwise have its "working dir" removed.
            if !super::is_binder_id(binder_id) {
                continue;
            }
            let (_, ppid, pgrp) = stat(pid).unwrap_or(('?', 0, pid));
            // The leader of the group binderd started is the binder's handle
            // (in a sandbox, processes inside lead sessions of their own: the
            // handle is the one whose parent is not the same binder's); a
            // member whose leader is gone names the (dead) leader, so it is
            // found not running.
            let parent_is_same_binder = binderd_env(ppid).is_some_and(|p| {
                p.get(ENV_BINDER) == Some(binder_id) && p.get(ENV_OWNER) == Some(&self.owner)
            });
            let leader = pgrp == pid && !parent_is_same_binder;
            let entry = by_binder
                .entry(binder_id.clone())
                .or_insert_with(|| Discovered {
                    binder_id: binder_id.clone(),
                    binding: binding.clone(),
                    instance: Instance {
                        handle: pgrp.to_string(),
                        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    },
                });
            // Its address and uid are read from the leader only: binderd
            // wrote that process's environment, and a binder's own code
            // could rewrite its labels to name another binder's port.
            if leader {
                let port: u16 = vars.get(ENV_PORT).and_then(|p| p.parse().ok()).unwrap_or(0);
                entry.instance.handle = pid.to_string();
                entry.instance.addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                if let Some(uid) = vars.get(ENV_UID).and_then(|u| u.parse().ok()) {
                    self.uids.insert(uid, binder_id.clone());
                }
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

/// Puts the files of `tar` into `dir` (made if missing), owned by `owner`
/// when given. Links stay links (never followed), and nothing lands outside
/// `dir`.
pub fn unpack(tar: &Path, dir: &Path, owner: Option<u32>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut archive = ::tar::Archive::new(std::fs::File::open(tar)?);
    archive.set_preserve_permissions(false);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        // Files, folders and links; nothing else (git's pax header, devices).
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link()) {
            continue;
        }
        // `unpack_in` refuses a path that would leave `dir` (`..`, a link
        // made by an earlier entry).
        if !entry.unpack_in(dir)? {
            continue;
        }
        if let Some(uid) = owner {
            let path = entry.path()?.into_owned();
            std::os::unix::fs::lchown(dir.join(path), Some(uid), Some(uid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn a_hostile_tar_cannot_write_outside_the_working_dir() {
        let dir = std::env::temp_dir().join(format!("binderd-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tar_path = dir.join("evil.tar");
        {
            let mut builder = ::tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
            // A link to a folder outside, then a file through the link.
            let mut header = ::tar::Header::new_gnu();
            header.set_entry_type(::tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            let outside = dir.join("outside");
            std::fs::create_dir_all(&outside).unwrap();
            builder.append_link(&mut header, "link", &outside).unwrap();
            let body = b"pwned";
            let mut header = ::tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(::tar::EntryType::Regular);
            builder
                .append_data(&mut header, "link/owned.txt", &body[..])
                .unwrap();
            builder.finish().unwrap();
        }
        let out = dir.join("work");
        let _ = unpack(&tar_path, &out, None);
        assert!(!dir.join("outside/owned.txt").exists());
    }
}
