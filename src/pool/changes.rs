//! Bindings: create, replace, delete, and resize their pools. Each change
//! is committed to the store before it takes effect in memory.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{BindingRecord, Pool, PoolCounts, PoolError, PoolKey, Pools};
use crate::backend::BackendError;
use crate::binder::{now_unix, State};
use crate::binding::{Binding, BindingName, InvalidBinding};
use crate::store::{Source, StoredBinding};

impl Pools {
    /// In shared mode a binding of the config file is the same file's on
    /// every replica: changed there, not through one replica's API.
    fn refuse_if_file_in_shared(&self, pool: &Pool) -> Result<(), PoolError> {
        if self.cluster().is_some() && pool.record().source == Source::File {
            return Err(BackendError::Unsupported(format!(
                "binding '{}' comes from the config file every replica reads (deploy/: the binderd ConfigMap): change it there",
                pool.name
            ))
            .into());
        }
        Ok(())
    }

    /// Shared mode's `put_binding`: the entry goes into the shared document
    /// (a create fenced against another replica's), then is applied here as
    /// every replica applies it.
    async fn put_shared_binding(
        &self,
        name: BindingName,
        mut record: BindingRecord,
        replace: bool,
    ) -> Result<(Arc<Pool>, bool), PoolError> {
        let existing = self.binding(&name);
        if let Some(pool) = &existing {
            if !replace {
                return Err(PoolError::Exists(name));
            }
            self.refuse_if_file_in_shared(pool)?;
            let old = pool.record();
            record.owner = old.owner.clone();
            record.created_at = old.created_at;
        }
        let size = record.binding.pool;
        let entry = super::replicas::SharedBinding {
            binding: record.binding.clone(),
            owner: record.owner.clone(),
            created_at: record.created_at,
            min: size.min,
            max: size.max,
        };
        if !self
            .share_binding(name.as_str(), Some(&entry), existing.is_none())
            .await?
        {
            return Err(PoolError::Exists(name));
        }
        Ok(match existing {
            Some(pool) => {
                self.replace_template(&pool, record.binding);
                pool.min.store(size.min, Ordering::Release);
                pool.max.store(size.max, Ordering::Release);
                (pool, false)
            }
            None => {
                let pool = self.adopt_shared(entry);
                tracing::info!(binding = %name, "binding created (shared)");
                self.spawn_pool_tasks(pool.clone());
                (pool, true)
            }
        })
    }

    /// A new template for `pool`: warm binders made from the old one are
    /// replaced by surge (new ones first), so warm handouts go on
    /// throughout.
    pub(super) fn replace_template(&self, pool: &Arc<Pool>, binding: Binding) {
        let old = pool.record();
        pool.record.store(Arc::new(BindingRecord {
            binding,
            ..(*old).clone()
        }));
        pool.start_succeeded();
        pool.generation.fetch_add(1, Ordering::AcqRel);
        pool.stale.store(
            pool.counters.get(&pool.counters.available),
            Ordering::Release,
        );
        pool.rolling.store(true, Ordering::Release);
        pool.wake.notify_one();
    }

    /// Creates a binding (or replaces it when `replace`). Returns the pool and
    /// whether it was created.
    pub async fn put_binding(
        &self,
        mut binding: Binding,
        owner: &str,
        replace: bool,
    ) -> Result<(Arc<Pool>, bool), PoolError> {
        let name = binding.validate(
            self.backend_kind().runs_on_host(),
            self.inner.max_pool_limit,
        )?;
        // A repository's ref is resolved now (what can be known is a 400);
        // `packages` alone are built by the reconciler, before the pool fills.
        if binding.content_from() == crate::binding::ContentFrom::Repo {
            self.resolve_content(&mut binding).await?;
        }
        let now = now_unix();
        let mut record =
            BindingRecord::of_document(name.clone(), binding, owner.to_owned(), now, Source::Api);
        if self.cluster().is_some() {
            if !record.document().profiles.is_empty() {
                return Err(InvalidBinding(
                    "profiles are not offered with several replicas (shared state) yet: make a binding per option".into(),
                )
                .into());
            }
            return self.put_shared_binding(name, record, replace).await;
        }
        let _changing = self.inner.changes.lock().await;
        let mut others = Vec::new();
        let (pool, created) = match self.inner.pools.entry(PoolKey::default_of(name.clone())) {
            dashmap::Entry::Occupied(_) if !replace => return Err(PoolError::Exists(name)),
            dashmap::Entry::Occupied(o) => {
                let pool = o.get().clone();
                let old = pool.record();
                if old.document() == record.document() {
                    // The same document, the same commit: nothing to roll.
                    return Ok((pool, false));
                }
                record.owner = old.owner.clone();
                record.created_at = old.created_at;
                (pool, false)
            }
            dashmap::Entry::Vacant(v) => {
                let mut pools = self.new_pools(&record);
                others = pools.split_off(1);
                v.insert(pools[0].clone());
                (pools.remove(0), true)
            }
        };
        // The entry's lock is let go: the other profiles' pools join
        // (another key may live in the same shard).
        self.register_pools(&others);
        let persisted = self.persist(&name, &record).await;
        if let Err(e) = persisted {
            if created {
                self.unregister_binding(&pool);
            }
            return Err(e.into());
        }
        let size = record.binding.pool;
        tracing::info!(
            binding = %name,
            owner = %record.owner,
            min = size.min,
            max = size.max,
            profiles = record.document().profiles.len(),
            "{}",
            if created { "binding created" } else { "binding replaced: rolling over the pools whose template changed" }
        );
        if created {
            for pool in std::iter::once(&pool).chain(&others) {
                self.spawn_reconciler(pool.clone());
            }
        } else {
            self.apply_record(&pool, record);
        }
        Ok((pool, created))
    }

