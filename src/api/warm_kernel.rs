//! The warm kernel's hand-over: the first `POST api/kernels` or `POST
//! api/sessions` into a binder that holds a warm kernel is given that
//! kernel (the rules below decide which requests may be), so a reader's
//! first cell runs on a kernel that was started, and warmed up, before the
//! handout.

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use std::net::SocketAddr;

use hyper::body::Incoming;
use serde_json::{json, Value};

use super::{ApiError, App, Result};
use crate::binder::WarmKernel;
use crate::body::{empty, full, Body};
use crate::pool::Entry;

/// A proxied request that may be given the warm kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// `POST api/kernels`: answered with the warm kernel's model.
    Kernel,
    /// `POST api/sessions`: the session is made on the warm kernel.
    Session,
}

/// Whether `method` + `rest` (the path after the location) starts a kernel.
pub fn asks_for_kernel(method: &Method, rest: &str) -> Option<Ask> {
    if method != Method::POST {
        return None;
    }
    match rest.trim_end_matches('/') {
        "/api/kernels" => Some(Ask::Kernel),
        "/api/sessions" => Some(Ask::Session),
        _ => None,
    }
}

/// The kernel name a request body asks for: `Ok(None)` for "the default"
/// (no name), `Err(())` when it is not a request the warm kernel can serve
/// (not a JSON object, or a session naming a kernel id of its own).
#[allow(clippy::result_unit_err)]
pub fn requested_name(ask: Ask, body: &Value) -> Result<Option<&str>, ()> {
    let obj = body.as_object().ok_or(())?;
    let kernel = match ask {
        Ask::Kernel => obj,
        Ask::Session => match obj.get("kernel") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(k)) => {
                if k.get("id").is_some_and(|id| !id.is_null()) {
                    return Err(());
                }
                k
            }
            Some(_) => return Err(()),
        },
    };
    match kernel.get("name") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(()),
    }
}

/// Makes a session request name the warm kernel (the server then attaches
/// the session to it instead of starting one).
pub fn attach_session(body: &mut Value, kernel: &WarmKernel) {
    if let Some(obj) = body.as_object_mut() {
        obj.insert(
            "kernel".into(),
            json!({ "id": kernel.id, "name": kernel.name }),
        );
    }
}

/// Largest kernel or session request body read to give a warm kernel.
const MAX_KERNEL_REQUEST: usize = 1 << 20;

/// A kernel request into a binder that holds a warm kernel: if it asks for
/// that kernel's name (or none), `POST api/kernels` answers the warm
/// kernel's model (the server's own `GET api/kernels/{id}`, as 201 with a
/// `Location`, CORS headers and all) and `POST api/sessions` goes on naming
/// the warm kernel's id, so the server attaches the session to it. Anything
/// else, or a warm kernel that has died meanwhile, passes through as sent.
pub(super) async fn give(
    app: &App,
    req: Request<Incoming>,
    entry: &Entry,
    ask: Ask,
    strip_prefix: bool,
    rest: &str,
    peer: SocketAddr,
) -> Result<Response<Body>> {
    let (mut parts, body) = req.into_parts();
    let bytes = Limited::new(body, MAX_KERNEL_REQUEST)
        .collect()
        .await
        .map_err(|_| ApiError::PayloadTooLarge(MAX_KERNEL_REQUEST))?
        .to_bytes();
    let as_sent = |parts: http::request::Parts| Request::from_parts(parts, full(bytes.clone()));
    let json: Option<serde_json::Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
        Some(serde_json::json!({}))
    } else {
        serde_json::from_slice(&bytes).ok()
    };
    let warm = json.as_ref().and_then(|v| {
        let name = requested_name(ask, v).ok()?;
        entry.binder.take_warm_kernel(name)
    });
    let proxy = &app.proxy;
    let binder = &entry.binder;
    let Some(warm) = warm else {
        return Ok(proxy
            .forward(as_sent(parts), binder, strip_prefix, rest, peer)
            .await?);
    };
    entry.pool.metrics.warm_kernels_given.increment(1);
    match ask {
        Ask::Kernel => {
            let model_path = format!("/api/kernels/{}", warm.id);
            let mut get = Request::new(empty());
            *get.method_mut() = Method::GET;
            *get.uri_mut() = parts.uri.clone();
            *get.headers_mut() = parts.headers.clone();
            for h in [
                header::CONTENT_LENGTH,
                header::CONTENT_TYPE,
                header::TRANSFER_ENCODING,
            ] {
                get.headers_mut().remove(h);
            }
            let mut resp = proxy
                .forward(get, binder, strip_prefix, &model_path, peer)
                .await?;
            if resp.status() != StatusCode::OK {
                tracing::info!(binder = %binder.id, status = %resp.status(), "warm kernel gone; starting one as asked");
                return Ok(proxy
                    .forward(as_sent(parts), binder, strip_prefix, rest, peer)
                    .await?);
            }
            *resp.status_mut() = StatusCode::CREATED;
            let location = format!("{}api/kernels/{}", binder.location(), warm.id);
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Ok(resp)
        }
        Ask::Session => {
            let mut doc = json.unwrap_or_default();
            attach_session(&mut doc, &warm);
            let body = doc.to_string();
            parts.headers.remove(header::TRANSFER_ENCODING);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            let req = Request::from_parts(parts, full(body));
            Ok(proxy.forward(req, binder, strip_prefix, rest, peer).await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_posts_to_kernels_and_sessions_ask() {
        assert_eq!(
            asks_for_kernel(&Method::POST, "/api/kernels"),
            Some(Ask::Kernel)
        );
        assert_eq!(
            asks_for_kernel(&Method::POST, "/api/kernels/"),
            Some(Ask::Kernel)
        );
        assert_eq!(
            asks_for_kernel(&Method::POST, "/api/sessions"),
            Some(Ask::Session)
        );
        assert_eq!(asks_for_kernel(&Method::GET, "/api/kernels"), None);
        assert_eq!(
            asks_for_kernel(&Method::POST, "/api/kernels/abc/restart"),
            None
        );
        assert_eq!(asks_for_kernel(&Method::POST, "/x/api/kernels"), None);
    }

    #[test]
    fn names_are_read_as_jupyter_clients_send_them() {
        let k = |v: Value| requested_name(Ask::Kernel, &v).map(|n| n.map(str::to_owned));
        let s = |v: Value| requested_name(Ask::Session, &v).map(|n| n.map(str::to_owned));
        assert_eq!(k(json!({})), Ok(None));
        assert_eq!(k(json!({"name": "python3"})), Ok(Some("python3".into())));
        assert_eq!(k(json!({"name": ""})), Ok(None));
        assert_eq!(k(json!([1])), Err(()));
        assert_eq!(k(json!({"name": 3})), Err(()));
        let lab = json!({"path": "a.ipynb", "type": "notebook", "name": "", "kernel": {"name": "python3"}});
        assert_eq!(s(lab), Ok(Some("python3".into())));
        assert_eq!(s(json!({"path": "a.ipynb"})), Ok(None));
        assert_eq!(
            s(json!({"kernel": {"id": "k9"}})),
            Err(()),
            "its own kernel"
        );
        let mut body = json!({"path": "a.ipynb", "kernel": {"name": "python3"}});
        attach_session(
            &mut body,
            &WarmKernel {
                id: "k1".into(),
                name: "python3".into(),
            },
        );
        assert_eq!(body["kernel"], json!({"id": "k1", "name": "python3"}));
        assert_eq!(body["path"], "a.ipynb");
    }
}
