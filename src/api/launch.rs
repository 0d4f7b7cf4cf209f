//! BinderHub's launch API, for the pages and buttons that speak it (modern
//! thebe, Jupyter Book, MyST, sphinx-thebe, "launch binder" badges):
//! `GET /build/{provider}/{spec}` (an event stream ending in `ready` with a
//! URL and token), `GET /v2/{provider}/{spec}` (a browser lands in a
//! binder), `GET /versions` and `GET /health`.
//!
//! binderd serves prebuilt images, so "build" means: find the binding whose
//! `repo` is that repository and hand out a binder from it, exactly as
//! `POST /binders/{binding}` does (same auth, quotas, rate limits, warm and
//! cold paths). The ref in the spec is not matched: a binding serves one
//! image, whatever ref a link names.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use http::{header, HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;

mod progress;

use progress::{events, Cold, LaunchFiles, Step};

use super::admission::admit_spawn;
use super::query::{self, decode};
use super::reply::{found, json};
use super::target;
use super::views::{BuilderInfo, HealthCheck, HubHealth, LaunchEvent, Versions};
use super::{ApiError, App, Result, VERSION};
use crate::auth::Caller;
use crate::binder::State;
use crate::binding::repo_key;
use crate::body::{full, Body};
use crate::pool::{Handout, Pool, PoolError};

/// What a launch link asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Spec {
    /// `gh`, `gl` or `git`.
    pub provider: String,
    /// The repository as [`repo_key`] spells it (`github.com/org/repo`).
    pub repo: String,
    /// The ref the link names (not matched: see the module docs).
    pub reference: String,
    /// The repository's URL, as fetched for a binding that takes content
    /// at launch.
    pub url: String,
}

impl Spec {
    /// Parses `{provider}/{spec}`: `gh/org/repo/ref`, `gl/group%2Fproject/ref`
    /// (or `gl/group/project/ref`), `git/{url-encoded URL}/ref`.
    pub fn parse(rest: &str) -> std::result::Result<Spec, String> {
        let (provider, spec) = rest.split_once('/').unwrap_or((rest, ""));
        let parts: Vec<&str> = spec.split('/').filter(|s| !s.is_empty()).collect();
        let (repo, reference) = match (provider, parts.as_slice()) {
            ("gh", [org, repo, reference @ ..]) => (
                format!("https://github.com/{org}/{repo}"),
                reference.join("/"),
            ),
            ("gl", [project, reference @ ..]) if project.contains("%2F") => (
                format!("https://gitlab.com/{}", decode(project)?),
                reference.join("/"),
            ),
            ("gl", [group, project, reference @ ..]) => (
                format!("https://gitlab.com/{group}/{project}"),
                reference.join("/"),
            ),
            ("git", [url, reference @ ..]) => (decode(url)?, reference.join("/")),
            ("gh" | "gl" | "git", _) => {
                return Err(format!("'{provider}/{spec}' names no repository"))
            }
            _ => {
                return Err(format!(
                    "provider '{provider}' is not served here (gh, gl or git)"
                ))
            }
        };
        Ok(Spec {
            provider: provider.to_owned(),
            repo: repo_key(&repo),
            url: repo,
            reference: if reference.is_empty() {
                "HEAD".into()
            } else {
                reference
            },
        })
    }
}

/// The pool of the binding that serves `spec`'s repository, if this caller
/// may use it; else what to tell them. A binding whose `repo` is it comes
/// first; else one that takes content at launch and accepts it (then
/// `launch` is true: the repository's files go into the binder at handout).
fn pool_for(
    app: &App,
    caller: &Caller,
    spec: &Spec,
) -> std::result::Result<(Arc<Pool>, bool), String> {
    let pools = app.pools.bindings();
    let visible = |p: &&Arc<Pool>| p.current().access().visible_to(caller);
    let bound = pools.iter().filter(visible).find(|p| {
        p.current()
            .binding
            .repo
            .as_deref()
            .is_some_and(|r| repo_key(r) == spec.repo)
    });
    if let Some(pool) = bound {
        return Ok((pool.clone(), false));
    }
    let accepting = pools.iter().filter(visible).find(|p| {
        p.current()
            .binding
            .content
            .as_ref()
            .is_some_and(|c| c.accepts(&spec.repo))
    });
    match accepting {
        Some(pool) => Ok((pool.clone(), true)),
        None => Err(format!(
            "no binding serves the repository {}",
            crate::text::printable(&spec.repo)
        )),
    }
}

