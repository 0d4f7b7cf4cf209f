//! Content from a repository: a binding's `repo` at `ref`, resolved to a
//! commit, fetched once into a cache under the data dir, and its
//! `notebooks` folder kept as one tar per (commit, folder), which every
//! binder of the binding gets in its working dir before it joins the pool
//! (the pool hands the tar to the backend; a handout stays a pop).
//!
//! The cache (`{data_dir}/content/`): `git/{repo}` bare repositories (one
//! per repository, fetches serialised per repository), `trees/{url}-{commit}-{path}.tar`
//! (hashes of the URL and folder).
//! Everything is written under a temporary name and renamed, so a crash
//! leaves no half-made entry that a later run would take for whole.

mod git;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::binding::{printable, Binding, ContentFrom, InvalidBinding};

/// `[content]` in `binderd.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContentConfig {
    /// Repositories by `file://` URL or local path (binderd reads its own
    /// machine's files for them): off, as a key holder could otherwise
    /// name any repository on the host. Tests and single-user setups turn it on.
    pub allow_local: bool,
    /// The largest tree (the `notebooks` folder, in bytes of files) a
    /// binding may bring, in MiB.
    pub max_repo_mb: u64,
    /// How long resolving or fetching a repository may take.
    pub fetch_timeout_seconds: u64,
    /// How long building an environment from `requirements` may take.
    pub build_timeout_seconds: u64,
    /// The Python that makes a process binding's virtual environment.
    pub python: String,
    /// More arguments for `pip install` (an index, `--find-links`, ...).
    pub pip_args: Vec<String>,
    /// The `pip` a Docker environment's build runs inside the binding's
    /// image (`RUN [pip, "install", ...]`; the image needs no shell).
    pub image_pip: String,
    /// The network a Docker environment's build runs on: `default` (the
    /// engine's bridge: an index on the internet), `none` (`pip_args` name
    /// a wheelhouse inside the image), `host`.
    pub build_network: String,
    /// Whether `pip` may build source distributions. Off: installing a
    /// wheel runs none of the package's code, building an sdist runs its
    /// `setup.py` as binderd's user.
    pub allow_sdists: bool,
}

impl Default for ContentConfig {
    fn default() -> Self {
        Self {
            allow_local: false,
            max_repo_mb: 512,
            fetch_timeout_seconds: 120,
            build_timeout_seconds: 900,
            python: "python3".into(),
            pip_args: Vec::new(),
            image_pip: "pip".into(),
            build_network: "default".into(),
            allow_sdists: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// Known from the binding and the repository: an unknown ref, a missing
    /// folder, a tree over the cap (a 400 at create time).
    #[error("{0}")]
    Invalid(String),
    /// The repository could not be reached or read (git's own words).
    #[error("{0}")]
    Repo(String),
    /// The tool itself failed (git missing, the cache not writable).
    #[error("{0}")]
    Tool(String),
}

impl From<InvalidBinding> for ContentError {
    fn from(e: InvalidBinding) -> Self {
        ContentError::Invalid(e.0)
    }
}

/// What a fetch made ready for a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The commit.
    pub commit: String,
    /// The `notebooks` folder's files as a tar (their paths relative to it).
    pub files: PathBuf,
    /// The `requirements` file's bytes, when the binding names one.
    pub requirements: Option<Vec<u8>>,
}

/// The content cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    root: PathBuf,
    config: Arc<ContentConfig>,
    /// One fetch at a time per repository.
    locks: Arc<DashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Launches' refs resolved lately: (URL, ref) → (commit, when).
    refs: Arc<DashMap<String, (String, std::time::Instant)>>,
}

/// How long a launch trusts a ref it resolved: a new commit on a branch
/// reaches launches within this.
pub const LAUNCH_REF_TTL: Duration = Duration::from_secs(60);

/// The largest `requirements` file read.
const MAX_REQUIREMENTS_BYTES: usize = 1 << 20;

impl Cache {
    pub fn new(data_dir: &Path, config: ContentConfig) -> std::io::Result<Self> {
        let root = data_dir.join("content");
        for dir in ["git", "trees"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        Ok(Self {
            root,
            config: Arc::new(config),
            locks: Arc::default(),
            refs: Arc::default(),
        })
    }

    pub fn config(&self) -> &ContentConfig {
        &self.config
    }

    fn protocols(&self) -> &'static str {
        if self.config.allow_local {
            "https:http:git:file"
        } else {
            "https:http:git"
        }
    }

