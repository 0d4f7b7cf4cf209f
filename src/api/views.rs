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
    #[schema(value_type = String)]
    pub id: crate::binder::BinderId,
    pub binding: String,
    /// The binding's profile it was made from (absent for a binding
    /// without profiles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
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
    /// Whom it was handed to (an API key's name, or `anonymous`), in the
    /// lists a key reads; never in the document anyone with the id reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The state again, in event streams (BinderHub's name for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<&'static str>,
}

impl BinderView {
    pub fn of(binder: &Binder) -> BinderView {
        let state = binder.state();
        let shown = matches!(state, State::Assigned | State::Paused);
        BinderView {
            id: binder.id.clone(),
            binding: binder.binding.to_string(),
            profile: binder.profile.as_ref().map(|p| p.to_string()),
            state: state.public_name(),
            created_at: binder.created_at,
            location: shown.then(|| binder.location()),
            assigned_at: shown.then(|| binder.assigned_at()),
            last_activity: shown.then(|| binder.last_activity()),
            reason: binder.failure().map(str::to_owned),
            uri: None,
            owner: None,
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
    /// The warm pool size binderd aims at now: `minPool`, or more while
    /// demand asks for it (`pool.warm_target`).
    #[serde(rename = "targetPool")]
    pub target_pool: u32,
    /// Warm binders made from the current template (below `available`
    /// while a `PUT` rolls out).
    pub updated: u32,
    /// The share of handouts served warm so far (1 before any).
    #[serde(rename = "warmShare")]
    pub warm_share: f64,
    /// Recent warm handout latency, averaged (µs; 0 before any).
    #[serde(rename = "handoutMicros")]
    pub handout_micros: u64,
    /// Resident memory of one pooled binder (its server, and its warm kernel
    /// if the binding has one), sampled when a binder becomes ready (at
    /// most every 30 s); absent until then, or when the backend cannot tell.
    #[serde(
        rename = "warmBinderMemoryBytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub warm_binder_memory_bytes: Option<u64>,
    /// While the binding's content (a repository's files, an environment
    /// from `requirements` or `packages`) is being made, or after it
    /// failed: where it is, and the build's last line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildView>,
    /// With profiles: the profile these counts are of (for the binding's
    /// own pool, its default profile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// With profiles: every profile's pool (the default one's counts are
    /// the top level's), by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub profiles: Option<std::collections::BTreeMap<String, PoolView>>,
}

impl PoolView {
    /// The counts of a binding's default `pool`; with profiles, each
    /// profile's (the binding's other `pools`) under `profiles`.
    pub fn of(pool: &Pool, pools: &[std::sync::Arc<Pool>], with_name: bool) -> PoolView {
        let mut view = PoolView::one(pool, with_name);
        if view.profile.is_some() && pool.profile.is_none() {
            let mut all = std::collections::BTreeMap::new();
            all.insert(
                view.profile.clone().unwrap_or_default(),
                PoolView::one(pool, false),
            );
            for other in pools.iter().filter(|p| p.profile.is_some()) {
                let v = PoolView::one(other, false);
                all.insert(v.profile.clone().unwrap_or_default(), v);
            }
            view.profiles = Some(all);
        }
        view
    }

    fn one(pool: &Pool, with_name: bool) -> PoolView {
        let c = pool.counts();
        PoolView {
            profile: pool.profile_name().map(|p| p.to_string()),
            profiles: None,
            name: with_name.then(|| pool.name.to_string()),
            running: c.running,
            available: c.available,
            starting: c.starting,
            min_pool: c.min,
            max_pool: c.max,
            target_pool: pool.target(),
            updated: pool.updated(),
            warm_share: pool.warm_share(),
            handout_micros: pool.handout_micros(),
            warm_binder_memory_bytes: pool.warm_binder_memory(),
            build: BuildView::of(pool),
        }
    }
}

/// A content build under way (or failed), as `GET /pools` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuildView {
    /// `fetching`, `building` or `failed`.
    pub phase: &'static str,
    /// The build's last line of output (the failure's reason once failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
}

impl BuildView {
    fn of(pool: &Pool) -> Option<BuildView> {
        use crate::pool::BuildPhase;
        if pool.content_ready() {
            return None;
        }
        let build = pool.build();
        let (phase, line) = match build.phase()? {
            BuildPhase::Ready => return None,
            BuildPhase::Fetching => ("fetching", build.last_line()),
            BuildPhase::Building => ("building", build.last_line()),
            BuildPhase::Failed(why) => ("failed", Some(why)),
        };
        Some(BuildView {
            phase,
            line: line.map(|l| l.chars().take(300).collect()),
        })
    }
}

/// `GET /trends`: one pool's last hour, a point per minute.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrendsView {
    pub name: String,
    /// The profile whose pool this is (absent: the binding's own pool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Oldest first, 60 of them, empty minutes too.
    pub minutes: Vec<MinuteView>,
}

