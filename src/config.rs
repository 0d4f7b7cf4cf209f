//! Configuration: flags > environment > TOML file > defaults.
//!
//! Flags and their `BINDERD_*` variables are read by clap ([`ServeArgs`]);
//! [`Config::load`] lays them over the file and the defaults and checks the
//! whole. Any problem is one [`ConfigError`] line, and `main` exits 64.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::auth::{ApiKey, Role};
use crate::backend::BackendKind;
use crate::binding::{Binding, BindingName, DEFAULT_MAX_POOL_LIMIT};
use crate::quota::QuotaSpec;

pub const DEFAULT_CONFIG_FILE: &str = "config/binderd.toml";
pub const DEFAULT_BINDINGS_DIR: &str = "config/bindings";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8585";
pub const DEFAULT_DATA_DIR: &str = "binderd-data";

#[derive(Debug, Parser)]
#[command(
    name = "binderd",
    version,
    about = "Pools of pre-warmed notebook containers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
}

#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML config file (default: config/binderd.toml when it exists).
    #[arg(long, env = "BINDERD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8585; port 0 picks one).
    #[arg(long, env = "BINDERD_LISTEN")]
    pub listen: Option<String>,
    /// process | docker | kubernetes (default process).
    #[arg(long, env = "BINDERD_BACKEND")]
    pub backend: Option<String>,
    /// Where the database, logs and binder working dirs live.
    #[arg(long, env = "BINDERD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The URL users reach binderd at, for absolute links.
    #[arg(long, env = "BINDERD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Folder of binding files (default config/bindings when it exists).
    #[arg(long, env = "BINDERD_BINDINGS_DIR")]
    pub bindings_dir: Option<PathBuf>,
    /// Value for Access-Control-Allow-Origin (default: no CORS headers).
    #[arg(long, env = "BINDERD_ALLOW_ORIGIN")]
    pub allow_origin: Option<String>,
    /// The binding tmpnb routes use when the request names none.
    #[arg(long, env = "BINDERD_DEFAULT_BINDING")]
    pub default_binding: Option<String>,
    /// Docker backend: join this network and reach containers by their IP
    /// instead of publishing ports on 127.0.0.1.
    #[arg(long, env = "BINDERD_DOCKER_NETWORK")]
    pub docker_network: Option<String>,
    /// Kubernetes backend: the namespace for pods.
    #[arg(long, env = "BINDERD_KUBERNETES_NAMESPACE")]
    pub kubernetes_namespace: Option<String>,
    /// Stop every container on shutdown instead of keeping them for adoption.
    #[arg(long, env = "BINDERD_CLEANUP_ON_EXIT", num_args = 0..=1, default_missing_value = "true")]
    pub cleanup_on_exit: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// `[[api_keys]]` in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    name: String,
    key: Option<String>,
    key_file: Option<PathBuf>,
    role: Option<Role>,
    quota: Option<QuotaSpec>,
}

/// `[rate_limit]`: spawns (POST /binders/{b}, /api/spawn/, /spawn/...) only;
/// health, stats and the proxy are never limited.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Anonymous spawns per client IP per minute (0: no limit).
    #[serde(default = "RateLimitConfig::default_anon")]
    pub anonymous_per_minute: u32,
    #[serde(default = "RateLimitConfig::default_anon_burst")]
    pub anonymous_burst: u32,
    /// Spawns per second from everyone together (0: no limit).
    #[serde(default = "RateLimitConfig::default_global")]
    pub global_per_second: u32,
    #[serde(default = "RateLimitConfig::default_global_burst")]
    pub global_burst: u32,
    /// Peers whose `X-Forwarded-For` is believed (a reverse proxy in front).
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl RateLimitConfig {
    fn default_anon() -> u32 {
        60
    }
    fn default_anon_burst() -> u32 {
        20
    }
    fn default_global() -> u32 {
        200
    }
    fn default_global_burst() -> u32 {
        400
    }
}

