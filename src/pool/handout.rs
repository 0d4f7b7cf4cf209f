//! The handout: a warm binder if the queue has one (pop + one CAS, then one
//! line appended to the store's journal), else one started for the caller,
//! else, at `maxPool`, one already starting for the pool. No backend call
//! on one replica (a start for the caller is spawned, not awaited); in
//! shared mode a warm handout's one call is the claim on the binder's pod
//! (`claim_warm`: a PATCH to the API server, fenced by its
//! `resourceVersion`). No lock held across an await.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Pool, PoolError, Pools};
use crate::auth::Owner;
use crate::backend::BackendError;
use crate::binder::{now_unix, Binder, State};
use crate::store::StoredBinder;

/// What a handout gave.
pub enum Handout {
    /// A warm binder, assigned and recorded.
    Ready(Arc<Binder>),
    /// None was warm: this one is starting for the caller.
    Starting(Arc<Binder>),
}

/// Where a handout found its binder.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Found {
    Warm,
    Cold,
    Claimed,
}

impl Pools {
    /// Hands out a binder of `pool` to `owner`.
    ///
    /// The hot path: pop + compare-and-swap, then one journal append (the
    /// handout is durable when it returns; SQLite follows off this path).
    /// No backend call and no await on a warm binder.
    ///
    /// `client` is who asks (see `ratelimit::client_key`): an anonymous
    /// binder is charged to it, under the anonymous caps; a key's binder to
    /// the key's quota.
    pub async fn handout(
        &self,
        pool: &Arc<Pool>,
        owner: Owner,
        client: Option<std::net::IpAddr>,
    ) -> Result<Handout, PoolError> {
        let began = tokio::time::Instant::now();
        let quotas = &self.inner.quotas;
        let charge = match (&owner, client) {
            (Owner::Anonymous, Some(client)) => quotas.try_charge_anonymous(client)?,
            _ => quotas.try_charge(&owner, &pool.current().binding.resources, true)?,
        };
        let result = self.handout_charged(pool, owner, charge.clone()).await;
        match &result {
            Ok(Handout::Ready(_)) => {
                let took = began.elapsed();
                pool.metrics.warm_handout_seconds.record(took.as_secs_f64());
                pool.note_handout(took);
                pool.trends
                    .handout(std::time::SystemTime::now(), true, took);
            }
            Ok(Handout::Starting(_)) => {
                let took = began.elapsed();
                pool.metrics.cold_handout_seconds.record(took.as_secs_f64());
                pool.trends
                    .handout(std::time::SystemTime::now(), false, took);
            }
            Err(_) => {
                if let Some(c) = charge {
                    c.release();
                }
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
        let (binder, found) = self.take(pool, &owner).await?;
        binder.hand_to(owner.clone(), charge);
        let recorded = match found {
            Found::Warm => {
                let now = now_unix();
                binder.set_assigned_at(now);
                binder.set_last_activity(now);
                binder.changed.notify_waiters();
                if self.cluster().is_some() {
                    Ok(()) // the claim on the pod is the record
                } else {
                    self.inner.store.record_handout(&binder.id, &owner, now)
                }
            }
            Found::Cold => {
                self.register(pool, &binder);
                let row = StoredBinder::from(&*binder);
                self.inner.store.put_binder(row).await
            }
            Found::Claimed => self.inner.store.claim(&binder.id, owner).await,
        };
        if let Err(e) = recorded {
            // Not durable, so not handed out: a crash now could hand it out
            // again. A warm one goes back to the pool; the others fail.
            if found == Found::Warm {
                binder.release_charge();
                pool.requeue(binder);
            } else {
                self.fail(pool, &binder, format!("cannot record the binder: {e}"))
                    .await;
            }
            return Err(e.into());
        }
        pool.handed_out(found == Found::Warm);
        // A demand-sized pool's estimate reads the handout count: its
        // reconciler looks again now that this one counts (the wake in
        // `find` may run before it does), and after a cold handout (the
        // pool was short) whatever the pool's kind.
        if found == Found::Cold || pool.current().binding.pool.warm_target.is_some() {
            pool.wake.notify_one();
        }
        Ok(match found {
            Found::Warm => {
                self.watch_for_culling(&binder);
                pool.metrics.warm_handouts.increment(1);
                Handout::Ready(binder)
            }
            Found::Cold => {
                tracing::info!(binder = %binder.id, binding = %pool.name, "no warm binder: handed out cold, starting");
                self.spawn_start(pool.clone(), binder.clone());
                pool.metrics.cold_handouts.increment(1);
                Handout::Starting(binder)
            }
            Found::Claimed => Handout::Starting(binder),
        })
    }

    /// [`Self::find`], and in shared mode the claim on a warm binder's pod:
    /// a claim lost to another replica leaves that binder assigned (to
    /// them) and tries the next.
    async fn take(
        &self,
        pool: &Arc<Pool>,
        owner: &Owner,
    ) -> Result<(Arc<Binder>, Found), PoolError> {
        loop {
            let (binder, found) = self.find(pool)?;
            if found != Found::Warm || self.cluster().is_none() {
                return Ok((binder, found));
            }
            // Cut off from the API server: no claim can be made.
            if let Some(reason) = self.inner.backend.unavailable() {
                pool.requeue(binder);
                return Err(BackendError::Unavailable(reason).into());
            }
            match self.claim_warm(&binder, owner, now_unix()).await {
                Ok(true) => return Ok((binder, found)),
                Ok(false) => {
                    pool.metrics.lost_claims.increment(1);
                    tracing::debug!(binder = %binder.id, "claim lost to another replica");
                }
                Err(e) => {
                    pool.requeue(binder);
                    return Err(e);
                }
            }
        }
    }

    /// The binder a handout gives: a warm one (now `Assigned`), else a new
    /// one starting for the caller (`StartingClaimed`, its slot reserved),
    /// else, at `maxPool`, one already starting for the pool.
    fn find(&self, pool: &Arc<Pool>) -> Result<(Arc<Binder>, Found), PoolError> {
        if let Some(binder) = pool.ready.pop_transition(&pool.counters, State::Assigned) {
            // Refill at once, but wake the reconciler only if it has work:
            // its counts are what `fill` reads.
            if pool
                .counters
                .wants_more(pool.target(), pool.max.load(Ordering::Acquire))
            {
                pool.wake.notify_one();
            }
            return Ok((binder, Found::Warm));
        }
        if let Some(reason) = self.inner.backend.unavailable() {
            return Err(BackendError::Unavailable(reason).into());
        }
        let max = pool.max.load(Ordering::Acquire);
        if pool.counters.try_reserve(max) {
            let binder = Arc::new(
                Binder::new(pool.name.clone(), State::StartingClaimed)
                    .of_generation(pool.generation())
                    .of_profile(pool.profile_name()),
            );
            pool.counters.entered(State::StartingClaimed);
            return Ok((binder, Found::Cold));
        }
        match self.claim_starting(pool) {
            Some(binder) => Ok((binder, Found::Claimed)),
            None => {
                // Once per time it fills up, not per refused request.
                if !pool.full_logged.swap(true, Ordering::AcqRel) {
                    tracing::info!(binding = %pool.name, max, "pool is at maxPool: spawns are refused until a binder stops");
                }
                Err(PoolError::Full {
                    name: pool.name.clone(),
                    max,
                })
            }
        }
    }

    /// Claims a binder that is starting for the pool. Scans the binders, so
    /// it is only for the rare empty-and-at-maxPool case.
    fn claim_starting(&self, pool: &Arc<Pool>) -> Option<Arc<Binder>> {
        // In shared mode a starting binder is offered to every replica once
        // ready: only one started for its caller can be claimed early.
        if pool.counters.get(&pool.counters.starting) == 0 || self.cluster().is_some() {
            return None;
        }
        let candidates: Vec<Arc<Binder>> = self
            .inner
            .binders
            .iter()
            .filter(|e| Arc::ptr_eq(&e.pool, pool) && e.binder.state() == State::Starting)
            .map(|e| e.binder.clone())
            .collect();
        candidates
            .into_iter()
            .find(|b| pool.transition(b, State::Starting, State::StartingClaimed))
    }
}
