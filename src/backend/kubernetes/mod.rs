//! The `kubernetes` backend (kube-rs): each binder is a pod in one namespace.
//!
//! - Pods carry the labels `binderd.owner` (the data dir's key),
//!   `binderd.binding`, `binderd.binder`, `binderd.role` and `binderd.port`;
//!   the handed-out state lives in binderd's store, as with Docker.
//! - The pod runs the binding's `image` (`command` as its `args`), `env`,
//!   its memory and CPU (the binding's `resources` over the `[limits]`, in
//!   bytes and millicpus, so they mean what they mean to binderd) as both
//!   requests and limits on every container, and a security context that
//!   passes the "restricted" Pod Security Standard ([`restricted`]): not
//!   root (uid 1000, group 100 unless the pod template says otherwise), no
//!   privilege escalation, every capability dropped (`NET_BIND_SERVICE` may
//!   be given back, nothing else), the runtime's seccomp profile, no
//!   service-account token; `restartPolicy: Never` (a crashed binder is
//!   replaced, not restarted in place). Pids per pod are the kubelet's
//!   `podPidsLimit`, not a pod field.
//! - Attached `services` are extra containers in the same pod: they share its
//!   network (reachable on localhost, and by their name through `hostAliases`)
//!   and its lifetime, so nothing else (Services, NetworkPolicies) has to be
//!   created or cleaned up.
//! - One watcher (kube-runtime) follows binderd's pods by label. `start` waits
//!   for its pod on that stream, never by polling: Ready (plus the pool's own
//!   HTTP check at pod IP:port) or a failure with the reason from the pod
//!   status (ImagePullBackOff, CrashLoopBackOff, Evicted, Pending past the
//!   start timeout). A pod that fails or is deleted behind binderd's back is
//!   reported as an exit.
//! - Pods cannot be stopped and kept, so pause is refused on this backend.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use futures_util::StreamExt;

use crate::limits::Limits;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HostAlias, Pod,
    PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::watcher;
use tokio::sync::broadcast;

use super::plan::{ContainerPlan, LABEL_PORT};
use super::{
    Backend, BackendError, BackendKind, Claim, Cluster, Discovered, Exit, ExitSink, Instance,
    PodView, StartSpec, LABEL_BINDER, LABEL_BINDING, LABEL_OWNER,
};

pub mod shared;

/// `[kubernetes]` in the config: where the kubernetes backend puts pods.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Default: the namespace of the kubeconfig context, or binderd's own
    /// namespace in a cluster.
    pub namespace: Option<String>,
    /// Merged over every pod's spec: `nodeSelector`, `tolerations`,
    /// `imagePullSecrets`, `runtimeClassName`, ... (Kubernetes spelling).
    pub pod_template: Option<toml::Table>,
    /// Several replicas on one namespace (see `shared`): handouts are
    /// claims on the pods, bindings' reconcilers run where their Lease is.
    /// Off by default: one replica, the local allocator.
    #[serde(default)]
    pub shared: bool,
    /// This replica's name in claims and Leases (default: `POD_NAME`, then
    /// `HOSTNAME`, then a random one).
    pub replica: Option<String>,
    /// How long a binding's Lease lasts unless renewed (default 15 s).
    pub lease_seconds: Option<u64>,
}

/// Where a binding's repository folder is in its pods, the notebook's
/// working dir (repo2docker's home, a folder of it: the image's own home
/// stays as it is).
pub const CONTENT_DIR: &str = "/home/jovyan/work";

/// The init container's script: the commit of the repository, its folder
/// copied into the shared `emptyDir`. Arguments, never spliced in: `$1` the
/// URL, `$2` the commit, `$3` the folder (`.` for the root).
const CONTENT_SCRIPT: &str = "set -eu\n\
    git init -q /tmp/binderd-repo\n\
    cd /tmp/binderd-repo\n\
    git fetch -q --depth 1 -- \"$1\" \"$2\" || git fetch -q -- \"$1\"\n\
    git -c advice.detachedHead=false checkout -q \"$2\"\n\
    cp -R -- \"./$3/.\" /binderd-content/\n\
    rm -rf /binderd-content/.git\n";