/// `[kubernetes]`: where the kubernetes backend puts pods.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Default: the namespace of the kubeconfig context, or binderd's own
    /// namespace in a cluster.
    pub namespace: Option<String>,
    /// Merged over every pod's spec: `nodeSelector`, `tolerations`,
    /// `imagePullSecrets`, `runtimeClassName`, ... (Kubernetes spelling).
    pub pod_template: Option<toml::Table>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            anonymous_per_minute: Self::default_anon(),
            anonymous_burst: Self::default_anon_burst(),
            global_per_second: Self::default_global(),
            global_burst: Self::default_global_burst(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    backend: Option<String>,
    data_dir: Option<PathBuf>,
    public_url: Option<String>,
    bindings_dir: Option<PathBuf>,
    allow_origin: Option<String>,
    default_binding: Option<String>,
    cleanup_on_exit: Option<bool>,
    docker_network: Option<String>,
    spawn_wait_seconds: Option<u64>,
    max_body_bytes: Option<usize>,
    max_pool_limit: Option<u32>,
    start_concurrency: Option<usize>,
    shutdown_grace_seconds: Option<u64>,
    cull_interval_ms: Option<u64>,
    max_connections: Option<usize>,
    header_read_timeout_seconds: Option<u64>,
    rate_limit: Option<RateLimitConfig>,
    kubernetes: Option<KubernetesConfig>,
    #[serde(default)]
    api_keys: Vec<FileKey>,
    #[serde(default)]
    bindings: Vec<Binding>,
}

/// The checked configuration `run` is given.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub backend: BackendKind,
    pub data_dir: PathBuf,
    pub public_url: Option<String>,
    pub allow_origin: Option<String>,
    pub default_binding: Option<BindingName>,
    /// How long `POST /api/spawn/` waits for a container when none is warm.
    pub spawn_wait: Duration,
    pub max_body_bytes: usize,
    pub max_pool_limit: u32,
    /// Container starts in flight at once, over all bindings.
    pub start_concurrency: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// How often the culler looks for idle and old binders.
    pub cull_interval: Duration,
    pub cleanup_on_exit: bool,
    /// Docker backend: a network to join (containers reached by IP).
    pub docker_network: Option<String>,
    pub api_keys: Vec<ApiKey>,
    /// Per-key quotas, by key name.
    pub quotas: HashMap<String, QuotaSpec>,
    pub rate_limit: RateLimitConfig,
    /// Open client connections at most; more wait in the listen backlog.
    pub max_connections: usize,
    /// A client must send its request headers within this (slow-loris).
    pub header_read_timeout: Duration,
    pub kubernetes: KubernetesConfig,
    /// Bindings declared in files; they exist at every start.
    pub bindings: Vec<Binding>,
}

