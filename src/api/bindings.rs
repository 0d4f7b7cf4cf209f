//! `/bindings`: the templates.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::{binding_name, dispatch_mismatch, json, read_json, ApiError, App, Result};
use crate::auth::{may_create_binding, Caller};
use crate::binding::{printable, Binding};
use crate::body::Body;
use crate::pool::{Pool, PoolError};

/// The binding as answered: the template plus owner, created_at and status.
pub(super) fn render(pool: &Pool) -> Value {
    let record = pool.record();
    let mut doc = serde_json::to_value(&record.binding).unwrap_or_else(|_| json!({}));
    let counts = pool.counts();
    doc["pool"] = json!({"min": counts.min, "max": counts.max});
    doc["owner"] = json!(record.owner);
    doc["created_at"] = json!(record.created_at);
    match pool.error() {
        None => doc["status"] = json!("ready"),
        Some(message) => {
            doc["status"] = json!("error");
            doc["message"] = json!(message);
        }
    }
    doc
}

pub(super) fn list(app: &App, caller: &Caller) -> Result<Response<Body>> {
    let docs: Vec<Value> = app
        .pools
        .list()
        .iter()
        .filter(|p| p.current().access().visible_to(caller))
        .map(|p| render(p))
        .collect();
    json(StatusCode::OK, &docs)
}

/// `POST /bindings`, `POST /bindings/{name}`, `POST /bindings/{a}/{b}`.
pub(super) async fn create(
    app: &App,
    caller: &Caller,
    path_name: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    may_create_binding(caller, app.config.backend.runs_on_host())?;
    let binding: Binding = read_json(app, req).await?;
    let binding = name_from_path(binding, path_name)?;
    let owner = caller.key_name().unwrap_or_default();
    let (pool, _) = app.pools.put_binding(binding, owner, false).await?;
    json(StatusCode::CREATED, &render(&pool))
}

/// The body's name must agree with the path's; a body without one takes it.
fn name_from_path(mut binding: Binding, path_name: Option<&str>) -> Result<Binding> {
    if let Some(path_name) = path_name {
        let from_path = binding_name(path_name)?;
        if binding.name.is_empty() {
            binding.name = from_path.to_string();
        } else if binding_name(&binding.name)? != from_path {
            return Err(ApiError::BadRequest(format!(
                "the body names binding '{}' but the path names '{from_path}'",
                printable(&binding.name)
            )));
        }
    } else if binding.name.is_empty() {
        return Err(ApiError::BadRequest("the binding needs a 'name'".into()));
    }
    Ok(binding)
}

/// `/bindings/{name}` (and `/bindings/{a}/{b}` as `{a}-{b}`).
pub(super) async fn one(
    app: &App,
    caller: &Caller,
    raw_name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let method = req.method().clone();
    let name = binding_name(raw_name)?;
    let not_found = || ApiError::NotFound(format!("binding '{name}' not found"));
    let visible = app
        .pools
        .get(&name)
        .filter(|p| p.current().access().visible_to(caller));
    match method {
        Method::GET | Method::HEAD => {
            let pool = visible.ok_or_else(not_found)?;
            json(StatusCode::OK, &render(&pool))
        }
        Method::POST => create(app, caller, Some(raw_name), req).await,
        Method::PUT => {
            if caller.key_name().is_none() {
                return Err(crate::auth::AuthError::Required.into());
            }
            if let Some(pool) = &visible {
                if !pool.current().access().owned_by(caller) {
                    return Err(ApiError::Forbidden(format!(
                        "only the owner of binding '{name}' or an admin may replace it"
                    )));
                }
            }
            may_create_binding(caller, app.config.backend.runs_on_host())?;
            let binding: Binding = read_json(app, req).await?;
            let binding = name_from_path(binding, Some(raw_name))?;
            let owner = caller.key_name().unwrap_or_default();
            if visible.is_none() && app.pools.get(&name).is_some() {
                // Exists but hidden from this caller: do not reveal or replace it.
                return Err(ApiError::Conflict(format!(
                    "binding '{name}' already exists"
                )));
            }
            let (pool, created) = app.pools.put_binding(binding, owner, true).await?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json(status, &render(&pool))
        }
        Method::DELETE => {
            if caller.key_name().is_none() {
                return Err(crate::auth::AuthError::Required.into());
            }
            let pool = visible.ok_or_else(not_found)?;
            if !pool.current().access().owned_by(caller) {
                return Err(ApiError::Forbidden(format!(
                    "only the owner of binding '{name}' or an admin may delete it"
                )));
            }
            let force = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "force=true" || kv == "force=1"));
            match app.pools.delete_binding(&name, force).await {
                Ok(()) => json(
                    StatusCode::ACCEPTED,
                    &super::views::Deleting {
                        name: name.to_string(),
                        status: "deleting",
                    },
                ),
                Err(PoolError::NotFound(_)) => Err(not_found()),
                Err(e) => Err(e.into()),
            }
        }
        _ => Err(dispatch_mismatch()),
    }
}
