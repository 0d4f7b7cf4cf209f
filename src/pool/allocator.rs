//! The handout structure: a lock-free queue of warm binders.
//!
//! `pop_assign` is the whole of the handout decision: pop a binder, and
//! compare-and-swap its state from `Idle` to `Assigned`. A binder that left
//! `Idle` while queued (its process died, the pool shrank) fails the swap and
//! is dropped from the queue, so nothing is ever handed out twice or handed
//! out after it stopped. No mutex, no await, no I/O.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crossbeam_queue::SegQueue;

use crate::binder::{Binder, State};

/// Counts of a pool, kept in step with the binders' states by
/// [`Counters::on_transition`]: every state change goes through it.
#[derive(Debug, Default)]
pub struct Counters {
    /// Binders in a live state (holding a slot under `maxPool`).
    pub live: AtomicU32,
    /// Idle binders (started, answering, not handed out).
    pub available: AtomicU32,
    /// Binders starting for the pool.
    pub starting: AtomicU32,
    /// Binders starting for a caller who already holds their id.
    pub starting_claimed: AtomicU32,
}

fn counter(c: &Counters, state: State) -> Option<&AtomicU32> {
    match state {
        State::Idle => Some(&c.available),
        State::Starting => Some(&c.starting),
        State::StartingClaimed => Some(&c.starting_claimed),
        _ => None,
    }
}

impl Counters {
    /// Takes a `maxPool` slot for a new binder, or refuses when full.
    pub fn try_reserve(&self, max: u32) -> bool {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                (live < max).then_some(live + 1)
            })
            .is_ok()
    }

    /// A binder entered the pool in `state` (its slot already reserved for
    /// new ones; restored ones call [`Counters::adopted`] first).
    pub fn entered(&self, state: State) {
        if let Some(c) = counter(self, state) {
            c.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A restored binder takes a slot whatever `maxPool` says.
    pub fn adopted(&self) {
        self.live.fetch_add(1, Ordering::AcqRel);
    }

    /// Adjusts the counts for one binder moving `from` → `to`.
    /// Moves `binder` from `from` to `to` if it is in `from` (one of racing
    /// callers wins) and counts the change: the one way a binder's state
    /// changes (with [`Counters::force`]).
    pub fn transition(&self, binder: &Binder, from: State, to: State) -> bool {
        let moved = binder.cas_state(from, to);
        if moved {
            self.on_transition(from, to);
        }
        moved
    }

    /// Moves `binder` to `to` from whatever it was in, counted; returns the
    /// state it left.
    pub fn force(&self, binder: &Binder, to: State) -> State {
        let from = binder.swap_state(to);
        self.on_transition(from, to);
        from
    }

    pub fn on_transition(&self, from: State, to: State) {
        if from == to {
            return;
        }
        if let Some(c) = counter(self, from) {
            c.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(c) = counter(self, to) {
            c.fetch_add(1, Ordering::AcqRel);
        }
        if from.is_live() && !to.is_live() {
            self.live.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether the reconciler would start something now: fewer than `min`
    /// available or starting, and a slot free under `max`. Lets a handout
    /// skip waking it when it has nothing to do (a full pool at `maxPool`).
    pub fn wants_more(&self, min: u32, max: u32) -> bool {
        self.get(&self.available) + self.get(&self.starting) < min && self.get(&self.live) < max
    }

    pub fn get(&self, which: &AtomicU32) -> u32 {
        which.load(Ordering::Acquire)
    }
}

/// Warm binders waiting for a handout.
#[derive(Default)]
pub struct ReadyQueue {
    queue: SegQueue<Arc<Binder>>,
}

impl ReadyQueue {
    /// Queues a binder that is already `Idle`.
    pub fn push(&self, binder: Arc<Binder>) {
        self.queue.push(binder);
    }

    /// Pops the first binder that this call moves `Idle` → `to`.
    /// Exactly one caller gets any given binder.
    pub fn pop_transition(&self, counters: &Counters, to: State) -> Option<Arc<Binder>> {
        while let Some(binder) = self.queue.pop() {
            if counters.transition(&binder, State::Idle, to) {
                return Some(binder);
            }
            // Left Idle while queued: already accounted for by whoever moved it.
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::BindingName;
    use std::collections::HashSet;

    #[test]
    fn wants_more_only_below_min_with_a_free_slot() {
        let c = Counters::default();
        assert!(c.wants_more(2, 4), "empty pool below min");
        for _ in 0..2 {
            assert!(c.try_reserve(4));
            c.entered(State::Idle);
        }
        assert!(!c.wants_more(2, 4), "at min");
        c.on_transition(State::Idle, State::Assigned);
        assert!(c.wants_more(2, 4), "a handout left it below min");
        assert!(!c.wants_more(2, 2), "but no slot under max");
        assert!(c.try_reserve(4));
        c.entered(State::Starting);
        assert!(!c.wants_more(2, 4), "a start is already on its way");
    }

    fn idle(counters: &Counters) -> Arc<Binder> {
        assert!(counters.try_reserve(u32::MAX));
        counters.entered(State::Idle);
        Arc::new(Binder::new(BindingName::parse("x").unwrap(), State::Idle))
    }

    #[test]
    fn reserve_respects_max() {
        let c = Counters::default();
        assert!(c.try_reserve(2));
        assert!(c.try_reserve(2));
        assert!(!c.try_reserve(2));
        c.on_transition(State::Starting, State::Failed);
        assert!(c.try_reserve(2));
    }

    #[test]
    fn stale_entries_are_skipped_and_counted_once() {
        let c = Counters::default();
        let q = ReadyQueue::default();
        let a = idle(&c);
        let b = idle(&c);
        q.push(a.clone());
        q.push(b.clone());
        // `a` dies while queued.
        assert!(a.cas_state(State::Idle, State::Failed));
        c.on_transition(State::Idle, State::Failed);
        let got = q.pop_transition(&c, State::Assigned).unwrap();
        assert!(Arc::ptr_eq(&got, &b));
        assert!(q.pop_transition(&c, State::Assigned).is_none());
        assert_eq!(c.get(&c.available), 0);
        assert_eq!(c.get(&c.live), 1);
    }

    #[test]
    fn concurrent_handouts_never_repeat_a_binder() {
        let c = Counters::default();
        let q = ReadyQueue::default();
        for _ in 0..1000 {
            q.push(idle(&c));
        }
        let got: Vec<Arc<str>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        while let Some(b) = q.pop_transition(&c, State::Assigned) {
                            mine.push(b.id.clone());
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(got.len(), 1000);
        assert_eq!(got.iter().collect::<HashSet<_>>().len(), 1000);
        assert_eq!(c.get(&c.available), 0);
        assert_eq!(c.get(&c.live), 1000);
    }
}
