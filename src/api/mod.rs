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

use http::{header, Method, Request, Response, StatusCode};
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
use routes::Route;

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

/// Routes an API request: parse the route once, answer `OPTIONS` and 405
/// from its method table, authenticate, admit spawns, dispatch.
async fn route(app: &App, req: Request<Incoming>, peer: SocketAddr) -> Result<Response<Body>> {
    let path = req.uri().path().to_owned();
    let no_route = || ApiError::NotFound(format!("no route for {}", crate::text::printable(&path)));
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
        (Route::Root, _) => about::root(app, &req),
        (Route::Asset(file), _) => dashboard::serve(file),
        (Route::Healthcheck, _) => about::healthcheck(app),
        (Route::Metrics, _) => about::metrics(app, &caller),
        (Route::OpenApi, _) => about::openapi(),
        (Route::Configuration, _) => about::configuration(app),
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
