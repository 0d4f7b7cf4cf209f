//! Pools, handouts and the proxy, with real processes (the stand-in server
//! and Python's http.server) started by the process backend.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Method;
use serde_json::json;

async fn create(http: &Http, server: &Server, body: serde_json::Value) {
    create_binding(http, &server.url(""), &body).await;
}

#[tokio::test]
async fn pool_fills_hands_out_and_refills() {
    let Harness { data, server, http } = Harness::start("fill").await;
    create(&http, &server, standin_binding("fill", 3, 10)).await;
    let base = server.url("");
    wait_pool(&http, &base, "fill", 20, |p| p["available"] == 3).await;
    wait_binders(&data, 3, 10).await;

    let a = http
        .call(Method::POST, &server.url("/binders/Fill"), None)
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let binder = a.json();
    assert_eq!(binder["state"], "ready");
    assert_eq!(binder["binding"], "fill");
    let id = binder["id"].as_str().unwrap().to_owned();
    let location = binder["location"].as_str().unwrap().to_owned();
    assert!(location.starts_with("/user/") && location.ends_with('/'));
    assert_eq!(location.len(), "/user/".len() + 32 + 1, "128-bit token");
    assert_eq!(id.len(), 32);

    // The location answers through binderd's proxy, path unchanged.
    let status = http
        .get(&server.url(&format!("{location}api/status")))
        .await;
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.json()["binder"], id.as_str());
    let echo = http.get(&server.url(&format!("{location}a/b?x=1"))).await;
    assert_eq!(echo.json()["path"], format!("{location}a/b"));
    assert_eq!(echo.json()["query"], "x=1");
    // Doubled slashes (thebe) are tolerated.
    let doubled = http.get(&server.url(&format!("{location}/a//b"))).await;
    assert_eq!(doubled.json()["path"], format!("{location}a/b"));
    // Request bodies stream through.
    let posted = http
        .send(
            Method::POST,
            &server.url(&format!("{location}echo")),
            &[("content-type", "text/plain")],
            "hello through the proxy",
        )
        .await;
    assert_eq!(posted.body, "hello through the proxy");
    // binderd's own key does not reach the container; hop-by-hop headers do not either.
    let seen = http
        .send(
            Method::GET,
            &server.url(&format!("{location}h")),
            &[
                ("authorization", ADMIN),
                ("connection", "x-drop"),
                ("x-drop", "1"),
                ("x-keep", "2"),
            ],
            Bytes::new(),
        )
        .await
        .json();
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    assert!(seen["headers"].get("x-drop").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-keep"], "2");

    // GET shows it; the pool refilled at once to minPool available.
    let got = http.get(&server.url(&format!("/binders/fill/{id}"))).await;
    assert_eq!(got.json()["location"], location.as_str());
    let p = wait_pool(&http, &base, "fill", 20, |p| p["available"] == 3).await;
    assert_eq!(p["running"], 4);

    // Unknown tokens: 404, JSON for API clients, HTML for browsers.
    let a = http
        .get(&server.url(&format!("/user/{}/", "0".repeat(32))))
        .await;
    assert_error(&a, 404);
    let a = http
        .send(
            Method::GET,
            &server.url("/user/nope/x"),
            &[("accept", "text/html")],
            Bytes::new(),
        )
        .await;
    assert_eq!(a.status, 404);
    assert!(a.body.contains("<h1>404"), "{}", a.body);

    // Listing: needs a key; shows what this key may see.
    assert_error(&http.get(&server.url("/binders/fill")).await, 401);
    let listed = http
        .call(Method::GET, &server.url("/binders/fill"), Some(ADMIN))
        .await;
    let listed = listed.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["uri"], format!("/binders/fill/{id}"));
    let listed = http
        .call(Method::GET, &server.url("/binders/fill"), Some(ALICE))
        .await;
    assert_eq!(
        listed.json().as_array().unwrap().len(),
        0,
        "anonymous binder is not alice's"
    );

    // Delete: an anonymous binder by whoever holds its id (alice here;
    // keyed binders: owner or admin, in tests/security.rs).
    let del = |key: &'static str| {
        let url = server.url(&format!("/binders/fill/{id}"));
        let http = &http;
        async move { http.call(Method::DELETE, &url, Some(key)).await }
    };
    assert_eq!(del(ALICE).await.status, 202);
    assert_eq!(del(ADMIN).await.status, 202, "stopping already: still 202");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while http
        .get(&server.url(&format!("{location}api/status")))
        .await
        .status
        != 404
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stopped binder still answers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_pool(&http, &base, "fill", 20, |p| p["running"] == 3).await;

    // Resizing: admin only (or a binding administrator); counts follow.
    let resize = |key: Option<&'static str>, body: serde_json::Value| {
        let url = server.url("/pools/fill");
        let http = &http;
        async move { http.post_json(&url, key, &body).await }
    };
    assert_error(&resize(None, json!({"minPool": 1})).await, 401);
    assert_error(&resize(Some(ALICE), json!({"minPool": 1})).await, 403);
    assert_error(
        &resize(Some(ADMIN), json!({"minPool": 9, "maxPool": 2})).await,
        400,
    );
    assert_error(
        &resize(Some(ADMIN), json!({"minPool": 99999999999u64})).await,
        400,
    );
    assert_error(&resize(Some(ADMIN), json!({"size": 1})).await, 400);
    let a = resize(Some(ADMIN), json!({"minPool": 1})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["minPool"], 1);
    wait_pool(&http, &base, "fill", 20, |p| {
        p["available"] == 1 && p["running"] == 1
    })
    .await;
    wait_binders(&data, 1, 10).await;
    server.stop().await;
}

