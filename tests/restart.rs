//! The real binary: SIGKILL and restart, SIGTERM, and the command line.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use http::Method;
use serde_json::json;

async fn handout(http: &Http, p: &Process, name: &str) -> serde_json::Value {
    let a = http
        .call(Method::POST, &p.url(&format!("/binders/{name}")), None)
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.json()
}

#[tokio::test]
async fn sigkill_and_restart_lose_nothing_and_leak_nothing() {
    let data = DataDir::new("sigkill");
    let http = Http::new();
    let mut p = Process::spawn(&data, &[], &[]);
    create_binding(&http, &p.url(""), &standin_binding("survivor", 3, 10)).await;
    wait_pool(&http, &p.url(""), "survivor", 20, |v| v["available"] == 3).await;

    // Hand two out, the second killed at once after its answer.
    let first = handout(&http, &p, "survivor").await;
    let second = handout(&http, &p, "survivor").await;
    p.sigkill();
    let assigned: Vec<_> = [&first, &second]
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    // Binders' processes are in their own groups: they outlive binderd.
    let before = data.running_binders();
    assert!(before >= 3, "only {before} binders survived");

    let mut p = Process::spawn(&data, &[], &[]);
    // The binding survived, the assigned binders keep their location and work.
    assert_eq!(http.get(&p.url("/bindings/survivor")).await.status, 200);
    for b in [&first, &second] {
        let location = b["location"].as_str().unwrap();
        let got = http
            .get(&p.url(&format!("/binders/survivor/{}", b["id"].as_str().unwrap())))
            .await;
        assert_eq!(got.status, 200, "{}", got.body);
        assert_eq!(got.json()["state"], "ready");
        assert_eq!(got.json()["location"], location);
        let s = http.get(&p.url(&format!("{location}api/status"))).await;
        assert_eq!(s.status, 200, "{}", s.body);
        assert_eq!(s.json()["binder"], b["id"]);
    }
    // The pooled ones rejoined (no duplicates were started for them).
    let pool = wait_pool(&http, &p.url(""), "survivor", 20, |v| v["available"] == 3).await;
    assert_eq!(pool["running"], 5, "{pool}");
    wait_binders(&data, 5, 10).await; // one per running binder

    // New handouts never repeat an assigned binder.
    let mut seen: HashSet<String> = assigned.iter().cloned().collect();
    for _ in 0..3 {
        let b = handout(&http, &p, "survivor").await;
        assert!(
            seen.insert(b["id"].as_str().unwrap().to_owned()),
            "handed out twice: {b}"
        );
    }

    // A pooled process that dies while binderd is down is removed and replaced.
    wait_pool(&http, &p.url(""), "survivor", 20, |v| v["available"] == 3).await;
    p.sigkill();
    let idle_pids: Vec<u32> = {
        // Any one idle binder's pid: ask a fresh handout-free view, the store.
        let conn = rusqlite_state(&data);
        conn.into_iter()
            .filter(|(_, state)| state == "idle")
            .map(|(pid, _)| pid)
            .collect()
    };
    assert_eq!(idle_pids.len(), 3, "{idle_pids:?}");
    nix_kill(idle_pids[0]);
    let p = Process::spawn(&data, &[], &[]);
    let pool = wait_pool(&http, &p.url(""), "survivor", 20, |v| v["available"] == 3).await;
    assert_eq!(pool["running"], 8, "5 assigned + 3 available: {pool}");
    for id in &seen {
        let got = http.get(&p.url(&format!("/binders/survivor/{id}"))).await;
        assert_eq!(got.json()["state"], "ready", "{}", got.body);
    }
    drop(p);
}

/// `(pid, state)` of every binder in the store.
fn rusqlite_state(data: &DataDir) -> Vec<(u32, String)> {
    let conn = rusqlite::Connection::open(data.0.join("binderd.sqlite3")).unwrap();
    let mut stmt = conn.prepare("SELECT instance, state FROM binders").unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, Option<String>>(0)?, r.get::<_, String>(1)?))
        })
        .unwrap();
    rows.filter_map(|r| {
        let (instance, state) = r.unwrap();
        // Binders still starting when binderd was killed have no instance yet.
        let instance: serde_json::Value = serde_json::from_str(&instance?).unwrap();
        Some((instance["handle"].as_str().unwrap().parse().unwrap(), state))
    })
    .collect()
}