/// The init container that puts a binding's repository folder (at its
/// `resolvedRef`) into the pod, from the binding's own image: that image
/// must have `sh`, `git` and `cp`, and the pod egress to the repository.
fn content_container(
    binding: &crate::binding::Binding,
    image: &str,
    resources: ResourceRequirements,
    security: SecurityContext,
) -> Option<Container> {
    if binding.content_from() != crate::binding::ContentFrom::Repo {
        return None;
    }
    let (url, commit) = (binding.repo.as_ref()?, binding.resolved_ref.as_ref()?);
    let folder = binding
        .notebooks
        .as_deref()
        .map(|n| {
            n.strip_prefix("repo/")
                .unwrap_or(if n == "repo" { "" } else { n })
        })
        .filter(|n| !n.is_empty())
        .unwrap_or(".");
    Some(Container {
        name: "content".into(),
        image: Some(image.to_owned()),
        command: Some(vec!["sh".into(), "-c".into(), CONTENT_SCRIPT.into()]),
        args: Some(vec![
            "binderd-content".into(),
            url.clone(),
            commit.clone(),
            folder.to_owned(),
        ]),
        volume_mounts: Some(vec![VolumeMount {
            name: "content".into(),
            mount_path: "/binderd-content".into(),
            ..Default::default()
        }]),
        resources: Some(resources),
        security_context: Some(security),
        ..Default::default()
    })
}

/// A Lease's default duration.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Waiting reasons that mean the pod will not start by itself.
const FATAL_WAITING: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

pub struct KubernetesBackend {
    pods: Api<Pod>,
    owner: String,
    /// `[limits]`, every container's unless its binding says otherwise.
    limits: Limits,
    /// Merged over every pod's spec (node selectors, tolerations, pull
    /// secrets, runtime class, ...).
    pod_template: Option<serde_json::Value>,
    /// The watcher's view of our pods, by name.
    seen: Arc<DashMap<String, Pod>>,
    changes: broadcast::Sender<String>,
    /// Whether the API server answers, as the watcher last saw it.
    availability: Arc<super::Availability>,
    /// Shared mode's claims, leases and views.
    shared: Option<shared::Shared>,
}

fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("the Kubernetes API server is not answering: {e}"))
}

fn classify(e: kube::Error, what: &str) -> BackendError {
    match e {
        kube::Error::Api(status) if status.code < 500 => {
            BackendError::Start(format!("{what}: {}", status.message))
        }
        other => unavailable(format!("{what}: {other}")),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

const API_SERVER: &str = "the Kubernetes API server";

async fn timed<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, BackendError> {
    super::with_deadline(API_SERVER, what, CALL_TIMEOUT, call, classify).await
}

/// What a pod's status says about its start.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PodProgress {
    Ready(IpAddr),
    Waiting(String),
    Failed(String),
}

pub(crate) fn progress(pod: &Pod) -> PodProgress {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodProgress::Failed("the pod is being deleted".into());
    }
    let Some(status) = &pod.status else {
        return PodProgress::Waiting("no status yet".into());
    };
    match status.phase.as_deref() {
        Some("Failed") | Some("Succeeded") => {
            let reason = status
                .reason
                .clone()
                .or_else(|| {
                    status.container_statuses.iter().flatten().find_map(|c| {
                        c.state.as_ref()?.terminated.as_ref().map(|t| {
                            format!(
                                "{} (exit code {})",
                                t.reason.clone().unwrap_or_default(),
                                t.exit_code
                            )
                        })
                    })
                })
                .unwrap_or_else(|| "the pod stopped".into());
            let message = status.message.clone().unwrap_or_default();
            return PodProgress::Failed(format!("{reason} {message}").trim().to_owned());
        }
        _ => {}
    }
    for c in status.container_statuses.iter().flatten() {
        if let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = waiting.reason.clone().unwrap_or_default();
            if FATAL_WAITING.contains(&reason.as_str()) {
                let message = waiting.message.clone().unwrap_or_default();
                return PodProgress::Failed(
                    format!("{reason}: {message}")
                        .trim_end_matches(": ")
                        .to_owned(),
                );
            }
        }
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    match (
        ready,
        status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()),
    ) {
        (true, Some(ip)) => PodProgress::Ready(ip),
        _ => {
            let why = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.status == "False" && c.message.is_some())
                .and_then(|c| c.message.clone())
                .unwrap_or_else(|| status.phase.clone().unwrap_or_else(|| "Pending".into()));
            PodProgress::Waiting(why)
        }
    }
}