#[tokio::test]
async fn concurrent_handouts_never_hand_out_twice() {
    let data = DataDir::new("race");
    let mut config = test_config(&data);
    config.start_concurrency = 16;
    let server = Server::start(config).await;
    let http = Http::new();
    create(&http, &server, standin_binding("race", 32, 40)).await;
    wait_pool(&http, &server.url(""), "race", 60, |p| p["available"] == 32).await;

    let mut tasks = Vec::new();
    for _ in 0..64 {
        let url = server.url("/binders/race");
        tasks.push(tokio::spawn(async move {
            Http::new()
                .send(Method::POST, &url, &[], Bytes::new())
                .await
        }));
    }
    let mut ready = Vec::new();
    let (mut starting, mut full) = (0, 0);
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            201 => ready.push(a.json()),
            202 => {
                assert_eq!(a.json()["state"], "starting");
                assert!(a.json().get("location").is_none());
                starting += 1
            }
            503 => {
                assert!(a.headers.contains_key("retry-after"));
                assert_error(&a, 503);
                full += 1
            }
            other => panic!("unexpected {other}: {}", a.body),
        }
    }
    assert!(
        ready.len() >= 32,
        "all 32 warm binders go out: {}",
        ready.len()
    );
    assert!(ready.len() + starting <= 40, "never past maxPool");
    assert_eq!(ready.len() + starting + full, 64);
    let ids: HashSet<_> = ready
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    let locations: HashSet<_> = ready
        .iter()
        .map(|b| b["location"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), ready.len(), "an id was handed out twice");
    assert_eq!(
        locations.len(),
        ready.len(),
        "a location was handed out twice"
    );
    // Each location reaches its own container.
    for b in ready.iter().take(8) {
        let s = http
            .get(&server.url(&format!("{}api/status", b["location"].as_str().unwrap())))
            .await;
        assert_eq!(s.json()["binder"], b["id"]);
    }
    server.stop().await;
}

