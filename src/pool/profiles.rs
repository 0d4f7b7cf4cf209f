//! Profiles' pools: a binding with `profiles` has one pool per profile,
//! each an entry of the registry under its [`PoolKey`] and a [`Pool`] like
//! any other: its own template, sizes, reconciler, counters and metrics.
//! The default profile's pool is the one whose key names no profile
//! (`key.rs`). A `PUT` rolls only the pools whose template changed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{BindingRecord, Pool, PoolKey, Pools};
use crate::binder::State;

/// Each pool a binding's record makes, with its key: the default
/// profile's (or the binding's, without profiles) first.
fn pools_of_record(record: &BindingRecord) -> Vec<(PoolKey, BindingRecord)> {
    let document = record.document();
    let default = document.default_profile().map(|p| p.name.as_str());
    let mut out = vec![(PoolKey::default_of(record.name.clone()), record.clone())];
    for p in document.profiles.iter() {
        if Some(p.name.as_str()) != default {
            let target = PoolKey {
                binding: record.name.clone(),
                profile: Some(Arc::from(p.name.as_str())),
            };
            out.push((target, record.with_profile(p)));
        }
    }
    out
}

impl Pools {
    /// A new binding's pools (nothing started, nothing registered): the
    /// default one first.
    pub(super) fn new_pools(&self, record: &BindingRecord) -> Vec<Arc<Pool>> {
        pools_of_record(record)
            .into_iter()
            .map(|(target, rec)| Arc::new(Pool::of_profile(rec, target.profile)))
            .collect()
    }

    /// Registers `pools` (of one binding, from [`Self::new_pools`]).
    pub(super) fn register_pools(&self, pools: &[Arc<Pool>]) {
        for pool in pools {
            self.inner.pools.insert(pool.key(), pool.clone());
        }
    }

    /// Takes the pools of binding `default.name` out of the registry (those
    /// registered now that are not a newer binding's of the same name).
    pub(super) fn unregister_binding(&self, default: &Arc<Pool>) -> Vec<Arc<Pool>> {
        let gone: Vec<Arc<Pool>> = self
            .pools_of(&default.name)
            .into_iter()
            .filter(|p| Arc::ptr_eq(p, default) || p.profile.is_some())
            .collect();
        for pool in &gone {
            self.inner
                .pools
                .remove_if(&pool.key(), |_, p| Arc::ptr_eq(p, pool));
        }
        gone
    }

    /// The binding of `pool` (its default pool) as `record` now says
    /// (already stored): each pool whose template changed rolls over, the
    /// others only take the new record and sizes; a new profile's pool
    /// starts filling; a removed profile's pool is retired (its handed-out
    /// binders run on until culled or stopped).
    pub(super) fn apply_record(&self, pool: &Arc<Pool>, record: BindingRecord) {
        let wanted = pools_of_record(&record);
        for (target, rec) in wanted.iter().skip(1) {
            match self.pool(target) {
                Some(existing) => self.set_record(&existing, rec.clone()),
                None => {
                    let new = Arc::new(Pool::of_profile(rec.clone(), target.profile.clone()));
                    self.inner.pools.insert(target.clone(), new.clone());
                    self.spawn_reconciler(new);
                }
            }
        }
        for old in self.pools_of(&pool.name) {
            let target = old.key();
            if target.profile.is_some() && !wanted.iter().any(|(t, _)| *t == target) {
                self.inner
                    .pools
                    .remove_if(&target, |_, p| Arc::ptr_eq(p, &old));
                self.retire_profile(&old);
            }
        }
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
            .binders_in(pool)
            .into_iter()
            .filter(|b| !matches!(b.state(), State::Assigned | State::Paused))
            .collect();
        self.stop_then_sweep(pool.clone(), binders);
    }
}
