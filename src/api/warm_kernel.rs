//! The warm kernel's hand-over: the first `POST api/kernels` or `POST
//! api/sessions` into a binder that holds a warm kernel is given that
//! kernel (the rules below decide which requests may be), so a reader's
//! first cell runs on a kernel that was started, and warmed up, before the
//! handout; and the first client opening that kernel's channels is given
//! the channels binderd opened to it before the handout ([`join`]), so the
//! first cell does not wait for the server to set up a new connection.

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

/// The kernel id of a `GET api/kernels/{id}/channels` (`rest`: the path
/// after the location).
pub fn channels_of<'r>(method: &str, rest: &'r str) -> Option<&'r str> {
    if method != "GET" {
        return None;
    }
    let id = rest
        .strip_prefix("/api/kernels/")?
        .strip_suffix("/channels")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The `Sec-WebSocket-Accept` answering a client's WebSocket opening
/// handshake (RFC 6455 §4.2.1), or `None` if `headers` are not one.
pub fn websocket_accept(headers: &http::HeaderMap) -> Option<String> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::UPGRADE, "websocket")
        || !has(header::CONNECTION, "upgrade")
        || headers.get(header::SEC_WEBSOCKET_VERSION)? != "13"
    {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    Some(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// Whether a client's handshake may be answered naming no subprotocol, as
/// the held channels were opened (Jupyter's JSON messages): it offered none,
/// or it is a browser's (`Origin`, and a `User-Agent` of `Mozilla/...`),
/// whose WebSocket API accepts an answer naming none of those it offered
/// (the page sees `protocol === ""`, and JupyterLab's and thebe's kernel
/// clients then speak JSON, as they do with servers that have no other).
/// A non-browser client that offers one may insist on it: it connects the
/// usual way.
fn takes_no_subprotocol(headers: &http::HeaderMap) -> bool {
    if !headers.contains_key(header::SEC_WEBSOCKET_PROTOCOL) {
        return true;
    }
    headers.contains_key(header::ORIGIN)
        && headers
            .get(header::USER_AGENT)
            .is_some_and(|ua| ua.as_bytes().starts_with(b"Mozilla/"))
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

/// A client opening the channels of the kernel whose channels the binder
/// holds. The server's own rules decide whether this client may: the same
/// credentials, origin and host (the request's headers and query, the
/// token in it included) are asked of `GET api/kernels/{id}`, which a
/// Jupyter server answers under the same authentication and origin checks
/// as the channels. Only on its 200 does binderd answer the `101` itself
/// and join the client to the held channels; anything else (a refusal, a
/// request that is not a WebSocket handshake, channels the server closed
/// meanwhile, a second client) is proxied as sent, and the server answers
/// it as it would have.
pub(super) async fn join(
    app: &App,
    mut req: Request<Incoming>,
    entry: &Entry,
    strip_prefix: bool,
    rest: &str,
    peer: SocketAddr,
) -> Result<Response<Body>> {
    let proxy = &app.proxy;
    let binder = &entry.binder;
    let kernel = channels_of(req.method().as_str(), rest).map(str::to_owned);
    let accept = websocket_accept(req.headers()).filter(|_| takes_no_subprotocol(req.headers()));
    let (Some(kernel), Some(accept)) = (kernel, accept) else {
        return Ok(proxy
            .forward(req.map(BodyExt::boxed), binder, strip_prefix, rest, peer)
            .await?);
    };
    let mut check = Request::new(empty());
    *check.uri_mut() = req.uri().clone();
    *check.headers_mut() = req.headers().clone();
    for h in [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_EXTENSIONS,
        header::SEC_WEBSOCKET_PROTOCOL,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        check.headers_mut().remove(h);
    }
    let model = format!("/api/kernels/{kernel}");
    let answer = proxy
        .forward(check, binder, strip_prefix, &model, peer)
        .await?;
    let allowed = answer.status() == StatusCode::OK;
    // Read to its end: the connection goes back to the pool.
    let _ = Limited::new(answer.into_body(), MAX_KERNEL_REQUEST)
        .collect()
        .await;
    let held = match allowed {
        true => binder.take_held_channels(&kernel),
        false => None,
    };
    let taken = match held {
        Some(held) => held.take().await,
        None => None,
    };
    let Some(taken) = taken else {
        return Ok(proxy
            .forward(req.map(BodyExt::boxed), binder, strip_prefix, rest, peer)
            .await?);
    };
    entry.pool.metrics.warm_channels_given.increment(1);
    Ok(proxy.join_held(&mut req, binder, taken, &accept))
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
    fn only_a_get_of_one_kernels_channels_is_one() {
        assert_eq!(channels_of("GET", "/api/kernels/k1/channels"), Some("k1"));
        assert_eq!(channels_of("POST", "/api/kernels/k1/channels"), None);
        assert_eq!(channels_of("GET", "/api/kernels//channels"), None);
        assert_eq!(channels_of("GET", "/api/kernels/a/b/channels"), None);
        assert_eq!(channels_of("GET", "/api/kernels/k1"), None);
        assert_eq!(channels_of("GET", "/x/api/kernels/k1/channels"), None);
    }

    #[test]
    fn a_websocket_handshake_is_answered_with_its_accept() {
        let mut h = http::HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        assert_eq!(websocket_accept(&h), None, "no key");
        // RFC 6455's own example.
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(
            websocket_accept(&h).as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        let mut old = h.clone();
        old.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(websocket_accept(&old), None);
        let mut not_ws = h.clone();
        not_ws.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert_eq!(websocket_accept(&not_ws), None);
        h.remove(header::CONNECTION);
        assert_eq!(websocket_accept(&h), None);

        let mut h = http::HeaderMap::new();
        assert!(takes_no_subprotocol(&h), "offers none");
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v1.kernel.websocket.jupyter.org"),
        );
        assert!(!takes_no_subprotocol(&h), "a script that may insist");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://a.example"));
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static("Mozilla/5.0 (X11; Linux x86_64) Chrome/156"),
        );
        assert!(takes_no_subprotocol(&h), "a browser");
        h.remove(header::ORIGIN);
        assert!(!takes_no_subprotocol(&h));
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
