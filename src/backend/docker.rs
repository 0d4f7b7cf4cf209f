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

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, HostConfigLogConfig, NetworkCreateRequest,
    NetworkingConfig, PortBinding, ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, RemoveContainerOptions,
};
use bollard::Docker;

use crate::limits::Limits;
use futures_util::StreamExt;

use super::plan::{self, ContainerPlan, LABEL_PORT, LABEL_ROLE, ROLE_NOTEBOOK, ROLE_SERVICE};
use super::{
    Backend, BackendError, BackendKind, BuiltEnv, Discovered, EnvRequest, ExitSink, Instance,
    StartSpec, LABEL_BINDER, LABEL_BINDING, LABEL_OWNER,
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

/// How long one engine call may take before it counts as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct DockerBackend {
    docker: Docker,
    owner: String,
    network: Option<String>,
    limits: Limits,
    /// Whether the engine answers, as the event stream last saw it.
    availability: Arc<super::Availability>,
}

fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("the Docker engine is not answering: {e}"))
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Engine errors: answers about the request are start errors, the rest mean
/// the engine is not there.
fn classify(e: DockerError, what: &str) -> BackendError {
    match e {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } if status_code < 500 => BackendError::Start(format!("{what}: {message}")),
        DockerError::DockerResponseServerError { message, .. } => {
            BackendError::Unavailable(format!("{what}: the Docker engine failed: {message}"))
        }
        other => unavailable(format!("{what}: {other}")),
    }
}

const ENGINE: &str = "the Docker engine";

async fn timed<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, DockerError>>,
) -> Result<T, BackendError> {
    super::with_deadline(ENGINE, what, CALL_TIMEOUT, call, classify).await
}

/// As [`timed`], with "no such object" as `Ok(None)`.
async fn timed_or_gone<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, DockerError>>,
) -> Result<Option<T>, BackendError> {
    super::with_deadline_or_gone(ENGINE, what, CALL_TIMEOUT, call, is_not_found, classify).await
}

