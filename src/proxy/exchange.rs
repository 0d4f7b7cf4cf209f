//! The proxy's fast path: one plain HTTP/1.1 request, its head already
//! rewritten by the caller, sent on one of the binder's kept upstream
//! connections and its answer relayed back byte for byte, all in the task
//! of the client's connection. The answer's head is parsed (hop-by-hop
//! headers go) and its body is passed through as it came (a chunked body
//! stays chunked: its chunks are only scanned to find its end). No body is
//! buffered whole; the buffers are the connection's own, reused.

use std::net::SocketAddr;
use std::pin::Pin;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::onward::{self, is_hop_by_hop};
use super::{confine, Proxy, ProxyError, UPSTREAM_HEADERS_TIMEOUT};
use crate::binder::Binder;

/// The largest answer head read from a container.
const MAX_ANSWER_HEAD: usize = 64 * 1024;
/// How much is read at once.
const READ_CHUNK: usize = 16 * 1024;
/// Headers an answer may have.
const MAX_ANSWER_HEADERS: usize = 128;

/// A client connection's buffers and timer, made once and reused by each
/// of its requests (no allocation, no timer registered per request: a
/// tokio timer pushed later is an atomic store).
pub struct Scratch {
    /// What was read from the client and not yet used.
    pub inbuf: BytesMut,
    /// The container's side.
    upbuf: BytesMut,
    /// The request's head, rewritten for the container (the caller writes
    /// it, request line to the empty line); then the answer's.
    pub head: Vec<u8>,
    /// When the container must have answered by.
    answer_due: Pin<Box<tokio::time::Sleep>>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            inbuf: BytesMut::with_capacity(8 * 1024),
            upbuf: BytesMut::new(),
            head: Vec::with_capacity(1024),
            answer_due: Box::pin(tokio::time::sleep(UPSTREAM_HEADERS_TIMEOUT)),
        }
    }
}

/// How a request in [`Scratch::head`] goes on.
pub struct Outgoing {
    /// `Content-Length` of the body (0 without one).
    pub body_len: u64,
    /// `HEAD`: the answer has no body whatever its headers say.
    pub head_method: bool,
    /// Safe to send again on a new connection when a kept one turns out to
    /// have been closed before answering (`GET`, `HEAD`, `OPTIONS`).
    pub idempotent: bool,
    /// The client asked to close after this answer.
    pub client_close: bool,
    /// An upgrade request (`Connection: upgrade`, `Upgrade: x` in the head):
    /// a 101 answer turns both connections into one tunnel.
    pub upgrade: bool,
}

/// What became of the client connection once an answer was relayed.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// The answer was relayed whole: the next request may follow.
    KeepAlive,
    /// The connection must close (asked for, close-delimited answer, or
    /// something broke once the answer had begun).
    Close,
}

/// How an answer's body ends.
enum Framing {
    None,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

impl Proxy {
    /// Sends the request in `scratch.head` to `binder`'s container and
    /// relays the answer to `client`. `scratch.inbuf` holds what was read
    /// from the client after the request's head (the body's start, perhaps
    /// the next request). An error means nothing was written to the client.
    pub async fn exchange(
        &self,
        client: &mut TcpStream,
        scratch: &mut Scratch,
        req: Outgoing,
        binder: &Binder,
        now: Instant,
    ) -> Result<After, ProxyError> {
        binder.touch();
        crate::metrics::count_proxied();
        let Some(addr) = binder.instance().map(|i| i.addr) else {
            return Err(ProxyError::Unreachable("no container".into()));
        };
        let Scratch {
            inbuf,
            upbuf,
            head,
            answer_due,
        } = scratch;
        answer_due.as_mut().reset(now + UPSTREAM_HEADERS_TIMEOUT);
        let mut exchange = Exchange {
            client,
            inbuf,
            upbuf,
            out: head,
            req: &req,
            binder,
            addr,
            now,
            write_timeout: self.write_timeout,
            tunnel_idle: self.tunnel_idle,
        };
        let (upstream, head_len) = tokio::select! {
            biased;
            sent = exchange.send() => sent?,
            _ = answer_due.as_mut() => return Err(ProxyError::Timeout),
        };
        exchange.relay(upstream, head_len).await
    }
}

/// One request on its way: the client's connection and its buffers (the
/// connection's [`Scratch`]), and where the request goes.
struct Exchange<'a> {
    client: &'a mut TcpStream,
    /// From the client: the body's start, perhaps the next request.
    inbuf: &'a mut BytesMut,
    /// From the container.
    upbuf: &'a mut BytesMut,
    /// The request's rewritten head, then the answer's.
    out: &'a mut Vec<u8>,
    req: &'a Outgoing,
    binder: &'a Binder,
    addr: SocketAddr,
    now: Instant,
    /// A client that takes nothing of the answer this long is cut off.
    write_timeout: std::time::Duration,
    tunnel_idle: std::time::Duration,
}

