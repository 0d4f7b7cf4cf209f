//! The operator's dashboard: `GET /` for a browser, plain HTML, CSS and JS
//! compiled into the binary (no CDN, no build step). The page adds no power:
//! its script calls the same API every client does, with the key the
//! operator types (kept in the tab's sessionStorage, never in a URL). Served
//! under a strict Content-Security-Policy: no inline script or style.

use http::{header, Response, StatusCode};

use super::{ApiError, Result};
use crate::body::{full, Body};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// What the page may load: only its own files and the API.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page, or one of its two files.
pub(super) fn serve(file: &str) -> Result<Response<Body>> {
    let (content_type, body) = match file {
        "dashboard.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "dashboard.css" => ("text/css; charset=utf-8", STYLE),
        _ => ("text/html; charset=utf-8", PAGE),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(full(body))
        .map_err(|e| ApiError::Internal(e.to_string()))
}
