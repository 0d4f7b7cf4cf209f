//! Who is asking and whether they may spawn now: the caller from its
//! `Authorization` header, and the spawn rate limits.

use std::net::SocketAddr;

use http::{header, Request};

use super::{ApiError, App, Result};
use crate::auth::Caller;

/// The caller the request's `Authorization` header names (anonymous
/// without one; 401 for a wrong key).
pub(super) fn authenticate<B>(app: &App, req: &Request<B>) -> Result<Caller> {
    Ok(app.keys.authenticate(
        req.headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
    )?)
}

/// The spawn rate limits: 429 with `Retry-After` when over. Gives who the
/// client is (`ratelimit::client_key`), whom an anonymous binder is
/// charged to.
pub(super) fn admit_spawn<B>(
    app: &App,
    caller: &Caller,
    req: &Request<B>,
    peer: SocketAddr,
) -> Result<std::net::IpAddr> {
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let client = app.limits.client_ip(peer.ip(), forwarded);
    app.limits.check_spawn(caller, client).map_err(|wait| {
        let secs = wait.0.as_secs() + u64::from(wait.0.subsec_nanos() > 0);
        ApiError::TooManyRequests {
            message: format!("too many spawns: retry in {secs}s"),
            retry_after: secs.max(1),
            tmpnb: false,
        }
    })?;
    Ok(crate::ratelimit::client_key(client))
}