/// One minute of a pool.
#[derive(Debug, Serialize, ToSchema)]
pub struct MinuteView {
    /// The minute's start, unix seconds.
    pub minute: u64,
    /// Handouts answered in the minute, warm and cold.
    pub handouts: u32,
    /// The warm ones' share (absent without handouts).
    #[serde(rename = "warmShare", skip_serializing_if = "Option::is_none")]
    pub warm_share: Option<f64>,
    /// Handout answers' p50 and p99 (µs, an upper bound: a power of two).
    #[serde(rename = "p50Micros", skip_serializing_if = "Option::is_none")]
    pub p50_micros: Option<u64>,
    #[serde(rename = "p99Micros", skip_serializing_if = "Option::is_none")]
    pub p99_micros: Option<u64>,
    /// The pool's counts as last sampled in the minute (every 5 s; absent:
    /// not sampled, binderd was not running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<u32>,
    #[serde(rename = "targetPool", skip_serializing_if = "Option::is_none")]
    pub target: Option<u32>,
}

impl TrendsView {
    pub fn of(pool: &Pool, points: Vec<crate::pool::trends::Point>) -> TrendsView {
        TrendsView {
            name: pool.name.to_string(),
            profile: pool.profile.as_deref().map(str::to_owned),
            minutes: points
                .into_iter()
                .map(|p| MinuteView {
                    minute: p.minute,
                    handouts: p.handouts,
                    warm_share: p.warm_share,
                    p50_micros: p.p50_micros,
                    p99_micros: p.p99_micros,
                    available: p.available,
                    running: p.running,
                    target: p.target,
                })
                .collect(),
        }
    }
}

/// `GET /`: what this is and where to go.
#[derive(Debug, Serialize, ToSchema)]
pub struct Root {
    pub name: &'static str,
    pub version: &'static str,
    /// How binders are kept from binderd, the host and each other.
    pub isolation: crate::backend::Isolation,
    pub routes: [&'static str; 9],
}

impl Root {
    pub fn new(version: &'static str, isolation: crate::backend::Isolation) -> Root {
        Root {
            name: "binderd",
            version,
            isolation,
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

/// One event of BinderHub's launch stream (`GET /build/...`), with
/// BinderHub's field names.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LaunchEvent {
    /// `built`, `launching`, `ready` or `failed`.
    pub phase: &'static str,
    pub message: String,
    /// Failed: the HTTP status BinderHub would name (400 for a request it
    /// refuses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(rename = "imageName", skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// Ready: the server's absolute URL (`.../user/{token}/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Ready: the token the server accepts (`Authorization: token ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binder_ref_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binder_launch_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binder_request: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binder_persistent_request: Option<String>,
}

impl LaunchEvent {
    pub fn phase(phase: &'static str, message: impl Into<String>) -> LaunchEvent {
        LaunchEvent {
            phase,
            message: message.into(),
            status_code: None,
            image_name: None,
            url: None,
            token: None,
            image: None,
            repo_url: None,
            binder_ref_url: None,
            binder_launch_host: None,
            binder_request: None,
            binder_persistent_request: None,
        }
    }

    pub fn failed(message: impl Into<String>) -> LaunchEvent {
        LaunchEvent::phase("failed", message)
    }

    pub fn image_name(mut self, image: &str) -> LaunchEvent {
        self.image_name = Some(image.to_owned());
        self
    }

    /// `ready`: where the server is (`url`, absolute) and its token.
    /// `repo` is the repository's `host/path`, `request` the `v2/...` path.
    pub fn ready(
        binder: &Binder,
        base: &str,
        url: String,
        image: &str,
        repo: &str,
        request: &str,
    ) -> LaunchEvent {
        LaunchEvent {
            url: Some(url.clone()),
            token: Some(binder.token.to_string()),
            image: Some(image.to_owned()),
            repo_url: Some(format!("https://{repo}")),
            binder_ref_url: Some(format!("https://{repo}")),
            binder_launch_host: Some(format!("{base}/")),
            binder_request: Some(request.to_owned()),
            binder_persistent_request: Some(request.to_owned()),
            ..LaunchEvent::phase("ready", format!("server running at {url}\n"))
        }
    }
}

/// `GET /versions`, as BinderHub answers it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Versions {
    pub builder: &'static str,
    pub binderhub: &'static str,
    /// What builds images: here nothing does (`{"builds": false, ...}`).
    pub builder_info: BuilderInfo,
}

/// `builder_info` of `GET /versions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuilderInfo {
    /// Always false: binderd serves prebuilt images.
    pub builds: bool,
    pub binderd: &'static str,
}

/// `GET /health`, as BinderHub answers it.
#[derive(Debug, Serialize, ToSchema)]
pub struct HubHealth {
    pub ok: bool,
    pub checks: Vec<HealthCheck>,
    /// How binders are kept apart; `level: none` means trusted code only.
    pub isolation: crate::backend::Isolation,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthCheck {
    pub service: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One server-sent event as the OpenAPI document describes an event
/// stream: its `data` line (JSON) and its type (`message` when unnamed).
#[derive(Debug, Serialize, ToSchema)]
pub struct SseEvent {
    /// The event's JSON document.
    pub data: String,
    pub event: Option<String>,
}
