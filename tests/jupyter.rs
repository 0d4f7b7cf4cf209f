//! A real Jupyter server end to end on the process backend: a kernel started
//! and run through binderd's proxy only (HTTP + WebSocket), by a real client
//! library (websocket-client, in tests/jupyter_client.py), also along thebe's
//! path (POST /api/spawn/ as text/plain, doubled slashes), and as a thebe
//! page on another origin sends it (CORS preflight, `//user/{token}//`).
//!
//! The venv comes from scripts/jupyter-venv (jupyter-server and ipykernel from
//! PyPI, cached). Without it these tests fail, unless BINDERD_SKIP_JUPYTER=1.

mod common;

use common::*;
use http::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_runs_code_through_the_proxy_and_the_thebe_path() {
    let Some(venv) = venv() else { return };
    let data = DataDir::new("jupyter");
    let mut config = test_config(&data);
    config.allow_origin = Some("*".into());
    let server = Server::start(config).await;
    let http = Http::new();
    create_binding(
        &http,
        &server.url(""),
        &jupyter_binding(&venv, "notebook", 2),
    )
    .await;
    wait_pool(&http, &server.url(""), "notebook", 90, |p| {
        p["available"] == 2
    })
    .await;

    // The Binder API path.
    let b = http
        .call(Method::POST, &server.url("/binders/notebook"), None)
        .await;
    assert_eq!(b.status, 201, "{}", b.body);
    let location = b.json()["location"].as_str().unwrap().to_owned();
    let status = http
        .get(&server.url(&format!("{location}api/status")))
        .await;
    assert_eq!(status.status, 200, "{}", status.body);
    let base = server.url("");
    let result = tokio::task::spawn_blocking({
        let (venv, base, location) = (venv.clone(), base.clone(), location.clone());
        move || run_client(&venv, &[&base, "binders", &location])
    })
    .await
    .unwrap();
    assert_eq!(result["output"], "42\n", "{result}");

    // thebe: text/plain POST /api/spawn/, then base + url + '/' + 'api/kernels'.
    let result = tokio::task::spawn_blocking({
        let (venv, base) = (venv.clone(), base.clone());
        move || run_client(&venv, &[&base, "thebe"])
    })
    .await
    .unwrap();
    assert_eq!(result["output"], "42\n", "{result}");
    assert!(
        result["prefix"].as_str().unwrap().ends_with("//"),
        "{result}"
    );

    // A thebe page on another origin, request for request: the spawn, then
    // preflight, POST and WebSocket under `//user/{token}//`.
    let result = tokio::task::spawn_blocking({
        let (venv, base) = (venv.clone(), base.clone());
        move || run_client(&venv, &[&base, "thebe-page"])
    })
    .await
    .unwrap();
    assert_eq!(result["output"], "42\n", "{result}");
    let prefix = result["prefix"].as_str().unwrap();
    assert!(
        prefix.starts_with("//user/") && prefix.ends_with("//"),
        "{result}"
    );
    server.stop().await;
}

/// BinderHub's launch API, as its own example client uses it, against a real
/// Jupyter server whose token is on: `/build/gh/...` streams to `ready`, and
/// the URL and token in it work for `api/status` and a kernel round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binderhub_client_launches_a_repository_and_runs_code() {
    let Some(venv) = venv() else { return };
    let data = DataDir::new("jupyter-hub");
    let mut config = test_config(&data);
    config.allow_origin = Some("*".into());
    let server = Server::start(config).await;
    let http = Http::new();
    let mut binding = jupyter_binding(&venv, "requirements", 1);
    binding["repo"] = json!("https://github.com/binder-examples/requirements");
    // The image (here: the command) has the files; the repository only
    // names the binding in launch links.
    binding["content"] = json!({"from": "image"});
    // Jupyter's own token on: the location's token is the server's token.
    for arg in binding["command"].as_array_mut().unwrap() {
        if arg == "--IdentityProvider.token=" {
            *arg = json!("--IdentityProvider.token={token}");
        }
    }
    create_binding(&http, &server.url(""), &binding).await;
    wait_pool(&http, &server.url(""), "requirements", 90, |p| {
        p["available"] == 1
    })
    .await;
    let base = server.url("");
    let result = tokio::task::spawn_blocking(move || {
        run_client(
            &venv,
            &[&base, "binderhub", "gh/binder-examples/requirements/HEAD"],
        )
    })
    .await
    .unwrap();
    assert_eq!(result["output"], "42\n", "{result}");
    assert_eq!(
        result["phases"],
        json!(["built", "launching", "launching", "ready"]),
        "{result}"
    );
    assert_eq!(
        result["status_without_token"], 403,
        "the server checks its token: {result}"
    );
    let ready = &result["ready"];
    assert!(
        ready["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://{}/user/", server.addr)),
        "{result}"
    );
    server.stop().await;
}

