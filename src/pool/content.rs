//! A binding's content from its repository, made ready once per template
//! generation before any binder of it starts: the commit fetched into the
//! cache (`crate::content`), the `notebooks` tar, and the environment its
//! `requirements` build ([`Backend::build_env`](crate::backend::Backend::build_env)).
//! The reconciler starts nothing of a generation until its content is
//! ready; a cold start for a caller waits for it. The build's output is
//! kept ([`BuildLog`]) for `GET /bindings/{b}/build/logs` and `/build`'s
//! stream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Pool, PoolError, Pools};
use crate::backend::{BackendError, Content, EnvRequest};
use crate::binding::{Binding, ContentFrom};
use crate::content::ContentError;

/// Lines of a build's output kept (the newest).
const LOG_LINES: usize = 2000;
/// The first wait before fetching again from a repository that could not
/// be reached; it doubles up to [`MAX_RETRY`]. A failed build or an
/// invalid repository is not retried until the binding is put again.
const FIRST_RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(600);

/// Where a binding's content stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing to make (no content from a repository), or made.
    Ready,
    Fetching,
    Building,
    /// The message: why.
    Failed(String),
}

#[derive(Default)]
struct LogState {
    phase: Option<Phase>,
    lines: VecDeque<String>,
    /// Lines ever written (a reader's cursor counts these).
    written: u64,
    /// The generation made ready, and its content.
    ready: Option<(u64, Arc<Content>)>,
    /// The generation that failed, and when to try it again (never: a
    /// build or the repository's content is wrong until it is put again).
    failed: Option<(u64, Option<Instant>)>,
    retries: u32,
    running: bool,
}

/// A pool's build: phase, output, and what it made.
#[derive(Default)]
pub struct BuildLog {
    state: Mutex<LogState>,
    changed: tokio::sync::Notify,
}

