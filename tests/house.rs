//! Promises the repository makes about itself, checked: the Rust version it
//! declares builds what Cargo.lock pins.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// `1.88` and `1.88.0` alike, as (major, minor, patch).
fn version(s: &str) -> [u32; 3] {
    let mut v = [0; 3];
    for (slot, part) in v.iter_mut().zip(s.split('.')) {
        *slot = part.parse().unwrap_or(0);
    }
    v
}

/// Every crate locked into binderd's build (normal and build dependencies,
/// as `cargo build --locked` in the Dockerfile compiles them) declares a
/// `rust-version` no newer than Cargo.toml's own: otherwise the image a user
/// builds with the toolchain we name fails at `cargo build`.
#[test]
fn the_declared_rust_version_builds_every_locked_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--offline",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(root)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages: HashMap<&str, &Value> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root_id = meta["resolve"]["root"].as_str().unwrap();
    let declared = packages[root_id]["rust_version"]
        .as_str()
        .expect("Cargo.toml declares rust-version");
    let mut seen = HashSet::new();
    let mut todo = vec![root_id];
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let builds = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if builds {
                todo.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    assert!(seen.len() > 50, "the build graph was read ({})", seen.len());
    let mut newer: Vec<String> = seen
        .iter()
        .filter_map(|id| {
            let p = packages[id];
            let needs = p["rust_version"].as_str()?;
            (version(needs) > version(declared))
                .then(|| format!("{} {} needs {needs}", p["name"], p["version"]))
        })
        .collect();
    newer.sort();
    assert!(
        newer.is_empty(),
        "Cargo.toml says rust-version = {declared}, but Cargo.lock pins crates that need more \
         (raise it, with the Dockerfile's rust image, or lock older ones):\n{}",
        newer.join("\n")
    );
}
