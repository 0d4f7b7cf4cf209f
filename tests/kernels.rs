//! Warm kernels with a real Jupyter server and ipykernel: a binding with
//! `kernel` keeps a kernel running, warmed up, in every pooled binder; the
//! first kernel request after the handout (the classic notebook's
//! `POST api/kernels` or JupyterLab's `POST api/sessions`, sent by a real
//! client in tests/jupyter_client.py) gets it; failures are a clear status,
//! not a hot loop; a busy kernel keeps its binder from the idle culler.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use serde_json::{json, Value};

fn warm_binding(venv: &std::path::Path, name: &str, min: u32, warmup: &str) -> Value {
    let mut b = jupyter_binding(venv, name, min);
    b["kernel"] = json!({"name": "python3", "warmup": warmup});
    b
}

async fn client(venv: &std::path::Path, base: &str, args: &[&str]) -> Value {
    let venv = venv.to_owned();
    let mut all = vec![base.to_owned()];
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        run_client(&venv, &args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_kernel_request_gets_the_kernel_warmed_before_the_handout() {
    let Some(venv) = venv() else { return };
    let data = DataDir::new("kernels-warm");
    let server = Server::start(test_config(&data)).await;
    let http = Http::new();
    let base = server.url("");
    // Without JupyterLab's server extensions: at their start they run
    // helpers for a moment (jupyter_builder's `node` yarn check,
    // jupyter_lsp's language-server scan), which would count in the plain
    // binder's memory sample below.
    let without_lab = |mut b: Value| {
        let command = b["command"].as_array_mut().unwrap();
        for ext in ["jupyterlab", "jupyter_lsp"] {
            command.push(json!(format!(
                "--ServerApp.jpserver_extensions={ext}=False"
            )));
        }
        b
    };
    create_binding(
        &http,
        &base,
        &without_lab(warm_binding(&venv, "warm", 2, "x = 41")),
    )
    .await;
    create_binding(
        &http,
        &base,
        &without_lab(jupyter_binding(&venv, "plain", 1)),
    )
    .await;
    wait_pool(&http, &base, "warm", 120, |p| p["available"] == 2).await;
    wait_pool(&http, &base, "plain", 120, |p| p["available"] == 1).await;

    // The classic notebook's way: the kernel was running before anybody
    // asked (it is listed before the POST), the POST answers it (201 with
    // its Location), and the warm-up's variable is there for the first cell.
    let (_, location) = hand_out(&http, &base, "warm", None).await;
    let got = client(&venv, &base, &["kernel", &location, "print(x + 1)"]).await;
    assert_eq!(got["output"], "42\n", "{got}");
    assert_eq!(got["before"].as_array().unwrap().len(), 1, "{got}");
    assert_eq!(got["before"][0], got["id"], "the warm kernel: {got}");
    assert_eq!(
        got["location"].as_str().unwrap(),
        format!("{location}api/kernels/{}", got["id"].as_str().unwrap()),
    );
    // A second request starts a kernel of its own.
    let second = client(&venv, &base, &["kernel", &location, "print(6 * 7)"]).await;
    assert_eq!(second["output"], "42\n", "{second}");
    assert_ne!(second["id"], got["id"], "{second}");
    assert_eq!(second["before"].as_array().unwrap().len(), 1);

    // JupyterLab's way: the session is made on the warm kernel.
    let (_, location) = hand_out(&http, &base, "warm", None).await;
    let got = client(&venv, &base, &["session", &location, "print(x + 1)"]).await;
    assert_eq!(got["output"], "42\n", "{got}");
    assert_eq!(got["before"][0], got["id"], "the warm kernel: {got}");
    let sessions = http
        .get(&server.url(&format!("{location}api/sessions")))
        .await;
    assert_eq!(
        sessions.json()[0]["kernel"]["id"],
        got["id"],
        "{}",
        sessions.body
    );

    // A binding without `kernel` is as before: no kernel until one is asked
    // for, and the first one is started then.
    let (plain_id, location) = hand_out(&http, &base, "plain", None).await;
    let got = client(
        &venv,
        &base,
        &[
            "kernel",
            &location,
            "import tempfile, IPython\nprint(tempfile.gettempdir())\nprint(IPython.paths.get_ipython_dir())",
        ],
    )
    .await;
    assert_eq!(got["before"], json!([]), "{got}");
    // Nothing of the binder's own outside the data dir (the example's
    // IPYTHONDIR and the per-binder TMPDIR), and it goes when it stops.
    let workdir = data.0.join("binders").join(&plain_id);
    let lines: Vec<&str> = got["output"].as_str().unwrap().lines().collect();
    assert_eq!(lines.len(), 2, "{got}");
    for line in &lines {
        assert!(
            std::path::Path::new(line).starts_with(&workdir),
            "{line} is outside {}",
            workdir.display()
        );
    }

    // The pools say what a pooled binder holds in memory, with and without
    // a warm kernel.
    let memory = |name: &'static str| {
        let (http, base) = (&http, &base);
        wait_for(30, "a memory sample", move || async move {
            let p = http.get(&format!("{base}/pools/{name}")).await.json();
            p["warmBinderMemoryBytes"].as_u64()
        })
    };
    let (warm, plain) = (memory("warm").await, memory("plain").await);
    assert!(
        warm > plain + 10_000_000,
        "a warm kernel holds memory: {warm} vs {plain}"
    );

    let stop = http
        .call(
            Method::DELETE,
            &server.url(&format!("/binders/plain/{plain_id}")),
            None,
        )
        .await;
    assert!(stop.status == 202 || stop.status == 204, "{}", stop.body);
    eventually(30, "the binder's working dir to go", || async {
        !workdir.exists()
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_warm_up_or_kernel_is_a_status_not_a_hot_loop() {
    let Some(venv) = venv() else { return };
    let data = DataDir::new("kernels-fail");
    let server = Server::start(test_config(&data)).await;
    let http = Http::new();
    let base = server.url("");
    create_binding(
        &http,
        &base,
        &warm_binding(&venv, "raises", 1, "raise ValueError('no such data')"),
    )
    .await;
    let mut unknown = jupyter_binding(&venv, "unknown", 1);
    unknown["kernel"] = json!({"name": "julia-9.9"});
    create_binding(&http, &base, &unknown).await;
    let mut no_jupyter = standin_binding("nojupyter", 1, 2);
    no_jupyter["kernel"] = json!({"name": "python3"});
    create_binding(&http, &base, &no_jupyter).await;

    let status_of = |name: &'static str| {
        let (http, base) = (&http, &base);
        wait_for(90, "an error status", move || async move {
            let b = http
                .call(Method::GET, &format!("{base}/bindings/{name}"), Some(ADMIN))
                .await
                .json();
            (b["status"] == "error").then(|| b["message"].as_str().unwrap_or("").to_owned())
        })
    };
    let m = status_of("raises").await;
    assert!(
        m.contains("ValueError") && m.contains("no such data"),
        "{m}"
    );
    let m = status_of("unknown").await;
    assert!(
        m.contains("no kernel named 'julia-9.9'") && m.contains("python3"),
        "{m}"
    );
    let m = status_of("nojupyter").await;
    assert!(m.contains("no Jupyter API"), "{m}");

    // Backing off, not looping: a few seconds see a few starts at most.
    let starts = |body: &str, name: &str| -> f64 {
        let prefix = format!("binderd_starts_total{{binding=\"{name}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    let before = http.get(&server.url("/metrics")).await.body;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = http.get(&server.url("/metrics")).await.body;
    for name in ["raises", "unknown", "nojupyter"] {
        let (a, b) = (starts(&before, name), starts(&after, name));
        assert!(a >= 1.0, "{name} started at all");
        assert!(b - a <= 3.0, "{name}: {a} → {b} starts in 5 s");
    }
    let p = http.get(&server.url("/pools/raises")).await.json();
    assert_eq!(p["available"], 0, "{p}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_kernel_keeps_its_binder_from_the_idle_culler() {
    let Some(venv) = venv() else { return };
    let data = DataDir::new("kernels-cull");
    let mut config = test_config(&data);
    config.cull_interval = Duration::from_millis(200);
    let server = Server::start(config).await;
    let http = Http::new();
    let base = server.url("");
    let mut binding = warm_binding(&venv, "cullme", 2, "");
    binding["cull"] = json!({"idle_seconds": 3, "max_age_seconds": 600});
    create_binding(&http, &base, &binding).await;
    wait_pool(&http, &base, "cullme", 120, |p| p["available"] == 2).await;
    let (busy_id, busy) = hand_out(&http, &base, "cullme", None).await;
    let (idle_id, idle) = hand_out(&http, &base, "cullme", None).await;
    // One kernel computes for a while, sending nothing; the other is done.
    client(
        &venv,
        &base,
        &["start", &busy, "import time\ntime.sleep(25)"],
    )
    .await;
    let done = client(&venv, &base, &["kernel", &idle, "print(6 * 7)"]).await;
    assert_eq!(done["output"], "42\n");

    let state = |id: String| {
        let (http, base) = (&http, &base);
        async move {
            let b = http
                .call(
                    Method::GET,
                    &format!("{base}/binders/cullme/{id}"),
                    Some(ADMIN),
                )
                .await;
            if b.status == 404 {
                return "gone".to_owned();
            }
            b.json()["state"].as_str().unwrap_or("?").to_owned()
        }
    };
    eventually(30, "the idle binder to be culled", || async {
        matches!(
            state(idle_id.clone()).await.as_str(),
            "stopped" | "stopping" | "gone"
        )
    })
    .await;
    // Well past its idle time by the proxy's count, the busy one stays.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(state(busy_id.clone()).await, "ready");
    server.stop().await;
}

/// The same on the Docker backend: the warm kernel runs in the container,
/// and `docker stats` gives the pool's memory figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_binder_hands_out_its_warm_kernel() {
    let Some(venv) = venv() else { return };
    if !docker_ready() {
        return;
    }
    build_jupyter_image();
    let data = DataDir::new("kernels-docker");
    let _cleanup = DockerCleanup::new(&data);
    let mut config = test_config(&data);
    config.backend = binderd::backend::BackendKind::Docker;
    let server = Server::start(config).await;
    let http = Http::new();
    let base = server.url("");
    let mut binding = docker_jupyter_binding("dockerwarm");
    binding["kernel"] = json!({"name": "python3", "warmup": "x = 41"});
    create_binding(&http, &base, &binding).await;
    wait_pool(&http, &base, "dockerwarm", 120, |p| p["available"] == 1).await;
    let (_, location) = hand_out(&http, &base, "dockerwarm", None).await;
    let got = client(&venv, &base, &["session", &location, "print(x + 1)"]).await;
    assert_eq!(got["output"], "42\n", "{got}");
    assert_eq!(got["before"], json!([got["id"]]), "the warm kernel: {got}");
    let bytes = wait_for(30, "a memory sample", || async {
        let p = http.get(&format!("{base}/pools/dockerwarm")).await.json();
        p["warmBinderMemoryBytes"].as_u64()
    })
    .await;
    assert!(bytes > 20_000_000, "server and kernel: {bytes} bytes");
    server.stop().await;
}

/// A kernel's channels, opened through binderd with `headers` added to the
/// handshake: the socket, or the status the handshake was refused with.
async fn open_channels(url: &str, headers: &[(&'static str, &str)]) -> Result<KernelSocket, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;
    let mut req = url.into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(*name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert!(
                resp.headers().get("sec-websocket-protocol").is_none(),
                "{resp:?}"
            );
            Ok(ws)
        }
        Err(Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// The warm kernel's channels are opened before the handout and held; the
/// reader's first WebSocket to them rides that connection (the server
/// counts one connection to the kernel before and after the reader joins,
/// not two), but only once the server has said this reader may open them:
/// a cross-origin page (the server allows no other origin here) and a
/// plain GET are answered by the server as they would be, and the held
/// channels stay for the reader. A second WebSocket is proxied as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readers_channels_ride_the_ones_held_since_before_the_handout() {
    let Some(venv) = venv() else { return };
    let data = DataDir::new("kernels-held");
    let server = Server::start(test_config(&data)).await;
    let http = Http::new();
    let base = server.url("");
    let mut binding = warm_binding(&venv, "held", 1, "x = 41");
    // Cross-origin WebSockets refused by the server (its default).
    binding["command"]
        .as_array_mut()
        .unwrap()
        .retain(|a| a != "--ServerApp.allow_origin=*");
    create_binding(&http, &base, &binding).await;
    wait_pool(&http, &base, "held", 120, |p| p["available"] == 1).await;
    let (_, location) = hand_out(&http, &base, "held", None).await;
    let kernels = http
        .get(&format!("{base}{location}api/kernels"))
        .await
        .json();
    assert_eq!(kernels.as_array().unwrap().len(), 1, "{kernels}");
    let id = kernels[0]["id"].as_str().unwrap().to_owned();
    let connections = || {
        let (http, url) = (&http, format!("{base}{location}api/kernels/{id}"));
        async move { http.get(&url).await.json()["connections"].clone() }
    };
    assert_eq!(connections().await, 1, "the held channels");
    let given = || {
        let http = &http;
        let url = server.url("/metrics");
        async move {
            let body = http.get(&url).await.body;
            body.lines()
                .find_map(|l| {
                    l.strip_prefix("binderd_warm_channels_given_total{binding=\"held\"} ")
                })
                .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
        }
    };
    let url = format!(
        "{}{location}api/kernels/{id}/channels?session_id=reader",
        base.replacen("http://", "ws://", 1)
    );

    // Another site's page: the server refuses it, as it would have.
    let evil = open_channels(&url, &[("origin", "http://evil.example")]).await;
    assert_eq!(evil.err(), Some(403));
    // Not a WebSocket at all: the server's answer too.
    let plain = http.get(&url.replacen("ws://", "http://", 1)).await;
    assert_eq!(plain.status, 400, "{}", plain.body);
    assert_eq!(given().await, 0.0);
    assert_eq!(connections().await, 1);

    // The reader (same origin as the page it was served from).
    let origin = base.trim_end_matches('/').to_owned();
    let mut ws = open_channels(&url, &[("origin", &origin)]).await.unwrap();
    assert_eq!(execute_on(&mut ws, "print(x + 1)").await, "42\n");
    assert_eq!(given().await, 1.0);
    assert_eq!(connections().await, 1, "the reader rides the held channels");

    // A second one is the usual proxying: the server sees it.
    let mut second = open_channels(&url.replace("reader", "second"), &[])
        .await
        .unwrap();
    assert_eq!(execute_on(&mut second, "print(x + 2)").await, "43\n");
    assert_eq!(connections().await, 2);
    assert_eq!(given().await, 1.0);
    assert_eq!(execute_on(&mut ws, "print(x)").await, "41\n");
    let _ = ws.close(None).await;
    let _ = second.close(None).await;
    server.stop().await;
}
