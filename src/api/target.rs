//! Which pool a request hands out from: the profile it asks for (read in
//! one place: `?profile=` and/or the JSON body's `"profile"`) and the one
//! function that turns a binding's pool and that choice into the pool to
//! use ([`choose_profile`]). Every handout path (`/binders`, tmpnb's,
//! BinderHub's) and `/pools` resizing call these.

use std::sync::Arc;

use http::{header, Request};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{ApiError, App, Result};
use crate::auth::Caller;
use crate::pool::Pool;

/// The profile `?profile=` asks for (`None`: no query, or none named).
pub(super) fn in_query(query: Option<&str>) -> Option<String> {
    super::query::param(query.unwrap_or(""), "profile")
}

/// `POST /binders/{binding}`'s body (optional; `?profile=` says the same).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct HandoutRequest {
    /// One of the binding's `profiles` (default: its default profile).
    #[serde(default)]
    pub profile: Option<String>,
}

/// The pool serving the profile `chosen` of the binding whose pool is
/// `pool` (`None`: its default), by the pools' one set of rules
/// ([`crate::pool::Pools::resolve`]: 400 for a profile it does not offer,
/// naming those it does; 403 for a `keys_only` one without a key).
pub(super) fn choose_profile(
    app: &App,
    pool: &Arc<Pool>,
    caller: &Caller,
    chosen: Option<&str>,
) -> Result<Arc<Pool>> {
    Ok(app.pools.resolve(pool, chosen, caller)?)
}

/// The profile a handout asks for: `{"profile": ...}` in the body or
/// `?profile=` (both: they must agree). No body, an empty one: none.
pub(super) async fn asked_in_body_or_query(
    app: &App,
    req: Request<Incoming>,
) -> Result<Option<String>> {
    use hyper::body::Body as _;
    let from_query = in_query(req.uri().query());
    if req.body().is_end_stream() {
        return Ok(from_query);
    }
    let json_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(super::request::is_json_type);
    let bytes = super::request::read_body(app, req).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(from_query);
    }
    if json_type == Some(false) {
        return Err(ApiError::UnsupportedMediaType(
            "the body of POST /binders/{binding} is JSON ({\"profile\": ...}): send Content-Type: application/json".into(),
        ));
    }
    let asked: HandoutRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    match (asked.profile, from_query) {
        (Some(a), Some(b)) if !a.eq_ignore_ascii_case(&b) => Err(ApiError::BadRequest(format!(
            "the body asks for profile '{}' and the query for '{}'",
            crate::text::printable(&a),
            crate::text::printable(&b)
        ))),
        (a, b) => Ok(a.or(b)),
    }
}
