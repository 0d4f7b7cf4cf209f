//! Keeping pools full: one reconciler task per pool (each profile's its
//! own). The start of each binder is in [`super::start`].
//!
//! The reconciler sleeps until woken (a handout, a failure, a resize) or a
//! slow tick, then starts what is missing to bring `available + starting` up
//! to the pool's target (`minPool`, or the size [`super::demand`] computes
//! for a pool with `warm_target`) without passing `maxPool`, all at once
//! (bounded overall by the start semaphore), and stops idle binders above
//! that target. While the backend is unreachable it starts nothing (it only
//! drains). After failed
//! starts it waits, doubling the wait each time, so a broken binding costs
//! little.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::demand::Demand;
use super::{Pool, Pools};
use tokio::time::Instant;

use crate::binder::{Binder, State};

/// Even with nothing to wake it, a reconciler looks again this often.
const TICK: Duration = Duration::from_secs(5);
/// How often a demand-sized pool's reconciler reads the handout rate.
const DEMAND_TICK: Duration = Duration::from_secs(1);
/// How long a grown pool waits after its last rise before it shrinks.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);

/// Sets and returns the pool's target: `minPool`, or with `warm_target`
/// what [`Demand`] works out from the handout rate and the time to ready.
fn aim(pool: &Pool, demand: &mut Demand) -> u32 {
    let size = pool.current().binding.pool;
    let min = pool.min.load(Ordering::Acquire);
    let max = pool.max.load(Ordering::Acquire);
    let target = match size.warm_target {
        None => min,
        Some(share) => demand.update(
            pool.handouts.load(Ordering::Relaxed),
            Instant::now(),
            pool.time_to_ready(),
            share,
            size.cooldown_seconds
                .map_or(DEFAULT_COOLDOWN, Duration::from_secs),
            min,
            max,
        ),
    };
    pool.target.store(target, Ordering::Release);
    target
}
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The wait before starting again after `failures` failed starts in a row.
pub(crate) fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (failures - 1).min(16);
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

impl Pools {
    pub(crate) fn spawn_reconciler(&self, pool: Arc<Pool>) {
        let this = self.clone();
        tokio::spawn(async move { this.reconcile(pool).await });
    }

    async fn reconcile(self, pool: Arc<Pool>) {
        let shutdown = self.inner.shutdown.clone();
        let mut demand = Demand::new(
            pool.handouts.load(Ordering::Relaxed),
            Instant::now(),
            pool.min.load(Ordering::Acquire),
        );
        loop {
            let failures = pool.failures.load(Ordering::Acquire);
            if failures > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(backoff(failures)) => {}
                    _ = pool.retired.cancelled() => return,
                    _ = shutdown.cancelled() => return,
                }
            }
            if pool.retired.is_cancelled() || shutdown.is_cancelled() {
                return;
            }
            let target = aim(&pool, &mut demand);
            let rolling = pool.rolling.load(Ordering::Acquire);
            // While the backend is unreachable, starting would only fail;
            // in shared mode another replica may hold the binding's Lease.
            if !pool.leads() || !self.content_gate(&pool) {
                tokio::select! {
                    _ = pool.wake.notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                    _ = pool.retired.cancelled() => return,
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
            // No starts while the backend cannot be reached: each would fail.
            let reachable = self.inner.backend.unavailable().is_none();
            if reachable && rolling {
                self.roll(&pool, target);
            } else if reachable {
                self.fill(&pool);
            }
            if !rolling {
                self.drain_idle(&pool, target);
            }
            // A demand-sized pool looks at its rate every second, and a
            // rollout at its new binders.
            let tick = if rolling || pool.current().binding.pool.warm_target.is_some() {
                DEMAND_TICK
            } else {
                TICK
            };
            tokio::select! {
                _ = pool.wake.notified() => {}
                _ = tokio::time::sleep(tick) => {}
                _ = pool.retired.cancelled() => return,
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One step of a rollout after a `PUT`: new binders start first (over
    /// `maxPool` by as many old warm ones as still wait: a surge), and old
    /// warm ones are stopped as new ones are ready, so the warm total stays
    /// at the target and warm handouts go on throughout. Handouts take the
    /// oldest warm binders first (the queue is FIFO). Ends when no binder of
    /// an older template is warm or starting for the pool.
    fn roll(&self, pool: &Arc<Pool>, target: u32) {
        let generation = pool.generation();
        let (mut fresh_ready, mut fresh_starting, mut old_starting) = (0u32, 0u32, 0u32);
        let mut old_ready = Vec::new();
        for binder in self.binders_in(pool) {
            let current = binder.generation == generation;
            match (binder.state(), current) {
                (State::Idle, true) => fresh_ready += 1,
                (State::Starting, true) => fresh_starting += 1,
                (State::Idle, false) => old_ready.push(binder),
                (State::Starting, false) => old_starting += 1,
                _ => {}
            }
        }
        let c = &pool.counters;
        let surge = pool.max.load(Ordering::Acquire) + old_ready.len() as u32;
        for _ in fresh_ready + fresh_starting..target {
            if !c.try_reserve(surge) {
                break;
            }
            let binder = Arc::new(
                Binder::new(pool.name.clone(), State::Starting)
                    .of_generation(generation)
                    .of_profile(pool.profile_name()),
            );
            c.entered(State::Starting);
            self.register(pool, &binder);
            self.spawn_start(pool.clone(), binder);
        }
        let mut excess = (fresh_ready + old_ready.len() as u32).saturating_sub(target);
        let mut stale = old_ready.len() as u32;
        for binder in old_ready {
            if excess == 0 {
                break;
            }
            if pool.transition(&binder, State::Idle, State::Stopping) {
                let this = self.clone();
                let pool = pool.clone();
                tokio::spawn(async move { this.finish_stop(&pool, &binder).await });
                excess -= 1;
                stale -= 1;
            }
        }
        pool.stale.store(stale, Ordering::Release);
        if stale == 0 && old_starting == 0 {
            pool.rolling.store(false, Ordering::Release);
        }
    }

    /// Starts binders until `available + starting` reaches the target.
    fn fill(&self, pool: &Arc<Pool>) {
        let c = &pool.counters;
        let target = pool.target();
        let max = pool.max.load(Ordering::Acquire);
        let have = c.get(&c.available) + c.get(&c.starting);
        for _ in have..target {
            if !c.try_reserve(max) {
                break;
            }
            let binder = Arc::new(
                Binder::new(pool.name.clone(), State::Starting)
                    .of_generation(pool.generation())
                    .of_profile(pool.profile_name()),
            );
            c.entered(State::Starting);
            self.register(pool, &binder);
            self.spawn_start(pool.clone(), binder);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(100), MAX_BACKOFF);
    }
}
