//! The `docker` backend: each binder is a container on the local engine
//! (bollard), with its attached services beside it on a network of its own.
//!
//! - The notebook container publishes the binding's port on 127.0.0.1 with an
//!   engine-chosen host port, or, with `[docker] network` configured, joins that
//!   network and is reached at its container IP.
//! - Labels `binderd.owner` (the data dir's key), `binderd.binding`,
//!   `binderd.binder`, `binderd.role` (`notebook` | `service`) and
//!   `binderd.port` say whose it is; they are what adoption lists by.
//!   Docker labels cannot change, so handed-out state lives in binderd's store.
//! - A binding with `services` gets a network `binderd-net-{binder}`; each
//!   service container joins it under its service name, so the notebook
//!   reaches `postgres:5432` by name. Stopping the binder removes all of it.
//! - One task follows the engine's event stream (filtered by label) and
//!   reports containers that die; while it cannot reach the engine the
//!   backend reports itself unavailable.
//! - Images are never pulled: a missing image is a failed start whose message
//!   names the image.
//! - Every container, notebook and service, runs hardened ([`hardened`]):
//!   the `[limits]` (or its binding's) memory with swap no larger, CPU,
//!   pids and open files, every capability dropped (a binding adds back only
//!   the ones it names), `no-new-privileges`, logs capped. A notebook not on
//!   a binder network of its own joins [`SHARED_NET`], a bridge binderd makes
//!   with inter-container traffic off, so binders cannot reach each other
//!   directly; binderd reaches them through their published port. That one
//!   network serves every binderd on the engine (with traffic between its
//!   containers off, sharing it joins nobody) and is never removed: one per
//!   data dir would use up the engine's address pools.
//!
//! Its jobs: [`engine`] (the client's errors, deadlines and shared calls),
//! [`containers`] (a binder's containers from its plan), [`networks`],
//! [`event_stream`] (exits and availability) and [`image_build`]
//! (`requirements`).

mod containers;
mod engine;
mod event_stream;
mod image_build;
mod networks;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use futures_util::StreamExt;

use crate::limits::Limits;

pub use self::containers::hardened;
use self::engine::{classify, timed, timed_or_gone, unavailable, CALL_TIMEOUT, ENGINE};
use self::networks::network_name;
use super::plan::{LABEL_PORT, LABEL_ROLE, ROLE_NOTEBOOK};
use super::{
    Backend, BackendError, BackendKind, BuiltEnv, Discovered, EnvRequest, ExitSink, Instance,
    StartSpec, LABEL_BINDER, LABEL_BINDING,
};

/// `[docker]` in the config.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// Join this network and reach containers by their IP instead of
    /// publishing ports on 127.0.0.1.
    pub network: Option<String>,
}

/// The network notebooks without services join: inter-container traffic off.
pub const SHARED_NET: &str = "binderd-binders";

pub struct DockerBackend {
    docker: Docker,
    owner: String,
    network: Option<String>,
    limits: Limits,
    /// Whether the engine answers, as the event stream last saw it.
    availability: Arc<super::Availability>,
}

impl DockerBackend {
    /// Connects (DOCKER_HOST or the local socket) and checks the engine
    /// answers; an engine that does not is `BackendError::Unavailable`.
    pub async fn connect(
        data_dir: &std::path::Path,
        config: DockerConfig,
        limits: Limits,
        exits: ExitSink,
    ) -> Result<DockerBackend, BackendError> {
        let network = config.network;
        let docker = Docker::connect_with_local_defaults().map_err(unavailable)?;
        let docker =
            match tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version()).await {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => return Err(unavailable(e)),
                Err(_) => return Err(unavailable("no answer in 10s")),
            };
        timed("ping", docker.ping()).await?;
        let owner = super::owner_key(data_dir);
        let backend = DockerBackend {
            docker,
            owner,
            network,
            limits,
            availability: Arc::default(),
        };
        if backend.network.is_none() {
            backend.ensure_shared_net().await?;
        }
        backend.follow_events(exits);
        Ok(backend)
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    fn isolation(&self) -> super::Isolation {
        super::Isolation {
            level: "containers",
            message: format!(
                "each binder a container with limits, no capabilities and no new privileges, {}",
                match &self.network {
                    None => format!("on '{SHARED_NET}' (inter-container traffic off)"),
                    Some(net) => format!("on the configured network '{net}' (its own rules apply)"),
                }
            ),
        }
    }

    fn unavailable(&self) -> Option<String> {
        self.availability.reason()
    }

    /// An image built by the engine from the binding's image plus its
    /// requirements (`pip install` in a `RUN`), tagged by a hash of the
    /// three and reused when it is there: no registry on one host.
    async fn build_env(&self, request: EnvRequest<'_>) -> Result<BuiltEnv, BackendError> {
        self.build_image(request).await
    }

    async fn put_files(
        &self,
        _binder_id: &str,
        instance: &Instance,
        files: &std::path::Path,
    ) -> Result<(), BackendError> {
        let inspected = timed(
            "inspecting a container",
            self.docker.inspect_container(
                &instance.handle,
                None::<bollard::query_parameters::InspectContainerOptions>,
            ),
        )
        .await?;
        let config = inspected.config.unwrap_or_default();
        self.upload(&instance.handle, config.working_dir, config.user, files)
            .await
    }

