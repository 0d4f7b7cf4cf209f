//! BinderHub's launch API on the process backend with the stand-in server:
//! the event stream's phases and field names, an unknown repository and a
//! full pool as `failed`, cold launches, `/v2` redirects and the waiting
//! page, CORS, `/versions` and `/health`. (The round trip with a real
//! Jupyter server and a BinderHub client is in tests/jupyter.rs.)

mod common;

use common::*;
use http::Method;
use serde_json::{json, Value};

const REPO: &str = "https://github.com/Binder-Examples/Requirements.git";
const BUILD: &str = "/build/gh/binder-examples/requirements/HEAD";

fn launchable(name: &str, min: u32, max: u32) -> Value {
    let mut b = standin_binding(name, min, max);
    b["repo"] = json!(REPO);
    // Launch links find it by its repository; its files come with it.
    b["content"] = json!({"from": "image"});
    b
}

/// `GET {url}` as an event-stream client (EventSource, BinderHub's own
/// client) sends it, with `extra` headers.
async fn build(http: &Http, url: &str, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![("accept", "text/event-stream")];
    headers.extend_from_slice(extra);
    http.send(Method::GET, url, &headers, "").await
}

/// [`build`] as a reverse proxy in front of binderd forwards it, for
/// `binder.example.org` over https.
async fn forwarded_build(http: &Http, url: &str) -> Answer {
    let forwarded = [
        ("x-forwarded-host", "binder.example.org"),
        ("x-forwarded-proto", "https"),
    ];
    build(http, url, &forwarded).await
}

/// The `data:` events of an event-stream body.
fn events(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn build_streams_binderhub_phases_to_a_ready_url_and_token() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_config("build", |c| c.allow_origin = Some("*".into())).await;
    create_and_fill(&http, &server.url(""), &launchable("reqs", 1, 6)).await;

    // Warm, as thebe 0.9's binder mode asks (through BinderHub's client):
    // an EventSource on a page of another origin, the headers Chromium
    // sends with it (`build` adds `Accept: text/event-stream`).
    let a = build(
        &http,
        &server.url(BUILD),
        &[
            ("origin", "http://page.example"),
            ("referer", "http://page.example/book/intro.html"),
            ("cache-control", "no-cache"),
            ("sec-fetch-mode", "cors"),
            ("sec-fetch-dest", "empty"),
            ("sec-fetch-site", "cross-site"),
        ],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["content-type"], "text/event-stream");
    assert_eq!(a.headers["access-control-allow-origin"], "*");
    let ev = events(&a.body);
    let phases: Vec<&str> = ev.iter().map(|e| e["phase"].as_str().unwrap()).collect();
    assert_eq!(
        phases,
        ["built", "launching", "launching", "ready"],
        "{}",
        a.body
    );
    assert_eq!(ev[0]["imageName"], "binderd:reqs");
    assert!(
        ev[2]["message"].as_str().unwrap().contains("kept warm"),
        "{}",
        a.body
    );
    let ready = &ev[3];
    for field in [
        "message",
        "url",
        "token",
        "image",
        "repo_url",
        "binder_ref_url",
        "binder_launch_host",
        "binder_request",
        "binder_persistent_request",
    ] {
        assert!(ready[field].is_string(), "{field} missing: {ready}");
    }
    let url = ready["url"].as_str().unwrap();
    let token = ready["token"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("http://{}/user/{token}/", server.addr)),
        "{ready}"
    );
    assert_eq!(
        ready["binder_request"],
        "v2/gh/binder-examples/requirements/HEAD"
    );
    let status = http.get(&format!("{url}api/status")).await;
    assert_eq!(status.status, 200, "{}", status.body);

    // Cold: nothing is warm for this repository; the stream waits for it,
    // saying when the container is up (its server answers 1 s later).
    let mut cold = standin_binding("coldreqs", 0, 2);
    cold["repo"] = json!("https://github.com/binder-examples/cold");
    cold["content"] = json!({"from": "image"});
    cold["command"] = json!([
        "sh",
        "-c",
        format!(
            "sleep 1; exec {} --port {{port}} --base-url {{base_url}}",
            standin()
        )
    ]);
    create_binding(&http, &server.url(""), &cold).await;
    let a = build(
        &http,
        &server.url("/build/gh/binder-examples/cold/main"),
        &[],
    )
    .await;
    let cold_events = events(&a.body);
    let phases: Vec<Value> = cold_events.iter().map(|e| e["phase"].clone()).collect();
    assert_eq!(
        phases,
        ["built", "launching", "launching", "launching", "ready"],
        "{}",
        a.body
    );
    for (i, says) in [(2, "Starting a server for you"), (3, "its container is up")] {
        assert!(
            cold_events[i]["message"].as_str().unwrap().contains(says),
            "{}",
            a.body
        );
    }

    // Behind a trusted proxy, the forwarded host and scheme make the URL.
    let a = forwarded_build(&http, &server.url(BUILD)).await;
    let ready = events(&a.body).pop().unwrap();
    assert!(
        ready["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://{}/", server.addr)),
        "an untrusted peer's forwarded host is ignored: {ready}"
    );

    // CORS preflight, as a page's EventSource (or fetch) would send it.
    let pre = http
        .send(
            Method::OPTIONS,
            &server.url(BUILD),
            &[
                ("origin", "http://page.example"),
                ("access-control-request-method", "GET"),
            ],
            "",
        )
        .await;
    assert_eq!(pre.status, 204);
    assert_eq!(pre.headers["access-control-allow-origin"], "*");
    // A launch hands out a binder: HEAD is not one.
    let head = http.call(Method::HEAD, &server.url(BUILD), None).await;
    assert_eq!(head.status, 405);
    assert_eq!(head.headers["allow"], "GET");
    server.stop().await;
}

