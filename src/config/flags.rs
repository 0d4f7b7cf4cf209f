//! `binderd serve`'s flags, each with its `BINDERD_*` environment variable
//! (clap reads both). The whole command line is `crate::cli`.

use std::path::PathBuf;

use clap::Args;

use super::file::FileConfig;

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
    /// text | json (one JSON object a line, for log shippers).
    #[arg(long, env = "BINDERD_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Stop every container on shutdown instead of keeping them for adoption.
    #[arg(long, env = "BINDERD_CLEANUP_ON_EXIT", num_args = 0..=1, default_missing_value = "true")]
    pub cleanup_on_exit: Option<bool>,
}

impl ServeArgs {
    /// Lays the flags (and their variables) over the file: a flag given
    /// beats the file's key.
    pub(super) fn overlay(self, file: &mut FileConfig) {
        fn over<T>(flag: Option<T>, key: &mut Option<T>) {
            if flag.is_some() {
                *key = flag;
            }
        }
        over(self.listen, &mut file.listen);
        over(self.backend, &mut file.backend);
        over(self.data_dir, &mut file.data_dir);
        over(self.public_url, &mut file.public_url);
        over(self.bindings_dir, &mut file.bindings_dir);
        over(self.allow_origin, &mut file.allow_origin);
        over(self.default_binding, &mut file.default_binding);
        over(self.cleanup_on_exit, &mut file.cleanup_on_exit);
        over(self.log_format, &mut file.log_format);
        over(self.docker_network, &mut file.docker.network);
        over(self.kubernetes_namespace, &mut file.kubernetes.namespace);
    }
}
