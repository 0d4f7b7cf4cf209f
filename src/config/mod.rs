//! Configuration: flags > environment > TOML file > defaults.
//!
//! [`Config::load`] reads the file ([`mod@file`]), lays the flags and their
//! `BINDERD_*` variables over it ([`flags`]), then checks the whole into a
//! [`Config`]. Any problem is one [`ConfigError`] line, and `main` exits 64.
//! The tables a backend or a limiter reads are defined beside what reads
//! them (`backend::docker::DockerConfig`, `ratelimit::RateLimitConfig`, ...).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::ApiKey;
use crate::backend::docker::DockerConfig;
use crate::backend::kubernetes::KubernetesConfig;
use crate::backend::process::ProcessConfig;
use crate::backend::BackendKind;
use crate::binding::{Binding, BindingName, DEFAULT_MAX_POOL_LIMIT};
use crate::limits::Limits;
use crate::quota::QuotaSpec;
pub use crate::ratelimit::RateLimitConfig;

mod file;
mod flags;
mod keys;
pub mod settings;

use file::FileConfig;
pub use flags::ServeArgs;

pub const DEFAULT_CONFIG_FILE: &str = "config/binderd.toml";
pub const DEFAULT_BINDINGS_DIR: &str = "config/bindings";

/// The built-in notebook binding's name and document (the checkout's
/// `config/bindings/notebook.toml`, compiled in).
const NOTEBOOK: &str = "notebook";
const NOTEBOOK_TOML: &str = include_str!("../../config/bindings/notebook.toml");

/// The built-in notebook binding, served when no binding is configured.
fn builtin_notebook() -> Binding {
    let mut b: Binding = toml::from_str(NOTEBOOK_TOML).expect("the built-in binding parses");
    b.name = NOTEBOOK.into();
    b
}
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8585";
pub const DEFAULT_DATA_DIR: &str = "binderd-data";

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

