//! Start-up (`Pools::restore`): rebuild the pools from the config files and the store, and adopt
//! the containers a previous run left behind. It starts no background task
//! (`binderd::run` starts them all once it returns); only the readiness
//! check of each adopted pooled binder.
//!
//! The store says what each binder was (its token, whether it was handed
//! out); the backend's labelled containers say what still runs. Assigned
//! binders that still run keep their token and location; pooled or starting
//! ones are checked again and rejoin the pool; everything else (dead, of a
//! deleted binding, unknown to the store) is removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{BindingRecord, Pool, PoolError, PoolKey, Pools};
use crate::binder::{Binder, State};
use crate::binding::{Binding, BindingName};
use crate::store::{Loaded, Source};

/// What became of one stored binder.
enum Adopted {
    Assigned,
    Pooled,
    Removed,
}

/// What adoption did, for the start-up log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub bindings: usize,
    pub assigned: usize,
    pub pooled: usize,
    pub removed: usize,
}

impl Pools {
    /// Rebuilds the pools and adopts what still runs (see the module doc).
    pub async fn restore(
        &self,
        loaded: Loaded,
        file_bindings: Vec<Binding>,
    ) -> Result<Restored, PoolError> {
        let mut report = Restored::default();
        // Shared mode: the API's bindings and sizes are the cluster's (the
        // shared document), not this replica's store.
        let shared = self.cluster().is_some();
        let (stored_bindings, stored_sizes) = if shared {
            (Vec::new(), Vec::new())
        } else {
            (loaded.bindings, loaded.pool_sizes)
        };
        for entry in self.shared_bindings().await {
            self.adopt_shared(entry);
        }
        self.restore_stored_bindings(stored_bindings);
        self.restore_file_bindings(file_bindings);
        self.restore_sizes(stored_sizes);
        report.bindings = self.bindings().len();

        if shared {
            // Shared mode: the pods' claims are the record, and every
            // replica mirrors every pod from its watch (`replicas`); this
            // replica's rows from an earlier life are not.
            for stored in loaded.binders {
                let _ = self.inner.store.delete_binder(&stored.id).await;
            }
            return Ok(report);
        }
        let mut running: HashMap<String, _> = self
            .inner
            .backend
            .list()
            .await?
            .into_iter()
            .map(|d| (d.binder_id.clone(), d))
            .collect();
        // After a crash that may have lost the page cache, a binder the
        // store calls pooled may have been handed out with its journal line
        // lost: replaced, never handed out (again).
        let trust_pooled = loaded.previous.handouts_all_recorded();
        if !trust_pooled {
            tracing::warn!("binderd stopped uncleanly and the machine has booted since: pooled binders are replaced, not reused (a handout's record may have been lost)");
        }
        for stored in loaded.binders {
            let found = running.remove(&stored.id);
            match self.adopt(stored, found, trust_pooled).await {
                Adopted::Assigned => report.assigned += 1,
                Adopted::Pooled => report.pooled += 1,
                Adopted::Removed => report.removed += 1,
            }
        }
        report.removed += self.remove_unknown(running).await;
        Ok(report)
    }

    /// The bindings the store kept (API-made), each checked again as here.
    fn restore_stored_bindings(&self, stored_bindings: Vec<crate::store::StoredBinding>) {
        let runs_on_host = self.backend_kind().runs_on_host();
        for stored in stored_bindings {
            let parsed = serde_json::from_str::<Binding>(&stored.spec)
                .map_err(|e| e.to_string())
                .and_then(|mut b| {
                    if let Some(said) = b.resources.upgrade_legacy() {
                        tracing::warn!(binding = %stored.name, "{said}");
                    }
                    b.validate(runs_on_host, self.inner.max_pool_limit)
                        .map(|name| (name, b))
                        .map_err(|e| e.to_string())
                });
            match parsed {
                Ok((name, binding)) => self.insert_pool(BindingRecord::of_document(
                    name,
                    binding,
                    stored.owner,
                    stored.created_at,
                    stored.source,
                )),
                Err(e) => {
                    tracing::error!(binding = %stored.name, error = %e, "stored binding is not valid here; skipped");
                }
            }
        }
    }

    /// The config files' bindings, which replace API ones of the same name.
    fn restore_file_bindings(&self, file_bindings: Vec<Binding>) {
        for binding in file_bindings {
            let Ok(name) = BindingName::parse(&binding.name) else {
                continue;
            };
            if self
                .binding(&name)
                .is_some_and(|p| p.record().source == Source::Api)
            {
                tracing::warn!(binding = %name, "a file binding replaces the API binding of the same name");
            }
            self.insert_pool(BindingRecord::of_document(
                name,
                binding,
                "config".into(),
                crate::binder::now_unix(),
                Source::File,
            ));
        }
    }

    /// Pool sizes set through `/pools`, by the key the store files them under.
    fn restore_sizes(&self, stored_sizes: Vec<(String, u32, u32)>) {
        for (key, min, max) in stored_sizes {
            let Some(pool) = self.pool_by_key(&key) else {
                continue;
            };
            let max = max.clamp(1, self.inner.max_pool_limit);
            pool.min
                .store(min.min(max), std::sync::atomic::Ordering::Release);
            pool.max.store(max, std::sync::atomic::Ordering::Release);
        }
    }