/// Where users reach binderd: `--public-url`, else the request's host (the
/// forwarded host and scheme only from a trusted proxy).
fn public_base(app: &App, headers: &HeaderMap, peer: SocketAddr) -> String {
    if let Some(url) = &app.config.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim().to_owned())
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()))
    };
    let trusted = app.limits.trusts(peer.ip());
    let scheme = trusted
        .then(|| get("x-forwarded-proto"))
        .flatten()
        .filter(|s| s == "http" || s == "https")
        .unwrap_or_else(|| "http".into());
    let host = trusted
        .then(|| get("x-forwarded-host"))
        .flatten()
        .or_else(|| get("host"))
        .unwrap_or_else(|| app.local_addr.to_string());
    format!("{scheme}://{host}")
}

/// How long a launch waits for a cold start: the binding's start timeout,
/// and at least `spawn_wait_seconds`.
fn start_wait(app: &App, pool: &Pool) -> Duration {
    let start = Duration::from_secs(pool.current().binding.start_timeout_seconds + 5);
    start.max(app.config.spawn_wait)
}

/// The image a binding serves, as the events name it.
fn image_of(pool: &Pool) -> String {
    let record = pool.current();
    record
        .binding
        .image
        .clone()
        .unwrap_or_else(|| format!("binderd:{}", pool.name))
}

