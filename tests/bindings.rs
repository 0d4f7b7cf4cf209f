//! Binding CRUD, auth and error answers, over HTTP against a running binderd.

mod common;

use bytes::Bytes;
use common::*;
use http::Method;
use serde_json::json;

#[tokio::test]
async fn binding_crud_and_its_errors() {
    let Harness { data, server, http } = Harness::start("crud").await;
    let url = |p: &str| server.url(p);

    // Create: admin only on the process backend; anonymous 401; wrong key 401.
    let body = standin_binding("CodeNeuro-Notebooks", 0, 3);
    assert_error(&http.post_json(&url("/bindings"), None, &body).await, 401);
    assert_error(
        &http.post_json(&url("/bindings"), Some("nope"), &body).await,
        401,
    );
    assert_error(
        &http.post_json(&url("/bindings"), Some(ALICE), &body).await,
        403,
    );
    let created = http.post_json(&url("/bindings"), Some(ADMIN), &body).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let doc = created.json();
    assert_eq!(doc["name"], "codeneuro-notebooks");
    assert_eq!(doc["owner"], "admin");
    assert_eq!(doc["status"], "ready");
    assert!(doc["created_at"].as_u64().unwrap() > 0);

    // Names are case-insensitive: the same binding, so 409.
    let mut again = body.clone();
    again["name"] = json!("codeneuro-notebooks");
    assert_error(
        &http.post_json(&url("/bindings"), Some(ADMIN), &again).await,
        409,
    );

    // GET / HEAD, with and without trailing slash, any case.
    let got = http.get(&url("/bindings/CODENEURO-notebooks/")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["command"][0], standin());
    let head = http
        .call(Method::HEAD, &url("/bindings/codeneuro-notebooks"), None)
        .await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    let head = http
        .call(Method::HEAD, &url("/bindings/missing"), None)
        .await;
    assert_eq!(head.status, 404);
    assert_error(&http.get(&url("/bindings/missing")).await, 404);
    assert_error(&http.get(&url("/bindings/bad%20name")).await, 400);

    // The seed's two-part form creates `{a}-{b}`.
    let mut two = standin_binding("ignored", 0, 1);
    two.as_object_mut().unwrap().remove("name");
    let a = http
        .post_json(&url("/bindings/Org/repo/"), Some(ADMIN), &two)
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.json()["name"], "org-repo");
    assert_eq!(http.get(&url("/bindings/org/repo")).await.status, 200);
    // A body name that disagrees with the path is refused.
    let a = http
        .post_json(
            &url("/bindings/other"),
            Some(ADMIN),
            &standin_binding("x", 0, 1),
        )
        .await;
    assert_error(&a, 400);

    // Bad input: JSON, unknown fields, names, pool sizes, content type, size.
    let bindings_url = url("/bindings");
    let bad = |v: serde_json::Value| {
        let (http, url) = (&http, &bindings_url);
        async move { http.post_json(url, Some(ADMIN), &v).await }
    };
    assert_error(
        &http
            .send(
                Method::POST,
                &url("/bindings"),
                &[
                    ("authorization", ADMIN),
                    ("content-type", "application/json"),
                ],
                "{not json",
            )
            .await,
        400,
    );
    let mut unknown = standin_binding("u", 0, 1);
    unknown["colour"] = json!("red");
    let a = bad(unknown).await;
    assert_error(&a, 400);
    assert!(a.body.contains("colour"), "{}", a.body);
    assert_error(&bad(standin_binding("../etc", 0, 1)).await, 400);
    assert_error(&bad(standin_binding(&"n".repeat(10_000), 0, 1)).await, 400);
    assert_error(&bad(standin_binding("p", 5, 2)).await, 400);
    assert_error(&bad(standin_binding("p", 0, 99_999_999)).await, 400);
    assert_error(
        &bad(json!({"name": "p", "command": ["x"], "pool": {"max": 1e30}})).await,
        400,
    );
    assert_error(&bad(json!({"name": "noimage"})).await, 400);
    assert_error(
        &http
            .send(
                Method::POST,
                &url("/bindings"),
                &[("authorization", ADMIN), ("content-type", "text/html")],
                body.to_string(),
            )
            .await,
        415,
    );
    let huge = "x".repeat(2 << 20);
    assert_error(
        &http
            .send(
                Method::POST,
                &url("/bindings"),
                &[
                    ("authorization", ADMIN),
                    ("content-type", "application/json"),
                ],
                huge,
            )
            .await,
        413,
    );
    // Wrong method: 405 with Allow.
    let a = http
        .call(Method::PATCH, &url("/bindings/org-repo"), None)
        .await;
    assert_error(&a, 405);
    assert!(a.headers["allow"].to_str().unwrap().contains("PUT"));
    assert_error(&http.get(&url("/nowhere")).await, 404);

    // Visibility: a private binding is invisible to anonymous callers.
    let mut private = standin_binding("private-one", 0, 1);
    private["public"] = json!(false);
    private["administrators"] = json!(["alice"]);
    assert_eq!(
        http.post_json(&url("/bindings"), Some(ADMIN), &private)
            .await
            .status,
        201
    );
    assert_error(&http.get(&url("/bindings/private-one")).await, 404);
    let names = |a: Answer| -> Vec<String> {
        a.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let anon = names(http.get(&url("/bindings")).await);
    assert!(!anon.contains(&"private-one".to_string()) && anon.contains(&"org-repo".to_string()));
    let alice = names(
        http.send(
            Method::GET,
            &url("/bindings"),
            &[("authorization", &format!("Bearer {ALICE}"))],
            Bytes::new(),
        )
        .await,
    );
    assert!(alice.contains(&"private-one".to_string()), "{alice:?}");
    let bob = names(
        http.send(
            Method::GET,
            &url("/bindings"),
            &[("authorization", &format!("token {BOB}"))],
            Bytes::new(),
        )
        .await,
    );
    assert!(!bob.contains(&"private-one".to_string()));

    // PUT: replace (200) by the owner, create (201); others 403.
    let mut replaced = standin_binding("org-repo", 0, 2);
    replaced["env"] = json!({"GREETING": "hi"});
    let put = |key: &'static str, name: &str, v: serde_json::Value| {
        let url = server.url(&format!("/bindings/{name}"));
        let http = &http;
        async move {
            http.send(
                Method::PUT,
                &url,
                &[("authorization", key), ("content-type", "application/json")],
                v.to_string(),
            )
            .await
        }
    };
    let a = put(ADMIN, "org-repo", replaced.clone()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["env"]["GREETING"], "hi");
    assert_eq!(a.json()["pool"]["max"], 2);
    assert_error(&put(ALICE, "org-repo", replaced.clone()).await, 403);
    assert_eq!(
        put(ADMIN, "fresh", standin_binding("fresh", 0, 1))
            .await
            .status,
        201
    );

    // DELETE: anonymous 401, not the owner 403, owner 202, then 404.
    let del = |key: Option<&'static str>, name: &str| {
        let url = server.url(&format!("/bindings/{name}"));
        let http = &http;
        async move {
            let headers: Vec<(&str, &str)> =
                key.map(|k| vec![("authorization", k)]).unwrap_or_default();
            http.send(Method::DELETE, &url, &headers, Bytes::new())
                .await
        }
    };
    assert_error(&del(None, "fresh").await, 401);
    assert_error(&del(Some(ALICE), "fresh").await, 403);
    assert_eq!(del(Some(ADMIN), "fresh").await.status, 202);
    assert_error(&http.get(&url("/bindings/fresh")).await, 404);
    assert_error(&del(Some(ADMIN), "fresh").await, 404);

    server.stop().await;

    // Bindings created through the API survive a restart.
    let server = Server::start(test_config(&data)).await;
    let a = http.get(&server.url("/bindings/org-repo")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["env"]["GREETING"], "hi");
    assert_eq!(a.json()["owner"], "admin");
    assert_error(&http.get(&server.url("/bindings/fresh")).await, 404);
    server.stop().await;
}

#[tokio::test]
async fn service_endpoints_and_cors() {
    let data = DataDir::new("svc");
    let mut config = test_config(&data);
    config.allow_origin = Some("https://pages.example".into());
    let server = Server::start(config).await;
    let http = Http::new();

    let a = http.get(&server.url("/healthcheck")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["status"], "available");
    assert_eq!(a.json()["backend"], "process");
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://pages.example"
    );

    let a = http.get(&server.url("/configuration/")).await;
    assert_eq!(a.status, 200);
    assert!(
        !a.body.contains(ADMIN) && !a.body.contains(ALICE),
        "{}",
        a.body
    );
    assert_eq!(a.json()["api_keys"], 3);

    let a = http
        .send(
            Method::OPTIONS,
            &server.url("/api/spawn/"),
            &[("origin", "https://pages.example")],
            Bytes::new(),
        )
        .await;
    assert_eq!(a.status, 204);
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://pages.example"
    );
    assert!(a.headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("Authorization"));
    // Errors carry CORS too, so the page can read them.
    let a = http.get(&server.url("/bindings/none")).await;
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://pages.example"
    );
    server.stop().await;
}
