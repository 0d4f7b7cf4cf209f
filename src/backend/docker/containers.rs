//! A binder's containers as the engine is asked to make them: the
//! notebook from the [`ContainerPlan`], hardened, on its network, its
//! port published; its services beside it; the repository's files copied
//! in before it starts; and where it then answers.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, HostConfigLogConfig, NetworkingConfig,
    PortBinding, ResourcesUlimits,
};
use bollard::query_parameters::CreateContainerOptions;

use crate::backend::plan::{self, ContainerPlan, ROLE_SERVICE};
use crate::backend::{numeric_user, tar_owned_by, BackendError, BuiltEnv, Instance, StartSpec};
use crate::limits::Limits;

use super::engine::{timed, timed_or_gone};
use super::{DockerBackend, SHARED_NET};

impl DockerBackend {
    /// Starts the binding's services on the binder's network.
    pub(super) async fn start_services(
        &self,
        plan: &ContainerPlan<'_>,
        spec: &StartSpec<'_>,
        network: &str,
    ) -> Result<(), BackendError> {
        for service in &plan.services {
            let labels = self.service_labels(spec);
            let body = ContainerCreateBody {
                image: Some(service.image.to_owned()),
                cmd: (!service.args.is_empty()).then(|| service.args.to_vec()),
                env: Some(env_list(&service.env)),
                labels: Some(labels.into_iter().collect()),
                host_config: Some(HostConfig {
                    network_mode: Some(network.to_owned()),
                    ..hardened(&self.limits, service.capabilities)
                }),
                networking_config: Some(NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(
                        network.to_owned(),
                        EndpointSettings {
                            aliases: Some(vec![service.name.to_owned()]),
                            ..Default::default()
                        },
                    )])),
                }),
                ..Default::default()
            };
            let name = format!("binderd-{}-{}", short(spec.binder_id), service.name);
            let created = timed(
                &format!(
                    "creating service '{}' from image '{}'",
                    service.name, service.image
                ),
                self.docker.create_container(
                    Some(CreateContainerOptions {
                        name: Some(name),
                        platform: String::new(),
                    }),
                    body,
                ),
            )
            .await?;
            timed(
                &format!("starting service '{}'", service.name),
                self.docker.start_container(
                    &created.id,
                    None::<bollard::query_parameters::StartContainerOptions>,
                ),
            )
            .await?;
        }
        Ok(())
    }

    /// Makes and starts the binder's network, services and notebook
    /// container; what it made stays behind on an error (`start` removes it).
    pub(super) async fn start_inner(&self, spec: &StartSpec<'_>) -> Result<Instance, BackendError> {
        let mut plan = ContainerPlan::new(spec, &self.owner, "docker")?;
        // The image its requirements were built into, when they were.
        if let Some(BuiltEnv::Image(built)) = spec.content.and_then(|c| c.env.as_ref()) {
            plan.image = built;
        }
        if spec.binding.network.egress == crate::binding::Egress::None {
            // An internal network publishes no ports, and binderd reaches
            // notebooks through theirs.
            return Err(BackendError::Start(
                "network.egress = \"none\" is not available on the docker backend (use the process or kubernetes backend)".into(),
            ));
        }
        let binder_net = self.binder_network(spec, &plan).await?;
        let image = plan.image;
        let body = self.container_body(&plan, binder_net.clone());
        let name = format!("binderd-{}-{}", spec.binding.name, short(spec.binder_id));
        let created = timed_or_gone(
            &format!("creating a container from '{image}'"),
            self.docker.create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    platform: String::new(),
                }),
                body,
            ),
        )
        .await?
        .ok_or_else(|| {
            BackendError::Start(format!(
                "image '{image}' is not on this Docker engine (binderd does not pull images)"
            ))
        })?;
        if let (Some(net), Some(binder_net)) = (&self.network, &binder_net) {
            // Reachable on the configured network, services on its own.
            if net != binder_net {
                timed(
                    "joining the configured network",
                    self.docker.connect_network(
                        net,
                        bollard::models::NetworkConnectRequest {
                            container: Some(created.id.clone()),
                            endpoint_config: None,
                        },
                    ),
                )
                .await?;
            }
        }
        // The repository's files, in the image's working dir, before the
        // server runs.
        if let Some(files) = spec.content.and_then(|c| c.files.as_ref()) {
            self.copy_files(&created.id, image, files).await?;
        }
        timed(
            "starting the container",
            self.docker.start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            ),
        )
        .await?;
        let addr = self.address(&created.id, plan.port).await?;
        Ok(Instance {
            handle: created.id,
            addr,
        })
    }

    /// Copies the tar `files` into the container `id`, at its image's
    /// working dir, owned by the image's user when that is a number
    /// (`uid[:gid]`; a name stays root's: binderd does not read the image's
    /// `/etc/passwd`).
    async fn copy_files(
        &self,
        id: &str,
        image: &str,
        files: &std::path::Path,
    ) -> Result<(), BackendError> {
        let inspected = timed("inspecting the image", self.docker.inspect_image(image)).await?;
        let config = inspected.config.unwrap_or_default();
        self.upload(id, config.working_dir, config.user, files)
            .await
    }

    /// Copies the tar `files` into the container `id` at `working_dir`
    /// (`/` unless absolute), owned by `user` when that is numeric.
    pub(super) async fn upload(
        &self,
        id: &str,
        working_dir: Option<String>,
        user: Option<String>,
        files: &std::path::Path,
    ) -> Result<(), BackendError> {
        let dir = working_dir
            .filter(|d| d.starts_with('/'))
            .unwrap_or_else(|| "/".into());
        let owner = user.as_deref().and_then(numeric_user);
        let files = files.to_path_buf();
        let archive = tokio::task::spawn_blocking(move || tar_owned_by(&files, owner))
            .await
            .map_err(|e| BackendError::Start(e.to_string()))?
            .map_err(|e| BackendError::Start(format!("cannot read the repository's files: {e}")))?;
        timed(
            "copying the repository's files into the container",
            self.docker.upload_to_container(
                id,
                Some(
                    bollard::query_parameters::UploadToContainerOptionsBuilder::new()
                        .path(&dir)
                        .build(),
                ),
                bollard::body_full(archive.into()),
            ),
        )
        .await
    }

    /// The labels of a binder's services and of its network.
    pub(super) fn service_labels(
        &self,
        spec: &StartSpec<'_>,
    ) -> std::collections::BTreeMap<String, String> {
        plan::labels(
            &self.owner,
            &spec.binding.name,
            spec.binder_id,
            ROLE_SERVICE,
            None,
        )
    }

    /// The notebook container as the engine is asked to create it: the
    /// plan's image, command, env and labels, `hardened`, on its network
    /// (its own, the configured one, or the shared one), its port
    /// published on loopback unless a network is configured.
    fn container_body(
        &self,
        plan: &ContainerPlan<'_>,
        binder_net: Option<String>,
    ) -> ContainerCreateBody {
        let port_key = format!("{}/tcp", plan.port);
        let publish = self.network.is_none();
        let network_mode = binder_net
            .clone()
            .or_else(|| self.network.clone())
            .or_else(|| Some(SHARED_NET.to_owned()));
        let limits = self.limits.with(plan.resources.wanted());
        let host_config = HostConfig {
            network_mode: network_mode.clone(),
            port_bindings: publish.then(|| {
                HashMap::from([(
                    port_key.clone(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                )])
            }),
            ..hardened(&limits, plan.capabilities)
        };
        ContainerCreateBody {
            image: Some(plan.image.to_owned()),
            cmd: (!plan.args.is_empty()).then(|| plan.args.clone()),
            env: Some(env_list(&plan.env)),
            labels: Some(plan.labels.clone().into_iter().collect()),
            exposed_ports: Some(HashMap::from([(port_key.clone(), HashMap::new())])),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Where a started container answers: its published loopback port, or
    /// its IP on the configured network.
    pub(super) async fn address(&self, id: &str, port: u16) -> Result<SocketAddr, BackendError> {
        let inspected = timed(
            "inspecting the container",
            self.docker.inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            ),
        )
        .await?;
        let settings = inspected.network_settings.unwrap_or_default();
        match &self.network {
            Some(net) => {
                let ip = settings
                    .networks
                    .as_ref()
                    .and_then(|n| n.get(net))
                    .and_then(|e| e.ip_address.as_deref())
                    .and_then(|ip| ip.parse::<IpAddr>().ok())
                    .ok_or_else(|| {
                        BackendError::Start(format!(
                            "the container has no address on network '{net}'"
                        ))
                    })?;
                Ok(SocketAddr::new(ip, port))
            }
            None => {
                let key = format!("{port}/tcp");
                let host_port = settings
                    .ports
                    .as_ref()
                    .and_then(|p| p.get(&key))
                    .and_then(|b| b.as_ref())
                    .and_then(|b| {
                        b.iter()
                            .find_map(|b| b.host_port.as_deref()?.parse::<u16>().ok())
                    })
                    .ok_or_else(|| {
                        BackendError::Start(
                            "the container exited before its port was published".into(),
                        )
                    })?;
                Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, host_port)))
            }
        }
    }
}

/// `KEY=value` for the engine.
fn env_list(env: &[(String, String)]) -> Vec<String> {
    env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The first 12 characters of a binder id, for container names.
fn short(binder_id: &str) -> &str {
    &binder_id[..binder_id.len().min(12)]
}

/// The host config every container of binderd's starts from: its limits
/// (swap no larger than memory: `MemorySwap` counts both), every capability
/// dropped but `capabilities`, no new privileges, logs capped.
pub fn hardened(limits: &Limits, capabilities: &[String]) -> HostConfig {
    let memory = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
    HostConfig {
        memory: Some(memory),
        memory_swap: Some(memory),
        nano_cpus: Some(limits.nano_cpus()),
        pids_limit: Some(i64::from(limits.pids)),
        ulimits: Some(vec![ResourcesUlimits {
            name: Some("nofile".into()),
            soft: Some(i64::from(limits.nofile)),
            hard: Some(i64::from(limits.nofile)),
        }]),
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: (!capabilities.is_empty()).then(|| capabilities.to_vec()),
        privileged: Some(false),
        security_opt: Some(vec!["no-new-privileges".into()]),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), "10m".to_owned()),
                ("max-file".to_owned(), "2".to_owned()),
            ])),
        }),
        ..Default::default()
    }
}
