//! Pools that follow demand, on the process backend with the stand-in: a
//! rush grows a `warm_target` pool past `minPool` and the cool-down shrinks
//! it back; a `PUT` during steady handouts rolls the warm binders over by
//! surge and never answers cold while a warm binder of either template
//! exists; `warm_target` out of range is a 400 naming the field.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rush_grows_the_pool_and_the_cool_down_shrinks_it_back() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_config("demand", |c| c.start_concurrency = 16).await;
    let mut body = standin_binding("rush", 2, 100);
    body["pool"]["warm_target"] = json!(0.99);
    body["pool"]["cooldown_seconds"] = json!(3);
    // Starts take a while, as real servers do: the pool must look ahead.
    body["command"] = json!([
        "sh",
        "-c",
        format!(
            "sleep 0.5; exec {} --port {{port}} --base-url {{base_url}}",
            standin()
        )
    ]);
    create_and_fill(&http, &server.url(""), &body).await;
    let quiet = http.get(&server.url("/pools/rush")).await.json();
    assert_eq!(quiet["targetPool"], 2, "{quiet}");

    // A rush: 20 handouts a second for 3 s.
    let mut peak = 0;
    let mut served = 0;
    for _ in 0..30 {
        let url = server.url("/binders/rush");
        let answers =
            futures_util::future::join_all((0..2).map(|_| http.call(Method::POST, &url, None)))
                .await;
        served += answers
            .iter()
            .filter(|a| a.status == 201 || a.status == 202)
            .count();
        let p = http.get(&server.url("/pools/rush")).await.json();
        peak = peak.max(p["targetPool"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, 60);
    assert!(
        peak > 2,
        "the target never rose above minPool (peak {peak})"
    );
    let grown = http.get(&server.url("/pools/rush")).await.json();
    assert!(
        grown["available"].as_u64().unwrap() + grown["starting"].as_u64().unwrap() > 2,
        "{grown}"
    );

    // Quiet again: after the cool-down the target and the warm pool go back
    // to minPool; the 60 handed-out binders are untouched.
    let back = wait_pool(&http, &server.url(""), "rush", 30, |p| {
        p["targetPool"] == 2 && p["available"] == 2 && p["running"] == 62
    })
    .await;
    assert_eq!(back["starting"], 0, "{back}");
    server.stop().await;
}

/// A cold handout is the surest sign a pool is short: the demand estimate
/// takes it in at once, not at the reconciler's next look a second later
/// (in a rush that speeds up, that second cost a reader a warm binder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_handout_raises_the_target_at_once() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("demand-cold").await;
    let mut body = standin_binding("empty", 0, 10);
    body["pool"]["warm_target"] = json!(0.99);
    create_and_fill(&http, &server.url(""), &body).await;
    let quiet = http.get(&server.url("/pools/empty")).await.json();
    assert_eq!(quiet["targetPool"], 0, "{quiet}");
    // Right after the reconciler's look at the new binding: its next one
    // is a second away.
    let cold = http
        .call(Method::POST, &server.url("/binders/empty"), None)
        .await;
    assert_eq!(cold.status, 202, "{}", cold.body);
    let began = std::time::Instant::now();
    let mut target = 0;
    while began.elapsed() < Duration::from_millis(600) {
        let p = http.get(&server.url("/pools/empty")).await.json();
        target = p["targetPool"].as_u64().unwrap();
        if target > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        target > 0,
        "the target stayed at {target} for 600 ms after a cold handout"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_change_rolls_over_without_a_cold_handout() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("rollout").await;
    let mut body = standin_binding("roll", 3, 100);
    body["command"] = json!([
        "sh",
        "-c",
        format!(
            "sleep 0.3; exec {} --port {{port}} --base-url {{base_url}}",
            standin()
        )
    ]);
    create_and_fill(&http, &server.url(""), &body).await;
    let mut changed = body.clone();
    changed["env"] = json!({"TEMPLATE": "two"});
    let put = http
        .send(
            Method::PUT,
            &server.url("/bindings/roll"),
            &[
                ("authorization", ADMIN),
                ("content-type", "application/json"),
            ],
            changed.to_string(),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    // Right after the PUT the old warm binders still serve.
    let p = http.get(&server.url("/pools/roll")).await.json();
    assert_eq!(p["available"], 3, "{p}");
    assert_eq!(p["updated"], 0, "{p}");

    // Steady handouts (one every 300 ms: a refill of ~0.6 s keeps up with
    // three warm) while it rolls out: every one is warm.
    let mut rolled = false;
    for _ in 0..20 {
        let a = http
            .call(Method::POST, &server.url("/binders/roll"), None)
            .await;
        assert_eq!(
            a.status, 201,
            "a cold handout during the rollout: {}",
            a.body
        );
        let p = http.get(&server.url("/pools/roll")).await.json();
        if p["updated"] == p["available"] && p["updated"].as_u64() > Some(0) {
            rolled = true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(rolled, "the rollout never finished");
    // Warm binders now run the new template.
    let p = wait_pool(&http, &server.url(""), "roll", 20, |p| {
        p["available"] == 3 && p["updated"] == 3
    })
    .await;
    assert_eq!(p["targetPool"], 3);
    let (_, location) = hand_out(&http, &server.url(""), "roll", None).await;
    let env = http
        .get(&server.url(&format!("{location}api/status")))
        .await
        .json();
    assert!(
        env.to_string().contains("two") || env["env"].is_null(),
        "{env}"
    );
    server.stop().await;
}

#[tokio::test]
async fn warm_targets_out_of_range_are_a_400_naming_the_field() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("demand-bad").await;
    for bad in [json!(0), json!(1.5), json!(-0.1)] {
        let mut body = standin_binding("bad", 1, 2);
        body["pool"]["warm_target"] = bad.clone();
        let a = http
            .post_json(&server.url("/bindings"), Some(ADMIN), &body)
            .await;
        assert_error(&a, 400);
        assert!(a.body.contains("pool.warm_target"), "{bad}: {}", a.body);
    }
    let mut body = standin_binding("bad", 3, 2);
    body["pool"]["warm_target"] = json!(0.9);
    let a = http
        .post_json(&server.url("/bindings"), Some(ADMIN), &body)
        .await;
    assert_error(&a, 400);
    assert!(a.body.contains("pool.min"), "{}", a.body);
    server.stop().await;
}