#[tokio::test]
async fn empty_pool_answers_202_then_ready_and_503_at_max() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("empty").await;
    let mut body = standin_binding("cold", 0, 1);
    body["command"] = json!([
        standin(),
        "--port",
        "{port}",
        "--base-url",
        "{base_url}",
        "--delay-ms",
        "300"
    ]);
    create(&http, &server, body).await;

    let a = http
        .call(Method::POST, &server.url("/binders/cold"), None)
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let id = a.json()["id"].as_str().unwrap().to_owned();
    // At maxPool (1): 503 with Retry-After.
    let full = http
        .call(Method::POST, &server.url("/binders/cold"), None)
        .await;
    assert_error(&full, 503);
    assert!(full.headers.contains_key("retry-after"));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let ready = loop {
        let g = http
            .get(&server.url(&format!("/binders/cold/{id}")))
            .await
            .json();
        if g["state"] == "ready" {
            break g;
        }
        assert_eq!(g["state"], "starting", "{g}");
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let location = ready["location"].as_str().unwrap();
    let s = http
        .get(&server.url(&format!("{location}api/status")))
        .await;
    assert_eq!(s.json()["binder"], id.as_str());
    assert_error(
        &http
            .get(&server.url("/binders/cold/ffffffffffffffffffffffffffffffff"))
            .await,
        404,
    );
    assert_error(&http.get(&server.url("/binders/cold/not-an-id")).await, 404);
    server.stop().await;
}

