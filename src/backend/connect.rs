//! The `connect` factory: the backend a config names, built.

use std::path::Path;
use std::sync::Arc;

use super::{docker, kubernetes, process, Backend, BackendError, BackendKind, ExitSink};

/// Builds the backend `kind` names, for binderd's data dir. Its exit
/// reports go to `exits`.
pub async fn connect(
    kind: BackendKind,
    data_dir: &Path,
    settings: &Settings,
    exits: ExitSink,
) -> Result<Arc<dyn Backend>, BackendError> {
    let Settings {
        docker,
        kubernetes,
        process,
        limits,
    } = settings;
    Ok(match kind {
        BackendKind::Process => Arc::new(process::ProcessBackend::with_config(
            data_dir,
            process.clone(),
            *limits,
            exits,
        )?),
        BackendKind::Docker => Arc::new(
            docker::DockerBackend::connect(data_dir, docker.clone(), *limits, exits).await?,
        ),
        BackendKind::Kubernetes => Arc::new(
            kubernetes::KubernetesBackend::connect(data_dir, kubernetes, *limits, exits).await?,
        ),
    })
}

/// The config tables the backends read.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub docker: docker::DockerConfig,
    pub kubernetes: kubernetes::KubernetesConfig,
    pub process: process::ProcessConfig,
    /// `[limits]`: every binder's and service's unless its binding says.
    pub limits: crate::limits::Limits,
}