/// What the answer's head in `upbuf` says, once parsed.
enum AnswerHead {
    /// Not all of it yet.
    Partial,
    /// An interim 1xx answer, this long: relayed, and the real one awaited.
    Interim(usize),
    /// The answer's head (or an asked-for 101), this long.
    Final(usize),
}

impl Exchange<'_> {
    /// Sends the request (on a kept connection, or a new one when there is
    /// none or a kept one was closed under it) and reads until an answer's
    /// head (not 1xx) is in `upbuf`; interim 1xx answers are relayed.
    async fn send(&mut self) -> Result<(TcpStream, usize), ProxyError> {
        let (req, binder, addr, now) = (self.req, self.binder, self.addr, self.now);
        // The body's start goes with the head, in one write.
        let first = (req.body_len as usize).min(self.inbuf.len());
        self.out.extend_from_slice(&self.inbuf[..first]);
        self.inbuf.advance(first);
        let rest = req.body_len - first as u64;
        let mut kept = binder.conns.take(addr, now);
        loop {
            let reused = kept.is_some();
            let mut upstream = match kept.take() {
                Some(s) => s,
                None => crate::upstream::connect(addr).await.map_err(unreachable)?,
            };
            // A kept connection the container closed a moment ago fails here or
            // at the first read. Refused at the first write, the request was
            // not taken: it goes again on a new connection (nothing more was
            // read from the client yet). Cut off before any answer byte, only
            // an idempotent request whole in hand goes again (the container may
            // have acted on it).
            if let Err(e) = upstream.write_all(self.out).await {
                if reused {
                    continue;
                }
                return Err(unreachable(e));
            }
            let again = reused && rest == 0 && req.idempotent;
            self.send_body(&mut upstream, rest).await?;
            if let Some(len) = self.read_answer_head(&mut upstream, again).await? {
                return Ok((upstream, len));
            }
            // Closed before answering: sent again, on a new connection.
        }
    }

    /// Relays the rest of the request's body (`rest` bytes) from the
    /// client to the container, as it comes.
    async fn send_body(
        &mut self,
        upstream: &mut TcpStream,
        mut rest: u64,
    ) -> Result<(), ProxyError> {
        while rest > 0 {
            self.inbuf.reserve(READ_CHUNK);
            let n = self
                .client
                .read_buf(self.inbuf)
                .await
                .map_err(unreachable)?;
            if n == 0 {
                return Err(ProxyError::BadRequest(
                    "the client closed before sending its whole body".into(),
                ));
            }
            let take = (rest as usize).min(self.inbuf.len());
            upstream
                .write_all(&self.inbuf[..take])
                .await
                .map_err(unreachable)?;
            self.inbuf.advance(take);
            rest -= take as u64;
        }
        Ok(())
    }

    /// Reads the answer's head into `upbuf`, relaying interim 1xx answers:
    /// its length, or `None` when the connection closed before any answer
    /// byte and the request may go again (`again`).
    async fn read_answer_head(
        &mut self,
        upstream: &mut TcpStream,
        again: bool,
    ) -> Result<Option<usize>, ProxyError> {
        self.upbuf.clear();
        loop {
            self.upbuf.reserve(READ_CHUNK);
            if !self.upbuf.is_empty() {
                // More of the head is awaited: ACK what came at once
                // ([`crate::tcp`]); an answer read whole in one go
                // costs no system call for it.
                crate::tcp::quick_ack(upstream);
            }
            let n = match upstream.read_buf(self.upbuf).await {
                Ok(n) => n,
                Err(_) if again && self.upbuf.is_empty() => 0,
                Err(e) => return Err(unreachable(e)),
            };
            if n == 0 {
                if again && self.upbuf.is_empty() {
                    return Ok(None);
                }
                return Err(ProxyError::Unreachable(
                    "the container closed the connection without answering".into(),
                ));
            }
            match parse_answer_head(self.upbuf, self.req)? {
                AnswerHead::Partial => {}
                AnswerHead::Interim(len) => {
                    // Interim (103 Early Hints and the like): relay it
                    // as it came and read on.
                    let interim = &self.upbuf[..len];
                    self.client.write_all(interim).await.map_err(unreachable)?;
                    self.upbuf.advance(len);
                }
                AnswerHead::Final(len) => return Ok(Some(len)),
            }
        }
    }

    /// Writes the answer's rewritten head and relays its body; gives the
    /// upstream connection back when it ended cleanly at the answer's end.
    async fn relay(
        mut self,
        mut upstream: TcpStream,
        head_len: usize,
    ) -> Result<After, ProxyError> {
        // httparse checked the status line: "HTTP/1.x NNN".
        if self.req.upgrade && self.upbuf.get(9..12) == Some(b"101".as_slice()) {
            return Ok(self.tunnel(upstream, head_len).await);
        }
        let (req, binder) = (self.req, self.binder);
        let (mut framing, upstream_keeps) =
            rewrite_answer(&self.upbuf[..head_len], req, binder, self.out)?;
        self.upbuf.advance(head_len);
        let client_keeps = !req.client_close && !matches!(framing, Framing::UntilClose);
        let Some(clean) = self.relay_body(&mut upstream, &mut framing).await else {
            return Ok(After::Close);
        };
        // Bytes past the answer's end were never asked for: not reusable.
        if clean && upstream_keeps && self.upbuf.is_empty() {
            binder.conns.give_back(self.addr, upstream, self.now);
        }
        Ok(if client_keeps && clean {
            After::KeepAlive
        } else {
            After::Close
        })
    }

    /// Switched: the answer's head as it came (its cookies confined), then
    /// whatever either side sent early, then the tunnel, until one side
    /// closes.
    async fn tunnel(self, mut upstream: TcpStream, head_len: usize) -> After {
        let Exchange {
            client,
            inbuf,
            upbuf,
            binder,
            tunnel_idle,
            ..
        } = self;
        let early = std::mem::take(inbuf);
        if let Some(head) = confine_switch(&upbuf[..head_len], binder) {
            upbuf.advance(head_len);
            if client.write_all(&head).await.is_err() {
                return After::Close;
            }
        }
        if client.write_all(upbuf).await.is_err() || upstream.write_all(&early).await.is_err() {
            return After::Close;
        }
        let (from_container, to_container) = upstream.split();
        let container = (crate::tcp::QuickAck(from_container), to_container);
        super::join(client.split(), container, binder, tunnel_idle).await;
        After::Close
    }

    /// Relays the answer's body after its head (already in `out`; what came
    /// with the head goes in the same write). `Some(clean)` once it ended,
    /// `clean` false when a chunked body turned out not to be; `None` when
    /// either side broke off (the client's connection must close).
    async fn relay_body(
        &mut self,
        upstream: &mut TcpStream,
        framing: &mut Framing,
    ) -> Option<bool> {
        let mut done = false;
        let mut clean = true;
        loop {
            let (take, ended) = body_step(framing, self.upbuf, done, &mut clean);
            self.out.extend_from_slice(&self.upbuf[..take]);
            self.upbuf.advance(take);
            if !self.out.is_empty() {
                let wrote =
                    tokio::time::timeout(self.write_timeout, self.client.write_all(self.out)).await;
                if !matches!(wrote, Ok(Ok(()))) {
                    return None;
                }
                self.out.clear();
            }
            if ended {
                return Some(clean);
            }
            self.upbuf.clear();
            self.upbuf.reserve(READ_CHUNK);
            // More of the body is awaited: ACK what came at once.
            crate::tcp::quick_ack(upstream);
            match upstream.read_buf(self.upbuf).await {
                Ok(0) if matches!(framing, Framing::UntilClose) => done = true,
                Ok(0) | Err(_) => return None, // cut short: so is the client's answer
                Ok(_) => {}
            }
        }
    }
}

