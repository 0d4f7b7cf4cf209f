//! Pools: the bindings binderd serves, their warm binders, and the handout.
//!
//! [`Pools`] owns every [`Pool`] (one per binding) and every [`Binder`]. The
//! handout path ([`Pools::handout`]) pops from the pool's lock-free
//! [`allocator::ReadyQueue`] and then awaits only the store's commit; it never
//! touches the backend. Starting, probing, stopping and refilling happen in
//! tasks ([`reconciler`]) that the handout merely wakes.
//!
//! Every change of a binder's state goes through [`Pool::transition`] or
//! [`Pool::force`], which keep the pool's counters in step and wake anyone
//! waiting on the binder.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Access;
use crate::auth::Owner;
use crate::backend::{Backend, BackendError};
use crate::binder::{now_unix, Binder, BinderId, State, Token};
use crate::binding::{Binding, BindingName, InvalidBinding};
use crate::store::{Source, Store, StoreError, StoredBinder, StoredBinding};
use crate::upstream::Upstream;

pub mod adopt;
pub mod allocator;
mod cull;
mod reconciler;

use allocator::{Counters, ReadyQueue};

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
}

/// A binding as binderd holds it.
#[derive(Debug, Clone)]
pub struct BindingRecord {
    pub name: BindingName,
    pub binding: Binding,
    pub owner: String,
    pub created_at: u64,
    pub source: Source,
}

impl BindingRecord {
    pub fn access(&self) -> Access<'_> {
        Access {
            owner: &self.owner,
            administrators: &self.binding.administrators,
            public: self.binding.public,
        }
    }
}

/// The counts `GET /pools/{binding}` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolCounts {
    pub running: u32,
    pub available: u32,
    pub starting: u32,
    pub min: u32,
    pub max: u32,
}

impl From<PoolCounts> for crate::metrics::PoolGauges {
    fn from(c: PoolCounts) -> Self {
        crate::metrics::PoolGauges {
            available: c.available,
            running: c.running,
            starting: c.starting,
            min: c.min,
            max: c.max,
        }
    }
}

/// One binding's pool.
pub struct Pool {
    pub name: BindingName,
    record: ArcSwap<BindingRecord>,
    min: AtomicU32,
    max: AtomicU32,
    pub counters: Counters,
    ready: ReadyQueue,
    /// Wakes the reconciler: a handout, a failure, a resize.
    wake: Notify,
    /// Failed starts in a row; drives the back-off and the binding status.
    failures: AtomicU32,
    last_error: Mutex<Option<String>>,
    /// Cancelled when the binding is deleted.
    retired: CancellationToken,
    pub(crate) metrics: crate::metrics::PoolCounters,
}

impl Pool {
    fn new(record: BindingRecord) -> Pool {
        let size = record.binding.pool;
        let metrics = crate::metrics::PoolCounters::new(record.name.as_str());
        Pool {
            name: record.name.clone(),
            record: ArcSwap::from_pointee(record),
            min: AtomicU32::new(size.min),
            max: AtomicU32::new(size.max),
            counters: Counters::default(),
            ready: ReadyQueue::default(),
            wake: Notify::new(),
            failures: AtomicU32::new(0),
            last_error: Mutex::new(None),
            retired: CancellationToken::new(),
            metrics,
        }
    }

    pub fn record(&self) -> Arc<BindingRecord> {
        self.record.load_full()
    }

    /// The record without taking a reference count (for the hot paths:
    /// no shared counter bumped per request). Do not hold across an await.
    pub fn current(&self) -> arc_swap::Guard<Arc<BindingRecord>> {
        self.record.load()
    }

    pub fn counts(&self) -> PoolCounts {
        let c = &self.counters;
        PoolCounts {
            running: c.get(&c.live),
            available: c.get(&c.available),
            starting: c.get(&c.starting) + c.get(&c.starting_claimed),
            min: self.min.load(Ordering::Acquire),
            max: self.max.load(Ordering::Acquire),
        }
    }

