//! `/user/{token}/...`: the proxy's entry. Finds the binder by its token
//! (one hash-map get), answers for paused or restarting ones, keeps binderd's
//! own keys from the container, and hands the request to [`crate::proxy`].
//! The first kernel request into a binder holding a warm kernel is given
//! that kernel (see [`warm_kernel`]).

use std::net::SocketAddr;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::{ApiError, App, Result};
use crate::binder::{is_secret_shaped, State};
use crate::body::{empty, full, Body};
use crate::kernel::{self, Ask};
use crate::pool::Entry;
use crate::proxy::split_user_path;

/// Largest kernel or session request body read to give a warm kernel.
const MAX_KERNEL_REQUEST: usize = 1 << 20;

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
        if app.keys.is_own_key(auth.as_bytes()) {
            req.headers_mut().remove(header::AUTHORIZATION);
        }
    }
    let strip_prefix = entry.pool.current().binding.strip_prefix;
    if entry.binder.has_warm_kernel() {
        if let Some(ask) = kernel::asks_for_kernel(req.method(), rest) {
            return warm_kernel(app, req, &entry, ask, strip_prefix, rest, peer).await;
        }
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

/// A kernel request into a binder that holds a warm kernel: if it asks for
/// that kernel's name (or none), `POST api/kernels` answers the warm
/// kernel's model (the server's own `GET api/kernels/{id}`, as 201 with a
/// `Location`, CORS headers and all) and `POST api/sessions` goes on naming
/// the warm kernel's id, so the server attaches the session to it. Anything
/// else, or a warm kernel that has died meanwhile, passes through as sent.
async fn warm_kernel(
    app: &App,
    req: Request<Incoming>,
    entry: &Entry,
    ask: Ask,
    strip_prefix: bool,
    rest: &str,
    peer: SocketAddr,
) -> Result<Response<Body>> {
    let (mut parts, body) = req.into_parts();
    let bytes = Limited::new(body, MAX_KERNEL_REQUEST)
        .collect()
        .await
        .map_err(|_| ApiError::PayloadTooLarge(MAX_KERNEL_REQUEST))?
        .to_bytes();
    let as_sent = |parts: http::request::Parts| Request::from_parts(parts, full(bytes.clone()));
    let json: Option<serde_json::Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
        Some(serde_json::json!({}))
    } else {
        serde_json::from_slice(&bytes).ok()
    };
    let warm = json.as_ref().and_then(|v| {
        let name = kernel::requested_name(ask, v).ok()?;
        entry.binder.take_warm_kernel(name)
    });
    let proxy = &app.proxy;
    let binder = &entry.binder;
    let Some(warm) = warm else {
        return Ok(proxy
            .forward(as_sent(parts), binder, strip_prefix, rest, peer)
            .await?);
    };
    entry.pool.metrics.warm_kernels_given.increment(1);
    match ask {
        Ask::Kernel => {
            let model_path = format!("/api/kernels/{}", warm.id);
            let mut get = Request::new(empty());
            *get.method_mut() = Method::GET;
            *get.uri_mut() = parts.uri.clone();
            *get.headers_mut() = parts.headers.clone();
            for h in [
                header::CONTENT_LENGTH,
                header::CONTENT_TYPE,
                header::TRANSFER_ENCODING,
            ] {
                get.headers_mut().remove(h);
            }
            let mut resp = proxy
                .forward(get, binder, strip_prefix, &model_path, peer)
                .await?;
            if resp.status() != StatusCode::OK {
                tracing::info!(binder = %binder.id, status = %resp.status(), "warm kernel gone; starting one as asked");
                return Ok(proxy
                    .forward(as_sent(parts), binder, strip_prefix, rest, peer)
                    .await?);
            }
            *resp.status_mut() = StatusCode::CREATED;
            let location = format!("{}api/kernels/{}", binder.location(), warm.id);
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Ok(resp)
        }
        Ask::Session => {
            let mut doc = json.unwrap_or_default();
            kernel::attach_session(&mut doc, &warm);
            let body = doc.to_string();
            parts.headers.remove(header::TRANSFER_ENCODING);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            let req = Request::from_parts(parts, full(body));
            Ok(proxy.forward(req, binder, strip_prefix, rest, peer).await?)
        }
    }
}
