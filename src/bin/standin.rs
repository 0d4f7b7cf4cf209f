//! `binderd-standin`: a tiny HTTP server that plays the notebook in tests and
//! benches. It starts in milliseconds and serves under its base URL:
//!
//! - `GET {base_url}api/status` → `{"status":"ok","binder":...,"pid":...,
//!   "port":...,"connections":...}` (connections accepted so far)
//! - `POST {base_url}echo` → the request body, streamed back
//! - `GET {base_url}ws` → a WebSocket that echoes every message
//! - `GET {base_url}chunks?n=N&ms=M` → a chunked body of N lines (`part i`),
//!   M milliseconds apart (streaming through the proxy, observed)
//! - `GET {base_url}fetch?url=http://host:port/path` → status and body of that
//!   URL, fetched from inside the container (attached services by name)
//! - `GET {base_url}file?name=x` / `PUT {base_url}file?name=x` → read/write a
//!   file in the working directory
//! - `GET {base_url}cookie` → sets `evil=1; Path=/` and `scoped=1` (no
//!   path) and `far=1; Domain=example.org`: what a hostile notebook's answer
//!   does
//! - `GET {base_url}sw.js` → a service worker script with
//!   `Service-Worker-Allowed: /`; `GET {base_url}hostile` → a page that
//!   registers it for the whole origin and reports in its title
//!   (`sw:registered`, or `sw:` and the error's name)
//! - anything else under `{base_url}` → `{"path","method","query","binder"}`
//! - outside `{base_url}` → 404
//!
//! `binderd-standin --port N [--base-url /user/t/] [--delay-ms N] [--exit-after-ms N]
//! [--bind 127.0.0.N | --all-interfaces] [--relay-to host:port]`
//! (`--relay-to`: no HTTP, every connection relayed to that address)
//! (`BINDERD_PORT` and `BINDERD_BASE_URL` are the fallbacks).

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type Body = BoxBody<Bytes, hyper::Error>;

/// The port actually listened on (reported by `api/status`).
static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
/// Connections accepted so far.
static ACCEPTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// This process, told apart from any other: pids repeat in pid namespaces
/// (a sandboxed binder's server is the same small pid every time).
static INSTANCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

struct Opts {
    port: u16,
    base_url: String,
    delay: Duration,
    exit_after: Option<Duration>,
    bind: [u8; 4],
    /// Relay every connection to this address instead of serving HTTP.
    relay_to: Option<String>,
}

fn opts() -> Result<Opts, String> {
    let mut o = Opts {
        port: std::env::var("BINDERD_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        base_url: std::env::var("BINDERD_BASE_URL").unwrap_or_else(|_| "/".into()),
        delay: Duration::ZERO,
        exit_after: None,
        bind: [127, 0, 0, 1],
        relay_to: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => o.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--base-url" => o.base_url = value()?,
            "--delay-ms" => {
                o.delay = Duration::from_millis(value()?.parse().map_err(|e| format!("{e}"))?)
            }
            "--exit-after-ms" => {
                o.exit_after = Some(Duration::from_millis(
                    value()?.parse().map_err(|e| format!("{e}"))?,
                ))
            }
            "--all-interfaces" => o.bind = [0, 0, 0, 0],
            "--relay-to" => o.relay_to = Some(value()?),
            "--bind" => {
                let ip: std::net::Ipv4Addr =
                    value()?.parse().map_err(|e| format!("--bind: {e}"))?;
                o.bind = ip.octets();
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !o.base_url.ends_with('/') {
        o.base_url.push('/');
    }
    Ok(o)
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).map_err(|n| match n {}).boxed()
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    resp
}

async fn handle(base: &str, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let binder = std::env::var("BINDERD_BINDER_ID").unwrap_or_default();
    let Some(rest) = path
        .strip_prefix(base)
        .or((path.as_str() == base.trim_end_matches('/')).then_some(""))
    else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "outside base_url", "path": path}),
        );
    };
    match (req.method(), rest) {
        (&Method::GET, "ws") => websocket(req),
        (&Method::GET, "chunks") => chunks(req.uri().query().unwrap_or("")),
        (&Method::GET, "fetch") => fetch(req.uri().query().unwrap_or("")).await,
        (&Method::GET, "alloc") => alloc(req.uri().query().unwrap_or("")),
        (&Method::GET, "file") | (&Method::PUT, "file") => file(req).await,
        (&Method::GET, "api/status") => status(&binder),
        (&Method::GET, "cookie") => cookies(),
        (&Method::GET, "sw.js") => typed(
            "text/javascript",
            "self.addEventListener('fetch', () => {});\n",
            Some(("service-worker-allowed", "/")),
        ),
        (&Method::GET, "hostile") => typed("text/html; charset=utf-8", HOSTILE_PAGE, None),
        (&Method::POST, "echo") => echo(req),
        _ => mirror(&req, &path, &binder),
    }
}