    /// `None` when healthy, else why the last start failed.
    pub fn error(&self) -> Option<String> {
        if self.failures.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Moves `binder` from `from` to `to` if it is in `from`.
    pub fn transition(&self, binder: &Binder, from: State, to: State) -> bool {
        let moved = binder.transition(from, to);
        if moved {
            self.counters.on_transition(from, to);
            binder.changed.notify_waiters();
        }
        moved
    }

    /// Moves `binder` to `to` from whatever it was in; returns that state.
    pub fn force(&self, binder: &Binder, to: State) -> State {
        let from = binder.force(to);
        self.counters.on_transition(from, to);
        binder.changed.notify_waiters();
        from
    }

    /// Moves a live binder that is not already stopping to `to` (`Stopping`
    /// or `Failed`); returns the state it left. Of racing callers, one wins.
    pub fn take_down(&self, binder: &Binder, to: State) -> Option<State> {
        loop {
            let from = binder.state();
            if !from.is_live() || from == State::Stopping {
                return None;
            }
            if self.transition(binder, from, to) {
                return Some(from);
            }
        }
    }

    fn start_failed(&self, reason: &str) {
        self.failures.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(reason.to_owned());
        }
    }

    fn start_succeeded(&self) {
        self.failures.store(0, Ordering::Release);
    }
}

/// A binder together with the pool it belongs to.
#[derive(Clone)]
pub struct Entry {
    pub binder: Arc<Binder>,
    pub pool: Arc<Pool>,
}

/// What a handout gave.
pub enum Handout {
    /// A warm binder, assigned and recorded.
    Ready(Arc<Binder>),
    /// None was warm: this one is starting for the caller.
    Starting(Arc<Binder>),
}

pub(crate) struct Shared {
    backend: Arc<dyn Backend>,
    store: Store,
    upstream: Arc<Upstream>,
    pools: DashMap<BindingName, Arc<Pool>>,
    binders: DashMap<BinderId, Entry>,
    tokens: DashMap<Token, Entry>,
    start_permits: Arc<Semaphore>,
    max_pool_limit: u32,
    shutdown: CancellationToken,
    /// Starts in flight; shutdown lets them finish (bounded) so that no
    /// container is left half-made and unrecorded.
    starts: TaskTracker,
    /// Handed-out binders for the culler to pick up at its next tick. A
    /// queue, not a channel: a handout wakes no task.
    cull_inbox: crossbeam_queue::SegQueue<BinderId>,
    quotas: Arc<crate::quota::Quotas>,
}

/// Every pool and binder. Cheap to clone.
#[derive(Clone)]
pub struct Pools {
    shared: Arc<Shared>,
}

impl Pools {
    /// Builds the pools and starts the culler (checking every `cull_every`).
    /// Must be called inside a tokio runtime.
    pub fn new(
        backend: Arc<dyn Backend>,
        store: Store,
        upstream: Arc<Upstream>,
        start_concurrency: usize,
        max_pool_limit: u32,
        cull_every: Duration,
        quotas: Arc<crate::quota::Quotas>,
    ) -> Pools {
        let pools = Pools {
            shared: Arc::new(Shared {
                backend,
                store,
                upstream,
                pools: DashMap::new(),
                binders: DashMap::new(),
                tokens: DashMap::new(),
                start_permits: Arc::new(Semaphore::new(start_concurrency.max(1))),
                max_pool_limit,
                shutdown: CancellationToken::new(),
                starts: TaskTracker::new(),
                cull_inbox: crossbeam_queue::SegQueue::new(),
                quotas,
            }),
        };
        pools.spawn_culler(cull_every);
        pools
    }

    pub fn backend_kind(&self) -> crate::backend::BackendKind {
        self.shared.backend.kind()
    }

    /// A key's quota `spec` and `usage`.
    pub fn quota_report(&self, key: &str) -> serde_json::Value {
        self.shared.quotas.report(key)
    }

    pub fn max_pool_limit(&self) -> u32 {
        self.shared.max_pool_limit
    }

    pub fn get(&self, name: &BindingName) -> Option<Arc<Pool>> {
        self.shared.pools.get(name).map(|p| p.value().clone())
    }

    /// Every pool, by name.
    pub fn list(&self) -> Vec<Arc<Pool>> {
        let mut pools: Vec<_> = self
            .shared
            .pools
            .iter()
            .map(|p| p.value().clone())
            .collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        pools
    }

