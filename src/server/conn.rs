//! One client connection: a [`Handler`] owns it from accept to close.
//! While its requests are plain HTTP/1.1 requests for an assigned binder
//! (`/user/{token}/...`, a `Content-Length` body or none), they are served
//! here, on the event loop the connection was given to: each head is read
//! with `httparse` and rewritten ([`super::head`]) in place of hyper's
//! request and header maps, and handed to [`Proxy::exchange`], which relays
//! the answer byte for byte (or, for a WebSocket the container accepts,
//! joins the two connections): nginx's way, with no per-request
//! allocation. The first request that is anything else (an API call, a
//! paused binder, a warm kernel to give, a chunked upload, HTTP/2, a bad
//! head) hands the whole connection, with what was read of it
//! ([`Replay`]), to hyper on the main runtime and the routes in
//! [`api::handle`], which answer it, errors included.
//!
//! [`Proxy::exchange`]: crate::proxy::Proxy::exchange

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Buf;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::head::{plan, Plan, MAX_HEAD};
use super::replay::Replay;
use crate::api::{self, ApiError, App, LINGER_BYTES, LINGER_TIME};
use crate::proxy::exchange::{After, Scratch};

/// How an HTTP/2 connection with prior knowledge begins.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// The answer to cleartext HTTP/2 when it is off (`http2 = false`).
const H2_REFUSED: &[u8] = b"HTTP/1.1 505 HTTP Version Not Supported\r\n\
content-type: application/json\r\nconnection: close\r\ncontent-length: 80\r\n\r\n\
{\"error\":{\"code\":505,\"message\":\"cleartext HTTP/2 is off here: speak HTTP/1.1\"}}\n";

/// A connection's state, from accept to close.
pub(super) struct Handler {
    pub(super) app: Arc<App>,
    pub(super) peer: SocketAddr,
    /// Cancelled when binderd stops: an idle fast-path connection closes.
    pub(super) stopping: CancellationToken,
    /// Where the connection goes if hyper must serve it.
    pub(super) hyper: Hyper,
    /// Its place under the connection cap, held until it closes.
    pub(super) slot: OwnedSemaphorePermit,
    /// Its place in its client's share (none for a trusted proxy's).
    pub(super) share: Option<super::clients::Share>,
}

/// What handing a connection to hyper needs: the builder (timeouts,
/// upgrades), the graceful-shutdown watcher, and the main runtime, where
/// the routes run.
pub(super) struct Hyper {
    pub(super) builder: auto::Builder<TokioExecutor>,
    pub(super) watcher: Watcher,
    pub(super) connections: TaskTracker,
    pub(super) main: tokio::runtime::Handle,
}

impl Handler {
    /// Serves the connection: on this event loop while it can, then, if
    /// anything else comes, on the main runtime through hyper.
    pub(super) async fn run(self, stream: std::net::TcpStream) {
        let Ok(stream) = TcpStream::from_std(stream) else {
            return;
        };
        let Some(rest) = FastPath::new(stream, self.peer)
            .serve(&self.app, &self.stopping)
            .await
        else {
            return;
        };
        self.hand_over(rest);
    }

    /// Gives the rest of the connection to hyper, on the main runtime.
    fn hand_over(self, rest: Replay) {
        let Ok((read, stream)) = rest.into_std() else {
            return;
        };
        let Handler {
            app,
            peer,
            hyper,
            slot,
            share,
            ..
        } = self;
        let Hyper {
            builder,
            watcher,
            connections,
            main,
        } = hyper;
        connections.spawn_on(
            async move {
                let Ok(io) = Replay::from_std(read, stream) else {
                    return;
                };
                let io = io.with_write_timeout(app.config.write_timeout);
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, std::convert::Infallible>(api::handle(&app, req, peer).await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                let _ = watcher.watch(conn.into_owned()).await;
                drop((slot, share));
            },
            &main,
        );
    }
}

/// The fast path's side of a connection: the socket, its reused buffers
/// and timers, and what it adds to `X-Forwarded-For`.
struct FastPath {
    stream: TcpStream,
    scratch: Scratch,
    /// The client's address and the head's end, written once.
    forwarded: String,
}

impl FastPath {
    fn new(stream: TcpStream, peer: SocketAddr) -> FastPath {
        FastPath {
            stream,
            scratch: Scratch::default(),
            forwarded: format!("{}\r\n\r\n", peer.ip()),
        }
    }

    /// Serves the connection's requests while they are fast-path ones.
    /// `None`: the connection is done; `Some`: hyper must serve the rest,
    /// starting with the bytes already read.
    async fn serve(mut self, app: &App, stopping: &CancellationToken) -> Option<Replay> {
        let timeout = app.config.header_read_timeout;
        // One timer and one cancellation wait for the connection's life:
        // each request only pushes the deadline later.
        let head_due = tokio::time::sleep(timeout);
        let stopped = stopping.cancelled();
        tokio::pin!(head_due, stopped);
        loop {
            // Slow-loris: a head must arrive whole within the timeout.
            let now = tokio::time::Instant::now();
            head_due.as_mut().reset(now + timeout);
            let go = loop {
                let inbuf = &mut self.scratch.inbuf;
                if !inbuf.is_empty() {
                    match plan(
                        app,
                        inbuf,
                        &mut self.scratch.head,
                        self.forwarded.as_bytes(),
                    ) {
                        Plan::Partial if inbuf.len() < MAX_HEAD => {}
                        Plan::Partial | Plan::HandOver
                            if !app.config.http2 && inbuf.starts_with(H2_PREFACE) =>
                        {
                            // hyper's auto builder would speak HTTP/2 to
                            // it (it has no header timeout): refused.
                            let _ = self.stream.write_all(H2_REFUSED).await;
                            let _ = self.stream.shutdown().await;
                            return None;
                        }
                        Plan::Partial | Plan::HandOver => {
                            return Some(Replay::new(std::mem::take(inbuf), self.stream))
                        }
                        Plan::Go(go) => break go,
                    }
                }
                inbuf.reserve(8 * 1024);
                let idle = inbuf.is_empty();
                tokio::select! {
                    biased;
                    read = self.stream.read_buf(inbuf) => match read {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    },
                    _ = &mut head_due => return None,
                    _ = &mut stopped, if idle => return None,
                }
            };
            self.scratch.inbuf.advance(go.head_len);
            let exchanged = app
                .proxy
                .exchange(
                    &mut self.stream,
                    &mut self.scratch,
                    go.req,
                    &go.entry.binder,
                    now,
                )
                .await;
            match exchanged {
                Ok(After::KeepAlive) => {}
                Ok(After::Close) => return None,
                Err(e) => {
                    write_error(&mut self.stream, ApiError::from(e), go.html).await;
                    return None;
                }
            }
        }
    }
}

/// Answers an error as the routes would (JSON, or a page for browsers)
/// and closes.
async fn write_error(stream: &mut TcpStream, e: ApiError, html: bool) {
    let (mut parts, body) = e.into_response(html).into_parts();
    let Ok(body) = body.collect().await.map(|c| c.to_bytes()) else {
        return;
    };
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.remove(http::header::CONNECTION);
    let mut out = Vec::with_capacity(256 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let _ = write!(
        out,
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(&body);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
    // A lingering close: a client still writing its body (Python's urllib
    // writes it all before it reads) would get a reset instead of the
    // answer if unread bytes were left when the socket closes.
    let mut sink = [0u8; 16 * 1024];
    let mut left = LINGER_BYTES;
    let linger = async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, linger).await;
}
