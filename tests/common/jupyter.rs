//! Real Jupyter for the end-to-end tests: the venv from scripts/jupyter-venv
//! (jupyter-server and ipykernel from PyPI, cached), the documented binding,
//! and tests/jupyter_client.py, a real client library's round trips.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

pub fn venv() -> Option<PathBuf> {
    if std::env::var("BINDERD_SKIP_JUPYTER").as_deref() == Ok("1") {
        eprintln!("skipping: BINDERD_SKIP_JUPYTER=1");
        return None;
    }
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/jupyter-venv"))
        .output()
        .expect("scripts/jupyter-venv");
    assert!(
        out.status.success(),
        "scripts/jupyter-venv failed (set BINDERD_SKIP_JUPYTER=1 to skip): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()))
}

/// The test venv (selenium in it) when a real browser can run: Debian's
/// chromium and chromium-driver, which `.ci/run` installs. Without them a
/// browser test fails, unless BINDERD_SKIP_BROWSER=1 skips it.
pub fn browser_venv() -> Option<PathBuf> {
    if std::env::var("BINDERD_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("skipping: BINDERD_SKIP_BROWSER=1");
        return None;
    }
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(tool).exists(),
            "{tool} is missing (apt-get install chromium chromium-driver; or BINDERD_SKIP_BROWSER=1)"
        );
    }
    // selenium lives in the test venv.
    venv()
}

/// Runs `tests/{script}` (a selenium script) with the venv's Python and
/// `args`, on a blocking thread; asserts it succeeded and gives the JSON
/// report it printed.
pub async fn browser_report(venv: PathBuf, script: &str, args: Vec<String>) -> serde_json::Value {
    let path = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(venv.join("bin/python"))
            .arg(path)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The binding this project documents for Jupyter on the process backend
/// (`examples/bindings/jupyter.json`, as the README shows it): no Jupyter
/// token (the 128-bit location is the secret, as with tmpnb) so that
/// thebe-style pages work; XSRF off for the same reason. Here `jupyter` comes
/// from the test venv, and the tests may run as root.
pub fn jupyter_binding(venv: &std::path::Path, name: &str, min: u32) -> serde_json::Value {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/bindings/jupyter.json"
    );
    let mut binding: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    let command = binding["command"].as_array_mut().unwrap();
    assert_eq!(command[0], "jupyter");
    command[0] = json!(venv.join("bin/jupyter").to_str().unwrap());
    command.push(json!("--allow-root"));
    binding["name"] = json!(name);
    binding["pool"] = json!({"min": min, "max": 4});
    binding
}

pub fn run_client(venv: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(venv.join("bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/jupyter_client.py"
        ))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `code` in a kernel of the Jupyter server at `location` (the warm
/// one if it has one) with the test client; its answer (`output`).
pub async fn run_in_kernel(
    venv: &std::path::Path,
    base: &str,
    location: &str,
    code: &str,
) -> serde_json::Value {
    let (venv, base, location, code) = (
        venv.to_owned(),
        base.to_owned(),
        location.to_owned(),
        code.to_owned(),
    );
    tokio::task::spawn_blocking(move || run_client(&venv, &[&base, "kernel", &location, &code]))
        .await
        .unwrap()
}

/// Builds binderd/jupyter:test (no registry: scripts/build-jupyter-image;
/// a no-op when it is up to date).
pub fn build_jupyter_image() {
    let status = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/build-jupyter-image"
    ))
    .status()
    .unwrap();
    assert!(status.success(), "scripts/build-jupyter-image failed");
}

/// A Jupyter binding on the Docker backend, from binderd/jupyter:test.
pub fn docker_jupyter_binding(name: &str) -> serde_json::Value {
    json!({
        "name": name,
        "image": "binderd/jupyter:test",
        "command": [
            "--port={port}", "--ServerApp.ip=0.0.0.0", "--ServerApp.base_url={base_url}",
            "--IdentityProvider.token=", "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True", "--ServerApp.allow_origin=*",
            "--ServerApp.allow_remote_access=True", "--ServerApp.port_retries=0",
            "--ServerApp.open_browser=False", "--allow-root",
        ],
        "port": 8888,
        "resources": {"memory": "512Mi"},
        "public": true,
        "pool": {"min": 1, "max": 2},
        "start_timeout_seconds": 90,
    })
}

/// A kernel's channels as a test client opens them.
pub type KernelSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Runs `code` on a kernel's open channels (JSON messages, as a client
/// without a subprotocol speaks them) until the kernel is idle again; its
/// stream output.
pub async fn execute_on(ws: &mut KernelSocket, code: &str) -> String {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    static CELLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let msg_id = format!(
        "cell-{}",
        CELLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let request = binderd::parts::execute_request(&msg_id, "reader", code);
    ws.send(Message::text(request.to_string())).await.unwrap();
    let (mut output, mut idle) = (String::new(), false);
    while !idle {
        let text = match tokio::time::timeout(std::time::Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(_))) => continue,
            other => panic!("the channels ended: {other:?}"),
        };
        let msg: serde_json::Value = serde_json::from_str(&text).unwrap();
        if msg["parent_header"]["msg_id"] != msg_id.as_str() {
            continue;
        }
        match msg["header"]["msg_type"].as_str() {
            Some("stream") => output.push_str(msg["content"]["text"].as_str().unwrap()),
            Some("status") => idle = msg["content"]["execution_state"] == "idle",
            _ => {}
        }
    }
    output
}
