//! The first command opens a notebook: binderd with no bindings configured
//! serves its built-in notebook binding, builds that binding's environment
//! itself (JupyterLab and ipykernel, wheels only, here from a local
//! wheelhouse with `--no-index`: no network in a test), shows the build on
//! `/pools`, fills the pool, and the dashboard's button opens a binder's
//! JupyterLab in a new tab where a cell runs, in headless Chromium
//! (tests/notebook_browser.py). And with no package index to reach, one
//! clear line, tried again later, while the other bindings serve.
//! Without chromium these tests fail unless BINDERD_SKIP_BROWSER=1.

mod common;

use std::time::{Duration, Instant};

use binderd::config::{Config, ServeArgs};
use common::*;
use serde_json::Value;

/// binderd as `binderd serve` makes it from `args` (no config file, no
/// bindings dir), on `data`, with the test's keys and sandbox helper.
async fn serve(data: &DataDir, sets: Vec<String>, bindings: Option<&str>) -> Server {
    let dir = data.0.join("bindings-here");
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(toml) = bindings {
        std::fs::write(dir.join("mine.toml"), toml).unwrap();
    }
    let file = data.0.join("binderd.toml");
    std::fs::write(&file, "").unwrap();
    let mut set = vec!["listen=127.0.0.1:0".to_owned()];
    set.extend(sets);
    let args = ServeArgs {
        config: Some(file),
        data_dir: Some(data.0.clone()),
        bindings_dir: Some(dir),
        set,
        ..Default::default()
    };
    let mut config = Config::load(args, None).expect("the settings load");
    config.api_keys = keys();
    config.process.helper = Some(binderd_bin().into());
    config.shutdown_grace = Duration::from_secs(2);
    Server::start(config).await
}

fn pool_of<'p>(pools: &'p Value, name: &str) -> Option<&'p Value> {
    pools.as_array()?.iter().find(|p| p["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_bindings_a_notebook_is_built_served_and_opened_from_the_dashboard() {
    let Some(venv) = browser_venv() else { return };
    let wheelhouse = venv.join("wheelhouse-lab");
    let data = DataDir::new("first-notebook");
    let pip = format!(
        "content.pip_args=[\"--no-index\", \"--find-links\", \"{}\"]",
        wheelhouse.display()
    );
    let server = serve(&data, vec![pip], None).await;
    let http = Http::new();
    // The build shows on /pools while it runs, then the pool fills.
    let mut seen_building = None;
    let deadline = Instant::now() + Duration::from_secs(400);
    loop {
        let pools = http.get(&server.url("/pools")).await.json();
        let pool = pool_of(&pools, "notebook").unwrap_or_else(|| panic!("no notebook: {pools}"));
        if let Some(build) = pool.get("build") {
            assert_ne!(build["phase"], "failed", "{pool}");
            seen_building.get_or_insert_with(|| build.clone());
        }
        if pool["available"].as_u64().unwrap_or(0) >= 1 {
            assert!(pool.get("build").is_none(), "{pool}");
            break;
        }
        assert!(Instant::now() < deadline, "never filled: {pool}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let building = seen_building.expect("the build showed on /pools");
    assert!(
        ["fetching", "building"].contains(&building["phase"].as_str().unwrap()),
        "{building}"
    );
    let log = http
        .get(&server.url("/bindings/notebook/build/logs"))
        .await
        .body;
    assert!(log.contains("Successfully installed"), "{log}");
    assert!(log.contains("jupyterlab"), "{log}");
    // The dashboard's button, JupyterLab in a new tab, a cell.
    let report = browser_report(venv, "notebook_browser.py", vec![server.url("")]).await;
    assert_eq!(report["button"], "Open JupyterLab", "{report}");
    assert_eq!(report["output"], "42", "{report}");
    assert_eq!(
        report["opener"], true,
        "the binder's tab reaches the dashboard's: {report}"
    );
    assert_eq!(report["lab_url_is_a_binder"], true, "{report}");
    assert_eq!(report["embed_spawn_link"], true, "{report}");
    assert_eq!(report["embed_script"], true, "{report}");
    server.stop().await;
}

/// No package index to reach: the binding says so in one line and is tried
/// again later; the operator's other binding serves meanwhile.
#[tokio::test]
async fn with_no_index_to_reach_one_clear_line_and_the_rest_serves() {
    let data = DataDir::new("first-no-index");
    let unreachable = "content.pip_args=[\"--index-url\", \"http://127.0.0.1:9/simple\", \"--retries\", \"1\", \"--timeout\", \"2\"]";
    let mine = format!(
        "name = \"plain\"\ncommand = [\"{}\", \"--port\", \"{{port}}\", \"--base-url\", \"{{base_url}}\"]\npublic = true\npool = {{ min = 1, max = 2 }}\n\n",
        standin()
    );
    let server = serve(&data, vec![unreachable.to_owned()], Some(&mine)).await;
    let http = Http::new();
    let lab = serde_json::json!({
        "name": "lab",
        "command": [standin(), "--port", "{port}", "--base-url", "{base_url}"],
        "packages": ["jupyterlab"],
        "public": true,
        "pool": {"min": 1, "max": 2},
    });
    let made = create_binding(&http, &server.url(""), &lab).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let pools = http.get(&server.url("/pools")).await.json();
        let pool = pool_of(&pools, "lab").unwrap().clone();
        if pool["build"]["phase"] == "failed" {
            break pool;
        }
        assert!(Instant::now() < deadline, "never failed: {pool}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let line = failed["build"]["line"].as_str().unwrap();
    assert!(line.contains("the package index did not answer"), "{line}");
    assert!(!line.contains('\n'), "one line: {line}");
    let binding = http.get(&server.url("/bindings/lab")).await.json();
    assert_eq!(binding["status"], "error", "{binding}");
    // The operator's own binding serves meanwhile (and no built-in one).
    wait_pool(&http, &server.url(""), "plain", 30, |p| p["available"] == 1).await;
    let pools = http.get(&server.url("/pools")).await.json();
    assert!(pool_of(&pools, "notebook").is_none(), "{pools}");
    server.stop().await;
}