    fn deadline(&self) -> Duration {
        Duration::from_secs(self.config.fetch_timeout_seconds.max(1))
    }

    /// What can be known of a binding's content without the network: the
    /// URL's scheme, the paths inside the tree.
    pub fn check(&self, binding: &Binding) -> Result<(), InvalidBinding> {
        if binding.content_from() != ContentFrom::Repo {
            return Ok(());
        }
        let Some(url) = &binding.repo else {
            return Err(InvalidBinding(
                "'content.from' is 'repo' but the binding has no 'repo'".into(),
            ));
        };
        self.check_url(url)?;
        if let Some(r) = &binding.git_ref {
            if r.is_empty() || r.starts_with('-') || r.len() > 255 || r.contains("..") {
                return Err(InvalidBinding(format!("invalid ref '{}'", printable(r))));
            }
        }
        tree_path("notebooks", binding.notebooks.as_deref())?;
        if binding.requirements.is_some() {
            tree_path("requirements", binding.requirements.as_deref())?;
        }
        Ok(())
    }

    fn check_url(&self, url: &str) -> Result<(), InvalidBinding> {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        let allowed = match scheme.as_deref() {
            Some("https" | "http" | "git") => true,
            Some("file") => self.config.allow_local,
            None => self.config.allow_local && url.starts_with('/'),
            Some(_) => false,
        };
        if url.starts_with('-') || !allowed {
            return Err(InvalidBinding(format!(
                "'repo' {} is not a repository binderd fetches: https://, http:// or git:// URLs{}",
                printable(url),
                if self.config.allow_local {
                    ", file:// or a path"
                } else {
                    " (local ones only with [content] allow_local)"
                }
            )));
        }
        Ok(())
    }

    /// The commit the binding's `ref` names now.
    pub async fn resolve(&self, binding: &Binding) -> Result<String, ContentError> {
        let url = binding.repo.as_deref().unwrap_or_default();
        git::resolve(
            url,
            binding.git_ref.as_deref(),
            self.protocols(),
            self.deadline(),
        )
        .await
    }

    /// Fetches `commit` of the binding's repository (once: a cached tree is
    /// reused) and makes its `notebooks` tar and reads its `requirements`.
    pub async fn fetch(&self, binding: &Binding, commit: &str) -> Result<Fetched, ContentError> {
        self.fetch_at(
            binding.repo.as_deref().unwrap_or_default(),
            binding.git_ref.as_deref(),
            binding.notebooks.as_deref(),
            binding.requirements.as_deref(),
            commit,
        )
        .await
    }

    /// A repository a launch link names (for a binding whose `content` is
    /// given at launch): `git_ref` resolved (remembered for
    /// [`LAUNCH_REF_TTL`], so a launch of a cached repository asks no
    /// server), its whole tree fetched once per commit. Also whether it had
    /// to be fetched now (a first launch of that commit).
    pub async fn launch(&self, url: &str, git_ref: &str) -> Result<(Fetched, bool), ContentError> {
        self.check_url(url)?;
        if git_ref.starts_with('-') || git_ref.contains("..") || git_ref.len() > 255 {
            return Err(ContentError::Invalid(format!(
                "invalid ref '{}'",
                printable(git_ref)
            )));
        }
        let wanted = (git_ref != "HEAD").then_some(git_ref);
        let key = format!("{url}\0{git_ref}");
        let known = self
            .refs
            .get(&key)
            .filter(|e| e.1.elapsed() < LAUNCH_REF_TTL)
            .map(|e| e.0.clone());
        let commit = match known {
            Some(commit) => commit,
            None => {
                let commit = git::resolve(url, wanted, self.protocols(), self.deadline()).await?;
                if self.refs.len() > 10_000 {
                    self.refs.retain(|_, e| e.1.elapsed() < LAUNCH_REF_TTL);
                }
                self.refs
                    .insert(key, (commit.clone(), std::time::Instant::now()));
                commit
            }
        };
        let cached = self.tree_file(url, &commit, "").exists();
        let fetched = self.fetch_at(url, wanted, None, None, &commit).await?;
        Ok((fetched, !cached))
    }

    /// A tree's tar, by URL too: a server that names another repository's
    /// commit must not be handed that repository's cached files.
    fn tree_file(&self, url: &str, commit: &str, folder: &str) -> PathBuf {
        self.root.join("trees").join(format!(
            "{}-{commit}-{}.tar",
            short_hash(url),
            short_hash(folder)
        ))
    }