#[tokio::test]
async fn tmpnb_routes_work_for_thebe_and_url_hits() {
    let data = DataDir::new("tmpnb");
    let mut config = test_config(&data);
    config.allow_origin = Some("*".into());
    let server = Server::start(config).await;
    let http = Http::new();
    // Python's http.server only serves at "/": strip_prefix.
    create(
        &http,
        &server,
        json!({
            "name": "py",
            "command": ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"],
            "strip_prefix": true,
            "public": true,
            "pool": {"min": 1, "max": 2},
        }),
    )
    .await;
    wait_pool(&http, &server.url(""), "py", 30, |p| p["available"] == 1).await;

    // thebe: text/plain body, no Authorization.
    let a = http
        .send(
            Method::POST,
            &server.url("/api/spawn/"),
            &[
                ("content-type", "text/plain;charset=UTF-8"),
                ("origin", "https://page.example"),
            ],
            r#"{"image_name":"jupyter/notebook"}"#,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.headers["access-control-allow-origin"], "*");
    let url = a.json()["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("/user/"));
    // The page builds base + url + '/' + 'api/...'. http.server lists "/".
    let listing = http.get(&server.url(&format!("{url}/"))).await;
    assert_eq!(listing.status, 200);
    assert!(
        listing.body.contains("Directory listing for /"),
        "{}",
        listing.body
    );

    let stats = http.get(&server.url("/api/stats")).await.json();
    assert_eq!(stats["capacity"], 2);
    assert!(stats["container_image"]
        .as_str()
        .unwrap()
        .contains("http.server"));
    assert!(stats["version"].is_string());

    // Pool max 2: one handed out, one more may start; then full → 429 {"status":"full"}.
    let second = http
        .call(Method::POST, &server.url("/api/spawn"), None)
        .await;
    assert_eq!(second.status, 200, "{}", second.body);
    let third = http
        .call(Method::POST, &server.url("/api/spawn/"), None)
        .await;
    assert_eq!(third.status, 429, "{}", third.body);
    assert_eq!(third.json()["status"], "full");
    assert!(third.headers.contains_key("retry-after"));

    // URL hit: 302 to /user/{token}/{path}.
    let r = resize_max(&http, &server, "py", 3).await;
    assert_eq!(r, 200);
    let a = http.get(&server.url("/spawn/tree/notebooks?x=1")).await;
    assert_eq!(a.status, 302, "{}", a.body);
    let loc = a.headers["location"].to_str().unwrap();
    assert!(
        loc.starts_with("/user/") && loc.ends_with("/tree/notebooks?x=1"),
        "{loc}"
    );

    // Several bindings and no default: /api/stats answers the totals over
    // those the caller can see (tmpnb-era monitors call it bare).
    let other = standin_binding("other", 0, 5);
    create(&http, &server, other).await;
    let mut hidden = standin_binding("hidden", 0, 7);
    hidden["public"] = json!(false);
    create(&http, &server, hidden).await;
    let stats = http.get(&server.url("/api/stats")).await;
    assert_eq!(stats.status, 200, "{}", stats.body);
    assert_eq!(stats.json()["capacity"], 3 + 5, "{}", stats.body);
    let as_admin = http
        .call(Method::GET, &server.url("/api/stats"), Some(ADMIN))
        .await
        .json();
    assert_eq!(as_admin["capacity"], 3 + 5 + 7, "{as_admin}");
    assert!(as_admin["container_image"]
        .as_str()
        .unwrap()
        .contains("http.server"));
    server.stop().await;
}

async fn resize_max(http: &Http, server: &Server, name: &str, max: u32) -> u16 {
    http.post_json(
        &server.url(&format!("/pools/{name}")),
        Some(ADMIN),
        &json!({"maxPool": max}),
    )
    .await
    .status
}

#[tokio::test]
async fn deleting_a_binding_leaves_no_process_behind() {
    let Harness { data, server, http } =
        Harness::with_pool("delete", standin_binding("gone", 4, 8)).await;
    let a = http
        .post_json(&server.url("/binders/gone"), None, &json!({}))
        .await;
    assert_eq!(a.status, 201);
    let location = a.json()["location"].as_str().unwrap().to_owned();
    wait_binders(&data, 5, 10).await;

    let del = |q: &str| {
        let url = server.url(&format!("/bindings/gone{q}"));
        let http = &http;
        async move { http.call(Method::DELETE, &url, Some(ADMIN)).await }
    };
    // An assigned binder blocks deletion unless forced.
    assert_error(&del("").await, 409);
    assert_eq!(del("?force=true").await.status, 202);
    wait_binders(&data, 0, 10).await;
    assert_error(
        &http
            .get(&server.url(&format!("{location}api/status")))
            .await,
        404,
    );
    assert_error(&http.get(&server.url("/pools/gone")).await, 404);
    server.stop().await;
}

#[tokio::test]
async fn a_broken_command_sets_error_status_and_backs_off() {
    let Harness { data, server, http } = Harness::start("broken").await;
    let mut body = standin_binding("broken", 2, 4);
    body["command"] = json!(["/nonexistent/notebook-server", "{port}"]);
    create(&http, &server, body).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let doc = loop {
        let d = http.get(&server.url("/bindings/broken")).await.json();
        if d["status"] == "error" {
            break d;
        }
        assert!(tokio::time::Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        doc["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/notebook-server"),
        "{doc}"
    );
    // Backing off: in 2 s a hot loop would fail thousands of starts; the
    // back-off (0.5 s, 1 s, 2 s, ...) allows only a few rounds of 2.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = http.get(&server.url("/pools/broken")).await.json();
    assert_eq!(p["available"], 0);
    // A spawn with nothing warm and a broken command: 202, then failed with a reason.
    let a = http
        .call(Method::POST, &server.url("/binders/broken"), None)
        .await;
    if a.status == 202 {
        let id = a.json()["id"].as_str().unwrap().to_owned();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let g = http
                .get(&server.url(&format!("/binders/broken/{id}")))
                .await
                .json();
            if g["state"] == "failed" {
                assert!(g["reason"].as_str().unwrap().contains("cannot run"), "{g}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{g}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    } else {
        assert_error(&a, 503);
    }
    // Nothing left running (a failed start's sandbox may take a moment to
    // exit after the binder is marked failed, on a busy machine).
    eventually(5, "no binder process left", || async {
        data.running_binders() == 0
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_pooled_process_killed_behind_our_back_is_replaced_not_handed_out() {
    let Harness { data, server, http } = Harness::start("killed").await;
    create(&http, &server, standin_binding("victim", 1, 2)).await;
    let p = wait_pool(&http, &server.url(""), "victim", 20, |p| {
        p["available"] == 1
    })
    .await;
    assert_eq!(p["running"], 1);
    assert_eq!(
        binderd::backend::process::ProcessBackend::kill_all(&data.0),
        1
    );
    // Replaced: a new one comes up, and every handout answers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_pool(&http, &server.url(""), "victim", 20, |p| {
        p["available"] == 1 && p["running"] == 1
    })
    .await;
    let a = http
        .call(Method::POST, &server.url("/binders/victim"), None)
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let location = a.json()["location"].as_str().unwrap().to_owned();
    assert_eq!(
        http.get(&server.url(&format!("{location}api/status")))
            .await
            .status,
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn a_container_that_stops_answering_gives_502() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("502").await;
    let body = standin_binding_that_stops_answering("flaky", 1500);
    create(&http, &server, body).await;
    wait_pool(&http, &server.url(""), "flaky", 20, |p| p["available"] == 1).await;
    let a = http
        .call(Method::POST, &server.url("/binders/flaky"), None)
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let location = a.json()["location"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let a = http
            .get(&server.url(&format!("{location}api/status")))
            .await;
        if a.status != 200 {
            break a;
        }
        assert!(tokio::time::Instant::now() < deadline, "still answering");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_error(&answer, 502);
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not answering"));
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_handouts_and_show_each_pool() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_pool("metrics", standin_binding("metered", 2, 4)).await;
    let a = http
        .call(Method::POST, &server.url("/binders/metered"), None)
        .await;
    assert_eq!(a.status, 201);
    let location = a.json()["location"].as_str().unwrap().to_owned();
    assert_eq!(
        http.get(&server.url(&format!("{location}api/status")))
            .await
            .status,
        200
    );
    let page = http.get(&server.url("/metrics")).await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let has = |needle: &str| page.body.lines().any(|l| l.starts_with(needle));
    assert!(
        has(r#"binderd_handouts_total{binding="metered",warm="true"}"#),
        "{}",
        page.body
    );
    assert!(
        has(r#"binderd_pool_max{binding="metered"} 4"#),
        "{}",
        page.body
    );
    assert!(
        has(r#"binderd_pool_running{binding="metered"}"#),
        "{}",
        page.body
    );
    assert!(
        has("binderd_starts_total{binding=\"metered\"}"),
        "{}",
        page.body
    );
    assert!(has("binderd_proxied_requests_total"), "{}", page.body);
    // Every metric says what it is.
    let metrics: std::collections::BTreeSet<&str> = page
        .body
        .lines()
        .filter(|l| l.starts_with("binderd_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    assert!(metrics.len() >= 8, "{metrics:?}");
    for metric in metrics {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| metric.strip_suffix(s))
            .unwrap_or(metric);
        assert!(has(&format!("# HELP {family} ")), "no help for {metric}");
    }
    // A private binding's name is shown only to a key that may see it.
    let mut private = standin_binding("hush-hush", 1, 2);
    private["public"] = serde_json::json!(false);
    create_binding(&http, &server.url(""), &private).await;
    eventually(30, "the private pool fills", || async {
        let p = http
            .call(Method::GET, &server.url("/pools/hush-hush"), Some(ADMIN))
            .await;
        p.status == 200 && p.json()["available"] == 1
    })
    .await;
    let anonymous = http.get(&server.url("/metrics")).await.body;
    assert!(!anonymous.contains("hush-hush"), "{anonymous}");
    assert!(anonymous.contains(r#"binding="metered""#));
    let admin = http
        .call(Method::GET, &server.url("/metrics"), Some(ADMIN))
        .await
        .body;
    assert!(
        admin.contains(r#"binderd_pool_available{binding="hush-hush"} 1"#),
        "{admin}"
    );
    // Handout latency and time to ready are histograms.
    assert!(has("binderd_handout_seconds_bucket{"), "{}", page.body);
    assert!(
        has("binderd_time_to_ready_seconds_bucket{"),
        "{}",
        page.body
    );
    assert!(
        has(r#"binderd_pool_warm_share{binding="metered"} 1"#),
        "{}",
        page.body
    );
    server.stop().await;
}
