//! Per-key quotas (the Onyxia seed's `spec` and `usage`): optional limits on
//! a key's live binders and on the summed memory and CPU of their bindings'
//! `resources`.
//!
//! Usage is kept in atomic counters per key, charged when a binder is handed
//! to (or claimed by) a key and released once when it stops, so the check on
//! the handout path is a few atomic adds, never a scan. Bindings without
//! `resources` count toward the binder limit only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::auth::Owner;
use crate::binding::{InvalidBinding, Resources};

/// A key's limits as configured (`quota = { binders = 5, memory = "4Gi", cpu = "4" }`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binders: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Limits {
    binders: Option<i64>,
    memory: Option<i64>,
    cpu: Option<i64>,
}

impl QuotaSpec {
    fn limits(&self) -> Result<Limits, InvalidBinding> {
        let err = |e: crate::limits::InvalidQuantity| InvalidBinding(e.0);
        if self.binders.is_some_and(|b| b < 0) {
            return Err(InvalidBinding("quota.binders must not be negative".into()));
        }
        Ok(Limits {
            binders: self.binders,
            memory: self
                .memory
                .as_deref()
                .map(|m| crate::limits::memory("quota.memory", m).map(|b| b as i64))
                .transpose()
                .map_err(err)?,
            cpu: self
                .cpu
                .as_deref()
                .map(|c| crate::limits::cpu("quota.cpu", c).map(|m| m as i64 * 1_000_000))
                .transpose()
                .map_err(err)?,
        })
    }
}

/// What one key uses now.
#[derive(Debug, Default)]
struct Usage {
    binders: AtomicI64,
    memory: AtomicI64,
    cpu: AtomicI64,
}

/// What one binder costs its key; released exactly once.
#[derive(Debug)]
pub struct Charge {
    usage: Arc<Usage>,
    memory: i64,
    cpu: i64,
    /// Everyone's anonymous binders, for an anonymous charge.
    total: Option<Arc<Usage>>,
    released: AtomicBool,
}

