//! Backends start, list and stop containers. They know nothing about HTTP,
//! pools or handouts: the pool drives them, the proxy only reads the
//! [`Instance::addr`] they report.
//!
//! Every container a backend starts carries labels (`binderd.*` on Docker and
//! Kubernetes, `BINDERD_*` environment variables for processes) naming the
//! binderd data dir that owns it, its binding and its binder id, so that
//! [`Backend::list`] finds exactly this binderd's containers after a restart.
//! Every such key and variable is defined in [`labels`].

use std::net::SocketAddr;
use std::path::Path;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::binding::Binding;

mod cluster;
mod connect;
mod deadline;
pub mod docker;
pub mod kubernetes;
pub mod labels;
mod plan;
pub mod process;
mod tar;

pub use self::cluster::{Claim, Cluster, PodView, SharedPhase};
pub use self::connect::{connect, Settings};
pub use self::deadline::Availability;
pub(crate) use self::deadline::{with_deadline, with_deadline_or_gone};
pub(crate) use self::tar::{numeric_user, tar_owned_by};

pub use self::labels::{LABEL_BINDER, LABEL_BINDING, LABEL_OWNER};

/// What the backend needs to start one binder.
pub struct StartSpec<'a> {
    pub binder_id: &'a str,
    pub token: &'a str,
    pub binding: &'a Binding,
    /// `/user/{token}/`, the path the container serves under.
    pub base_url: &'a str,
    /// Files and an environment from the binding's repository, made ready
    /// before the start (`crate::content`).
    pub content: Option<&'a Content>,
}

/// What a binder gets from its binding's repository: the files put into
/// its working dir before it starts, and the environment its
/// `requirements` built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Content {
    /// A tar of the files (paths relative to the working dir).
    pub files: Option<std::path::PathBuf>,
    pub env: Option<BuiltEnv>,
}

/// An environment built from a `requirements` file ([`Backend::build_env`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuiltEnv {
    /// A Python virtual environment (process backend): its `bin/` goes
    /// first on `PATH`, its `site-packages` on `PYTHONPATH` (so the
    /// Jupyter server's kernels import its packages too).
    Venv {
        dir: std::path::PathBuf,
        site_packages: std::path::PathBuf,
    },
    /// An image the engine built (Docker), run instead of the binding's.
    Image(String),
}

/// What [`Backend::build_env`] builds from.
pub struct EnvRequest<'a> {
    pub binding: &'a Binding,
    /// The `requirements` file's bytes.
    pub requirements: &'a [u8],
    /// The Python that makes a virtual environment.
    pub python: &'a str,
    /// More arguments for `pip install`.
    pub pip_args: &'a [String],
    /// The `pip` inside an image (Docker).
    pub image_pip: &'a str,
    /// The network an image build runs on (Docker).
    pub build_network: &'a str,
    /// Whether pip may build source distributions (run a package's code).
    pub allow_sdists: bool,
    pub timeout: std::time::Duration,
    /// Each line of the build's output, as it comes.
    pub log: &'a (dyn Fn(&str) + Send + Sync),
}

/// A started container, as the backend knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The backend's own handle: a pid, a container id, a pod name.
    pub handle: String,
    /// Where the proxy and the readiness check reach the server.
    pub addr: SocketAddr,
}

/// A labelled container found by [`Backend::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    pub binder_id: String,
    pub binding: String,
    pub instance: Instance,
}

/// A container that went away on its own (exited, was killed behind
/// binderd's back): the binder's id and the [`Instance::handle`] that exited,
/// so that the exit of a container the binder no longer uses (a paused
/// process, replaced on resume) is told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub binder_id: String,
    pub handle: String,
    /// What the backend knows of why (shown as the binder's `reason`).
    pub reason: String,
}

/// Where backends report [`Exit`]s. The pool takes such binders out of service.
pub type ExitSink = mpsc::UnboundedSender<Exit>;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The container could not be started from this binding (bad command,
    /// missing image, ...). Counts as a failed start.
    #[error("cannot start: {0}")]
    Start(String),
    /// The backend itself cannot be reached (daemon down, API server gone).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("backend I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// This backend cannot do that at all.
    #[error("{0}")]
    Unsupported(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Process,
    Docker,
    Kubernetes,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Process => "process",
            BackendKind::Docker => "docker",
            BackendKind::Kubernetes => "kubernetes",
        }
    }

    /// Only the process backend runs `command` on the host as binderd's user.
    pub fn runs_on_host(self) -> bool {
        self == BackendKind::Process
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "process" => Ok(BackendKind::Process),
            "docker" => Ok(BackendKind::Docker),
            "kubernetes" => Ok(BackendKind::Kubernetes),
            other => Err(format!(
                "unknown backend '{other}' (expected process, docker or kubernetes)"
            )),
        }
    }
}

