//! Culling handed-out binders: idle ones (no proxied traffic for
//! `cull.idle_seconds`), old ones (`cull.max_age_seconds` since handout) and
//! unvisited ones (no request at all within `cull.unvisited_seconds` of the
//! handout: a page that failed, or a client that went away).
//!
//! The culler keeps a min-heap of (due time, binder id). Each tick it pops only
//! what is due, re-reads the binder (traffic may have moved its due time), and
//! either stops it or pushes it back with its new due time. So a tick costs
//! O(due · log n), not a scan of every binder. Warm binders that were never
//! handed out are never culled; paused ones only for age. For a binding with
//! a `kernel`, a binder idle by the proxy's count is culled only once its
//! server says so too: no kernel executing, no activity of its own since.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use super::{Entry, Pool, Pools};
use crate::binder::{now_unix, Binder, BinderId, State};
use crate::binding::Cull;

/// How many binders the culler takes in before it lets the other tasks of
/// its thread run: a tick after a rush of handouts has tens of thousands to
/// take in (at a few hundred ns each), which in one go would hold up every
/// request waiting on that thread for milliseconds.
const CULL_CHUNK: usize = 512;

/// Moves the binders handed out since the last tick from `inbox` into
/// `heap`, with their due time (`due_of`; those it gives none are not
/// watched), yielding every [`CULL_CHUNK`].
async fn take_inbox(
    inbox: &crossbeam_queue::SegQueue<BinderId>,
    heap: &mut BinaryHeap<Reverse<(u64, BinderId)>>,
    mut due_of: impl FnMut(&BinderId) -> Option<u64>,
) {
    let mut taken = 0;
    while let Some(id) = inbox.pop() {
        if let Some(at) = due_of(&id) {
            heap.push(Reverse((at, id)));
        }
        taken += 1;
        if taken % CULL_CHUNK == 0 {
            tokio::task::yield_now().await;
        }
    }
}

/// When `binder` is due, or `None` when it is not subject to culling.
pub(crate) fn due(binder: &Binder, cull: &Cull) -> Option<u64> {
    let aged = binder.assigned_at().saturating_add(cull.max_age_seconds);
    match binder.state() {
        State::Assigned => {
            let idle = binder.last_activity().saturating_add(cull.idle_seconds);
            let unvisited = match cull.unvisited_seconds {
                0 => u64::MAX,
                _ if binder.visited() => u64::MAX,
                n => binder.assigned_at().saturating_add(n),
            };
            Some(aged.min(idle).min(unvisited))
        }
        State::Paused => Some(aged),
        _ => None,
    }
}

impl Pools {
    /// Asks the culler to watch a binder just handed out (or resumed, or
    /// adopted). Cheap: one lock-free push, no wake-up; the culler takes it
    /// at its next tick (due times are whole seconds away).
    pub(crate) fn watch_for_culling(&self, binder: &Binder) {
        self.inner.cull_inbox.push(binder.id.clone());
    }

    pub(crate) fn spawn_culler(&self, every: Duration) {
        let this = self.clone();
        tokio::spawn(async move { this.cull(every).await });
    }

    async fn cull(self, every: Duration) {
        let mut heap: BinaryHeap<Reverse<(u64, BinderId)>> = BinaryHeap::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.inner.shutdown.clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    take_inbox(&self.inner.cull_inbox, &mut heap, |id| {
                        let Entry { pool, binder } = self.binder(id)?;
                        due(&binder, &pool.record().binding.cull)
                    })
                    .await;
                    self.cull_due(&mut heap).await;
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Stops what is due in `heap`; pushes back what has moved. A chunk at
    /// a time, like [`take_inbox`].
    async fn cull_due(&self, heap: &mut BinaryHeap<Reverse<(u64, BinderId)>>) {
        let now = now_unix();
        let mut popped = 0;
        while heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let Some(Reverse((_, id))) = heap.pop() else {
                break;
            };
            popped += 1;
            if popped % CULL_CHUNK == 0 {
                tokio::task::yield_now().await;
            }
            let Some(Entry { pool, binder }) = self.binder(&id) else {
                continue;
            };
            let binding = pool.record().binding.clone();
            match due(&binder, &binding.cull) {
                Some(at) if at <= now => match why(&binder, &binding.cull, now) {
                    // The proxy saw no traffic, but a kernel may be busy (a
                    // long computation sends nothing): ask the server first.
                    Why::Idle if binding.kernel.is_some() => {
                        self.spawn_activity_check(pool, binder, binding.strip_prefix);
                    }
                    why => self.cull_now(&pool, &binder, why.reason(&binding.cull)),
                },
                Some(at) => heap.push(Reverse((at, id))),
                None => {}
            }
        }
    }

    pub(super) fn cull_now(&self, pool: &Arc<Pool>, binder: &Arc<Binder>, reason: String) {
        tracing::info!(binder = %binder.id, binding = %pool.name, %reason, "culling");
        binder.set_failure(reason);
        pool.metrics.culled.increment(1);
        self.stop(pool, binder);
    }