impl Config {
    /// Defaults, with a data dir of the caller's choosing (tests, embedding).
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            backend: BackendKind::Process,
            data_dir: data_dir.into(),
            public_url: None,
            allow_origin: None,
            default_binding: None,
            spawn_wait: Duration::from_secs(30),
            max_body_bytes: 1 << 20,
            max_pool_limit: DEFAULT_MAX_POOL_LIMIT,
            start_concurrency: 8,
            shutdown_grace: Duration::from_secs(10),
            cull_interval: Duration::from_secs(5),
            cleanup_on_exit: false,
            docker_network: None,
            api_keys: Vec::new(),
            quotas: HashMap::new(),
            rate_limit: RateLimitConfig::default(),
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            kubernetes: KubernetesConfig::default(),
            bindings: Vec::new(),
        }
    }

    /// Flags (with their env vars) over `BINDERD_API_KEYS` over the file over defaults.
    pub fn load(args: ServeArgs, api_keys_env: Option<String>) -> Result<Config, ConfigError> {
        let (file, file_path) = match &args.config {
            Some(path) => (read_file(path)?, Some(path.clone())),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => (
                read_file(Path::new(DEFAULT_CONFIG_FILE))?,
                Some(PathBuf::from(DEFAULT_CONFIG_FILE)),
            ),
            None => (FileConfig::default(), None),
        };
        let base = file_path
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();

        let mut cfg = Config::new(
            args.data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        );
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        cfg.listen = listen.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "invalid listen address '{listen}' (expected IP:PORT, e.g. 127.0.0.1:8585)"
            ))
        })?;
        if let Some(backend) = args.backend.or(file.backend) {
            cfg.backend = backend.parse().map_err(ConfigError::Invalid)?;
        }
        cfg.public_url = args.public_url.or(file.public_url);
        if let Some(url) = &cfg.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "public_url '{url}' must start with http:// or https://"
                )));
            }
        }
        cfg.allow_origin = args.allow_origin.or(file.allow_origin);
        if let Some(origin) = &cfg.allow_origin {
            if http::HeaderValue::from_str(origin).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "allow_origin '{origin}' is not a valid header value"
                )));
            }
        }
        cfg.default_binding = args
            .default_binding
            .or(file.default_binding)
            .map(|n| {
                BindingName::parse(&n)
                    .map_err(|e| ConfigError::Invalid(format!("default_binding: {e}")))
            })
            .transpose()?;
        cfg.cleanup_on_exit = args
            .cleanup_on_exit
            .or(file.cleanup_on_exit)
            .unwrap_or(false);
        cfg.docker_network = args.docker_network.or(file.docker_network);
        if let Some(s) = file.spawn_wait_seconds {
            cfg.spawn_wait = Duration::from_secs(s.min(3600));
        }
        if let Some(n) = file.max_body_bytes {
            cfg.max_body_bytes = n;
        }
        if let Some(n) = file.max_pool_limit {
            cfg.max_pool_limit = n;
        }
        if let Some(n) = file.start_concurrency {
            if n == 0 {
                return Err(ConfigError::Invalid(
                    "start_concurrency must be at least 1".into(),
                ));
            }
            cfg.start_concurrency = n;
        }
        if let Some(ms) = file.cull_interval_ms {
            cfg.cull_interval = Duration::from_millis(ms.clamp(10, 3_600_000));
        }
        if let Some(s) = file.shutdown_grace_seconds {
            cfg.shutdown_grace = Duration::from_secs(s);
        }

        if let Some(n) = file.max_connections {
            cfg.max_connections = n.max(1);
        }
        if let Some(s) = file.header_read_timeout_seconds {
            cfg.header_read_timeout = Duration::from_secs(s.max(1));
        }
        if let Some(r) = file.rate_limit {
            cfg.rate_limit = r;
        }
        if let Some(k) = file.kubernetes {
            cfg.kubernetes = k;
        }
        if let Some(ns) = args.kubernetes_namespace {
            cfg.kubernetes.namespace = Some(ns);
        }
        for k in &file.api_keys {
            if let Some(q) = &k.quota {
                cfg.quotas.insert(k.name.clone(), q.clone());
            }
        }
        crate::quota::Quotas::new(cfg.quotas.clone()).map_err(|e| ConfigError::Invalid(e.0))?;
        cfg.api_keys = match api_keys_env {
            Some(spec) if !spec.trim().is_empty() => parse_key_list(&spec)?,
            _ => file
                .api_keys
                .into_iter()
                .map(|k| file_key(k, &base))
                .collect::<Result<_, _>>()?,
        };
        check_keys(&cfg.api_keys)?;

        let mut bindings = file.bindings;
        let bindings_dir = args
            .bindings_dir
            .clone()
            .or(file.bindings_dir.map(|d| base.join(d)));
        match bindings_dir {
            Some(dir) => bindings.extend(read_bindings_dir(&dir)?),
            None if Path::new(DEFAULT_BINDINGS_DIR).is_dir() => {
                bindings.extend(read_bindings_dir(Path::new(DEFAULT_BINDINGS_DIR))?)
            }
            None => {}
        }
        cfg.bindings = cfg.check_bindings(bindings)?;
        Ok(cfg)
    }

    /// Validates file bindings against this config's backend and limits.
    pub fn check_bindings(&self, bindings: Vec<Binding>) -> Result<Vec<Binding>, ConfigError> {
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(bindings.len());
        for mut b in bindings {
            let name = b
                .validate(self.backend.runs_on_host(), self.max_pool_limit)
                .map_err(|e| ConfigError::Invalid(format!("binding '{}': {e}", b.name)))?;
            if !seen.insert(name.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "binding '{name}' is declared twice"
                )));
            }
            out.push(b);
        }
        Ok(out)
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: one_line(&e.to_string()),
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Each `*.toml` in `dir` is one binding; its name defaults to the file stem.
fn read_bindings_dir(dir: &Path) -> Result<Vec<Binding>, ConfigError> {
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

/// `name:key[:role],...`
fn parse_key_list(spec: &str) -> Result<Vec<ApiKey>, ConfigError> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let mut parts = entry.splitn(3, ':');
            let name = parts.next().unwrap_or_default();
            let key = parts.next().unwrap_or_default();
            let role = match parts.next() {
                None | Some("user") => Role::User,
                Some("admin") => Role::Admin,
                Some(other) => {
                    return Err(ConfigError::Invalid(format!(
                        "BINDERD_API_KEYS: key '{name}' has unknown role '{other}' (admin or user)"
                    )))
                }
            };
            if name.is_empty() || key.is_empty() {
                return Err(ConfigError::Invalid(
                    "BINDERD_API_KEYS: entries are name:key[:role]".into(),
                ));
            }
            Ok(ApiKey::new(name, key, role))
        })
        .collect()
}