    async fn start(&self, spec: StartSpec<'_>) -> Result<Instance, BackendError> {
        let binder_id = spec.binder_id.to_owned();
        let started = self.start_inner(&spec).await;
        if started.is_err() {
            // Leave nothing half-made behind (services, network).
            let _ = self
                .stop(
                    &binder_id,
                    &Instance {
                        handle: String::new(),
                        addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                    },
                )
                .await;
        }
        started
    }

    async fn is_running(&self, instance: &Instance) -> Result<bool, BackendError> {
        if instance.handle.is_empty() {
            return Ok(false);
        }
        let inspected = timed_or_gone(
            "inspecting a container",
            self.docker.inspect_container(
                &instance.handle,
                None::<bollard::query_parameters::InspectContainerOptions>,
            ),
        )
        .await?;
        Ok(inspected
            .and_then(|c| c.state)
            .and_then(|s| s.running)
            .unwrap_or(false))
    }

    /// As `docker stats` shows it: the cgroup's usage less its inactive
    /// page cache.
    async fn memory(&self, _binder_id: &str, instance: &Instance) -> Option<u64> {
        use futures_util::StreamExt;
        let options = bollard::query_parameters::StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(true)
            .build();
        let mut stats = self.docker.stats(&instance.handle, Some(options));
        let first = tokio::time::timeout(Duration::from_secs(10), stats.next()).await;
        let memory = first.ok()??.ok()?.memory_stats?;
        let usage = memory.usage?;
        let cache = memory
            .stats
            .as_ref()
            .and_then(|s| {
                s.get("inactive_file")
                    .or_else(|| s.get("total_inactive_file"))
            })
            .copied()
            .unwrap_or(0);
        Some(usage.saturating_sub(cache))
    }

    async fn stop(&self, binder_id: &str, instance: &Instance) -> Result<(), BackendError> {
        if !instance.handle.is_empty() {
            self.remove(&instance.handle).await?;
        }
        for c in self.list_labelled(&[(LABEL_BINDER, binder_id)]).await? {
            if let Some(id) = c.id {
                self.remove(&id).await?;
            }
        }
        timed_or_gone(
            "removing the binder's network",
            self.docker.remove_network(&network_name(binder_id)),
        )
        .await
        .map(drop)
    }

    async fn list(&self) -> Result<Vec<Discovered>, BackendError> {
        let mut by_binder: HashMap<String, Discovered> = HashMap::new();
        for c in self.list_labelled(&[]).await? {
            let labels = c.labels.clone().unwrap_or_default();
            let (Some(binder), Some(binding)) =
                (labels.get(LABEL_BINDER), labels.get(LABEL_BINDING))
            else {
                continue;
            };
            let entry = by_binder
                .entry(binder.clone())
                .or_insert_with(|| Discovered {
                    binder_id: binder.clone(),
                    binding: binding.clone(),
                    instance: Instance {
                        handle: String::new(),
                        addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                    },
                });
            if labels.get(LABEL_ROLE).map(String::as_str) != Some(ROLE_NOTEBOOK) {
                continue;
            }
            let port: u16 = labels
                .get(LABEL_PORT)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let addr = match &self.network {
                Some(net) => c
                    .network_settings
                    .as_ref()
                    .and_then(|s| s.networks.as_ref())
                    .and_then(|n| n.get(net))
                    .and_then(|e| e.ip_address.as_deref())
                    .and_then(|ip| ip.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
                None => c
                    .ports
                    .as_ref()
                    .and_then(|ports| {
                        ports
                            .iter()
                            .find(|p| p.private_port == port && p.public_port.is_some())
                    })
                    .and_then(|p| p.public_port)
                    .map(|public| SocketAddr::from((Ipv4Addr::LOCALHOST, public))),
            };
            entry.instance = Instance {
                handle: c.id.clone().unwrap_or_default(),
                addr: addr.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
            };
        }
        Ok(by_binder.into_values().collect())
    }

    async fn adopt(&self, _binder_id: &str, _instance: &Instance) -> Result<(), BackendError> {
        // The event stream already follows every container with our labels.
        Ok(())
    }

    async fn pause(&self, _binder_id: &str, instance: &Instance) -> Result<(), BackendError> {
        let options = bollard::query_parameters::StopContainerOptions {
            t: Some(5),
            signal: None,
        };
        timed(
            "stopping the container",
            self.docker.stop_container(&instance.handle, Some(options)),
        )
        .await
    }

    async fn resume(
        &self,
        spec: StartSpec<'_>,
        instance: &Instance,
    ) -> Result<Instance, BackendError> {
        timed(
            "starting the container again",
            self.docker.start_container(
                &instance.handle,
                None::<bollard::query_parameters::StartContainerOptions>,
            ),
        )
        .await?;
        Ok(Instance {
            handle: instance.handle.clone(),
            addr: self.address(&instance.handle, spec.binding.port).await?,
        })
    }

    async fn logs(
        &self,
        _binder_id: &str,
        instance: &Instance,
        tail: usize,
    ) -> Result<String, BackendError> {
        let options = bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            tail: tail.to_string(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(&instance.handle, Some(options));
        let mut out = String::new();
        let read = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| classify(e, "reading logs"))?;
                out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                if out.len() > 2 * super::MAX_LOG_BYTES {
                    break;
                }
            }
            Ok::<_, BackendError>(())
        };
        super::with_deadline(ENGINE, "reading logs", CALL_TIMEOUT, read, |e, _| e).await?;
        Ok(super::tail_lines(&out, tail))
    }
}
