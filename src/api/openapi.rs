//! The OpenAPI 3 document of every route, generated with utoipa from the
//! answer types in [`super::views`] and [`crate::binding::Binding`], and from
//! the operation list below, which mirrors `super::route` one to one. A test
//! (`tests/openapi.rs`) calls every documented operation on a running binderd
//! and fails if one is not routed, so the two cannot drift apart.

#![allow(dead_code)] // the functions exist to carry their #[utoipa::path]

use std::sync::OnceLock;

use utoipa::{IntoResponses, OpenApi};

use super::target::HandoutRequest;
use super::views::*;
use crate::binding::{Binding, NAME_PATTERN};

/// The error answers any operation may give (SPEC: every error is JSON).
#[derive(IntoResponses)]
enum Errors {
    #[response(status = 400, description = "Bad JSON, fields or names")]
    BadRequest(#[to_schema] ErrorBody),
    #[response(
        status = 401,
        description = "No key or a wrong key where one is needed"
    )]
    Unauthorized(ErrorBody),
    #[response(
        status = 403,
        description = "A right key that may not do this, or over quota"
    )]
    Forbidden(ErrorBody),
    #[response(
        status = 404,
        description = "Not found (or not visible to this caller)"
    )]
    NotFound(ErrorBody),
    #[response(status = 405, description = "Method not allowed; see Allow")]
    MethodNotAllowed(ErrorBody),
    #[response(status = 409, description = "Conflict")]
    Conflict(ErrorBody),
    #[response(status = 413, description = "Body over the limit")]
    TooLarge(ErrorBody),
    #[response(status = 415, description = "Wrong content type")]
    UnsupportedMediaType(ErrorBody),
    #[response(
        status = 429,
        description = "Rate limited, or tmpnb's full; see Retry-After"
    )]
    TooManyRequests(ErrorBody),
    #[response(
        status = 503,
        description = "At maxPool, paused, or the backend is unavailable; see Retry-After"
    )]
    Unavailable(ErrorBody),
}

#[utoipa::path(get, path = "/", responses((status = 200, description = "Service name and routes", body = Root), Errors))]
fn root() {}

#[utoipa::path(get, path = "/healthcheck", responses((status = 200, body = Health), Errors))]
fn healthcheck() {}

#[utoipa::path(get, path = "/configuration", responses((status = 200, description = "Version and public settings, no secrets", body = Configuration), Errors))]
fn configuration() {}

#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "This document", body = Object), Errors))]
fn openapi_json() {}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text: handouts, starts, failed starts, culls, proxied requests, API answers by status, and each pool's counts", content_type = "text/plain", body = String), Errors))]
fn metrics_page() {}

#[utoipa::path(get, path = "/quota", security(("api_key" = [])), responses((status = 200, body = QuotaView), Errors))]
fn quota() {}

#[utoipa::path(get, path = "/bindings", responses((status = 200, body = Vec<Binding>), Errors))]
fn list_bindings() {}

#[utoipa::path(post, path = "/bindings", request_body = Binding, security(("api_key" = [])), responses((status = 201, body = Binding), Errors))]
fn create_binding() {}

#[utoipa::path(get, path = "/bindings/{name}", params(("name" = String, Path, description = "Binding name (case-insensitive)")), responses((status = 200, body = Binding), Errors))]
fn get_binding() {}

#[utoipa::path(head, path = "/bindings/{name}", params(("name" = String, Path)), responses((status = 200, description = "Exists"), Errors))]
fn head_binding() {}

#[utoipa::path(post, path = "/bindings/{name}", params(("name" = String, Path)), request_body = Binding, security(("api_key" = [])), responses((status = 201, body = Binding), Errors))]
fn create_named_binding() {}

#[utoipa::path(put, path = "/bindings/{name}", params(("name" = String, Path)), request_body = Binding, security(("api_key" = [])), responses((status = 200, description = "Replaced", body = Binding), (status = 201, description = "Created", body = Binding), Errors))]
fn put_binding() {}

