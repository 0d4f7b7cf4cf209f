//! The TOML config file (`config/binderd.toml` by default) and the binding
//! files of `config/bindings/`. Paths in the file are relative to its folder
//! and resolved here, so nothing after the read needs to know where it was.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::settings::{Layered, Origin};
use super::{ConfigError, RateLimitConfig, DEFAULT_CONFIG_FILE};
use crate::auth::Role;
use crate::backend::docker::DockerConfig;
use crate::backend::kubernetes::KubernetesConfig;
use crate::backend::process::ProcessConfig;
use crate::binding::Binding;
use crate::limits::LimitsConfig;
use crate::quota::QuotaSpec;

/// Every key of the file, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub listen: Option<String>,
    pub backend: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub public_url: Option<String>,
    pub binder_host: Option<String>,
    pub bindings_dir: Option<PathBuf>,
    pub allow_origin: Option<String>,
    pub default_binding: Option<String>,
    pub cleanup_on_exit: Option<bool>,
    pub log_format: Option<String>,
    /// The first spelling of `[docker] network`, still read.
    docker_network: Option<String>,
    pub spawn_wait_seconds: Option<u64>,
    pub event_keepalive_seconds: Option<u64>,
    pub default_notebook: Option<bool>,
    pub max_body_bytes: Option<usize>,
    pub max_pool_limit: Option<u32>,
    pub start_concurrency: Option<usize>,
    pub shutdown_grace_seconds: Option<u64>,
    pub cull_interval_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub header_read_timeout_seconds: Option<u64>,
    pub max_connections_per_client: Option<usize>,
    pub write_timeout_seconds: Option<u64>,
    pub tunnel_idle_timeout_seconds: Option<u64>,
    pub http2: Option<bool>,
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default)]
    pub docker: DockerConfig,
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    #[serde(default)]
    pub process: ProcessConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub content: crate::content::ContentConfig,
    #[serde(default)]
    pub security: crate::auth::SecurityConfig,
    #[serde(default)]
    pub api_keys: Vec<FileKey>,
    #[serde(default)]
    pub bindings: Vec<Binding>,
    /// Every setting laid over the others, with where each came from.
    #[serde(skip)]
    pub layered: Layered,
}

/// `[[api_keys]]` in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileKey {
    pub name: String,
    pub key: Option<String>,
    pub key_file: Option<PathBuf>,
    pub role: Option<Role>,
    pub quota: Option<QuotaSpec>,
}

impl FileConfig {
    /// Reads `path`, or `config/binderd.toml` when none is given and it
    /// exists, or nothing (all defaults); then lays the documented keys'
    /// variables (`var` looks one up) and the `--set` flags over it.
    pub fn read(
        path: Option<&Path>,
        var: impl Fn(&str) -> Option<String>,
        sets: &[String],
    ) -> Result<FileConfig, ConfigError> {
        let path = match path {
            Some(path) => Some(path),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => Some(Path::new(DEFAULT_CONFIG_FILE)),
            None => None,
        };
        let parse_error = |message: String| ConfigError::Parse {
            path: path.map_or_else(|| PathBuf::from("(settings)"), Path::to_path_buf),
            message: one_line(&message),
        };
        let table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| parse_error(e.to_string()))?
            }
            None => toml::Table::new(),
        };
        let mut layered = Layered::from_file(table).map_err(|e| match (e, path) {
            (ConfigError::Invalid(m), Some(p)) => ConfigError::Parse {
                path: p.to_path_buf(),
                message: m,
            },
            (e, _) => e,
        })?;
        layered.env(var);
        layered.flags(sets)?;
        let mut file: FileConfig = toml::Value::Table(layered.table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| parse_error(e.to_string()))?;
        // Paths in the file are relative to its folder; a variable's or a
        // flag's to the working dir.
        let base = path.and_then(Path::parent).unwrap_or(Path::new(""));
        if layered.origin("bindings_dir") == Origin::File {
            file.bindings_dir = file.bindings_dir.map(|d| base.join(d));
        }
        for key in &mut file.api_keys {
            key.key_file = key.key_file.take().map(|f| base.join(f));
        }
        if file.docker.network.is_none() {
            file.docker.network = file.docker_network.take();
        }
        // What binders must not read: this file and the key files.
        file.process.hide.extend(path.map(Path::to_path_buf));
        for key in &file.api_keys {
            file.process.hide.extend(key.key_file.clone());
        }
        file.layered = layered;
        Ok(file)
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Each `*.toml` in `dir` is one binding; its name defaults to the file stem.
pub(super) fn read_bindings_dir(dir: &Path) -> Result<Vec<Binding>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let mut binding: Binding = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: one_line(&e.to_string()),
        })?;
        if binding.name.is_empty() {
            binding.name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
        }
        out.push(binding);
    }
    Ok(out)
}
