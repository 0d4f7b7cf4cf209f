//! Starting one binder: record it, ask the backend, wait until its port
//! answers HTTP (`settle`) and, for a binding with a `kernel`, until that
//! kernel runs warmed up in it (`crate::kernel`), then queue it as warm or give it to the caller
//! who claimed it. Adopted and resumed binders settle the same way.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Pool, Pools};
use crate::backend::{Instance, StartSpec};
use crate::binder::{now_unix, Binder, State};
use crate::store::StoredBinder;

/// How often (seconds) a pool's binder memory is sampled, at most.
const MEMORY_SAMPLE_EVERY: u64 = 30;

impl Pools {
    pub(crate) fn spawn_start(&self, pool: Arc<Pool>, binder: Arc<Binder>) {
        let this = self.clone();
        self.inner
            .starts
            .spawn(async move { this.start(pool, binder).await });
    }

    /// Starts one binder's container and waits until it answers.
    async fn start(self, pool: Arc<Pool>, binder: Arc<Binder>) {
        // The reconciler starts nothing before its content is made; a cold
        // start for a caller waits for it here (holding no start permit).
        let config = self.inner.content.config();
        let wait = Duration::from_secs(config.fetch_timeout_seconds + config.build_timeout_seconds);
        let content = match self.wait_content(&pool, binder.generation, wait).await {
            Ok(content) => content,
            Err(why) => {
                self.fail(&pool, &binder, why).await;
                return;
            }
        };
        let Ok(_permit) = self.inner.start_permits.clone().acquire_owned().await else {
            return;
        };
        let began = Instant::now();
        if pool.retired.is_cancelled() {
            // The binding was deleted after this binder was registered.
            self.stop(&pool, &binder);
        }
        if !matches!(binder.state(), State::Starting | State::StartingClaimed) {
            return; // stopped while it waited for a permit
        }
        let record = pool.record();
        if binder.state() == State::Starting && !self.record_or_fail(&pool, &binder).await {
            return;
        }
        let base_url = binder.location();
        pool.metrics.starts.increment(1);
        let started = self
            .inner
            .backend
            .start(StartSpec {
                binder_id: &binder.id,
                token: &binder.token,
                binding: &record.binding,
                base_url: &base_url,
                content: content.as_deref(),
            })
            .await;
        let instance = match started {
            Ok(instance) => instance,
            Err(e) => {
                self.fail(&pool, &binder, e.to_string()).await;
                return;
            }
        };
        binder.set_instance(instance.clone());
        // Pairs with the fence in `finish_stop`: either the stopper sees the
        // instance, or we see here that it was stopped (or failed) while the
        // backend was starting it; stopping twice is harmless.
        std::sync::atomic::fence(Ordering::SeqCst);
        if !matches!(binder.state(), State::Starting | State::StartingClaimed) {
            if let Err(e) = self.inner.backend.stop(&binder.id, &instance).await {
                tracing::warn!(binder = %binder.id, error = %e, "stop failed");
            }
            if binder.state() == State::Stopping {
                self.finish_stop(&pool, &binder).await;
            }
            return;
        }
        if !self.record_or_fail(&pool, &binder).await {
            return;
        }
        let timeout = Duration::from_secs(record.binding.start_timeout_seconds);
        self.settle(&pool, &binder, &instance, timeout).await;
        if matches!(binder.state(), State::Idle | State::Assigned) {
            let took = began.elapsed();
            pool.note_ready(took);
            pool.metrics.time_to_ready.record(took.as_secs_f64());
        }
    }

