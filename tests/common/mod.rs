//! Test harness, by concern: `server` (binderd in-process or as the real
//! binary, data dirs), `client` (HTTP to it, waits, checks), `engine` (the
//! Docker engine's test image and cleanup), `jupyter` (the real Jupyter
//! venv, binding and client), and here the keys, the stand-in
//! binding and [`Harness`], the opening most tests share.

#![allow(dead_code, unused_imports)]

use serde_json::Value;

mod client;
mod engine;
mod jupyter;
mod repo;
mod server;

pub use self::client::*;
pub use self::engine::*;
pub use self::jupyter::*;
pub use self::repo::*;
pub use self::server::*;

pub const ADMIN: &str = "admin-secret-key";
pub const ALICE: &str = "alice-secret-key";
pub const BOB: &str = "bob-secret-key";

pub const CAROL: &str = "carol-secret-key";

/// The JSON of a binding running the stand-in server.
pub fn standin_binding(name: &str, min: u32, max: u32) -> Value {
    serde_json::json!({
        "name": name,
        "command": [standin(), "--port", "{port}", "--base-url", "{base_url}"],
        "public": true,
        "pool": {"min": min, "max": max},
        "start_timeout_seconds": 10,
    })
}

/// A stand-in binding whose server exits `after_ms` after it starts while
/// its process group (a `sleep`) lives on: the container is there, nothing
/// answers.
pub fn standin_binding_that_stops_answering(name: &str, after_ms: u64) -> Value {
    let script = format!(
        "{} --port {{port}} --base-url {{base_url}} --exit-after-ms {after_ms} & exec sleep 600",
        standin()
    );
    let mut binding = standin_binding(name, 1, 1);
    binding["command"] = serde_json::json!(["sh", "-c", script]);
    binding
}

/// A test's binderd: its data dir, the server and a client. Destructure it
/// (`let Harness { data, server, http } = ...`) to keep each by name.
pub struct Harness {
    pub data: DataDir,
    pub server: Server,
    pub http: Http,
}

impl Harness {
    /// binderd with the test config, on a data dir named after the test.
    pub async fn start(name: &str) -> Harness {
        Harness::with_config(name, |_| {}).await
    }

    /// binderd with the test config as `adjust` leaves it.
    pub async fn with_config(
        name: &str,
        adjust: impl FnOnce(&mut binderd::config::Config),
    ) -> Harness {
        let data = DataDir::new(name);
        let mut config = test_config(&data);
        adjust(&mut config);
        let server = Server::start(config).await;
        Harness {
            data,
            server,
            http: Http::new(),
        }
    }

    /// binderd (test config) with `binding` created and its pool full:
    /// `available` at its `pool.min`.
    pub async fn with_pool(name: &str, binding: Value) -> Harness {
        let h = Harness::start(name).await;
        h.create_and_fill(&binding).await;
        h
    }

    /// Creates `binding` (as the admin) and waits until `pool.min` binders
    /// of it are available.
    pub async fn create_and_fill(&self, binding: &Value) {
        create_binding(&self.http, &self.server.url(""), binding).await;
        let name = binding["name"].as_str().expect("the binding has a name");
        let min = binding["pool"]["min"]
            .as_u64()
            .expect("the binding has pool.min");
        wait_pool(&self.http, &self.server.url(""), name, 60, |p| {
            p["available"] == min
        })
        .await;
    }
}

/// Pause, on any backend that keeps files: writes `text` into the handed-out
/// binder at `location` through the proxy, then pauses it as alice (its
/// owner): 200 `paused`, and the location answers 503 naming the pause.
/// Returns the server's `api/status` from before the pause.
pub async fn write_then_pause(
    server: &Server,
    http: &Http,
    binding: &str,
    (id, location): (&str, &str),
    text: &str,
) -> Value {
    let put = http
        .send(
            ::http::Method::PUT,
            &server.url(&format!("{location}file?name=kept.txt")),
            &[],
            text.to_owned(),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let status_url = server.url(&format!("{location}api/status"));
    let before = http.get(&status_url).await.json();
    let action = server.url(&format!("/binders/{binding}/{id}/actions/pause"));
    let a = http
        .post_json(&action, Some(ALICE), &serde_json::json!({"paused": true}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["state"], "paused");
    let paused = http.get(&status_url).await;
    assert_error(&paused, 503);
    assert!(paused.body.contains("paused"), "{}", paused.body);
    before
}

/// Resume: 200 `ready` at the same location, and the file
/// [`write_then_pause`] wrote reads back. Returns the server's `api/status`.
pub async fn resume_then_read(
    server: &Server,
    http: &Http,
    binding: &str,
    (id, location): (&str, &str),
    text: &str,
) -> Value {
    let action = server.url(&format!("/binders/{binding}/{id}/actions/pause"));
    let a = http
        .post_json(&action, Some(ALICE), &serde_json::json!({"paused": false}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["state"], "ready");
    assert_eq!(a.json()["location"], location);
    let file = http
        .get(&server.url(&format!("{location}file?name=kept.txt")))
        .await;
    assert_eq!(file.body, text);
    http.get(&server.url(&format!("{location}api/status")))
        .await
        .json()
}
