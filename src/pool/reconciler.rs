//! Keeping pools full: one reconciler task per binding. The start of each
//! binder is in [`super::start`].
//!
//! The reconciler sleeps until woken (a handout, a failure, a resize) or a
//! slow tick, then starts what is missing to bring `available + starting` up
//! to `minPool` without passing `maxPool`, all at once (bounded overall by the
//! start semaphore), and stops idle binders above `minPool`. After failed
//! starts it waits, doubling the wait each time, so a broken binding costs
//! little.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Pool, Pools};

use crate::binder::{Binder, State};

/// Even with nothing to wake it, a reconciler looks again this often.
const TICK: Duration = Duration::from_secs(5);
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
        let shutdown = self.shared.shutdown.clone();
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
            // While the backend is unreachable, starting would only fail.
            if self.shared.backend.unavailable().is_none() {
                self.fill(&pool);
            }
            let min = pool.min.load(Ordering::Acquire);
            self.drain_idle(&pool, min);
            tokio::select! {
                _ = pool.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = pool.retired.cancelled() => return,
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Starts binders until `available + starting` reaches `minPool`.
    fn fill(&self, pool: &Arc<Pool>) {
        let c = &pool.counters;
        let min = pool.min.load(Ordering::Acquire);
        let max = pool.max.load(Ordering::Acquire);
        let have = c.get(&c.available) + c.get(&c.starting);
        for _ in have..min {
            if !c.try_reserve(max) {
                break;
            }
            let binder = Arc::new(Binder::new(pool.name.clone(), State::Starting));
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
