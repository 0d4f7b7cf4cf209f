//! binderd keeps pools of pre-warmed notebook containers and hands one out
//! the instant someone asks, then proxies to it.
//!
//! # Layout
//!
//! ARCHITECTURE.md is the map (layers, code map, invariants); in short, from
//! the top:
//!
//! - [`server`]: connections: accept under the cap, the proxy's event loops,
//!   the fast path for plain proxied requests, the hand-over to hyper.
//! - [`api`]: the routes: what a request means, the one place JSON shapes are
//!   defined and errors become status codes; `/user/{token}/` requests are
//!   given to [`proxy`] after [`api::user::reach`] decides which binder.
//! - [`admin`], [`cli`]: the command line, and the operator's commands that
//!   speak to a running binderd over HTTP.
//! - [`pool`]: bindings' pools, the lock-free handout, the reconcilers that
//!   keep pools at their target, the readiness check of a start, the culler,
//!   and adoption after a restart.
//! - [`proxy`]: forwarding to a binder's container (the fast path's raw
//!   HTTP/1 exchange, and hyper's for what is handed over), tunnels.
//! - [`store`]: SQLite persistence of bindings, pool sizes and binders, and
//!   the handout journal; [`kernel`]: Jupyter kernels spoken to by binderd
//!   (warm kernels, the server's own activity for culling).
//! - [`binder`], [`config`]; [`backend`]: the [`backend::Backend`] trait and
//!   its three implementations (`process`, the default; `docker`;
//!   `kubernetes`); [`quota`], [`ratelimit`]: admission; [`upstream`]: kept
//!   connections to containers and the readiness probe's client.
//! - [`binding`]: the template; [`auth`], [`limits`], [`metrics`], [`body`]:
//!   the leaves.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

// The crate's face: what `main`, the tests, the benches and
// `examples/embed.rs` use. Everything else is binderd's own, so the
// compiler (not only a test) keeps what may change a binder or a pool
// inside the crate.
pub mod admin;
pub mod auth;
pub mod backend;
pub mod binding;
pub mod cli;
pub mod config;
pub mod quota;

pub(crate) mod api;
pub(crate) mod binder;
pub(crate) mod body;
pub(crate) mod content;
pub(crate) mod kernel;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod pool;
pub(crate) mod proxy;
pub(crate) mod ratelimit;
pub(crate) mod server;
pub(crate) mod store;
pub(crate) mod tcp;
pub(crate) mod text;
pub(crate) mod upstream;

/// Parts that benches and tests measure or drive alone (the allocator,
/// a kernel's execute message): not binderd's interface.
#[doc(hidden)]
pub mod parts {
    pub use crate::binder::{Binder, State};
    pub use crate::kernel::execute_request;
    pub use crate::pool::allocator::{Counters, ReadyQueue};
}

pub use server::ServeError;

use backend::{Backend, BackendError};
use config::Config;
use pool::{PoolError, Pools};
use store::{Store, StoreError};

/// Why `run` could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
    #[error("adopting containers: {0}")]
    Adopt(#[from] PoolError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("config: {0}")]
    Config(String),
    #[error("serving: {0}")]
    Serve(#[from] server::ServeError),
}

impl Error {
    /// sysexits: 69 (unavailable) when the backend cannot be reached, 70 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Backend(BackendError::Unavailable(_)) => 69,
            Error::Adopt(PoolError::Backend(BackendError::Unavailable(_))) => 69,
            _ => 70,
        }
    }
}

/// Runs binderd on `listener` until `shutdown` resolves.
///
/// Opens the store, builds the backend, adopts what a previous run left,
/// starts the reconcilers and serves. On shutdown it stops accepting,
/// finishes in-flight requests (bounded by `shutdown_grace`) and leaves
/// containers running for the next start, unless `cleanup_on_exit`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let (exits_tx, exits_rx) = tokio::sync::mpsc::unbounded_channel();
    let settings = backend::Settings {
        docker: config.docker.clone(),
        kubernetes: config.kubernetes.clone(),
        process: config.process.clone(),
        limits: config.limits,
    };
    let backend = backend::connect(config.backend, &config.data_dir, &settings, exits_tx).await?;
    run_with_backend(config, listener, shutdown, backend, exits_rx).await
}

