//! Every client connection starts here. While its requests are plain
//! HTTP/1.1 requests for an assigned binder (`/user/{token}/...`, a
//! `Content-Length` body or none), they
//! are read with `httparse`, their heads rewritten in place of hyper's
//! request and header maps, and handed to [`Proxy::exchange`], which relays
//! the answer byte for byte (or, for a WebSocket the container accepts,
//! joins the two connections): nginx's way, with no per-request allocation.
//! The first request that is anything else (an API call, a paused binder, a
//! warm kernel to give, a chunked upload, HTTP/2, a bad head) hands the whole connection, with what was read of it, to hyper
//! and the routes in [`super::handle`], which answer it as they always
//! have, errors included.
//!
//! [`Proxy::exchange`]: crate::proxy::Proxy::exchange

use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use http::Method;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{ApiError, App};
use crate::binder::{is_secret_shaped, State};
use crate::pool::Entry;
use crate::proxy::fast::{connection_tokens, is_hop_by_hop, After, Outgoing, Scratch};
use crate::proxy::split_user_path;

/// Longest request head taken on the fast path (hyper takes longer ones).
const MAX_HEAD: usize = 64 * 1024;
/// Headers a fast-path request may have (hyper takes more).
const MAX_HEADERS: usize = 64;

/// Serves `stream`'s requests while they are fast-path ones. `None`: the
/// connection is done; `Some`: hyper must serve the rest, starting with
/// the bytes already read.
pub(super) async fn serve(
    app: &App,
    mut stream: TcpStream,
    peer: SocketAddr,
    stopping: &CancellationToken,
) -> Option<Replay> {
    let mut scratch = Scratch::default();
    // What this connection adds to `X-Forwarded-For`, written once.
    let forwarded = format!("{}\r\n\r\n", peer.ip());
    let timeout = app.config.header_read_timeout;
    // One timer and one cancellation wait for the connection's life: each
    // request only pushes the deadline later.
    let head_due = tokio::time::sleep(timeout);
    let stopped = stopping.cancelled();
    tokio::pin!(head_due, stopped);
    loop {
        // Slow-loris: a head must arrive whole within the timeout.
        let now = tokio::time::Instant::now();
        head_due.as_mut().reset(now + timeout);
        let go = loop {
            let inbuf = &mut scratch.inbuf;
            if !inbuf.is_empty() {
                match plan(app, inbuf, &mut scratch.head, forwarded.as_bytes()) {
                    Plan::Partial if inbuf.len() < MAX_HEAD => {}
                    Plan::Partial | Plan::HandOver => {
                        return Some(Replay::new(std::mem::take(inbuf), stream))
                    }
                    Plan::Go(go) => break go,
                }
            }
            inbuf.reserve(8 * 1024);
            let idle = inbuf.is_empty();
            tokio::select! {
                biased;
                read = stream.read_buf(inbuf) => match read {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                },
                _ = &mut head_due => return None,
                _ = &mut stopped, if idle => return None,
            }
        };
        scratch.inbuf.advance(go.head_len);
        let exchanged = app
            .proxy
            .exchange(&mut stream, &mut scratch, go.req, &go.entry.binder, now)
            .await;
        match exchanged {
            Ok(After::KeepAlive) => {}
            Ok(After::Close) => return None,
            Err(e) => {
                write_error(&mut stream, ApiError::from(e), go.html).await;
                return None;
            }
        }
    }
}

/// What to do with the head at the start of the buffer.
enum Plan {
    Partial,
    HandOver,
    Go(Go),
}

struct Go {
    req: Outgoing,
    entry: Entry,
    head_len: usize,
    html: bool,
}

