//! A launch's event stream: `data: {json}` events, and for a cold launch
//! the tail that follows the content's build and the binder's start until
//! `ready` or `failed`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::super::views::LaunchEvent;
use super::super::{ApiError, Result};
use crate::binder::State;
use crate::body::Body;
use crate::pool::{BuildPhase, Pool, BUILD_POLL};

/// A launch that brings its repository's files: the tree's tar, and the
/// repository's key.
#[derive(Clone)]
pub(super) struct LaunchFiles {
    pub(super) repo: String,
    pub(super) tar: std::path::PathBuf,
}

/// Where a cold launch's stream is.
pub(super) enum Step {
    /// The content is being made; the build's lines after this cursor are
    /// still to send.
    Building(u64),
    /// The binder starts; whether its container's start was announced.
    Launching(bool),
}

/// A cold launch under way, for its event stream.
pub(super) struct Cold {
    pub(super) pools: crate::pool::Pools,
    pub(super) pool: Arc<Pool>,
    pub(super) binder: Arc<crate::binder::Binder>,
    pub(super) url: String,
    pub(super) base: String,
    pub(super) image: String,
    pub(super) repo: String,
    pub(super) request: String,
    pub(super) wait: Duration,
    pub(super) deadline: std::sync::Mutex<tokio::time::Instant>,
    /// A launch's repository files, put in once the binder is up.
    pub(super) files: Option<LaunchFiles>,
}

/// How often a cold launch looks at its binder's progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

impl Cold {
    fn ready(&self) -> LaunchEvent {
        LaunchEvent::ready(
            &self.binder,
            &self.base,
            self.url.clone(),
            &self.image,
            &self.repo,
            &self.request,
        )
    }

    /// The build's next lines as `building` events; once the content is
    /// made, `built` and on to the launch; if the build failed, `failed`.
    pub(super) async fn build_lines(&self, cursor: u64) -> (Vec<LaunchEvent>, Option<Step>) {
        let build = self.pool.build();
        build.changed(BUILD_POLL).await;
        let (lines, cursor) = build.since(cursor);
        let mut out: Vec<LaunchEvent> = lines
            .into_iter()
            .map(|line| LaunchEvent::phase("building", format!("{line}\n")))
            .collect();
        match build.phase() {
            Some(BuildPhase::Failed(why)) => {
                self.pools.stop(&self.pool, &self.binder);
                out.push(LaunchEvent::failed(format!("the build failed: {why}\n")));
                (out, None)
            }
            _ if self.pool.content_ready() => {
                out.push(
                    LaunchEvent::phase("built", "Built, launching...\n").image_name(&self.image),
                );
                out.push(LaunchEvent::phase("launching", "Launching server...\n"));
                // The launch's own wait starts now (a build has its own
                // timeout, `[content] build_timeout_seconds`).
                if let Ok(mut deadline) = self.deadline.lock() {
                    *deadline = tokio::time::Instant::now() + self.wait;
                }
                (out, Some(Step::Launching(false)))
            }
            _ => (out, Some(Step::Building(cursor))),
        }
    }

    /// The next event, and whether the container's start was announced
    /// (`None` after the last event).
    pub(super) async fn next(&self, announced: bool) -> Option<(LaunchEvent, Option<bool>)> {
        loop {
            let deadline = *self.deadline.lock().unwrap_or_else(|e| e.into_inner());
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = match self.binder.wait_started(left.min(PROGRESS_EVERY)).await {
                State::Assigned if self.files.is_some() => {
                    let files = self.files.clone().expect("checked");
                    // In a task of its own: the engine call's future is not
                    // `Sync`, which the stream must be.
                    let (pools, pool, binder) =
                        (self.pools.clone(), self.pool.clone(), self.binder.clone());
                    let put = tokio::spawn(async move {
                        pools
                            .put_launch_files(&pool, &binder, &files.repo, &files.tar)
                            .await
                            .map_err(|e| ApiError::from(e).to_string())
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                    match put {
                        Ok(()) => self.ready(),
                        Err(e) => LaunchEvent::failed(format!(
                            "cannot put the repository's files in place: {e}"
                        )),
                    }
                }
                State::Assigned => self.ready(),
                State::Failed => LaunchEvent::failed(format!(
                    "the server failed to start: {}",
                    self.binder.failure().unwrap_or("unknown reason")
                )),
                State::Starting | State::StartingClaimed if !left.is_zero() => {
                    if !announced && self.binder.instance().is_some() {
                        let up = LaunchEvent::phase(
                            "launching",
                            "Server starting: its container is up, waiting for it to answer\n",
                        );
                        return Some((up, Some(true)));
                    }
                    continue;
                }
                _ => {
                    self.pools.stop(&self.pool, &self.binder);
                    LaunchEvent::failed(format!(
                        "no server was ready within {}s: try again",
                        self.wait.as_secs()
                    ))
                }
            };
            return Some((event, None));
        }
    }
}

pub(super) type Tail =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = LaunchEvent> + Send + Sync>>;

/// What a quiet stream sends, as BinderHub does (JupyterHub likewise): an event
/// stream comment, which clients skip.
const KEEPALIVE: &[u8] = b":heartbeat\n\n";

/// `text/event-stream` of `data: {json}` events: `head`, then `tail`'s as
/// they come, with a [`KEEPALIVE`] comment whenever the tail has been
/// quiet for `keepalive` (a cold start through a proxy that cuts idle
/// reads stays open).
pub(super) fn events(
    head: Vec<LaunchEvent>,
    tail: Option<(Tail, Duration)>,
) -> Result<Response<Body>> {
    let frame = |event: LaunchEvent| {
        let doc = serde_json::to_string(&event).unwrap_or_default();
        Bytes::from(format!("data: {doc}\n\n"))
    };
    let tail = stream::iter(tail).flat_map(move |(tail, keepalive)| {
        stream::unfold(tail, move |mut tail| async move {
            match tokio::time::timeout(keepalive, tail.next()).await {
                Ok(Some(event)) => Some((frame(event), tail)),
                Ok(None) => None,
                Err(_) => Some((Bytes::from_static(KEEPALIVE), tail)),
            }
        })
    });
    let body = StreamBody::new(
        stream::iter(head)
            .map(frame)
            .chain(tail)
            .map(|b| Ok::<_, hyper::Error>(Frame::data(b))),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(BodyExt::boxed(body))
        .map_err(|e| ApiError::Internal(e.to_string()))
}
