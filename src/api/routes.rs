//! Every API route as one type, [`Route`]: one variant per handler, with
//! the path segments it carries. [`table`] is the one match from (path,
//! method) to a route; the `Allow` header of 405s and of `OPTIONS` is read
//! from it (by asking it for each method), so the router, the methods and
//! the dispatch in `super::route` (one arm per variant) cannot disagree. A
//! test checks that every operation of the OpenAPI document parses to a
//! route for its method. `/user/{token}/...` is not here: it is the
//! proxy's, and `super::handle` sends it there before any routing.

use std::borrow::Cow;
use std::sync::OnceLock;

use http::Method;

use super::ApiError;

/// An API route: which handler answers, with the path segments it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route<'a> {
    /// `GET /`: the dashboard for a browser, the service's name for JSON.
    Root,
    Healthcheck,
    Configuration,
    OpenApi,
    Metrics,
    Quota,
    /// `GET /bindings`
    ListBindings,
    /// `POST /bindings`, `POST /bindings/{name}` (and `{a}/{b}` as `{a}-{b}`).
    CreateBinding(Option<Cow<'a, str>>),
    /// `GET /bindings/{name}`, and `/bindings/{a}/{b}` as `{a}-{b}`.
    GetBinding(Cow<'a, str>),
    /// `PUT /bindings/{name}`
    PutBinding(Cow<'a, str>),
    /// `DELETE /bindings/{name}`
    DeleteBinding(Cow<'a, str>),
    /// `GET /bindings/{b}/build/logs`: the last content build's output.
    BuildLogs(&'a str),
    /// `POST /binders/{binding}`: a handout.
    Handout(&'a str),
    /// `GET /binders/{binding}`
    ListBinders(&'a str),
    /// `GET /binders/{binding}/{id}`
    GetBinder(&'a str, &'a str),
    /// `DELETE /binders/{binding}/{id}`
    StopBinder(&'a str, &'a str),
    Pause(&'a str, &'a str),
    Logs(&'a str, &'a str),
    Events(&'a str, &'a str),
    /// `GET /pools`
    ListPools,
    /// `GET /pools/{binding}`
    GetPool(&'a str),
    /// `GET /trends`: every visible pool's last hour.
    Trends,
    /// `POST|PUT /pools/{binding}`
    ResizePool(&'a str),
    /// tmpnb: `POST /api/spawn/`
    TmpnbSpawn,
    /// tmpnb: `GET /api/stats`
    TmpnbStats,
    /// tmpnb: `GET /spawn/{path}`, with the path after `/spawn/`.
    SpawnRedirect(&'a str),
    /// BinderHub: `GET /build/{provider}/{spec}`, with what follows `/build/`.
    Build(&'a str),
    /// BinderHub: `GET /v2/{provider}/{spec}`, with what follows `/v2/`.
    Launch(&'a str),
    /// Binder's legacy links: `GET /repo/{org}/{repo}[/{path}]`, with what
    /// follows `/repo/`.
    LegacyRepo(&'a str),
    /// BinderHub: `GET /versions`
    Versions,
    /// BinderHub: `GET /health`
    HubHealth,
    /// The dashboard's script and style (`/dashboard.js`, `/dashboard.css`).
    Asset(&'a str),
}

/// What a request asks for: a route, or what `OPTIONS` answers.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Asked<'a> {
    Route(Route<'a>),
    /// `OPTIONS` on a route: the `Allow` value (its methods and `OPTIONS`).
    Options(String),
}

/// A method a route may answer (`OPTIONS` aside, which every route answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Head,
    Post,
    Put,
    Delete,
}

/// Every verb, in the order `Allow` lists them.
const VERBS: [Verb; 5] = [Verb::Get, Verb::Head, Verb::Post, Verb::Put, Verb::Delete];

impl Verb {
    fn of(method: &Method) -> Option<Verb> {
        Some(match method.as_str() {
            "GET" => Verb::Get,
            "HEAD" => Verb::Head,
            "POST" => Verb::Post,
            "PUT" => Verb::Put,
            "DELETE" => Verb::Delete,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Head => "HEAD",
            Verb::Post => "POST",
            Verb::Put => "PUT",
            Verb::Delete => "DELETE",
        }
    }
}

/// The route `method` on `path` (trailing slashes optional) asks for; 404
/// for a path that is no route, 405 with `Allow` for a method it does not
/// answer, and the `Allow` value for `OPTIONS`.
pub(super) fn find<'a>(path: &'a str, method: &Method) -> Result<Asked<'a>, ApiError> {
    if let Some(route) = Verb::of(method).and_then(|verb| table(path, verb)) {
        return Ok(Asked::Route(route));
    }
    let allow = methods(path);
    if allow.is_empty() {
        let path = crate::text::printable(path);
        return Err(ApiError::NotFound(format!("no route for {path}")));
    }
    if method == Method::OPTIONS {
        return Ok(Asked::Options(format!("{allow}, OPTIONS")));
    }
    Err(ApiError::MethodNotAllowed {
        method: method.clone(),
        allow,
    })
}

/// The methods [`table`] answers on `path`, as `Allow` lists them (empty:
/// `path` is no route).
fn methods(path: &str) -> &'static str {
    let mask = VERBS
        .iter()
        .enumerate()
        .filter(|(_, verb)| table(path, **verb).is_some())
        .fold(0, |mask, (i, _)| mask | 1 << i);
    // Every set of verbs spelt once, so that a 405 carries a static value.
    static ALLOW: OnceLock<Vec<String>> = OnceLock::new();
    let spelt = ALLOW.get_or_init(|| {
        (0..1usize << VERBS.len())
            .map(|mask| {
                let names = VERBS.iter().enumerate().filter(|(i, _)| mask & 1 << i != 0);
                names.map(|(_, v)| v.name()).collect::<Vec<_>>().join(", ")
            })
            .collect()
    });
    &spelt[mask]
}

impl Route<'_> {
    /// Whether this route hands out a binder through the spawn rate limits
    /// (checked before its handler). The BinderHub launch routes admit
    /// their spawns themselves (a refused one is a `failed` event, and a
    /// page waiting on a start asks again freely).
    pub fn spawns(&self) -> bool {
        matches!(
            self,
            Route::Handout(_) | Route::TmpnbSpawn | Route::SpawnRedirect(_)
        )
    }
}

/// The one table: the route `verb` on `path` asks for, or `None`.
fn table(path: &str, verb: Verb) -> Option<Route<'_>> {
    use Route::*;
    use Verb::{Delete, Get, Head, Post, Put};
    let read = matches!(verb, Get | Head);
    // Routes that take the rest of the path as it is.
    if let Some(rest) = path.strip_prefix("/spawn/") {
        return read.then_some(SpawnRedirect(rest));
    }
    // A launch hands out a binder: no HEAD.
    let launch = verb == Get;
    if let Some(rest) = path.strip_prefix("/build/") {
        return launch.then(|| Build(rest.trim_end_matches('/')));
    }
    if let Some(rest) = path.strip_prefix("/v2/") {
        return launch.then(|| Launch(rest.trim_end_matches('/')));
    }
    if let Some(rest) = path.strip_prefix("/repo/") {
        return read.then(|| LegacyRepo(rest.trim_end_matches('/')));
    }
    let mut segments = [""; 6];
    let n = split(path, &mut segments)?;
    Some(match (&segments[..n], verb) {
        ([], Get | Head) => Root,
        (["healthcheck"], Get | Head) => Healthcheck,
        (["configuration"], Get | Head) => Configuration,
        (["openapi.json"], Get | Head) => OpenApi,
        (["metrics"], Get | Head) => Metrics,
        (["quota"], Get | Head) => Quota,
        (["bindings"], Get | Head) => ListBindings,
        (["bindings"], Post) => CreateBinding(None),
        (["bindings", name], _) => binding(Cow::Borrowed(name), verb),
        (["bindings", a, b], _) => binding(Cow::Owned(format!("{a}-{b}")), verb),
        (["bindings", name, "build", "logs"], Get | Head) => BuildLogs(name),
        (["binders", b], Get | Head) => ListBinders(b),
        (["binders", b], Post) => Handout(b),
        (["binders", b, id], Get | Head) => GetBinder(b, id),
        (["binders", b, id], Delete) => StopBinder(b, id),
        (["binders", b, id, "actions", "pause"], Post) => Pause(b, id),
        (["binders", b, id, "logs"], Get | Head) => Logs(b, id),
        (["binders", b, id, "events"], Get) => Events(b, id),
        (["pools"], Get | Head) => ListPools,
        (["pools", b], Get | Head) => GetPool(b),
        (["trends"], Get | Head) => Trends,
        (["pools", b], Post | Put) => ResizePool(b),
        (["api", "spawn"], Post) => TmpnbSpawn,
        (["api", "stats"], Get | Head) => TmpnbStats,
        (["spawn"], Get | Head) => SpawnRedirect(""),
        (["versions"], Get | Head) => Versions,
        (["health"], Get | Head) => HubHealth,
        ([file @ ("dashboard.js" | "dashboard.css")], Get | Head) => Asset(file),
        _ => return None,
    })
}

/// `/bindings/{name}` (and `/bindings/{a}/{b}` as `{a}-{b}`) answers every
/// verb.
fn binding(name: Cow<'_, str>, verb: Verb) -> Route<'_> {
    match verb {
        Verb::Get | Verb::Head => Route::GetBinding(name),
        Verb::Post => Route::CreateBinding(Some(name)),
        Verb::Put => Route::PutBinding(name),
        Verb::Delete => Route::DeleteBinding(name),
    }
}

/// `path`'s segments (trailing slashes dropped) into `segments`: how many,
/// or `None` when there are more than it holds.
fn split<'a>(path: &'a str, segments: &mut [&'a str]) -> Option<usize> {
    let trimmed = path.trim_end_matches('/');
    let mut n = 0;
    if let Some(rest) = trimmed.strip_prefix('/').filter(|r| !r.is_empty()) {
        for segment in rest.split('/') {
            *segments.get_mut(n)? = segment;
            n += 1;
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route<'a>(path: &'a str, method: Method) -> Option<Route<'a>> {
        match find(path, &method) {
            Ok(Asked::Route(route)) => Some(route),
            _ => None,
        }
    }

    #[test]
    fn paths_parse_once_with_optional_trailing_slashes() {
        assert_eq!(route("/", Method::GET), Some(Route::Root));
        assert_eq!(route("", Method::HEAD), Some(Route::Root));
        assert_eq!(route("/bindings/", Method::GET), Some(Route::ListBindings));
        assert_eq!(
            route("/bindings/org/repo", Method::PUT),
            Some(Route::PutBinding(Cow::Owned("org-repo".into())))
        );
        assert_eq!(
            route("/binders/b/i/actions/pause", Method::POST),
            Some(Route::Pause("b", "i"))
        );
        assert_eq!(route("/spawn", Method::GET), Some(Route::SpawnRedirect("")));
        assert_eq!(
            route("/spawn/a/b/", Method::GET),
            Some(Route::SpawnRedirect("a/b/"))
        );
        assert_eq!(route("/api/spawn/", Method::POST), Some(Route::TmpnbSpawn));
        assert!(route("/pools/b", Method::PUT).is_some());
        assert_eq!(route("/binders/b/i/events", Method::HEAD), None);
    }

    #[test]
    fn a_path_that_is_no_route_is_404_and_a_method_it_lacks_405_with_allow() {
        for path in ["/nowhere", "/binders/b/i/actions/pause/x/y"] {
            let e = find(path, &Method::GET).unwrap_err();
            assert!(matches!(e, ApiError::NotFound(_)), "{path}: {e:?}");
            assert!(find(path, &Method::OPTIONS).is_err());
        }
        let e = find("/binders/b/i/events", &Method::HEAD).unwrap_err();
        assert!(matches!(e, ApiError::MethodNotAllowed { allow: "GET", .. }));
        let e = find("/bindings/x", &Method::PATCH).unwrap_err();
        let allow = "GET, HEAD, POST, PUT, DELETE";
        assert!(matches!(e, ApiError::MethodNotAllowed { allow: a, .. } if a == allow));
        assert_eq!(
            find("/pools/b", &Method::OPTIONS).unwrap(),
            Asked::Options("GET, HEAD, POST, PUT, OPTIONS".into())
        );
        assert_eq!(methods("/v2/gh/a/b/HEAD"), "GET");
        assert_eq!(methods("/binders/b/i"), "GET, HEAD, DELETE");
        assert_eq!(methods("/api/spawn"), "POST");
    }

    #[test]
    fn exactly_the_handouts_of_the_rate_limits_spawn() {
        assert!(route("/binders/b", Method::POST).unwrap().spawns());
        assert!(!route("/binders/b", Method::GET).unwrap().spawns());
        assert!(route("/api/spawn", Method::POST).unwrap().spawns());
        assert!(route("/spawn/x", Method::GET).unwrap().spawns());
        assert!(!route("/build/gh/a/b/HEAD", Method::GET).unwrap().spawns());
        assert!(!route("/v2/gh/a/b/HEAD", Method::GET).unwrap().spawns());
    }

    /// The OpenAPI document and the router cannot drift apart: every
    /// documented operation parses to a route that answers its method.
    #[test]
    fn every_documented_operation_is_a_route_with_its_method() {
        let doc: serde_json::Value =
            serde_json::from_str(super::super::openapi::document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() > 15, "{}", paths.len());
        for (path, ops) in paths {
            if path.starts_with("/user/") {
                continue; // the proxy's, routed before the API
            }
            let concrete = path.replace(['{', '}'], "");
            assert!(
                !methods(&concrete).is_empty(),
                "{path} is documented but not a route"
            );
            for method in ops.as_object().unwrap().keys() {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                assert!(
                    route(&concrete, method.clone()).is_some(),
                    "{method} {path} is documented but {concrete} answers {}",
                    methods(&concrete)
                );
            }
        }
    }
}