/// `api/status`: who answered (binder, process, instance, port).
fn status(binder: &str) -> Response<Body> {
    json(
        StatusCode::OK,
        serde_json::json!({
            "status": "ok",
            "binder": binder,
            "pid": std::process::id(),
            "instance": INSTANCE.get_or_init(rand::random::<u64>).to_string(),
            "port": PORT.get(),
            "connections": ACCEPTED.load(std::sync::atomic::Ordering::Relaxed),
        }),
    )
}

/// Three cookies a page should not be able to set beyond its binder.
fn cookies() -> Response<Body> {
    let mut resp = json(StatusCode::OK, serde_json::json!({"cookies": 3}));
    let h = resp.headers_mut();
    for c in ["evil=1; Path=/", "scoped=1", "far=1; Domain=example.org"] {
        h.append(http::header::SET_COOKIE, c.parse().unwrap());
    }
    resp
}

/// A fixed body of `content_type`, with one more header if given.
fn typed(
    content_type: &'static str,
    body: &'static str,
    extra: Option<(&'static str, &'static str)>,
) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from_static(body.as_bytes())));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    if let Some((name, value)) = extra {
        h.insert(name, http::HeaderValue::from_static(value));
    }
    resp
}

/// The request's body back, with its content type.
fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let mut resp = Response::new(body.boxed());
    if let Some(ct) = parts.headers.get(http::header::CONTENT_TYPE) {
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, ct.clone());
    }
    resp
}

/// Any other path: what arrived (path, method, query, headers) as JSON.
fn mirror(req: &Request<Incoming>, path: &str, binder: &str) -> Response<Body> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({
            "path": path,
            "method": req.method().as_str(),
            "query": req.uri().query(),
            "binder": binder,
            "headers": headers,
        }),
    )
}

/// A notebook page gone bad: it asks for this binder's cookies, then tries
/// to take the whole origin with a service worker.
const HOSTILE_PAGE: &str = r#"<!doctype html><title>loading</title>
<script>
fetch("cookie").then(() => navigator.serviceWorker.register("sw.js", {scope: "/"}))
  .then(() => { document.title = "sw:registered"; },
        (e) => { document.title = "sw:" + e.name; });
</script>
"#;

/// `n` lines, `ms` apart, as a chunked body (no length known up front).
fn chunks(query: &str) -> Response<Body> {
    let arg = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    let n = arg("n").unwrap_or(3).min(10_000);
    let gap = Duration::from_millis(arg("ms").unwrap_or(0).min(10_000));
    let parts = futures_util::stream::unfold(0, move |i| async move {
        if i >= n {
            return None;
        }
        if i > 0 && !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        let frame = hyper::body::Frame::data(Bytes::from(format!("part {i}\n")));
        Some((Ok::<_, hyper::Error>(frame), i + 1))
    });
    Response::new(http_body_util::StreamBody::new(parts).boxed())
}

