//! `/binders`: hand out, list, show, stop, pause, logs and events.

use std::sync::Arc;

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::reply::json;
use super::request::{binding_name, read_json};
use super::target;
use super::views::{BinderView, Stopping};
use super::{ApiError, App, Result};
use crate::auth::{may_stop_binder, owns_binder, AuthError, Caller};
use crate::binder::{is_secret_shaped, Binder, State};
use crate::body::Body;
use crate::pool::{Handout, Pool};

/// The pool of a binding this caller may use, or 404.
pub(super) fn visible_pool(app: &App, caller: &Caller, raw: &str) -> Result<Arc<Pool>> {
    let name = binding_name(raw)?;
    app.pools
        .binding(&name)
        .filter(|p| p.current().access().visible_to(caller))
        .ok_or_else(|| ApiError::NotFound(format!("binding '{name}' not found")))
}

pub(super) fn render(app: &App, binder: &Binder) -> BinderView {
    view_of(app.config.binder_host.as_ref(), binder)
}

/// Where a reader reaches `binder`: `/user/{token}/` on binderd's own
/// host, or, with `binder_host`, the absolute URL of its own host. The one
/// place that decides it.
pub(super) fn location_with(
    hosts: Option<&crate::config::BinderHost>,
    binder: &crate::binder::Binder,
) -> String {
    match hosts {
        Some(hosts) => hosts.url(&binder.token),
        None => binder.location(),
    }
}

/// [`render`] for what outlives the request (an event stream).
fn view_of(hosts: Option<&crate::config::BinderHost>, binder: &Binder) -> BinderView {
    let mut view = BinderView::of(binder);
    if view.location.is_some() {
        view.location = Some(location_with(hosts, binder));
    }
    view
}

/// `POST /binders/{binding}`: 201 with a warm binder, 202 when one must
/// start, 503 at `maxPool`.
pub(super) async fn create(
    app: &App,
    caller: &Caller,
    raw: &str,
    req: Request<Incoming>,
    client: Option<std::net::IpAddr>,
) -> Result<Response<Body>> {
    let pool = visible_pool(app, caller, raw)?;
    let asked = target::asked_in_body_or_query(app, req).await?;
    let pool = target::choose_profile(app, &pool, caller, asked.as_deref())?;
    match app.pools.handout(&pool, caller.owner(), client).await? {
        Handout::Ready(binder) => json(StatusCode::CREATED, &render(app, &binder)),
        Handout::Starting(binder) => json(StatusCode::ACCEPTED, &render(app, &binder)),
    }
}

/// `GET /binders/{binding}`: the binders this key may see.
pub(super) fn list(app: &App, caller: &Caller, raw: &str) -> Result<Response<Body>> {
    if caller.key_name().is_none() {
        return Err(AuthError::Required.into());
    }
    let pool = visible_pool(app, caller, raw)?;
    let mut binders: Vec<Arc<Binder>> = app
        .pools
        .binders_of(&pool.name)
        .into_iter()
        .map(|e| e.binder)
        .collect();
    binders.sort_by_key(|b| b.created_at);
    let docs: Vec<BinderView> = binders
        .iter()
        .filter(|b| b.owner().is_some() && b.state().is_live())
        .filter(|b| owns_binder(caller, b.owner()))
        .map(|b| {
            let mut doc = render(app, b);
            doc.uri = Some(format!("/binders/{}/{}", pool.name, b.id));
            doc.owner = b.owner().map(|o| match o {
                crate::auth::Owner::Key(name) => name.clone(),
                crate::auth::Owner::Anonymous => "anonymous".to_owned(),
            });
            doc
        })
        .collect();
    json(StatusCode::OK, &docs)
}

/// A binder handed out (or claimed) under `binding`, by id; pool binders
/// that nobody holds are not shown.
fn find(app: &App, raw: &str, id: &str) -> Result<Arc<Binder>> {
    let name = binding_name(raw)?;
    let not_found =
        || ApiError::NotFound(format!("binder '{}' not found", crate::text::printable(id)));
    if !is_secret_shaped(id) {
        return Err(not_found());
    }
    app.pools
        .binder(id)
        .filter(|e| e.pool.name == name && e.binder.owner().is_some())
        .map(|e| e.binder)
        .ok_or_else(not_found)
}

