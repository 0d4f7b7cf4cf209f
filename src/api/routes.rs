//! Every API route as one type, parsed once from the (slash-folded) path.
//! [`Route::methods`] is the one table behind `Allow` on 405 and `OPTIONS`;
//! the dispatch in `super::route` matches on (route, method), and a test
//! checks that every operation of the OpenAPI document parses to a route
//! that answers its method. `/user/{token}/...` is not here: it is the
//! proxy's, and `super::handle` sends it there before any routing.

use std::borrow::Cow;

/// An API route, with the path segments it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route<'a> {
    Root,
    Healthcheck,
    Configuration,
    OpenApi,
    Metrics,
    Quota,
    /// `/bindings`
    Bindings,
    /// `/bindings/{name}`, and `/bindings/{a}/{b}` as `{a}-{b}`.
    Binding(Cow<'a, str>),
    /// `/binders/{binding}`
    Binders(&'a str),
    /// `/binders/{binding}/{id}`
    Binder(&'a str, &'a str),
    Pause(&'a str, &'a str),
    Logs(&'a str, &'a str),
    /// `/bindings/{b}/build/logs`: the last content build's output.
    BuildLogs(&'a str),
    Events(&'a str, &'a str),
    /// `/pools`
    Pools,
    /// `/pools/{binding}`
    Pool(&'a str),
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

impl<'a> Route<'a> {
    /// The route of `path` (trailing slashes optional), or `None`.
    pub fn parse(path: &'a str) -> Option<Route<'a>> {
        if let Some(rest) = path.strip_prefix("/spawn/") {
            return Some(Route::SpawnRedirect(rest));
        }
        if let Some(rest) = path.strip_prefix("/build/") {
            return Some(Route::Build(rest.trim_end_matches('/')));
        }
        if let Some(rest) = path.strip_prefix("/v2/") {
            return Some(Route::Launch(rest.trim_end_matches('/')));
        }
        if let Some(rest) = path.strip_prefix("/repo/") {
            return Some(Route::LegacyRepo(rest.trim_end_matches('/')));
        }
        let trimmed = path.trim_end_matches('/');
        let mut segments = [""; 6];
        let mut n = 0;
        if let Some(rest) = trimmed.strip_prefix('/').filter(|r| !r.is_empty()) {
            for segment in rest.split('/') {
                *segments.get_mut(n)? = segment;
                n += 1;
            }
        }
        Some(match &segments[..n] {
            [] => Route::Root,
            ["healthcheck"] => Route::Healthcheck,
            ["configuration"] => Route::Configuration,
            ["openapi.json"] => Route::OpenApi,
            ["metrics"] => Route::Metrics,
            ["quota"] => Route::Quota,
            ["bindings"] => Route::Bindings,
            ["bindings", name] => Route::Binding(Cow::Borrowed(name)),
            ["bindings", a, b] => Route::Binding(Cow::Owned(format!("{a}-{b}"))),
            ["bindings", name, "build", "logs"] => Route::BuildLogs(name),
            ["binders", b] => Route::Binders(b),
            ["binders", b, id] => Route::Binder(b, id),
            ["binders", b, id, "actions", "pause"] => Route::Pause(b, id),
            ["binders", b, id, "logs"] => Route::Logs(b, id),
            ["binders", b, id, "events"] => Route::Events(b, id),
            ["pools"] => Route::Pools,
            ["pools", b] => Route::Pool(b),
            ["api", "spawn"] => Route::TmpnbSpawn,
            ["api", "stats"] => Route::TmpnbStats,
            ["spawn"] => Route::SpawnRedirect(""),
            ["versions"] => Route::Versions,
            ["health"] => Route::HubHealth,
            [file @ ("dashboard.js" | "dashboard.css")] => Route::Asset(file),
            _ => return None,
        })
    }

    /// The methods this route answers (`OPTIONS` aside, which every route
    /// answers): the `Allow` header of 405s and of `OPTIONS`.
    pub fn methods(&self) -> &'static str {
        match self {
            Route::Root
            | Route::Healthcheck
            | Route::Configuration
            | Route::OpenApi
            | Route::Metrics
            | Route::Quota
            | Route::Pools
            | Route::Logs(..)
            | Route::BuildLogs(_)
            | Route::TmpnbStats
            | Route::SpawnRedirect(_)
            | Route::Versions
            | Route::LegacyRepo(_)
            | Route::HubHealth
            | Route::Asset(_) => "GET, HEAD",
            // A launch hands out a binder: no HEAD.
            Route::Build(_) | Route::Launch(_) => "GET",
            Route::Bindings | Route::Binders(_) => "GET, HEAD, POST",
            Route::Binding(_) => "GET, HEAD, POST, PUT, DELETE",
            Route::Binder(..) => "GET, HEAD, DELETE",
            Route::Events(..) => "GET",
            Route::Pause(..) | Route::TmpnbSpawn => "POST",
            Route::Pool(_) => "GET, HEAD, POST, PUT",
        }
    }

    /// Whether this route answers `method`.
    pub fn allows(&self, method: &http::Method) -> bool {
        self.methods().split(", ").any(|m| m == method.as_str())
    }

    /// Spawn routes go through the spawn rate limits here; the BinderHub
    /// launch routes admit their spawns themselves (a refused one is a
    /// `failed` event, and a page waiting on a start asks again freely).
    pub fn spawns(&self, method: &http::Method) -> bool {
        match self {
            Route::TmpnbSpawn | Route::SpawnRedirect(_) => true,
            Route::Binders(_) => method == http::Method::POST,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn paths_parse_once_with_optional_trailing_slashes() {
        assert_eq!(Route::parse("/"), Some(Route::Root));
        assert_eq!(Route::parse(""), Some(Route::Root));
        assert_eq!(Route::parse("/bindings/"), Some(Route::Bindings));
        assert_eq!(
            Route::parse("/bindings/org/repo"),
            Some(Route::Binding(Cow::Owned("org-repo".into())))
        );
        assert_eq!(
            Route::parse("/binders/b/i/actions/pause"),
            Some(Route::Pause("b", "i"))
        );
        assert_eq!(Route::parse("/spawn"), Some(Route::SpawnRedirect("")));
        assert_eq!(
            Route::parse("/spawn/a/b/"),
            Some(Route::SpawnRedirect("a/b/"))
        );
        assert_eq!(Route::parse("/api/spawn/"), Some(Route::TmpnbSpawn));
        assert_eq!(Route::parse("/nowhere"), None);
        assert_eq!(Route::parse("/binders/b/i/actions/pause/x/y"), None);
        assert!(Route::Pool("b").allows(&Method::PUT));
        assert!(!Route::Events("b", "i").allows(&Method::HEAD));
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
            let route = Route::parse(&concrete)
                .unwrap_or_else(|| panic!("{path} is documented but not a route"));
            for method in ops.as_object().unwrap().keys() {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                assert!(
                    route.allows(&method),
                    "{method} {path} is documented but {route:?} answers {}",
                    route.methods()
                );
            }
        }
    }
}
