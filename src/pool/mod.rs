//! Pools: the bindings binderd serves, their warm binders, and the handout.
//!
//! [`Pools`] (this file) is the registry: every [`Pool`] (one per binding) by
//! name, every [`Binder`] by id and by token. Each job has its room:
//!
//! - [`state`](Pool): one binding's pool, its counters and state changes;
//! - `bindings`: create, replace, delete, resize;
//! - `handout`: the hot path: pops from the pool's lock-free
//!   [`allocator::ReadyQueue`] and appends one line to the store's handout
//!   journal (a warm handout awaits nothing; a cold one, started for the
//!   caller, awaits its start and the store's commit); it never touches the
//!   backend;
//! - `reconciler`: keeps each pool at its target (`minPool`, or for a pool
//!   with `warm_target` the size [`demand`] computes from the handout rate),
//!   rolls warm binders over after a `PUT`; `start`: one binder's start,
//!   readiness check and warm kernel;
//! - `lifecycle`: stop, fail, exits, pause and resume, logs;
//! - `cull`: idle, old and never-visited binders;
//! - [`restore`]: start-up, from the store and the backend's containers;
//! - [`sweep`]: containers labelled as ours that no live binder owns.
//!
//! Every change of a binder's state goes through [`Pool::transition`],
//! [`Pool::force`] or [`Pool::take_down`] (or the queue's pop), which keep
//! the pool's counters in step ([`allocator::Counters`]) and wake anyone
//! waiting on the binder; the binder's own state setters are crate-private
//! and called nowhere else (`tests/house.rs`).

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Backend, BackendError};
use crate::binder::{Binder, BinderId, State, Token};
use crate::binding::{BindingName, InvalidBinding};
use crate::store::{Store, StoreError};
use crate::upstream::Upstream;

pub mod allocator;
mod changes;
mod content;
mod cull;
pub mod demand;
mod handout;
mod key;
mod lifecycle;
mod profiles;
mod reconciler;
mod replicas;
pub mod restore;
mod start;
#[allow(clippy::module_inception)]
mod state;
pub mod sweep;
pub mod trends;

pub use content::{Phase as BuildPhase, BUILD_POLL};
pub use handout::Handout;
pub use key::{PoolKey, Refused};
pub use state::{BindingRecord, Pool, PoolCounts};