/// Echoes WebSocket messages until the client closes.
fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role};
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "not a websocket request"}),
        );
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(http::header::CONNECTION, "upgrade".parse().unwrap());
    h.insert(http::header::UPGRADE, "websocket".parse().unwrap());
    h.insert(
        "sec-websocket-accept",
        derive_accept_key(key.as_bytes()).parse().unwrap(),
    );
    // A cookie on the handshake, as a hostile server could set one.
    h.insert(http::header::SET_COOKIE, "ws=1; Path=/".parse().unwrap());
    resp
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// GETs `url` (plain http) and reports what came back.
async fn fetch(query: &str) -> Response<Body> {
    let Some(url) = query_value(query, "url") else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "give ?url="}),
        );
    };
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let Ok(uri) = url.parse::<http::Uri>() else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "bad url"}),
        );
    };
    match tokio::time::timeout(Duration::from_secs(5), client.get(uri)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            json(
                StatusCode::OK,
                serde_json::json!({"status": status, "body": String::from_utf8_lossy(&body)}),
            )
        }
        Ok(Err(e)) => json(
            StatusCode::BAD_GATEWAY,
            serde_json::json!({"error": e.to_string()}),
        ),
        Err(_) => json(
            StatusCode::GATEWAY_TIMEOUT,
            serde_json::json!({"error": "timeout"}),
        ),
    }
}

/// Takes `?mib=` MiB of memory and touches every page of it, as a
/// notebook's memory bomb would; answers once it has them all.
fn alloc(query: &str) -> Response<Body> {
    let Some(mib) = query_value(query, "mib").and_then(|m| m.parse::<usize>().ok()) else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "give ?mib="}),
        );
    };
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(mib);
    for _ in 0..mib {
        held.push(vec![1u8; 1 << 20]);
    }
    let total: usize = held.iter().map(Vec::len).sum();
    json(
        StatusCode::OK,
        serde_json::json!({"allocated_mib": total >> 20}),
    )
}

/// Reads or writes a file in the working directory (names without slashes).
async fn file(req: Request<Incoming>) -> Response<Body> {
    let name = req
        .uri()
        .query()
        .and_then(|q| query_value(q, "name"))
        .unwrap_or("")
        .to_owned();
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "bad name"}),
        );
    }
    if req.method() == Method::PUT {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return match tokio::fs::write(&name, &body).await {
            Ok(()) => json(StatusCode::OK, serde_json::json!({"written": body.len()})),
            Err(e) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": e.to_string()}),
            ),
        };
    }
    match tokio::fs::read(&name).await {
        Ok(bytes) => Response::new(full(bytes)),
        Err(e) => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": e.to_string()}),
        ),
    }
}

/// `--relay-to`: a TCP relay (the replicas test puts the fake API server
/// behind one on a Docker network, so that leaving the network cuts it off).
async fn relay(listener: tokio::net::TcpListener, to: String) -> ! {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let to = to.clone();
        tokio::spawn(async move {
            if let Ok(mut server) = tokio::net::TcpStream::connect(&to).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let o = match opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("binderd-standin: {e}");
            std::process::exit(64);
        }
    };
    tokio::time::sleep(o.delay).await;
    if let Some(after) = o.exit_after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!("binderd-standin: exiting as asked");
            std::process::exit(3);
        });
    }
    let listener = match tokio::net::TcpListener::bind(SocketAddr::from((o.bind, o.port))).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("binderd-standin: cannot listen on port {}: {e}", o.port);
            std::process::exit(69);
        }
    };
    if let Ok(addr) = listener.local_addr() {
        let _ = PORT.set(addr.port());
    }
    println!(
        "binderd-standin serving {} on {}",
        o.base_url,
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    if let Some(to) = o.relay_to {
        relay(listener, to).await;
    }
    let base: &'static str = Box::leak(o.base_url.into_boxed_str());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        ACCEPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let service =
                service_fn(move |req| async move { Ok::<_, Infallible>(handle(base, req).await) });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}
