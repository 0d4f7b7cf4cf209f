//! One binding's pool: its record (the template, swapped whole on `PUT`),
//! its sizes, its counters and its queue of warm binders. Every change of a
//! binder's state goes through [`Pool::transition`], [`Pool::force`] or
//! [`Pool::take_down`], which keep the counters in step and wake anyone
//! waiting on the binder.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use arc_swap::ArcSwap;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::allocator::{Counters, ReadyQueue};
use crate::auth::Access;
use crate::binder::{Binder, State};
use crate::binding::{Binding, BindingName};
use crate::store::Source;

/// A binding as binderd holds it, as one pool sees it.
#[derive(Debug, Clone)]
pub struct BindingRecord {
    pub name: BindingName,
    /// The template this pool starts from: the binding, or with profiles
    /// the binding with this pool's profile applied.
    pub binding: Binding,
    /// With profiles: the binding as it was put (what `GET` shows and the
    /// store keeps), the same for all its pools.
    pub document: Option<Arc<Binding>>,
    pub owner: String,
    pub created_at: u64,
    pub source: Source,
}

impl BindingRecord {
    /// The binding as it was put (with its profiles).
    pub fn document(&self) -> &Binding {
        self.document.as_deref().unwrap_or(&self.binding)
    }

    /// The record of the binding's own pool (its default profile's
    /// template), from the binding as put.
    pub fn of_document(
        name: BindingName,
        document: Binding,
        owner: String,
        created_at: u64,
        source: Source,
    ) -> BindingRecord {
        let (binding, document) = if document.profiles.is_empty() {
            (document, None)
        } else {
            (document.default_template(), Some(Arc::new(document)))
        };
        BindingRecord {
            name,
            binding,
            document,
            owner,
            created_at,
            source,
        }
    }

    /// The record of profile `profile`'s own pool (same document).
    pub fn with_profile(&self, profile: &crate::binding::Profile) -> BindingRecord {
        BindingRecord {
            binding: self.document().with_profile(profile),
            ..self.clone()
        }
    }

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

impl From<&Pool> for crate::metrics::PoolGauges {
    fn from(pool: &Pool) -> Self {
        let c = pool.counts();
        crate::metrics::PoolGauges {
            available: c.available,
            running: c.running,
            starting: c.starting,
            min: c.min,
            max: c.max,
            target: pool.target(),
            warm_share: pool.warm_share(),
            warm_binder_memory: pool.warm_binder_memory().unwrap_or(0),
        }
    }
}

/// The pool of one binding's profile (or of a binding without profiles).
pub struct Pool {
    pub name: BindingName,
    /// The profile whose own pool this is; `None` for the pool of the
    /// binding's default profile (or of a binding without profiles).
    pub profile: Option<Arc<str>>,
    pub(super) record: ArcSwap<BindingRecord>,
    pub(super) min: AtomicU32,
    pub(super) max: AtomicU32,
    /// The warm pool size the reconciler aims at: `min`, or more while
    /// demand asks for it (`pool.warm_target`).
    pub(super) target: AtomicU32,
    /// Handouts so far, warm and all: the demand estimate and the share
    /// served warm read them.
    pub(super) handouts: AtomicU64,
    pub(super) warm_handouts: AtomicU64,
    /// Measured time from start to ready, averaged (µs; 0: none yet).
    pub(super) ready_us: AtomicU64,
    /// The template's generation: a `PUT` starts a new one and a rollout,
    /// which replaces the older warm binders (see `reconciler::roll`).
    pub(super) generation: AtomicU64,
    pub(super) rolling: AtomicBool,
    /// Warm binders of an older generation, as the rollout last counted.
    pub(super) stale: AtomicU32,
    /// Recent warm handout latency, averaged (µs; 0: none yet).
    pub(super) handout_us: AtomicU64,
    /// Resident bytes of a pooled binder, last sampled (0: not yet, or the
    /// backend cannot tell), and when (unix seconds).
    pub(super) warm_memory: AtomicU64,
    pub(super) memory_sampled_at: AtomicU64,
    /// "At maxPool" was logged since the last binder stopped.
    pub(super) full_logged: AtomicBool,
    pub counters: Counters,
    pub(super) ready: ReadyQueue,
    /// Wakes the reconciler: a handout, a failure, a resize.
    pub(super) wake: Notify,
    /// Failed starts in a row; drives the back-off and the binding status.
    pub(super) failures: AtomicU32,
    pub(super) last_error: Mutex<Option<String>>,
    /// Cancelled when the binding is deleted.
    pub(super) retired: CancellationToken,
    /// Whether this replica runs the pool's reconciler: always on one
    /// replica; in shared mode while it holds the binding's Lease.
    pub(super) leads: AtomicBool,
    /// Its content from a repository: phase, output, what was made.
    pub(super) build: super::content::BuildLog,
    pub(crate) metrics: crate::metrics::PoolCounters,
    /// The last hour, minute by minute, for the dashboard.
    pub trends: super::trends::Trends,
}

impl Pool {
    pub(super) fn new(record: BindingRecord) -> Pool {
        Pool::of_profile(record, None)
    }

