//! A binder's life after its start: stop, fail, forget, exits reported by
//! the backend, pause and resume, logs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Entry, Pool, PoolError, Pools, RETENTION};
use crate::binder::{Binder, State};
use crate::store::StoredBinder;

impl Pools {
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
            .inner
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

    /// Takes a dead binder out of service: no token, no record, and after
    /// [`RETENTION`] no id either.
    pub(super) async fn forget(&self, binder: &Arc<Binder>) {
        self.inner.tokens.remove(&binder.token);
        binder.release_charge();
        if let Err(e) = self.inner.store.delete_binder(&binder.id).await {
            tracing::warn!(binder = %binder.id, error = %e, "cannot delete binder record");
        }
        let shared = self.inner.clone();
        let id = binder.id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETENTION).await;
            shared.binders.remove(&id);
        });
    }

    pub(super) async fn finish_stop(&self, pool: &Arc<Pool>, binder: &Arc<Binder>) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Some(instance) = binder.instance() {
            if let Err(e) = self.inner.backend.stop(&binder.id, &instance).await {
                tracing::warn!(binder = %binder.id, error = %e, "stop failed");
            }
        }
        let was = pool.force(binder, State::Stopped);
        tracing::info!(binder = %binder.id, binding = %pool.name, was = was.public_name(), "binder stopped");
        pool.full_logged.store(false, Ordering::Release);
        self.forget(binder).await;
        pool.wake.notify_one();
    }

    /// Marks a binder failed, cleans up its container, and if it was
    /// starting, counts a failed start (which slows the reconciler down).
    pub(super) async fn fail(&self, pool: &Arc<Pool>, binder: &Arc<Binder>, reason: String) {
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
            if let Err(e) = self.inner.backend.stop(&binder.id, &instance).await {
                tracing::warn!(binder = %binder.id, error = %e, "cleanup failed");
            }
        }
        self.forget(binder).await;
        pool.wake.notify_one();
    }

    /// Stops idle binders until at most `keep` are left.
    pub(super) fn drain_idle(&self, pool: &Arc<Pool>, keep: u32) {
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

    /// Pauses a handed-out binder: recorded first, then its container
    /// paused (undone if the backend cannot).
    async fn pause(&self, pool: &Arc<Pool>, binder: &Arc<Binder>) -> Result<State, PoolError> {
        if !pool.transition(binder, State::Assigned, State::Paused) {
            return match binder.state() {
                State::Paused => Ok(State::Paused),
                other => Err(PoolError::NotReady(other)),
            };
        }
        self.inner
            .store
            .set_binder_state(&binder.id, State::Paused)
            .await?;
        if let Some(instance) = binder.instance() {
            if let Err(e) = self.inner.backend.pause(&binder.id, &instance).await {
                if pool.transition(binder, State::Paused, State::Assigned) {
                    let _ = self
                        .inner
                        .store
                        .set_binder_state(&binder.id, State::Assigned)
                        .await;
                }
                return Err(e.into());
            }
        }
        Ok(State::Paused)
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
            return self.pause(pool, binder).await;
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
        // Its files are in its working dir already; its environment is
        // still the one of its generation.
        let content = pool
            .content_for(binder.generation)
            .map(|c| crate::backend::Content {
                files: None,
                env: c.env.clone(),
            });
        let spec = crate::backend::StartSpec {
            binder_id: &binder.id,
            token: &binder.token,
            binding: &record.binding,
            base_url: &base_url,
            content: content.as_ref(),
        };
        match self.inner.backend.resume(spec, &old).await {
            Ok(instance) => {
                binder.set_instance(instance.clone());
                if let Err(e) = self
                    .inner
                    .store
                    .put_binder(StoredBinder::from(&**binder))
                    .await
                {
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
            Some(instance) => Ok(self.inner.backend.logs(&binder.id, &instance, tail).await?),
            None => Ok(String::new()),
        }
    }
}
