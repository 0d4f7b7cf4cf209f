//! The routes: what a request means. [`handle`] takes a request hyper has
//! parsed (connections are [`crate::server`]'s), routes it once, and turns
//! it into calls on [`Pools`] and the answer into JSON; `/user/{token}/...`
//! goes to the proxy's entry ([`user`]). The one place errors become status
//! codes ([`error`]) and JSON shapes are defined ([`views`]).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;

use crate::auth::{Caller, Keys};
use crate::binding::BindingName;
use crate::body::Body;
use crate::config::Config;
use crate::pool::Pools;
use crate::proxy::Proxy;

mod binders;
mod bindings;
mod dashboard;
pub mod error;
mod launch;
mod openapi;
mod pools;
mod routes;
mod tmpnb;
pub mod user;
pub mod views;
mod warm_kernel;

use routes::Route;

use crate::body::full;
pub use error::ApiError;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What every handler can reach.
pub struct App {
    pub config: Config,
    pub keys: Keys,
    pub limits: crate::ratelimit::RateLimits,
    pub pools: Pools,
    pub proxy: Proxy,
    pub local_addr: SocketAddr,
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The request's host (its `Host` header, or the target's authority).
pub(crate) fn host_of<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

impl App {
    /// Where a reader reaches `binder` ([`location_with`] this config's
    /// `binder_host`).
    pub fn location(&self, binder: &crate::binder::Binder) -> String {
        location_with(self.config.binder_host.as_ref(), binder)
    }
}

/// Where a reader reaches `binder`: `/user/{token}/` on binderd's own
/// host, or, with `binder_host`, the absolute URL of its own host. The one
/// place that decides it.
pub(crate) fn location_with(
    hosts: Option<&crate::config::BinderHost>,
    binder: &crate::binder::Binder,
) -> String {
    match hosts {
        Some(hosts) => hosts.url(&binder.token),
        None => binder.location(),
    }
}

/// Whether the client would rather read HTML (a browser).
fn wants_html(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// Answers one request (a connection hyper serves calls this for each).
pub async fn handle(app: &App, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    fold_path(&mut req);
    if let Some(hosts) = &app.config.binder_host {
        // A binder's host serves that binder and nothing of binderd's.
        let on_binder_host = host_of(&req).and_then(|h| hosts.token_of(h)).is_some();
        if on_binder_host && !req.uri().path().starts_with("/user/") {
            let e = ApiError::NotFound("this host serves one binder only".into());
            return e.into_response(wants_html(&req));
        }
    }
    if req.uri().path().starts_with("/user/") {
        let html = wants_html(&req);
        // A container's answers are its own (confined by the proxy);
        // binderd's errors are guarded in `ApiError::into_response`.
        return match user::proxy(app, req, peer).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(html),
        };
    }
    // Launch links are opened by browsers: their errors are pages.
    let html = req.uri().path().starts_with("/v2/") && wants_html(&req);
    let mut resp = match route(app, req, peer).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(html),
    };
    crate::metrics::count_response(resp.status().as_u16());
    cors(app, resp.headers_mut());
    guard(resp.headers_mut());
    resp
}

/// What every answer of binderd's own carries, so that a binder's page on
/// the same origin can neither frame it (and read or drive it) nor have it
/// read as another type: `frame-ancestors 'none'` (unless the answer has a
/// stricter policy of its own, as the dashboard's) and `nosniff`.
pub(crate) fn guard(headers: &mut http::HeaderMap) {
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static("frame-ancestors 'none'"));
}

/// Folds runs of slashes in the request's path into one, so that which route
/// answers never depends on them: thebe asks for `//user/{token}//api/kernels`
/// (its base URL + `/` + the spawn's `/user/{token}/` + `/`). The query is
/// kept as it came. Costs nothing when the path has no doubled slash.
fn fold_path<B>(req: &mut Request<B>) {
    let uri = req.uri();
    let std::borrow::Cow::Owned(path) = fold_slashes(uri.path()) else {
        return;
    };
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    match path_and_query.parse() {
        Ok(pq) => parts.path_and_query = Some(pq),
        Err(_) => return,
    }
    if let Ok(folded) = http::Uri::from_parts(parts) {
        *req.uri_mut() = folded;
    }
}