/// Deep-merges `patch` into `base`: objects key by key, anything else replaced.
fn merge(base: &mut serde_json::Value, patch: &serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// The pod's labels: the plan's, and `binderd.egress=none` for a binding
/// that closes egress (deploy/kubernetes/notebooks' NetworkPolicy then lets
/// nothing out).
fn pod_labels(
    labels: &BTreeMap<String, String>,
    egress: crate::binding::Egress,
) -> BTreeMap<String, String> {
    let mut labels = labels.clone();
    if egress == crate::binding::Egress::None {
        labels.insert(LABEL_EGRESS.to_owned(), "none".to_owned());
    }
    labels
}

/// Label: `none` on the pods of a binding whose egress is closed.
pub const LABEL_EGRESS: &str = "binderd.egress";

/// A container's security context under the "restricted" Pod Security
/// Standard: not root, no privilege escalation, the runtime's seccomp
/// profile, every capability dropped but `NET_BIND_SERVICE` if asked for
/// (the only one that standard lets a pod add).
pub fn restricted(capabilities: &[String]) -> Result<SecurityContext, BackendError> {
    let mut add = Vec::new();
    for cap in capabilities {
        let name = cap.strip_prefix("CAP_").unwrap_or(cap);
        if name != "NET_BIND_SERVICE" {
            return Err(BackendError::Start(format!(
                "capability '{name}' is not allowed on Kubernetes (the restricted Pod Security Standard adds only NET_BIND_SERVICE)"
            )));
        }
        add.push(name.to_owned());
    }
    Ok(SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: (!add.is_empty()).then_some(add),
        }),
        ..Default::default()
    })
}

impl KubernetesBackend {
    /// In-cluster config or kubeconfig (kube's defaults), then [`Self::new`].
    pub async fn connect(
        data_dir: &std::path::Path,
        config: &KubernetesConfig,
        limits: Limits,
        exits: ExitSink,
    ) -> Result<KubernetesBackend, BackendError> {
        let namespace = config.namespace.clone();
        let pod_template = config
            .pod_template
            .as_ref()
            .map(|t| serde_json::to_value(t).unwrap_or_default());
        let client = kube::Client::try_default().await.map_err(unavailable)?;
        let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
        let backend = if config.shared {
            let replica = shared::replica_name(config.replica.as_deref());
            let lease = config
                .lease_seconds
                .map_or(DEFAULT_LEASE, Duration::from_secs);
            tracing::info!(%replica, %namespace, "shared mode: handouts are claims on the pods");
            KubernetesBackend::new_shared(client, &namespace, replica, lease, pod_template, exits)
        } else {
            KubernetesBackend::new(
                client,
                &namespace,
                super::owner_key(data_dir),
                pod_template,
                exits,
            )
        }
        .with_limits(limits);
        // One cheap call: a missing namespace or no permission is clear now.
        timed(
            "listing pods",
            backend
                .pods
                .list(&ListParams::default().labels(&backend.selector()).limit(1)),
        )
        .await?;
        Ok(backend)
    }

    /// The same backend with other `[limits]`.
    pub fn with_limits(mut self, limits: Limits) -> KubernetesBackend {
        self.limits = limits;
        self
    }

