//! The `git` program, run for the content cache: a cleared environment, no
//! prompts, only the protocols allowed, a deadline on every call.
//!
//! The program rather than a library: it speaks every transport users'
//! repositories live on (smart and dumb HTTP, `git://`, `file://`, SSH
//! behind the operator's own config) the way every host expects, and it is
//! on every machine that has a repository at all; a fetch is seconds of
//! network, where a process start does not count.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::ContentError;

/// Output of one call, capped so a hostile server cannot fill memory with
/// its error text.
const MAX_ERROR_TEXT: usize = 2000;

/// A `git` command with nothing of binderd's environment (no keys, no
/// `HOME` with credentials), no terminal prompt, no system or global config,
/// and only `allowed` protocols (`ext::` would run a command).
pub(super) fn git(allowed: &str) -> Command {
    let mut c = Command::new("git");
    c.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("HOME", "/nonexistent")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ALLOW_PROTOCOL", allowed)
        .env("GIT_ASKPASS", "/bin/false")
        .env("LANG", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Runs `command` to its end within `deadline`: its standard output, or
/// its standard error as the error.
pub(super) async fn run(
    mut command: Command,
    deadline: Duration,
    what: &str,
) -> Result<Vec<u8>, ContentError> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command
        .spawn()
        .map_err(|e| ContentError::Tool(format!("cannot run git: {e}")))?;
    let out = match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(out) => out.map_err(|e| ContentError::Tool(format!("git: {e}")))?,
        Err(_) => {
            return Err(ContentError::Repo(format!(
                "{what} took longer than {} s",
                deadline.as_secs()
            )))
        }
    };
    if out.status.success() {
        Ok(out.stdout)
    } else {
        let text = String::from_utf8_lossy(&out.stderr);
        let text = text.trim();
        let text: String = text.chars().take(MAX_ERROR_TEXT).collect();
        Err(ContentError::Repo(format!("{what}: {text}")))
    }
}

/// The commit `wanted` names at `url` (a branch, a tag, a full ref name; none
/// → the default branch), from `git ls-remote`. A full commit id is taken as
/// it is (the fetch checks it exists).
pub(super) async fn resolve(
    url: &str,
    wanted: Option<&str>,
    allowed: &str,
    deadline: Duration,
) -> Result<String, ContentError> {
    if let Some(id) = wanted.filter(|w| is_commit_id(w)) {
        return Ok(id.to_ascii_lowercase());
    }
    let mut c = git(allowed);
    c.arg("ls-remote").arg("--").arg(url);
    let listing = run(c, deadline, "cannot list the repository's refs").await?;
    let listing = String::from_utf8_lossy(&listing);
    let refs: Vec<(&str, &str)> = listing
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(id, _)| is_commit_id(id))
        .collect();
    let find = |name: &str| refs.iter().find(|(_, r)| *r == name).map(|(id, _)| *id);
    let found = match wanted {
        None => find("HEAD"),
        Some(w) => [
            format!("refs/heads/{w}"),
            format!("refs/tags/{w}^{{}}"),
            format!("refs/tags/{w}"),
            w.to_owned(),
        ]
        .iter()
        .find_map(|name| find(name)),
    };
    match found {
        Some(id) => Ok(id.to_owned()),
        None => Err(ContentError::Invalid(match wanted {
            Some(w) => format!("the repository has no branch or tag '{w}'"),
            None => "the repository has no default branch (HEAD)".into(),
        })),
    }
}