/// `s` with every run of `/` folded into one.
pub(crate) fn fold_slashes(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains("//") {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn cors(app: &App, headers: &mut http::HeaderMap) {
    if let Some(origin) = app
        .config
        .allow_origin
        .as_deref()
        .and_then(|o| HeaderValue::from_str(o).ok())
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type"),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Location, Retry-After"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
}

/// Routes an API request: parse the route once, answer `OPTIONS` and 405
/// from its method table, authenticate, admit spawns, dispatch.
async fn route(app: &App, req: Request<Incoming>, peer: SocketAddr) -> Result<Response<Body>> {
    let path = req.uri().path().to_owned();
    let no_route =
        || ApiError::NotFound(format!("no route for {}", crate::binding::printable(&path)));
    let route = Route::parse(&path).ok_or_else(no_route)?;
    let method = req.method().clone();
    if method == Method::OPTIONS {
        return Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(header::ALLOW, format!("{}, OPTIONS", route.methods()))
            .body(crate::body::empty())
            .map_err(|e| ApiError::Internal(e.to_string()));
    }
    if !route.allows(&method) {
        return Err(ApiError::MethodNotAllowed {
            method,
            allow: route.methods(),
        });
    }
    let caller = authenticate(app, &req)?;
    let client = if route.spawns(&method) {
        Some(admit_spawn(app, &caller, &req, peer)?)
    } else {
        None
    };
    let query = || req.uri().query().unwrap_or("");
    match (route, method) {
        // A browser asking for `/` gets the dashboard; JSON clients as before.
        (Route::Root, _) if wants_html(&req) => dashboard::serve("index.html"),
        (Route::Root, _) => json(
            StatusCode::OK,
            &views::Root::new(VERSION, app.pools.isolation()),
        ),
        (Route::Asset(file), _) => dashboard::serve(file),
        (Route::Healthcheck, _) => json(
            StatusCode::OK,
            &views::Health {
                status: "available",
                version: VERSION,
                backend: app.pools.backend_kind().as_str(),
            },
        ),
        (Route::Metrics, _) => text("text/plain; version=0.0.4", metrics_page(app, &caller)),
        (Route::OpenApi, _) => text("application/json", openapi::document()),
        (Route::Configuration, _) => json(StatusCode::OK, &configuration(app)),
        (Route::Quota, _) => pools::quota(app, &caller),
        (Route::Bindings, Method::POST) => bindings::create(app, &caller, None, req).await,
        (Route::Bindings, _) => bindings::list(app, &caller),
        (Route::Binding(name), Method::POST) => {
            bindings::create(app, &caller, Some(&name), req).await
        }
        (Route::Binding(name), Method::PUT) => bindings::put(app, &caller, &name, req).await,
        (Route::Binding(name), Method::DELETE) => {
            bindings::delete(app, &caller, &name, query()).await
        }
        (Route::Binding(name), _) => bindings::get(app, &caller, &name),
        (Route::BuildLogs(name), _) => bindings::build_logs(app, &caller, name),
        (Route::Binders(binding), Method::POST) => {
            binders::create(app, &caller, binding, req, client).await
        }
        (Route::Binders(binding), _) => binders::list(app, &caller, binding),
        (Route::Binder(binding, id), Method::DELETE) => binders::delete(app, &caller, binding, id),
        (Route::Binder(binding, id), _) => binders::get(app, binding, id),
        (Route::Pause(binding, id), _) => binders::pause(app, &caller, binding, id, req).await,
        (Route::Logs(binding, id), _) => binders::logs(app, &caller, binding, id, query()).await,
        (Route::Events(binding, id), _) => binders::events(app, binding, id),
        (Route::Pools, _) => pools::list(app, &caller),
        (Route::Pool(binding), Method::POST | Method::PUT) => {
            pools::resize(app, &caller, binding, req).await
        }
        (Route::Pool(binding), _) => pools::get(app, &caller, binding),
        (Route::TmpnbSpawn, _) => tmpnb::spawn(app, &caller, req, client).await,
        (Route::TmpnbStats, _) => tmpnb::stats(app, &caller),
        (Route::Build(rest), _) => launch::build(app, &caller, rest, &req, peer).await,
        (Route::Launch(rest), _) => launch::v2(app, &caller, rest, &req, peer).await,
        (Route::Versions, _) => launch::versions(),
        (Route::LegacyRepo(rest), _) => launch::legacy(rest),
        (Route::HubHealth, _) => launch::health(app),
        (Route::SpawnRedirect(rest), _) => {
            let query = req.uri().query();
            tmpnb::spawn_redirect(app, &caller, rest, query, client).await
        }
    }
}

/// A 200 with a body that is not JSON built here.
fn text(content_type: &'static str, body: impl Into<Bytes>) -> Result<Response<Body>> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(full(body.into()))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// `GET /metrics`: the counters, with every pool's sizes as gauges; only
/// the bindings the caller may see are named (an admin key sees all).
fn metrics_page(app: &App, caller: &Caller) -> String {
    let pools = app.pools.pools();
    let shown: std::collections::HashSet<(&str, Option<&str>)> = pools
        .iter()
        .filter(|pool| pool.current().access().visible_to(caller))
        .map(|pool| (pool.name.as_str(), pool.profile.as_deref()))
        .collect();
    crate::metrics::render(
        pools
            .iter()
            .filter(|pool| shown.contains(&(pool.name.as_str(), pool.profile.as_deref())))
            .map(|pool| {
                let profile = pool.profile.as_ref().map(|p| p.to_string());
                (pool.name.to_string(), profile, (&**pool).into())
            }),
        |name, profile| shown.contains(&(name, profile)),
    )
}

fn configuration(app: &App) -> views::Configuration {
    let c = &app.config;
    views::Configuration {
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
    }
}

fn authenticate(app: &App, req: &Request<Incoming>) -> Result<Caller> {
    Ok(app.keys.authenticate(
        req.headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
    )?)
}

/// The spawn rate limits: 429 with `Retry-After` when over. Gives who the
/// client is (`ratelimit::client_key`), whom an anonymous binder is
/// charged to.
fn admit_spawn(
    app: &App,
    caller: &Caller,
    req: &Request<Incoming>,
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

/// Parses a binding name from the path (400 when malformed).
/// The value of query parameter `name` (`%XX` and `+` decoded), the first
/// if it is given more than once.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| launch::decode(&v.replace('+', " ")).unwrap_or_default())
    })
}

fn binding_name(raw: &str) -> Result<BindingName> {
    Ok(BindingName::parse(raw)?)
}

pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Response<Body>> {
    // Sized for a binder's document at once (no regrowth on the handout).
    let mut body = Vec::with_capacity(384);
    serde_json::to_writer(&mut body, value).map_err(|e| ApiError::Internal(e.to_string()))?;
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Reads a JSON body: 415 unless it says JSON (or says nothing), 413 over
/// the limit, 400 when it does not parse into `T`.
async fn read_json<T: serde::de::DeserializeOwned>(app: &App, req: Request<Incoming>) -> Result<T> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !(mime == "application/json" || mime.ends_with("+json")) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "expected Content-Type: application/json, got '{}'",
                crate::binding::printable(mime)
            )));
        }
    }
    let bytes = read_body(app, req).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))
}

