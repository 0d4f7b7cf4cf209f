//! `/user/{token}/...`: the proxy's entry. Finds the binder by its token
//! (one hash-map get), answers for paused or restarting ones, keeps binderd's
//! own keys from the container, and hands the request to [`crate::proxy`].

use std::net::SocketAddr;

use http::{header, Request, Response};
use hyper::body::Incoming;

use super::{ApiError, App, Result};
use crate::binder::{is_secret_shaped, State};
use crate::body::Body;
use crate::proxy::split_user_path;

/// `/user/{token}/...`: find the binder in O(1) and forward.
pub(super) async fn proxy(
    app: &App,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>> {
    // `handle` folded doubled slashes already.
    let path = req.uri().path().to_owned();
    let unknown =
        || ApiError::NotFound("no binder at this address (it may have been stopped)".into());
    let (token, rest) = split_user_path(&path).ok_or_else(unknown)?;
    if !is_secret_shaped(token) {
        return Err(unknown());
    }
    let entry = app.pools.by_token(token).ok_or_else(unknown)?;
    match entry.binder.state() {
        State::Assigned => {}
        State::Paused => {
            return Err(ApiError::Unavailable {
                message: "this binder is paused: resume it with POST /binders/{binding}/{id}/actions/pause {\"paused\": false}".into(),
                retry_after: 5,
            })
        }
        State::StartingClaimed => {
            return Err(ApiError::Unavailable {
                message: "this binder is starting again: retry in a moment".into(),
                retry_after: 2,
            })
        }
        _ => return Err(unknown()),
    }
    // binderd's own key is not the container's business.
    if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
        if app
            .keys
            .authenticate(Some(auth.as_bytes()))
            .is_ok_and(|c| c.key_name().is_some())
        {
            req.headers_mut().remove(header::AUTHORIZATION);
        }
    }
    let strip_prefix = entry.pool.current().binding.strip_prefix;
    Ok(app
        .proxy
        .forward(req, &entry.binder, strip_prefix, rest, peer)
        .await?)
}