/// [`run`] on a backend built by the caller (tests give the kubernetes
/// backend a mock API server), with the receiver of its exit reports.
pub async fn run_with_backend(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    backend: Arc<dyn Backend>,
    exits_rx: tokio::sync::mpsc::UnboundedReceiver<backend::Exit>,
) -> Result<(), Error> {
    let local_addr = listener.local_addr()?;
    metrics::init();
    let (store, loaded) = Store::open(&config.data_dir)?;
    let upstream = Arc::new(upstream::Upstream::new());
    let pools = Pools::new(
        backend,
        store,
        upstream.clone(),
        pool::Tuning {
            start_concurrency: config.start_concurrency,
            max_pool_limit: config.max_pool_limit,
            cull_every: config.cull_interval,
        },
        Arc::new(
            quota::Quotas::new(config.quotas.clone())
                .map_err(|e| Error::Config(e.0))?
                .with_anonymous_caps(
                    config.rate_limit.anonymous_concurrent,
                    config.rate_limit.anonymous_total,
                ),
        ),
        content::Cache::new(&config.data_dir, config.content.clone())?,
    );
    let restored = pools.restore(loaded, config.bindings.clone()).await?;
    tracing::info!(
        bindings = restored.bindings,
        assigned = restored.assigned,
        pooled = restored.pooled,
        removed = restored.removed,
        "state restored"
    );
    tracing::info!(
        backend = config.backend.as_str(),
        "binderd listening on http://{local_addr}"
    );
    let cleanup = config.cleanup_on_exit;
    let grace = config.shutdown_grace;
    let limits = ratelimit::RateLimits::new(&config.rate_limit);
    let proxy =
        proxy::Proxy::new(upstream).with_timeouts(config.write_timeout, config.tunnel_idle_timeout);
    let app = Arc::new(api::App {
        keys: auth::Keys::new(config.api_keys.clone()),
        limits,
        config,
        pools: pools.clone(),
        proxy,
        local_addr,
    });
    let tasks = start_tasks(&app, exits_rx);
    // A failed serve still stops as a shutdown does (starts in flight
    // finished, the store closed cleanly), then says why.
    let served = server::serve(app, listener, shutdown).await;
    tasks.abort();
    pools.shutdown(grace).await;
    if cleanup {
        tracing::info!("stopping every container (cleanup on exit)");
        pools.stop_all().await;
    }
    if let Err(e) = pools.close_store().await {
        tracing::warn!(error = %e, "the store could not be closed cleanly; the next start treats this stop as a crash");
    }
    tracing::info!("binderd stopped");
    Ok(served?)
}

/// Every task binderd runs for as long as it serves, started here and
/// nowhere else. (What is spawned for one binder — its start, stop,
/// readiness or activity check — belongs to that binder; a pool made by a
/// later `PUT` starts its own reconciler as these do.) The pools' tasks end
/// with [`pool::Pools::shutdown`]; the one returned is aborted by `run`.
fn start_tasks(
    app: &Arc<api::App>,
    exits: tokio::sync::mpsc::UnboundedReceiver<backend::Exit>,
) -> tokio::task::JoinHandle<()> {
    let pools = &app.pools;
    // Containers that went away on their own leave their pools.
    tokio::spawn(pools.clone().watch_exits(exits));
    // The culler: idle, too old and never-visited binders.
    pools.spawn_culler(pools.cull_every());
    // Every pool's counts into its last hour, for the dashboard's charts.
    pools.spawn_trend_sampler();
    // Shared mode (several replicas): the pods' mirror, one Lease keeper
    // per pool, and the shared bindings document followed.
    pools.start_shared();
    pools.follow_shared_bindings();
    // One reconciler per pool, keeping it at its target.
    for pool in pools.pools() {
        pools.spawn_reconciler(pool);
    }
    // One replica: containers labelled as ours that no live binder owns.
    if pools.cluster().is_none() {
        pools.spawn_sweeper();
    }
    // The per-IP limiter and the anonymous quotas forget quiet clients
    // now and then: bounded memory.
    let app = app.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            app.limits.forget_quiet();
            app.pools.forget_idle_clients();
        }
    })
}