/// 40 hex digits (SHA-1; a SHA-256 repository's 64 are taken too).
pub(super) fn is_commit_id(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Fetches `commit` from `url` into the bare repository `dir` (made if
/// missing): the commit alone first (`--depth 1`), else the whole history
/// of `fallback_ref` (servers that refuse a bare commit id).
pub(super) async fn fetch(
    dir: &Path,
    url: &str,
    commit: &str,
    fallback_ref: Option<&str>,
    allowed: &str,
    deadline: Duration,
) -> Result<(), ContentError> {
    if !dir.join("HEAD").exists() {
        let mut c = git(allowed);
        c.arg("init").arg("--bare").arg("--quiet").arg(dir);
        run(c, deadline, "cannot make the cache's repository").await?;
    }
    if has_commit(dir, commit, allowed).await {
        return Ok(());
    }
    let mut c = git(allowed);
    c.arg("--git-dir")
        .arg(dir)
        .args(["fetch", "--quiet", "--no-tags", "--depth", "1", "--"])
        .arg(url)
        .arg(commit);
    let first = run(c, deadline, "cannot fetch the commit").await;
    if first.is_ok() && has_commit(dir, commit, allowed).await {
        return Ok(());
    }
    let mut c = git(allowed);
    c.arg("--git-dir")
        .arg(dir)
        .args(["fetch", "--quiet", "--no-tags", "--"])
        .arg(url)
        .arg(fallback_ref.unwrap_or("HEAD"));
    run(c, deadline, "cannot fetch the repository").await?;
    if has_commit(dir, commit, allowed).await {
        Ok(())
    } else {
        Err(ContentError::Invalid(format!(
            "the repository has no commit {commit}"
        )))
    }
}

async fn has_commit(dir: &Path, commit: &str, allowed: &str) -> bool {
    let mut c = git(allowed);
    c.arg("--git-dir")
        .arg(dir)
        .args(["cat-file", "-e"])
        .arg(format!("{commit}^{{commit}}"));
    run(c, Duration::from_secs(30), "cat-file").await.is_ok()
}

/// What `path` is at `commit`: `Some(true)` a folder, `Some(false)` a file,
/// `None` nothing. The root (`""`) is a folder.
pub(super) async fn kind_of(
    dir: &Path,
    commit: &str,
    path: &str,
    allowed: &str,
) -> Result<Option<bool>, ContentError> {
    if path.is_empty() {
        return Ok(Some(true));
    }
    let mut c = git(allowed);
    c.arg("--git-dir")
        .arg(dir)
        .args(["cat-file", "-t"])
        .arg(format!("{commit}:{path}"));
    match run(c, Duration::from_secs(30), "cat-file").await {
        Ok(kind) => Ok(Some(String::from_utf8_lossy(&kind).trim() == "tree")),
        Err(_) => Ok(None),
    }
}

/// The total size in bytes of the files under `path` at `commit`.
pub(super) async fn tree_size(
    dir: &Path,
    commit: &str,
    path: &str,
    allowed: &str,
) -> Result<u64, ContentError> {
    let mut c = git(allowed);
    c.arg("--git-dir")
        .arg(dir)
        .args(["ls-tree", "-r", "-l", "-z"])
        .arg(treeish(commit, path));
    let listing = run(c, Duration::from_secs(120), "cannot list the tree").await?;
    Ok(listing
        .split(|b| *b == 0)
        .filter_map(|entry| {
            // "<mode> <type> <object> <size>\t<path>"
            let head = entry.split(|b| *b == b'\t').next()?;
            let size = String::from_utf8_lossy(head);
            size.split_whitespace().nth(3)?.parse::<u64>().ok()
        })
        .sum())
}

/// Writes the tar of `path` at `commit` (its contents at the archive's
/// root) to `out`.
pub(super) async fn archive(
    dir: &Path,
    commit: &str,
    path: &str,
    out: &Path,
    allowed: &str,
) -> Result<(), ContentError> {
    let mut c = git(allowed);
    c.arg("--git-dir")
        .arg(dir)
        .args(["archive", "--format=tar", "--output"])
        .arg(out)
        .arg(treeish(commit, path));
    run(c, Duration::from_secs(300), "cannot archive the tree").await?;
    Ok(())
}

/// The bytes of the file `path` at `commit`.
pub(super) async fn show(
    dir: &Path,
    commit: &str,
    path: &str,
    allowed: &str,
) -> Result<Vec<u8>, ContentError> {
    let mut c = git(allowed);
    c.arg("--git-dir")
        .arg(dir)
        .args(["cat-file", "blob"])
        .arg(format!("{commit}:{path}"));
    run(c, Duration::from_secs(30), "cannot read the file").await
}

fn treeish(commit: &str, path: &str) -> String {
    if path.is_empty() {
        commit.to_owned()
    } else {
        format!("{commit}:{path}")
    }
}
