//! Profiles, black-box on the process backend: a binding with two profiles
//! fills a pool for each; a handout of each lands in a binder made from
//! that profile (its environment and its rlimits, read from inside it); an
//! unknown profile is a 400 naming the choices, a `keys_only` one 403
//! without a key; a `PUT` that changes one profile rolls only that pool;
//! the choice works on every launch path, and survives a restart.

mod common;

use common::*;
use http::Method;
use serde_json::{json, Value};

/// A stand-in that writes its `SIZE` and its rlimits into its working dir
/// before it serves them (`file?name=...`).
fn sized_binding(name: &str) -> Value {
    let script = format!(
        "printf %s \"$SIZE\" > size.txt; cat /proc/self/limits > limits.txt; exec {} --port {{port}} --base-url {{base_url}}",
        standin()
    );
    json!({
        "name": name,
        "command": ["sh", "-c", script],
        "public": true,
        "env": {"SIZE": "base"},
        "resources": {"nofile": 200},
        "pool": {"min": 1, "max": 4},
        "start_timeout_seconds": 10,
        "profiles": [
            {"name": "small", "description": "the default", "default": true,
             "env": {"SIZE": "small"}},
            {"name": "large", "description": "more files",
             "env": {"SIZE": "large"}, "resources": {"nofile": 300},
             "pool": {"min": 2, "max": 4}},
            {"name": "staff", "keys_only": true, "env": {"SIZE": "staff"},
             "pool": {"min": 0, "max": 2}},
        ],
    })
}

/// What the binder at `location` says of itself: its `SIZE` and its
/// open-files limit.
async fn inside(http: &Http, base: &str, location: &str) -> (String, String) {
    let size = http
        .get(&format!("{base}{location}file?name=size.txt"))
        .await;
    assert_eq!(size.status, 200, "{}", size.body);
    let limits = http
        .get(&format!("{base}{location}file?name=limits.txt"))
        .await;
    assert_eq!(limits.status, 200, "{}", limits.body);
    let nofile = limits
        .body
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or_default()
        .to_owned();
    (size.body, nofile)
}

/// `/user/{token}/` out of a URL that holds it.
fn user_path(url: &str) -> String {
    let at = url
        .find("/user/")
        .unwrap_or_else(|| panic!("no /user/ in {url}"));
    let token = &url[at + "/user/".len()..][..32];
    format!("/user/{token}/")
}

async fn wait_profiles(http: &Http, base: &str, name: &str, want: &[(&str, u64)]) -> Value {
    let want: Vec<(String, u64)> = want.iter().map(|(p, n)| (p.to_string(), *n)).collect();
    wait_for(60, "every profile's pool filled", || {
        let want = want.clone();
        async move {
            let pool = http.get(&format!("{base}/pools/{name}")).await.json();
            want.iter()
                .all(|(p, n)| pool["profiles"][p]["available"] == *n)
                .then_some(pool)
        }
    })
    .await
}