    /// For a binding with a kernel: the server's own activity counts (a
    /// busy kernel, or its `last_activity`); only a binder idle by both
    /// measures is culled, else it is watched again from its new due time.
    fn spawn_activity_check(&self, pool: Arc<Pool>, binder: Arc<Binder>, strip_prefix: bool) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Some(instance) = binder.instance() {
                let base = if strip_prefix {
                    "/".to_owned()
                } else {
                    binder.location()
                };
                let server = crate::kernel::Server {
                    upstream: &this.inner.upstream,
                    addr: instance.addr,
                    base: &base,
                };
                let seen = tokio::time::timeout(ACTIVITY_CHECK_TIMEOUT, server.activity()).await;
                if let Ok(Ok(activity)) = seen {
                    let now = now_unix();
                    let last = if activity.busy {
                        Some(now)
                    } else {
                        activity.last_activity.map(|t| t.min(now))
                    };
                    if let Some(t) = last.filter(|t| *t > binder.last_activity()) {
                        binder.set_last_activity(t);
                    }
                }
            }
            let cull = pool.record().binding.cull;
            let now = now_unix();
            match due(&binder, &cull) {
                Some(at) if at <= now => {
                    this.cull_now(&pool, &binder, why(&binder, &cull, now).reason(&cull))
                }
                Some(_) => this.watch_for_culling(&binder),
                None => {}
            }
        });
    }
}

/// How long the server may take to say whether it is busy.
const ACTIVITY_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Which rule makes a due binder go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Unvisited,
    Idle,
    Old,
}

fn why(binder: &Binder, cull: &Cull, now: u64) -> Why {
    let assigned = binder.state() == State::Assigned;
    if assigned
        && !binder.visited()
        && cull.unvisited_seconds > 0
        && now >= binder.assigned_at().saturating_add(cull.unvisited_seconds)
    {
        Why::Unvisited
    } else if assigned && now >= binder.last_activity().saturating_add(cull.idle_seconds) {
        Why::Idle
    } else {
        Why::Old
    }
}

impl Why {
    fn reason(self, cull: &Cull) -> String {
        match self {
            Why::Unvisited => format!(
                "reclaimed: handed out and never visited for {}s",
                cull.unvisited_seconds
            ),
            Why::Idle => format!("culled: no traffic for {}s", cull.idle_seconds),
            Why::Old => format!("culled: older than {}s", cull.max_age_seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::BindingName;

    /// A tick after a rush takes its binders in a chunk at a time: the
    /// thread's other tasks (requests) run in between.
    #[tokio::test(flavor = "current_thread")]
    async fn the_inbox_is_taken_in_chunks_letting_other_tasks_run() {
        let n = CULL_CHUNK * 3 + 1;
        let inbox = Arc::new(crossbeam_queue::SegQueue::new());
        for i in 0..n {
            inbox.push(BinderId::from(format!("b{i}")));
        }
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (left, saw) = (inbox.clone(), seen.clone());
        let other = tokio::spawn(async move {
            loop {
                saw.lock().unwrap().push(left.len());
                if left.is_empty() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        });
        let mut heap = BinaryHeap::new();
        take_inbox(&inbox, &mut heap, |id| (id.as_ref() != "b0").then_some(7)).await;
        other.await.unwrap();
        assert_eq!(heap.len(), n - 1, "b0 has no due time, so is not watched");
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter().any(|left| *left > 0 && *left < n),
            "the other task only ran before or after: {seen:?}"
        );
    }

    #[test]
    fn due_is_the_earlier_of_idle_and_age_and_skips_pool_binders() {
        let cull = Cull {
            idle_seconds: 10,
            max_age_seconds: 100,
            unvisited_seconds: 5,
        };
        let b = Binder::new(BindingName::parse("x").unwrap(), State::Idle);
        assert_eq!(due(&b, &cull), None, "warm binders are never culled");
        b.swap_state(State::Assigned);
        b.set_assigned_at(1000);
        b.touch();
        let idle_due = b.last_activity() + 10;
        assert_eq!(due(&b, &cull), Some(idle_due.min(1100)));
        b.swap_state(State::Paused);
        assert_eq!(due(&b, &cull), Some(1100), "paused: age only");
    }

    #[test]
    fn unvisited_binders_are_due_early_until_their_first_request() {
        let cull = Cull {
            idle_seconds: 10,
            max_age_seconds: 100,
            unvisited_seconds: 5,
        };
        let b = Binder::new(BindingName::parse("x").unwrap(), State::Assigned);
        let now = now_unix();
        b.set_assigned_at(now);
        b.set_last_activity(now);
        assert_eq!(due(&b, &cull), Some(now + 5), "never visited");
        let off = Cull {
            unvisited_seconds: 0,
            ..cull
        };
        assert_eq!(due(&b, &off), Some(now + 10), "0 turns it off");
        b.touch();
        assert!(due(&b, &cull).unwrap() >= now + 10, "visited: idle rule");
        let adopted = Binder::restore(
            "i".into(),
            "t".into(),
            b.binding.clone(),
            State::Assigned,
            0,
        );
        adopted.set_assigned_at(now);
        adopted.set_last_activity(now);
        assert_eq!(due(&adopted, &cull), Some(now + 10), "adopted: visited");
    }
}
