//! A handed-out binder's life on the process backend: culling, pause and
//! resume, logs, and the progress event stream.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use serde_json::json;

/// binderd whose culler looks every `cull_ms`.
async fn start(name: &str, cull_ms: u64) -> Harness {
    Harness::with_config(name, |c| c.cull_interval = Duration::from_millis(cull_ms)).await
}

#[tokio::test]
async fn idle_binders_are_culled_busy_ones_kept_and_the_pool_refills() {
    let Harness { data, server, http } = start("cull", 100).await;
    let mut body = standin_binding("cull", 1, 4);
    body["cull"] = json!({"idle_seconds": 2, "max_age_seconds": 60});
    create_binding(&http, &server.url(""), &body).await;
    wait_pool(&http, &server.url(""), "cull", 20, |p| p["available"] == 1).await;
    let idle = http
        .call(Method::POST, &server.url("/binders/cull"), Some(ALICE))
        .await
        .json();
    wait_pool(&http, &server.url(""), "cull", 20, |p| p["available"] == 1).await;
    let busy = http
        .call(Method::POST, &server.url("/binders/cull"), Some(ALICE))
        .await
        .json();
    let busy_location = busy["location"].as_str().unwrap().to_owned();

    // Keep one busy for ~4 s; leave the other alone.
    let t = tokio::time::Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        let a = http
            .get(&server.url(&format!("{busy_location}api/status")))
            .await;
        assert_eq!(a.status, 200, "the busy binder was culled: {}", a.body);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let idle_location = idle["location"].as_str().unwrap();
    assert_error(
        &http
            .get(&server.url(&format!("{idle_location}api/status")))
            .await,
        404,
    );
    let gone = http
        .get(&server.url(&format!("/binders/cull/{}", idle["id"].as_str().unwrap())))
        .await
        .json();
    assert_eq!(gone["state"], "stopped", "{gone}");
    assert!(
        gone["reason"].as_str().unwrap().contains("no traffic"),
        "{gone}"
    );
    // Warm, never handed out binders are not culled; the pool stays at minPool.
    let p = wait_pool(&http, &server.url(""), "cull", 20, |p| p["available"] == 1).await;
    assert_eq!(p["running"], 2, "busy + one warm: {p}");
    server.stop().await;
    drop(data);
}

/// A page that fails (or a client that goes away) takes a binder and never
/// visits it: it is reclaimed after `cull.unvisited_seconds`, and the pool
/// refills; a binder visited once is left to the idle rule.
#[tokio::test]
async fn binders_never_visited_are_reclaimed_and_the_pool_refills() {
    let Harness { data, server, http } = start("unvisited", 100).await;
    let mut body = standin_binding("unvisited", 2, 4);
    body["cull"] = json!({"idle_seconds": 60, "max_age_seconds": 600, "unvisited_seconds": 2});
    create_binding(&http, &server.url(""), &body).await;
    wait_pool(&http, &server.url(""), "unvisited", 20, |p| {
        p["available"] == 2
    })
    .await;
    let spawn = || async {
        let a = http
            .call(Method::POST, &server.url("/binders/unvisited"), None)
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        a.json()
    };
    let (forgotten, visited) = (spawn().await, spawn().await);
    let visited_status = server.url(&format!(
        "{}api/status",
        visited["location"].as_str().unwrap()
    ));
    assert_eq!(http.get(&visited_status).await.status, 200);
    let id = forgotten["id"].as_str().unwrap().to_owned();
    let url = server.url(&format!("/binders/unvisited/{id}"));
    eventually(10, "the unvisited binder is reclaimed", || {
        let (http, url) = (&http, &url);
        async move { http.get(url).await.json()["state"] == "stopped" }
    })
    .await;
    let doc = http.get(&url).await.json();
    assert!(
        doc["reason"].as_str().unwrap().contains("never visited"),
        "{doc}"
    );
    assert_eq!(
        http.get(&visited_status).await.status,
        200,
        "a visited binder is kept"
    );
    let forgotten_status = server.url(&format!(
        "{}api/status",
        forgotten["location"].as_str().unwrap()
    ));
    assert_error(&http.get(&forgotten_status).await, 404);
    let p = wait_pool(&http, &server.url(""), "unvisited", 20, |p| {
        p["available"] == 2
    })
    .await;
    assert_eq!(p["running"], 3, "visited + two warm: {p}");
    server.stop().await;
    drop(data);
}

