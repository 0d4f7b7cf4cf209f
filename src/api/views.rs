//! The JSON shapes binderd answers with. Handlers build these (never ad-hoc
//! JSON), and the OpenAPI document is derived from the same types, so the
//! document cannot drift from the answers.

use serde::Serialize;
use utoipa::ToSchema;

use crate::binder::{Binder, State};
use crate::pool::Pool;

/// `{"error": {"code": 404, "message": "..."}}`; tmpnb's full answer adds
/// `"status": "full"`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: u16,
    pub message: String,
}

/// A binder as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BinderView {
    pub id: String,
    pub binding: String,
    /// `starting`, `ready`, `paused`, `stopping`, `stopped` or `failed`.
    pub state: &'static str,
    /// Unix seconds.
    pub created_at: u64,
    /// `/user/{token}/`, once ready (and while paused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<u64>,
    /// Why it failed or was stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `/binders/{binding}/{id}`, in lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// The state again, in event streams (BinderHub's name for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<&'static str>,
}

impl BinderView {
    pub fn of(binder: &Binder) -> BinderView {
        let state = binder.state();
        let shown = matches!(state, State::Assigned | State::Paused);
        BinderView {
            id: binder.id.to_string(),
            binding: binder.binding.to_string(),
            state: state.public_name(),
            created_at: binder.created_at,
            location: shown.then(|| binder.location()),
            assigned_at: shown.then(|| binder.assigned_at()),
            last_activity: shown.then(|| binder.last_activity()),
            reason: binder.failure().map(str::to_owned),
            uri: None,
            phase: None,
        }
    }
}

/// A pool's counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Every live container of the binding.
    pub running: u32,
    /// Started, answering and not handed out.
    pub available: u32,
    pub starting: u32,
    #[serde(rename = "minPool")]
    pub min_pool: u32,
    #[serde(rename = "maxPool")]
    pub max_pool: u32,
}

impl PoolView {
    pub fn of(pool: &Pool, with_name: bool) -> PoolView {
        let c = pool.counts();
        PoolView {
            name: with_name.then(|| pool.name.to_string()),
            running: c.running,
            available: c.available,
            starting: c.starting,
            min_pool: c.min,
            max_pool: c.max,
        }
    }
}

/// `GET /`: what this is and where to go.
#[derive(Debug, Serialize, ToSchema)]
pub struct Root {
    pub name: &'static str,
    pub version: &'static str,
    pub routes: [&'static str; 9],
}

impl Root {
    pub fn new(version: &'static str) -> Root {
        Root {
            name: "binderd",
            version,
            routes: [
                "/bindings",
                "/binders/{binding}",
                "/pools",
                "/api/spawn/",
                "/api/stats",
                "/spawn/{path}",
                "/user/{token}/",
                "/healthcheck",
                "/configuration",
            ],
        }
    }
}

/// `GET /configuration`: the build and the public settings, no secrets
/// (keys are only counted).
#[derive(Debug, Serialize, ToSchema)]
pub struct Configuration {
    pub version: &'static str,
    pub backend: &'static str,
    pub listen: String,
    pub public_url: Option<String>,
    pub allow_origin: Option<String>,
    pub default_binding: Option<String>,
    pub spawn_wait_seconds: u64,
    pub max_body_bytes: usize,
    pub max_pool_limit: u32,
    pub start_concurrency: usize,
    pub api_keys: usize,
    pub bindings: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
    pub backend: &'static str,
}

/// tmpnb's spawn answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Spawned {
    /// `/user/{token}/`
    pub url: String,
    pub id: String,
}

/// tmpnb's stats.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub available: u32,
    pub capacity: u32,
    pub version: &'static str,
    pub container_image: String,
}

/// Answer to `DELETE /bindings/{name}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleting {
    pub name: String,
    pub status: &'static str,
}

/// Answer to `DELETE /binders/{binding}/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stopping {
    pub id: String,
    pub state: &'static str,
}

/// A key's quota.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaView {
    pub name: String,
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    #[schema(value_type = Object)]
    pub usage: serde_json::Value,
}
