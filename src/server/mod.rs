//! binderd's front door: connections. The [`Listener`] accepts under the
//! connection cap and gives each connection to one of the proxy's event
//! loops ([`workers`]), where a [`conn::Handler`] serves it: plain requests
//! for an assigned binder on the fast path, the rest handed to hyper and
//! [`crate::api`]'s routes on the main runtime. What a request *means* is
//! `api`'s business; this module only moves connections.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::App;

mod clients;
mod conn;
mod head;
mod replay;
mod workers;

use clients::Clients;
use conn::{Handler, Hyper};
use workers::Workers;

/// Why [`serve`] could not serve until its shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The proxy's event loops (their threads, their runtimes' epoll and
    /// event fds) could not be made: nothing was served.
    #[error("cannot start the proxy's event loops: {0}")]
    Start(std::io::Error),
    /// `accept` fails in a way no retry mends (the socket is not listening,
    /// or not a socket at all): no connection can ever come.
    #[error("the listener cannot accept connections: {0}")]
    Listener(std::io::Error),
}

/// Accepts connections until `shutdown` resolves, then stops accepting and
/// waits up to the configured grace for in-flight requests and tunnels.
/// An error means it could not start, or its listener became unusable (then
/// the connections it had are drained first, as at shutdown).
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut front = Listener::new(app, listener).map_err(ServeError::Start)?;
    let accepted = front.accept_until(shutdown).await;
    front.drain().await;
    accepted
}

/// Whether a failed `accept` means the listener can never accept: a bad
/// descriptor, a socket that is not listening, or no socket. The rest (out
/// of file descriptors or memory, a connection reset before it was taken,
/// a network error passed on by Linux) pass.
fn unusable(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::BADF | Errno::INVAL | Errno::NOTSOCK)
    )
}

/// The accepting side: the listening socket and what every connection
/// shares.
struct Listener {
    app: Arc<App>,
    listener: TcpListener,
    /// The connection cap: beyond it, connections wait in the kernel's
    /// listen backlog.
    slots: Arc<Semaphore>,
    /// Each client's share of it.
    clients: Arc<Clients>,
    /// hyper's connection builder, for what the fast path hands over.
    builder: auto::Builder<TokioExecutor>,
    graceful: GracefulShutdown,
    /// Cancelled at shutdown: idle fast-path connections close.
    stopping: CancellationToken,
    connections: TaskTracker,
    workers: Workers,
    main: tokio::runtime::Handle,
}

impl Listener {
    fn new(app: Arc<App>, listener: TcpListener) -> std::io::Result<Listener> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // Slow-loris: the headers must arrive within the timeout.
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(app.config.header_read_timeout);
        if app.config.http2 {
            // No header timeout in hyper's HTTP/2: a peer that stops
            // answering pings is dropped, and what one connection may ask
            // at once is bounded.
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(20))
                .max_concurrent_streams(100)
                .max_header_list_size(64 * 1024);
        }
        Ok(Listener {
            slots: Arc::new(Semaphore::new(app.config.max_connections)),
            clients: Arc::new(Clients::new(app.config.max_connections_per_client)),
            app,
            listener,
            builder,
            graceful: GracefulShutdown::new(),
            stopping: CancellationToken::new(),
            connections: TaskTracker::new(),
            workers: Workers::start()?,
            main: tokio::runtime::Handle::current(),
        })
    }

    /// Accepts (a slot first, then a connection) until `shutdown`, or until
    /// the listener turns out [`unusable`].
    async fn accept_until(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        tokio::pin!(shutdown);
        loop {
            let accept = async {
                let slot = self.slots.clone().acquire_owned().await;
                (slot, self.listener.accept().await)
            };
            let (slot, stream, peer) = tokio::select! {
                (slot, accepted) = accept => match (slot, accepted) {
                    (Ok(slot), Ok((stream, peer))) => (slot, stream, peer),
                    (_, Err(e)) if unusable(&e) => return Err(ServeError::Listener(e)),
                    (_, Err(e)) => {
                        // Out of file descriptors and the like: do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    (Err(_), _) => break,
                },
                _ = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            // A client over its share is told so at once (a trusted proxy
            // speaks for many: its connections are not counted).
            let share = if self.app.limits.trusts(peer.ip()) {
                None
            } else {
                match self.clients.admit(peer.ip()) {
                    Some(share) => Some(share),
                    None => {
                        clients::refuse(stream);
                        continue;
                    }
                }
            };
            // The socket moves to an event loop's reactor.
            let Ok(stream) = stream.into_std() else {
                continue;
            };
            let handler = Handler {
                app: self.app.clone(),
                peer,
                stopping: self.stopping.clone(),
                hyper: Hyper {
                    builder: self.builder.clone(),
                    watcher: self.graceful.watcher(),
                    connections: self.connections.clone(),
                    main: self.main.clone(),
                },
                slot,
                share,
            };
            let tracked = self.connections.clone();
            // The connection's future is made on its event loop, so its
            // sockets and timers belong to that loop's reactor.
            self.workers.run(Box::new(move || {
                Box::pin(tracked.track_future(handler.run(stream)))
            }));
        }
        Ok(())
    }

    /// Stops accepting; idle connections close, busy ones get the grace
    /// to finish (tunnels too); then the event loops end.
    async fn drain(self) {
        let Listener {
            app,
            listener,
            graceful,
            stopping,
            connections,
            workers,
            ..
        } = self;
        drop(listener);
        let grace = app.config.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        stopping.cancel();
        connections.close();
        let all_closed = async {
            tokio::join!(graceful.shutdown(), connections.wait());
        };
        tokio::select! {
            _ = all_closed => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!("shutdown grace of {}s passed with connections still open", grace.as_secs());
            }
        }
        // Upgraded connections are not hyper's any more: wait for them too,
        // within the same grace.
        app.proxy
            .close_tunnels(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await;
        // The event loops end; anything still on them is dropped.
        let _ = tokio::task::spawn_blocking(move || workers.stop()).await;
    }
}