    pub fn binder(&self, id: &str) -> Option<Entry> {
        self.shared.binders.get(id).map(|e| e.value().clone())
    }

    /// The proxy's O(1) lookup.
    pub fn by_token(&self, token: &str) -> Option<Entry> {
        self.shared.tokens.get(token).map(|e| e.value().clone())
    }

    /// Every binder of a binding that is not yet forgotten.
    pub fn binders_of(&self, pool: &Arc<Pool>) -> Vec<Arc<Binder>> {
        let mut out: Vec<_> = self
            .shared
            .binders
            .iter()
            .filter(|e| Arc::ptr_eq(&e.pool, pool))
            .map(|e| e.binder.clone())
            .collect();
        out.sort_by_key(|b| b.created_at);
        out
    }

    /// Creates a binding (or replaces it when `replace`). Returns the pool and
    /// whether it was created.
    pub async fn put_binding(
        &self,
        mut binding: Binding,
        owner: &str,
        replace: bool,
    ) -> Result<(Arc<Pool>, bool), PoolError> {
        let name = binding.validate(
            self.backend_kind().runs_on_host(),
            self.shared.max_pool_limit,
        )?;
        let now = now_unix();
        let mut record = BindingRecord {
            name: name.clone(),
            binding,
            owner: owner.to_owned(),
            created_at: now,
            source: Source::Api,
        };
        let (pool, created) = match self.shared.pools.entry(name.clone()) {
            dashmap::Entry::Occupied(_) if !replace => return Err(PoolError::Exists(name)),
            dashmap::Entry::Occupied(o) => {
                let pool = o.get().clone();
                let old = pool.record();
                record.owner = old.owner.clone();
                record.created_at = old.created_at;
                (pool, false)
            }
            dashmap::Entry::Vacant(v) => {
                let pool = Arc::new(Pool::new(record.clone()));
                v.insert(pool.clone());
                (pool, true)
            }
        };
        let stored = StoredBinding {
            name: name.to_string(),
            spec: serde_json::to_string(&record.binding).unwrap_or_default(),
            owner: record.owner.clone(),
            created_at: record.created_at,
            source: Source::Api,
        };
        let size = record.binding.pool;
        let persisted = async {
            self.shared.store.put_binding(stored).await?;
            self.shared
                .store
                .set_pool_size(name.as_str(), size.min, size.max)
                .await
        }
        .await;
        if let Err(e) = persisted {
            if created {
                self.shared.pools.remove(&name);
            }
            return Err(e.into());
        }
        pool.min.store(size.min, Ordering::Release);
        pool.max.store(size.max, Ordering::Release);
        pool.record.store(Arc::new(record));
        if created {
            self.spawn_reconciler(pool.clone());
        } else {
            // Warm binders were made from the old template: replace them.
            pool.start_succeeded();
            self.drain_idle(&pool, 0);
            pool.wake.notify_one();
        }
        Ok((pool, created))
    }

    /// Deletes a binding and stops its binders (in the background).
    pub async fn delete_binding(&self, name: &BindingName, force: bool) -> Result<(), PoolError> {
        let pool = self
            .get(name)
            .ok_or_else(|| PoolError::NotFound(name.clone()))?;
        let assigned = self
            .binders_of(&pool)
            .iter()
            .filter(|b| matches!(b.state(), State::Assigned | State::Paused))
            .count() as u32;
        if assigned > 0 && !force {
            return Err(PoolError::InUse {
                name: name.clone(),
                assigned,
            });
        }
        self.shared.store.delete_binding(name.as_str()).await?;
        self.shared
            .pools
            .remove_if(name, |_, p| Arc::ptr_eq(p, &pool));
        // Cancel before listing: a binder registered after the list sees the
        // cancellation when its start begins.
        pool.retired.cancel();
        for binder in self.binders_of(&pool) {
            self.stop(&pool, &binder);
        }
        Ok(())
    }