/// The one interface every backend implements.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;

    /// `Some(reason)` while the backend itself cannot be reached (the Docker
    /// engine or the API server is gone). Cheap: no I/O.
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// What keeps this backend's binders from binderd, the host and each
    /// other: said at start, in `GET /` and in `GET /health`.
    fn isolation(&self) -> Isolation;

    /// Creates and starts a labelled container. Returns once it is started,
    /// not once it answers: readiness is the pool's HTTP check.
    async fn start(&self, spec: StartSpec<'_>) -> Result<Instance, BackendError>;

    /// Whether the container still exists and runs.
    async fn is_running(&self, instance: &Instance) -> Result<bool, BackendError>;

    /// Stops and removes the container and everything started with it.
    /// Stopping one that is already gone is not an error.
    async fn stop(&self, binder_id: &str, instance: &Instance) -> Result<(), BackendError>;

    /// Every container labelled as this binderd's, for adoption at start.
    async fn list(&self) -> Result<Vec<Discovered>, BackendError>;

    /// Takes over a container found by [`Backend::list`]: from now on its
    /// exit is reported on the [`ExitSink`] like that of one started here.
    async fn adopt(&self, binder_id: &str, instance: &Instance) -> Result<(), BackendError>;

    /// Stops the container but keeps its files, for [`Backend::resume`].
    async fn pause(&self, binder_id: &str, instance: &Instance) -> Result<(), BackendError>;

    /// Starts a paused binder again with the same files. It may answer at a
    /// new address: the returned instance replaces the old one.
    async fn resume(
        &self,
        spec: StartSpec<'_>,
        instance: &Instance,
    ) -> Result<Instance, BackendError>;

    /// Resident memory of a running binder, all its processes together
    /// (the server and its kernels), when the backend can tell.
    async fn memory(&self, _binder_id: &str, _instance: &Instance) -> Option<u64> {
        None
    }

    /// The container's recent output: the last `tail` lines, at most
    /// [`MAX_LOG_BYTES`].
    async fn logs(
        &self,
        binder_id: &str,
        instance: &Instance,
        tail: usize,
    ) -> Result<String, BackendError>;

    /// Puts the files of the tar `files` into a running binder's working
    /// dir (content given at launch), as its own user.
    async fn put_files(
        &self,
        _binder_id: &str,
        _instance: &Instance,
        _files: &std::path::Path,
    ) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(format!(
            "the {} backend does not put a repository's files into a running binder",
            self.kind().as_str()
        )))
    }

    /// Builds (or finds, built before from the same file) the environment
    /// a binding's `requirements` names. The error is the tool's own.
    async fn build_env(&self, _request: EnvRequest<'_>) -> Result<BuiltEnv, BackendError> {
        Err(BackendError::Unsupported(format!(
            "the {} backend does not build environments from 'requirements': build an image with them, push it, and name it in 'image'",
            self.kind().as_str()
        )))
    }

    /// Shared mode (several replicas on one cluster): the cluster decides
    /// every handout. `None` (the single-process path) on every backend but
    /// Kubernetes with `[kubernetes] shared = true`.
    fn cluster(&self) -> Option<&dyn Cluster> {
        None
    }
}

/// How a backend's binders are kept apart from binderd, the host and each
/// other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Isolation {
    /// `containers`, `pods`, `namespaces` (process binders in Linux
    /// namespaces) or `none` (process binders as plain processes: trusted
    /// code only).
    pub level: &'static str,
    /// What that means here, in a sentence.
    pub message: String,
}

impl Isolation {
    pub fn is_none(&self) -> bool {
        self.level == "none"
    }
}

/// Most bytes of output the logs endpoint returns.
pub const MAX_LOG_BYTES: usize = 1 << 20;

/// The last `tail` lines of `text`, at most [`MAX_LOG_BYTES`] of them.
pub fn tail_lines(text: &str, tail: usize) -> String {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let start = match tail {
        0 => text.len(),
        n => body
            .rmatch_indices('\n')
            .nth(n - 1)
            .map_or(0, |(i, _)| i + 1),
    };
    let mut out = &text[start..];
    if out.len() > MAX_LOG_BYTES {
        let mut cut = out.len() - MAX_LOG_BYTES;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = &out[cut..];
    }
    out.to_owned()
}

/// A short, stable key naming one binderd deployment: derived from its data
/// dir, so that two binderds on one host never adopt each other's containers.
pub fn owner_key(data_dir: &Path) -> String {
    let canonical = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Whether a label read back from a container (or, for the process backend,
/// from a process's environment, which a binder's own code can write) can be
/// a binder id binderd made: ids become file and container names, so
/// anything that could name a path or an option is refused.
pub fn is_binder_id(s: &str) -> bool {
    s.len() <= 64
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Fills `{port}`, `{base_url}` and `{token}` into one command argument.
pub fn fill_template(arg: &str, port: u16, base_url: &str, token: &str) -> String {
    arg.replace("{port}", &port.to_string())
        .replace("{base_url}", base_url)
        .replace("{token}", token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_every_placeholder() {
        assert_eq!(
            fill_template(
                "--port={port} --base={base_url} t={token}",
                9,
                "/user/t/",
                "t"
            ),
            "--port=9 --base=/user/t/ t=t"
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_lines("a\nb\nc\n", 5), "a\nb\nc\n");
        assert_eq!(tail_lines("a\nb\nc", 1), "c");
        assert_eq!(tail_lines("", 3), "");
        assert_eq!(tail_lines("only", 1), "only");
    }

    #[test]
    fn only_plain_names_can_be_binder_ids() {
        assert!(is_binder_id("0123456789abcdef0123456789abcdef"));
        assert!(is_binder_id("k1"));
        for bad in [
            "",
            "..",
            "../../etc",
            "a/b",
            "a b",
            "x\0",
            "--rm",
            &"a".repeat(65),
        ] {
            assert!(!is_binder_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn owner_key_differs_by_dir() {
        let a = owner_key(Path::new("/tmp/a-dir-that-is-not-there"));
        let b = owner_key(Path::new("/tmp/b-dir-that-is-not-there"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert_eq!(a, owner_key(Path::new("/tmp/a-dir-that-is-not-there")));
    }
}
