//! The cache against real repositories made here with `git`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

fn sh(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {:?}", out);
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "binderd-content-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A repository with `main` (a notebook folder, a data file, a link that
/// points out of the tree) and a branch `two`.
fn repo() -> (PathBuf, String, String) {
    let dir = temp("repo");
    sh(&dir, &["init", "-q"]);
    std::fs::create_dir_all(dir.join("notebooks/data")).unwrap();
    std::fs::write(dir.join("notebooks/intro.ipynb"), "{}").unwrap();
    std::fs::write(dir.join("notebooks/data/x.csv"), "a,b\n1,2\n").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.join("notebooks/escape")).unwrap();
    std::fs::write(dir.join("requirements.txt"), "cowsay\n").unwrap();
    sh(&dir, &["add", "-A"]);
    sh(&dir, &["commit", "-q", "-m", "one"]);
    let main = sh(&dir, &["rev-parse", "HEAD"]);
    sh(&dir, &["checkout", "-q", "-b", "two"]);
    std::fs::write(dir.join("notebooks/second.ipynb"), "{}").unwrap();
    sh(&dir, &["add", "-A"]);
    sh(&dir, &["commit", "-q", "-m", "two"]);
    let two = sh(&dir, &["rev-parse", "HEAD"]);
    sh(&dir, &["checkout", "-q", "main"]);
    (dir, main, two)
}

fn binding(repo: &Path, git_ref: Option<&str>, notebooks: Option<&str>) -> Binding {
    serde_json::from_value(serde_json::json!({
        "name": "b",
        "command": ["true"],
        "repo": format!("file://{}", repo.display()),
        "ref": git_ref,
        "notebooks": notebooks,
        "requirements": "repo/requirements.txt",
    }))
    .unwrap()
}

fn cache(allow_local: bool) -> Cache {
    Cache::new(
        &temp("data"),
        ContentConfig {
            allow_local,
            ..ContentConfig::default()
        },
    )
    .unwrap()
}

#[tokio::test]
async fn refs_resolve_to_their_commits_and_the_tree_is_exactly_the_commits() {
    let (repo, main, two) = repo();
    let cache = cache(true);
    let default = binding(&repo, None, Some("repo/notebooks"));
    assert_eq!(cache.resolve(&default).await.unwrap(), main);
    let branch = binding(&repo, Some("two"), Some("repo/notebooks"));
    assert_eq!(cache.resolve(&branch).await.unwrap(), two);

    let fetched = cache.fetch(&branch, &two).await.unwrap();
    assert_eq!(fetched.requirements.as_deref(), Some(&b"cowsay\n"[..]));
    let entries = entries(&fetched.files);
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["data/x.csv", "escape", "intro.ipynb", "second.ipynb"],
        "the folder's files, at its root"
    );
    // The link stays a link: binderd never reads what it points to.
    assert!(entries.contains(&("escape".into(), ::tar::EntryType::Symlink)));

    // The other commit is its own tree.
    let fetched = cache.fetch(&default, &main).await.unwrap();
    assert!(!entries_of_files(&fetched.files).contains(&"second.ipynb".to_string()));
}

/// The tar's entries but folders, sorted, with their kinds.
fn entries(tar: &Path) -> Vec<(String, ::tar::EntryType)> {
    let mut archive = ::tar::Archive::new(std::fs::File::open(tar).unwrap());
    let mut out: Vec<(String, ::tar::EntryType)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let kind = e.header().entry_type();
            (e.path().unwrap().display().to_string(), kind)
        })
        .filter(|(_, kind)| !kind.is_dir())
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn entries_of_files(tar: &Path) -> Vec<String> {
    entries(tar).into_iter().map(|(n, _)| n).collect()
}

#[tokio::test]
async fn unknown_refs_missing_folders_and_big_trees_are_refused() {
    let (repo, main, _) = repo();
    let cache = cache(true);
    let err = cache
        .resolve(&binding(&repo, Some("nope"), None))
        .await
        .unwrap_err();
    assert!(matches!(err, ContentError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("'nope'"), "{err}");

    let err = cache
        .fetch(&binding(&repo, None, Some("repo/missing")), &main)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no folder 'missing'"), "{err}");

    let err = cache
        .fetch(&binding(&repo, None, None), &"0".repeat(40))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no commit"), "{err}");

    let small = Cache::new(
        &temp("data"),
        ContentConfig {
            allow_local: true,
            max_repo_mb: 0,
            ..ContentConfig::default()
        },
    )
    .unwrap();
    let err = small
        .fetch(&binding(&repo, None, None), &main)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_repo_mb"), "{err}");

    let err = cache
        .resolve(&binding(&temp("empty"), None, None))
        .await
        .unwrap_err();
    assert!(matches!(err, ContentError::Repo(_)), "{err}");
}

#[test]
fn paths_stay_inside_the_tree_and_local_repositories_need_the_operator() {
    assert_eq!(tree_path("n", Some("repo/notebooks")).unwrap(), "notebooks");
    assert_eq!(tree_path("n", Some("repo")).unwrap(), "");
    assert_eq!(tree_path("n", Some("./a//b/")).unwrap(), "a/b");
    assert_eq!(tree_path("n", None).unwrap(), "");
    for bad in ["../x", "repo/../../etc", "/etc", "a/../../b", ".git/config"] {
        assert!(tree_path("n", Some(bad)).is_err(), "{bad}");
    }
    let (repo, _, _) = repo();
    let b = binding(&repo, None, None);
    assert!(cache(false)
        .check(&b)
        .unwrap_err()
        .0
        .contains("allow_local"));
    cache(true).check(&b).unwrap();
    let mut b = binding(&repo, None, None);
    b.repo = Some("ext::sh -c touch% /tmp/pwned".into());
    assert!(cache(true).check(&b).is_err());
    let mut b = binding(&repo, Some("--upload-pack=touch /tmp/x"), None);
    b.repo = Some("https://example.org/r".into());
    assert!(cache(true).check(&b).is_err());
}

#[tokio::test]
async fn a_repository_that_names_anothers_commit_does_not_get_its_cached_files() {
    let cache = cache(true);
    let (private, main, _) = repo();
    let private_url = format!("file://{}", private.display());
    let (files, fresh) = cache.launch(&private_url, "main").await.unwrap();
    assert!(fresh);
    assert_eq!(files.commit, main);
    // Cached now: the same URL again is not fetched.
    assert!(!cache.launch(&private_url, "main").await.unwrap().1);
    // Another repository (another server) naming that commit id gets
    // nothing of it: it does not have it.
    let other = temp("other");
    sh(&other, &["init", "-q"]);
    std::fs::write(other.join("x"), "other").unwrap();
    sh(&other, &["add", "-A"]);
    sh(&other, &["commit", "-q", "-m", "other"]);
    let other_url = format!("file://{}", other.display());
    let err = cache.launch(&other_url, &main).await.unwrap_err();
    assert!(err.to_string().contains(&main), "{err}");
}