/// `GET /build/{provider}/{spec}`: BinderHub's event stream. Every outcome,
/// an unknown repository and a full pool included, is an event: EventSource
/// clients read nothing else.
pub(super) async fn build(
    app: &App,
    caller: &Caller,
    rest: &str,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>> {
    let failed = |message: String| events(vec![LaunchEvent::failed(message)], None);
    // As BinderHub: only an event-stream client launches (a crawler
    // following `/build` links would otherwise empty the pools).
    if !asks_for_events(req) {
        let mut refused = LaunchEvent::failed("Missing Accept header: text/event-stream\n");
        refused.status_code = Some(400);
        return events(vec![refused], None);
    }
    let (spec, pool, launch, client) = match admitted(app, caller, rest, req, peer) {
        Ok(admitted) => admitted,
        Err(message) => return failed(message),
    };
    // Content given at launch: the repository, fetched once per commit
    // (a first fetch is this stream's `fetching` phase).
    let mut said = Vec::new();
    let files = match launch_files(app, &spec, launch, &mut said).await {
        Ok(files) => files,
        Err(message) => return failed(message),
    };
    let mut build = Build {
        image: image_of(&pool),
        base: public_base(app, req.headers(), peer),
        request: format!("v2/{rest}"),
        said,
        spec,
        pool,
        files,
    };
    if query::flag(req.uri().query().unwrap_or(""), "build_only") {
        // Nothing is built here and nothing is launched for it.
        let done = LaunchEvent::phase(
            "ready",
            "Done! Found built image, not launching (build_only)\n",
        );
        let built = build.built();
        build.said.extend([built, done]);
        return events(build.said, None);
    }
    // Content from the repository still being made: the build's lines
    // first (BinderHub's `building` phase), `built` once it is made.
    let building = !build.pool.content_ready();
    let handed = app
        .pools
        .handout(&build.pool, caller.owner(), Some(client))
        .await;
    if let (Ok(Handout::Ready(b) | Handout::Starting(b)), Some(files)) = (&handed, &build.files) {
        let _ = b.launched_with.set(files.repo.clone());
    }
    match handed {
        Ok(Handout::Ready(b)) => build.warm(app, b).await,
        Ok(Handout::Starting(b)) => build.cold(app, b, building),
        Err(e @ PoolError::Full { .. }) => failed(e.to_string()),
        Err(e) => failed(ApiError::from(e).to_string()),
    }
}

/// Whether the client reads an event stream.
fn asks_for_events(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// What a `/build` launches from, once admitted: the spec, the pool (its
/// profile chosen), whether the repository's files come with the launch,
/// and whom an anonymous binder is charged to; else why not.
fn admitted(
    app: &App,
    caller: &Caller,
    rest: &str,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> std::result::Result<(Spec, Arc<Pool>, bool, std::net::IpAddr), String> {
    let spec = Spec::parse(rest)?;
    let (pool, launch) = pool_for(app, caller, &spec)?;
    let profile = target::in_query(req.uri().query());
    let pool = target::choose_profile(app, &pool, caller, profile.as_deref())
        .map_err(|e| e.to_string())?;
    let client = admit_spawn(app, caller, req, peer).map_err(|e| e.to_string())?;
    Ok((spec, pool, launch, client))
}

/// The repository's files when they come with the launch (a first fetch
/// said in `said`); else why they cannot.
async fn launch_files(
    app: &App,
    spec: &Spec,
    launch: bool,
    said: &mut Vec<LaunchEvent>,
) -> std::result::Result<Option<LaunchFiles>, String> {
    if !launch {
        return Ok(None);
    }
    match app.pools.launch_content(&spec.url, &spec.reference).await {
        Ok((tar, commit, fresh)) => {
            if fresh {
                said.push(LaunchEvent::phase(
                    "fetching",
                    format!("Fetched {} at {commit}\n", spec.url),
                ));
            }
            Ok(Some(LaunchFiles {
                repo: spec.repo.clone(),
                tar,
            }))
        }
        Err(e) => Err(format!(
            "cannot fetch the repository: {}",
            ApiError::from(e)
        )),
    }
}

/// One `/build` launch after its handout: what it said so far and what
/// its last events name.
struct Build {
    said: Vec<LaunchEvent>,
    spec: Spec,
    pool: Arc<Pool>,
    files: Option<LaunchFiles>,
    image: String,
    base: String,
    request: String,
}

impl Build {
    fn built(&self) -> LaunchEvent {
        LaunchEvent::phase("built", "Found built image, launching...\n").image_name(&self.image)
    }

    /// A warm binder: its launch files put in place, then `ready`.
    async fn warm(mut self, app: &App, b: Arc<crate::binder::Binder>) -> Result<Response<Body>> {
        if let Some(files) = &self.files {
            if let Err(e) = app
                .pools
                .put_launch_files(&self.pool, &b, &files.repo, &files.tar)
                .await
            {
                self.said.push(LaunchEvent::failed(format!(
                    "cannot put the repository's files in place: {}",
                    ApiError::from(e)
                )));
                return events(self.said, None);
            }
        }
        let built = self.built();
        self.said.extend([built, launching()]);
        let kernel = if self.pool.current().binding.kernel.is_some() {
            ", its kernel already running"
        } else {
            ""
        };
        self.said.push(LaunchEvent::phase(
            "launching",
            format!("Server ready: one kept warm{kernel}\n"),
        ));
        self.said.push(LaunchEvent::ready(
            &b,
            &self.base,
            absolute(app, &self.base, &b),
            &self.image,
            &self.spec.repo,
            &self.request,
        ));
        events(self.said, None)
    }

    /// Cold: the stream says where it is and ends when the binder is ready.
    fn cold(
        mut self,
        app: &App,
        binder: Arc<crate::binder::Binder>,
        building: bool,
    ) -> Result<Response<Body>> {
        let pool = self.pool;
        let wait = start_wait(app, &pool);
        let first = if building {
            self.said.push(LaunchEvent::phase(
                "building",
                "Making the repository's content ready\n",
            ));
            Step::Building(pool.build().cursor().saturating_sub(50))
        } else {
            let starting = LaunchEvent::phase(
                "launching",
                format!(
                    "Starting a server for you (ready in about {} s)\n",
                    pool.time_to_ready().as_secs().max(1)
                ),
            );
            let built = LaunchEvent::phase("built", "Found built image, launching...\n")
                .image_name(&self.image);
            self.said.extend([built, launching(), starting]);
            Step::Launching(false)
        };
        let cold = Arc::new(Cold {
            pools: app.pools.clone(),
            pool,
            url: absolute(app, &self.base, &binder),
            binder,
            base: self.base,
            image: self.image,
            repo: self.spec.repo,
            request: self.request,
            wait,
            deadline: std::sync::Mutex::new(tokio::time::Instant::now() + wait),
            files: self.files,
        });
        // The build's lines while the content is made, then the binder's
        // progress: one `launching` event when its container is up, then
        // `ready` (or `failed`). `None`: the stream has ended.
        let tail = stream::unfold(Some(first), move |step| {
            let cold = cold.clone();
            async move {
                match step? {
                    Step::Building(cursor) => Some(cold.build_lines(cursor).await),
                    Step::Launching(announced) => {
                        let (event, next) = cold.next(announced).await?;
                        Some((vec![event], next.map(Step::Launching)))
                    }
                }
            }
        })
        .flat_map(stream::iter);
        let keepalive = app.config.event_keepalive;
        events(self.said, Some((Box::pin(tail), keepalive)))
    }
}

fn launching() -> LaunchEvent {
    LaunchEvent::phase("launching", "Launching server...\n")
}

/// The path inside the server that BinderHub's query parameters ask for:
/// `urlpath` as given, `labpath` in JupyterLab, `filepath` in the classic
/// file view; none: the server's root.
fn landing(query: &str) -> String {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| decode(&v.replace('+', " ")).ok())
            .map(|v| v.trim_start_matches('/').to_owned())
    };
    if let Some(p) = param("urlpath") {
        p
    } else if let Some(p) = param("labpath") {
        format!("lab/tree/{p}")
    } else if let Some(p) = param("filepath") {
        format!("tree/{p}")
    } else {
        String::new()
    }
}

/// `GET /v2/{provider}/{spec}[?urlpath=...|labpath=...|filepath=...]`: hand
/// out a binder and send the browser to it. A cold one gets a short page
/// that looks again every second (`&binder={id}` keeps the handout; no
/// script, so a strict Content-Security-Policy is fine) until it is ready.
pub(super) async fn v2(
    app: &App,
    caller: &Caller,
    rest: &str,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>> {
    let query = req.uri().query().unwrap_or("");
    let spec = Spec::parse(rest).map_err(ApiError::NotFound)?;
    let (pool, launch) = pool_for(app, caller, &spec).map_err(ApiError::NotFound)?;
    let profile = target::in_query(Some(query));
    let pool = target::choose_profile(app, &pool, caller, profile.as_deref())?;
    // A binder of a launch is only ever this repository's.
    let waiting = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("binder="))
        .and_then(|id| app.pools.binder(id))
        .filter(|e| Arc::ptr_eq(&e.pool, &pool) && e.binder.owner().is_some())
        .filter(|e| !launch || e.binder.launched_with.get() == Some(&spec.repo));
    let client = match waiting {
        Some(_) => None,
        None => Some(admit_spawn(app, caller, req, peer)?),
    };
    // After the admission: an anonymous link cannot make binderd fetch
    // more often than it may spawn.
    let mut files = None;
    if launch {
        let (tar, _, _) = app.pools.launch_content(&spec.url, &spec.reference).await?;
        files = Some(tar);
    }
    let binder = match waiting {
        Some(entry) => entry.binder,
        None => {
            let binder = match app.pools.handout(&pool, caller.owner(), client).await? {
                Handout::Ready(b) | Handout::Starting(b) => b,
            };
            if launch {
                let _ = binder.launched_with.set(spec.repo.clone());
            }
            binder
        }
    };
    match binder.state() {
        State::Assigned => {
            if let Some(tar) = &files {
                app.pools
                    .put_launch_files(&pool, &binder, &spec.repo, tar)
                    .await?;
            }
            // With the token, as BinderHub's own client opens the server: a
            // server whose token is on lets the browser in (harmless off).
            let path = landing(query);
            let join = if path.contains('?') { '&' } else { '?' };
            found(&format!(
                "{}{path}{join}token={}",
                app.location(&binder),
                binder.token
            ))
        }
        State::Starting | State::StartingClaimed => {
            starting_page(&pool, &spec, rest, query, &binder)
        }
        _ => Err(ApiError::Unavailable {
            message: format!(
                "the server failed to start: {}",
                binder.failure().unwrap_or("it stopped")
            ),
            retry_after: 5,
        }),
    }
}

/// The page a browser sees while its binder starts: it looks again every
/// second (`&binder={id}` keeps the handout), with no script.
fn starting_page(
    pool: &Pool,
    spec: &Spec,
    rest: &str,
    query: &str,
    binder: &crate::binder::Binder,
) -> Result<Response<Body>> {
    let again: String = query
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("binder="))
        .chain(std::iter::once(format!("binder={}", binder.id).as_str()))
        .collect::<Vec<_>>()
        .join("&");
    let page = format!(
        "<!doctype html><meta charset=utf-8>\
         <meta http-equiv=refresh content=\"1;url=/v2/{rest}?{again}\">\
         <title>Starting your server</title>\
         <h1>Starting your server</h1>\
         <p>{} is starting a server for {}; this page moves on by itself once it answers.</p>\n",
        escape(&pool.name.to_string()),
        escape(&spec.repo),
        rest = escape(rest),
        again = escape(&again),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(page))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// `GET /repo/{org}/{repo}[/{path}]`: Binder's first links, which BinderHub
/// still redirects to `/v2/gh/{org}/{repo}/master` (the path as `urlpath`).
pub(super) fn legacy(rest: &str) -> Result<Response<Body>> {
    let mut parts = rest.splitn(3, '/').filter(|s| !s.is_empty());
    let (Some(org), Some(repo)) = (parts.next(), parts.next()) else {
        return Err(ApiError::NotFound(
            "a legacy link is /repo/{org}/{repo}[/{path}]".into(),
        ));
    };
    let path = parts.next().unwrap_or("").trim_start_matches('/');
    let mut target = format!("/v2/gh/{org}/{repo}/master");
    if !path.is_empty() {
        // As BinderHub spells it (`quote("/" + path, safe="")`): a leading
        // slash, and everything but letters, digits and `_.-~` escaped, its
        // own escapes too: `landing` decodes it once, and an `&` or `+` in a
        // file name stays part of the path.
        target.push_str("?urlpath=%2F");
        for b in path.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
                target.push(char::from(b));
            } else {
                target.push_str(&format!("%{b:02X}"));
            }
        }
    }
    found(&target)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The absolute URL of `binder` for a launch client: binderd's public base