    /// A backend on `client` (tests pass a mock), watching our pods.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        owner: String,
        pod_template: Option<serde_json::Value>,
        exits: ExitSink,
    ) -> KubernetesBackend {
        KubernetesBackend::build(client, namespace, owner, pod_template, exits, None)
    }

    /// A backend in shared mode: one of several replicas on `namespace`,
    /// named `replica`, holding Leases for `lease_duration`.
    pub fn new_shared(
        client: kube::Client,
        namespace: &str,
        replica: String,
        lease_duration: Duration,
        pod_template: Option<serde_json::Value>,
        exits: ExitSink,
    ) -> KubernetesBackend {
        let (views, taken) = tokio::sync::mpsc::unbounded_channel();
        let (changes, changed) = tokio::sync::mpsc::unbounded_channel();
        let configmaps = Api::namespaced(client.clone(), namespace);
        let owner = shared::shared_owner_key(namespace);
        KubernetesBackend::follow_binding_docs(configmaps.clone(), &owner, changes);
        let shared = shared::Shared {
            replica,
            lease_duration,
            leases: Api::namespaced(client.clone(), namespace),
            configmaps,
            binding_changes: std::sync::Mutex::new(Some(changed)),
            views,
            taken: std::sync::Mutex::new(Some(taken)),
        };
        KubernetesBackend::build(
            client,
            namespace,
            shared::shared_owner_key(namespace),
            pod_template,
            exits,
            Some(shared),
        )
    }

    fn build(
        client: kube::Client,
        namespace: &str,
        owner: String,
        pod_template: Option<serde_json::Value>,
        exits: ExitSink,
        shared: Option<shared::Shared>,
    ) -> KubernetesBackend {
        let (changes, _) = broadcast::channel(1024);
        let backend = KubernetesBackend {
            pods: Api::namespaced(client, namespace),
            owner,
            limits: Limits::default(),
            pod_template,
            seen: Arc::new(DashMap::new()),
            changes,
            availability: Arc::default(),
            shared,
        };
        backend.follow_pods(exits);
        backend
    }

    fn selector(&self) -> String {
        format!("{LABEL_OWNER}={}", self.owner)
    }

    /// The watcher: keeps `seen` current, wakes `start`s, reports exits.
    fn follow_pods(&self, exits: ExitSink) {
        let stream = watcher(
            self.pods.clone(),
            watcher::Config::default().labels(&self.selector()),
        );
        let (seen, changes, availability) = (
            self.seen.clone(),
            self.changes.clone(),
            self.availability.clone(),
        );
        let views = self.shared.as_ref().map(|s| s.views.clone());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let pod = match event {
                    Ok(watcher::Event::Apply(pod)) | Ok(watcher::Event::InitApply(pod)) => pod,
                    Ok(watcher::Event::Delete(pod)) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        seen.remove(&name);
                        report_exit(&exits, &pod, "the pod was deleted".into());
                        let _ = changes.send(name);
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        availability
                            .down(format!("the Kubernetes API server is not answering: {e}"));
                        tracing::warn!(error = %e, "pod watch failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                availability.up();
                let name = pod.metadata.name.clone().unwrap_or_default();
                if let PodProgress::Failed(reason) = progress(&pod) {
                    report_exit(&exits, &pod, reason);
                }
                if let Some(views) = &views {
                    if let Some(view) = shared::view(&pod) {
                        // Closed only when binderd stops.
                        let _ = views.send(view).is_ok();
                    }
                }
                shared::remember_newer(&seen, pod);
                let _ = changes.send(name);
                if exits.is_closed() {
                    return;
                }
            }
        });
    }

    fn pod_for(&self, spec: &StartSpec<'_>, name: &str) -> Result<Pod, BackendError> {
        let plan = ContainerPlan::new(spec, &self.owner, "kubernetes")?;
        let env_vars = |env: &[(String, String)]| -> Vec<EnvVar> {
            env.iter()
                .map(|(k, v)| EnvVar {
                    name: k.clone(),
                    value: Some(v.clone()),
                    ..Default::default()
                })
                .collect()
        };
        let limits = self.limits.with(plan.resources.wanted());
        let quantities = BTreeMap::from([
            ("memory".to_owned(), Quantity(limits.memory_quantity())),
            ("cpu".to_owned(), Quantity(limits.cpu_quantity())),
        ]);
        let service_quantities = BTreeMap::from([
            ("memory".to_owned(), Quantity(self.limits.memory_quantity())),
            ("cpu".to_owned(), Quantity(self.limits.cpu_quantity())),
        ]);
        let resources = |q: &BTreeMap<String, Quantity>| ResourceRequirements {
            limits: Some(q.clone()),
            requests: Some(q.clone()),
            ..Default::default()
        };
        let mut containers = vec![Container {
            name: "notebook".into(),
            image: Some(plan.image.to_owned()),
            args: (!plan.args.is_empty()).then(|| plan.args.clone()),
            env: Some(env_vars(&plan.env)),
            ports: Some(vec![ContainerPort {
                container_port: i32::from(plan.port),
                name: Some("http".into()),
                ..Default::default()
            }]),
            resources: Some(resources(&quantities)),
            security_context: Some(restricted(plan.capabilities)?),
            ..Default::default()
        }];
        for service in &plan.services {
            containers.push(Container {
                name: service.name.to_owned(),
                image: Some(service.image.to_owned()),
                args: (!service.args.is_empty()).then(|| service.args.to_vec()),
                env: Some(env_vars(&service.env)),
                resources: Some(resources(&service_quantities)),
                security_context: Some(restricted(service.capabilities)?),
                ..Default::default()
            });
        }
        // A repository's folder: cloned by an init container into an
        // `emptyDir`, the notebook's working dir.
        let init = content_container(
            spec.binding,
            plan.image,
            resources(&quantities),
            restricted(plan.capabilities)?,
        );
        let volumes = init.as_ref().map(|_| {
            containers[0].volume_mounts = Some(vec![VolumeMount {
                name: "content".into(),
                mount_path: CONTENT_DIR.into(),
                ..Default::default()
            }]);
            containers[0].working_dir = Some(CONTENT_DIR.into());
            vec![Volume {
                name: "content".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }]
        });
        let host_aliases = (!plan.services.is_empty()).then(|| {
            vec![HostAlias {
                ip: "127.0.0.1".into(),
                hostnames: Some(plan.services.iter().map(|s| s.name.to_owned()).collect()),
            }]
        });
        let mut pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(pod_labels(&plan.labels, spec.binding.network.egress)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers,
                init_containers: init.map(|c| vec![c]),
                volumes,
                restart_policy: Some("Never".into()),
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                host_aliases,
                security_context: Some(PodSecurityContext {
                    run_as_non_root: Some(true),
                    run_as_user: Some(1000),
                    run_as_group: Some(100),
                    fs_group: Some(100),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        };
        if let Some(template) = &self.pod_template {
            let mut spec =
                serde_json::to_value(&pod.spec).map_err(|e| BackendError::Start(e.to_string()))?;
            merge(&mut spec, template);
            pod.spec = serde_json::from_value(spec).map_err(|e| {
                BackendError::Start(format!("the pod template does not fit a pod spec: {e}"))
            })?;
        }
        Ok(pod)
    }

    /// Waits on the watch stream until the pod is ready or has failed.
    async fn wait_ready(
        &self,
        name: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<SocketAddr, BackendError> {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no status yet");
        loop {
            if let Some(pod) = self.seen.get(name) {
                match progress(&pod) {
                    PodProgress::Ready(ip) => return Ok(SocketAddr::new(ip, port)),
                    PodProgress::Failed(reason) => return Err(BackendError::Start(reason)),
                    PodProgress::Waiting(why) => last = why,
                }
            }
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Err(_) => {
                    return Err(BackendError::Start(format!(
                        "Pending past the start timeout of {}s: {last}",
                        timeout.as_secs()
                    )))
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Err(unavailable("the pod watch ended"))
                }
                // A name, or "missed some": look again either way.
                Ok(_) => {}
            }
        }
    }
}

fn report_exit(exits: &ExitSink, pod: &Pod, reason: String) {
    let binder = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_BINDER))
        .cloned();
    if let (Some(binder_id), Some(handle)) = (binder, pod.metadata.name.clone()) {
        let _ = exits.send(Exit {
            binder_id,
            handle,
            reason,
        });
    }
}