#[utoipa::path(delete, path = "/bindings/{name}", params(("name" = String, Path), ("force" = Option<bool>, Query, description = "Stop assigned binders too")), security(("api_key" = [])), responses((status = 202, body = Deleting), Errors))]
fn delete_binding() {}

#[utoipa::path(get, path = "/bindings/{a}/{b}", params(("a" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,30}$"), ("b" = String, Path, pattern = "^[A-Za-z0-9._-]{1,31}$")), responses((status = 200, description = "The binding named {a}-{b}", body = Binding), Errors))]
fn get_two_part_binding() {}

#[utoipa::path(post, path = "/bindings/{a}/{b}", params(("a" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,30}$"), ("b" = String, Path, pattern = "^[A-Za-z0-9._-]{1,31}$")), request_body = Binding, security(("api_key" = [])), responses((status = 201, description = "Creates {a}-{b}", body = Binding), Errors))]
fn create_two_part_binding() {}

#[utoipa::path(head, path = "/bindings/{a}/{b}", params(("a" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,30}$"), ("b" = String, Path, pattern = "^[A-Za-z0-9._-]{1,31}$")), responses((status = 200, description = "Exists"), Errors))]
fn head_two_part_binding() {}

#[utoipa::path(put, path = "/bindings/{a}/{b}", params(("a" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,30}$"), ("b" = String, Path, pattern = "^[A-Za-z0-9._-]{1,31}$")), request_body = Binding, security(("api_key" = [])), responses((status = 200, description = "Replaced", body = Binding), (status = 201, description = "Created", body = Binding), Errors))]
fn put_two_part_binding() {}

#[utoipa::path(delete, path = "/bindings/{a}/{b}", params(("a" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,30}$"), ("b" = String, Path, pattern = "^[A-Za-z0-9._-]{1,31}$"), ("force" = Option<bool>, Query)), security(("api_key" = [])), responses((status = 202, body = Deleting), Errors))]
fn delete_two_part_binding() {}

#[utoipa::path(post, path = "/binders/{binding}", params(("binding" = String, Path), ("profile" = Option<String>, Query, description = "One of the binding's profiles (default: its default profile); unknown: 400 naming the choices; a keys_only one without a key: 403")), request_body(content = Option<HandoutRequest>, description = "Optional: `{\"profile\": \"large\"}` (as `?profile=`; both given, they must agree)", content_type = "application/json"), responses((status = 201, description = "A warm binder", body = BinderView), (status = 202, description = "Starting one", body = BinderView), Errors))]
fn spawn() {}

#[utoipa::path(get, path = "/binders/{binding}", params(("binding" = String, Path)), security(("api_key" = [])), responses((status = 200, description = "The binders this key may see", body = Vec<BinderView>), Errors))]
fn list_binders() {}

#[utoipa::path(get, path = "/binders/{binding}/{id}", params(("binding" = String, Path), ("id" = String, Path)), responses((status = 200, body = BinderView), Errors))]
fn get_binder() {}

#[utoipa::path(delete, path = "/binders/{binding}/{id}", description = "A key's binder: its owner or an admin. An anonymous binder: whoever holds its id.", params(("binding" = String, Path), ("id" = String, Path)), security(("api_key" = []), ()), responses((status = 202, body = Stopping), Errors))]
fn delete_binder() {}

#[derive(utoipa::ToSchema)]
struct PauseRequest {
    paused: bool,
}

#[utoipa::path(post, path = "/binders/{binding}/{id}/actions/pause", params(("binding" = String, Path), ("id" = String, Path)), request_body = PauseRequest, security(("api_key" = [])), responses((status = 200, body = BinderView), Errors))]
fn pause() {}

#[utoipa::path(get, path = "/binders/{binding}/{id}/logs", params(("binding" = String, Path), ("id" = String, Path), ("tail" = Option<u32>, Query)), security(("api_key" = [])), responses((status = 200, description = "Recent output", content_type = "text/plain", body = String), Errors))]
fn logs() {}
#[utoipa::path(get, path = "/bindings/{name}/build/logs", params(("name" = String, Path)), responses((status = 200, description = "The output of the binding's last content build: the repository's fetch and the environment its requirements built", content_type = "text/plain", body = String), Errors))]
fn build_logs() {}