    /// Sets `minPool` and/or `maxPool`. The change is persisted.
    pub async fn resize(
        &self,
        pool: &Arc<Pool>,
        min: Option<u32>,
        max: Option<u32>,
    ) -> Result<PoolCounts, PoolError> {
        let current = pool.counts();
        let max = max.unwrap_or(current.max);
        let min = min.unwrap_or(current.min.min(max));
        if max == 0 || max > self.shared.max_pool_limit {
            return Err(InvalidBinding(format!(
                "maxPool must be between 1 and {}",
                self.shared.max_pool_limit
            ))
            .into());
        }
        if min > max {
            return Err(
                InvalidBinding(format!("minPool ({min}) is larger than maxPool ({max})")).into(),
            );
        }
        self.shared
            .store
            .set_pool_size(pool.name.as_str(), min, max)
            .await?;
        pool.min.store(min, Ordering::Release);
        pool.max.store(max, Ordering::Release);
        pool.wake.notify_one();
        Ok(pool.counts())
    }

    /// Hands out a binder of `pool` to `owner`.
    ///
    /// The hot path: pop + compare-and-swap, then one awaited store commit
    /// (batched with every other handout waiting at that moment). No backend
    /// call and no lock held across the await.
    pub async fn handout(&self, pool: &Arc<Pool>, owner: Owner) -> Result<Handout, PoolError> {
        let charge =
            self.shared
                .quotas
                .try_charge(&owner, &pool.current().binding.resources, true)?;
        let result = self.handout_charged(pool, owner, charge.clone()).await;
        if result.is_err() {
            if let Some(c) = charge {
                c.release();
            }
        }
        result
    }

    async fn handout_charged(
        &self,
        pool: &Arc<Pool>,
        owner: Owner,
        charge: Option<Arc<crate::quota::Charge>>,
    ) -> Result<Handout, PoolError> {
        if let Some(binder) = pool.ready.pop_transition(&pool.counters, State::Assigned) {
            // Refill at once, but wake the reconciler only if it has work:
            // its counts are what `fill` reads.
            if pool.counters.wants_more(
                pool.min.load(Ordering::Acquire),
                pool.max.load(Ordering::Acquire),
            ) {
                pool.wake.notify_one();
            }
            let now = now_unix();
            binder.set_owner(owner.clone());
            if let Some(c) = charge {
                binder.set_charge(c);
            }
            binder.set_assigned_at(now);
            binder.set_last_activity(now);
            binder.changed.notify_waiters();
            if let Err(e) = self.shared.store.assign(&binder.id, owner, now).await {
                // Not durable, so not handed out: a crash now could hand it
                // out again. Give it back to the pool.
                binder.release_charge();
                if pool.transition(&binder, State::Assigned, State::Idle) {
                    pool.ready.push(binder);
                }
                return Err(e.into());
            }
            self.watch_for_culling(&binder);
            pool.metrics.warm_handouts.increment(1);
            return Ok(Handout::Ready(binder));
        }
        if let Some(reason) = self.shared.backend.unavailable() {
            return Err(BackendError::Unavailable(reason).into());
        }
        let max = pool.max.load(Ordering::Acquire);
        if pool.counters.try_reserve(max) {
            let binder = Arc::new(Binder::new(pool.name.clone(), State::StartingClaimed));
            binder.set_owner(owner);
            if let Some(c) = charge {
                binder.set_charge(c);
            }
            pool.counters.entered(State::StartingClaimed);
            self.register(pool, &binder);
            if let Err(e) = self.shared.store.put_binder(stored(&binder)).await {
                self.fail(pool, &binder, format!("cannot record the binder: {e}"))
                    .await;
                return Err(e.into());
            }
            self.spawn_start(pool.clone(), binder.clone());
            pool.metrics.cold_handouts.increment(1);
            return Ok(Handout::Starting(binder));
        }
        // At maxPool, but a pool binder may be on its way: it is the caller's.
        let Some(binder) = self.claim_starting(pool) else {
            return Err(PoolError::Full {
                name: pool.name.clone(),
                max,
            });
        };
        binder.set_owner(owner.clone());
        if let Some(c) = charge {
            binder.set_charge(c);
        }
        if let Err(e) = self.shared.store.claim(&binder.id, owner).await {
            self.fail(pool, &binder, format!("cannot record the binder: {e}"))
                .await;
            return Err(e.into());
        }
        Ok(Handout::Starting(binder))
    }