#[async_trait]
impl Backend for KubernetesBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kubernetes
    }

    fn isolation(&self) -> super::Isolation {
        super::Isolation {
            level: "pods",
            message: "each binder a pod under the restricted Pod Security Standard, with limits; \
                      the namespace's NetworkPolicies decide what it may reach (see deploy/)"
                .into(),
        }
    }

    fn unavailable(&self) -> Option<String> {
        self.availability.reason()
    }

    async fn start(&self, spec: StartSpec<'_>) -> Result<Instance, BackendError> {
        let name = format!(
            "binderd-{}-{}",
            spec.binding.name,
            &spec.binder_id[..spec.binder_id.len().min(12)]
        );
        let mut pod = self.pod_for(&spec, &name)?;
        if let (Some(shared), Some(labels)) = (&self.shared, pod.metadata.labels.as_mut()) {
            shared::starting_labels(labels, &shared.replica);
        }
        timed(
            "creating the pod",
            self.pods.create(&PostParams::default(), &pod),
        )
        .await?;
        let timeout = Duration::from_secs(spec.binding.start_timeout_seconds);
        match self.wait_ready(&name, spec.binding.port, timeout).await {
            Ok(addr) => Ok(Instance { handle: name, addr }),
            Err(e) => {
                let _ = self.pods.delete(&name, &DeleteParams::default()).await;
                Err(e)
            }
        }
    }

    async fn is_running(&self, instance: &Instance) -> Result<bool, BackendError> {
        let pod = timed("reading a pod", self.pods.get_opt(&instance.handle)).await?;
        Ok(pod.is_some_and(|pod| matches!(progress(&pod), PodProgress::Ready(_))))
    }

    async fn stop(&self, _binder_id: &str, instance: &Instance) -> Result<(), BackendError> {
        if instance.handle.is_empty() {
            return Ok(());
        }
        super::with_deadline_or_gone(
            API_SERVER,
            "deleting a pod",
            CALL_TIMEOUT,
            self.pods.delete(&instance.handle, &DeleteParams::default()),
            is_not_found,
            classify,
        )
        .await
        .map(drop)
    }

    async fn list(&self) -> Result<Vec<Discovered>, BackendError> {
        let list = timed(
            "listing pods",
            self.pods
                .list(&ListParams::default().labels(&self.selector())),
        )
        .await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|pod| {
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                let port: u16 = labels.get(LABEL_PORT)?.parse().ok()?;
                let ip = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|ip| ip.parse::<IpAddr>().ok())
                    .unwrap_or(IpAddr::from([0, 0, 0, 0]));
                Some(Discovered {
                    binder_id: labels.get(LABEL_BINDER)?.clone(),
                    binding: labels.get(LABEL_BINDING)?.clone(),
                    instance: Instance {
                        handle: pod.metadata.name.clone()?,
                        addr: SocketAddr::new(ip, port),
                    },
                })
            })
            .collect())
    }

    fn cluster(&self) -> Option<&dyn Cluster> {
        self.shared.as_ref().map(|_| self as &dyn Cluster)
    }

    async fn adopt(&self, _binder_id: &str, _instance: &Instance) -> Result<(), BackendError> {
        // The watcher already follows every pod with our labels.
        Ok(())
    }

    async fn pause(&self, _binder_id: &str, _instance: &Instance) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(
            "pods cannot be stopped and kept: pause is not available on the kubernetes backend"
                .into(),
        ))
    }

    async fn resume(
        &self,
        _spec: StartSpec<'_>,
        _instance: &Instance,
    ) -> Result<Instance, BackendError> {
        Err(BackendError::Unsupported(
            "pause is not available on the kubernetes backend".into(),
        ))
    }

    async fn logs(
        &self,
        _binder_id: &str,
        instance: &Instance,
        tail: usize,
    ) -> Result<String, BackendError> {
        let params = LogParams {
            container: Some("notebook".into()),
            tail_lines: Some(tail as i64),
            limit_bytes: Some(super::MAX_LOG_BYTES as i64),
            ..Default::default()
        };
        let text = timed("reading logs", self.pods.logs(&instance.handle, &params)).await?;
        Ok(super::tail_lines(&text, tail))
    }
}