/// How long a stopped or failed binder stays visible to `GET /binders/{b}/{id}`.
const RETENTION: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("binding '{0}' not found")]
    NotFound(BindingName),
    #[error("binding '{0}' already exists")]
    Exists(BindingName),
    #[error("binding '{name}' is at its maxPool of {max}: try again later")]
    Full { name: BindingName, max: u32 },
    #[error(
        "binding '{name}' has {assigned} assigned binders: delete with ?force=true to stop them"
    )]
    InUse { name: BindingName, assigned: u32 },
    #[error("the binder is {}, not ready", .0.public_name())]
    NotReady(State),
    #[error(transparent)]
    Quota(#[from] crate::quota::QuotaExceeded),
    #[error(transparent)]
    Invalid(#[from] InvalidBinding),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// A binder together with the pool it belongs to.
#[derive(Clone)]
pub struct Entry {
    pub binder: Arc<Binder>,
    pub pool: Arc<Pool>,
}

pub(crate) struct Inner {
    backend: Arc<dyn Backend>,
    store: Store,
    upstream: Arc<Upstream>,
    /// Every pool by its target; a binding's default profile's is the
    /// entry whose target names no profile.
    pools: DashMap<PoolKey, Arc<Pool>>,
    binders: DashMap<BinderId, Entry>,
    tokens: DashMap<Token, Entry>,
    start_permits: Arc<Semaphore>,
    max_pool_limit: u32,
    cull_every: Duration,
    shutdown: CancellationToken,
    /// Starts in flight; shutdown lets them finish (bounded) so that no
    /// container is left half-made and unrecorded.
    starts: TaskTracker,
    /// Handed-out binders for the culler to pick up at its next tick. A
    /// queue, not a channel: a handout wakes no task.
    cull_inbox: crossbeam_queue::SegQueue<BinderId>,
    quotas: Arc<crate::quota::Quotas>,
    /// Bindings' repositories, fetched once.
    content: crate::content::Cache,
    /// Held by a binding's create, replace or delete from its store write
    /// to its last change in memory, so that two `PUT`s of one binding
    /// apply in the order they were stored and never make two pools for
    /// one profile (admin paths only; the handout never takes it).
    changes: tokio::sync::Mutex<()>,
}

/// The pools' numbers from the config.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Container starts in flight at once, over all bindings.
    pub start_concurrency: usize,
    pub max_pool_limit: u32,
    /// How often the culler looks.
    pub cull_every: Duration,
}

/// Every pool and binder. Cheap to clone.
#[derive(Clone)]
pub struct Pools {
    inner: Arc<Inner>,
}

impl Pools {
    /// Builds the pools (nothing started: see `binderd::run`'s list of
    /// tasks).
    pub fn new(
        backend: Arc<dyn Backend>,
        store: Store,
        upstream: Arc<Upstream>,
        tuning: Tuning,
        quotas: Arc<crate::quota::Quotas>,
        content: crate::content::Cache,
    ) -> Pools {
        let Tuning {
            start_concurrency,
            max_pool_limit,
            cull_every,
        } = tuning;
        Pools {
            inner: Arc::new(Inner {
                backend,
                store,
                upstream,
                pools: DashMap::new(),
                binders: DashMap::new(),
                tokens: DashMap::new(),
                start_permits: Arc::new(Semaphore::new(start_concurrency.max(1))),
                max_pool_limit,
                cull_every,
                shutdown: CancellationToken::new(),
                starts: TaskTracker::new(),
                cull_inbox: crossbeam_queue::SegQueue::new(),
                quotas,
                content,
                changes: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// How often the culler looks (`Tuning::cull_every`).
    pub(crate) fn cull_every(&self) -> Duration {
        self.inner.cull_every
    }

    pub fn backend_kind(&self) -> crate::backend::BackendKind {
        self.inner.backend.kind()
    }

    /// Why the backend cannot be reached now (no I/O), or `None`.
    pub fn backend_unavailable(&self) -> Option<String> {
        self.inner.backend.unavailable()
    }

    /// How the backend keeps binders apart (no I/O).
    pub fn isolation(&self) -> crate::backend::Isolation {
        self.inner.backend.isolation()
    }

    /// A key's quota `spec` and `usage`.
    pub fn quota_report(&self, key: &str) -> serde_json::Value {
        self.inner.quotas.report(key)
    }

    /// The pool a handout of `name` without a choice takes from, whose
    /// record holds the binding as put (its document, owner, access).
    pub fn binding(&self, name: &BindingName) -> Option<Arc<Pool>> {
        self.pool(&PoolKey::default_of(name.clone()))
    }

    /// Every binding, as its default pool, by name.
    pub fn bindings(&self) -> Vec<Arc<Pool>> {
        self.pools_where(|t| t.profile.is_none())
    }

    /// Every pool: each binding's default and its other profiles', by
    /// binding then profile.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools_where(|_| true)
    }

    /// Every pool of binding `name`, its default first.
    pub fn pools_of(&self, name: &BindingName) -> Vec<Arc<Pool>> {
        self.pools_where(|t| &t.binding == name)
    }

    fn pools_where(&self, keep: impl Fn(&PoolKey) -> bool) -> Vec<Arc<Pool>> {
        let mut pools: Vec<(PoolKey, Arc<Pool>)> = self
            .inner
            .pools
            .iter()
            .filter(|e| keep(e.key()))
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        pools.sort_by(|a, b| a.0.cmp(&b.0));
        pools.into_iter().map(|(_, p)| p).collect()
    }

    pub fn binder(&self, id: &str) -> Option<Entry> {
        self.inner.binders.get(id).map(|e| e.value().clone())
    }

    /// The proxy's O(1) lookup.
    pub fn by_token(&self, token: &str) -> Option<Entry> {
        self.inner.tokens.get(token).map(|e| e.value().clone())
    }

    /// Every binder of `pool` that is not yet forgotten, oldest first.
    pub fn binders_in(&self, pool: &Arc<Pool>) -> Vec<Arc<Binder>> {
        let mut out: Vec<_> = self
            .inner
            .binders
            .iter()
            .filter(|e| Arc::ptr_eq(&e.pool, pool))
            .map(|e| e.binder.clone())
            .collect();
        out.sort_by_key(|b| b.created_at);
        out
    }

    /// Every binder of binding `name` with the pool it is in: its
    /// profiles', and a removed profile's (whose handed-out binders still
    /// run).
    pub fn binders_of(&self, name: &BindingName) -> Vec<Entry> {
        self.inner
            .binders
            .iter()
            .filter(|e| &e.pool.name == name)
            .map(|e| e.value().clone())
            .collect()
    }

    /// Forgets clients that hold no anonymous binder (bounds memory).
    pub fn forget_idle_clients(&self) {
        self.inner.quotas.forget_idle_clients();
    }

    /// After [`Pools::shutdown`]: every write made durable on disk and the
    /// stop marked clean ([`Store::close`]).
    pub async fn close_store(&self) -> Result<(), StoreError> {
        self.inner.store.close().await
    }

    /// Stops the reconcilers and waits (up to `grace`) for starts in flight;
    /// running containers are left for adoption.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.cancel();
        self.inner.starts.close();
        if tokio::time::timeout(grace, self.inner.starts.wait())
            .await
            .is_err()
        {
            tracing::warn!("container starts still running at shutdown");
        }
    }

    fn register(&self, pool: &Arc<Pool>, binder: &Arc<Binder>) {
        let entry = Entry {
            binder: binder.clone(),
            pool: pool.clone(),
        };
        self.inner.binders.insert(binder.id.clone(), entry.clone());
        self.inner.tokens.insert(binder.token.clone(), entry);
    }
}
