//! `binderd serve`'s flags: `--set key=value` for any documented key, and
//! a flag of its own for the common ones. Variables (`BINDERD_*`, one per
//! documented key) are read with the file ([`super::settings`]), below the
//! flags. The whole command line is `crate::cli`.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML config file (default: config/binderd.toml when it exists).
    #[arg(long, env = "BINDERD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8585; port 0 picks one).
    #[arg(long)]
    pub listen: Option<String>,
    /// process | docker | kubernetes (default process).
    #[arg(long)]
    pub backend: Option<String>,
    /// Where the database, logs and binder working dirs live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The URL users reach binderd at, for absolute links.
    #[arg(long)]
    pub public_url: Option<String>,
    /// Folder of binding files (default config/bindings when it exists).
    #[arg(long)]
    pub bindings_dir: Option<PathBuf>,
    /// Value for Access-Control-Allow-Origin (default: no CORS headers).
    #[arg(long)]
    pub allow_origin: Option<String>,
    /// The binding tmpnb routes use when the request names none.
    #[arg(long)]
    pub default_binding: Option<String>,
    /// Docker backend: join this network and reach containers by their IP
    /// instead of publishing ports on 127.0.0.1.
    #[arg(long)]
    pub docker_network: Option<String>,
    /// Kubernetes backend: the namespace for pods.
    #[arg(long)]
    pub kubernetes_namespace: Option<String>,
    /// text | json (one JSON object a line, for log shippers).
    #[arg(long)]
    pub log_format: Option<String>,
    /// Stop every container on shutdown instead of keeping them for adoption.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub cleanup_on_exit: Option<bool>,
    /// Any key of config/binderd.toml: `--set rate_limit.anonymous_per_minute=0`
    /// (repeatable; beats the file and the variables).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ServeArgs {
    /// Every flag as a `key=value` setting, the flags of their own first,
    /// then `--set` (so a later `--set` wins).
    pub(super) fn sets(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut put = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                out.push(format!("{key}={v}"));
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        put("listen", self.listen.clone());
        put("backend", self.backend.clone());
        put("data_dir", path(&self.data_dir));
        put("public_url", self.public_url.clone());
        put("bindings_dir", path(&self.bindings_dir));
        put("allow_origin", self.allow_origin.clone());
        put("default_binding", self.default_binding.clone());
        put("docker.network", self.docker_network.clone());
        put("kubernetes.namespace", self.kubernetes_namespace.clone());
        put("log_format", self.log_format.clone());
        put(
            "cleanup_on_exit",
            self.cleanup_on_exit.map(|b| b.to_string()),
        );
        out.extend(self.set.iter().cloned());
        out
    }
}
