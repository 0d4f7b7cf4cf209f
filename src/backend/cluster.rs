//! Shared mode: what several replicas share through the cluster's API
//! server, as the pool sees it (the [`Cluster`] trait, its claims and its
//! views of the pods). Kubernetes implements it (`kubernetes::claims`).

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{BackendError, Discovered, Instance};

/// What several replicas share through the cluster's API server: claims on
/// warm pods (fenced by `resourceVersion`), Leases, and one view of every
/// pod, fed by each replica's watch.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// This replica's name, as its claims and leases carry it.
    fn replica(&self) -> &str;

    /// How long a lease lasts unless its holder renews it.
    fn lease_duration(&self) -> std::time::Duration;

    /// The watch's views of every binderd pod of the namespace, for the
    /// pool to mirror. Given once (the first caller takes them).
    fn take_views(&self) -> Option<mpsc::UnboundedReceiver<PodView>>;

    /// Marks a started binder's pod warm: from now on any replica may claim
    /// it. `kernel` is its warm kernel (id, name), if it has one.
    async fn offer(
        &self,
        instance: &Instance,
        kernel: Option<(&str, &str)>,
    ) -> Result<(), BackendError>;

    /// Claims a pod for a handout, with the pod's `resourceVersion` as the
    /// precondition: `Ok(true)` if this replica won it, `Ok(false)` if another
    /// replica has it or it is gone. The claim is the handout's record.
    async fn claim(&self, instance: &Instance, claim: &Claim<'_>) -> Result<bool, BackendError>;

    /// Takes the Lease `name`, or renews it: `Ok(true)` while this replica
    /// holds it.
    async fn lease(&self, name: &str) -> Result<bool, BackendError>;

    /// Pods of `binding` still `starting` after `older_than`: a start whose
    /// replica was lost (a start that fails removes its own pod).
    fn stale_starts(&self, binding: &str, older_than: std::time::Duration) -> Vec<Discovered>;

    /// The bindings made through the API, as every replica shares them (a
    /// ConfigMap on Kubernetes): entry key → document, as it is now.
    async fn binding_docs(
        &self,
    ) -> Result<std::collections::BTreeMap<String, String>, BackendError>;

    /// Sets (`Some`) or removes (`None`) one entry, fenced by the shared
    /// document's version (another replica's write in between is read
    /// again and kept). With `create_only`, an entry already there is left
    /// alone and `Ok(false)` returned.
    async fn put_binding_doc(
        &self,
        key: &str,
        doc: Option<&str>,
        create_only: bool,
    ) -> Result<bool, BackendError>;

    /// Every change of the shared bindings, as the whole map, from a watch.
    /// Given once.
    fn take_binding_changes(
        &self,
    ) -> Option<mpsc::UnboundedReceiver<std::collections::BTreeMap<String, String>>>;
}

/// A handout's claim on a pod.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// The binder's token: only its hash goes into the pod's labels.
    pub token: &'a str,
    /// The key it is handed to; `None` for an anonymous reader.
    pub owner: Option<&'a str>,
    /// Unix seconds.
    pub at: u64,
    /// Claimed from `starting` (a binder started for its caller), not from
    /// `warm`.
    pub from_starting: bool,
}

/// A binderd pod as the watch shows it to every replica (shared mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub binder_id: String,
    pub binding: String,
    /// From the pod's `BINDERD_BASE_URL` (`/user/{token}/`).
    pub token: String,
    pub instance: Instance,
    pub created_at: u64,
    pub phase: SharedPhase,
}

/// Where a pod is in its life, as the cluster records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedPhase {
    /// Created, not yet offered.
    Starting,
    /// Offered: any replica may claim it. Its warm kernel (id, name), if any.
    Warm { kernel: Option<(String, String)> },
    /// Claimed for a reader.
    Claimed {
        owner: Option<String>,
        at: u64,
        replica: String,
    },
}
