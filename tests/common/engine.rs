//! The Docker tests' engine: the test image, bindings of it, the docker CLI,
//! and cleaning up by label.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{standin, DataDir};

/// Docker tests need the engine (CI has one). Without it they fail, unless
/// BINDERD_SKIP_DOCKER=1 says to skip them on purpose; returns false then.
pub fn docker_ready() -> bool {
    static IMAGE: std::sync::Once = std::sync::Once::new();
    let engine = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine {
        if std::env::var("BINDERD_SKIP_DOCKER").as_deref() == Ok("1") {
            eprintln!("skipping: no Docker engine and BINDERD_SKIP_DOCKER=1");
            return false;
        }
        panic!("the Docker tests need a Docker engine (set BINDERD_SKIP_DOCKER=1 to skip them)");
    }
    IMAGE.call_once(|| {
        let status = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/build-test-image"
        ))
        .arg(standin())
        .status()
        .unwrap();
        assert!(status.success(), "scripts/build-test-image failed");
    });
    true
}

pub const TEST_IMAGE: &str = "binderd/stand-in:test";

/// A binding of the stand-in image on the Docker backend.
pub fn docker_binding(name: &str, min: u32, max: u32) -> Value {
    serde_json::json!({
        "name": name,
        "image": TEST_IMAGE,
        "command": ["--port", "{port}", "--base-url", "{base_url}", "--all-interfaces"],
        "port": 8888,
        "public": true,
        "pool": {"min": min, "max": max},
        "start_timeout_seconds": 20,
    })
}

/// Runs the docker CLI, returning stdout lines.
pub fn docker(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Containers (all states) and networks labelled for this data dir.
pub fn docker_leftovers(data: &DataDir) -> (Vec<String>, Vec<String>) {
    labelled(&binderd::backend::owner_key(&data.0))
}

/// Containers (all states) and networks labelled with this owner key.
fn labelled(owner: &str) -> (Vec<String>, Vec<String>) {
    let filter = format!("label=binderd.owner={owner}");
    (
        docker(&["ps", "-aq", "--filter", &filter]),
        docker(&["network", "ls", "-q", "--filter", &filter]),
    )
}

/// Removes what a test made on the engine, by its label only (the owner
/// key of the test's data dir), when dropped.
pub struct DockerCleanup(String);

impl DockerCleanup {
    pub fn new(data: &DataDir) -> DockerCleanup {
        DockerCleanup(binderd::backend::owner_key(&data.0))
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        // Environments built for the test's bindings (images).
        let filter = format!("label=binderd.owner={}", self.0);
        for image in docker(&["images", "-q", "--filter", &filter]) {
            docker(&["rmi", "-f", &image]);
        }
        // A create the engine was still working on may land after a first
        // sweep: sweep until two looks in a row find nothing.
        let mut clean_looks = 0;
        for _ in 0..20 {
            let (containers, networks) = labelled(&self.0);
            if containers.is_empty() && networks.is_empty() {
                clean_looks += 1;
                if clean_looks == 2 {
                    return;
                }
            } else {
                clean_looks = 0;
            }
            if !containers.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(containers.iter().map(String::as_str));
                docker(&args);
            }
            for n in networks {
                docker(&["network", "rm", &n]);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