    /// `folder` of the repository at `commit`, checked (a folder, under
    /// `max_repo_mb`) and written to `files` as a tar.
    async fn archive(
        &self,
        repo_dir: &Path,
        commit: &str,
        folder: &str,
        files: &Path,
    ) -> Result<(), ContentError> {
        let allowed = self.protocols();
        match git::kind_of(repo_dir, commit, folder, allowed).await? {
            Some(true) => {}
            Some(false) => {
                return Err(ContentError::Invalid(format!(
                    "'notebooks' {folder} is a file in the repository, not a folder"
                )))
            }
            None => {
                return Err(ContentError::Invalid(format!(
                    "the repository has no folder '{folder}' at {commit}"
                )))
            }
        }
        let size = git::tree_size(repo_dir, commit, folder, allowed).await?;
        let cap = self.config.max_repo_mb.saturating_mul(1 << 20);
        if size > cap {
            return Err(ContentError::Invalid(format!(
                "the repository's files are {} MiB, over this server's [content] max_repo_mb of {}",
                size.div_ceil(1 << 20),
                self.config.max_repo_mb
            )));
        }
        let partial = files.with_extension(format!("tar.{}.partial", std::process::id()));
        git::archive(repo_dir, commit, folder, &partial, allowed).await?;
        std::fs::rename(&partial, files)
            .map_err(|e| ContentError::Tool(format!("cannot keep the tree: {e}")))?;
        Ok(())
    }

    async fn fetch_at(
        &self,
        url: &str,
        git_ref: Option<&str>,
        notebooks: Option<&str>,
        requirements: Option<&str>,
        commit: &str,
    ) -> Result<Fetched, ContentError> {
        let folder = tree_path("notebooks", notebooks)?;
        let files = self.tree_file(url, commit, &folder);
        if requirements.is_none() && files.exists() {
            // Made before from this URL's commit: no git at all (a launch's
            // handout path).
            return Ok(Fetched {
                commit: commit.to_owned(),
                files,
                requirements: None,
            });
        }
        let repo_dir = self.root.join("git").join(short_hash(url));
        let lock = self
            .locks
            .entry(url.to_owned())
            .or_default()
            .value()
            .clone();
        let _held = lock.lock().await;
        let allowed = self.protocols();
        git::fetch(&repo_dir, url, commit, git_ref, allowed, self.deadline()).await?;
        if !files.exists() {
            self.archive(&repo_dir, commit, &folder, &files).await?;
        }
        let requirements = match requirements {
            Some(path) => {
                let path = tree_path("requirements", Some(path))?;
                let bytes = git::show(&repo_dir, commit, &path, allowed)
                    .await
                    .map_err(|_| {
                        ContentError::Invalid(format!(
                            "the repository has no file '{path}' at {commit}"
                        ))
                    })?;
                if bytes.len() > MAX_REQUIREMENTS_BYTES {
                    return Err(ContentError::Invalid(format!(
                        "'{path}' is over {} bytes",
                        MAX_REQUIREMENTS_BYTES
                    )));
                }
                Some(bytes)
            }
            None => None,
        };
        Ok(Fetched {
            commit: commit.to_owned(),
            files,
            requirements,
        })
    }
}

/// A path inside the repository's tree, as git names it (`a/b`, the root
/// `""`): a leading `repo/` (the Binder API's spelling) names the root;
/// nothing may leave the tree.
pub fn tree_path(field: &str, raw: Option<&str>) -> Result<String, InvalidBinding> {
    let Some(raw) = raw else {
        return Ok(String::new());
    };
    let bad = || {
        InvalidBinding(format!(
            "'{field}' {} is not a path inside the repository",
            printable(raw)
        ))
    };
    let trimmed = raw
        .strip_prefix("repo/")
        .or_else(|| (raw == "repo").then_some(""))
        .unwrap_or(raw);
    let mut parts = Vec::new();
    for part in Path::new(trimmed).components() {
        match part {
            Component::Normal(p) => parts.push(p.to_str().ok_or_else(bad)?.to_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    if parts.iter().any(|p| p.starts_with(".git")) {
        return Err(bad());
    }
    Ok(parts.join("/"))
}

/// 16 hex digits of the SHA-256 of `text`: a file name for anything.
pub fn short_hash(text: impl AsRef<[u8]>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_ref());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;