pub(super) fn get(app: &App, raw: &str, id: &str) -> Result<Response<Body>> {
    let binder = find(app, raw, id)?;
    json(StatusCode::OK, &render(app, &binder))
}

/// `DELETE /binders/{binding}/{id}`: see [`may_stop_binder`] for who may.
pub(super) fn delete(app: &App, caller: &Caller, raw: &str, id: &str) -> Result<Response<Body>> {
    let binder = find(app, raw, id)?;
    may_stop_binder(caller, binder.owner())?;
    if let Some(entry) = app.pools.binder(id) {
        app.pools.stop(&entry.pool, &binder);
    }
    json(
        StatusCode::ACCEPTED,
        &Stopping {
            id: binder.id.to_string(),
            state: binder.state().public_name(),
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pause {
    paused: bool,
}

/// `POST /binders/{binding}/{id}/actions/pause` `{"paused": true|false}`.
pub(super) async fn pause(
    app: &App,
    caller: &Caller,
    raw: &str,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let binder = owned(app, caller, raw, id)?;
    let body: Pause = read_json(app, req).await?;
    let entry = app
        .pools
        .binder(&binder.id)
        .ok_or_else(|| ApiError::NotFound("binder not found".into()))?;
    app.pools
        .set_paused(&entry, body.paused, app.config.spawn_wait)
        .await?;
    json(StatusCode::OK, &render(app, &binder))
}

/// A binder the caller owns (or any, for an admin): 401/403/404.
fn owned(app: &App, caller: &Caller, raw: &str, id: &str) -> Result<Arc<Binder>> {
    if caller.key_name().is_none() {
        return Err(AuthError::Required.into());
    }
    let binder = find(app, raw, id)?;
    if !owns_binder(caller, binder.owner()) {
        return Err(ApiError::Forbidden(
            "only the binder's owner or an admin may do this".into(),
        ));
    }
    Ok(binder)
}

/// `GET /binders/{binding}/{id}/logs?tail=N` (default 1000 lines).
pub(super) async fn logs(
    app: &App,
    caller: &Caller,
    raw: &str,
    id: &str,
    query: &str,
) -> Result<Response<Body>> {
    let binder = owned(app, caller, raw, id)?;
    let tail = match query.split('&').find_map(|kv| kv.strip_prefix("tail=")) {
        None => 1000,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= 100_000)
            .ok_or_else(|| ApiError::BadRequest("tail must be a number from 0 to 100000".into()))?,
    };
    let text = app.pools.logs(&binder, tail).await?;
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(crate::body::full(text))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// How often an idle event stream sends a comment, so proxies keep it open.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

/// `GET /binders/{binding}/{id}/events`: `text/event-stream` of the binder's
/// state, one `data: {json}` event per change, ending at ready or failed.
pub(super) fn events(app: &App, raw: &str, id: &str) -> Result<Response<Body>> {
    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    let binder = find(app, raw, id)?;
    let hosts = app.config.binder_host.clone();
    // (binder, last state sent, finished)
    let events = stream::unfold(
        (binder, None::<State>, false),
        move |(binder, last, done)| {
            let hosts = hosts.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    // Some(Some(state)): changed; Some(None): time for a heartbeat.
                    let step = {
                        let notified = binder.changed.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        let state = binder.state();
                        if Some(state) != last {
                            Some(Some(state))
                        } else if tokio::time::timeout(HEARTBEAT, notified).await.is_err() {
                            Some(None)
                        } else {
                            None
                        }
                    };
                    match step {
                        Some(Some(state)) => {
                            let mut doc = view_of(hosts.as_ref(), &binder);
                            doc.phase = Some(state.public_name());
                            let doc = serde_json::to_string(&doc).unwrap_or_default();
                            let finished =
                                !matches!(state, State::Starting | State::StartingClaimed);
                            let frame = Frame::data(bytes::Bytes::from(format!("data: {doc}\n\n")));
                            return Some((
                                Ok::<_, hyper::Error>(frame),
                                (binder, Some(state), finished),
                            ));
                        }
                        Some(None) => {
                            let frame = Frame::data(bytes::Bytes::from_static(b":heartbeat\n\n"));
                            return Some((Ok(frame), (binder, last, false)));
                        }
                        None => continue,
                    }
                }
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(StreamBody::new(events).boxed())
        .map_err(|e| ApiError::Internal(e.to_string()))
}
