//! Git repositories made by a test: the content tests' and the Docker
//! test's.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::DataDir;

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A repository: on `main` a notebook folder (a notebook, a data file in a
/// subfolder, a link pointing out of the tree), a README outside it, a
/// `requirements.txt`; a branch `two` with one more notebook.
pub struct Repo {
    pub dir: PathBuf,
    pub main: String,
    pub two: String,
}

impl Repo {
    pub fn new(data: &DataDir, requirements: &str) -> Repo {
        Repo::named(data, "repo", requirements)
    }

    /// [`Repo::new`] in `{data}/{name}`.
    pub fn named(data: &DataDir, name: &str, requirements: &str) -> Repo {
        let dir = data.0.join(name);
        std::fs::create_dir_all(dir.join("notebooks/data")).unwrap();
        git(&dir, &["init", "-q"]);
        std::fs::write(dir.join("README.md"), "outside the folder\n").unwrap();
        std::fs::write(dir.join("notebooks/intro.ipynb"), r#"{"cells": []}"#).unwrap();
        std::fs::write(dir.join("notebooks/data/table.csv"), "a,b\n1,2\n").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.join("notebooks/shadow")).unwrap();
        std::fs::write(dir.join("requirements.txt"), requirements).unwrap();
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-q", "-m", "one"]);
        let main = git(&dir, &["rev-parse", "HEAD"]);
        git(&dir, &["checkout", "-q", "-b", "two"]);
        std::fs::write(dir.join("notebooks/second.ipynb"), "{}").unwrap();
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-q", "-m", "two"]);
        let two = git(&dir, &["rev-parse", "HEAD"]);
        git(&dir, &["checkout", "-q", "main"]);
        Repo { dir, main, two }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    /// A new commit on `main` (a new notebook); its id.
    pub fn commit(&mut self, file: &str) -> String {
        std::fs::write(self.dir.join("notebooks").join(file), "{}").unwrap();
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "-m", file]);
        self.main = git(&self.dir, &["rev-parse", "HEAD"]);
        self.main.clone()
    }
}

/// Every file under `dir`, as paths relative to it (links as themselves),
/// but the binder's own `tmp/`.
pub fn files_of(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if rel == "tmp" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

impl Repo {
    /// Writes `text` to `path` (from the root) and commits it on `main`;
    /// the new commit's id.
    pub fn put(&mut self, path: &str, text: &str) -> String {
        let file = self.dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "-m", path]);
        self.main = git(&self.dir, &["rev-parse", "HEAD"]);
        self.main.clone()
    }
}

/// `url` as one path segment (`/build/git/{escaped}/HEAD`): every byte but
/// letters, digits, `-`, `_` and `.` as `%XX`.
pub fn escaped(url: &str) -> String {
    url.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