impl BuildLog {
    fn with<T>(&self, f: impl FnOnce(&mut LogState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    pub fn line(&self, line: &str) {
        self.with(|s| {
            s.written += 1;
            s.lines.push_back(line.chars().take(4000).collect());
            while s.lines.len() > LOG_LINES {
                s.lines.pop_front();
            }
        });
        self.changed.notify_waiters();
    }

    fn set_phase(&self, phase: Phase) {
        self.with(|s| s.phase = Some(phase));
        self.changed.notify_waiters();
    }

    /// The phase, `None` when the binding has no content to make.
    pub fn phase(&self) -> Option<Phase> {
        self.with(|s| s.phase.clone())
    }

    /// The kept output, one line each.
    pub fn text(&self) -> String {
        self.with(|s| {
            let mut text = String::new();
            for line in &s.lines {
                text.push_str(line);
                text.push('\n');
            }
            text
        })
    }

    /// Lines after `cursor` (lines ever written), and the new cursor.
    pub fn since(&self, cursor: u64) -> (Vec<String>, u64) {
        self.with(|s| {
            let first = s.written - s.lines.len() as u64;
            let skip = cursor.saturating_sub(first) as usize;
            (s.lines.iter().skip(skip).cloned().collect(), s.written)
        })
    }

    /// The last line written, if any.
    pub fn last_line(&self) -> Option<String> {
        self.with(|s| s.lines.back().cloned())
    }

    /// Lines ever written.
    pub fn cursor(&self) -> u64 {
        self.with(|s| s.written)
    }

    /// Waits until something changes (a line, a phase), at most `wait`.
    pub async fn changed(&self, wait: Duration) {
        let _ = tokio::time::timeout(wait, self.changed.notified()).await;
    }
}

/// Whether a binder of `binding` needs content made before it starts.
pub(super) fn needs_content(binding: &Binding) -> bool {
    binding.makes_content()
}

impl Pool {
    /// The content made for template generation `generation`, if made.
    pub(super) fn content_for(&self, generation: u64) -> Option<Arc<Content>> {
        self.build.with(|s| {
            s.ready
                .as_ref()
                .filter(|(g, _)| *g == generation)
                .map(|(_, c)| c.clone())
        })
    }

    /// The build's phase and output.
    pub fn build(&self) -> &BuildLog {
        &self.build
    }

    /// Whether the current generation's content is ready (or none is
    /// needed): the reconciler's gate, and `/build`'s.
    pub fn content_ready(&self) -> bool {
        !needs_content(&self.current().binding) || self.content_for(self.generation()).is_some()
    }
}

impl Pools {
    /// The reconciler's gate: true when binders of the current generation
    /// may start; otherwise makes sure the content is being made (unless
    /// it failed and is not due again) and returns false.
    pub(super) fn content_gate(&self, pool: &Arc<Pool>) -> bool {
        if pool.content_ready() {
            return true;
        }
        let generation = pool.generation();
        let start = pool.build.with(|s| {
            let due = match s.failed {
                Some((g, retry)) if g == generation => retry.is_some_and(|at| Instant::now() >= at),
                _ => true,
            };
            if s.running || !due {
                return false;
            }
            s.running = true;
            true
        });
        if start {
            let this = self.clone();
            let pool = pool.clone();
            tokio::spawn(async move { this.prepare(pool).await });
        }
        false
    }

    /// Waits (up to `wait`) until the content of `generation` is made:
    /// a cold start for a caller comes here. The failure's message if it
    /// failed.
    pub(super) async fn wait_content(
        &self,
        pool: &Arc<Pool>,
        generation: u64,
        wait: Duration,
    ) -> Result<Option<Arc<Content>>, String> {
        if !needs_content(&pool.record().binding) {
            return Ok(None);
        }
        let deadline = Instant::now() + wait;
        loop {
            let notified = pool.build.changed.notified();
            if let Some(content) = pool.content_for(generation) {
                return Ok(Some(content));
            }
            if pool.generation() != generation {
                return Err("the binding was replaced while this binder waited".into());
            }
            if let Some(Phase::Failed(why)) = pool.build.phase() {
                if pool
                    .build
                    .with(|s| s.failed.is_some_and(|(g, _)| g == generation))
                {
                    return Err(why);
                }
            }
            self.content_gate(pool);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err("the binding's content is still being made".into());
            }
        }
    }

    /// Makes the current generation's content; runs once at a time per pool.
    async fn prepare(self, pool: Arc<Pool>) {
        loop {
            let generation = pool.generation();
            let binding = pool.record().binding.clone();
            pool.build.set_phase(Phase::Fetching);
            let made = self.make_content(&pool, &binding).await;
            if pool.generation() != generation {
                continue; // put again meanwhile: make the new one
            }
            match made {
                Ok(content) => {
                    pool.build.with(|s| {
                        s.ready = Some((generation, Arc::new(content)));
                        s.failed = None;
                        s.retries = 0;
                        s.running = false;
                    });
                    pool.build.set_phase(Phase::Ready);
                    pool.start_succeeded();
                    tracing::info!(binding = %pool.name, "content ready");
                }
                Err((why, retry)) => {
                    tracing::warn!(binding = %pool.name, error = %why, "content failed");
                    pool.build.line(&format!("failed: {why}"));
                    pool.build.with(|s| {
                        let wait = retry.then(|| {
                            let wait = FIRST_RETRY
                                .saturating_mul(1 << s.retries.min(10))
                                .min(MAX_RETRY);
                            s.retries += 1;
                            Instant::now() + wait
                        });
                        s.failed = Some((generation, wait));
                        s.running = false;
                    });
                    pool.build.set_phase(Phase::Failed(why));
                }
            }
            pool.wake.notify_one();
            return;
        }
    }

    /// Resolves (when not yet), fetches, builds: a repository's files and
    /// requirements, and `packages`. The error, and whether trying again
    /// later could help (a repository or package index that did not answer).
    async fn make_content(
        &self,
        pool: &Arc<Pool>,
        binding: &Binding,
    ) -> Result<Content, (String, bool)> {
        let cache = &self.inner.content;
        let from_repo = binding.content_from() == ContentFrom::Repo;
        let failed = |e: ContentError| {
            let retry = matches!(e, ContentError::Repo(_));
            (e.to_string(), retry)
        };
        let (files, from_file) = if from_repo {
            let commit = match &binding.resolved_ref {
                Some(commit) => commit.clone(),
                None => {
                    let commit = cache.resolve(binding).await.map_err(failed)?;
                    // A binding of the config file is resolved at each start.
                    let record = pool.record();
                    let mut updated = (*record).clone();
                    updated.binding.resolved_ref = Some(commit.clone());
                    if let Some(doc) = &updated.document {
                        let mut doc = (**doc).clone();
                        doc.resolved_ref = Some(commit.clone());
                        updated.document = Some(Arc::new(doc));
                    }
                    pool.record.store(Arc::new(updated));
                    commit
                }
            };
            pool.build.line(&format!(
                "fetching {} at {commit}",
                binding.repo.as_deref().unwrap_or("")
            ));
            let fetched = cache.fetch(binding, &commit).await.map_err(failed)?;
            (Some(fetched.files), fetched.requirements)
        } else {
            (None, None)
        };
        // The packages, then the repository's own requirements.
        let mut requirements: Vec<u8> = Vec::new();
        for p in &binding.packages {
            requirements.extend_from_slice(p.as_bytes());
            requirements.push(b'\n');
        }
        if let Some(file) = &from_file {
            requirements.extend_from_slice(file);
        }
        let env = if requirements.is_empty() && from_file.is_none() {
            None
        } else {
            pool.build.set_phase(Phase::Building);
            let config = cache.config();
            let log = |line: &str| pool.build.line(line);
            let built = self
                .inner
                .backend
                .build_env(EnvRequest {
                    binding,
                    requirements: &requirements,
                    python: &config.python,
                    pip_args: &config.pip_args,
                    image_pip: &config.image_pip,
                    build_network: &config.build_network,
                    allow_sdists: config.allow_sdists,
                    timeout: Duration::from_secs(config.build_timeout_seconds.max(1)),
                    log: &log,
                })
                .await
                // The index did not answer: worth trying again later.
                .map_err(|e| match e {
                    BackendError::Unavailable(why) => (why, true),
                    e => (e.to_string(), false),
                })?;
            Some(built)
        };
        Ok(Content { files, env })
    }
}

impl Pools {
    /// The repository a launch link names, for a binding that takes content
    /// at launch: fetched once per commit (`crate::content::Cache::launch`);
    /// the tree's tar and whether it was fetched just now.
    pub async fn launch_content(
        &self,
        url: &str,
        git_ref: &str,
    ) -> Result<(std::path::PathBuf, String, bool), PoolError> {
        let (fetched, fresh) = self.inner.content.launch(url, git_ref).await?;
        Ok((fetched.files, fetched.commit, fresh))
    }