#[tokio::test]
async fn unknown_repositories_and_full_pools_are_failed_events() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_config("build-fail", |c| {
        c.public_url = Some("https://binder.example.org/".into())
    })
    .await;
    create_and_fill(&http, &server.url(""), &launchable("one", 1, 1)).await;
    for (path, says) in [
        (
            "/build/gh/nobody/nothing/HEAD",
            "no binding serves the repository github.com/nobody/nothing",
        ),
        ("/build/zenodo/10.5281/zenodo.1", "not served here"),
        ("/build/gh/only-org", "names no repository"),
    ] {
        let a = build(&http, &server.url(path), &[]).await;
        assert_eq!(a.status, 200, "{path}");
        let ev = events(&a.body);
        assert_eq!(ev.len(), 1, "{}", a.body);
        assert_eq!(ev[0]["phase"], "failed");
        assert!(
            ev[0]["message"].as_str().unwrap().contains(says),
            "{path}: {}",
            a.body
        );
    }
    // The pool's one binder, with the public URL; then the pool is full.
    let ready = events(&build(&http, &server.url(BUILD), &[]).await.body)
        .pop()
        .unwrap();
    assert_eq!(ready["phase"], "ready");
    assert!(ready["url"]
        .as_str()
        .unwrap()
        .starts_with("https://binder.example.org/user/"));
    let full = events(&build(&http, &server.url(BUILD), &[]).await.body)
        .pop()
        .unwrap();
    assert_eq!(full["phase"], "failed", "{full}");
    assert!(
        full["message"].as_str().unwrap().contains("maxPool"),
        "{full}"
    );
    server.stop().await;
}