#[utoipa::path(get, path = "/binders/{binding}/{id}/events", params(("binding" = String, Path), ("id" = String, Path)), responses((status = 200, description = "Server-sent events: `data: {BinderView}` per state change, until ready or failed", content_type = "text/event-stream", body = SseEvent), Errors))]
fn events() {}

#[utoipa::path(get, path = "/pools", responses((status = 200, body = Vec<PoolView>), Errors))]
fn list_pools() {}

#[utoipa::path(get, path = "/trends", responses((status = 200, description = "Every pool the caller may see (each profile's too): its last hour, a point per minute", body = Vec<TrendsView>), Errors))]
fn trends() {}

#[utoipa::path(get, path = "/pools/{binding}", params(("binding" = String, Path)), responses((status = 200, body = PoolView), Errors))]
fn get_pool() {}

#[derive(utoipa::ToSchema)]
struct ResizeRequest {
    #[schema(rename = "minPool")]
    min_pool: Option<u32>,
    #[schema(rename = "maxPool")]
    max_pool: Option<u32>,
}

#[utoipa::path(post, path = "/pools/{binding}", params(("binding" = String, Path), ("profile" = Option<String>, Query, description = "Resize this profile's own pool (without: the binding's pool, which serves its default profile)")), request_body = ResizeRequest, security(("api_key" = [])), responses((status = 200, body = PoolView), Errors))]
fn resize_pool() {}

#[utoipa::path(put, path = "/pools/{binding}", params(("binding" = String, Path), ("profile" = Option<String>, Query, description = "Resize this profile's own pool (without: the binding's pool, which serves its default profile)")), request_body = ResizeRequest, security(("api_key" = [])), responses((status = 200, body = PoolView), Errors))]
fn put_pool() {}

#[utoipa::path(post, path = "/api/spawn", params(("profile" = Option<String>, Query, description = "One of the binding's profiles (as `\"profile\"` in the body)")), request_body(content = Option<String>, description = "Any body or none; `{\"binding\": \"name\"}` picks a binding, `\"profile\"` one of its profiles (or `?profile=`)", content_type = "text/plain"), responses((status = 200, body = Spawned), Errors))]
fn tmpnb_spawn() {}

#[utoipa::path(get, path = "/api/stats", responses((status = 200, body = Stats), Errors))]
fn tmpnb_stats() {}

#[utoipa::path(get, path = "/spawn/{path}", params(("path" = String, Path, description = "Where to land inside the notebook"), ("profile" = Option<String>, Query, description = "One of the binding's profiles (default: its default profile); unknown: 400 naming the choices; a keys_only one without a key: 403")), responses((status = 302, description = "To /user/{token}/{path}", body = Spawned), Errors))]
fn tmpnb_spawn_redirect() {}

#[utoipa::path(get, path = "/user/{token}/{path}", params(("token" = String, Path), ("path" = String, Path)), responses((status = 200, description = "Whatever the container answers (any method, WebSocket upgrades too)"), (status = 502, description = "The container does not answer", body = ErrorBody), (status = 504, description = "The container took too long", body = ErrorBody), Errors))]
fn proxy() {}

#[utoipa::path(get, path = "/build/{provider}/{org}/{repo}/{ref}", params(("provider" = String, Path, description = "gh, gl or git"), ("org" = String, Path), ("repo" = String, Path), ("ref" = String, Path, description = "Not matched: a binding serves one image"), ("profile" = Option<String>, Query, description = "One of the binding's profiles (default: its default profile); unknown: 400 naming the choices; a keys_only one without a key: 403")), responses((status = 200, description = "BinderHub's launch stream: `data: {LaunchEvent}` events (built, launching, then ready with url and token, or failed with a message)", content_type = "text/event-stream", body = SseEvent), Errors))]
fn build() {}