/// The checked configuration `run` is given.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub backend: BackendKind,
    pub data_dir: PathBuf,
    pub public_url: Option<String>,
    /// A host of its own for every binder (`{token}.binders.example.org`):
    /// then no binder shares an origin with binderd or with another.
    pub binder_host: Option<BinderHost>,
    pub allow_origin: Option<String>,
    pub default_binding: Option<BindingName>,
    /// How long `POST /api/spawn/` waits for a container when none is warm.
    pub spawn_wait: Duration,
    /// A launch's event stream sends a comment when it has been quiet
    /// this long (proxies with short read timeouts keep it open).
    pub event_keepalive: Duration,
    /// With no bindings configured (process backend): serve the built-in
    /// notebook binding (`config/bindings/notebook.toml`).
    pub default_notebook: bool,
    pub max_body_bytes: usize,
    pub max_pool_limit: u32,
    /// Container starts in flight at once, over all bindings.
    pub start_concurrency: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// How often the culler looks for idle and old binders.
    pub cull_interval: Duration,
    pub cleanup_on_exit: bool,
    /// Logs as text lines, or one JSON object a line.
    pub log_json: bool,
    pub docker: DockerConfig,
    pub api_keys: Vec<ApiKey>,
    /// Per-key quotas, by key name.
    pub quotas: HashMap<String, QuotaSpec>,
    pub rate_limit: RateLimitConfig,
    /// Open client connections at most; more wait in the listen backlog.
    pub max_connections: usize,
    /// A client must send its request headers within this (slow-loris).
    pub header_read_timeout: Duration,
    /// Open connections one client (an address; an IPv6 /64) may hold; a
    /// trusted proxy's are not counted.
    pub max_connections_per_client: usize,
    /// A client that takes no bytes of an answer for this long is cut off.
    pub write_timeout: Duration,
    /// A WebSocket through which nothing has passed either way for this
    /// long is closed (Jupyter pings its kernels' sockets every 30 s).
    pub tunnel_idle_timeout: Duration,
    /// Serve cleartext HTTP/2 (prior knowledge). Off by default: browsers
    /// never speak it without TLS, and hyper's HTTP/2 has no header timeout.
    pub http2: bool,
    pub kubernetes: KubernetesConfig,
    pub process: ProcessConfig,
    /// `[content]`: bindings' repositories and the environments they build.
    pub content: crate::content::ContentConfig,
    /// `[limits]`: what every binder and service gets unless its binding
    /// lowers it (or, with an admin key, raises it).
    pub limits: Limits,
    /// `[security]`: what user keys may create.
    pub security: crate::auth::SecurityConfig,
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
            binder_host: None,
            allow_origin: None,
            default_binding: None,
            spawn_wait: Duration::from_secs(30),
            event_keepalive: Duration::from_secs(8),
            default_notebook: true,
            max_body_bytes: 1 << 20,
            max_pool_limit: DEFAULT_MAX_POOL_LIMIT,
            start_concurrency: 8,
            shutdown_grace: Duration::from_secs(10),
            cull_interval: Duration::from_secs(5),
            cleanup_on_exit: false,
            log_json: false,
            docker: DockerConfig::default(),
            api_keys: Vec::new(),
            quotas: HashMap::new(),
            rate_limit: RateLimitConfig::default(),
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            max_connections_per_client: 1024,
            write_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(30 * 60),
            http2: false,
            kubernetes: KubernetesConfig::default(),
            process: ProcessConfig::default(),
            content: crate::content::ContentConfig::default(),
            limits: Limits::default(),
            security: crate::auth::SecurityConfig::default(),
            bindings: Vec::new(),
        }
    }

    /// Reads the file, lays the flags and environment over it, checks.
    /// `api_keys_env` is `BINDERD_API_KEYS`.
    pub fn load(args: ServeArgs, api_keys_env: Option<String>) -> Result<Config, ConfigError> {
        let var = |name: &str| std::env::var(name).ok();
        let file = FileConfig::read(args.config.as_deref(), var, &args.sets())?;
        Config::check(file, api_keys_env)
    }

    /// `binderd config show`: every setting `serve` with these flags (and
    /// this environment) would use, and where each came from, after the
    /// same checks.
    pub fn show(args: ServeArgs, api_keys_env: Option<String>) -> Result<String, ConfigError> {
        let keys_origin = if api_keys_env.is_some() {
            settings::Origin::Env
        } else {
            settings::Origin::File
        };
        let var = |name: &str| std::env::var(name).ok();
        let mut file = FileConfig::read(args.config.as_deref(), var, &args.sets())?;
        let layered = std::mem::take(&mut file.layered);
        let cfg = Config::check(file, api_keys_env)?;
        let keys = match cfg.api_keys.len() {
            0 => (0, settings::Origin::Default),
            n => (n, keys_origin),
        };
        Ok(layered.show(keys, cfg.bindings.len()))
    }

    /// The defaults with every key of `file` checked and laid over them.
    fn check(mut file: FileConfig, api_keys_env: Option<String>) -> Result<Config, ConfigError> {
        let data_dir = file
            .data_dir
            .take()
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let mut cfg = Config::new(data_dir);
        cfg.check_addresses(&mut file)?;
        cfg.check_tuning(&mut file)?;
        (cfg.api_keys, cfg.quotas) = keys::load(api_keys_env, std::mem::take(&mut file.api_keys))?;

        let mut bindings = std::mem::take(&mut file.bindings);
        match file.bindings_dir.take() {
            Some(dir) => bindings.extend(file::read_bindings_dir(&dir)?),
            None if Path::new(DEFAULT_BINDINGS_DIR).is_dir() => {
                bindings.extend(file::read_bindings_dir(Path::new(DEFAULT_BINDINGS_DIR))?)
            }
            None => {}
        }
        if bindings.is_empty()
            && cfg.default_notebook
            && cfg.backend == crate::backend::BackendKind::Process
        {
            bindings.push(builtin_notebook());
        }
        // tmpnb's routes (and old thebe) spawn the notebook unless told.
        if cfg.default_binding.is_none() && bindings.iter().any(|b| b.name == NOTEBOOK) {
            cfg.default_binding = BindingName::parse(NOTEBOOK).ok();
        }
        cfg.bindings = cfg.check_bindings(bindings)?;
        cfg.check_shared()?;
        Ok(cfg)
    }

    /// Where binderd listens and answers: listen, backend, public_url,
    /// binder_host, allow_origin, default_binding, log_format.
    fn check_addresses(&mut self, file: &mut FileConfig) -> Result<(), ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let listen = file.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        self.listen = listen.parse().map_err(|_| {
            invalid(format!(
                "invalid listen address '{listen}' (expected IP:PORT, e.g. 127.0.0.1:8585)"
            ))
        })?;
        if let Some(backend) = file.backend.take() {
            self.backend = backend.parse().map_err(invalid)?;
        }
        if let Some(url) = &file.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(format!(
                    "public_url '{url}' must start with http:// or https://"
                )));
            }
        }
        if let Some(pattern) = &file.binder_host {
            let scheme = match &file.public_url {
                Some(u) if u.starts_with("https://") => "https",
                _ => "http",
            };
            self.binder_host = Some(BinderHost::parse(pattern, scheme).map_err(invalid)?);
        }
        self.public_url = file.public_url.take();
        if let Some(origin) = &file.allow_origin {
            if http::HeaderValue::from_str(origin).is_err() {
                return Err(invalid(format!(
                    "allow_origin '{origin}' is not a valid header value"
                )));
            }
        }
        self.allow_origin = file.allow_origin.take();
        self.default_binding = file
            .default_binding
            .take()
            .map(|n| BindingName::parse(&n).map_err(|e| invalid(format!("default_binding: {e}"))))
            .transpose()?;
        self.cleanup_on_exit = file.cleanup_on_exit.unwrap_or(false);
        self.log_json = match file.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(invalid(format!(
                    "unknown log_format '{}' (text or json)",
                    crate::binding::printable(other)
                )))
            }
        };
        Ok(())
    }

    /// The backends' sections and every number that tunes binderd.
    fn check_tuning(&mut self, file: &mut FileConfig) -> Result<(), ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        self.docker = std::mem::take(&mut file.docker);
        self.kubernetes = std::mem::take(&mut file.kubernetes);
        self.process = std::mem::take(&mut file.process);
        self.content = std::mem::take(&mut file.content);
        self.security = std::mem::take(&mut file.security);
        self.limits = file.limits.check().map_err(|e| invalid(e.0))?;
        if let Some(s) = file.spawn_wait_seconds {
            self.spawn_wait = Duration::from_secs(s.min(3600));
        }
        if let Some(on) = file.default_notebook {
            self.default_notebook = on;
        }
        if let Some(s) = file.event_keepalive_seconds {
            self.event_keepalive = Duration::from_secs(s.clamp(1, 300));
        }
        if let Some(n) = file.max_body_bytes {
            self.max_body_bytes = n;
        }
        if let Some(n) = file.max_pool_limit {
            self.max_pool_limit = n;
        }
        if let Some(n) = file.start_concurrency {
            if n == 0 {
                return Err(invalid("start_concurrency must be at least 1".into()));
            }
            self.start_concurrency = n;
        }
        if let Some(ms) = file.cull_interval_ms {
            self.cull_interval = Duration::from_millis(ms.clamp(10, 3_600_000));
        }
        if let Some(s) = file.shutdown_grace_seconds {
            self.shutdown_grace = Duration::from_secs(s);
        }
        if let Some(n) = file.max_connections {
            self.max_connections = n.max(1);
        }
        if let Some(s) = file.header_read_timeout_seconds {
            self.header_read_timeout = Duration::from_secs(s.max(1));
        }
        if let Some(n) = file.max_connections_per_client {
            self.max_connections_per_client = n.max(1);
        }
        if let Some(s) = file.write_timeout_seconds {
            self.write_timeout = Duration::from_secs(s.max(1));
        }
        if let Some(s) = file.tunnel_idle_timeout_seconds {
            self.tunnel_idle_timeout = Duration::from_secs(s.max(1));
        }
        if let Some(on) = file.http2 {
            self.http2 = on;
        }
        if let Some(r) = file.rate_limit.take() {
            self.rate_limit = r;
        }
        Ok(())
    }

    /// `[kubernetes] shared`: only on that backend, with a replica name
    /// that is a label value and a Lease of at least 3 s.
    fn check_shared(&self) -> Result<(), ConfigError> {
        let k = &self.kubernetes;
        if !k.shared {
            return Ok(());
        }
        if self.backend != crate::backend::BackendKind::Kubernetes {
            return Err(ConfigError::Invalid(
                "[kubernetes] shared = true needs backend = \"kubernetes\"".into(),
            ));
        }
        if let Some(r) = &k.replica {
            if !crate::backend::kubernetes::claims::is_label_value(r) {
                return Err(ConfigError::Invalid(format!(
                    "[kubernetes] replica '{r}' is not a label value (up to 63 letters, digits, '-', '_', '.')"
                )));
            }
        }
        if k.lease_seconds.is_some_and(|s| !(3..=3600).contains(&s)) {
            return Err(ConfigError::Invalid(
                "[kubernetes] lease_seconds must be between 3 and 3600".into(),
            ));
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("binderd-cfg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn deploys_configmap_is_a_valid_shared_mode_config_and_shared_mode_is_checked() {
        let yaml = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/configmap.yaml"),
        )
        .unwrap();
        let body: String = yaml
            .split("binderd.toml: |\n")
            .nth(1)
            .expect("the ConfigMap holds binderd.toml")
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l.trim_start()))
            .collect::<Vec<_>>()
            .join("\n");
        let dir = tmp("deploy");
        let load = |text: &str| {
            std::fs::write(dir.join("binderd.toml"), text).unwrap();
            Config::load(
                ServeArgs {
                    config: Some(dir.join("binderd.toml")),
                    ..Default::default()
                },
                None,
            )
        };
        let cfg = load(&body).unwrap();
        assert_eq!(cfg.backend, crate::backend::BackendKind::Kubernetes);
        assert!(cfg.kubernetes.shared);
        assert_eq!(
            cfg.kubernetes.namespace.as_deref(),
            Some("binderd-notebooks")
        );
        let e = load("[kubernetes]\nshared = true\n").unwrap_err();
        assert!(e.to_string().contains("backend"), "{e}");
        let e = load("backend = \"kubernetes\"\n[kubernetes]\nshared = true\nreplica = \"a/b\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("label value"), "{e}");
        let e = load("backend = \"kubernetes\"\n[kubernetes]\nshared = true\nlease_seconds = 1\n")
            .unwrap_err();
        assert!(e.to_string().contains("lease_seconds"), "{e}");
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
    fn the_documented_config_and_the_example_bindings_load() {
        let dir = tmp("documented");
        let args = ServeArgs {
            config: Some(PathBuf::from(DEFAULT_CONFIG_FILE)),
            bindings_dir: Some(dir.clone()),
            ..Default::default()
        };
        let cfg = Config::load(args, None).unwrap();
        assert_eq!(cfg.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(cfg.docker, DockerConfig::default());

        // The Jupyter example, as TOML for config/bindings/ and as JSON for
        // the API, is one binding.
        let toml_text = std::fs::read_to_string("examples/bindings/jupyter.toml").unwrap();
        let mut from_toml: Binding = toml::from_str(&toml_text).unwrap();
        let json_text = std::fs::read_to_string("examples/bindings/jupyter.json").unwrap();
        let from_json: Binding = serde_json::from_str(&json_text).unwrap();
        from_toml.name = from_json.name.clone();
        assert_eq!(from_toml, from_json);

        // The old spelling of the Docker network still works; the table wins.
        std::fs::write(dir.join("old.toml"), "docker_network = \"a\"\n").unwrap();
        std::fs::write(
            dir.join("both.toml"),
            "docker_network = \"a\"\n[docker]\nnetwork = \"b\"\n",
        )
        .unwrap();
        for (file, want) in [("old.toml", "a"), ("both.toml", "b")] {
            let read = FileConfig::read(Some(&dir.join(file)), |_| None, &[]).unwrap();
            assert_eq!(read.docker.network.as_deref(), Some(want), "{file}");
        }
        // The flag beats both.
        let flags = ServeArgs {
            docker_network: Some("c".into()),
            ..Default::default()
        };
        let read = FileConfig::read(Some(&dir.join("both.toml")), |_| None, &flags.sets()).unwrap();
        assert_eq!(read.docker.network.as_deref(), Some("c"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// No bindings configured: the built-in notebook binding (and it is the
    /// tmpnb routes' default); any binding of the operator's replaces it,
    /// as does `default_notebook = false` or another backend.
    #[test]
    fn with_no_bindings_the_notebook_is_served() {
        let empty = tmp("no-bindings");
        let with = |f: &dyn Fn(&mut FileConfig)| {
            let mut file = FileConfig::default();
            file.bindings_dir = Some(empty.clone());
            f(&mut file);
            Config::check(file, None).unwrap()
        };
        let cfg = with(&|_| {});
        let names: Vec<&str> = cfg.bindings.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["notebook"]);
        assert_eq!(
            cfg.default_binding.as_ref().map(|n| n.as_str()),
            Some("notebook")
        );
        assert_eq!(cfg.bindings[0].packages, ["jupyterlab", "ipykernel"]);
        assert!(with(&|f| f.default_notebook = Some(false))
            .bindings
            .is_empty());
        assert!(with(&|f| f.backend = Some("docker".into()))
            .bindings
            .is_empty());
        std::fs::write(empty.join("mine.toml"), "command = [\"true\"]\n").unwrap();
        let names: Vec<String> = with(&|_| {})
            .bindings
            .iter()
            .map(|b| b.name.clone())
            .collect();
        assert_eq!(names, ["mine"], "an operator's binding replaces it");
        let _ = std::fs::remove_dir_all(&empty);
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

/// `binder_host = "{token}.binders.example.org"`: every binder on a host
/// of its own (a wildcard DNS name and certificate point them all at
/// binderd), so that no binder's page shares an origin with binderd's
/// dashboard or with another binder (JupyterHub's subdomain mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinderHost {
    /// What follows `{token}.`, lowercase (a port may end it).
    suffix: String,
    scheme: &'static str,
}

impl BinderHost {
    pub fn parse(pattern: &str, scheme: &'static str) -> Result<BinderHost, String> {
        let suffix = pattern
            .strip_prefix("{token}.")
            .filter(|s| {
                !s.is_empty()
                    && !s.contains("{token}")
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
            })
            .ok_or_else(|| {
                format!("binder_host '{pattern}' must be {{token}}. and a host name, e.g. {{token}}.binders.example.org")
            })?;
        Ok(BinderHost {
            suffix: suffix.to_ascii_lowercase(),
            scheme,
        })
    }

    /// The token a request's `Host` names, if it is a binder's host.
    pub fn token_of<'h>(&self, host: &'h str) -> Option<&'h str> {
        let at = host.len().checked_sub(self.suffix.len() + 1)?;
        if !host.is_char_boundary(at) {
            return None;
        }
        let (token, rest) = host.split_at(at);
        (rest.as_bytes()[0] == b'.'
            && rest[1..].eq_ignore_ascii_case(&self.suffix)
            && !token.is_empty())
        .then_some(token)
    }

    /// The absolute URL of the binder with `token`.
    pub fn url(&self, token: &str) -> String {
        format!("{}://{token}.{}/user/{token}/", self.scheme, self.suffix)
    }
}

#[cfg(test)]
mod binder_host_tests {
    use super::BinderHost;

    #[test]
    fn a_binder_host_pattern_names_one_token_per_host() {
        let h = BinderHost::parse("{token}.Binders.Example.org", "https").unwrap();
        assert_eq!(h.url("ab12"), "https://ab12.binders.example.org/user/ab12/");
        assert_eq!(h.token_of("ab12.binders.example.org"), Some("ab12"));
        assert_eq!(h.token_of("AB12.BINDERS.example.org"), Some("AB12"));
        assert_eq!(h.token_of("binders.example.org"), None);
        assert_eq!(h.token_of(".binders.example.org"), None);
        assert_eq!(h.token_of("ab12.binders.example.org.evil.com"), None);
        assert_eq!(h.token_of("ab12xbinders.example.org"), None);
        assert_eq!(h.token_of("é.binders.example.org"), Some("é"));
        for bad in [
            "binders.example.org",
            "{token}",
            "x.{token}.org",
            "{token}.a/b",
            "{token}.{token}.org",
        ] {
            assert!(BinderHost::parse(bad, "http").is_err(), "{bad}");
        }
        let with_port = BinderHost::parse("{token}.localhost:8585", "http").unwrap();
        assert_eq!(with_port.token_of("t1.localhost:8585"), Some("t1"));
    }
}
