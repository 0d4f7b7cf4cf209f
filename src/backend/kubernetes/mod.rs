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
//!
//! Its jobs: [`apiserver`] (the client's errors and deadlines), [`pod_spec`]
//! (a binder's pod from its plan), [`pod_status`] (what a pod's status says
//! of its start), [`pod_watch`] (the watch on binderd's pods) and
//! [`claims`] (shared mode: claims, Leases, the shared bindings).

mod apiserver;
pub mod claims;
mod pod_spec;
mod pod_status;
mod pod_watch;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use tokio::sync::broadcast;

use crate::limits::Limits;

use self::apiserver::{classify, is_not_found, timed, unavailable, API_SERVER, CALL_TIMEOUT};
pub use self::pod_spec::{restricted, CONTENT_DIR, LABEL_EGRESS};
pub(crate) use self::pod_status::{progress, PodProgress};
use super::plan::LABEL_PORT;
use super::{
    Backend, BackendError, BackendKind, Claim, Cluster, Discovered, ExitSink, Instance, PodView,
    StartSpec, LABEL_BINDER, LABEL_BINDING, LABEL_OWNER,
};

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
    /// Several replicas on one namespace (see `replicas`): handouts are
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

/// A Lease's default duration.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

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
    replicas: Option<claims::Replicas>,
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
            let replica = claims::replica_name(config.replica.as_deref());
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
        let owner = claims::shared_owner_key(namespace);
        KubernetesBackend::follow_binding_docs(configmaps.clone(), &owner, changes);
        let state = claims::Replicas {
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
            claims::shared_owner_key(namespace),
            pod_template,
            exits,
            Some(state),
        )
    }

    fn build(
        client: kube::Client,
        namespace: &str,
        owner: String,
        pod_template: Option<serde_json::Value>,
        exits: ExitSink,
        replicas: Option<claims::Replicas>,
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
            replicas,
        };
        backend.follow_pods(exits);
        backend
    }

    fn selector(&self) -> String {
        format!("{LABEL_OWNER}={}", self.owner)
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
        if let (Some(state), Some(labels)) = (&self.replicas, pod.metadata.labels.as_mut()) {
            claims::starting_labels(labels, &state.replica);
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
        self.replicas.as_ref().map(|_| self as &dyn Cluster)
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
        self.replicas.as_ref().map_or("", |s| s.replica.as_str())
    }

    fn lease_duration(&self) -> Duration {
        self.replicas
            .as_ref()
            .map_or(DEFAULT_LEASE, |s| s.lease_duration)
    }

    fn take_views(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<PodView>> {
        self.replicas.as_ref()?.taken.lock().ok()?.take()
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
        self.replicas.as_ref()?.binding_changes.lock().ok()?.take()
    }
}
