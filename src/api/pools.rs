//! `/pools`: the warm pools' counts, and resizing them; `/quota`: a key's
//! quota and usage.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::binders::visible_pool;
use super::reply::json;
use super::request::read_json;
use super::views::{PoolView, QuotaView, TrendsView};
use super::{ApiError, App, Result};
use crate::auth::{AuthError, Caller};
use crate::body::Body;

pub(super) fn list(app: &App, caller: &Caller) -> Result<Response<Body>> {
    let docs: Vec<PoolView> = app
        .pools
        .bindings()
        .iter()
        .filter(|p| p.current().access().visible_to(caller))
        .map(|p| PoolView::of(p, &app.pools.pools_of(&p.name), true))
        .collect();
    json(StatusCode::OK, &docs)
}

/// `GET /trends`: the last hour of every pool the caller may see (each
/// profile's pool too), for the dashboard's charts.
pub(super) fn trends(app: &App, caller: &Caller) -> Result<Response<Body>> {
    let docs: Vec<TrendsView> = app
        .pools
        .bindings()
        .iter()
        .filter(|p| p.current().access().visible_to(caller))
        .flat_map(|p| app.pools.pools_of(&p.name))
        .map(|pool| TrendsView::of(&pool, app.pools.trends(&pool)))
        .collect();
    json(StatusCode::OK, &docs)
}

pub(super) fn get(app: &App, caller: &Caller, raw: &str) -> Result<Response<Body>> {
    let pool = visible_pool(app, caller, raw)?;
    json(
        StatusCode::OK,
        &PoolView::of(&pool, &app.pools.pools_of(&pool.name), false),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    #[serde(rename = "minPool")]
    min: Option<u32>,
    #[serde(rename = "maxPool")]
    max: Option<u32>,
}

/// `POST|PUT /pools/{binding}[?profile=p]` `{"minPool": n, "maxPool": m}`
/// (a profile's own pool with `?profile=`; the binding's pool, which serves
/// its default profile, without).
pub(super) async fn resize(
    app: &App,
    caller: &Caller,
    raw: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    if caller.key_name().is_none() {
        return Err(AuthError::Required.into());
    }
    let pool = visible_pool(app, caller, raw)?;
    if !pool.current().access().administers(caller) {
        return Err(ApiError::Forbidden(format!(
            "only an admin or an administrator of '{}' may resize its pool",
            pool.name
        )));
    }
    let profile = super::target::in_query(req.uri().query());
    let pool = super::target::choose_profile(app, &pool, caller, profile.as_deref())?;
    let body: Resize = read_json(app, req).await?;
    if body.min.is_none() && body.max.is_none() {
        return Err(ApiError::BadRequest(
            "give 'minPool' and/or 'maxPool'".into(),
        ));
    }
    super::bindings::may_size_pool(app, caller, body.min, body.max)?;
    app.pools.resize(&pool, body.min, body.max).await?;
    json(
        StatusCode::OK,
        &PoolView::of(&pool, &app.pools.pools_of(&pool.name), false),
    )
}

/// `GET /quota`: the calling key's quota and what it uses now.
pub(super) fn quota(app: &App, caller: &Caller) -> Result<Response<Body>> {
    let name = caller.key_name().ok_or(AuthError::Required)?;
    let report = app.pools.quota_report(name);
    json(
        StatusCode::OK,
        &QuotaView {
            name: name.to_owned(),
            spec: report["spec"].clone(),
            usage: report["usage"].clone(),
        },
    )
}