fn nix_kill(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_keeps_containers_for_the_next_start() {
    let data = DataDir::new("sigterm");
    let http = Http::new();
    let mut p = Process::spawn(&data, &[], &[]);
    create_binding(&http, &p.url(""), &standin_binding("kept", 2, 4)).await;
    wait_pool(&http, &p.url(""), "kept", 20, |v| v["available"] == 2).await;
    Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    let status = wait_exit(&mut p);
    assert_eq!(status, Some(0));
    wait_binders(&data, 2, 10).await;

    // --cleanup-on-exit removes them instead.
    let mut p = Process::spawn(&data, &["--cleanup-on-exit"], &[]);
    let pool = wait_pool(&http, &p.url(""), "kept", 20, |v| v["available"] == 2).await;
    assert_eq!(pool["running"], 2, "adopted, not started anew");
    Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(wait_exit(&mut p), Some(0));
    wait_binders(&data, 0, 10).await;
}

fn wait_exit(p: &mut Process) -> Option<i32> {
    for _ in 0..200 {
        if let Some(status) = p.child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("binderd did not exit");
}

#[test]
fn command_line_errors_are_one_line_and_exit_64() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(binderd_bin())
            .args(args)
            .env_remove("BINDERD_API_KEYS")
            .envs(env.iter().copied())
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let version = Command::new(binderd_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));

    for (args, env, needle) in [
        (
            vec!["serve", "--backend", "vm"],
            vec![],
            "unknown backend 'vm'",
        ),
        (
            vec!["serve", "--listen", "nowhere"],
            vec![],
            "invalid listen address",
        ),
        (vec!["serve", "--bogus"], vec![], "--bogus"),
        (
            vec!["serve", "--config", "/nonexistent/binderd.toml"],
            vec![],
            "/nonexistent/binderd.toml",
        ),
        (
            vec!["serve"],
            vec![("BINDERD_BACKEND", "podman")],
            "unknown backend 'podman'",
        ),
        (
            vec!["serve"],
            vec![("BINDERD_API_KEYS", "alice:s3cr3t:king")],
            "unknown role 'king'",
        ),
    ] {
        let (code, stderr) = run(&args, &env);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("s3cr3t"), "a key leaked: {stderr}");
    }
}

