//! The HTTP client towards containers: the pool's readiness probe, the
//! proxy's upgrade requests and its less common requests use a pooled hyper
//! client; the proxy's fast path (see `proxy::exchange`) uses [`Conns`], each
//! binder's own kept-alive upstream TCP connections, driven by the task of
//! the client connection that uses them (no pool checkout, no hop to a
//! connection task and back for a request or a chunk).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::FutureExt;
use http::header;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::{empty, Body};

pub mod ack;
pub mod held;

/// Idle connections a binder keeps, at most (as nginx's `keepalive 256`
/// would for one upstream; fewer and a burst of clients churns
/// connections, each answer closing one and each request opening one).
pub const MAX_IDLE_PER_BINDER: usize = 256;
/// An idle connection older than this is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to a container may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Kept connections are shared by the requests of one event loop only
/// (a socket belongs to the loop whose reactor registered it): each loop
/// has its own shelf in every binder's [`Conns`].
const SHELVES: usize = 16;

thread_local! {
    static SHELF: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Says which event loop this thread runs (its shelf in every [`Conns`]).
pub fn set_loop_index(i: usize) {
    SHELF.with(|s| s.set(i % SHELVES));
}

fn shelf() -> usize {
    SHELF.with(|s| s.get())
}

struct Idle {
    stream: TcpStream,
    addr: SocketAddr,
    since: Instant,
}

/// A binder's idle upstream connections, each at a request boundary (the
/// last answer read to its end, nothing more pending), on one shelf per
/// event loop (up to [`MAX_IDLE_PER_BINDER`] each, as nginx's `keepalive`
/// is per worker).
#[derive(Default)]
pub struct Conns {
    shelves: [Mutex<Vec<Idle>>; SHELVES],
}

impl Conns {
    /// The most recently used live connection to `addr`, if any; stale
    /// ones (expired, closed by the container, or with unasked-for bytes)
    /// are dropped on the way.
    pub fn take(&self, addr: SocketAddr, now: Instant) -> Option<TcpStream> {
        loop {
            let idle = self.shelves[shelf()].lock().ok()?.pop()?;
            if idle.addr == addr
                && now.saturating_duration_since(idle.since) < IDLE_TIMEOUT
                && is_quiet(&idle.stream)
            {
                return Some(idle.stream);
            }
        }
    }

    /// Keeps `stream` for the next request to `addr` (if there is room).
    /// `now` may be a moment ago (the request's start: one clock read).
    pub fn give_back(&self, addr: SocketAddr, stream: TcpStream, now: Instant) {
        let Ok(mut idle) = self.shelves[shelf()].lock() else {
            return;
        };
        // The oldest are at the front: drop the expired ones.
        let expired = idle
            .iter()
            .take_while(|c| now.saturating_duration_since(c.since) >= IDLE_TIMEOUT)
            .count();
        idle.drain(..expired);
        if idle.len() < MAX_IDLE_PER_BINDER {
            idle.push(Idle {
                stream,
                addr,
                since: now,
            });
        }
    }

    /// How many idle connections are kept now, on every shelf.
    pub fn idle(&self) -> usize {
        self.shelves
            .iter()
            .map(|s| s.lock().map_or(0, |i| i.len()))
            .sum()
    }
}

/// True if an idle connection has nothing to read: neither an end (the
/// container closed it) nor bytes nobody asked for. Costs no system call
/// unless the runtime saw it become readable.
fn is_quiet(stream: &TcpStream) -> bool {
    if stream.readable().now_or_never().is_none() {
        return true;
    }
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Opens a new connection to a container (Nagle off).
pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// How long one readiness check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Upstream {
    client: Client<ack::QuickAckConnector, Body>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream::new()
    }
}

impl Upstream {
    pub fn new() -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(ack::QuickAckConnector(connector));
        Upstream { client }
    }

    /// Sends one request (absolute URI) to a container.
    pub async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
    }

    /// True if something at `addr` answers `GET path` with any HTTP response.
    pub async fn answers(&self, addr: SocketAddr, path: &str) -> bool {
        let Ok(uri) = format!("http://{addr}{path}").parse::<Uri>() else {
            return false;
        };
        let Ok(req) = Request::get(uri)
            .header(header::USER_AGENT, "binderd-readiness")
            .body(empty())
        else {
            return false;
        };
        match tokio::time::timeout(PROBE_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(resp)) => {
                // Drain, so the pooled connection can serve the next probe.
                let _ = tokio::time::timeout(PROBE_TIMEOUT, resp.into_body().collect()).await;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn idle_connections_are_bounded_and_dead_ones_not_reused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Conns::default();
        let mut served = Vec::new();
        for _ in 0..MAX_IDLE_PER_BINDER + 4 {
            let client = connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            served.push(server);
            conns.give_back(addr, client, Instant::now());
        }
        assert_eq!(conns.idle(), MAX_IDLE_PER_BINDER);
        served.truncate(MAX_IDLE_PER_BINDER); // the ones not kept

        // A connection the container closed, or one with stray bytes, is not
        // handed out; a quiet one is.
        let mut quiet = served.pop().unwrap();
        drop(served.pop()); // the newest but one: closed
        let mut noisy = served.pop().unwrap();
        noisy.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The newest kept one is the one whose server end is `quiet`.
        let mut got = conns.take(addr, Instant::now()).unwrap();
        got.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        quiet.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        let before = conns.idle();
        let next = conns.take(addr, Instant::now()).unwrap();
        assert_eq!(
            conns.idle(),
            before - 3,
            "the closed and the noisy one were dropped"
        );
        drop((next, noisy));

        // Another address's connections are not handed out for this one.
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(conns.take(other, Instant::now()).is_none());
        assert_eq!(conns.idle(), 0, "looking dropped the mismatched ones");
    }
}
