//! A process binding's environment from its `requirements`: a Python
//! virtual environment per file content (and Python, and pip arguments),
//! built once under `{data_dir}/envs/{hash}` and shared read-only by every
//! binder that names the same (the sandbox binds it back in, read-only,
//! over the hidden data dir).
//!
//! `pip` runs from a cleared environment (nothing of binderd's keys), and
//! by default installs wheels only: a wheel's install runs none of the
//! package's code, where building a source distribution runs its
//! `setup.py` as binderd's user (`[content] allow_sdists` opts in).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::backend::{BackendError, BuiltEnv, EnvRequest};

/// What pip prints when it cannot reach the index: the build is tried
/// again later rather than failed for good.
const UNREACHABLE: [&str; 6] = [
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "No route to host",
    "Read timed out",
];

/// Marks a finished environment (written last).
const READY: &str = ".binderd-ready";

/// The environment for `request`: found if built before, else built.
pub(super) async fn build(root: &Path, request: EnvRequest<'_>) -> Result<BuiltEnv, BackendError> {
    let mut key = Vec::new();
    key.extend_from_slice(request.requirements);
    key.extend_from_slice(request.python.as_bytes());
    for arg in request.pip_args {
        key.push(0);
        key.extend_from_slice(arg.as_bytes());
    }
    key.push(request.allow_sdists as u8);
    let dir = root.join(hash(&key));
    let log = request.log;
    if dir.join(READY).exists() {
        log(&format!("environment {} (built before)", dir.display()));
        return found(&dir);
    }
    // Half-made by a run that was stopped: start again.
    if dir.exists() {
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
    tokio::fs::create_dir_all(&dir).await?;
    let built = tokio::time::timeout(request.timeout, make(&dir, &request)).await;
    let result = match built {
        Ok(Ok(())) => {
            tokio::fs::write(dir.join(READY), b"").await?;
            found(&dir)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BackendError::Start(format!(
            "building the environment took longer than {} s",
            request.timeout.as_secs()
        ))),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
    result
}

async fn make(dir: &Path, request: &EnvRequest<'_>) -> Result<(), BackendError> {
    let file = dir.join("requirements.txt");
    tokio::fs::write(&file, request.requirements).await?;
    let python = runnable_python(request.python, request.log);
    let mut venv = command(&python, dir);
    venv.args(["-m", "venv"]).arg(dir);
    run(venv, "python -m venv", request.log).await?;
    let mut pip = command(&dir.join("bin/pip").to_string_lossy(), dir);
    pip.args([
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--no-cache-dir",
        "--progress-bar",
        "off",
    ]);
    if !request.allow_sdists {
        pip.arg("--only-binary=:all:");
    }
    pip.args(request.pip_args).arg("-r").arg(&file);
    run(pip, "pip install", request.log).await
}

/// Where binderd runs as root, binders run as uids of their own: a
/// virtual environment's `python` links to the interpreter that made it, so
/// that one must be one every uid may run. A `python` found on `PATH`
/// under a private folder (a pyenv in `/root`) is passed over for the
/// system's, and the log says so.
fn runnable_python(python: &str, log: &(dyn Fn(&str) + Send + Sync)) -> String {
    if !rustix::process::geteuid().is_root() {
        return python.to_owned();
    }
    let Some(found) = super::program::on_path(Path::new(python)) else {
        return python.to_owned();
    };
    if everyone_may_run(&found) {
        return python.to_owned();
    }
    for system in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(system).exists() && everyone_may_run(Path::new(system)) {
            log(&format!(
                "{} is not one every binder's uid may run: the environment is made with {system}",
                found.display()
            ));
            return system.to_owned();
        }
    }
    python.to_owned()
}

/// Whether every uid may run `file`: it and every folder on the way to it
/// (its links followed) open to others.
fn everyone_may_run(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(real) = std::fs::canonicalize(file) else {
        return false;
    };
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode())
            .unwrap_or(0)
    };
    mode(&real) & 0o005 == 0o005 && real.ancestors().skip(1).all(|dir| mode(dir) & 0o001 != 0)
}