fn file_key(k: FileKey, base: &Path) -> Result<ApiKey, ConfigError> {
    let key = match (k.key, k.key_file) {
        (Some(key), None) => key,
        (None, Some(file)) => {
            let path = base.join(file);
            std::fs::read_to_string(&path)
                .map_err(|source| ConfigError::Read { path, source })?
                .trim()
                .to_owned()
        }
        _ => {
            return Err(ConfigError::Invalid(format!(
                "api key '{}': give exactly one of key or key_file",
                k.name
            )))
        }
    };
    Ok(ApiKey::new(k.name, key, k.role.unwrap_or(Role::User)))
}

fn check_keys(keys: &[ApiKey]) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for k in keys {
        if k.name.is_empty() || !names.insert(k.name.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "api key name '{}' is empty or used twice",
                k.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("binderd-cfg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = tmp("prec");
        std::fs::create_dir_all(dir.join("bindings")).unwrap();
        std::fs::write(
            dir.join("bindings/Web.toml"),
            "command = [\"python3\", \"-m\", \"http.server\", \"{port}\"]\npublic = true\n",
        )
        .unwrap();
        std::fs::write(dir.join("alice.key"), "from-file\n").unwrap();
        std::fs::write(
            dir.join("b.toml"),
            r#"
listen = "127.0.0.1:9000"
data_dir = "/tmp/x"
bindings_dir = "bindings"
spawn_wait_seconds = 5
[[api_keys]]
name = "alice"
key_file = "alice.key"
"#,
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(dir.join("b.toml")),
            listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let cfg = Config::load(args, None).unwrap();
        assert_eq!(cfg.listen.port(), 0);
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.spawn_wait, Duration::from_secs(5));
        assert_eq!(cfg.bindings.len(), 1);
        assert_eq!(cfg.bindings[0].name, "web");
        assert_eq!(cfg.api_keys.len(), 1);
        assert_eq!(cfg.api_keys[0].role, Role::User);

        // BINDERD_API_KEYS replaces the file's keys.
        let args = ServeArgs {
            config: Some(dir.join("b.toml")),
            ..Default::default()
        };
        let cfg = Config::load(args, Some("root:k1:admin,bob:k2".into())).unwrap();
        assert_eq!(cfg.api_keys.len(), 2);
        assert_eq!(cfg.api_keys[0].role, Role::Admin);
        assert_eq!(cfg.api_keys[1].role, Role::User);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_config_is_one_clear_line() {
        let dir = tmp("bad");
        std::fs::write(dir.join("c.toml"), "listen = \"nowhere\"\n").unwrap();
        let err = |args: ServeArgs, keys: Option<&str>| {
            Config::load(args, keys.map(str::to_owned))
                .unwrap_err()
                .to_string()
        };
        let e = err(
            ServeArgs {
                config: Some(dir.join("c.toml")),
                ..Default::default()
            },
            None,
        );
        assert!(e.contains("invalid listen address 'nowhere'"), "{e}");
        assert!(!e.contains('\n'));

        std::fs::write(dir.join("d.toml"), "colour = \"red\"\n").unwrap();
        let e = err(
            ServeArgs {
                config: Some(dir.join("d.toml")),
                ..Default::default()
            },
            None,
        );
        assert!(e.contains("colour") && !e.contains('\n'), "{e}");

        let e = err(
            ServeArgs {
                backend: Some("vm".into()),
                ..Default::default()
            },
            None,
        );
        assert!(e.contains("unknown backend 'vm'"), "{e}");

        let e = err(ServeArgs::default(), Some("alice:k:root"));
        assert!(
            e.contains("unknown role 'root'") && !e.contains(":k:"),
            "{e}"
        );

        let e = err(
            ServeArgs {
                config: Some(dir.join("missing.toml")),
                ..Default::default()
            },
            None,
        );
        assert!(e.contains("missing.toml"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
