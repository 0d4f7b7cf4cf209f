//! Building answers: JSON and text bodies, redirects, and the headers every
//! answer of binderd's own carries (the frame and sniffing guard, CORS).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

use super::{ApiError, App, Result};
use crate::body::{full, Body};

/// `value` as JSON with `status`.
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

/// A 200 with a body that is not JSON built here.
pub(super) fn text(content_type: &'static str, body: impl Into<Bytes>) -> Result<Response<Body>> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(full(body.into()))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// 302 to `target`.
pub(super) fn found(target: &str) -> Result<Response<Body>> {
    let location = HeaderValue::from_str(target)
        .map_err(|_| ApiError::BadRequest("the path cannot be redirected to".into()))?;
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, location)
        .body(crate::body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))
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

/// The CORS headers of `allow_origin`, when the config gives one.
pub(super) fn cors(app: &App, headers: &mut http::HeaderMap) {
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