fn command(program: &str, dir: &Path) -> Command {
    let mut c = Command::new(program);
    c.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| super::DEFAULT_PATH.into()),
        )
        .env("HOME", dir)
        .env("LANG", "C.UTF-8")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Runs `command`, each line of its output to `log`; fails with the last
/// lines of its output when it fails.
async fn run(
    mut command: Command,
    what: &str,
    log: &(dyn Fn(&str) + Send + Sync),
) -> Result<(), BackendError> {
    log(&format!("$ {what}"));
    let mut child = command
        .spawn()
        .map_err(|e| BackendError::Start(format!("cannot run {what}: {e}")))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for out in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut tail: Vec<String> = Vec::new();
    while let Some(line) = rx.recv().await {
        log(&line);
        tail.push(line);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    let status = child.wait().await?;
    if status.success() {
        return Ok(());
    }
    if let Some(line) = tail
        .iter()
        .find(|l| UNREACHABLE.iter().any(|u| l.contains(u)))
    {
        let line: String = line.trim().chars().take(160).collect();
        return Err(BackendError::Unavailable(format!(
            "{what}: the package index did not answer (no network to PyPI, or to the index [content] pip_args names); trying again later. pip said: {line}"
        )));
    }
    let errors: Vec<&String> = tail
        .iter()
        .filter(|l| l.contains("ERROR") || l.contains("rror:"))
        .collect();
    let shown = if errors.is_empty() {
        tail.last().cloned().unwrap_or_default()
    } else {
        errors
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    Err(BackendError::Start(format!(
        "{what} failed ({status}): {shown}"
    )))
}

/// A built environment's paths.
fn found(dir: &Path) -> Result<BuiltEnv, BackendError> {
    let lib = dir.join("lib");
    let site_packages = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.is_dir())
        .ok_or_else(|| BackendError::Start(format!("no site-packages under {}", lib.display())))?;
    Ok(BuiltEnv::Venv {
        dir: dir.to_path_buf(),
        site_packages,
    })
}

fn hash(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The variables a binder gets for `env`: its `bin/` first on `PATH`
/// (before `path`), `VIRTUAL_ENV`, and its packages on `PYTHONPATH`.
pub(super) fn variables(env: Option<&BuiltEnv>, path: &std::ffi::OsStr) -> Vec<(String, PathBuf)> {
    let Some(BuiltEnv::Venv { dir, site_packages }) = env else {
        return Vec::new();
    };
    let mut search = dir.join("bin").into_os_string();
    search.push(":");
    search.push(path);
    vec![
        ("PATH".into(), PathBuf::from(search)),
        ("VIRTUAL_ENV".into(), dir.clone()),
        ("PYTHONPATH".into(), site_packages.clone()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = command("sh", Path::new("/"));
        c.args(["-c", script]);
        c
    }

    #[test]
    fn a_python_in_a_private_folder_is_not_one_every_uid_may_run() {
        let dir = std::env::temp_dir().join(format!("binderd-venv-{}", std::process::id()));
        let private = dir.join("private");
        std::fs::create_dir_all(&private).unwrap();
        let python = private.join("python3");
        std::fs::write(&python, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(everyone_may_run(&python));
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!everyone_may_run(&python));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_unreachable_index_is_one_line_and_tried_again() {
        let out = "echo \"WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError(\\\"Failed to establish a new connection: [Errno -3] Temporary failure in name resolution\\\")'\"; echo 'ERROR: No matching distribution found for jupyterlab' >&2; exit 1";
        let e = run(sh(out), "pip install", &|_| {}).await.unwrap_err();
        let BackendError::Unavailable(why) = e else {
            panic!("not Unavailable: {e}");
        };
        assert!(
            why.starts_with("pip install: the package index did not answer"),
            "{why}"
        );
        assert!(!why.contains('\n'), "{why}");
        // Any other failure is the build's own, with pip's errors.
        let e = run(
            sh("echo 'ERROR: bad requirement' >&2; exit 1"),
            "pip install",
            &|_| {},
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, BackendError::Start(m) if m.contains("ERROR: bad requirement")),
            "{e}"
        );
    }
}
