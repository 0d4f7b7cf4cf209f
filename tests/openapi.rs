//! The OpenAPI document against the running server: every documented
//! operation is routed (the document cannot drift from the router), the
//! document validates (openapi-spec-validator), and schemathesis's generated
//! requests find no 5xx and no answer the document does not describe.

mod common;

use std::process::Command;

use common::*;
use http::Method;

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("openapi-routes").await;
    let doc = http.get(&server.url("/openapi.json")).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.headers["content-type"], "application/json");
    let doc = doc.json();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{}", paths.len());
    let mut checked = 0;
    for (path, ops) in paths {
        let concrete = path
            .replace("{name}", "some-binding")
            .replace("{a}", "org")
            .replace("{b}", "repo")
            .replace("{binding}", "some-binding")
            .replace("{id}", &"0".repeat(32))
            .replace("{token}", &"0".repeat(32))
            .replace("{path}", "tree");
        for method in ops.as_object().unwrap().keys() {
            let m: Method = method.to_uppercase().parse().unwrap();
            let a = http
                .call(m.clone(), &server.url(&concrete), Some(ADMIN))
                .await;
            assert_ne!(
                a.status, 405,
                "{method} {path} is documented but not allowed: {}",
                a.body
            );
            assert!(
                !a.body.contains("no route for"),
                "{method} {path} is documented but not routed"
            );
            assert!(
                a.status < 500 || a.status == 502,
                "{method} {path}: {} {}",
                a.status,
                a.body
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked}");
    // And OPTIONS lists exactly what a route answers.
    let a = http
        .call(Method::OPTIONS, &server.url("/pools/x"), None)
        .await;
    assert_eq!(a.status, 204);
    assert_eq!(a.headers["allow"], "GET, HEAD, POST, PUT, OPTIONS");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    if std::env::var("BINDERD_SKIP_SCHEMATHESIS").as_deref() == Ok("1") {
        eprintln!("skipping: BINDERD_SKIP_SCHEMATHESIS=1");
        return;
    }
    let data = DataDir::new("openapi-fuzz");
    let mut config = test_config(&data);
    // The fuzzer's own requests must not be rate limited into monotony.
    config.rate_limit.anonymous_per_minute = 0;
    let server = Server::start(config).await;
    let http = Http::new();
    // Something to find: a public binding (created by the admin; the fuzzer
    // only has a user key, which cannot create commands on this backend).
    // With profiles, one of them for keys only: the fuzzer's choices of
    // profile meet 400s and 403s, never a 5xx.
    let mut fuzz = standin_binding("fuzz", 1, 3);
    fuzz["profiles"] = serde_json::json!([
        {"name": "small"},
        {"name": "large", "keys_only": true, "pool": {"min": 0, "max": 2}},
    ]);
    create_binding(&http, &server.url(""), &fuzz).await;
    let base = server.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/api-check"))
            .args([&base, ALICE, "25"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "scripts/api-check failed:\n{text}");
    assert!(text.contains("passed"), "{text}");
    server.stop().await;
}
