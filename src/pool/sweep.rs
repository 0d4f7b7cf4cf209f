//! Orphans: containers labelled as this binderd's that no live binder owns.
//!
//! A container can outlive every record of it. The one seen in practice: a
//! refill's create request is in flight when binderd is killed; the engine
//! finishes it after the next run has listed what is there (so start-up's
//! adoption never sees it) and nobody ever starts or removes it. No single
//! code path can know about such a container, so rather than a special case
//! for each, the sweep compares what the backend holds with what the pools
//! hold: every labelled container whose binder is unknown here, or known
//! but stopped or failed, is removed. A binder is registered before its
//! container is asked for and stays registered (for [`RETENTION`]) after
//! it is removed, so a start in flight is never taken for an orphan.
//!
//! The sweep runs [`SWEEP_FIRST`] after start-up (long enough for a create
//! the previous run left in flight to land), every [`SWEEP_EVERY`] after,
//! and once a deleted binding's binders have all stopped.
//!
//! [`RETENTION`]: super::RETENTION

use std::sync::Arc;
use std::time::Duration;

use super::{Pool, PoolError, Pools};
use crate::binder::{Binder, State};

/// The first sweep after start-up.
pub const SWEEP_FIRST: Duration = Duration::from_secs(10);
/// Between sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl Pools {
    /// Removes every labelled container no live binder owns; returns how
    /// many binders' containers it removed.
    pub async fn sweep(&self) -> Result<usize, PoolError> {
        // In shared mode a pod unknown here may be another replica's start:
        // the binding's Lease holder removes stale starts instead.
        if self.cluster().is_some() {
            return Ok(0);
        }
        let mut found = self.inner.backend.list().await?;
        // One at a time, in a fixed order (the log reads the same each run).
        found.sort_by(|a, b| a.binder_id.cmp(&b.binder_id));
        let mut removed = 0;
        for d in found {
            let owned = self
                .binder(&d.binder_id)
                .is_some_and(|e| !matches!(e.binder.state(), State::Stopped | State::Failed));
            if owned {
                continue;
            }
            tracing::info!(binder = %d.binder_id, binding = %d.binding, "removing a container no binder owns");
            match self.inner.backend.stop(&d.binder_id, &d.instance).await {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(binder = %d.binder_id, error = %e, "cannot remove container")
                }
            }
        }
        Ok(removed)
    }

    /// Sweeps [`SWEEP_FIRST`] from now and every [`SWEEP_EVERY`] after,
    /// until shutdown.
    pub(crate) fn spawn_sweeper(&self) {
        let this = self.clone();
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            let mut wait = SWEEP_FIRST;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return,
                }
                if let Err(e) = this.sweep().await {
                    tracing::warn!(error = %e, "cannot list containers to sweep");
                }
                wait = SWEEP_EVERY;
            }
        });
    }

    /// After a binding is deleted: stops its binders, waits for them, then
    /// sweeps (in the background).
    pub(super) fn stop_then_sweep(&self, pool: Arc<Pool>, binders: Vec<Arc<Binder>>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut stops = tokio::task::JoinSet::new();
            for binder in binders {
                if pool.take_down(&binder, State::Stopping).is_some() {
                    let (this, pool) = (this.clone(), pool.clone());
                    stops.spawn(async move { this.finish_stop(&pool, &binder).await });
                }
            }
            while stops.join_next().await.is_some() {}
            if let Err(e) = this.sweep().await {
                tracing::warn!(error = %e, "cannot list containers to sweep");
            }
        });
    }
}