/// `KEY=value` for the engine.
fn env_list(env: &[(String, String)]) -> Vec<String> {
    env.iter().map(|(k, v)| format!("{k}={v}")).collect()
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

    /// Makes the shared notebook network unless it exists: a bridge with
    /// inter-container traffic off.
    async fn ensure_shared_net(&self) -> Result<(), BackendError> {
        let existing = timed_or_gone(
            "inspecting the binders' network",
            self.docker.inspect_network(
                SHARED_NET,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            ),
        )
        .await?;
        if existing.is_some() {
            return Ok(());
        }
        let made = self
            .docker
            .create_network(NetworkCreateRequest {
                name: SHARED_NET.to_owned(),
                driver: Some("bridge".into()),
                options: Some(HashMap::from([(
                    "com.docker.network.bridge.enable_icc".to_owned(),
                    "false".to_owned(),
                )])),
                // Nobody's in particular (no owner label): see the module doc.
                labels: Some(HashMap::from([(
                    LABEL_ROLE.to_owned(),
                    "shared".to_owned(),
                )])),
                ..Default::default()
            })
            .await;
        match made {
            Ok(_) => Ok(()),
            // Made meanwhile by another binderd on the same engine.
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(classify(e, "creating the binders' network")),
        }
    }

    fn label_filter(&self, extra: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
        let mut labels = vec![format!("{LABEL_OWNER}={}", self.owner)];
        labels.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
        HashMap::from([("label".to_owned(), labels)])
    }

    /// Follows `die` events of our notebook containers, reconnecting after
    /// errors; the backend is unavailable while the stream is down.
    fn follow_events(&self, exits: ExitSink) {
        let docker = self.docker.clone();
        let mut filters = self.label_filter(&[(LABEL_ROLE, ROLE_NOTEBOOK)]);
        filters.insert("type".into(), vec!["container".into()]);
        filters.insert("event".into(), vec!["die".into(), "destroy".into()]);
        let availability = self.availability.clone();
        tokio::spawn(async move {
            let mut since: Option<i64> = None;
            while !exits.is_closed() {
                let options = EventsOptions {
                    since: since.map(|s| s.to_string()),
                    until: None,
                    filters: Some(filters.clone()),
                };
                let mut stream = docker.events(Some(options));
                let mut reason = String::from("the event stream ended");
                // The first item or error tells whether the engine is there;
                // ping to learn it without waiting for an event.
                match docker.ping().await {
                    Ok(_) => availability.up(),
                    Err(e) => reason = e.to_string(),
                }
                if availability.is_up() {
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok(event) => {
                                since = event.time.or(since);
                                let Some(actor) = event.actor else { continue };
                                let handle = actor.id.unwrap_or_default();
                                let mut attrs = actor.attributes.unwrap_or_default();
                                let reason = match attrs.get("exitCode").map(String::as_str) {
                                    Some("137") => "the container was killed (code 137: out of memory at its limit, or SIGKILL)".into(),
                                    Some(code) => format!("the container exited (code {code})"),
                                    None => "the container went away".into(),
                                };
                                if let Some(binder_id) = attrs.remove(LABEL_BINDER) {
                                    let _ = exits.send(super::Exit {
                                        binder_id,
                                        handle,
                                        reason,
                                    });
                                }
                            }
                            Err(e) => {
                                reason = e.to_string();
                                break;
                            }
                        }
                    }
                }
                availability.down(format!("the Docker engine is not answering: {reason}"));
                tracing::warn!(%reason, "lost the Docker engine's event stream; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Starts the binding's services on the binder's network.
    async fn start_services(
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

    async fn start_inner(&self, spec: &StartSpec<'_>) -> Result<Instance, BackendError> {
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

    async fn upload(
        &self,
        id: &str,
        working_dir: Option<String>,
        user: Option<String>,
        files: &std::path::Path,
    ) -> Result<(), BackendError> {
        let dir = working_dir
            .filter(|d| d.starts_with('/'))
            .unwrap_or_else(|| "/".into());
        let owner = user.as_deref().and_then(super::numeric_user);
        let files = files.to_path_buf();
        let archive = tokio::task::spawn_blocking(move || super::tar_owned_by(&files, owner))
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
    fn service_labels(&self, spec: &StartSpec<'_>) -> std::collections::BTreeMap<String, String> {
        plan::labels(
            &self.owner,
            &spec.binding.name,
            spec.binder_id,
            ROLE_SERVICE,
            None,
        )
    }

    /// A binder with services gets a network of its own, the services
    /// started on it; `None` for a binder without services.
    async fn binder_network(
        &self,
        spec: &StartSpec<'_>,
        plan: &ContainerPlan<'_>,
    ) -> Result<Option<String>, BackendError> {
        let Some(net) = (!plan.services.is_empty()).then(|| network_name(spec.binder_id)) else {
            return Ok(None);
        };
        let labels = self.service_labels(spec);
        timed(
            "creating the binder's network",
            self.docker.create_network(NetworkCreateRequest {
                name: net.clone(),
                driver: Some("bridge".into()),
                labels: Some(labels.into_iter().collect()),
                ..Default::default()
            }),
        )
        .await?;
        self.start_services(plan, spec, &net).await?;
        Ok(Some(net))
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
    async fn address(&self, id: &str, port: u16) -> Result<SocketAddr, BackendError> {
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

    async fn remove(&self, id: &str) -> Result<(), BackendError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        // Gone already, or its removal already in progress (409): done.
        let gone = |e: &DockerError| {
            is_not_found(e)
                || matches!(
                    e,
                    DockerError::DockerResponseServerError {
                        status_code: 409,
                        ..
                    }
                )
        };
        super::with_deadline_or_gone(
            ENGINE,
            "removing a container",
            CALL_TIMEOUT,
            self.docker.remove_container(id, Some(options)),
            gone,
            classify,
        )
        .await
        .map(drop)
    }

    async fn list_labelled(
        &self,
        extra: &[(&str, &str)],
    ) -> Result<Vec<bollard::models::ContainerSummary>, BackendError> {
        timed(
            "listing containers",
            self.docker.list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(self.label_filter(extra)),
                ..Default::default()
            })),
        )
        .await
    }
}

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

fn network_name(binder_id: &str) -> String {
    format!("binderd-net-{binder_id}")
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
        let Some(base) = request.binding.image.as_deref() else {
            return Err(BackendError::Start(
                "a binding with 'requirements' on Docker needs an 'image' to build on".into(),
            ));
        };
        let mut install: Vec<String> = vec![
            request.image_pip.to_owned(),
            "install".into(),
            "--disable-pip-version-check".into(),
            "--no-input".into(),
            "--no-cache-dir".into(),
            "--progress-bar".into(),
            "off".into(),
        ];
        if !request.allow_sdists {
            install.push("--only-binary=:all:".into());
        }
        install.extend(request.pip_args.iter().cloned());
        install.extend(["-r".into(), "/tmp/binderd-requirements.txt".into()]);
        let dockerfile = format!(
            "FROM {base}\nCOPY requirements.txt /tmp/binderd-requirements.txt\nRUN {}\n",
            serde_json::to_string(&install).unwrap_or_default()
        );
        let mut key = Vec::new();
        key.extend_from_slice(dockerfile.as_bytes());
        key.extend_from_slice(request.requirements);
        // The base image's id too: a rebuilt base is a new environment.
        let base_id = timed("inspecting the image", self.docker.inspect_image(base))
            .await?
            .id
            .unwrap_or_default();
        key.extend_from_slice(base_id.as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &key);
        let hash: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let tag = format!(
            "binderd-env/{}:{hash}",
            self.owner.get(..12).unwrap_or(&self.owner)
        );
        let log = request.log;
        if timed_or_gone(
            "looking for a built environment",
            self.docker.inspect_image(&tag),
        )
        .await?
        .is_some()
        {
            log(&format!("environment {tag} (built before)"));
            return Ok(BuiltEnv::Image(tag));
        }
        let context = {
            let mut tar = tar::Builder::new(Vec::new());
            for (name, bytes) in [
                ("Dockerfile", dockerfile.as_bytes()),
                ("requirements.txt", request.requirements),
            ] {
                let mut header = tar::Header::new_gnu();
                header.set_size(bytes.len() as u64);
                header.set_mode(0o644);
                tar.append_data(&mut header, name, bytes)?;
            }
            tar.into_inner()?
        };
        log(&format!("building {tag} from {base}"));
        let options = bollard::query_parameters::BuildImageOptionsBuilder::new()
            .dockerfile("Dockerfile")
            .t(&tag)
            .rm(true)
            .forcerm(true)
            .networkmode(request.build_network)
            .labels(&std::collections::HashMap::from([(
                super::LABEL_OWNER.to_string(),
                self.owner.clone(),
            )]))
            .build();
        let build = async {
            let mut stream =
                self.docker
                    .build_image(options, None, Some(bollard::body_full(context.into())));
            while let Some(item) = stream.next().await {
                let info = item.map_err(|e| BackendError::Start(format!("the build: {e}")))?;
                if let Some(text) = info.stream.as_deref() {
                    for line in text.lines().filter(|l| !l.trim().is_empty()) {
                        log(line);
                    }
                }
                if let Some(error) = info.error {
                    log(&error);
                    return Err(BackendError::Start(format!("the build failed: {error}")));
                }
            }
            Ok(())
        };
        match tokio::time::timeout(request.timeout, build).await {
            Ok(Ok(())) => Ok(BuiltEnv::Image(tag)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BackendError::Start(format!(
                "building the environment took longer than {} s",
                request.timeout.as_secs()
            ))),
        }
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