    /// Asks the backend what a binder just made ready holds in memory, at
    /// most once per [`MEMORY_SAMPLE_EVERY`] per pool, off the start path.
    fn sample_memory(&self, pool: &Arc<Pool>, binder: &Arc<Binder>, instance: &Instance) {
        let now = now_unix();
        let last = pool.memory_sampled_at.load(Ordering::Relaxed);
        if last != 0 && now < last + MEMORY_SAMPLE_EVERY {
            return;
        }
        let claimed = pool.memory_sampled_at.compare_exchange(
            last,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if claimed.is_err() {
            return;
        }
        let (this, pool, id, instance) = (
            self.clone(),
            pool.clone(),
            binder.id.clone(),
            instance.clone(),
        );
        tokio::spawn(async move {
            if let Some(bytes) = this.inner.backend.memory(&id, &instance).await {
                pool.warm_memory.store(bytes, Ordering::Relaxed);
            }
        });
    }

    /// Writes the binder's row; a binder that cannot be recorded fails (a
    /// crash would lose it). Returns whether it was recorded.
    async fn record_or_fail(&self, pool: &Arc<Pool>, binder: &Arc<Binder>) -> bool {
        let row = StoredBinder::from(&**binder);
        match self.inner.store.put_binder(row).await {
            Ok(()) => true,
            Err(e) => {
                self.fail(pool, binder, format!("cannot record the binder: {e}"))
                    .await;
                false
            }
        }
    }

    /// Waits until a started (or adopted) binder answers, then moves it into
    /// the pool or to the caller who claimed it.
    pub(crate) async fn settle(
        &self,
        pool: &Arc<Pool>,
        binder: &Arc<Binder>,
        instance: &Instance,
        timeout: Duration,
    ) {
        let record = pool.record();
        let path = if record.binding.strip_prefix {
            "/".to_owned()
        } else {
            binder.location()
        };
        let deadline = Instant::now() + timeout;
        if !self
            .answers_within(pool, binder, instance, &path, timeout)
            .await
        {
            return;
        }
        // A binding with a kernel: the binder is ready once that kernel runs
        // in it, warmed up. Not for a resumed binder (its owner had kernels
        // of their own).
        if let Some(kernel) = &record.binding.kernel {
            if binder.assigned_at() == 0
                && !self
                    .warm_kernel(pool, binder, instance, &path, kernel, deadline)
                    .await
            {
                return;
            }
        }
        // Shared mode: claimed in the cluster for its caller, or offered to
        // every replica, before it is handed out or queued here.
        let claimed = binder.state() == State::StartingClaimed;
        if let Err(e) = self.publish_ready(binder, claimed).await {
            if starting(binder) {
                self.fail(pool, binder, e.to_string()).await;
            }
            return;
        }
        self.ready(pool, binder, instance).await;
    }

    /// Checks until the binder answers HTTP at `path` (true), or fails it
    /// after `timeout`; false too when it left its start meanwhile.
    async fn answers_within(
        &self,
        pool: &Arc<Pool>,
        binder: &Arc<Binder>,
        instance: &Instance,
        path: &str,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        // Checks are one loopback request each: early ones come close
        // together (a sandboxed process or a container answers some
        // milliseconds after it starts, and a doubling wait from 20 ms
        // would add up to as much again), later ones back off to 250 ms.
        let mut pause = Duration::from_millis(5);
        loop {
            if !starting(binder) {
                return false; // failed (exited) or stopped meanwhile
            }
            if self.inner.upstream.answers(instance.addr, path).await {
                return true;
            }
            if Instant::now() >= deadline {
                let reason = format!(
                    "the container did not answer HTTP on port {} within {}s",
                    instance.addr.port(),
                    timeout.as_secs()
                );
                self.fail(pool, binder, reason).await;
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(Duration::from_millis(250));
        }
    }

    /// Starts the binding's kernel in the binder and runs its warm-up, then
    /// holds its channels; true when the binder goes on to be ready.
    async fn warm_kernel(
        &self,
        pool: &Arc<Pool>,
        binder: &Arc<Binder>,
        instance: &Instance,
        path: &str,
        kernel: &crate::binding::Kernel,
        deadline: Instant,
    ) -> bool {
        let server = crate::kernel::Server {
            upstream: &self.inner.upstream,
            addr: instance.addr,
            base: path,
        };
        match server.warm(kernel, deadline).await {
            Ok(warm) => {
                // Its channels, held for the reader's first client
                // (without them, that client opens its own).
                let held = tokio::time::timeout_at(deadline, server.hold_channels(&warm.id));
                match held.await {
                    Ok(Ok(held)) => binder.hold_channels(warm.id.clone(), held),
                    Ok(Err(e)) => {
                        tracing::info!(binder = %binder.id, error = %e, "warm kernel's channels not held")
                    }
                    Err(_) => {}
                }
                binder.set_warm_kernel(warm);
                starting(binder)
            }
            Err(e) => {
                if starting(binder) {
                    self.fail(pool, binder, e.to_string()).await;
                }
                false
            }
        }
    }

    /// A binder that answers (and has its warm kernel): into the pool's
    /// queue, or to the caller who claimed it while it started.
    async fn ready(&self, pool: &Arc<Pool>, binder: &Arc<Binder>, instance: &Instance) {
        // Recorded as idle before it becomes Idle: so before any handout can
        // record "assigned" (which this "idle" must never overwrite), and so
        // that the pool never counts it available while it is not yet in the
        // queue (a handout meanwhile would start a new binder instead). Only
        // while still unclaimed; a claim racing this write is recorded as
        // assigned right below.
        if binder.state() == State::Starting {
            if let Err(e) = self
                .inner
                .store
                .set_binder_state(&binder.id, State::Idle)
                .await
            {
                tracing::warn!(binder = %binder.id, error = %e, "cannot record ready binder");
            }
        }
        if pool.transition(binder, State::Starting, State::Idle) {
            pool.start_succeeded();
            pool.ready.push(binder.clone());
            self.sample_memory(pool, binder, instance);
        } else if pool.transition(binder, State::StartingClaimed, State::Assigned) {
            pool.start_succeeded();
            self.hand_claimed(binder).await;
        }
    }

    /// A binder claimed while it started, now handed to its caller:
    /// recorded as assigned and watched for culling.
    async fn hand_claimed(&self, binder: &Arc<Binder>) {
        // A resumed binder keeps its handout time (max age counts from
        // it), and its owner asked for it back: it counts as visited.
        let resumed = binder.assigned_at() != 0;
        let at = if resumed {
            binder.touch();
            binder.assigned_at()
        } else {
            let now = now_unix();
            binder.set_last_activity(now);
            now
        };
        binder.set_assigned_at(at);
        let owner = binder
            .owner()
            .cloned()
            .unwrap_or(crate::auth::Owner::Anonymous);
        if let Err(e) = self.inner.store.assign(&binder.id, owner, at).await {
            tracing::warn!(binder = %binder.id, error = %e, "cannot record assignment");
        }
        self.watch_for_culling(binder);
    }
}

/// Whether `binder` is still starting (for the pool or for a caller).
fn starting(binder: &Binder) -> bool {
    matches!(binder.state(), State::Starting | State::StartingClaimed)
}