#[tokio::test]
async fn v2_links_land_in_the_binder_at_the_asked_path() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("v2").await;
    create_and_fill(&http, &server.url(""), &launchable("lnk", 2, 6)).await;
    let v2 = "/v2/gh/binder-examples/requirements/HEAD";
    let pool = server.url("");
    for (query, lands) in [
        ("?urlpath=lab", "lab"),
        ("?labpath=notebooks%2Fx.ipynb", "lab/tree/notebooks/x.ipynb"),
        ("?filepath=y.ipynb", "tree/y.ipynb"),
        ("", ""),
    ] {
        wait_pool(&http, &pool, "lnk", 20, |p| p["available"] == 2).await;
        let a = http.get(&server.url(&format!("{v2}{query}"))).await;
        assert_eq!(a.status, 302, "{query}: {}", a.body);
        let to = a.headers["location"].to_str().unwrap();
        let (path, token) = to.split_once("?token=").expect("the token in the location");
        assert!(
            path.starts_with("/user/") && path.ends_with(&format!("/{lands}")),
            "{query}: {to}"
        );
        assert!(path.starts_with(&format!("/user/{token}/")), "{to}");
        assert_eq!(http.get(&server.url(to)).await.status, 200, "{to}");
    }
    // Nothing serves it: a page for a browser, JSON for others.
    let gone = "/v2/gh/nobody/nothing/HEAD";
    assert_error(&http.get(&server.url(gone)).await, 404);
    let page = http
        .send(
            Method::GET,
            &server.url(gone),
            &[("accept", "text/html")],
            "",
        )
        .await;
    assert_eq!(page.status, 404);
    assert!(page.body.contains("<h1>404"), "{}", page.body);
    server.stop().await;
}

#[tokio::test]
async fn a_cold_v2_launch_shows_a_page_until_the_server_answers() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("v2-cold").await;
    let mut slow = launchable("slow", 0, 2);
    // Answers 1.5 s after it starts.
    slow["command"] = json!([
        "sh",
        "-c",
        format!(
            "sleep 1.5; exec {} --port {{port}} --base-url {{base_url}}",
            standin()
        )
    ]);
    create_binding(&http, &server.url(""), &slow).await;
    let mut url = server.url("/v2/gh/binder-examples/requirements/HEAD?urlpath=api/status");
    let mut pages = 0;
    let landed = loop {
        let a = http.get(&url).await;
        if a.status == 302 {
            break a.headers["location"].to_str().unwrap().to_owned();
        }
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.body.contains("Starting your server"), "{}", a.body);
        // The page refreshes to the same launch, holding its binder.
        let next = a
            .body
            .split("url=")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .replace("&amp;", "&");
        assert!(next.contains("binder="), "{next}");
        url = server.url(&next);
        pages += 1;
        assert!(pages < 100, "never ready");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(pages >= 1, "it was cold");
    assert!(landed.contains("/api/status?token="), "{landed}");
    assert_eq!(http.get(&server.url(&landed)).await.status, 200);
    let pool = http.get(&server.url("/pools/slow")).await.json();
    assert_eq!(pool["running"], 1, "one binder for the whole wait: {pool}");
    server.stop().await;
}

/// A cold `/build` quiet longer than `event_keepalive_seconds` gets
/// `:heartbeat` comments (as BinderHub sends), so a proxy with a short read
/// timeout does not cut it; the events around them are whole.
#[tokio::test]
async fn a_long_cold_build_stream_sends_keepalive_comments() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_config("build-keepalive", |c| {
        c.event_keepalive = std::time::Duration::from_secs(1);
    })
    .await;
    let mut slow = launchable("slowbuild", 0, 2);
    // Answers 3 s after it starts: three quiet seconds on the stream.
    slow["command"] = json!([
        "sh",
        "-c",
        format!(
            "sleep 3; exec {} --port {{port}} --base-url {{base_url}}",
            standin()
        )
    ]);
    create_binding(&http, &server.url(""), &slow).await;
    let a = build(&http, &server.url(BUILD), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let comments = a.body.matches(":heartbeat\n\n").count();
    assert!(comments >= 2, "{comments} keepalive comments: {}", a.body);
    let ev = events(&a.body);
    assert_eq!(ev.last().unwrap()["phase"], "ready", "{}", a.body);
    let ready_at = a.body.find("\"phase\":\"ready\"").unwrap();
    assert!(
        a.body[..ready_at].contains(":heartbeat"),
        "the comments came while it started: {}",
        a.body
    );
    server.stop().await;
}