#[tokio::test]
async fn old_binders_are_culled_even_when_busy() {
    let Harness { data, server, http } = start("maxage", 100).await;
    let mut body = standin_binding("aged", 0, 2);
    body["cull"] = json!({"idle_seconds": 60, "max_age_seconds": 2});
    create_binding(&http, &server.url(""), &body).await;
    let a = http
        .call(Method::POST, &server.url("/api/spawn/"), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let url = a.json()["url"].as_str().unwrap().to_owned();
    let status_url = server.url(&format!("{url}api/status"));
    eventually(10, "max age culling", || {
        let (http, u) = (&http, &status_url);
        async move { http.get(u).await.status == 404 }
    })
    .await;
    server.stop().await;
    drop(data);
}

#[tokio::test]
async fn pause_keeps_files_and_location_and_resume_brings_it_back() {
    let Harness { data, server, http } = start("pause", 1000).await;
    create_and_fill(&http, &server.url(""), &standin_binding("pz", 1, 3)).await;
    let (id, location) = hand_out(&http, &server.url(""), "pz", Some(ALICE)).await;
    let binder = (id.as_str(), location.as_str());
    let text = "written before the pause";
    let before = write_then_pause(&server, &http, "pz", binder, text).await;

    let action = server.url(&format!("/binders/pz/{id}/actions/pause"));
    assert_error(
        &http
            .post_json(&action, None, &json!({"paused": true}))
            .await,
        401,
    );
    assert_error(
        &http
            .post_json(&action, Some(BOB), &json!({"paused": true}))
            .await,
        403,
    );
    assert_error(
        &http
            .post_json(&action, Some(ALICE), &json!({"pause": true}))
            .await,
        400,
    );
    // The process is gone (no CPU, no memory), the location says paused.
    wait_binders(&data, 1, 10).await; // only the warm pool binder is left
    let html = http
        .send(
            Method::GET,
            &server.url(&location),
            &[("accept", "text/html")],
            "",
        )
        .await;
    assert!(
        html.body.contains("paused") && html.body.contains("<h1>503"),
        "{}",
        html.body
    );

    let after = resume_then_read(&server, &http, "pz", binder, text).await;
    assert_ne!(after["instance"], before["instance"], "a new process");
    server.stop().await;
}

#[tokio::test]
async fn logs_are_the_owners_and_bounded() {
    let Harness {
        data: _data,
        server,
        http,
    } = start("logs", 1000).await;
    let mut body = standin_binding("talk", 0, 2);
    body["command"] = json!(["sh", "-c", format!("for i in $(seq 1 50); do echo line $i; done; exec {} --port {{port}} --base-url {{base_url}}", standin())]);
    create_binding(&http, &server.url(""), &body).await;
    let a = http
        .call(Method::POST, &server.url("/binders/talk"), Some(ALICE))
        .await;
    assert_eq!(a.status, 202);
    let id = a.json()["id"].as_str().unwrap().to_owned();
    let logs = server.url(&format!("/binders/talk/{id}/logs"));
    eventually(10, "logs", || {
        let (http, u) = (&http, &logs);
        async move {
            http.call(Method::GET, u, Some(ALICE))
                .await
                .body
                .contains("serving")
        }
    })
    .await;
    let all = http.call(Method::GET, &logs, Some(ALICE)).await;
    assert_eq!(all.headers["content-type"], "text/plain; charset=utf-8");
    assert!(
        all.body.starts_with("line 1\n") && all.body.contains("line 50\n"),
        "{}",
        all.body
    );
    let tail = http
        .call(Method::GET, &format!("{logs}?tail=2"), Some(ALICE))
        .await;
    assert_eq!(tail.body.lines().count(), 2, "{}", tail.body);
    assert!(tail.body.starts_with("line 50\n"), "{}", tail.body);
    assert_error(
        &http
            .call(Method::GET, &format!("{logs}?tail=lots"), Some(ALICE))
            .await,
        400,
    );
    assert_error(&http.call(Method::GET, &logs, Some(BOB)).await, 403);
    assert_error(&http.call(Method::GET, &logs, None).await, 401);
    assert_eq!(http.call(Method::GET, &logs, Some(ADMIN)).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn the_event_stream_goes_from_starting_to_ready() {
    let Harness {
        data: _data,
        server,
        http,
    } = start("events", 1000).await;
    let mut body = standin_binding("ev", 0, 2);
    body["command"] = json!([
        standin(),
        "--port",
        "{port}",
        "--base-url",
        "{base_url}",
        "--delay-ms",
        "500"
    ]);
    create_binding(&http, &server.url(""), &body).await;
    let a = http
        .call(Method::POST, &server.url("/binders/ev"), None)
        .await;
    assert_eq!(a.status, 202);
    let id = a.json()["id"].as_str().unwrap().to_owned();
    // The stream ends by itself once the binder is ready.
    let events = http
        .get(&server.url(&format!("/binders/ev/{id}/events")))
        .await;
    assert_eq!(events.status, 200);
    assert_eq!(events.headers["content-type"], "text/event-stream");
    let docs: Vec<serde_json::Value> = events
        .body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(
        docs.first().unwrap()["phase"],
        "starting",
        "{}",
        events.body
    );
    let last = docs.last().unwrap();
    assert_eq!(last["phase"], "ready", "{}", events.body);
    assert!(last["location"].as_str().unwrap().starts_with("/user/"));

    // A failing start ends with `failed` and its reason.
    let mut broken = standin_binding("evfail", 0, 1);
    broken["command"] = json!(["sh", "-c", "echo dying; exit 3"]);
    create_binding(&http, &server.url(""), &broken).await;
    let a = http
        .call(Method::POST, &server.url("/binders/evfail"), None)
        .await;
    let id = a.json()["id"].as_str().unwrap().to_owned();
    let events = http
        .get(&server.url(&format!("/binders/evfail/{id}/events")))
        .await;
    let last = events.body.trim_end().rsplit("data: ").next().unwrap();
    let last: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(last["phase"], "failed", "{}", events.body);
    assert!(
        last["reason"].as_str().unwrap().contains("exited"),
        "{last}"
    );
    server.stop().await;
}