/// Parses the head at the start of `buf` and, if it is a fast-path
/// request, rewrites it for the container: the path without the prefix
/// when the binding strips it, hop-by-hop headers (and those `Connection`
/// names) and binderd's own key left out, the client's address added to
/// `X-Forwarded-For` (`forwarded`, which ends the head). The head goes
/// into `out`.
fn plan(app: &App, buf: &[u8], out: &mut Vec<u8>, forwarded: &[u8]) -> Plan {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Plan::Partial,
        Err(_) => return Plan::HandOver,
    };
    let (Some(method), Some(target), Some(1)) = (r.method, r.path, r.version) else {
        return Plan::HandOver;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    // Doubled slashes are folded by the routes first.
    if !path.starts_with("/user/") || path.contains("//") {
        return Plan::HandOver;
    }
    let Some((token, rest)) = split_user_path(path) else {
        return Plan::HandOver;
    };
    if !is_secret_shaped(token) {
        return Plan::HandOver;
    }
    let Some(entry) = app.pools.by_token(token) else {
        return Plan::HandOver;
    };
    if entry.binder.state() != State::Assigned {
        return Plan::HandOver;
    }
    if entry.binder.has_warm_kernel() {
        let asks = Method::from_bytes(method.as_bytes())
            .ok()
            .and_then(|m| crate::kernel::asks_for_kernel(&m, rest));
        if asks.is_some() {
            return Plan::HandOver;
        }
    }
    let named = connection_tokens(r.headers);
    // An upgrade (a WebSocket) keeps its `Connection: upgrade` and
    // `Upgrade` for the container; the connection becomes a tunnel if the
    // container agrees.
    let upgrade = if named.iter().any(|t| t.eq_ignore_ascii_case("upgrade")) {
        match r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
        {
            Some(h) => Some(h.value),
            None => return Plan::HandOver,
        }
    } else {
        None
    };
    let client_close = named.iter().any(|t| t.eq_ignore_ascii_case("close"));

    let strip = entry.pool.current().binding.strip_prefix;
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(if strip { rest } else { path }.as_bytes());
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut body_len: Option<u64> = None;
    let mut host = false;
    let mut html = false;
    let mut forwarded_for: Option<&[u8]> = None;
    for h in r.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("transfer-encoding") || name.eq_ignore_ascii_case("expect") {
            return Plan::HandOver; // chunked uploads, 100-continue: hyper's
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (n, body_len) {
                (Some(n), None) => body_len = Some(n),
                (Some(n), Some(m)) if n == m => continue,
                _ => return Plan::HandOver, // hyper answers 400
            }
        } else if name.eq_ignore_ascii_case("host") {
            host = true;
        } else if name.eq_ignore_ascii_case("accept") {
            html |= h.value.windows(9).any(|w| w == b"text/html");
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for.get_or_insert(h.value);
            continue;
        } else if name.eq_ignore_ascii_case("authorization") && app.keys.is_own_key(h.value) {
            continue; // binderd's own key is not the container's business
        }
        if is_hop_by_hop(name) || named.iter().any(|t| t.eq_ignore_ascii_case(name)) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !host {
        return Plan::HandOver; // HTTP/1.1 needs one: hyper answers
    }
    if let Some(protocol) = upgrade {
        if body_len.is_some_and(|n| n > 0) {
            return Plan::HandOver;
        }
        out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
        out.extend_from_slice(protocol);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(prev) = forwarded_for {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(forwarded);
    let idempotent = matches!(method, "GET" | "HEAD" | "OPTIONS");
    Plan::Go(Go {
        req: Outgoing {
            body_len: body_len.unwrap_or(0),
            head_method: method == "HEAD",
            idempotent,
            client_close,
            upgrade: upgrade.is_some(),
        },
        entry,
        head_len,
        html,
    })
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
    let _ = tokio::time::timeout(LINGER, linger).await;
}

/// How long, and how much, an error answer's close waits for the client's
/// unread body.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 8 << 20;

/// A connection handed to hyper: what was read of it first, then the rest.
pub(super) struct Replay {
    read: BytesMut,
    stream: TcpStream,
}

impl Replay {
    fn new(read: BytesMut, stream: TcpStream) -> Replay {
        Replay { read, stream }
    }

    /// Out of this runtime's reactor, to move to another.
    pub(super) fn into_std(self) -> std::io::Result<(BytesMut, std::net::TcpStream)> {
        Ok((self.read, self.stream.into_std()?))
    }

    /// Into the current runtime's reactor.
    pub(super) fn from_std(read: BytesMut, stream: std::net::TcpStream) -> std::io::Result<Replay> {
        Ok(Replay {
            read,
            stream: TcpStream::from_std(stream)?,
        })
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