/// The container could not be reached, or broke off.
#[inline]
fn unreachable(e: std::io::Error) -> ProxyError {
    ProxyError::Unreachable(e.to_string())
}

/// Parses what of the answer's head is in `upbuf`.
#[inline]
fn parse_answer_head(upbuf: &[u8], req: &Outgoing) -> Result<AnswerHead, ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    match answer.parse(upbuf) {
        Ok(httparse::Status::Complete(len)) => {
            let code = answer.code.unwrap_or(0);
            if code == 101 && req.upgrade {
                return Ok(AnswerHead::Final(len));
            }
            if code == 101 {
                return Err(ProxyError::Unreachable(
                    "the container switched protocols unasked".into(),
                ));
            }
            if (100..200).contains(&code) {
                return Ok(AnswerHead::Interim(len));
            }
            Ok(AnswerHead::Final(len))
        }
        Ok(httparse::Status::Partial) if upbuf.len() < MAX_ANSWER_HEAD => Ok(AnswerHead::Partial),
        Ok(httparse::Status::Partial) => Err(ProxyError::Unreachable(
            "the answer's head is too large".into(),
        )),
        Err(e) => Err(ProxyError::Unreachable(format!(
            "the container's answer is not HTTP: {e}"
        ))),
    }
}

/// How much of `upbuf` belongs to the body, and whether the body ends
/// there (`done`: a close-delimited body's connection closed). A chunked
/// body that turns out not to be ends at once, not `clean`.
#[inline]
fn body_step(framing: &mut Framing, upbuf: &[u8], done: bool, clean: &mut bool) -> (usize, bool) {
    match framing {
        Framing::None => (0, true),
        Framing::Length(left) => {
            let take = (*left as usize).min(upbuf.len());
            *left -= take as u64;
            (take, *left == 0)
        }
        Framing::Chunked(scan) => match scan.feed(upbuf) {
            Ok(Some(end)) => (end, true),
            Ok(None) => (upbuf.len(), false),
            Err(NotChunked) => {
                *clean = false;
                (upbuf.len(), true)
            }
        },
        Framing::UntilClose => (upbuf.len(), done),
    }
}