#[utoipa::path(get, path = "/v2/{provider}/{org}/{repo}/{ref}", params(("provider" = String, Path), ("org" = String, Path), ("repo" = String, Path), ("ref" = String, Path), ("urlpath" = Option<String>, Query), ("labpath" = Option<String>, Query), ("filepath" = Option<String>, Query), ("profile" = Option<String>, Query, description = "One of the binding's profiles (default: its default profile); unknown: 400 naming the choices; a keys_only one without a key: 403")), responses((status = 302, description = "To the binder's location plus the asked path"), (status = 200, description = "A page that looks again every second while a server starts", content_type = "text/html", body = String), Errors))]
fn launch() {}

#[utoipa::path(get, path = "/repo/{org}/{repo}", params(("org" = String, Path), ("repo" = String, Path)), responses((status = 302, description = "Binder's legacy link: to /v2/gh/{org}/{repo}/master (a path after the repository becomes ?urlpath=)"), Errors))]
fn legacy_repo() {}

#[utoipa::path(get, path = "/versions", responses((status = 200, body = Versions), Errors))]
fn versions() {}

#[utoipa::path(get, path = "/health", responses((status = 200, body = HubHealth), (status = 503, description = "A check failed", body = HubHealth), Errors))]
fn hub_health() {}

#[derive(OpenApi)]
#[openapi(
    info(title = "binderd", description = "Pools of pre-warmed notebook containers, handed out instantly and proxied. Trailing slashes are optional everywhere."),
    paths(
        root, healthcheck, configuration, openapi_json, metrics_page, quota,
        list_bindings, create_binding, get_binding, head_binding, create_named_binding,
        put_binding, delete_binding, get_two_part_binding, create_two_part_binding,
        head_two_part_binding, put_two_part_binding, delete_two_part_binding,
        spawn, list_binders, get_binder, delete_binder, pause, logs, build_logs, events,
        list_pools, get_pool, resize_pool, put_pool, trends,
        tmpnb_spawn, tmpnb_stats, tmpnb_spawn_redirect, proxy,
        build, launch, legacy_repo, versions, hub_health,
    ),
    modifiers(&Security, &NamePatterns),
)]
struct Document;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`<key>`, `Bearer <key>` or `token <key>`",
            ))),
        );
    }
}

/// Every binding name the document shows, a path's `{name}` and
/// `{binding}` and [`Binding`]'s `name`, matches [`NAME_PATTERN`]: written
/// here from the one constant rather than spelt in each operation.
struct NamePatterns;

impl utoipa::Modify for NamePatterns {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{RefOr, Schema};
        let set = |schema: Option<&mut RefOr<Schema>>| {
            if let Some(RefOr::T(Schema::Object(object))) = schema {
                object.pattern = Some(NAME_PATTERN.to_owned());
            }
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.head,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let parameters = operation.parameters.iter_mut().flatten();
                for p in parameters.filter(|p| {
                    p.parameter_in == ParameterIn::Path
                        && matches!(p.name.as_str(), "name" | "binding")
                }) {
                    set(p.schema.as_mut());
                }
            }
        }
        let binding = openapi
            .components
            .as_mut()
            .and_then(|c| c.schemas.get_mut("Binding"));
        if let Some(RefOr::T(Schema::Object(binding))) = binding {
            set(binding.properties.get_mut("name"));
        }
    }
}

/// The document, rendered once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = Document::openapi();
        doc.info.version = super::VERSION.to_owned();
        doc.to_json().unwrap_or_else(|_| "{}".into())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_has_every_route_and_the_schemas() {
        let doc: serde_json::Value = serde_json::from_str(super::document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/bindings/{name}",
            "/binders/{binding}",
            "/pools/{binding}",
            "/api/spawn",
            "/user/{token}/{path}",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for s in [
            "Binding",
            "BinderView",
            "PoolView",
            "ErrorBody",
            "Profile",
            "HandoutRequest",
        ] {
            assert!(schemas.contains_key(s), "{s} missing");
        }
        // The handout documents its choice of profile, body and query.
        let spawn = &paths["/binders/{binding}"]["post"];
        assert!(spawn["requestBody"].is_object(), "{spawn}");
        let params = spawn["parameters"].as_array().unwrap();
        assert!(params
            .iter()
            .any(|p| p["name"] == "profile" && p["in"] == "query"));
    }
}