/// Reads a body of any type, up to the limit.
///
/// Over the limit the answer is 413, but only after the rest of the body has
/// been read and thrown away (bounded by [`LINGER_BYTES`] and
/// [`LINGER_TIME`]): a client that writes its whole body before reading, as
/// Python's `urllib` does, would otherwise see a broken pipe instead of the
/// 413. Nothing past the limit is kept in memory.
async fn read_body(app: &App, req: Request<Incoming>) -> Result<Bytes> {
    let limit = app.config.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    if declared.is_some_and(|n| n > limit as u64) {
        linger(&mut body).await;
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut read = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if read.len() + data.len() > limit {
            linger(&mut body).await;
            return Err(ApiError::PayloadTooLarge(limit));
        }
        read.extend_from_slice(&data);
    }
    Ok(read.freeze())
}

/// How much of a body binderd reads and drops before an error answer (a
/// 413 here, an error on the fast path) so that a client still writing it
/// reads the answer instead of a reset. One policy for both: bounded, so a
/// client that never stops writing holds a connection for seconds only.
pub(crate) const LINGER_BYTES: usize = 8 << 20;
/// How long binderd keeps reading such a body before it answers anyway.
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(2);

/// Reads and drops what is left of `body`, within the linger bounds. If the
/// body outlasts them, the connection closes after the answer (hyper does not
/// reuse a connection whose request body was left unread).
async fn linger(body: &mut Incoming) {
    let drain = async {
        let mut dropped = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            dropped += frame.data_ref().map_or(0, |d| d.len());
            if dropped > LINGER_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_slashes_fold_anywhere_in_the_path_but_not_the_query() {
        assert_eq!(
            fold_slashes("/user/abc//api/kernels"),
            "/user/abc/api/kernels"
        );
        assert_eq!(fold_slashes("/user/abc/a///b/"), "/user/abc/a/b/");
        assert!(matches!(
            fold_slashes("/user/abc/api"),
            std::borrow::Cow::Borrowed(_)
        ));
        let mut req = Request::options("http://h//user/abc//api/kernels?u=http://x//y")
            .body(())
            .unwrap();
        fold_path(&mut req);
        assert_eq!(req.uri().path(), "/user/abc/api/kernels");
        assert_eq!(req.uri().query(), Some("u=http://x//y"));
        let mut req = Request::post("//api/spawn/").body(()).unwrap();
        fold_path(&mut req);
        assert_eq!(req.uri(), "/api/spawn/");
    }
}