    /// The pool of `profile` (`None`: the binding's own).
    pub(super) fn of_profile(record: BindingRecord, profile: Option<Arc<str>>) -> Pool {
        let size = record.binding.pool;
        let metrics = crate::metrics::PoolCounters::new(record.name.as_str(), profile.as_deref());
        Pool {
            name: record.name.clone(),
            profile,
            record: ArcSwap::from_pointee(record),
            min: AtomicU32::new(size.min),
            max: AtomicU32::new(size.max),
            target: AtomicU32::new(size.min),
            handouts: AtomicU64::new(0),
            warm_handouts: AtomicU64::new(0),
            ready_us: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            rolling: AtomicBool::new(false),
            stale: AtomicU32::new(0),
            full_logged: AtomicBool::new(false),
            trends: Default::default(),
            warm_memory: AtomicU64::new(0),
            memory_sampled_at: AtomicU64::new(0),
            handout_us: AtomicU64::new(0),
            counters: Counters::default(),
            ready: ReadyQueue::default(),
            wake: Notify::new(),
            failures: AtomicU32::new(0),
            last_error: Mutex::new(None),
            retired: CancellationToken::new(),
            leads: AtomicBool::new(true),
            build: Default::default(),
            metrics,
        }
    }

    /// The profile this pool serves: its own, or for the binding's pool
    /// the default one (`None` without profiles).
    pub fn profile_name(&self) -> Option<Arc<str>> {
        self.profile.clone().or_else(|| {
            self.current()
                .document()
                .default_profile()
                .map(|p| Arc::from(p.name.as_str()))
        })
    }

    /// Its key in the registry.
    pub fn key(&self) -> super::PoolKey {
        super::PoolKey {
            binding: self.name.clone(),
            profile: self.profile.clone(),
        }
    }

    /// Whether this replica runs the pool's reconciler (see `leads`).
    pub fn leads(&self) -> bool {
        self.leads.load(Ordering::Acquire)
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

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Warm binders made from the current template.
    pub fn updated(&self) -> u32 {
        let available = self.counters.get(&self.counters.available);
        if self.rolling.load(Ordering::Acquire) {
            available.saturating_sub(self.stale.load(Ordering::Acquire))
        } else {
            available
        }
    }

    /// The warm pool size aimed at now (`targetPool`).
    pub fn target(&self) -> u32 {
        self.target.load(Ordering::Acquire)
    }

    /// The share of handouts served warm so far (1 before any).
    pub fn warm_share(&self) -> f64 {
        let all = self.handouts.load(Ordering::Relaxed);
        let warm = self.warm_handouts.load(Ordering::Relaxed);
        if all == 0 {
            1.0
        } else {
            warm as f64 / all as f64
        }
    }

    /// Counts one handout.
    pub(super) fn handed_out(&self, warm: bool) {
        self.handouts.fetch_add(1, Ordering::Relaxed);
        if warm {
            self.warm_handouts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Resident memory of a pooled binder, as last sampled.
    pub fn warm_binder_memory(&self) -> Option<u64> {
        Some(self.warm_memory.load(Ordering::Relaxed)).filter(|b| *b > 0)
    }

    /// Recent warm handout latency, averaged (µs; 0 before any).
    pub fn handout_micros(&self) -> u64 {
        self.handout_us.load(Ordering::Relaxed)
    }

    /// Takes in one warm handout's latency.
    pub(super) fn note_handout(&self, took: std::time::Duration) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let avg = self.handout_us.load(Ordering::Relaxed);
        let next = if avg == 0 { us } else { (avg * 7 + us) / 8 };
        // A lost update under contention only skips one sample.
        self.handout_us.store(next, Ordering::Relaxed);
    }

    /// Takes in one measured start (start to ready) into the average.
    pub(super) fn note_ready(&self, took: std::time::Duration) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let _ = self
            .ready_us
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |avg| {
                Some(if avg == 0 { us } else { (avg * 3 + us) / 4 })
            });
    }

    /// The averaged time from start to ready (a first guess before any).
    pub fn time_to_ready(&self) -> std::time::Duration {
        match self.ready_us.load(Ordering::Acquire) {
            0 => super::demand::FIRST_GUESS,
            us => std::time::Duration::from_micros(us),
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
        let moved = self.counters.transition(binder, from, to);
        if moved {
            binder.changed.notify_waiters();
        }
        moved
    }

    /// Puts a binder popped for a handout that did not happen back in the
    /// queue (`Assigned` → `Idle`); false if it had left `Assigned`.
    pub(super) fn requeue(&self, binder: Arc<Binder>) -> bool {
        let moved = self.transition(&binder, State::Assigned, State::Idle);
        if moved {
            self.ready.push(binder);
        }
        moved
    }

    /// Moves `binder` to `to` from whatever it was in; returns that state.
    pub fn force(&self, binder: &Binder, to: State) -> State {
        let from = self.counters.force(binder, to);
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

    pub(super) fn start_failed(&self, reason: &str) {
        self.failures.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(reason.to_owned());
        }
    }

    pub(super) fn start_succeeded(&self) {
        self.failures.store(0, Ordering::Release);
    }
}
