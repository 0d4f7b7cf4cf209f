//! `/bindings`: the templates.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::reply::json;
use super::request::{binding_name, read_json};
use super::{ApiError, App, Result};
use crate::auth::{may_create_binding, Caller};
use crate::binding::{Binding, BindingName};
use crate::body::Body;
use crate::pool::{BuildPhase, Pool, PoolError};
use crate::text::printable;

/// The binding as answered: the template with its pool's sizes as they are
/// now, plus owner, created_at and status.
pub(super) fn render(app: &App, pool: &Pool) -> Binding {
    let record = pool.record();
    let mut doc = record.document().clone();
    if doc.profiles.is_empty() {
        // With profiles the sizes now are each pool's (`GET /pools/{b}`).
        let counts = pool.counts();
        doc.pool.min = counts.min;
        doc.pool.max = counts.max;
    }
    doc.owner = Some(record.owner.clone().into());
    doc.created_at = Some(record.created_at.into());
    let (status, message) = match pool.build().phase() {
        Some(BuildPhase::Fetching | BuildPhase::Building) if !pool.content_ready() => {
            ("building", None)
        }
        Some(BuildPhase::Failed(why)) if !pool.content_ready() => ("error", Some(why)),
        _ => match pool.error().or_else(|| profiles_error(app, pool)) {
            Some(why) => ("error", Some(why)),
            None => ("ready", None),
        },
    };
    doc.status = Some(status.into());
    doc.message = message.map(Into::into);
    doc
}

/// Why a profile's own pool last failed to start, naming the profile.
fn profiles_error(app: &App, pool: &Pool) -> Option<String> {
    app.pools.pools_of(&pool.name).iter().find_map(|p| {
        p.profile.as_ref()?;
        let why = p.error()?;
        Some(format!(
            "profile '{}': {why}",
            p.profile.as_deref().unwrap_or_default()
        ))
    })
}

/// `GET /bindings/{b}/build/logs`: the output of the binding's last
/// content build (fetch, environment), as text; whoever sees the binding
/// may read it.
pub(super) fn build_logs(app: &App, caller: &Caller, raw_name: &str) -> Result<Response<Body>> {
    let (name, pool) = visible(app, caller, raw_name)?;
    let pool = pool.ok_or_else(|| not_found(&name))?;
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(crate::body::full(pool.build().text()))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

pub(super) fn list(app: &App, caller: &Caller) -> Result<Response<Body>> {
    let docs: Vec<Binding> = app
        .pools
        .bindings()
        .iter()
        .filter(|p| p.current().access().visible_to(caller))
        .map(|p| render(app, p))
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
    may_raise_limits(app, caller, &binding)?;
    within_a_users_share(app, caller, &binding, true)?;
    let owner = caller.key_name().unwrap_or_default();
    let (pool, _) = app.pools.put_binding(binding, owner, false).await?;
    json(StatusCode::CREATED, &render(app, &pool))
}

/// A binding may lower the server's `[limits]` with any key; raising them
/// takes an admin key (403 naming each limit).
/// Each profile's resources follow the same rule.
fn may_raise_limits(app: &App, caller: &Caller, binding: &Binding) -> Result<()> {
    if caller.is_admin() {
        return Ok(());
    }
    for (profile, template) in templates(binding) {
        let raised = app.config.limits.raised_by(template.resources.wanted());
        if !raised.is_empty() {
            return Err(ApiError::Forbidden(format!(
                "only admin keys may raise limits: {}{}",
                profile
                    .map(|p| format!("profile '{p}': "))
                    .unwrap_or_default(),
                raised.join("; ")
            )));
        }
    }
    Ok(())
}

/// What each of a binding's pools would start from: the binding itself,
/// or each profile's template (with its name).
fn templates(binding: &Binding) -> Vec<(Option<&str>, std::borrow::Cow<'_, Binding>)> {
    if binding.profiles.is_empty() {
        return vec![(None, std::borrow::Cow::Borrowed(binding))];
    }
    binding
        .profiles
        .iter()
        .map(|p| {
            (
                Some(p.name.as_str()),
                std::borrow::Cow::Owned(binding.with_profile(p)),
            )
        })
        .collect()
}

/// What a user key (not an admin) may create (`[security]`): only images
/// the operator allowed (the notebook's and its services'), pools up to
/// `user_max_pool`, and (for a new binding) at most `user_max_bindings` of
/// its own. 403 naming the limit.
fn within_a_users_share(app: &App, caller: &Caller, binding: &Binding, new: bool) -> Result<()> {
    let Some(key) = caller.key_name().filter(|_| !caller.is_admin()) else {
        return Ok(());
    };
    let security = &app.config.security;
    let images = binding
        .image
        .iter()
        .chain(binding.profiles.iter().filter_map(|p| p.image.as_ref()))
        .chain(binding.services.iter().filter_map(|s| s.image.as_ref()));
    for image in images {
        if !security.image_allowed(image) {
            return Err(ApiError::Forbidden(format!(
                "user keys may name only the images [security] allowed_images lists; '{}' is not one (an admin may create this binding)",
                printable(image)
            )));
        }
    }
    // A binding's profiles share its allowance: their pools together.
    let (min, max) = templates(binding)
        .iter()
        .fold((0u32, 0u32), |(min, max), (_, t)| {
            (
                min.saturating_add(t.pool.min),
                max.saturating_add(t.pool.max),
            )
        });
    may_size_pool(app, caller, Some(min), Some(max))?;
    if new {
        let owned = app
            .pools
            .bindings()
            .iter()
            .filter(|p| p.record().owner == key)
            .count();
        if owned >= security.user_max_bindings as usize {
            return Err(ApiError::Forbidden(format!(
                "key '{key}' owns {owned} bindings, the most a user key may ([security] user_max_bindings)"
            )));
        }
    }
    Ok(())
}

/// A user key sizes pools up to `[security] user_max_pool`; admins as the
/// server allows.
pub(super) fn may_size_pool(
    app: &App,
    caller: &Caller,
    min: Option<u32>,
    max: Option<u32>,
) -> Result<()> {
    let cap = app.config.security.user_max_pool;
    if caller.is_admin() || min.max(max).is_none_or(|n| n <= cap) {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "a user key may size a pool up to {cap} ([security] user_max_pool); an admin may go further"
    )))
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

