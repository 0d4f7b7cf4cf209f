//! The HTTP client towards containers: the pool's readiness probe and the
//! proxy's upgrade requests use a pooled client; the proxy's plain requests
//! use [`Conns`], each binder's own kept-alive HTTP/1 connections, driven in
//! the task of the request that uses them (no pool checkout, no hop to a
//! connection task and back for every request): the request's future polls
//! the connection until the answer's head comes, then the answer's body polls
//! it while it streams, and gives the connection back when the body ended.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::{empty, Body};

/// Idle connections a binder keeps, at most (as nginx's `keepalive 256`
/// would for one upstream; fewer and a burst of clients churns
/// connections, each answer closing one and each request opening one).
const MAX_IDLE_PER_BINDER: usize = 256;
/// An idle connection older than this is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to a container may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a kept-connection request failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("connecting: timed out")]
    ConnectTimeout,
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

type Connection = http1::Connection<TokioIo<TcpStream>, Body>;

/// One upstream connection, and whether its driver has finished (closed).
struct Conn {
    sender: http1::SendRequest<Body>,
    driver: Pin<Box<Connection>>,
    closed: bool,
    addr: SocketAddr,
    idle_since: Instant,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, SendError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| SendError::ConnectTimeout)?
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Conn {
            sender,
            driver: Box::pin(driver),
            closed: false,
            addr,
            idle_since: Instant::now(),
        })
    }

    /// Polls the connection's driver once (reads, writes, state changes).
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.closed && self.driver.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
    }

    /// Drives it until it takes a new request; false if it closed.
    async fn ready(&mut self) -> bool {
        use futures_util::FutureExt;
        let mut poll = |cx: &mut Context<'_>| {
            self.drive(cx);
            if self.closed {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|r| r.is_ok())
        };
        // Almost always ready at once: no timer for that case.
        if let Some(ready) = std::future::poll_fn(&mut poll).now_or_never() {
            return ready;
        }
        tokio::time::timeout(Duration::from_secs(1), std::future::poll_fn(poll))
            .await
            .unwrap_or(false)
    }
}

/// A binder's idle upstream connections.
#[derive(Default)]
pub struct Conns {
    idle: Mutex<Vec<Conn>>,
}

impl Conns {
    /// The most recently used live connection to `addr`, if any; stale ones
    /// are dropped (closed) on the way.
    fn take(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(conn) = idle.pop() {
            if conn.addr == addr
                && !conn.closed
                && !conn.sender.is_closed()
                && conn.idle_since.elapsed() < IDLE_TIMEOUT
            {
                return Some(conn);
            }
        }
        None
    }

    fn give_back(&self, mut conn: Conn) {
        if conn.closed || conn.sender.is_closed() {
            return;
        }
        conn.idle_since = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            // The oldest are at the front: drop the expired ones.
            let expired = idle
                .iter()
                .take_while(|c| c.idle_since.elapsed() >= IDLE_TIMEOUT)
                .count();
            idle.drain(..expired);
            if idle.len() < MAX_IDLE_PER_BINDER {
                idle.push(conn);
            }
        }
    }

    /// How many idle connections are kept now.
    pub fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }
}

/// A response body that drives its connection while it streams and gives
/// the connection back to its binder's [`Conns`] once it has ended.
struct KeptBody {
    inner: Incoming,
    conn: Option<Conn>,
    home: Arc<Conns>,
}

impl KeptBody {
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.home.give_back(conn);
        }
    }
}

impl hyper::body::Body for KeptBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(conn) = this.conn.as_mut() {
            conn.drive(cx);
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.finish();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for KeptBody {
    fn drop(&mut self) {
        // Read to the end: reusable. Dropped halfway (the client went away):
        // the connection closes with it.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

/// How long one readiness check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Upstream {
    client: Client<HttpConnector, Body>,
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
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Upstream { client }
    }

    /// Sends one request to a container.
    pub async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
    }

    /// Sends `req` (origin-form URI) to `addr` on one of `conns`' kept
    /// connections, or a new one, driving it in this task. A request that
    /// a reused connection could not take (it had closed meanwhile) is sent
    /// again on a new one; nothing is sent twice.
    pub async fn send_kept(
        &self,
        conns: &Arc<Conns>,
        addr: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        if !req.headers().contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(&addr.to_string()) {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        loop {
            let kept = match conns.take(addr) {
                Some(mut conn) => conn.ready().await.then_some(conn),
                None => None,
            };
            let reused = kept.is_some();
            let mut conn = match kept {
                Some(conn) => conn,
                None => Conn::open(addr).await?,
            };
            let answer = {
                let mut sending = std::pin::pin!(conn.sender.try_send_request(req));
                std::future::poll_fn(|cx| {
                    conn.drive(cx);
                    sending.as_mut().poll(cx)
                })
                .await
            };
            match answer {
                Ok(resp) => {
                    let home = conns.clone();
                    return Ok(resp.map(|inner| {
                        KeptBody {
                            inner,
                            conn: Some(conn),
                            home,
                        }
                        .boxed()
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A local HTTP/1 server counting the connections it accepted; paths
    /// starting with `/close` answer with `Connection: close`.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let close = req.uri().path().starts_with("/close");
                        let mut resp = Response::new(crate::body::full(vec![b'x'; 100_000]));
                        if close {
                            resp.headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(empty()).unwrap()
    }

    #[tokio::test]
    async fn kept_connections_are_reused_bounded_and_replaced_when_closed() {
        let (addr, accepted) = server().await;
        let upstream = Upstream::new();
        let conns = Arc::new(Conns::default());
        for _ in 0..50 {
            let resp = upstream.send_kept(&conns, addr, get("/")).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 100_000);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, reused");
        assert_eq!(conns.idle(), 1);

        // Many at once: each its own connection, at most 256 kept after.
        let answers = futures_util::future::join_all((0..300).map(|_| async {
            let resp = upstream.send_kept(&conns, addr, get("/")).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes().len()
        }))
        .await;
        assert!(answers.iter().all(|n| *n == 100_000));
        assert!(conns.idle() <= MAX_IDLE_PER_BINDER, "{}", conns.idle());

        // A body dropped halfway closes its connection instead of keeping it.
        let before = conns.idle();
        let resp = upstream.send_kept(&conns, addr, get("/")).await.unwrap();
        let mut body = resp.into_body();
        let _first = body.frame().await;
        drop(body);
        assert_eq!(conns.idle(), before - 1, "taken and not given back");

        // The server closes after each answer: every request still succeeds.
        let conns = Arc::new(Conns::default());
        let opened = accepted.load(Ordering::SeqCst);
        for _ in 0..5 {
            let resp = upstream
                .send_kept(&conns, addr, get("/close"))
                .await
                .unwrap();
            assert_eq!(
                resp.into_body().collect().await.unwrap().to_bytes().len(),
                100_000
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), opened + 5);
    }
}