    /// The pool, container and state a stored binder comes back with, or
    /// `None` when it is to be removed (dead, of a deleted binding, or
    /// pooled when pooled binders are not trusted).
    async fn still_live(
        &self,
        stored: &crate::store::StoredBinder,
        found: Option<&crate::backend::Discovered>,
        trust_pooled: bool,
    ) -> Option<(Arc<Pool>, crate::backend::Instance, State)> {
        let pool = self.pool_by_key(&stored.binding).or_else(|| {
            // A removed profile's handed-out binder: its binding's pool
            // keeps it until it is culled.
            let (name, _) = stored.binding.split_once('/')?;
            matches!(stored.state, State::Assigned | State::Paused)
                .then(|| self.binding(&BindingName::parse(name).ok()?))
                .flatten()
        });
        let live_state = match stored.state {
            State::Assigned => Some(State::Assigned),
            State::StartingClaimed => Some(State::StartingClaimed),
            State::Idle | State::Starting if trust_pooled => Some(State::Starting),
            State::Paused => Some(State::Paused),
            _ => None,
        };
        // A paused binder's container is stopped (or, for a process,
        // gone): it is kept with its files. Others must still run.
        let instance = match (&pool, found, live_state) {
            (Some(_), found, Some(State::Paused)) => found
                .map(|d| d.instance.clone())
                .or_else(|| stored.instance.clone()),
            (Some(_), Some(d), Some(_)) => self
                .inner
                .backend
                .is_running(&d.instance)
                .await
                .unwrap_or(false)
                .then(|| d.instance.clone()),
            _ => None,
        };
        Some((pool?, instance?, live_state?))
    }

    /// One binder of the store, with its container if one still runs:
    /// adopted into its pool, or removed (container and record).
    async fn adopt(
        &self,
        stored: crate::store::StoredBinder,
        found: Option<crate::backend::Discovered>,
        trust_pooled: bool,
    ) -> Adopted {
        let live = self.still_live(&stored, found.as_ref(), trust_pooled).await;
        let Some((pool, instance, state)) = live else {
            if let Some(d) = found {
                if let Err(e) = self.inner.backend.stop(&stored.id, &d.instance).await {
                    tracing::warn!(binder = %stored.id, error = %e, "cannot remove container");
                }
            }
            if let Err(e) = self.inner.store.delete_binder(&stored.id).await {
                tracing::warn!(binder = %stored.id, error = %e, "cannot delete binder record");
            }
            return Adopted::Removed;
        };
        let binder = Arc::new(
            Binder::restore(
                stored.id.as_str().into(),
                stored.token.as_str().into(),
                pool.name.clone(),
                state,
                stored.created_at,
            )
            .of_profile(stored.binding.split_once('/').map(|(_, p)| Arc::from(p))),
        );
        if let Some(owner) = stored.owner {
            // Charged as before the restart, whatever the limits say now.
            let resources = &pool.record().binding.resources;
            let charge = self.inner.quotas.try_charge(&owner, resources, false);
            binder.hand_to(owner, charge.ok().flatten());
        }
        binder.set_assigned_at(stored.assigned_at);
        binder.set_instance(instance.clone());
        pool.counters.adopted();
        pool.counters.entered(state);
        self.register(&pool, &binder);
        if state != State::Paused {
            if let Err(e) = self.inner.backend.adopt(&binder.id, &instance).await {
                tracing::warn!(binder = %binder.id, error = %e, "cannot watch adopted container");
            }
        }
        tracing::info!(binder = %binder.id, binding = %pool.name, state = state.public_name(), "adopted");
        if matches!(state, State::Assigned | State::Paused) {
            self.watch_for_culling(&binder);
            return Adopted::Assigned;
        }
        let this = self.clone();
        let timeout = Duration::from_secs(pool.record().binding.start_timeout_seconds);
        tokio::spawn(async move {
            this.settle(&pool, &binder, &instance, timeout).await;
        });
        Adopted::Pooled
    }

    /// Containers labelled as ours that the store has no record of.
    async fn remove_unknown(&self, running: HashMap<String, crate::backend::Discovered>) -> usize {
        let mut removed = 0;
        for (id, d) in running {
            tracing::info!(binder = %id, binding = %d.binding, "removing a container binderd has no record of");
            if let Err(e) = self.inner.backend.stop(&id, &d.instance).await {
                tracing::warn!(binder = %id, error = %e, "cannot remove container");
            }
            removed += 1;
        }
        removed
    }

    /// Registers a binding's pools, in place of any of the same name.
    fn insert_pool(&self, mut record: BindingRecord) {
        if self.cluster().is_some() && record.document.is_some() {
            tracing::error!(binding = %record.name, "profiles are not offered with several replicas (shared state) yet: only the default profile is served");
            record.document = None;
        }
        self.inner.pools.retain(|t, _| t.binding != record.name);
        let pools = self.new_pools(&record);
        self.register_pools(&pools);
    }

    /// The pool the store files under `key`: a binding's name, or
    /// `binding/profile` for a profile's own pool (the default profile's
    /// binders are filed so too, and are in the pool named by the binding).
    fn pool_by_key(&self, key: &str) -> Option<Arc<Pool>> {
        let (name, profile) = match key.split_once('/') {
            Some((name, profile)) => (name, Some(profile)),
            None => (key, None),
        };
        let mut target = PoolKey::default_of(BindingName::parse(name).ok()?);
        let default = self.pool(&target)?;
        let Some(profile) = profile else {
            return Some(default);
        };
        target.profile = Some(Arc::from(profile));
        self.pool(&target).or_else(|| {
            let record = default.current();
            let named = record.document().default_profile()?;
            (named.name == profile).then(|| default.clone())
        })
    }
}
