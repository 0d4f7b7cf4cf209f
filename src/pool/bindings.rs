//! Bindings: create, replace, delete, and resize their pools. Each change
//! is committed to the store before it takes effect in memory.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{BindingRecord, Pool, PoolCounts, PoolError, Pools};
use crate::backend::BackendError;
use crate::binder::{now_unix, State};
use crate::binding::{Binding, BindingName, InvalidBinding};
use crate::store::{Source, StoredBinding};

impl Pools {
    /// In shared mode the replicas must agree on bindings and sizes, and
    /// one replica's API call would change one replica's: refused.
    fn refuse_if_shared(&self) -> Result<(), PoolError> {
        match self.cluster() {
            Some(_) => Err(BackendError::Unsupported(
                "bindings and pool sizes come from the config file every replica reads in shared mode (deploy/: the binderd ConfigMap): change them there".into(),
            )
            .into()),
            None => Ok(()),
        }
    }

    /// Creates a binding (or replaces it when `replace`). Returns the pool and
    /// whether it was created.
    pub async fn put_binding(
        &self,
        mut binding: Binding,
        owner: &str,
        replace: bool,
    ) -> Result<(Arc<Pool>, bool), PoolError> {
        self.refuse_if_shared()?;
        let name = binding.validate(
            self.backend_kind().runs_on_host(),
            self.shared.max_pool_limit,
        )?;
        let now = now_unix();
        let mut record = BindingRecord {
            name: name.clone(),
            binding,
            owner: owner.to_owned(),
            created_at: now,
            source: Source::Api,
        };
        let (pool, created) = match self.shared.pools.entry(name.clone()) {
            dashmap::Entry::Occupied(_) if !replace => return Err(PoolError::Exists(name)),
            dashmap::Entry::Occupied(o) => {
                let pool = o.get().clone();
                let old = pool.record();
                record.owner = old.owner.clone();
                record.created_at = old.created_at;
                (pool, false)
            }
            dashmap::Entry::Vacant(v) => {
                let pool = Arc::new(Pool::new(record.clone()));
                v.insert(pool.clone());
                (pool, true)
            }
        };
        let stored = StoredBinding {
            name: name.to_string(),
            spec: serde_json::to_string(&record.binding).unwrap_or_default(),
            owner: record.owner.clone(),
            created_at: record.created_at,
            source: Source::Api,
        };
        let size = record.binding.pool;
        let persisted = async {
            self.shared.store.put_binding(stored).await?;
            self.shared
                .store
                .set_pool_size(name.as_str(), size.min, size.max)
                .await
        }
        .await;
        if let Err(e) = persisted {
            if created {
                self.shared.pools.remove(&name);
            }
            return Err(e.into());
        }
        pool.min.store(size.min, Ordering::Release);
        pool.max.store(size.max, Ordering::Release);
        pool.record.store(Arc::new(record));
        tracing::info!(
            binding = %name,
            owner = %pool.current().owner,
            min = size.min,
            max = size.max,
            "{}",
            if created { "binding created" } else { "binding replaced: rolling its warm binders over" }
        );
        if created {
            self.spawn_reconciler(pool.clone());
        } else {
            // Warm binders were made from the old template: replace them by
            // surge (new ones first), so warm handouts go on throughout.
            pool.start_succeeded();
            pool.generation.fetch_add(1, Ordering::AcqRel);
            pool.stale.store(
                pool.counters.get(&pool.counters.available),
                Ordering::Release,
            );
            pool.rolling.store(true, Ordering::Release);
            pool.wake.notify_one();
        }
        Ok((pool, created))
    }

    /// Deletes a binding, stops its binders and then sweeps for orphans
    /// (in the background; [`sweep`](super::sweep)).
    pub async fn delete_binding(&self, name: &BindingName, force: bool) -> Result<(), PoolError> {
        self.refuse_if_shared()?;
        let pool = self
            .get(name)
            .ok_or_else(|| PoolError::NotFound(name.clone()))?;
        let assigned = self
            .binders_of(&pool)
            .iter()
            .filter(|b| matches!(b.state(), State::Assigned | State::Paused))
            .count() as u32;
        if assigned > 0 && !force {
            return Err(PoolError::InUse {
                name: name.clone(),
                assigned,
            });
        }
        self.shared.store.delete_binding(name.as_str()).await?;
        tracing::info!(binding = %name, assigned, "binding deleted: stopping its binders");
        self.shared
            .pools
            .remove_if(name, |_, p| Arc::ptr_eq(p, &pool));
        // Cancel before listing: a binder registered after the list sees the
        // cancellation when its start begins.
        pool.retired.cancel();
        let binders = self.binders_of(&pool);
        self.stop_then_sweep(pool, binders);
        Ok(())
    }

    /// Sets `minPool` and/or `maxPool`. The change is persisted.
    pub async fn resize(
        &self,
        pool: &Arc<Pool>,
        min: Option<u32>,
        max: Option<u32>,
    ) -> Result<PoolCounts, PoolError> {
        self.refuse_if_shared()?;
        let current = pool.counts();
        let max = max.unwrap_or(current.max);
        let min = min.unwrap_or(current.min.min(max));
        if max == 0 || max > self.shared.max_pool_limit {
            return Err(InvalidBinding(format!(
                "maxPool must be between 1 and {}",
                self.shared.max_pool_limit
            ))
            .into());
        }
        if min > max {
            return Err(
                InvalidBinding(format!("minPool ({min}) is larger than maxPool ({max})")).into(),
            );
        }
        self.shared
            .store
            .set_pool_size(pool.name.as_str(), min, max)
            .await?;
        pool.min.store(min, Ordering::Release);
        pool.max.store(max, Ordering::Release);
        pool.wake.notify_one();
        Ok(pool.counts())
    }
}