    /// Claims a binder that is starting for the pool. Scans the binders, so
    /// it is only for the rare empty-and-at-maxPool case.
    fn claim_starting(&self, pool: &Arc<Pool>) -> Option<Arc<Binder>> {
        if pool.counters.get(&pool.counters.starting) == 0 {
            return None;
        }
        let candidates: Vec<Arc<Binder>> = self
            .shared
            .binders
            .iter()
            .filter(|e| Arc::ptr_eq(&e.pool, pool) && e.binder.state() == State::Starting)
            .map(|e| e.binder.clone())
            .collect();
        candidates
            .into_iter()
            .find(|b| pool.transition(b, State::Starting, State::StartingClaimed))
    }

    /// Stops a binder (in the background). Returns false if it was already
    /// stopping or gone.
    pub fn stop(&self, pool: &Arc<Pool>, binder: &Arc<Binder>) -> bool {
        if pool.take_down(binder, State::Stopping).is_none() {
            return false;
        }
        let this = self.clone();
        let (pool, binder) = (pool.clone(), binder.clone());
        tokio::spawn(async move { this.finish_stop(&pool, &binder).await });
        true
    }

    /// Stops every binder, for `--cleanup-on-exit`. Waits for them.
    pub async fn stop_all(&self) {
        let entries: Vec<Entry> = self
            .shared
            .binders
            .iter()
            .map(|e| e.value().clone())
            .collect();
        let mut stops = tokio::task::JoinSet::new();
        for Entry { pool, binder } in entries {
            if pool.take_down(&binder, State::Stopping).is_some() {
                let this = self.clone();
                stops.spawn(async move { this.finish_stop(&pool, &binder).await });
            }
        }
        while stops.join_next().await.is_some() {}
    }

