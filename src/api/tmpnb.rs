//! tmpnb's routes, for clients written against it (thebe, embedded pages):
//! `POST /api/spawn/`, `GET /api/stats`, `GET /spawn/{path}`.
//!
//! They share the handout path with `POST /binders/{binding}`; when nothing
//! is warm they wait (up to `spawn_wait_seconds`) for the container started
//! for them, as tmpnb users expect an answer with a URL, not a 202.

use std::sync::Arc;

use super::binders::visible_pool;
use super::reply::json;
use super::request::read_body;
use super::target::{self, choose_profile};
use super::views::{Spawned, Stats};
use super::{ApiError, App, Result, VERSION};
use crate::auth::Caller;
use crate::binder::{Binder, State};
use crate::body::Body;
use crate::pool::{Handout, Pool, PoolError};
use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;

/// The binding a tmpnb request means: the one it names, the configured
/// default, or the only one there is.
fn default_pool(app: &App, caller: &Caller, named: Option<&str>) -> Result<Arc<Pool>> {
    if let Some(name) = named {
        return visible_pool(app, caller, name);
    }
    if let Some(name) = &app.config.default_binding {
        return visible_pool(app, caller, name.as_str());
    }
    let visible: Vec<_> = app
        .pools
        .bindings()
        .into_iter()
        .filter(|p| p.current().access().visible_to(caller))
        .collect();
    match visible.as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(ApiError::NotFound("there is no binding to spawn from".into())),
        _ => Err(ApiError::BadRequest(
            "several bindings exist and no default_binding is configured: send {\"binding\": \"name\"}".into(),
        )),
    }
}

/// Hands out a binder and waits for it if it has to start.
async fn handout_and_wait(
    app: &App,
    caller: &Caller,
    pool: &Arc<Pool>,
    client: Option<std::net::IpAddr>,
) -> Result<Arc<Binder>> {
    let binder = match app.pools.handout(pool, caller.owner(), client).await {
        Ok(Handout::Ready(b)) => return Ok(b),
        Ok(Handout::Starting(b)) => b,
        Err(PoolError::Full { .. }) => {
            return Err(ApiError::TooManyRequests {
                message: format!("binding '{}' is full: try again later", pool.name),
                retry_after: 5,
                tmpnb: true,
            })
        }
        Err(e) => return Err(e.into()),
    };
    match binder.wait_started(app.config.spawn_wait).await {
        State::Assigned => Ok(binder),
        State::Failed => Err(ApiError::Unavailable {
            message: format!(
                "the container failed to start: {}",
                binder.failure().unwrap_or("unknown reason")
            ),
            retry_after: 5,
        }),
        _ => {
            // Nobody will learn its address: do not leave it running.
            app.pools.stop(pool, &binder);
            Err(ApiError::Unavailable {
                message: format!(
                    "no container was ready within {}s: try again",
                    app.config.spawn_wait.as_secs()
                ),
                retry_after: 5,
            })
        }
    }
}

/// `POST /api/spawn/`: any body or none; `{"binding": "name"}` picks one.
/// thebe sends `{"image_name": ...}` as text/plain, which is ignored.
pub(super) async fn spawn(
    app: &App,
    caller: &Caller,
    req: Request<Incoming>,
    client: Option<std::net::IpAddr>,
) -> Result<Response<Body>> {
    let from_query = target::in_query(req.uri().query());
    let body = read_body(app, req).await?;
    let parsed = serde_json::from_slice::<serde_json::Value>(&body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name).and_then(|b| b.as_str()).map(str::to_owned))
    };
    let pool = default_pool(app, caller, field("binding").as_deref())?;
    let profile = field("profile").or(from_query);
    let pool = choose_profile(app, &pool, caller, profile.as_deref())?;
    let binder = handout_and_wait(app, caller, &pool, client).await?;
    json(
        StatusCode::OK,
        &Spawned {
            url: app.location(&binder),
            id: binder.id.to_string(),
        },
    )
}

/// `GET /spawn/{path}`: 302 to `/user/{token}/{path}`.
pub(super) async fn spawn_redirect(
    app: &App,
    caller: &Caller,
    rest: &str,
    query: Option<&str>,
    client: Option<std::net::IpAddr>,
) -> Result<Response<Body>> {
    let pool = default_pool(app, caller, None)?;
    let profile = target::in_query(query);
    let pool = choose_profile(app, &pool, caller, profile.as_deref())?;
    let binder = handout_and_wait(app, caller, &pool, client).await?;
    let mut target = format!("{}{}", app.location(&binder), rest);
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    let mut resp = json(
        StatusCode::FOUND,
        &Spawned {
            url: target.clone(),
            id: binder.id.to_string(),
        },
    )?;
    let location = header::HeaderValue::from_str(&target)
        .map_err(|_| ApiError::BadRequest("the path cannot be redirected to".into()))?;
    resp.headers_mut().insert(header::LOCATION, location);
    Ok(resp)
}

/// `GET /api/stats`: the default binding's pool; without a default, the
/// totals over every binding this caller can see (tmpnb-era monitors call
/// it bare), with their images joined.
pub(super) fn stats(app: &App, caller: &Caller) -> Result<Response<Body>> {
    let pools = match &app.config.default_binding {
        Some(name) => vec![visible_pool(app, caller, name.as_str())?],
        None => app
            .pools
            .bindings()
            .into_iter()
            .filter(|p| p.current().access().visible_to(caller))
            .collect(),
    };
    let (mut available, mut capacity) = (0, 0);
    let mut images = Vec::with_capacity(pools.len());
    for pool in &pools {
        let counts = pool.counts();
        available += counts.available;
        capacity += counts.max;
        let record = pool.current();
        images.push(
            record
                .binding
                .image
                .clone()
                .unwrap_or_else(|| record.binding.command.join(" ")),
        );
    }
    json(
        StatusCode::OK,
        &Stats {
            available,
            capacity,
            version: VERSION,
            container_image: images.join(", "),
        },
    )
}
