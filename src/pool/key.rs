//! Which pool a request means: a [`PoolKey`] (a binding and one of its
//! profiles), and [`Pools::resolve`], the one place the rules of a choice
//! are applied (an unknown profile, a `keys_only` one without a key, a
//! binding that offers none) for every launch path.
//!
//! Every pool is an entry of the registry under its key. A binding's
//! default profile is an entry like the others; its key names no
//! profile (`profile: None`), which is also the key of a binding
//! without profiles, so that what the store files under the binding's name
//! (its pool sizes, its binders) keeps meaning the pool a plain handout
//! takes from.

use std::sync::Arc;

use super::{Pool, PoolError, Pools};
use crate::auth::Caller;
use crate::binding::BindingName;

/// A pool's key: its binding and profile (`None`: the binding's default).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub binding: BindingName,
    pub profile: Option<Arc<str>>,
}

impl PoolKey {
    /// The pool a handout without a choice takes from.
    pub fn default_of(binding: BindingName) -> PoolKey {
        PoolKey {
            binding,
            profile: None,
        }
    }

    /// Where the store files this pool's sizes: the binding's name, or
    /// `binding/profile` (no binding name has a `/`).
    pub fn filed_as(&self) -> String {
        match &self.profile {
            Some(p) => format!("{}/{p}", self.binding),
            None => self.binding.to_string(),
        }
    }
}

/// Why a choice of profile names no pool to hand out from.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("binding '{binding}' offers no profiles; asked for '{asked}'")]
    NoProfiles { binding: BindingName, asked: String },
    #[error("binding '{binding}' has no profile '{asked}': choose one of {choices}")]
    Unknown {
        binding: BindingName,
        asked: String,
        choices: String,
    },
    #[error(
        "profile '{profile}' of binding '{binding}' is for API keys only: send one in Authorization"
    )]
    KeysOnly {
        binding: BindingName,
        profile: String,
    },
    /// Put again meanwhile, between reading the document and the pools.
    #[error("profile '{profile}' of binding '{binding}' is being replaced: try again")]
    Replacing {
        binding: BindingName,
        profile: String,
    },
}

impl Pools {
    /// The pool under `key`.
    pub fn pool(&self, key: &PoolKey) -> Option<Arc<Pool>> {
        self.inner.pools.get(key).map(|p| p.value().clone())
    }

    /// The pool of the binding whose default pool is `pool` (found, and
    /// shown to `caller`, by the caller) that serves profile `chosen`
    /// (`None`: its default): 400 for a profile it does not offer (naming
    /// those it does), 403 for a `keys_only` one without a key.
    pub fn resolve(
        &self,
        pool: &Arc<Pool>,
        chosen: Option<&str>,
        caller: &Caller,
    ) -> Result<Arc<Pool>, PoolError> {
        let record = pool.current();
        let document = record.document();
        let profile = match chosen {
            None => match document.default_profile() {
                None => return Ok(pool.clone()),
                Some(p) => p,
            },
            Some(asked) if document.profiles.is_empty() => {
                return Err(Refused::NoProfiles {
                    binding: pool.name.clone(),
                    asked: crate::binding::printable(asked),
                }
                .into())
            }
            Some(asked) => document.profile(asked).ok_or_else(|| Refused::Unknown {
                binding: pool.name.clone(),
                asked: crate::binding::printable(asked),
                choices: document.profile_names(),
            })?,
        };
        if profile.keys_only && caller.key_name().is_none() {
            return Err(Refused::KeysOnly {
                binding: pool.name.clone(),
                profile: profile.name.clone(),
            }
            .into());
        }
        if document.default_profile().map(|p| &p.name) == Some(&profile.name) {
            return Ok(pool.clone());
        }
        let key = PoolKey {
            binding: pool.name.clone(),
            profile: Some(Arc::from(profile.name.as_str())),
        };
        self.pool(&key).ok_or_else(|| {
            Refused::Replacing {
                binding: pool.name.clone(),
                profile: profile.name.clone(),
            }
            .into()
        })
    }
}