/// A 101 answer's head with its headers confined to the binder, when it
/// has any to confine (`None`: pass it as it came).
fn confine_switch(head: &[u8], binder: &Binder) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    answer.parse(head).ok()?;
    let touched = |name: &str| name.eq_ignore_ascii_case("set-cookie") || confine::dropped(name);
    if !answer.headers.iter().any(|h| touched(h.name)) {
        return None;
    }
    let line_end = head.windows(2).position(|w| w == b"\r\n")? + 2;
    let mut out = head[..line_end].to_vec();
    let location = binder.location();
    for h in answer.headers.iter() {
        if confine::dropped(h.name) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        if h.name.eq_ignore_ascii_case("set-cookie") {
            out.extend_from_slice(&confine::cookie(h.value, &location));
        } else {
            out.extend_from_slice(h.value);
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some(out)
}

/// Writes into `out` the answer's head (`head`, parsed) as the client gets
/// it: the status line rebuilt, hop-by-hop headers and those `Connection`
/// names removed, `Connection: close` when the client's connection ends
/// after it. Gives how its body ends and whether the container's
/// connection may be kept.
fn rewrite_answer(
    head: &[u8],
    req: &Outgoing,
    binder: &Binder,
    out: &mut Vec<u8>,
) -> Result<(Framing, bool), ProxyError> {
    out.clear();
    let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    if answer.parse(head).is_err() {
        return Err(ProxyError::Unreachable("the answer's head changed".into()));
    }
    let code = answer.code.unwrap_or(502);
    let named = connection_tokens(answer.headers);
    let framing = answer_framing(answer.headers, req, code)?;
    let until_close = matches!(framing, Framing::UntilClose);
    write_status_line(out, code, answer.reason.unwrap_or(""));
    copy_answer_headers(answer.headers, &named, binder, out);
    if req.client_close || until_close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let keeps = answer.version == Some(1) && !onward::names(&named, "close") && !until_close;
    Ok((framing, keeps))
}

/// How the answer's body ends, from its `Transfer-Encoding` and
/// `Content-Length` (none after `HEAD`, a 204 or a 304); an error for
/// disagreeing or bad lengths.
#[inline]
fn answer_framing(
    headers: &[httparse::Header<'_>],
    req: &Outgoing,
    code: u16,
) -> Result<Framing, ProxyError> {
    let mut te_chunked = None;
    let mut length = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te_chunked = Some(last_coding_is_chunked(h.value));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (n, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => {
                    return Err(ProxyError::Unreachable(
                        "the container's answer has a bad Content-Length".into(),
                    ))
                }
            }
        }
    }
    if req.head_method || code == 204 || code == 304 {
        return Ok(Framing::None);
    }
    Ok(match (te_chunked, length) {
        (Some(true), _) => Framing::Chunked(Chunked::default()),
        (Some(false), _) => Framing::UntilClose,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::UntilClose,
    })
}

