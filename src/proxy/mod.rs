//! The built-in proxy: `/user/{token}/...` to the binder's container.
//! The caller (`api::user`, or `server`'s fast path, both through
//! `api::user::reach`) finds the binder and says how to address it; the
//! proxy knows nothing of pools.
//!
//! Bodies stream both ways (no buffering); hop-by-hop headers (RFC 9110
//! §7.6.1) are removed, except the `Connection: upgrade` / `Upgrade` pair on
//! upgrade requests, whose two sides are joined byte for byte after the
//! container answers 101. Every request counts as activity for culling.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::binder::Binder;
use crate::body::{empty, Body};
use crate::tcp::QuickAck;
use crate::upstream::held::Taken;
use crate::upstream::Upstream;

pub mod confine;
pub mod exchange;
pub mod onward;

use onward::{strip_hop_by_hop, upgrade_protocol};

/// How long the container may take to start answering a proxied request.
const UPSTREAM_HEADERS_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the binder's container is not answering: {0}")]
    Unreachable(String),
    #[error("the binder's container took too long to answer")]
    Timeout,
    #[error("bad upstream request: {0}")]
    BadRequest(String),
}

/// When one direction of a tunnel ends, how long the other may still run.
const TUNNEL_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Forwards requests to binders' containers.
pub struct Proxy {
    upstream: Arc<Upstream>,
    /// Open upgraded connections (WebSockets), for a bounded wait at shutdown.
    tunnels: tokio_util::task::TaskTracker,
    /// How long a client may take no bytes of an answer (fast path).
    write_timeout: Duration,
    /// How long a tunnel may pass nothing either way.
    tunnel_idle: Duration,
}

impl Proxy {
    pub fn new(upstream: Arc<Upstream>) -> Proxy {
        Proxy {
            upstream,
            tunnels: tokio_util::task::TaskTracker::new(),
            write_timeout: Duration::from_secs(60),
            tunnel_idle: Duration::from_secs(30 * 60),
        }
    }

    /// A client that takes nothing of an answer for `write` is cut off; a
    /// tunnel that passes nothing for `tunnel_idle` is closed.
    pub fn with_timeouts(mut self, write: Duration, tunnel_idle: Duration) -> Proxy {
        self.write_timeout = write;
        self.tunnel_idle = tunnel_idle;
        self
    }

    /// Waits up to `grace` for open tunnels to close by themselves.
    pub async fn close_tunnels(&self, grace: Duration) {
        self.tunnels.close();
        if !self.tunnels.is_empty() {
            tracing::info!(
                open = self.tunnels.len(),
                "waiting for open WebSocket tunnels"
            );
        }
        let _ = tokio::time::timeout(grace, self.tunnels.wait()).await;
    }

    /// Forwards `req` to `binder`'s container. `rest` is the path after
    /// `/user/{token}` (starting with `/`); with `strip_prefix` only `rest`
    /// is sent, else the whole `/user/{token}{rest}`.
    pub async fn forward(
        &self,
        mut req: Request<Body>,
        binder: &Arc<Binder>,
        strip_prefix: bool,
        rest: &str,
        client_addr: SocketAddr,
    ) -> Result<Response<Body>, ProxyError> {
        binder.touch();
        crate::metrics::count_proxied();
        let Some(instance) = binder.instance() else {
            return Err(ProxyError::Unreachable("no container".into()));
        };
        let mut target = format!("http://{}", instance.addr).into_bytes();
        onward::write_target(
            &mut target,
            &binder.token,
            rest,
            strip_prefix,
            req.uri().query(),
        );
        let upgrade = upgrade_protocol(req.headers());
        let uri = Uri::try_from(target)
            .map_err(|e: http::uri::InvalidUri| ProxyError::BadRequest(e.to_string()))?;

        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        onward::request_headers(&mut parts.headers, client_addr.ip());
        if let Some(proto) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, proto.clone());
        }
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        let upstream_req = Request::from_parts(parts, body);

        let sent = tokio::time::timeout(UPSTREAM_HEADERS_TIMEOUT, self.upstream.send(upstream_req));
        let mut resp = match sent.await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(ProxyError::Unreachable(error_chain(&e))),
            Err(_) => return Err(ProxyError::Timeout),
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                let tunnelled = binder.clone();
                let idle = self.tunnel_idle;
                self.tunnels.spawn(async move {
                    let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade)
                    else {
                        return;
                    };
                    tunnel(
                        TokioIo::new(client),
                        TokioIo::new(upstream),
                        &tunnelled,
                        idle,
                    )
                    .await;
                });
                let (mut parts, _) = resp.into_parts();
                confine_answer(&mut parts.headers, binder);
                return Ok(Response::from_parts(parts, empty()));
            }
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        confine_answer(&mut parts.headers, binder);
        Ok(Response::from_parts(parts, body.boxed()))
    }
}