async fn post(http: &Http, url: &str, key: Option<&str>, body: Option<&Value>) -> Answer {
    match body {
        Some(body) => http.post_json(url, key, body).await,
        None => http.call(Method::POST, url, key).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_profile_fills_its_own_pool_and_a_handout_gets_the_chosen_one() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("profiles-choose").await;
    let base = server.url("");
    create_binding(&http, &base, &sized_binding("course")).await;
    let pool = wait_profiles(&http, &base, "course", &[("small", 1), ("large", 2)]).await;
    // The top level is the binding's own pool, which serves the default.
    assert_eq!(pool["profile"], "small", "{pool}");
    assert_eq!(pool["available"], 1, "{pool}");
    assert_eq!(pool["profiles"]["large"]["minPool"], 2, "{pool}");
    assert_eq!(pool["profiles"]["staff"]["available"], 0, "{pool}");

    // The binding's document is as it was put: its profiles listed.
    let doc = http.get(&server.url("/bindings/course")).await.json();
    assert_eq!(doc["profiles"].as_array().unwrap().len(), 3, "{doc}");
    assert_eq!(doc["env"]["SIZE"], "base", "{doc}");

    // Each way of choosing, each profile: the binder is that profile's.
    let url = server.url("/binders/course");
    for (query, body, key, want_size, want_nofile) in [
        ("", None, None, "small", "200"),
        ("?profile=large", None, None, "large", "300"),
        ("", Some(json!({"profile": "LARGE"})), None, "large", "300"),
        ("", Some(json!({})), None, "small", "200"),
        ("?profile=small", None, None, "small", "200"),
        ("?profile=staff", None, Some(ALICE), "staff", "200"),
    ] {
        let a = post(&http, &format!("{url}{query}"), key, body.as_ref()).await;
        assert!(a.status == 201 || a.status == 202, "{query}: {}", a.body);
        let doc = a.json();
        let id = doc["id"].as_str().unwrap().to_owned();
        let location = ready_location(&http, &base, "course", &id).await;
        assert_eq!(doc["profile"], want_size, "{query}: {doc}");
        let (size, nofile) = inside(&http, &base, &location).await;
        assert_eq!(size, want_size, "{query} {body:?}");
        assert_eq!(nofile, want_nofile, "{query} {body:?}");
    }

    // Attacks: an unknown profile names the choices; a keys-only one is
    // not for anonymous callers, however it is asked for; body and query
    // disagreeing is refused; a bad body is a 400, not the default.
    let a = post(&http, &format!("{url}?profile=huge"), None, None).await;
    assert_error(&a, 400);
    for choice in ["small", "large", "staff"] {
        assert!(a.body.contains(choice), "{}", a.body);
    }
    let a = post(&http, &format!("{url}?profile=staff"), None, None).await;
    assert_error(&a, 403);
    let a = post(&http, &url, None, Some(&json!({"profile": "Staff"}))).await;
    assert_error(&a, 403);
    let a = http.get(&server.url("/spawn/tree?profile=staff")).await;
    assert!(a.status >= 400, "{}", a.body);
    let a = post(
        &http,
        &format!("{url}?profile=small"),
        None,
        Some(&json!({"profile": "large"})),
    )
    .await;
    assert_error(&a, 400);
    let a = post(&http, &url, None, Some(&json!({"profile": 7}))).await;
    assert_error(&a, 400);
    let a = post(
        &http,
        &url,
        None,
        Some(&json!({"profile": "small", "x": 1})),
    )
    .await;
    assert_error(&a, 400);
    let a = http
        .send(
            Method::POST,
            &url,
            &[("content-type", "text/plain")],
            "{\"profile\": \"large\"}",
        )
        .await;
    assert_error(&a, 415);
    // With a key, a warm binder of the keys-only profile: 201 at once.
    let a = http
        .post_json(
            &server.url("/pools/course?profile=staff"),
            Some(ADMIN),
            &json!({"minPool": 1}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    wait_profiles(&http, &base, "course", &[("staff", 1)]).await;
    let a = post(&http, &format!("{url}?profile=staff"), None, None).await;
    assert_error(&a, 403);
    let a = post(&http, &format!("{url}?profile=staff"), Some(BOB), None).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.json()["profile"], "staff", "{}", a.body);
    // A binding without profiles refuses a choice rather than ignoring it.
    create_binding(&http, &base, &standin_binding("plain", 0, 2)).await;
    let a = post(
        &http,
        &server.url("/binders/plain?profile=large"),
        None,
        None,
    )
    .await;
    assert_error(&a, 400);

    // tmpnb's spawn takes it in the body or the query.
    let a = http
        .post_json(
            &server.url("/api/spawn/"),
            None,
            &json!({"binding": "course", "profile": "large"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let spawned = a.json();
    let location = user_path(spawned["url"].as_str().unwrap());
    assert_eq!(inside(&http, &base, &location).await.0, "large");
    let a = http
        .post_json(
            &server.url("/api/spawn/"),
            None,
            &json!({"binding": "course", "profile": "nope"}),
        )
        .await;
    assert_error(&a, 400);

    // The CLI-facing list shows each binder's profile.
    let list = http
        .call(Method::GET, &server.url("/binders/course"), Some(ALICE))
        .await
        .json();
    assert_eq!(list[0]["profile"], "staff", "{list}");
    server.stop().await;
}

/// The launch paths BinderHub clients use take `?profile=` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_links_choose_a_profile() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("profiles-launch").await;
    let base = server.url("");
    let mut binding = sized_binding("launched");
    binding["repo"] = json!("https://github.com/org/course");
    binding["content"] = json!({"from": "image"});
    create_binding(&http, &base, &binding).await;
    wait_profiles(&http, &base, "launched", &[("small", 1), ("large", 2)]).await;

    // /v2: a redirect to the binder.
    let a = http
        .get(&server.url("/v2/gh/org/course/HEAD?profile=large"))
        .await;
    assert!(a.status == 302 || a.status == 303, "{}", a.body);
    let to = a.headers["location"].to_str().unwrap().to_owned();
    assert_eq!(inside(&http, &base, &user_path(&to)).await.0, "large");
    let a = http
        .get(&server.url("/v2/gh/org/course/HEAD?profile=nope"))
        .await;
    assert_eq!(a.status, 400, "{}", a.body);

    // /build: the event stream; an unknown profile is a failed event.
    let stream = |q: &str| {
        let url = server.url(&format!("/build/gh/org/course/HEAD{q}"));
        let http = &http;
        async move {
            http.send(Method::GET, &url, &[("accept", "text/event-stream")], "")
                .await
        }
    };
    let a = stream("?profile=large").await;
    let ready: Value = a
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|e| e["phase"] == "ready")
        .unwrap_or_else(|| panic!("no ready event: {}", a.body));
    let url = ready["url"].as_str().unwrap();
    assert_eq!(inside(&http, &base, &user_path(url)).await.0, "large");
    let a = stream("?profile=nope").await;
    assert!(a.body.contains("\"failed\""), "{}", a.body);
    assert!(a.body.contains("small, large, staff"), "{}", a.body);
    let a = stream("?profile=staff").await;
    assert!(
        a.body.contains("\"failed\"") && a.body.contains("API keys"),
        "{}",
        a.body
    );
    server.stop().await;
}

/// A `PUT` that changes one profile rolls that profile's pool only: the
/// other pools' warm binders stay (same ids); a removed profile's warm
/// binders stop; the profile's pool can be resized on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn putting_one_profile_rolls_only_its_pool() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("profiles-roll").await;
    let base = server.url("");
    let binding = sized_binding("rolled");
    create_binding(&http, &base, &binding).await;
    wait_profiles(&http, &base, "rolled", &[("small", 1), ("large", 2)]).await;
    let starts_before = starts(&http, &base, "rolled").await;
    assert_eq!(
        starts_before.get("").copied(),
        Some(1.0),
        "{starts_before:?}"
    );

    let mut changed = binding.clone();
    changed["profiles"][1]["env"]["SIZE"] = json!("larger");
    let a = http
        .send(
            Method::PUT,
            &server.url("/bindings/rolled"),
            &[
                ("content-type", "application/json"),
                ("authorization", ADMIN),
            ],
            changed.to_string(),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    // The large pool rolls: its warm binders are replaced, the small
    // one's are not (its `updated` never drops).
    eventually(30, "the large pool rolled over (2 new starts)", || {
        let (http, base) = (&http, &base);
        async move { starts(http, base, "rolled").await.get("large").copied() >= Some(4.0) }
    })
    .await;
    // Rolled over: both warm large binders are of the new template.
    wait_for(30, "the large pool rolled over", || {
        let (http, url) = (&http, server.url("/pools/rolled"));
        async move {
            let p = http.get(&url).await.json();
            (p["profiles"]["large"]["updated"] == 2 && p["profiles"]["large"]["available"] == 2)
                .then_some(p)
        }
    })
    .await;
    // The default's pool (the binding's own) started nothing new.
    let starts_after = starts(&http, &base, "rolled").await;
    assert_eq!(
        starts_after.get(""),
        starts_before.get(""),
        "{starts_after:?}"
    );
    assert_eq!(
        starts_after.get("staff"),
        starts_before.get("staff"),
        "{starts_after:?}"
    );
    eventually(30, "a rolled-over large binder", || {
        let (http, base) = (&http, &base);
        async move {
            let (_, loc) = hand_out_profile(http, base, "rolled", "large").await;
            inside(http, base, &loc).await.0 == "larger"
        }
    })
    .await;
    let (_, small) = hand_out_profile(&http, &base, "rolled", "small").await;
    assert_eq!(inside(&http, &base, &small).await.0, "small");

    // Resize one profile's pool on its own.
    let a = http
        .post_json(
            &server.url("/pools/rolled?profile=staff"),
            Some(ADMIN),
            &json!({"minPool": 1}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["profile"], "staff", "{}", a.body);
    wait_profiles(&http, &base, "rolled", &[("staff", 1)]).await;

    // A profile removed: its pool is gone from the binding, a choice of it
    // is a 400.
    let mut fewer = changed.clone();
    fewer["profiles"].as_array_mut().unwrap().remove(2);
    let a = http
        .send(
            Method::PUT,
            &server.url("/bindings/rolled"),
            &[
                ("content-type", "application/json"),
                ("authorization", ADMIN),
            ],
            fewer.to_string(),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let pool = http.get(&server.url("/pools/rolled")).await.json();
    assert!(pool["profiles"].get("staff").is_none(), "{pool}");
    // Its series leave /metrics; the others' stay.
    let after = starts(&http, &base, "rolled").await;
    assert!(!after.contains_key("staff"), "{after:?}");
    assert!(
        after.contains_key("large") && after.contains_key(""),
        "{after:?}"
    );
    let a = http
        .call(
            Method::POST,
            &server.url("/binders/rolled?profile=staff"),
            Some(ALICE),
        )
        .await;
    assert_error(&a, 400);
    server.stop().await;
}

/// `binderd_starts_total` of a binding's pools, by profile label (`""`:
/// the binding's own pool).
async fn starts(http: &Http, base: &str, binding: &str) -> std::collections::BTreeMap<String, f64> {
    let page = http
        .call(Method::GET, &format!("{base}/metrics"), Some(ADMIN))
        .await
        .body;
    let mut out = std::collections::BTreeMap::new();
    for line in page
        .lines()
        .filter(|l| l.starts_with("binderd_starts_total{"))
    {
        if !line.contains(&format!("binding=\"{binding}\"")) {
            continue;
        }
        let profile = line
            .split("profile=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_owned();
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        out.insert(profile, value);
    }
    out
}

/// `POST /binders/{b}?profile=p`, asserting a handout; its id and location
/// once ready.
async fn hand_out_profile(
    http: &Http,
    base: &str,
    binding: &str,
    profile: &str,
) -> (String, String) {
    let a = http
        .call(
            Method::POST,
            &format!("{base}/binders/{binding}?profile={profile}"),
            None,
        )
        .await;
    assert!(a.status == 201 || a.status == 202, "{}", a.body);
    let id = a.json()["id"].as_str().unwrap().to_owned();
    let location = ready_location(http, base, binding, &id).await;
    (id, location)
}

/// The binder's location once it is ready.
async fn ready_location(http: &Http, base: &str, binding: &str, id: &str) -> String {
    wait_for(20, "the binder ready", || {
        let url = format!("{base}/binders/{binding}/{id}");
        async move {
            http.get(&url).await.json()["location"]
                .as_str()
                .map(str::to_owned)
        }
    })
    .await
}

/// A profile's template is checked as a binding's is (what a user key may
/// not do through a profile: tests/kubernetes.rs, where user keys create
/// bindings at all).
#[tokio::test]
async fn a_profiles_template_is_checked_as_a_binding_is() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("profiles-checked").await;
    for (change, says) in [
        (json!({"pool": {"min": 5, "max": 1}}), "profile 'small'"),
        (json!({"resources": {"memory": "512m"}}), "512Mi"),
        (json!({"env": {"BINDERD_API_KEY": "x"}}), "reserved"),
        (json!({"oops": 1}), "unknown field"),
    ] {
        let mut bad = sized_binding("bad");
        for (k, v) in change.as_object().unwrap() {
            bad["profiles"][0][k] = v.clone();
        }
        let a = http
            .post_json(&server.url("/bindings"), Some(ADMIN), &bad)
            .await;
        assert_error(&a, 400);
        assert!(a.body.contains(says), "{change}: {}", a.body);
    }
    assert_eq!(http.get(&server.url("/bindings/bad")).await.status, 404);
    // A profile whose binders cannot start puts the binding in `error`,
    // naming the profile (the default's pool is fine).
    let mut broken = sized_binding("broken");
    broken["profiles"][1]["command"] = json!(["sh", "-c", "exit 3"]);
    create_binding(&http, &server.url(""), &broken).await;
    let doc = wait_for(30, "the binding in error", || {
        let (http, url) = (&http, server.url("/bindings/broken"));
        async move {
            let doc = http.get(&url).await.json();
            (doc["status"] == "error").then_some(doc)
        }
    })
    .await;
    assert!(
        doc["message"].as_str().unwrap().contains("profile 'large'"),
        "{doc}"
    );
    server.stop().await;
}

/// SIGKILL and restart (the real binary): a binder handed out from a
/// profile keeps its profile, location and pool; each profile's pool is
/// rebuilt with the size it was given (`?profile=` resize), its pooled
/// binders rejoin it rather than another profile's.
#[tokio::test]
async fn a_restart_keeps_each_profiles_binders_and_sizes() {
    let data = DataDir::new("profiles-restart");
    let http = Http::new();
    let mut p = Process::spawn(&data, &[], &[]);
    let base = p.url("");
    create_binding(&http, &base, &sized_binding("kept")).await;
    wait_profiles(&http, &base, "kept", &[("small", 1), ("large", 2)]).await;
    let (id, location) = hand_out_profile(&http, &base, "kept", "large").await;
    let a = http
        .post_json(
            &p.url("/pools/kept?profile=large"),
            Some(ADMIN),
            &json!({"minPool": 3}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    wait_profiles(&http, &base, "kept", &[("small", 1), ("large", 3)]).await;
    p.sigkill();

    let p = Process::spawn(&data, &[], &[]);
    let base = p.url("");
    let got = http.get(&p.url(&format!("/binders/kept/{id}"))).await;
    assert_eq!(got.status, 200, "{}", got.body);
    let doc = got.json();
    assert_eq!(doc["state"], "ready", "{doc}");
    assert_eq!(doc["profile"], "large", "{doc}");
    assert_eq!(doc["location"], location.as_str(), "{doc}");
    assert_eq!(inside(&http, &base, &location).await.0, "large");
    let pool = wait_profiles(&http, &base, "kept", &[("small", 1), ("large", 3)]).await;
    // The assigned one and the three pooled: nothing started twice.
    assert_eq!(pool["profiles"]["large"]["running"], 4, "{pool}");
    assert_eq!(pool["profiles"]["small"]["running"], 1, "{pool}");
    assert_eq!(pool["profiles"]["large"]["minPool"], 3, "{pool}");
    for _ in 0..3 {
        let (_, loc) = hand_out_profile(&http, &base, "kept", "large").await;
        assert_eq!(inside(&http, &base, &loc).await.0, "large");
    }
    let (_, loc) = hand_out_profile(&http, &base, "kept", "small").await;
    assert_eq!(inside(&http, &base, &loc).await.0, "small");
    drop(p);
}

/// Attack on the bookkeeping: `PUT`s of one binding racing each other, each
/// adding the same new profile with another template. Applied one at a
/// time, they leave exactly one pool per profile: every process running
/// for this data dir is one a pool counts (a second pool made for the same
/// profile would keep warm binders nobody counts or retires).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_puts_leave_one_pool_per_profile() {
    let Harness { data, server, http } = Harness::start("profiles-race").await;
    let base = server.url("");
    let mut binding = standin_binding("race", 0, 2);
    binding["profiles"] = json!([{"name": "base"}]);
    create_binding(&http, &base, &binding).await;
    for round in 0..8 {
        let puts = (0..4).map(|i| {
            let mut b = binding.clone();
            b["profiles"] = json!([
                {"name": "base"},
                {"name": format!("x{round}"), "env": {"WHICH": format!("{i}")},
                 "pool": {"min": 1, "max": 1}},
            ]);
            let (http, url) = (&http, server.url("/bindings/race"));
            async move {
                http.send(
                    Method::PUT,
                    &url,
                    &[
                        ("content-type", "application/json"),
                        ("authorization", ADMIN),
                    ],
                    b.to_string(),
                )
                .await
            }
        });
        for a in futures_util::future::join_all(puts).await {
            assert_eq!(a.status, 200, "{}", a.body);
        }
    }
    // The last round's profile fills; the earlier rounds' were removed.
    let pool = wait_profiles(&http, &base, "race", &[("x7", 1)]).await;
    assert_eq!(pool["profiles"].as_object().unwrap().len(), 2, "{pool}");
    eventually(20, "only the counted binders running", || {
        let (http, base, data) = (&http, &base, &data);
        async move {
            let pool = http.get(&format!("{base}/pools/race")).await.json();
            let counted: u64 = pool["profiles"]
                .as_object()
                .unwrap()
                .values()
                .map(|p| p["running"].as_u64().unwrap())
                .sum();
            data.running_binders() as u64 == counted
        }
    })
    .await;
    server.stop().await;
}
