//! Profiles' pools: a binding with `profiles` has one pool per profile.
//! The binding's own pool (the one [`Pools::get`] finds) serves its default
//! profile; each other profile's pool hangs off it ([`Pool::profile_pools`])
//! and is a [`Pool`] like any other: its own template, sizes, reconciler,
//! counters and metrics. A `PUT` rolls only the pools whose template
//! changed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{BindingRecord, Pool, Pools};
use crate::binder::State;

/// The records of the pools a binding's other (not default) profiles get.
fn other_profiles(record: &BindingRecord) -> Vec<(Arc<str>, BindingRecord)> {
    let document = record.document();
    let default = document.default_profile().map(|p| p.name.as_str());
    document
        .profiles
        .iter()
        .filter(|p| Some(p.name.as_str()) != default)
        .map(|p| (Arc::from(p.name.as_str()), record.for_profile(p)))
        .collect()
}

impl Pools {
    /// Every binder of the binding whose pool is `pool`, with the pool it
    /// is in: the binding's, its profiles', and a removed profile's (whose
    /// handed-out binders still run).
    pub fn binders_of_binding(&self, pool: &Arc<Pool>) -> Vec<super::Entry> {
        self.shared
            .binders
            .iter()
            .filter(|e| {
                Arc::ptr_eq(&e.pool, pool) || (e.pool.profile.is_some() && e.pool.name == pool.name)
            })
            .map(|e| e.value().clone())
            .collect()
    }

    /// Every pool: each binding's and its profiles'.
    pub fn all(&self) -> Vec<Arc<Pool>> {
        let mut out = Vec::new();
        for pool in self.list() {
            let others = pool.profile_pools();
            out.push(pool);
            out.extend(others.iter().cloned());
        }
        out
    }

    /// A new binding's pool with its profiles' pools (nothing started).
    pub(super) fn new_pool(&self, record: BindingRecord) -> Arc<Pool> {
        let others: Vec<Arc<Pool>> = other_profiles(&record)
            .into_iter()
            .map(|(name, rec)| Arc::new(Pool::of_profile(rec, Some(name))))
            .collect();
        let pool = Arc::new(Pool::new(record));
        pool.profiles.store(Arc::new(others));
        pool
    }

    /// Starts the reconcilers of a binding's pool and its profiles'.
    pub(super) fn spawn_reconcilers(&self, pool: &Arc<Pool>) {
        self.spawn_reconciler(pool.clone());
        for other in pool.profile_pools().iter() {
            self.spawn_reconciler(other.clone());
        }
    }

    /// The binding of `pool` as `record` now says (already stored): each
    /// pool whose template changed rolls over, the others only take the
    /// new record and sizes; a new profile's pool starts filling; a
    /// removed profile's pool is retired (its handed-out binders run on
    /// until culled or stopped).
    pub(super) fn apply_record(&self, pool: &Arc<Pool>, record: BindingRecord) {
        let old_others = pool.profile_pools();
        let mut others = Vec::new();
        for (name, rec) in other_profiles(&record) {
            match old_others
                .iter()
                .find(|p| p.profile.as_ref() == Some(&name))
            {
                Some(existing) => {
                    self.set_record(existing, rec);
                    others.push(existing.clone());
                }
                None => {
                    let new = Arc::new(Pool::of_profile(rec, Some(name)));
                    self.spawn_reconciler(new.clone());
                    others.push(new);
                }
            }
        }
        for gone in old_others.iter() {
            if !others.iter().any(|p| Arc::ptr_eq(p, gone)) {
                self.retire_profile(gone);
            }
        }
        pool.profiles.store(Arc::new(others));
        self.set_record(pool, record);
    }

    /// One pool's new record: a new template rolls its warm binders over;
    /// the same template (another profile changed, or only the owner's
    /// fields) leaves them.
    fn set_record(&self, pool: &Arc<Pool>, record: BindingRecord) {
        let size = record.binding.pool;
        let same = pool.current().binding == record.binding;
        pool.min.store(size.min, Ordering::Release);
        pool.max.store(size.max, Ordering::Release);
        let template = record.binding.clone();
        pool.record.store(Arc::new(record));
        if same {
            pool.wake.notify_one();
        } else {
            self.replace_template(pool, template);
        }
    }

    /// A profile taken out of its binding: no more starts, its warm and
    /// starting binders stopped; handed-out ones are left to their users.
    fn retire_profile(&self, pool: &Arc<Pool>) {
        tracing::info!(binding = %pool.name, profile = pool.profile.as_deref().unwrap_or(""), "profile removed: stopping its warm binders");
        pool.retired.cancel();
        let binders = self
            .binders_of(pool)
            .into_iter()
            .filter(|b| !matches!(b.state(), State::Assigned | State::Paused))
            .collect();
        self.stop_then_sweep(pool.clone(), binders);
    }
}