/// Behind a reverse proxy binderd trusts, the URL in `ready` is the one the
/// reader's browser used.
#[tokio::test]
async fn a_trusted_proxy_s_forwarded_host_and_scheme_make_the_url() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_config("build-proxied", |c| {
        c.rate_limit.trusted_proxies = vec!["127.0.0.1".parse().unwrap()]
    })
    .await;
    create_and_fill(&http, &server.url(""), &launchable("behind", 1, 3)).await;
    let a = forwarded_build(&http, &server.url(BUILD)).await;
    let ready = events(&a.body).pop().unwrap();
    assert!(
        ready["url"]
            .as_str()
            .unwrap()
            .starts_with("https://binder.example.org/user/"),
        "{ready}"
    );
    assert_eq!(ready["binder_launch_host"], "https://binder.example.org/");
    server.stop().await;
}

#[tokio::test]
async fn versions_and_health_answer_as_binderhub() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("hub-probes").await;
    let v = http.get(&server.url("/versions")).await;
    assert_eq!(v.status, 200);
    assert!(v.json()["builder"].is_string() && v.json()["binderhub"].is_string());
    assert_eq!(v.json()["builder_info"]["builds"], false, "{}", v.body);
    let h = http.get(&server.url("/health")).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["ok"], true);
    assert_eq!(h.json()["checks"][0]["ok"], true);
    server.stop().await;
}

/// What BinderHub's clients and test suite expect beyond the happy path:
/// no launch without `Accept: text/event-stream` (a crawler following
/// `/build` links), `build_only` launches nothing, and Binder's legacy
/// `/repo/...` links redirect to `/v2`.
#[tokio::test]
async fn only_event_stream_clients_launch_build_only_launches_nothing_and_legacy_links_redirect() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("hub-second").await;
    create_and_fill(&http, &server.url(""), &launchable("hub", 2, 4)).await;
    let untouched = |p: &Value| p["available"] == 2 && p["running"] == 2;

    // A crawler: one failed event, status 400 named, nothing handed out.
    for accept in [None, Some("text/html"), Some("*/*")] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let a = http
            .send(Method::GET, &server.url(BUILD), &headers, "")
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let ev = events(&a.body);
        assert_eq!(ev.len(), 1, "{accept:?}: {}", a.body);
        assert_eq!(ev[0]["phase"], "failed");
        assert_eq!(ev[0]["status_code"], 400);
        assert_eq!(
            ev[0]["message"],
            "Missing Accept header: text/event-stream\n"
        );
    }
    let pool = http.get(&server.url("/pools/hub")).await.json();
    assert!(untouched(&pool), "a crawler took a binder: {pool}");

    // build_only: built, then ready without a server.
    let a = build(&http, &server.url(&format!("{BUILD}?build_only=true")), &[]).await;
    let ev = events(&a.body);
    let phases: Vec<&str> = ev.iter().map(|e| e["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["built", "ready"], "{}", a.body);
    assert!(ev[1].get("url").is_none(), "{}", a.body);
    let pool = http.get(&server.url("/pools/hub")).await.json();
    assert!(untouched(&pool), "build_only handed out a binder: {pool}");

    // Legacy links, spelled as BinderHub's own suite expects
    // (binderhub/tests/test_legacy.py).
    for (path, to) in [
        ("/repo/org/proj", "/v2/gh/org/proj/master"),
        ("/repo/org/proj/", "/v2/gh/org/proj/master"),
        (
            "/repo/org/proj/notebooks/a.ipynb",
            "/v2/gh/org/proj/master?urlpath=%2Fnotebooks%2Fa.ipynb",
        ),
        // A name with `&` and an escaped space stays one path.
        (
            "/repo/org/proj/a&b%20c.ipynb",
            "/v2/gh/org/proj/master?urlpath=%2Fa%26b%2520c.ipynb",
        ),
    ] {
        let a = http.get(&server.url(path)).await;
        assert_eq!(a.status, 302, "{path}: {}", a.body);
        assert_eq!(a.headers["location"], to, "{path}");
    }
    assert_error(&http.get(&server.url("/repo/only-org")).await, 404);
    server.stop().await;
}
