//! What binderd says about itself: `/` (the dashboard for a browser),
//! `/healthcheck`, `/configuration`, `/metrics`, `/openapi.json`.

use http::{Request, Response, StatusCode};

use super::reply::{json, text};
use super::request::wants_html;
use super::{dashboard, openapi, views, App, Result, VERSION};
use crate::auth::Caller;
use crate::body::Body;

/// `GET /`: a browser gets the dashboard; JSON clients the service's name
/// and routes.
pub(super) fn root<B>(app: &App, req: &Request<B>) -> Result<Response<Body>> {
    if wants_html(req) {
        return dashboard::serve("index.html");
    }
    json(
        StatusCode::OK,
        &views::Root::new(VERSION, app.pools.isolation()),
    )
}

/// `GET /healthcheck`.
pub(super) fn healthcheck(app: &App) -> Result<Response<Body>> {
    json(
        StatusCode::OK,
        &views::Health {
            status: "available",
            version: VERSION,
            backend: app.pools.backend_kind().as_str(),
        },
    )
}

/// `GET /openapi.json`.
pub(super) fn openapi() -> Result<Response<Body>> {
    text("application/json", openapi::document())
}

/// `GET /metrics`: the counters, with every pool's sizes as gauges; only
/// the bindings the caller may see are named (an admin key sees all).
pub(super) fn metrics(app: &App, caller: &Caller) -> Result<Response<Body>> {
    let pools = app.pools.pools();
    let shown: std::collections::HashSet<(&str, Option<&str>)> = pools
        .iter()
        .filter(|pool| pool.current().access().visible_to(caller))
        .map(|pool| (pool.name.as_str(), pool.profile.as_deref()))
        .collect();
    let page = crate::metrics::render(
        pools
            .iter()
            .filter(|pool| shown.contains(&(pool.name.as_str(), pool.profile.as_deref())))
            .map(|pool| {
                let profile = pool.profile.as_ref().map(|p| p.to_string());
                (pool.name.to_string(), profile, (&**pool).into())
            }),
        |name, profile| shown.contains(&(name, profile)),
    );
    text("text/plain; version=0.0.4", page)
}

/// `GET /configuration`: the version and the public settings, no secrets.
pub(super) fn configuration(app: &App) -> Result<Response<Body>> {
    let c = &app.config;
    let doc = views::Configuration {
        version: VERSION,
        backend: c.backend.as_str(),
        listen: app.local_addr.to_string(),
        public_url: c.public_url.clone(),
        allow_origin: c.allow_origin.clone(),
        default_binding: c.default_binding.as_ref().map(|n| n.to_string()),
        spawn_wait_seconds: c.spawn_wait.as_secs(),
        max_body_bytes: c.max_body_bytes,
        max_pool_limit: c.max_pool_limit,
        start_concurrency: c.start_concurrency,
        api_keys: c.api_keys.len(),
        bindings: app.pools.bindings().len(),
    };
    json(StatusCode::OK, &doc)
}