impl Charge {
    pub fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.usage.binders.fetch_sub(1, Ordering::AcqRel);
            self.usage.memory.fetch_sub(self.memory, Ordering::AcqRel);
            self.usage.cpu.fetch_sub(self.cpu, Ordering::AcqRel);
            if let Some(total) = &self.total {
                total.binders.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("quota exceeded for '{key}': {what}")]
pub struct QuotaExceeded {
    pub key: String,
    pub what: String,
    /// A cap on anonymous binders (it frees up when one stops), not a key's
    /// quota.
    pub anonymous: bool,
}

/// Every key's limits and usage.
#[derive(Debug, Default)]
pub struct Quotas {
    specs: HashMap<String, QuotaSpec>,
    limits: HashMap<String, Limits>,
    usage: DashMap<String, Arc<Usage>>,
    /// Anonymous binders held at once: per client (its address, or its /64)
    /// and in all; 0 is no cap.
    anonymous: (u32, u32),
    by_client: DashMap<std::net::IpAddr, Arc<Usage>>,
    all_anonymous: Arc<Usage>,
}

impl Quotas {
    /// `specs` by key name; an invalid spec is refused (config error).
    pub fn new(specs: HashMap<String, QuotaSpec>) -> Result<Quotas, InvalidBinding> {
        let limits = specs
            .iter()
            .map(|(k, s)| {
                s.limits()
                    .map(|l| (k.clone(), l))
                    .map_err(|e| InvalidBinding(format!("quota of '{k}': {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Quotas {
            specs,
            limits,
            usage: DashMap::new(),
            anonymous: (0, 0),
            by_client: DashMap::new(),
            all_anonymous: Arc::default(),
        })
    }

    /// Caps anonymous binders held at once: `per_client` for one client,
    /// `total` for everyone (0: no cap).
    pub fn with_anonymous_caps(mut self, per_client: u32, total: u32) -> Quotas {
        self.anonymous = (per_client, total);
        self
    }

    /// Charges one anonymous binder to `client` (see
    /// [`crate::ratelimit::client_key`]), or refuses at a cap. Released
    /// like any charge, when the binder stops.
    pub fn try_charge_anonymous(
        &self,
        client: std::net::IpAddr,
    ) -> Result<Option<Arc<Charge>>, QuotaExceeded> {
        let (per_client, total) = self.anonymous;
        if per_client == 0 && total == 0 {
            return Ok(None);
        }
        let usage = match self.by_client.get(&client) {
            Some(u) => u.clone(),
            None => self.by_client.entry(client).or_default().clone(),
        };
        let mine = usage.binders.fetch_add(1, Ordering::AcqRel) + 1;
        let all = self.all_anonymous.binders.fetch_add(1, Ordering::AcqRel) + 1;
        let charge = Arc::new(Charge {
            usage,
            memory: 0,
            cpu: 0,
            total: Some(self.all_anonymous.clone()),
            released: AtomicBool::new(false),
        });
        let over = if per_client > 0 && mine > i64::from(per_client) {
            Some(format!(
                "this address already holds {per_client} anonymous binders, the most one client may; stop one, or use an API key"
            ))
        } else if total > 0 && all > i64::from(total) {
            Some(format!(
                "{total} anonymous binders are running, the most this server allows; try again later"
            ))
        } else {
            None
        };
        match over {
            Some(what) => {
                charge.release();
                Err(QuotaExceeded {
                    key: "anonymous".into(),
                    what,
                    anonymous: true,
                })
            }
            None => Ok(Some(charge)),
        }
    }

    /// Forgets clients that hold no anonymous binder (bounds memory). A
    /// client's usage is kept while anything holds it (a charge, or an
    /// admission between its lookup and its count: it clones under the
    /// map's lock, which this takes too).
    pub fn forget_idle_clients(&self) {
        self.by_client.retain(|_, u| Arc::strong_count(u) > 1);
    }

    fn usage_of(&self, key: &str) -> Arc<Usage> {
        if let Some(u) = self.usage.get(key) {
            return u.clone();
        }
        self.usage.entry(key.to_owned()).or_default().clone()
    }

    /// Charges one binder of `resources` to `owner`, or refuses when that
    /// would pass one of the key's limits. Anonymous callers have no quota.
    pub fn try_charge(
        &self,
        owner: &Owner,
        resources: &Resources,
        enforce: bool,
    ) -> Result<Option<Arc<Charge>>, QuotaExceeded> {
        let Owner::Key(key) = owner else {
            return Ok(None);
        };
        let memory = resources.memory_bytes().unwrap_or(0) as i64;
        let cpu = resources.millicpus().unwrap_or(0) as i64 * 1_000_000;
        let usage = self.usage_of(key);
        let binders = usage.binders.fetch_add(1, Ordering::AcqRel) + 1;
        let mem = usage.memory.fetch_add(memory, Ordering::AcqRel) + memory;
        let cpus = usage.cpu.fetch_add(cpu, Ordering::AcqRel) + cpu;
        let charge = Arc::new(Charge {
            usage,
            memory,
            cpu,
            total: None,
            released: AtomicBool::new(false),
        });
        if enforce {
            if let Some(limits) = self.limits.get(key) {
                let over = if limits.binders.is_some_and(|l| binders > l) {
                    Some(format!(
                        "live binders would be {binders}, the limit is {}",
                        limits.binders.unwrap_or(0)
                    ))
                } else if limits.memory.is_some_and(|l| mem > l) {
                    Some(format!(
                        "memory would be {mem} bytes, the limit is {} bytes",
                        limits.memory.unwrap_or(0)
                    ))
                } else if limits.cpu.is_some_and(|l| cpus > l) {
                    Some(format!(
                        "cpu would be {:.3}, the limit is {:.3}",
                        cpus as f64 / 1e9,
                        limits.cpu.unwrap_or(0) as f64 / 1e9
                    ))
                } else {
                    None
                };
                if let Some(what) = over {
                    charge.release();
                    return Err(QuotaExceeded {
                        key: key.clone(),
                        what,
                        anonymous: false,
                    });
                }
            }
        }
        Ok(Some(charge))
    }

    /// `{"spec": ..., "usage": ...}` for a key.
    pub fn report(&self, key: &str) -> serde_json::Value {
        let usage = self.usage_of(key);
        serde_json::json!({
            "name": key,
            "spec": self.specs.get(key).cloned().unwrap_or_default(),
            "usage": {
                "binders": usage.binders.load(Ordering::Acquire),
                "memory": usage.memory.load(Ordering::Acquire),
                "cpu": usage.cpu.load(Ordering::Acquire) as f64 / 1e9,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn anonymous_binders_are_capped_per_client_and_in_all_and_forgotten_when_gone() {
        let q = Quotas::new(HashMap::new())
            .unwrap()
            .with_anonymous_caps(2, 3);
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = q.try_charge_anonymous(a).unwrap().unwrap();
        let _a2 = q.try_charge_anonymous(a).unwrap().unwrap();
        let over = q.try_charge_anonymous(a).unwrap_err();
        assert!(
            over.anonymous && over.what.contains("this address"),
            "{over:?}"
        );
        let _b1 = q.try_charge_anonymous(b).unwrap().unwrap();
        let all = q
            .try_charge_anonymous("10.0.0.3".parse().unwrap())
            .unwrap_err();
        assert!(all.what.contains("try again later"), "{all:?}");
        a1.release();
        a1.release(); // exactly once
        assert!(q.try_charge_anonymous(a).is_ok());
        q.forget_idle_clients();
        assert_eq!(q.by_client.len(), 2, "clients holding binders are kept");
        drop(_b1);
        q.forget_idle_clients();
        assert_eq!(
            q.by_client.len(),
            1,
            "a client with nothing left is forgotten"
        );
        let off = Quotas::new(HashMap::new()).unwrap();
        assert!(
            off.try_charge_anonymous(a).unwrap().is_none(),
            "no caps: no charge"
        );
    }

    use super::*;

    fn quotas() -> Quotas {
        Quotas::new(HashMap::from([(
            "alice".to_string(),
            QuotaSpec {
                binders: Some(2),
                memory: Some("1Gi".into()),
                cpu: None,
            },
        )]))
        .unwrap()
    }

    fn res(memory: &str) -> Resources {
        Resources {
            memory: Some(memory.into()),
            ..Resources::default()
        }
    }

    #[test]
    fn limits_hold_and_releases_count_once() {
        let q = quotas();
        let alice = Owner::Key("alice".into());
        let a = q.try_charge(&alice, &res("512Mi"), true).unwrap().unwrap();
        let err = q.try_charge(&alice, &res("600Mi"), true).unwrap_err();
        assert!(err.what.contains("memory"), "{err}");
        let b = q.try_charge(&alice, &res("256Mi"), true).unwrap().unwrap();
        let err = q.try_charge(&alice, &res("1Mi"), true).unwrap_err();
        assert!(err.what.contains("live binders"), "{err}");
        a.release();
        a.release();
        assert_eq!(q.report("alice")["usage"]["binders"], 1);
        assert_eq!(q.report("alice")["usage"]["memory"], 256 << 20);
        b.release();
        assert_eq!(q.report("alice")["usage"]["binders"], 0);
        // No limits: charged (for usage) but never refused.
        assert!(q
            .try_charge(&Owner::Key("bob".into()), &res("1Ti"), true)
            .is_ok());
        assert!(q
            .try_charge(&Owner::Anonymous, &res("1Ti"), true)
            .unwrap()
            .is_none());
    }

    #[test]
    fn bad_specs_are_config_errors() {
        let bad = Quotas::new(HashMap::from([(
            "x".to_string(),
            QuotaSpec {
                binders: None,
                memory: Some("lots".into()),
                cpu: None,
            },
        )]));
        assert!(bad.is_err());
    }
}