#[tokio::test]
async fn bindings_from_files_exist_at_start_and_resizes_persist() {
    let data = DataDir::new("files");
    let dir = data.0.join("bindings");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("FromFile.toml"),
        format!(
            "command = [{:?}, \"--port\", \"{{port}}\", \"--base-url\", \"{{base_url}}\"]\npublic = true\npool = {{ min = 1, max = 3 }}\n",
            standin()
        ),
    )
    .unwrap();
    let http = Http::new();
    let dir_arg = dir.to_str().unwrap().to_owned();
    let p = Process::spawn(&data, &["--bindings-dir", &dir_arg], &[]);
    let got = http.get(&p.url("/bindings/fromfile")).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.json()["owner"], "config");
    wait_pool(&http, &p.url(""), "fromfile", 20, |v| v["available"] == 1).await;
    let a = http
        .post_json(
            &p.url("/pools/fromfile"),
            Some(ADMIN),
            &json!({"minPool": 2}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    drop(p);
    let p = Process::spawn(&data, &["--bindings-dir", &dir_arg], &[]);
    let pool = wait_pool(&http, &p.url(""), "fromfile", 20, |v| v["available"] == 2).await;
    assert_eq!(pool["minPool"], 2);
    assert_eq!(pool["maxPool"], 3);
}

/// A crash in the middle of a rush, three times over: every binder a client
/// got a 201 for is still assigned after the restart and answers at its
/// location, no binder went to two clients, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_rush_loses_no_handout() {
    let data = DataDir::new("rush-kill");
    let http = Http::new();
    let mut p = Process::spawn(&data, &[], &[]);
    create_and_fill(&http, &p.url(""), &standin_binding("rushed", 30, 300)).await;
    let mut received: Vec<(String, String)> = Vec::new();
    for round in 0..3 {
        let url = p.url("/binders/rushed");
        let first = std::sync::Arc::new(tokio::sync::Notify::new());
        let rush: Vec<_> = (0..40)
            .map(|_| {
                let (url, first) = (url.clone(), first.clone());
                tokio::spawn(async move {
                    let a = Http::new()
                        .try_send(Method::POST, &url, &[], bytes::Bytes::new())
                        .await;
                    if a.as_ref().is_ok_and(|a| a.status == 201) {
                        first.notify_one();
                    }
                    a
                })
            })
            .collect();
        // Killed while the rush is under way (some answered, some not):
        // once the first answer is in (a loaded machine may take longer
        // than the rush's first milliseconds to answer any), and a moment.
        let _ = tokio::time::timeout(Duration::from_secs(5), first.notified()).await;
        tokio::time::sleep(Duration::from_millis(1 + 2 * round)).await;
        p.sigkill();
        let mut answered = 0;
        for task in rush {
            // Cut off by the kill: no answer, no claim.
            let Ok(Ok(a)) = task.await else { continue };
            if a.status == 201 {
                let doc = a.json();
                let id = doc["id"].as_str().unwrap().to_owned();
                let location = doc["location"].as_str().unwrap().to_owned();
                received.push((id, location));
                answered += 1;
            }
        }
        eprintln!("round {round}: {answered} handouts answered before the kill");

        let extra: &[&str] = if round == 2 {
            &["--cleanup-on-exit"]
        } else {
            &[]
        };
        p = Process::spawn(&data, extra, &[]);
        let ids: HashSet<&str> = received.iter().map(|(id, _)| id.as_str()).collect();
        let places: HashSet<&str> = received.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(ids.len(), received.len(), "a binder went to two clients");
        assert_eq!(
            places.len(),
            received.len(),
            "a location went to two clients"
        );
        for (id, location) in &received {
            let got = http.get(&p.url(&format!("/binders/rushed/{id}"))).await;
            assert_eq!(got.status, 200, "{id}: {}", got.body);
            assert_eq!(got.json()["state"], "ready", "{}", got.body);
            assert_eq!(got.json()["location"], location.as_str());
            let s = http.get(&p.url(&format!("{location}api/status"))).await;
            assert_eq!(s.status, 200, "{location}: {}", s.body);
            assert_eq!(s.json()["binder"], id.as_str());
        }
        wait_pool(&http, &p.url(""), "rushed", 30, |v| v["available"] == 30).await;
    }
    assert!(
        !received.is_empty(),
        "no handout was answered before a kill"
    );
    // The last binderd stops everything on SIGTERM: no process is left.
    Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(wait_exit(&mut p), Some(0));
    wait_binders(&data, 0, 20).await;
}

/// An operator can follow a session: each lifecycle event once at info, as
/// one JSON object a line with `--log-format json`; nothing per warm handout.
#[tokio::test]
async fn lifecycle_events_are_logged_once_each_as_json_lines() {
    let data = DataDir::new("logs-json");
    let http = Http::new();
    let mut p = Process::spawn(&data, &["--log-format", "json"], &[]);
    // Two warm handouts from a pool of two (no room to refill), then two
    // refusals at maxPool; one cold handout from an empty pool.
    create_and_fill(&http, &p.url(""), &standin_binding("followed", 2, 2)).await;
    create_binding(&http, &p.url(""), &standin_binding("cold", 0, 1)).await;
    let (id, _) = hand_out(&http, &p.url(""), "followed", None).await;
    hand_out(&http, &p.url(""), "followed", None).await;
    for _ in 0..2 {
        let full = http
            .call(Method::POST, &p.url("/binders/followed"), None)
            .await;
        assert_eq!(full.status, 503, "{}", full.body);
    }
    let cold = http.call(Method::POST, &p.url("/binders/cold"), None).await;
    assert_eq!(cold.status, 202, "{}", cold.body);
    let stop = http
        .call(
            Method::DELETE,
            &p.url(&format!("/binders/followed/{id}")),
            None,
        )
        .await;
    assert_eq!(stop.status, 202);
    eventually(10, "the stop is logged", || {
        let log = p.log.clone();
        async move {
            std::fs::read_to_string(log)
                .unwrap()
                .contains("binder stopped")
        }
    })
    .await;
    p.sigkill();
    let text = std::fs::read_to_string(&p.log).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages: Vec<&str> = events
        .iter()
        .filter_map(|e| e["fields"]["message"].as_str())
        .collect();
    let count = |m: &str| messages.iter().filter(|x| x.contains(m)).count();
    assert_eq!(count("binding created"), 2, "{messages:?}");
    assert_eq!(
        count("pool is at maxPool"),
        1,
        "once, not per refusal: {messages:?}"
    );
    assert_eq!(count("binder stopped"), 1, "{messages:?}");
    assert!(events
        .iter()
        .all(|e| e["level"].is_string() && e["timestamp"].is_string()));
    // The cold handout is told, the two warm ones are not.
    assert_eq!(count("handed out cold"), 1, "{messages:?}");
    assert_eq!(
        count("handed out"),
        count("handed out cold"),
        "{messages:?}"
    );
    assert!(!text.contains("secret-key"), "a key in the log");
}