/// and its location, or its own host's URL.
fn absolute(app: &App, base: &str, binder: &crate::binder::Binder) -> String {
    let location = app.location(binder);
    if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        location
    }
}

/// `GET /versions`, as BinderHub answers it.
pub(super) fn versions() -> Result<Response<Body>> {
    json(
        StatusCode::OK,
        &Versions {
            builder: "binderd (prebuilt images, nothing is built)",
            binderhub: VERSION,
            builder_info: BuilderInfo {
                builds: false,
                binderd: VERSION,
            },
        },
    )
}

/// `GET /health`, as BinderHub answers it: 200 when every check is ok,
/// else 503.
pub(super) fn health(app: &App) -> Result<Response<Body>> {
    let backend = app.pools.backend_kind().as_str();
    let unavailable = app.pools.backend_unavailable();
    let checks = vec![HealthCheck {
        service: format!("Backend ({backend})"),
        ok: unavailable.is_none(),
        message: unavailable,
    }];
    let ok = checks.iter().all(|c| c.ok);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        &HubHealth {
            ok,
            checks,
            isolation: app.pools.isolation(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_repositories_as_binderhub_spells_them() {
        let gh = Spec::parse("gh/Org/Repo/HEAD").unwrap();
        assert_eq!(gh.repo, "github.com/org/repo");
        assert_eq!(gh.reference, "HEAD");
        assert_eq!(
            Spec::parse("gh/org/repo/feature/x").unwrap().reference,
            "feature/x"
        );
        assert_eq!(Spec::parse("gh/org/repo").unwrap().reference, "HEAD");
        assert_eq!(
            Spec::parse("gl/group%2Fsub%2Fproject/main").unwrap().repo,
            "gitlab.com/group/sub/project"
        );
        assert_eq!(
            Spec::parse("git/https%3A%2F%2Fexample.org%2Fa%2Fb.git/v1")
                .unwrap()
                .repo,
            "example.org/a/b"
        );
        assert!(Spec::parse("gh/only-org").is_err());
        assert!(Spec::parse("zenodo/10.5281/zenodo.1")
            .unwrap_err()
            .contains("not served"));
        assert!(Spec::parse("git/%zz/v1").is_err());
    }

    #[test]
    fn query_parameters_pick_the_landing_path() {
        assert_eq!(landing("urlpath=lab"), "lab");
        assert_eq!(
            landing("urlpath=%2Flab%2Ftree%2Fa.ipynb"),
            "lab/tree/a.ipynb"
        );
        assert_eq!(landing("labpath=x.ipynb"), "lab/tree/x.ipynb");
        assert_eq!(landing("filepath=dir/y.ipynb"), "tree/dir/y.ipynb");
        assert_eq!(landing(""), "");
        assert_eq!(landing("binder=abc"), "");
    }
}