    /// Writes a binding as put, and the sizes of each of its pools.
    async fn persist(
        &self,
        name: &BindingName,
        record: &BindingRecord,
    ) -> Result<(), crate::store::StoreError> {
        let stored = StoredBinding {
            name: name.to_string(),
            spec: serde_json::to_string(record.document()).unwrap_or_default(),
            owner: record.owner.clone(),
            created_at: record.created_at,
            source: Source::Api,
        };
        let mut sizes = vec![(name.to_string(), record.binding.pool)];
        let default = record.document().default_profile().map(|p| p.name.clone());
        for p in &record.document().profiles {
            if Some(&p.name) == default.as_ref() {
                continue; // the binding's own pool, filed under its name
            }
            sizes.push((
                format!("{name}/{}", p.name),
                record.document().with_profile(p).pool,
            ));
        }
        async {
            self.inner.store.put_binding(stored).await?;
            for (key, size) in &sizes {
                self.inner
                    .store
                    .set_pool_size(key, size.min, size.max)
                    .await?;
            }
            Ok::<_, crate::store::StoreError>(())
        }
        .await
    }

    /// What can be known of a binding's repository at create time (400s):
    /// its URL and paths, its ref (resolved here to a commit, kept as
    /// `resolvedRef`), the folder and requirements file at that commit,
    /// the tree's size. The fetch stays in the cache for the pool.
    async fn resolve_content(&self, binding: &mut Binding) -> Result<(), PoolError> {
        if self.backend_kind() == crate::backend::BackendKind::Kubernetes
            && binding.requirements.is_some()
        {
            return Err(InvalidBinding(
                "the kubernetes backend does not build environments from 'requirements' (its nodes pull images from a registry): build an image with them, push it, and name it in 'image'".into(),
            )
            .into());
        }
        let cache = &self.inner.content;
        cache.check(binding)?;
        let commit = cache.resolve(binding).await?;
        cache.fetch(binding, &commit).await?;
        binding.resolved_ref = Some(commit);
        Ok(())
    }

    /// Deletes a binding, stops its binders and then sweeps for orphans
    /// (in the background; [`sweep`](super::sweep)).
    pub async fn delete_binding(&self, name: &BindingName, force: bool) -> Result<(), PoolError> {
        let pool = self
            .binding(name)
            .ok_or_else(|| PoolError::NotFound(name.clone()))?;
        self.refuse_if_file_in_shared(&pool)?;
        let _changing = self.inner.changes.lock().await;
        let assigned = self
            .binders_of(name)
            .iter()
            .filter(|e| matches!(e.binder.state(), State::Assigned | State::Paused))
            .count() as u32;
        if assigned > 0 && !force {
            return Err(PoolError::InUse {
                name: name.clone(),
                assigned,
            });
        }
        if self.cluster().is_some() {
            self.share_binding(name.as_str(), None, false).await?;
        } else {
            self.inner.store.delete_binding(name.as_str()).await?;
        }
        tracing::info!(binding = %name, assigned, "binding deleted: stopping its binders");
        self.retire(&pool);
        Ok(())
    }

    /// Takes a deleted binding's pools out and stops their binders.
    pub(super) fn retire(&self, pool: &Arc<Pool>) {
        let pools = self.unregister_binding(pool);
        // Cancel before listing: a binder registered after the list sees the
        // cancellation when its start begins.
        for retired in &pools {
            retired.retired.cancel();
        }
        let mut by_pool: Vec<(Arc<Pool>, Vec<Arc<crate::binder::Binder>>)> = Vec::new();
        for e in self.binders_of(&pool.name) {
            match by_pool.iter_mut().find(|(p, _)| Arc::ptr_eq(p, &e.pool)) {
                Some((_, binders)) => binders.push(e.binder),
                None => by_pool.push((e.pool, vec![e.binder])),
            }
        }
        if by_pool.is_empty() {
            by_pool.push((pool.clone(), Vec::new()));
        }
        for (pool, binders) in by_pool {
            self.stop_then_sweep(pool, binders);
        }
    }

    /// Sets `minPool` and/or `maxPool`. The change is persisted.
    pub async fn resize(
        &self,
        pool: &Arc<Pool>,
        min: Option<u32>,
        max: Option<u32>,
    ) -> Result<PoolCounts, PoolError> {
        self.refuse_if_file_in_shared(pool)?;
        let current = pool.counts();
        let max = max.unwrap_or(current.max);
        let min = min.unwrap_or(current.min.min(max));
        if max == 0 || max > self.inner.max_pool_limit {
            return Err(InvalidBinding(format!(
                "maxPool must be between 1 and {}",
                self.inner.max_pool_limit
            ))
            .into());
        }
        if min > max {
            return Err(
                InvalidBinding(format!("minPool ({min}) is larger than maxPool ({max})")).into(),
            );
        }
        if self.cluster().is_some() {
            let mut entry = super::replicas::SharedBinding::of(pool);
            (entry.min, entry.max) = (min, max);
            self.share_binding(pool.name.as_str(), Some(&entry), false)
                .await?;
        } else {
            self.inner
                .store
                .set_pool_size(&pool.key().filed_as(), min, max)
                .await?;
        }
        pool.min.store(min, Ordering::Release);
        pool.max.store(max, Ordering::Release);
        pool.wake.notify_one();
        Ok(pool.counts())
    }
}