    /// Puts a launch's repository files into `binder` (handed out for
    /// `repo`), once; a binder that cannot take them is stopped (nobody
    /// gets a binder without the files the link promised).
    pub async fn put_launch_files(
        &self,
        pool: &Arc<Pool>,
        binder: &Arc<crate::binder::Binder>,
        repo: &str,
        files: &std::path::Path,
    ) -> Result<(), PoolError> {
        if binder.launched_with.get().map(String::as_str) != Some(repo) {
            return Err(PoolError::NotReady(binder.state()));
        }
        if binder
            .launch_files
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok(());
        }
        let Some(instance) = binder.instance() else {
            return Err(PoolError::NotReady(binder.state()));
        };
        let put = self
            .inner
            .backend
            .put_files(&binder.id, &instance, files)
            .await;
        if let Err(e) = put {
            tracing::warn!(binder = %binder.id, error = %e, "a launch's files could not be put in");
            self.stop(pool, binder);
            return Err(e.into());
        }
        Ok(())
    }
}

/// The shortest wait a `/build` stream uses between looks at a build.
pub const BUILD_POLL: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_gets_each_line_once_and_the_log_keeps_the_newest() {
        let log = BuildLog::default();
        let start = log.cursor();
        log.line("one");
        log.line("two");
        let (lines, cursor) = log.since(start);
        assert_eq!(lines, ["one", "two"]);
        log.line("three");
        let (lines, _) = log.since(cursor);
        assert_eq!(lines, ["three"]);
        for i in 0..LOG_LINES + 5 {
            log.line(&i.to_string());
        }
        let (lines, _) = log.since(0);
        assert_eq!(lines.len(), LOG_LINES);
        assert_eq!(lines.last().unwrap(), &(LOG_LINES + 4).to_string());
        assert!(log.text().ends_with(&format!("{}\n", LOG_LINES + 4)));
    }
}
