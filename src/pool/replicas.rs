//! Shared mode: this replica is one of several on one cluster
//! ([`crate::backend::Cluster`]). What changes from the single-process path:
//!
//! - **Mirror**: every replica sees every pod through its watch and keeps a
//!   [`Binder`] for each warm or claimed one, so it can hand out any warm
//!   pod and proxy any claimed one (`Pools::by_token` as usual).
//! - **Claims**: a handout pops a warm binder from the local queue as
//!   always, then claims its pod in the API server (`Cluster::claim`, fenced
//!   by the pod's `resourceVersion`). A claim lost to another replica leaves
//!   the binder assigned (it is, to someone else) and the next one is
//!   tried. The claim, not the local journal, is the handout's record.
//! - **Leases**: each pool's reconciler starts and drains binders only while
//!   this replica holds the binding's Lease ([`Pool::leads`]); the holder
//!   also removes starts that a lost replica left half-made and culls a
//!   lost replica's binders by age.
//! - **Bindings made through the API** are entries of a shared document
//!   ([`SharedBinding`], a ConfigMap on Kubernetes) instead of the store:
//!   written by the replica that answers the call, applied by every
//!   replica as it changes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{BindingRecord, Pool, PoolError, Pools};
use crate::auth::Owner;
use crate::backend::{BackendError, Claim, Cluster, PodView, SharedPhase};
use crate::binder::{Binder, State, WarmKernel};

/// A start still `starting` this long past its timeout was left by a lost
/// replica (a start that fails removes its own pod).
const STALE_MARGIN: Duration = Duration::from_secs(30);

/// The Lease a binding's reconciler runs under: a DNS label made of the
/// name, and a hash so that names differing only in what a label cannot
/// hold (`/`, upper case) get Leases of their own.
pub fn lease_name(binding: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for b in binding.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let readable: String = binding
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("binderd-{}-{hash:08x}", readable.trim_matches('-'))
}

/// One binding made through the API, as the replicas share it (an entry of
/// the shared document, keyed by [`lease_name`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SharedBinding {
    pub binding: crate::binding::Binding,
    pub owner: String,
    pub created_at: u64,
    pub min: u32,
    pub max: u32,
}

impl SharedBinding {
    pub(crate) fn of(pool: &Pool) -> SharedBinding {
        let record = pool.record();
        SharedBinding {
            binding: record.binding.clone(),
            owner: record.owner.clone(),
            created_at: record.created_at,
            min: pool.min.load(Ordering::Acquire),
            max: pool.max.load(Ordering::Acquire),
        }
    }
}

fn owner_of(owner: Option<&str>) -> Owner {
    owner.map_or(Owner::Anonymous, |k| Owner::Key(k.to_owned()))
}

impl Pools {
    /// The cluster, in shared mode.
    pub(crate) fn cluster(&self) -> Option<&dyn Cluster> {
        self.inner.backend.cluster()
    }