/// A crash that took the page cache with it (a power loss, a kernel
/// crash) may lose the last handout's journal line and SQLite's last
/// commit, leaving the store calling a handed-out binder pooled. Stood in
/// for here: SIGKILL, the handout's record put back to `idle` and the
/// journal's last line cut, and the running mark rewritten as another
/// boot's. The next start must not hand that container to anyone: pooled
/// binders of a run that ended that way are replaced, not reused. (A
/// SIGKILL on the same boot keeps them: `sigkill_and_restart_...`.)
#[tokio::test]
async fn a_crash_that_lost_the_last_handouts_record_never_hands_that_binder_out_again() {
    let data = DataDir::new("lost-page-cache");
    let http = Http::new();
    let mut p = Process::spawn(&data, &[], &[]);
    create_binding(&http, &p.url(""), &standin_binding("once", 3, 10)).await;
    wait_pool(&http, &p.url(""), "once", 20, |v| v["available"] == 3).await;
    let taken = handout(&http, &p, "once").await;
    let taken_id = taken["id"].as_str().unwrap().to_owned();
    let taken_location = taken["location"].as_str().unwrap().to_owned();
    p.sigkill();

    // What a lost page cache could leave: no record of the handout.
    let conn = rusqlite::Connection::open(data.0.join("binderd.sqlite3")).unwrap();
    conn.execute(
        "UPDATE binders SET state = 'idle', owner = NULL, assigned_at = 0 WHERE id = ?1",
        [&taken_id],
    )
    .unwrap();
    drop(conn);
    let journal = data.0.join("binderd.journal");
    if let Ok(text) = std::fs::read_to_string(&journal) {
        let kept: Vec<&str> = text.lines().filter(|l| !l.contains(&taken_id)).collect();
        let mut rest = kept.join("\n");
        if !rest.is_empty() {
            rest.push('\n');
        }
        std::fs::write(&journal, rest).unwrap();
    }
    let marker = data.0.join("binderd.running");
    assert!(marker.exists(), "a running binderd marks its data dir");
    std::fs::write(&marker, "another-boot").unwrap();

    let mut p = Process::spawn(&data, &[], &[]);
    wait_pool(&http, &p.url(""), "once", 20, |v| v["available"] == 3).await;
    for _ in 0..6 {
        wait_pool(&http, &p.url(""), "once", 20, |v| v["available"] == 3).await;
        let b = handout(&http, &p, "once").await;
        assert_ne!(b["id"], taken["id"], "handed out twice: {b}");
        assert_ne!(b["location"].as_str(), Some(taken_location.as_str()));
    }
    // Nothing of the lost binder is left running either.
    let at_its_address = http
        .get(&p.url(&format!("{taken_location}api/status")))
        .await;
    assert_eq!(at_its_address.status, 404, "{}", at_its_address.body);

    // A clean stop removes the mark; the next start trusts its pool.
    Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(wait_exit(&mut p), Some(0));
    assert!(!marker.exists(), "a clean stop leaves no running mark");
}
