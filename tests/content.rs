//! Content from a repository (process backend): a binding's `repo` at its
//! `ref` resolved to a commit, its `notebooks` folder in every binder's
//! working dir before it joins the pool, a new commit rolled in by a `PUT`
//! of the same document, `requirements` built into an environment the
//! binder runs in, and every kind of bad input refused with nothing
//! half-made. The repositories are made here with `git` and served over
//! `file://` and `git daemon` on loopback.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use http::Method;
use serde_json::{json, Value};

async fn harness(name: &str) -> Harness {
    Harness::with_config(name, |c| c.content.allow_local = true).await
}

fn repo_binding(name: &str, repo: &Repo, min: u32) -> Value {
    let mut b = standin_binding(name, min, min + 2);
    b["repo"] = json!(repo.url());
    b["notebooks"] = json!("repo/notebooks");
    b
}

async fn put(http: &Http, base: &str, name: &str, body: &Value) -> Answer {
    http.send(
        Method::PUT,
        &format!("{base}/bindings/{name}"),
        &[
            ("authorization", ADMIN),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_warm_binder_holds_exactly_the_commits_folder_and_a_put_rolls_a_new_commit_in() {
    let Harness { data, server, http } = harness("content-files").await;
    let base = server.url("");
    let mut repo = Repo::new(&data, "");
    let binding = repo_binding("nbs", &repo, 2);
    let created = create_binding(&http, &base, &binding).await.json();
    assert_eq!(created["resolvedRef"], repo.main.as_str(), "{created}");
    wait_pool(&http, &base, "nbs", 30, |p| p["available"] == 2).await;

    let (id, location) = hand_out(&http, &base, "nbs", None).await;
    let workdir = data.0.join("binders").join(&id);
    assert_eq!(
        files_of(&workdir),
        ["data/table.csv", "intro.ipynb", "shadow"],
        "the folder's files at the working dir's root, nothing else of the repository"
    );
    // A link stays a link: binderd (root) never read what it points to.
    assert!(std::fs::symlink_metadata(workdir.join("shadow"))
        .unwrap()
        .file_type()
        .is_symlink());
    // The binder reads them, and may change them (they are its own).
    let a = http
        .get(&format!("{base}{location}file?name=intro.ipynb"))
        .await;
    assert_eq!(a.body, r#"{"cells": []}"#);
    let a = http
        .send(
            Method::PUT,
            &format!("{base}{location}file?name=intro.ipynb"),
            &[],
            "changed",
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);

    // The same document again, the same commit: nothing rolls.
    let same = put(&http, &base, "nbs", &created).await;
    assert_eq!(same.status, 200, "{}", same.body);
    // (`updated`: warm binders of the current template; a rollout would
    // have begun again from none.)
    let p = http.get(&format!("{base}/pools/nbs")).await.json();
    assert_eq!(p["updated"], p["available"], "{p}");

    // A new commit, then the same document: re-resolved, rolled over by
    // surge, and every handout meanwhile is warm.
    let new = repo.commit("third.ipynb");
    let put_again = put(&http, &base, "nbs", &created).await;
    assert_eq!(put_again.status, 200, "{}", put_again.body);
    assert_eq!(put_again.json()["resolvedRef"], new.as_str());
    let mut fresh = None;
    for _ in 0..200 {
        let (id, _) = hand_out(&http, &base, "nbs", None).await;
        let files = files_of(&data.0.join("binders").join(&id));
        if files.contains(&"third.ipynb".to_string()) {
            fresh = Some(files);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        fresh.expect("a binder of the new commit within 20 s"),
        ["data/table.csv", "intro.ipynb", "shadow", "third.ipynb"]
    );
    // The branch: its own tree.
    let mut branch = repo_binding("branch", &repo, 1);
    branch["ref"] = json!("two");
    let made = create_binding(&http, &base, &branch).await.json();
    assert_eq!(made["resolvedRef"], repo.two.as_str());
    wait_pool(&http, &base, "branch", 30, |p| p["available"] == 1).await;
    let (id, _) = hand_out(&http, &base, "branch", None).await;
    assert!(files_of(&data.0.join("binders").join(&id)).contains(&"second.ipynb".to_string()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_repositories_refs_and_paths_are_refused_at_create_and_nothing_starts() {
    let Harness { data, server, http } = harness("content-bad").await;
    let base = server.url("");
    let repo = Repo::new(&data, "");
    let refused = |change: &dyn Fn(&mut Value), needle: &'static str| {
        let mut b = repo_binding("bad", &repo, 1);
        change(&mut b);
        let (http, base) = (&http, &base);
        async move {
            let a = http
                .post_json(&format!("{base}/bindings"), Some(ADMIN), &b)
                .await;
            assert_error(&a, 400);
            assert!(a.body.contains(needle), "{needle}: {}", a.body);
        }
    };
    refused(&|b| b["ref"] = json!("nope"), "'nope'").await;
    refused(
        &|b| b["notebooks"] = json!("repo/../../etc"),
        "inside the repository",
    )
    .await;
    refused(&|b| b["notebooks"] = json!("/etc"), "inside the repository").await;
    refused(
        &|b| b["notebooks"] = json!("missing"),
        "no folder 'missing'",
    )
    .await;
    refused(&|b| b["notebooks"] = json!("README.md"), "not a folder").await;
    refused(
        &|b| b["requirements"] = json!("repo/none.txt"),
        "no file 'none.txt'",
    )
    .await;
    refused(
        &|b| b["repo"] = json!(format!("file://{}/nowhere", data.0.display())),
        "cannot list",
    )
    .await;
    refused(&|b| b["repo"] = json!("ext::sh -c id"), "not a repository").await;
    refused(&|b| b["ref"] = json!("--upload-pack=id"), "invalid ref").await;
    // Nothing was created, nothing runs.
    assert_eq!(http.get(&format!("{base}/bindings/bad")).await.status, 404);
    assert_eq!(data.running_binders(), 0);
    server.stop().await;

    // Local repositories only where the operator allows them.
    let Harness { data, server, http } = Harness::start("content-local").await;
    let repo = Repo::new(&data, "");
    let a = http
        .post_json(
            &server.url("/bindings"),
            Some(ADMIN),
            &repo_binding("local", &repo, 1),
        )
        .await;
    assert_error(&a, 400);
    assert!(a.body.contains("allow_local"), "{}", a.body);
    server.stop().await;
}

/// `git daemon` serving `dir`'s repositories on a loopback port.
struct Daemon {
    child: std::process::Child,
    port: u16,
}

impl Daemon {
    fn start(base: &Path) -> Daemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
            ])
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Daemon { child, port }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_over_the_network_is_fetched_once_and_served_warm() {
    // Network repositories need no operator's leave.
    let Harness { data, server, http } = Harness::start("content-daemon").await;
    let base = server.url("");
    let repo = Repo::new(&data, "");
    let daemon = Daemon::start(&data.0);
    let mut binding = standin_binding("net", 3, 5);
    binding["repo"] = json!(format!("git://127.0.0.1:{}/repo", daemon.port));
    binding["ref"] = json!("two");
    let made = create_binding(&http, &base, &binding).await.json();
    assert_eq!(made["resolvedRef"], repo.two.as_str());
    eventually(30, "the pool to fill", || async {
        let p = http.get(&format!("{base}/pools/net")).await.json();
        let b = http.get(&format!("{base}/bindings/net")).await.json();
        assert_ne!(b["status"], "error", "{b}");
        p["available"] == 3
    })
    .await;
    // Fetched once: the daemon can go; every binder still gets the files.
    drop(daemon);
    for _ in 0..3 {
        let (id, _) = hand_out(&http, &base, "net", None).await;
        let files = files_of(&data.0.join("binders").join(&id));
        assert!(files.contains(&"README.md".to_string()), "{files:?}");
        assert!(
            files.contains(&"notebooks/second.ipynb".to_string()),
            "{files:?}"
        );
    }
    server.stop().await;
}

/// The Python a binder's environment is made from: the system's, which
/// every uid may run (the binders run as uids of their own).
fn python() -> String {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".into()
    } else {
        "python3".into()
    }
}

async fn harness_with_wheels(name: &str, wheels: &Path) -> Harness {
    let wheels = wheels.to_path_buf();
    Harness::with_config(name, move |c| {
        c.content.allow_local = true;
        c.content.python = python();
        c.content.pip_args = vec![
            "--no-index".into(),
            "--find-links".into(),
            wheels.display().to_string(),
        ];
    })
    .await
}

/// A binding whose command first imports `module` with the `python` its
/// `PATH` finds, then serves: it answers only if the environment is there.
fn importing(name: &str, repo: &Repo, module: &str) -> Value {
    let mut b = repo_binding(name, repo, 1);
    b["requirements"] = json!("repo/requirements.txt");
    b["start_timeout_seconds"] = json!(30);
    b["command"] = json!([
        "sh",
        "-c",
        format!(
            "python -c 'import {module}; print({module}.__file__)' && exec {} --port {{port}} --base-url {{base_url}}",
            standin()
        )
    ]);
    b
}

/// `/build/git/{url}/HEAD` for `url`, read to its end: its `data:` events.
async fn build_stream(http: &Http, base: &str, url: &str) -> Vec<Value> {
    let escaped = escaped(url);
    let a = http
        .send(
            Method::GET,
            &format!("{base}/build/git/{escaped}/HEAD"),
            &[("accept", "text/event-stream")],
            String::new(),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn phases(events: &[Value]) -> Vec<&str> {
    let mut out: Vec<&str> = events
        .iter()
        .map(|e| e["phase"].as_str().unwrap())
        .collect();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirements_build_an_environment_once_and_a_broken_one_shows_pips_error() {
    let Some(venv) = venv() else { return };
    let wheels = venv.join("wheelhouse");
    let Harness { data, server, http } = harness_with_wheels("content-reqs", &wheels).await;
    let base = server.url("");
    let repo = Repo::new(&data, "cowsay==6.1\n");
    create_binding(&http, &base, &importing("reqs", &repo, "cowsay")).await;
    // Launched while it builds: BinderHub's `building` phase with the
    // build's lines, then `built`, `launching`, `ready`.
    let events = build_stream(&http, &base, &repo.url()).await;
    let seen = phases(&events);
    assert_eq!(seen.last(), Some(&"ready"), "{events:?}");
    if seen.first() == Some(&"building") {
        assert_eq!(
            seen,
            ["building", "built", "launching", "ready"],
            "{events:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| e["message"].as_str().unwrap().contains("cowsay")),
            "{events:?}"
        );
    }
    let doc = http.get(&format!("{base}/bindings/reqs")).await.json();
    assert_eq!(doc["status"], "ready", "{doc}");
    let log = http.get(&format!("{base}/bindings/reqs/build/logs")).await;
    assert_eq!(log.status, 200);
    assert!(log.body.contains("cowsay-6.1"), "{}", log.body);
    // The binder imported it from its environment: its command printed
    // where from.
    wait_pool(&http, &base, "reqs", 60, |p| p["available"] == 1).await;
    let (id, _) = hand_out(&http, &base, "reqs", Some(ADMIN)).await;
    let logs = http
        .send(
            Method::GET,
            &format!("{base}/binders/reqs/{id}/logs"),
            &[("authorization", ADMIN)],
            String::new(),
        )
        .await;
    assert!(
        logs.body.contains("/envs/") && logs.body.contains("cowsay/__init__.py"),
        "{}",
        logs.body
    );

    // A second binding with the same file: built before, not again.
    create_binding(&http, &base, &importing("reqs2", &repo, "cowsay")).await;
    wait_pool(&http, &base, "reqs2", 60, |p| p["available"] == 1).await;
    let log = http.get(&format!("{base}/bindings/reqs2/build/logs")).await;
    assert!(log.body.contains("built before"), "{}", log.body);

    // A requirements file that does not install: pip's own error in the
    // stream, on the binding and in its log; no binder runs.
    let other = DataDir::new("content-broken-repo");
    let broken = Repo::new(&other, "no-such-package-here==1\n");
    create_binding(&http, &base, &importing("broken", &broken, "cowsay")).await;
    let events = build_stream(&http, &base, &broken.url()).await;
    let last = events.last().unwrap();
    assert_eq!(last["phase"], "failed", "{events:?}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("no-such-package-here"),
        "{events:?}"
    );
    let doc = http.get(&format!("{base}/bindings/broken")).await.json();
    assert_eq!(doc["status"], "error", "{doc}");
    assert!(
        doc["message"]
            .as_str()
            .unwrap()
            .contains("no-such-package-here"),
        "{doc}"
    );
    let log = http
        .get(&format!("{base}/bindings/broken/build/logs"))
        .await;
    assert!(
        log.body.contains("No matching distribution"),
        "{}",
        log.body
    );
    // Not retried in a loop: the log stays as it was.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let again = http
        .get(&format!("{base}/bindings/broken/build/logs"))
        .await;
    assert_eq!(again.body, log.body);
    let p = http.get(&format!("{base}/pools/broken")).await.json();
    assert_eq!(p["running"], 0, "{p}");
    server.stop().await;
}

/// A notebook as Jupyter writes it: one code cell.
const NOTEBOOK: &str = r#"{
 "cells": [{"cell_type": "code", "execution_count": null, "id": "c1", "metadata": {},
            "outputs": [], "source": ["print('from the repository')"]}],
 "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
 "nbformat": 4, "nbformat_minor": 5
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binder_link_opens_the_repositorys_notebook_in_jupyterlab_whose_kernel_has_its_requirements(
) {
    let Some(venv) = browser_venv() else { return };
    let wheels = venv.join("wheelhouse");
    let Harness { data, server, http } = harness_with_wheels("content-lab", &wheels).await;
    let base = server.url("");
    let mut repo = Repo::new(&data, "cowsay==6.1\n");
    repo.put("notebooks/intro.ipynb", NOTEBOOK);
    let mut binding = jupyter_binding(&venv, "lab", 2);
    binding["repo"] = json!(repo.url());
    binding["notebooks"] = json!("repo/notebooks");
    binding["requirements"] = json!("repo/requirements.txt");
    // The warm kernel imports the package before the binder is pooled.
    binding["kernel"] = json!({"name": "python3", "warmup": "import cowsay"});
    create_binding(&http, &base, &binding).await;
    wait_pool(&http, &base, "lab", 180, |p| p["available"] == 2).await;

    // The link a Jupyter Book button makes, in Chromium.
    let escaped = escaped(&repo.url());
    let link = format!("{base}/v2/git/{escaped}/HEAD?labpath=intro.ipynb");
    let report = browser_report(
        venv.clone(),
        "labpath_browser.py",
        vec![link, "intro.ipynb".into()],
    )
    .await;
    assert!(
        report["landed"]
            .as_str()
            .unwrap()
            .contains("/lab/tree/intro.ipynb"),
        "{report}"
    );
    assert!(
        report["cell"]
            .as_str()
            .unwrap()
            .contains("from the repository"),
        "{report}"
    );
    // JupyterLab ran it on the warm kernel, over the channels held for it
    // (binderd answered its handshake naming no subprotocol: it speaks
    // JSON then).
    assert_eq!(report["output"], "from the repository", "{report}");
    let metrics = http.get(&server.url("/metrics")).await.body;
    assert!(
        metrics.contains("binderd_warm_channels_given_total{binding=\"lab\"} 1"),
        "{metrics}"
    );

    // A reader's kernel (the warm one) imports the requirements from the
    // binding's environment.
    let (_, location) = hand_out(&http, &base, "lab", None).await;
    let out = run_in_kernel(
        &venv,
        &base,
        &location,
        "import cowsay; print(cowsay.__file__)",
    )
    .await;
    let printed = out["output"].as_str().unwrap();
    assert!(
        printed.contains("/envs/") && printed.contains("cowsay"),
        "{out}"
    );
    server.stop().await;
}

/// A `/build` link's `ready` event's server: `GET {url}file?name={name}`.
async fn read_in(http: &Http, ready: &Value, name: &str) -> Answer {
    let url = ready["url"].as_str().unwrap();
    http.get(&format!("{url}file?name={name}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_accepted_repository_launches_into_a_warm_binder_of_a_default_binding() {
    let Harness { data, server, http } = harness("content-launch").await;
    let base = server.url("");
    let mut a = Repo::named(&data, "repo-a", "");
    a.put("only-a.txt", "A");
    let mut b = Repo::named(&data, "repo-b", "");
    b.put("only-b.txt", "B");
    let mut default = standin_binding("default", 3, 6);
    default["content"] = json!({
        "from": "launch",
        "repos": [format!("file://{}/repo-*", data.0.display())],
    });
    create_binding(&http, &base, &default).await;
    wait_pool(&http, &base, "default", 30, |p| p["available"] == 3).await;

    // The first launch of a repository fetches it (`fetching`), then a
    // warm binder with its files: only its own.
    let events = build_stream(&http, &base, &a.url()).await;
    assert_eq!(
        phases(&events),
        ["fetching", "built", "launching", "ready"],
        "{events:?}"
    );
    let ready_a = events.last().unwrap().clone();
    assert_eq!(read_in(&http, &ready_a, "only-a.txt").await.body, "A");
    assert_eq!(read_in(&http, &ready_a, "only-b.txt").await.status, 404);
    let events = build_stream(&http, &base, &b.url()).await;
    let ready_b = events.last().unwrap().clone();
    assert_eq!(ready_b["phase"], "ready", "{events:?}");
    assert_eq!(read_in(&http, &ready_b, "only-b.txt").await.body, "B");
    assert_eq!(read_in(&http, &ready_b, "only-a.txt").await.status, 404);
    assert_ne!(ready_a["token"], ready_b["token"]);

    // Again: cached, no fetch, straight to a warm binder.
    let events = build_stream(&http, &base, &a.url()).await;
    assert_eq!(
        phases(&events),
        ["built", "launching", "ready"],
        "{events:?}"
    );
    assert_eq!(
        read_in(&http, events.last().unwrap(), "only-a.txt")
            .await
            .body,
        "A"
    );

    // A `/v2` link, as a browser follows it.
    let escaped = escaped(&b.url());
    let v2 = http
        .get(&format!(
            "{base}/v2/git/{escaped}/HEAD?urlpath=file%3Fname%3Donly-b.txt"
        ))
        .await;
    assert_eq!(v2.status, 302, "{}", v2.body);
    let to = v2.headers["location"].to_str().unwrap().to_owned();
    let to = if to.starts_with('/') {
        format!("{base}{to}")
    } else {
        to
    };
    let landed = http.get(&to).await;
    assert_eq!(landed.body, "B", "{to}");

    // A repository the binding does not accept: refused, nothing handed out.
    let other = Repo::named(&data, "elsewhere", "");
    let before = http.get(&format!("{base}/pools/default")).await.json();
    let events = build_stream(&http, &base, &other.url()).await;
    assert_eq!(phases(&events), ["failed"], "{events:?}");
    assert!(
        events[0]["message"]
            .as_str()
            .unwrap()
            .contains("no binding serves"),
        "{events:?}"
    );
    let after = http.get(&format!("{base}/pools/default")).await.json();
    assert_eq!(before["running"], after["running"]);
    server.stop().await;
}
