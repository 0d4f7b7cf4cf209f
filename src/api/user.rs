//! `/user/{token}/...`: the proxy's entry. [`reach`] decides which binder
//! a request reaches (the one place that decides it: the connection's fast
//! path asks it too, and hands over to the routes whatever it does not
//! answer `Ok` to); [`proxy`] answers for paused, restarting and unknown
//! binders, keeps binderd's own keys from the container, gives a warm kernel
//! to the first client asking for one ([`super::warm_kernel`]) and hands the
//! rest to [`crate::proxy`].

use std::net::SocketAddr;

use http::{header, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::warm_kernel::{self, asks_for_kernel, channels_of, Ask};
use super::{ApiError, App, Result};
use crate::binder::{is_secret_shaped, State};
use crate::body::Body;
use crate::pool::Entry;
use crate::proxy::split_user_path;

/// Where a `/user/{token}/...` request goes.
pub struct Reach<'p> {
    /// The binder, assigned and running.
    pub entry: Entry,
    /// The path after `/user/{token}` (`/` at least).
    pub rest: &'p str,
    /// The request may be given the binder's warm kernel: the routes must
    /// see it (the fast path hands it over).
    pub kernel: Option<Ask>,
    /// It opens the channels the binder holds: the routes must see it (the
    /// fast path hands it over).
    pub channels: bool,
}

/// Which binder a request for `path` (slashes folded) on `host` reaches,
/// or why none: an address that is not secret-shaped, no binder with that
/// token, or one that is not assigned (404), paused or starting again
/// (503). With `binder_host` set, a binder is reached only on its own host
/// (404 elsewhere, naming it).
pub fn reach<'p>(app: &App, method: &str, host: Option<&str>, path: &'p str) -> Result<Reach<'p>> {
    let unknown =
        || ApiError::NotFound("no binder at this address (it may have been stopped)".into());
    let (token, rest) = split_user_path(path).ok_or_else(unknown)?;
    if !is_secret_shaped(token) {
        return Err(unknown());
    }
    if let Some(hosts) = &app.config.binder_host {
        if host.and_then(|h| hosts.token_of(h)) != Some(token) {
            return Err(ApiError::NotFound(format!(
                "binders are served on their own host here: {}",
                hosts.url(token)
            )));
        }
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
    let kernel = if entry.binder.has_warm_kernel() {
        Method::from_bytes(method.as_bytes())
            .ok()
            .and_then(|m| asks_for_kernel(&m, rest))
    } else {
        None
    };
    let channels = channels_of(method, rest).is_some_and(|id| entry.binder.holds_channels_of(id));
    Ok(Reach {
        entry,
        rest,
        kernel,
        channels,
    })
}

/// `/user/{token}/...`: find the binder in O(1) and forward.
pub(super) async fn proxy(
    app: &App,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>> {
    // `handle` folded doubled slashes already.
    let path = req.uri().path().to_owned();
    let Reach {
        entry,
        rest,
        kernel,
        channels,
    } = reach(app, req.method().as_str(), super::host_of(&req), &path)?;
    // binderd's own key is not the container's business: every copy of it
    // goes (a client may send several `Authorization` headers, as the
    // fast path's `copy_headers` also drops each), the others pass.
    let headers = req.headers_mut();
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(|v| app.keys.is_own_key(v.as_bytes()))
    {
        let kept: Vec<_> = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter(|v| !app.keys.is_own_key(v.as_bytes()))
            .cloned()
            .collect();
        headers.remove(header::AUTHORIZATION);
        for value in kept {
            headers.append(header::AUTHORIZATION, value);
        }
    }
    let strip_prefix = entry.pool.current().binding.strip_prefix;
    if channels {
        return warm_kernel::join(app, req, &entry, strip_prefix, rest, peer).await;
    }
    if let Some(ask) = kernel {
        return warm_kernel::give(app, req, &entry, ask, strip_prefix, rest, peer).await;
    }
    Ok(app
        .proxy
        .forward(
            req.map(BodyExt::boxed),
            &entry.binder,
            strip_prefix,
            rest,
            peer,
        )
        .await?)
}