    /// Stops the reconcilers and waits (up to `grace`) for starts in flight;
    /// running containers are left for adoption.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.shutdown.cancel();
        self.shared.starts.close();
        if tokio::time::timeout(grace, self.shared.starts.wait())
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
        self.shared.binders.insert(binder.id.clone(), entry.clone());
        self.shared.tokens.insert(binder.token.clone(), entry);
    }

    /// Takes a dead binder out of service: no token, no record, and after
    /// [`RETENTION`] no id either.
    async fn forget(&self, binder: &Arc<Binder>) {
        self.shared.tokens.remove(&binder.token);
        binder.release_charge();
        if let Err(e) = self.shared.store.delete_binder(&binder.id).await {
            tracing::warn!(binder = %binder.id, error = %e, "cannot delete binder record");
        }
        let shared = self.shared.clone();
        let id = binder.id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETENTION).await;
            shared.binders.remove(&id);
        });
    }

    async fn finish_stop(&self, pool: &Arc<Pool>, binder: &Arc<Binder>) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Some(instance) = binder.instance() {
            if let Err(e) = self.shared.backend.stop(&binder.id, &instance).await {
                tracing::warn!(binder = %binder.id, error = %e, "stop failed");
            }
        }
        pool.force(binder, State::Stopped);
        self.forget(binder).await;
        pool.wake.notify_one();
    }

    /// Marks a binder failed, cleans up its container, and if it was
    /// starting, counts a failed start (which slows the reconciler down).
    async fn fail(&self, pool: &Arc<Pool>, binder: &Arc<Binder>, reason: String) {
        binder.set_failure(reason.clone());
        let Some(from) = pool.take_down(binder, State::Failed) else {
            return;
        };
        if matches!(from, State::Starting | State::StartingClaimed) {
            tracing::warn!(binding = %pool.name, binder = %binder.id, %reason, "start failed");
            pool.start_failed(&reason);
            pool.metrics.failed_starts.increment(1);
        } else {
            tracing::warn!(binding = %pool.name, binder = %binder.id, %reason, "binder lost");
        }
        if let Some(instance) = binder.instance() {
            if let Err(e) = self.shared.backend.stop(&binder.id, &instance).await {
                tracing::warn!(binder = %binder.id, error = %e, "cleanup failed");
            }
        }
        self.forget(binder).await;
        pool.wake.notify_one();
    }

    /// Stops idle binders until at most `keep` are left.
    fn drain_idle(&self, pool: &Arc<Pool>, keep: u32) {
        while pool.counters.get(&pool.counters.available) > keep {
            let Some(binder) = pool.ready.pop_transition(&pool.counters, State::Stopping) else {
                break;
            };
            let this = self.clone();
            let pool = pool.clone();
            tokio::spawn(async move { this.finish_stop(&pool, &binder).await });
        }
    }

    /// Reports of containers that went away on their own.
    pub(crate) async fn watch_exits(
        self,
        mut exits: tokio::sync::mpsc::UnboundedReceiver<crate::backend::Exit>,
    ) {
        while let Some(exit) = exits.recv().await {
            let Some(Entry { pool, binder }) = self.binder(&exit.binder_id) else {
                continue;
            };
            // A paused binder's container stops on purpose; one replaced on
            // resume is not the binder's any more.
            let current = binder.instance().is_none_or(|i| i.handle == exit.handle);
            if binder.state() == State::Paused || !current {
                continue;
            }
            self.fail(&pool, &binder, exit.reason).await;
        }
    }

    /// Pauses (`true`) or resumes (`false`) a handed-out binder. Resuming
    /// waits up to `wait` for the container to answer again; returns the
    /// binder's state.
    pub async fn set_paused(
        &self,
        entry: &Entry,
        paused: bool,
        wait: Duration,
    ) -> Result<State, PoolError> {
        let Entry { pool, binder } = entry;
        if paused {
            if !pool.transition(binder, State::Assigned, State::Paused) {
                return match binder.state() {
                    State::Paused => Ok(State::Paused),
                    other => Err(PoolError::NotReady(other)),
                };
            }
            self.shared
                .store
                .set_binder_state(&binder.id, State::Paused)
                .await?;
            if let Some(instance) = binder.instance() {
                if let Err(e) = self.shared.backend.pause(&binder.id, &instance).await {
                    if pool.transition(binder, State::Paused, State::Assigned) {
                        let _ = self
                            .shared
                            .store
                            .set_binder_state(&binder.id, State::Assigned)
                            .await;
                    }
                    return Err(e.into());
                }
            }
            return Ok(State::Paused);
        }
        if !pool.transition(binder, State::Paused, State::StartingClaimed) {
            return match binder.state() {
                State::Assigned => Ok(State::Assigned),
                State::StartingClaimed => Ok(binder.wait_started(wait).await),
                other => Err(PoolError::NotReady(other)),
            };
        }
        let record = pool.record();
        let Some(old) = binder.instance() else {
            self.fail(pool, binder, "nothing to resume".into()).await;
            return Err(PoolError::NotReady(State::Failed));
        };
        let base_url = binder.location();
        let spec = crate::backend::StartSpec {
            binder_id: &binder.id,
            token: &binder.token,
            binding: &record.binding,
            base_url: &base_url,
        };
        match self.shared.backend.resume(spec, &old).await {
            Ok(instance) => {
                binder.set_instance(instance.clone());
                if let Err(e) = self.shared.store.put_binder(stored(binder)).await {
                    tracing::warn!(binder = %binder.id, error = %e, "cannot record resumed binder");
                }
                let this = self.clone();
                let (pool, binder) = (pool.clone(), binder.clone());
                let timeout = Duration::from_secs(record.binding.start_timeout_seconds);
                let waiter = binder.clone();
                tokio::spawn(async move { this.settle(&pool, &binder, &instance, timeout).await });
                Ok(waiter.wait_started(wait).await)
            }
            Err(e) => {
                self.fail(pool, binder, format!("cannot resume: {e}")).await;
                Err(e.into())
            }
        }
    }

    /// The binder's recent output.
    pub async fn logs(&self, binder: &Binder, tail: usize) -> Result<String, PoolError> {
        match binder.instance() {
            Some(instance) => Ok(self
                .shared
                .backend
                .logs(&binder.id, &instance, tail)
                .await?),
            None => Ok(String::new()),
        }
    }
}

/// The row the store keeps for a binder.
fn stored(binder: &Binder) -> StoredBinder {
    StoredBinder {
        id: binder.id.to_string(),
        binding: binder.binding.to_string(),
        token: binder.token.to_string(),
        state: binder.state(),
        owner: binder.owner().cloned(),
        instance: binder.instance().map(|i| (*i).clone()),
        created_at: binder.created_at,
        assigned_at: binder.assigned_at(),
    }
}
