//! `[process]` in the config: how the process backend isolates its binders.

use std::path::PathBuf;

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

/// `[process] uid_range` unless the config says: `[200000, 265535]`.
pub(super) const DEFAULT_UIDS: [u32; 2] = [200_000, 265_535];