/// Writes the status line, `HTTP/1.1` with the answer's code and reason.
#[inline]
fn write_status_line(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse takes exactly three digits.
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Copies the answer's headers the client may see: hop-by-hop headers,
/// those `Connection` names and the ones [`confine`] drops left out, and
/// cookies confined to the binder.
#[inline]
fn copy_answer_headers(
    headers: &[httparse::Header<'_>],
    named: &[&[u8]],
    binder: &Binder,
    out: &mut Vec<u8>,
) {
    for h in headers {
        // A passed-through body keeps the Transfer-Encoding it came with.
        let keep = h.name.eq_ignore_ascii_case("transfer-encoding")
            || !(is_hop_by_hop(h.name) || onward::names(named, h.name) || confine::dropped(h.name));
        if keep {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            if h.name.eq_ignore_ascii_case("set-cookie") {
                out.extend_from_slice(&confine::cookie(h.value, &binder.location()));
            } else {
                out.extend_from_slice(h.value);
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The names every `Connection` header lists (the headers it names are
/// this hop's only), read by [`onward::connection_names`].
pub fn connection_tokens<'h>(headers: &[httparse::Header<'h>]) -> Vec<&'h [u8]> {
    onward::connection_names(
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| h.value),
    )
}

fn last_coding_is_chunked(value: &[u8]) -> bool {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

/// The body is not chunked as it says.
#[derive(Debug, PartialEq, Eq)]
pub struct NotChunked;

/// Finds where a chunked body ends (RFC 9112 §7.1), fed as it arrives.
#[derive(Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    EndLf,
    Done,
}

impl Chunked {
    /// Scans `bytes`, the body's next part: `Some(n)` when the body ends
    /// after its first `n` bytes, `None` when it goes on, `Err` when it is
    /// not a chunked body.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, NotChunked> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            if self.state == Data {
                let take = (self.size as usize).min(bytes.len() - i);
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.size = self.size.checked_mul(16).ok_or(NotChunked)? + d;
                    self.digits = self.digits.saturating_add(1);
                    if self.digits > 16 {
                        return Err(NotChunked);
                    }
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Extension,
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Extension, b'\r') => SizeLf,
                (Extension, b'\n') => return Err(NotChunked),
                (Extension, _) => Extension,
                (SizeLf, b'\n') if self.size == 0 => TrailerStart,
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.digits = 0;
                    Size
                }
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart, _) | (TrailerLine, _) if b != b'\n' => TrailerLine,
                (TrailerLine, b'\n') => TrailerStart,
                (EndLf, b'\n') => {
                    self.state = Done;
                    return Ok(Some(i));
                }
                _ => return Err(NotChunked),
            };
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends_at(parts: &[&[u8]]) -> Result<Option<usize>, NotChunked> {
        let mut scan = Chunked::default();
        let mut seen = 0;
        for p in parts {
            if let Some(n) = scan.feed(p)? {
                return Ok(Some(seen + n));
            }
            seen += p.len();
        }
        Ok(None)
    }

    #[test]
    fn chunked_bodies_end_where_they_end_however_split() {
        let body =
            b"5\r\nhello\r\n1a;name=x\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        assert_eq!(ends_at(&[body]), Ok(Some(end)));
        for cut in 1..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(ends_at(&[a, b]), Ok(Some(end)), "split at {cut}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(ends_at(&bytes), Ok(Some(end)));
        assert_eq!(ends_at(&[b"0\r\n\r\n"]), Ok(Some(5)));
        assert_eq!(ends_at(&[b"5\r\nhel"]), Ok(None));
    }

    #[test]
    fn not_chunked_is_an_error() {
        assert_eq!(ends_at(&[b"zz\r\n"]), Err(NotChunked));
        assert_eq!(ends_at(&[b"\r\n"]), Err(NotChunked));
        assert_eq!(ends_at(&[b"5\r\nhelloXX"]), Err(NotChunked));
        assert_eq!(ends_at(&[b"fffffffffffffffff\r\n"]), Err(NotChunked));
    }

    #[test]
    fn hop_by_hop_and_codings() {
        assert!(is_hop_by_hop("Keep-Alive"));
        assert!(!is_hop_by_hop("content-length"));
        assert!(last_coding_is_chunked(b"gzip, Chunked"));
        assert!(!last_coding_is_chunked(b"chunked, gzip"));
        let h = [
            httparse::Header {
                name: "Connection",
                value: b"close, X-A",
            },
            httparse::Header {
                name: "connection",
                value: b" keep-alive",
            },
        ];
        assert_eq!(
            connection_tokens(&h),
            vec![&b"close"[..], b"X-A", b"keep-alive"]
        );
    }
}