impl Proxy {
    /// Answers a client's WebSocket handshake (`accept`: its
    /// `Sec-WebSocket-Accept`) with binderd's own `101`, no extension and
    /// no subprotocol (as the held socket was opened), and joins the
    /// client to `held`, a WebSocket binderd opened to `binder`'s container
    /// before (`upstream::held`): what the keeper had read of the next frame
    /// goes to the client first, then the two are joined byte for byte as
    /// any tunnel is. Whether this client may have it is the caller's
    /// decision.
    pub fn join_held<B>(
        &self,
        req: &mut Request<B>,
        binder: &Arc<Binder>,
        held: Taken,
        accept: &str,
    ) -> Response<Body> {
        binder.touch();
        crate::metrics::count_proxied();
        let client_upgrade = hyper::upgrade::on(req);
        let tunnelled = binder.clone();
        let idle = self.tunnel_idle;
        self.tunnels.spawn(async move {
            use tokio::io::AsyncWriteExt;
            let Ok(client) = client_upgrade.await else {
                return;
            };
            let mut client = TokioIo::new(client);
            if !held.read.is_empty() && client.write_all(&held.read).await.is_err() {
                return;
            }
            tunnel(client, QuickAck(held.stream), &tunnelled, idle).await;
        });
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = resp.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        resp
    }
}

/// Keeps a binder's answer headers to the binder ([`confine`]).
fn confine_answer(headers: &mut HeaderMap, binder: &Binder) {
    for name in confine::DROPPED {
        headers.remove(name);
    }
    if headers.contains_key(header::SET_COOKIE) {
        let location = binder.location();
        let cookies: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| HeaderValue::from_bytes(&confine::cookie(v.as_bytes(), &location)).ok())
            .collect();
        headers.remove(header::SET_COOKIE);
        for cookie in cookies {
            headers.append(header::SET_COOKIE, cookie);
        }
    }
}

/// Joins two upgraded connections byte for byte (no message buffering),
/// counting every read as activity. When one side closes, the other is shut
/// down and given a moment to finish, then both are dropped. When nothing
/// has passed either way for `idle` (a read, or a write completing: a peer
/// that stops reading stalls writes), both are dropped.
async fn tunnel<A, B>(a: A, b: B, binder: &Binder, idle: Duration)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    join(tokio::io::split(a), tokio::io::split(b), binder, idle).await;
}

/// [`tunnel`] on two connections' read and write halves.
async fn join<AR, AW, BR, BW>(a: (AR, AW), b: (BR, BW), binder: &Binder, idle: Duration)
where
    AR: tokio::io::AsyncRead + Unpin,
    AW: tokio::io::AsyncWrite + Unpin,
    BR: tokio::io::AsyncRead + Unpin,
    BW: tokio::io::AsyncWrite + Unpin,
{
    let ((mut a_read, mut a_write), (mut b_read, mut b_write)) = (a, b);
    let began = tokio::time::Instant::now();
    let moved = std::sync::atomic::AtomicU64::new(0);
    let up = pump(&mut a_read, &mut b_write, binder, &moved, began);
    let down = pump(&mut b_read, &mut a_write, binder, &moved, began);
    // Looks every quarter of `idle`: one timer per tunnel, none per message.
    let watch = async {
        let tick = idle / 4;
        loop {
            tokio::time::sleep(tick).await;
            let last =
                began + Duration::from_millis(moved.load(std::sync::atomic::Ordering::Relaxed));
            if last.elapsed() >= idle {
                return;
            }
        }
    };
    tokio::pin!(up, down, watch);
    tokio::select! {
        _ = &mut up => { let _ = tokio::time::timeout(TUNNEL_CLOSE_GRACE, down).await; }
        _ = &mut down => { let _ = tokio::time::timeout(TUNNEL_CLOSE_GRACE, up).await; }
        _ = &mut watch => {}
    }
}

async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    binder: &Binder,
    moved: &std::sync::atomic::AtomicU64,
    began: tokio::time::Instant,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mark = || {
        let ms = began.elapsed().as_millis() as u64;
        moved.fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = writer.shutdown().await;
                return Ok(());
            }
            Ok(n) => n,
        };
        binder.touch();
        mark();
        writer.write_all(&buf[..n]).await?;
        writer.flush().await?;
        mark();
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Splits `/user/{token}/rest` into the token and `/rest` (`/` when there
/// is no rest). The caller has folded runs of slashes already.
pub fn split_user_path(path: &str) -> Option<(&str, &str)> {
    let after = path.strip_prefix("/user/")?;
    Some(match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_paths_split() {
        assert_eq!(
            split_user_path("/user/abc/api/kernels"),
            Some(("abc", "/api/kernels"))
        );
        assert_eq!(split_user_path("/user/abc"), Some(("abc", "/")));
        assert_eq!(split_user_path("/user/abc/"), Some(("abc", "/")));
        assert_eq!(split_user_path("/users/abc"), None);
    }

    #[test]
    fn hop_by_hop_headers_go_including_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(upgrade_protocol(&h).is_none());
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
    }
}