#[async_trait]
impl Cluster for KubernetesBackend {
    fn replica(&self) -> &str {
        self.shared.as_ref().map_or("", |s| s.replica.as_str())
    }

    fn lease_duration(&self) -> Duration {
        self.shared
            .as_ref()
            .map_or(DEFAULT_LEASE, |s| s.lease_duration)
    }

    fn take_views(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<PodView>> {
        self.shared.as_ref()?.taken.lock().ok()?.take()
    }

    async fn offer(
        &self,
        instance: &Instance,
        kernel: Option<(&str, &str)>,
    ) -> Result<(), BackendError> {
        self.offer_pod(instance, kernel).await
    }

    async fn claim(&self, instance: &Instance, claim: &Claim<'_>) -> Result<bool, BackendError> {
        self.claim_pod(instance, claim).await
    }

    async fn lease(&self, name: &str) -> Result<bool, BackendError> {
        self.take_lease(name).await
    }

    fn stale_starts(&self, binding: &str, older_than: Duration) -> Vec<Discovered> {
        self.stale_pods(binding, older_than)
    }

    async fn binding_docs(&self) -> Result<BTreeMap<String, String>, BackendError> {
        self.read_binding_docs().await
    }

    async fn put_binding_doc(
        &self,
        key: &str,
        doc: Option<&str>,
        create_only: bool,
    ) -> Result<bool, BackendError> {
        self.write_binding_doc(key, doc, create_only).await
    }

    fn take_binding_changes(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<BTreeMap<String, String>>> {
        self.shared.as_ref()?.binding_changes.lock().ok()?.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
    };

    fn pod(status: PodStatus) -> Pod {
        Pod {
            status: Some(status),
            ..Default::default()
        }
    }

    #[test]
    fn progress_reads_ready_waiting_and_failure_reasons() {
        let ready = pod(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.1.2.3".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(
            progress(&ready),
            PodProgress::Ready("10.1.2.3".parse().unwrap())
        );
        let pulling = pod(PodStatus {
            phase: Some("Pending".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "notebook".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("ImagePullBackOff".into()),
                        message: Some("Back-off pulling image \"nope:1\"".into()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(
            matches!(progress(&pulling), PodProgress::Failed(r) if r.contains("ImagePullBackOff") && r.contains("nope:1"))
        );
        let evicted = pod(PodStatus {
            phase: Some("Failed".into()),
            reason: Some("Evicted".into()),
            message: Some("The node was low on resource: memory.".into()),
            ..Default::default()
        });
        assert!(matches!(progress(&evicted), PodProgress::Failed(r) if r.starts_with("Evicted")));
        let pending = pod(PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                message: Some("0/3 nodes are available".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(
            progress(&pending),
            PodProgress::Waiting("0/3 nodes are available".into())
        );
    }

    #[test]
    fn closed_egress_is_a_label_and_only_net_bind_service_may_be_added() {
        let labels = BTreeMap::from([("binderd.binder".to_owned(), "b".to_owned())]);
        let open = pod_labels(&labels, crate::binding::Egress::Open);
        assert!(!open.contains_key(LABEL_EGRESS));
        let closed = pod_labels(&labels, crate::binding::Egress::None);
        assert_eq!(closed[LABEL_EGRESS], "none");
        assert_eq!(closed["binderd.binder"], "b");
        let ok = restricted(&["CAP_NET_BIND_SERVICE".into()]).unwrap();
        let caps = ok.capabilities.unwrap();
        assert_eq!(caps.drop.unwrap(), ["ALL"]);
        assert_eq!(caps.add.unwrap(), ["NET_BIND_SERVICE"]);
        assert_eq!(ok.run_as_non_root, Some(true));
        assert_eq!(ok.allow_privilege_escalation, Some(false));
        let e = restricted(&["CHOWN".into()]).unwrap_err();
        assert!(e.to_string().contains("restricted"), "{e}");
    }

    #[test]
    fn templates_merge_objects_and_replace_the_rest() {
        let mut base = serde_json::json!({"a": {"b": 1, "c": [1]}, "d": 2});
        merge(
            &mut base,
            &serde_json::json!({"a": {"c": [9], "e": true}, "f": "x"}),
        );
        assert_eq!(
            base,
            serde_json::json!({"a": {"b": 1, "c": [9], "e": true}, "d": 2, "f": "x"})
        );
    }
}