/// BinderHub's clients beyond one launch, with Python `requests` as
/// BinderHub's own tests use it, against two real Jupyter servers, one
/// with its token on and one with it off: no launch without `Accept:
/// text/event-stream`, `build_only` hands out nothing, the binder's own
/// progress as `launching` events, Binder's legacy `/repo` links,
/// `/versions`' `builder_info`, and `/v2?urlpath=api/status` landing (200)
/// with the token on too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binderhub_clients_get_what_binderhub_gives_them_token_on_and_off() {
    let Some(venv) = venv() else { return };
    let data = DataDir::new("jupyter-hub-points");
    let server = Server::start(test_config(&data)).await;
    let http = Http::new();
    let base = server.url("");
    for (name, token_on) in [("tokenon", true), ("tokenoff", false)] {
        let mut binding = jupyter_binding(&venv, name, 1);
        binding["repo"] = json!(format!("https://github.com/binder-examples/{name}"));
        binding["content"] = json!({"from": "image"});
        if token_on {
            for arg in binding["command"].as_array_mut().unwrap() {
                if arg == "--IdentityProvider.token=" {
                    *arg = json!("--IdentityProvider.token={token}");
                }
            }
        }
        create_binding(&http, &base, &binding).await;
        wait_pool(&http, &base, name, 90, |p| p["available"] == 1).await;
        let spec = format!("gh/binder-examples/{name}/HEAD");
        let points = tokio::task::spawn_blocking({
            let (venv, base) = (venv.clone(), base.clone());
            move || run_client(&venv, &[&base, "binderhub-points", &spec])
        })
        .await
        .unwrap();
        let crawler = &points["no_accept"];
        assert_eq!(crawler.as_array().unwrap().len(), 1, "{name}: {points}");
        assert_eq!(crawler[0]["phase"], "failed", "{name}: {points}");
        assert_eq!(crawler[0]["status_code"], 400, "{name}: {points}");
        let phases = |events: &Value| -> Vec<String> {
            events
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["phase"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            phases(&points["build_only"]),
            ["built", "ready"],
            "{name}: {points}"
        );
        assert!(
            points["build_only"][1].get("url").is_none(),
            "{name}: {points}"
        );
        assert_eq!(
            points["legacy"],
            json!([
                302,
                format!("/v2/gh/binder-examples/{name}/master?urlpath=%2Fnotebooks%2Fx.ipynb")
            ]),
            "{name}"
        );
        assert!(points["versions"]["builder_info"].is_object(), "{points}");
        assert_eq!(points["v2"]["status"], 200, "{name}: {points}");
        assert!(
            points["v2"]["url"]
                .as_str()
                .unwrap()
                .contains("/api/status?token="),
            "{name}: {points}"
        );
        let launch = phases(&points["launch"]);
        assert_eq!(
            launch.first().map(String::as_str),
            Some("built"),
            "{name}: {points}"
        );
        assert_eq!(
            launch.last().map(String::as_str),
            Some("ready"),
            "{name}: {points}"
        );
        assert!(
            launch.iter().filter(|p| *p == "launching").count() >= 2,
            "{name}: the binder's progress: {points}"
        );
        // The crawler and build_only took nothing: the two launches (v2 and
        // the last /build) are the only binders handed out.
        let pool = http
            .get(&server.url(&format!("/pools/{name}")))
            .await
            .json();
        let count = |k: &str| pool[k].as_u64().unwrap();
        let handed_out = count("running") - count("available") - count("starting");
        assert_eq!(handed_out, 2, "{name}: {pool}");
    }
    server.stop().await;
}

/// The same round trip with Jupyter in a Docker container: the image is made
/// here without a registry by scripts/build-jupyter-image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_runs_code_in_a_docker_container() {
    let Some(venv) = venv() else { return };
    if !docker_ready() {
        return;
    }
    build_jupyter_image();
    let data = DataDir::new("jupyter-docker");
    let _cleanup = DockerCleanup::new(&data);
    let mut config = test_config(&data);
    config.backend = binderd::backend::BackendKind::Docker;
    let server = Server::start(config).await;
    let http = Http::new();
    let binding = docker_jupyter_binding("dockernb");
    create_binding(&http, &server.url(""), &binding).await;
    wait_pool(&http, &server.url(""), "dockernb", 120, |p| {
        p["available"] == 1
    })
    .await;
    let b = http
        .call(Method::POST, &server.url("/binders/dockernb"), None)
        .await;
    assert_eq!(b.status, 201, "{}", b.body);
    let location = b.json()["location"].as_str().unwrap().to_owned();
    let base = server.url("");
    let result =
        tokio::task::spawn_blocking(move || run_client(&venv, &[&base, "binders", &location]))
            .await
            .unwrap();
    assert_eq!(result["output"], "42\n", "{result}");
    server.stop().await;
}
