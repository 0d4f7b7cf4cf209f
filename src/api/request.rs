//! Reading a request: its host, whether it wants HTML, its path with runs
//! of slashes folded, a binding name in it, and its body (JSON or any,
//! within the limit and the linger rule).

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{ApiError, App, Result};
use crate::binding::BindingName;

/// The request's host (its `Host` header, or the target's authority).
pub(crate) fn host_of<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// Whether the client would rather read HTML (a browser).
pub(super) fn wants_html<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// Folds runs of slashes in the request's path into one, so that which route
/// answers never depends on them: thebe asks for `//user/{token}//api/kernels`
/// (its base URL + `/` + the spawn's `/user/{token}/` + `/`). The query is
/// kept as it came. Costs nothing when the path has no doubled slash.
pub(super) fn fold_path<B>(req: &mut Request<B>) {
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

/// Parses a binding name from the path (400 when malformed).
pub(super) fn binding_name(raw: &str) -> Result<BindingName> {
    Ok(BindingName::parse(raw)?)
}

/// Whether a `Content-Type` value says JSON (`application/json`, `+json`).
pub(super) fn is_json_type(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || mime.ends_with("+json")
}

/// Reads a JSON body: 415 unless it says JSON (or says nothing), 413 over
/// the limit, 400 when it does not parse into `T`.
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    app: &App,
    req: Request<Incoming>,
) -> Result<T> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !is_json_type(mime) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "expected Content-Type: application/json, got '{}'",
                crate::text::printable(mime)
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
pub(super) async fn read_body(app: &App, req: Request<Incoming>) -> Result<Bytes> {
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
