//! bubblewrap: whether it can make a binder's namespaces here, and its
//! arguments for one binder (its namespaces, the host read-only with
//! binderd's own files hidden, its working dir writable).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::backend::{BackendError, BuiltEnv};
use crate::binding::{Binding, Egress};

use super::{IsolationMode, NetworkMode, ProcessBackend, ProcessConfig};

/// The bubblewrap program when binders run in namespaces, else why they do
/// not; an error when `[process] isolation = "namespaces"` cannot be had.
pub(super) fn choose(
    config: &ProcessConfig,
    root: bool,
) -> Result<(Option<PathBuf>, Option<String>), BackendError> {
    Ok(match config.isolation {
        IsolationMode::None => (None, Some("[process] isolation = \"none\"".to_owned())),
        mode => match probe(config, root) {
            Ok(bwrap) => (Some(bwrap), None),
            Err(why) if mode == IsolationMode::Namespaces => {
                return Err(BackendError::Unavailable(format!(
                    "[process] isolation = \"namespaces\", but {why}"
                )))
            }
            Err(why) => (None, Some(why)),
        },
    })
}

/// Whether bubblewrap can make a binder's namespaces here: runs `true` in
/// one, as a binder would be run. The reason when it cannot.
fn probe(config: &ProcessConfig, root: bool) -> Result<PathBuf, String> {
    let named = config
        .bwrap
        .clone()
        .unwrap_or_else(|| PathBuf::from("bwrap"));
    // Absolute from here on: every binder's start runs it with the binder's
    // environment, whose PATH must not choose it.
    let bwrap = super::program::on_path(&named).ok_or_else(|| {
        format!(
            "bubblewrap ('{}') is not on PATH; install it (Debian: apt install bubblewrap)",
            named.display()
        )
    })?;
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

    /// `path` from the host, read-only, at the same place.
    fn ro_bind(&mut self, path: &Path) {
        self.parents(path);
        self.add(["--ro-bind".as_ref(), path.as_os_str(), path.as_os_str()]);
    }
}

impl ProcessBackend {
    /// Whether the binder gets a network namespace of its own: always in a
    /// sandbox unless `[process] network = "host"`, and then still when its
    /// binding closes egress. Without a sandbox such a binding cannot start.
    pub(super) fn own_network(&self, binding: &Binding) -> Result<bool, BackendError> {
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
    pub(super) fn bwrap_args(
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
        self.hide(&mut a);
        // The helper runs inside: wherever it lives (a build dir under
        // /tmp, say), it is there, read-only.
        a.ro_bind(&self.helper);
        // Its environment (under the hidden data dir), read-only.
        if let Some(BuiltEnv::Venv { dir, .. }) = env {
            a.ro_bind(dir);
        }
        a.parents(workdir);
        a.add(["--bind".as_ref(), workdir.as_os_str(), workdir.as_os_str()]);
        a.add(["--chdir".as_ref(), workdir.as_os_str()]);
        a.args
    }

    /// Covers each of [`Self::hidden_paths`]: a directory with an empty
    /// tmpfs, a file with `/dev/null`.
    fn hide(&self, a: &mut Args) {
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
    }

    /// What binders must not see: binderd's data dir (the store, the
    /// journal, other binders' working dirs and logs), its config and key
    /// files, the operator's list, and where a user's credentials usually
    /// are when binderd runs as that user.
    fn hidden_paths(&self) -> Vec<PathBuf> {
        let mut hidden = vec![self.data_dir.clone()];
        // Where `/var/run` is a directory of its own (not `/run`), it holds
        // the engine's socket.
        if std::fs::symlink_metadata("/var/run").is_ok_and(|m| m.is_dir()) {
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
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
            // Devices and /proc are the sandbox's own (`--dev`, `--proc`):
            // hiding one (a config file given as /dev/null) would break it.
            .filter(|p| {
                p.is_absolute()
                    && p != Path::new("/")
                    && !p.starts_with("/dev")
                    && !p.starts_with("/proc")
            })
            .collect()
    }
}