    /// Starts the mirror and one lease keeper per pool. Called once, at
    /// restore.
    pub(crate) fn start_shared(&self) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        if let Some(views) = cluster.take_views() {
            let this = self.clone();
            tokio::spawn(async move { this.mirror(views).await });
        }
        for pool in self.bindings() {
            pool.leads.store(false, Ordering::Release);
            self.spawn_lease_keeper(pool);
        }
    }

    async fn mirror(self, mut views: tokio::sync::mpsc::UnboundedReceiver<PodView>) {
        while let Some(view) = views.recv().await {
            self.mirror_one(view);
        }
    }

    /// Brings this replica's view of one pod in line with the cluster's.
    fn mirror_one(&self, view: PodView) {
        let Some(pool) = crate::binding::BindingName::parse(&view.binding)
            .ok()
            .and_then(|n| self.binding(&n))
        else {
            return;
        };
        if let Some(entry) = self.binder(&view.binder_id) {
            // Known. A claim this replica counted lost on a pod that is
            // still warm (its version had moved on for another reason): back
            // in the queue (one handed out here has its owner).
            if let SharedPhase::Warm { .. } = &view.phase {
                if entry.binder.owner().is_none() {
                    pool.requeue(entry.binder.clone());
                }
                return;
            }
            // A claim by another replica: assigned here too (one this
            // replica lost a claim on is assigned already, with no owner).
            if let SharedPhase::Claimed { owner, at, .. } = &view.phase {
                let binder = &entry.binder;
                let taken = pool.transition(binder, State::Idle, State::Assigned);
                if taken || (binder.state() == State::Assigned && binder.owner().is_none()) {
                    binder.hand_to(owner_of(owner.as_deref()), None);
                    binder.set_assigned_at(*at);
                    binder.changed.notify_waiters();
                    pool.wake.notify_one();
                }
            }
            return;
        }
        let state = match &view.phase {
            SharedPhase::Starting => return,
            SharedPhase::Warm { .. } => State::Idle,
            SharedPhase::Claimed { .. } => State::Assigned,
        };
        let binder = Arc::new(Binder::restore(
            view.binder_id.as_str().into(),
            view.token.as_str().into(),
            pool.name.clone(),
            state,
            view.created_at,
        ));
        binder.set_instance(view.instance.clone());
        match &view.phase {
            SharedPhase::Warm {
                kernel: Some((id, name)),
            } => binder.set_warm_kernel(WarmKernel {
                id: id.clone(),
                name: name.clone(),
            }),
            SharedPhase::Claimed {
                owner, at, replica, ..
            } => {
                binder.hand_to(owner_of(owner.as_deref()), None);
                binder.set_assigned_at(*at);
                // Claimed by this replica before it restarted: culled here.
                if self.cluster().is_some_and(|c| c.replica() == replica) {
                    self.watch_for_culling(&binder);
                }
            }
            SharedPhase::Warm { kernel: None } | SharedPhase::Starting => {}
        }
        pool.counters.adopted();
        pool.counters.entered(state);
        self.register(&pool, &binder);
        if state == State::Idle {
            pool.ready.push(binder);
        } else {
            pool.wake.notify_one();
        }
    }

    /// The shared-mode half of a warm handout: claims the popped binder's
    /// pod. `Ok(false)`: another replica has it.
    pub(crate) async fn claim_warm(
        &self,
        binder: &Arc<Binder>,
        owner: &Owner,
        at: u64,
    ) -> Result<bool, PoolError> {
        let (Some(cluster), Some(instance)) = (self.cluster(), binder.instance()) else {
            return Ok(true);
        };
        let key = match owner {
            Owner::Key(k) => Some(k.as_str()),
            Owner::Anonymous => None,
        };
        let claim = Claim {
            token: &binder.token,
            owner: key,
            at,
            from_starting: false,
        };
        Ok(cluster.claim(&instance, &claim).await?)
    }

    /// Shared mode: a binder started for a caller is claimed for it (from
    /// `starting`, so no other replica can take it first); a pool's binder
    /// is offered to every replica. Single-process: nothing to do.
    pub(crate) async fn publish_ready(
        &self,
        binder: &Arc<Binder>,
        claimed: bool,
    ) -> Result<(), BackendError> {
        let (Some(cluster), Some(instance)) = (self.cluster(), binder.instance()) else {
            return Ok(());
        };
        if claimed {
            let key = match binder.owner() {
                Some(Owner::Key(k)) => Some(k.as_str()),
                _ => None,
            };
            let claim = Claim {
                token: &binder.token,
                owner: key,
                at: crate::binder::now_unix(),
                from_starting: true,
            };
            return match cluster.claim(&instance, &claim).await? {
                true => Ok(()),
                false => Err(BackendError::Start(
                    "the pod was claimed or removed before its caller could claim it".into(),
                )),
            };
        }
        let kernel = binder.warm_kernel_ids();
        cluster
            .offer(
                &instance,
                kernel.as_ref().map(|(i, n)| (i.as_str(), n.as_str())),
            )
            .await
    }

    /// The Lease holder culls every binder of the pool past its maximum age,
    /// whichever replica claimed it: the one bound on binders whose
    /// replica is gone (idle culling is the claiming replica's, from the
    /// traffic it saw). Culling one twice is harmless.
    fn cull_aged(&self, pool: &Arc<Pool>) {
        let max_age = pool.current().binding.cull.max_age_seconds;
        let now = crate::binder::now_unix();
        for binder in self.binders_in(pool) {
            let at = binder.assigned_at();
            if binder.state() == State::Assigned && at > 0 && at.saturating_add(max_age) <= now {
                self.cull_now(pool, &binder, "older than cull.max_age_seconds".into());
            }
        }
    }

    /// Writes one binding's entry of the shared document (`None` removes
    /// it). `create_only`: `Ok(false)` if another replica made it first.
    pub(crate) async fn share_binding(
        &self,
        name: &str,
        entry: Option<&SharedBinding>,
        create_only: bool,
    ) -> Result<bool, PoolError> {
        let Some(cluster) = self.cluster() else {
            return Ok(true);
        };
        let doc = entry.map(|e| serde_json::to_string(e).unwrap_or_default());
        Ok(cluster
            .put_binding_doc(&lease_name(name), doc.as_deref(), create_only)
            .await?)
    }

    /// The shared document's bindings as they are now, for start-up.
    pub(crate) async fn shared_bindings(&self) -> Vec<SharedBinding> {
        let Some(cluster) = self.cluster() else {
            return Vec::new();
        };
        match cluster.binding_docs().await {
            Ok(docs) => self.valid_entries(&docs),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the shared bindings");
                Vec::new()
            }
        }
    }

    /// Follows the shared document: what another replica made, changed,
    /// resized or deleted through the API is made so here.
    pub(crate) fn follow_shared_bindings(&self) {
        let Some(mut changes) = self.cluster().and_then(|c| c.take_binding_changes()) else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(docs) = changes.recv().await {
                let entries = this.valid_entries(&docs);
                this.apply_shared(entries).await;
            }
        });
    }

    /// The shared document's entries that read as bindings valid here (the
    /// same check as the API's: an entry may have been written by another
    /// version, or by hand); the others are logged and skipped.
    fn valid_entries(
        &self,
        docs: &std::collections::BTreeMap<String, String>,
    ) -> Vec<SharedBinding> {
        let runs_on_host = self.backend_kind().runs_on_host();
        docs.iter()
            .filter_map(|(key, doc)| {
                let entry = serde_json::from_str::<SharedBinding>(doc)
                    .map_err(|e| e.to_string())
                    .and_then(|mut entry| {
                        entry
                            .binding
                            .validate(runs_on_host, self.inner.max_pool_limit)
                            .map_err(|e| e.to_string())?;
                        if !entry.binding.profiles.is_empty() {
                            return Err("profiles are not offered with several replicas yet".into());
                        }
                        Ok(entry)
                    });
                entry
                    .map_err(|e| tracing::error!(key = %key, error = %e, "a shared binding that is not valid here; skipped"))
                    .ok()
            })
            .collect()
    }

    async fn apply_shared(&self, entries: Vec<SharedBinding>) {
        let mut named = std::collections::HashSet::new();
        for entry in entries {
            let Ok(name) = crate::binding::BindingName::parse(&entry.binding.name) else {
                continue;
            };
            named.insert(name.clone());
            match self.binding(&name) {
                None => {
                    let pool = self.adopt_shared(entry);
                    self.spawn_pool_tasks(pool);
                }
                Some(pool) if pool.record().source == crate::store::Source::File => {}
                Some(pool) => {
                    let same = serde_json::to_value(&pool.record().binding).ok()
                        == serde_json::to_value(&entry.binding).ok();
                    if !same {
                        self.replace_template(&pool, entry.binding.clone());
                    }
                    pool.min.store(entry.min, Ordering::Release);
                    pool.max.store(entry.max, Ordering::Release);
                    pool.wake.notify_one();
                }
            }
        }
        for pool in self.bindings() {
            if pool.record().source == crate::store::Source::Api && !named.contains(&pool.name) {
                tracing::info!(binding = %pool.name, "binding deleted on another replica");
                self.retire(&pool);
            }
        }
    }

    /// A pool for a shared entry (not started: see `spawn_pool_tasks`).
    pub(crate) fn adopt_shared(&self, entry: SharedBinding) -> Arc<Pool> {
        let name = crate::binding::BindingName::parse(&entry.binding.name)
            .unwrap_or_else(|_| unreachable!("checked by the caller"));
        let record = BindingRecord {
            name: name.clone(),
            binding: entry.binding,
            document: None,
            owner: entry.owner,
            created_at: entry.created_at,
            source: crate::store::Source::Api,
        };
        let pool = self
            .inner
            .pools
            .entry(super::PoolKey::default_of(name))
            .or_insert_with(|| Arc::new(Pool::new(record)))
            .clone();
        pool.min.store(entry.min, Ordering::Release);
        pool.max.store(entry.max, Ordering::Release);
        pool
    }

    /// Starts a new pool's reconciler, and in shared mode its lease keeper
    /// first (the reconciler then waits for the Lease).
    pub(crate) fn spawn_pool_tasks(&self, pool: Arc<Pool>) {
        if self.cluster().is_some() {
            pool.leads.store(false, Ordering::Release);
            self.spawn_lease_keeper(pool.clone());
        }
        self.spawn_reconciler(pool);
    }

    fn spawn_lease_keeper(&self, pool: Arc<Pool>) {
        let this = self.clone();
        tokio::spawn(async move { this.keep_lease(pool).await });
    }

    /// Takes and renews the pool's Lease (a third of its duration apart);
    /// while held, the pool's reconciler runs here, and stale starts of lost
    /// replicas are removed.
    async fn keep_lease(self, pool: Arc<Pool>) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let name = lease_name(pool.name.as_str());
        let every = cluster.lease_duration() / 3;
        let shutdown = self.inner.shutdown.clone();
        loop {
            let held = match cluster.lease(&name).await {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(lease = %name, error = %e, "cannot renew the lease");
                    false
                }
            };
            let was = pool.leads.swap(held, Ordering::AcqRel);
            if held && !was {
                tracing::info!(binding = %pool.name, lease = %name, "leading this binding");
                pool.wake.notify_one();
            } else if was && !held {
                tracing::info!(binding = %pool.name, lease = %name, "no longer leading this binding");
            }
            if held {
                self.cull_aged(&pool);
                let timeout = Duration::from_secs(pool.current().binding.start_timeout_seconds);
                for stale in cluster.stale_starts(pool.name.as_str(), timeout + STALE_MARGIN) {
                    tracing::info!(binder = %stale.binder_id, binding = %pool.name, "removing a start its replica left unfinished");
                    if let Err(e) = self
                        .inner
                        .backend
                        .stop(&stale.binder_id, &stale.instance)
                        .await
                    {
                        tracing::warn!(binder = %stale.binder_id, error = %e, "cannot remove a stale start");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = pool.retired.cancelled() => return,
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_dns_labels_and_distinct() {
        let a = lease_name("course/Week-1");
        assert!(a.starts_with("binderd-course-week-1-"), "{a}");
        assert!(a.len() <= 63);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        assert_ne!(a, lease_name("course/week-1"));
        assert!(lease_name(&"x".repeat(200)).len() <= 63);
    }
}