/// The pool of binding `name` if this caller may see it; 400 for a bad name.
fn visible(app: &App, caller: &Caller, raw_name: &str) -> Result<(BindingName, Option<Arc<Pool>>)> {
    let name = binding_name(raw_name)?;
    let pool = app
        .pools
        .binding(&name)
        .filter(|p| p.current().access().visible_to(caller));
    Ok((name, pool))
}

fn not_found(name: &BindingName) -> ApiError {
    ApiError::NotFound(format!("binding '{name}' not found"))
}

/// `GET|HEAD /bindings/{name}` (and `/bindings/{a}/{b}` as `{a}-{b}`).
pub(super) fn get(app: &App, caller: &Caller, raw_name: &str) -> Result<Response<Body>> {
    let (name, pool) = visible(app, caller, raw_name)?;
    let pool = pool.ok_or_else(|| not_found(&name))?;
    json(StatusCode::OK, &render(app, &pool))
}

/// `PUT /bindings/{name}`: replace (owner or admin) or create.
pub(super) async fn put(
    app: &App,
    caller: &Caller,
    raw_name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    if caller.key_name().is_none() {
        return Err(crate::auth::AuthError::Required.into());
    }
    let (name, visible) = visible(app, caller, raw_name)?;
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
    may_raise_limits(app, caller, &binding)?;
    within_a_users_share(app, caller, &binding, visible.is_none())?;
    let owner = caller.key_name().unwrap_or_default();
    if visible.is_none() && app.pools.binding(&name).is_some() {
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
    json(status, &render(app, &pool))
}

/// `DELETE /bindings/{name}[?force=true]` (owner or admin).
pub(super) async fn delete(
    app: &App,
    caller: &Caller,
    raw_name: &str,
    query: &str,
) -> Result<Response<Body>> {
    if caller.key_name().is_none() {
        return Err(crate::auth::AuthError::Required.into());
    }
    let (name, pool) = visible(app, caller, raw_name)?;
    let pool = pool.ok_or_else(|| not_found(&name))?;
    if !pool.current().access().owned_by(caller) {
        return Err(ApiError::Forbidden(format!(
            "only the owner of binding '{name}' or an admin may delete it"
        )));
    }
    let force = query
        .split('&')
        .any(|kv| kv == "force=true" || kv == "force=1");
    match app.pools.delete_binding(&name, force).await {
        Ok(()) => json(
            StatusCode::ACCEPTED,
            &super::views::Deleting {
                name: name.to_string(),
                status: "deleting",
            },
        ),
        Err(PoolError::NotFound(_)) => Err(not_found(&name)),
        Err(e) => Err(e.into()),
    }
}
