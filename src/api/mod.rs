//! The routes: what a request means. [`handle`] takes a request hyper has
//! parsed (connections are [`crate::server`]'s), routes it once, and turns
//! it into calls on [`Pools`] and the answer into JSON; `/user/{token}/...`
//! goes to the proxy's entry ([`user`]). The one place errors become status
//! codes ([`error`]) and JSON shapes are defined ([`views`]).
//!
//! This file holds the [`App`] and the entry point; the tools every handler
//! uses are siblings named for their job: [`request`] (reading a request:
//! host, path, body), [`query`] (query parameters, `%XX` decoding),
//! [`reply`] (building answers; CORS and the guard headers), [`admission`]
//! (who is asking, the spawn rate limits), and [`routes`] (what a path and
//! method mean).

use std::net::SocketAddr;

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::auth::Keys;
use crate::body::Body;
use crate::config::Config;
use crate::pool::Pools;
use crate::proxy::Proxy;

mod about;
mod admission;
mod binders;
mod bindings;
mod dashboard;
pub mod error;
mod launch;
mod openapi;
mod pools;
mod query;
mod reply;
mod request;
mod routes;
mod target;
mod tmpnb;
pub mod user;
pub mod views;
mod warm_kernel;

use admission::{admit_spawn, authenticate};
pub use error::ApiError;
use reply::{cors, guard};
// `host_of` for `user`'s requests too.
use request::{fold_path, host_of, wants_html};
pub(crate) use request::{LINGER_BYTES, LINGER_TIME};
use routes::{Asked, Route};

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

impl App {
    /// Where a reader reaches `binder` ([`binders::location_with`] this config's
    /// `binder_host`).
    pub fn location(&self, binder: &crate::binder::Binder) -> String {
        binders::location_with(self.config.binder_host.as_ref(), binder)
    }
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

/// Routes an API request: find the route once (404, 405 and `OPTIONS`
/// from the one table), authenticate, admit spawns, dispatch.
async fn route(app: &App, req: Request<Incoming>, peer: SocketAddr) -> Result<Response<Body>> {
    let path = req.uri().path().to_owned();
    let route = match routes::find(&path, req.method())? {
        Asked::Route(route) => route,
        Asked::Options(allow) => return options(allow),
    };
    let caller = authenticate(app, &req)?;
    let client = if route.spawns() {
        Some(admit_spawn(app, &caller, &req, peer)?)
    } else {
        None
    };
    let query = || req.uri().query().unwrap_or("");
    match route {
        Route::Root => about::root(app, &req),
        Route::Asset(file) => dashboard::serve(file),
        Route::Healthcheck => about::healthcheck(app),
        Route::Metrics => about::metrics(app, &caller),
        Route::OpenApi => about::openapi(),
        Route::Configuration => about::configuration(app),
        Route::Quota => pools::quota(app, &caller),
        Route::ListBindings => bindings::list(app, &caller),
        Route::CreateBinding(name) => bindings::create(app, &caller, name.as_deref(), req).await,
        Route::GetBinding(name) => bindings::get(app, &caller, &name),
        Route::PutBinding(name) => bindings::put(app, &caller, &name, req).await,
        Route::DeleteBinding(name) => bindings::delete(app, &caller, &name, query()).await,
        Route::BuildLogs(name) => bindings::build_logs(app, &caller, name),
        Route::Handout(binding) => binders::create(app, &caller, binding, req, client).await,
        Route::ListBinders(binding) => binders::list(app, &caller, binding),
        Route::GetBinder(binding, id) => binders::get(app, binding, id),
        Route::StopBinder(binding, id) => binders::delete(app, &caller, binding, id),
        Route::Pause(binding, id) => binders::pause(app, &caller, binding, id, req).await,
        Route::Logs(binding, id) => binders::logs(app, &caller, binding, id, query()).await,
        Route::Events(binding, id) => binders::events(app, binding, id),
        Route::ListPools => pools::list(app, &caller),
        Route::GetPool(binding) => pools::get(app, &caller, binding),
        Route::Trends => pools::trends(app, &caller),
        Route::ResizePool(binding) => pools::resize(app, &caller, binding, req).await,
        Route::TmpnbSpawn => tmpnb::spawn(app, &caller, req, client).await,
        Route::TmpnbStats => tmpnb::stats(app, &caller),
        Route::Build(rest) => launch::build(app, &caller, rest, &req, peer).await,
        Route::Launch(rest) => launch::v2(app, &caller, rest, &req, peer).await,
        Route::Versions => launch::versions(),
        Route::LegacyRepo(rest) => launch::legacy(rest),
        Route::HubHealth => launch::health(app),
        Route::SpawnRedirect(rest) => {
            let query = req.uri().query();
            tmpnb::spawn_redirect(app, &caller, rest, query, client).await
        }
    }
}

/// `OPTIONS` on a route: 204 with what it answers.
fn options(allow: String) -> Result<Response<Body>> {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(header::ALLOW, allow)
        .body(crate::body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))
}
