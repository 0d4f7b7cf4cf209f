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

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// A binder's state changes only in `pool` (which keeps the counters in
/// step): `cas_state`/`swap_state` are called nowhere else.
#[test]
fn binder_states_change_only_in_pool() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "examples"] {
        files_under(&root.join(dir), &mut files);
    }
    let mut wrong = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rs"))
    {
        let rel = file.strip_prefix(root).unwrap();
        if rel.starts_with("src/pool")
            || rel == Path::new("src/binder.rs")
            || rel == Path::new("tests/house.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.contains(".cas_state(") || line.contains(".swap_state(") {
                wrong.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "a binder's state changed outside pool (use Pool::transition/force/take_down):\n{}",
        wrong.join("\n")
    );
}

/// What the Rust sources define: item names (`fn`, `struct`, `enum`,
/// `trait`, `mod`, `const`, `static`, `type`), struct fields and enum
/// variants (a line starting with the name), and module files and folders.
fn defined_names(root: &Path) -> HashSet<String> {
    let mut files = Vec::new();
    for dir in ["src", "benches", "tests", "examples"] {
        files_under(&root.join(dir), &mut files);
    }
    names_in(&files)
}

/// What one top-level module of `src/` defines (its file or folder).
fn module_names(root: &Path, module: &str) -> HashSet<String> {
    let mut files = Vec::new();
    files_under(&root.join("src").join(module), &mut files);
    let file = root.join("src").join(format!("{module}.rs"));
    if file.exists() {
        files.push(file);
    }
    names_in(&files)
}

fn names_in(files: &[std::path::PathBuf]) -> HashSet<String> {
    let mut names = HashSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rs"))
    {
        if let Some(stem) = file.file_stem().and_then(|s| s.to_str()) {
            names.insert(stem.to_owned());
        }
        if let Some(dir) = file
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|s| s.to_str())
        {
            names.insert(dir.to_owned());
        }
        let text = std::fs::read_to_string(file).unwrap();
        for line in text.lines() {
            let mut t = line.trim_start();
            for prefix in ["pub(crate) ", "pub(super) ", "pub ", "async ", "unsafe "] {
                t = t.strip_prefix(prefix).unwrap_or(t);
            }
            t = t.strip_prefix("async ").unwrap_or(t);
            for kw in [
                "fn ", "struct ", "enum ", "trait ", "mod ", "const ", "static ", "type ",
            ] {
                if let Some(rest) = t.strip_prefix(kw) {
                    names.insert(ident(rest));
                }
            }
            // A field (`name: T`) or a variant (`Name,` `Name(..)` `Name {`).
            let first = ident(t);
            if !first.is_empty() {
                let after = &t[first.len()..];
                if after.starts_with(':') && !after.starts_with("::")
                    || after.starts_with(',')
                    || after.starts_with('(')
                    || after.starts_with(" {")
                    || after.starts_with(" =")
                {
                    names.insert(first);
                }
            }
        }
    }
    names
}

/// Our top-level modules (a Rust path in a doc starting with one of these,
/// or with a type we define, is ours to check).
const MODULES: &[&str] = &[
    "admin",
    "api",
    "auth",
    "backend",
    "binder",
    "binding",
    "body",
    "cli",
    "config",
    "kernel",
    "limits",
    "metrics",
    "pool",
    "proxy",
    "quota",
    "ratelimit",
    "server",
    "store",
    "upstream",
];

/// The repository's folders a doc may name a path in.
const DIRS: &[&str] = &[
    "src/",
    "tests/",
    "benches/",
    "scripts/",
    "deploy/",
    "docs/",
    "examples/",
    "config/",
    ".ci/",
];

/// Every name the docs give for a piece of the code exists: a path
/// (`src/pool/handout.rs`, `deploy/...`, a bare `handout.rs` under `src/`),
/// a Rust path into our modules (`pool::handout`, `Pool::transition`,
/// `api::user::reach`), a relative Markdown link. A doc that still names a
/// file or function that was renamed or removed fails here.
#[test]
fn names_in_the_docs_point_at_things_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let names = defined_names(root);
    let mut src_files = Vec::new();
    files_under(&root.join("src"), &mut src_files);
    let src_files: Vec<String> = src_files
        .iter()
        .map(|f| {
            f.strip_prefix(root.join("src"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    let mut docs = vec![
        root.join("README.md"),
        root.join("ARCHITECTURE.md"),
        root.join("BENCHMARKS.md"),
    ];
    let mut more = Vec::new();
    files_under(&root.join("docs"), &mut more);
    docs.extend(
        more.into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "md")),
    );
    let mut wrong = Vec::new();
    let mut checked = 0;
    for doc in &docs {
        let rel_doc = doc.strip_prefix(root).unwrap().display().to_string();
        let text = std::fs::read_to_string(doc).unwrap();
        let base = doc.parent().unwrap();
        // Relative Markdown links.
        for (i, _) in text.match_indices("](") {
            let target: String = text[i + 2..].chars().take_while(|c| *c != ')').collect();
            let target = target.split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            if !base.join(target).exists() {
                wrong.push(format!("{rel_doc}: link to {target}"));
            }
        }
        // Code spans.
        for (k, span) in text.split('`').enumerate() {
            if k % 2 == 0 || span.contains(' ') || span.is_empty() {
                continue;
            }
            if let Some(problem) = check_span(span, root, &names, &src_files) {
                wrong.push(format!("{rel_doc}: `{span}`: {problem}"));
            }
            checked += 1;
        }
    }
    assert!(checked > 200, "the docs were read ({checked} names)");
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "names in the docs that point at nothing:\n{}",
        wrong.join("\n")
    );
}

/// Why `span` (one code span of a doc) names nothing, if it names a piece of
/// this repository that does not exist.
fn check_span(
    span: &str,
    root: &Path,
    names: &HashSet<String>,
    src_files: &[String],
) -> Option<String> {
    if span.contains(['*', '{', '<', '$', '=', '"', '\'', '[', '@']) {
        return None; // patterns, placeholders, settings
    }
    // A path in the repository.
    if DIRS.iter().any(|d| span.starts_with(d)) {
        let path = span.split(':').next().unwrap_or(span);
        return (!root.join(path).exists()).then(|| "no such path".into());
    }
    // A source file named from src/ or by its name alone.
    if span.ends_with(".rs") && !span.starts_with('/') && !span.contains("::") {
        let found = src_files
            .iter()
            .any(|f| f == span || f.ends_with(&format!("/{span}")));
        return (!found).then(|| "no such file under src/".into());
    }
    // A Rust path into our code.
    if !span.contains("::") {
        return None;
    }
    let path = span.trim_end_matches("()").trim_start_matches("crate::");
    let path = path.split('(').next().unwrap_or(path);
    let segments: Vec<&str> = path.split("::").collect();
    let first = segments[0];
    let module = MODULES.contains(&first);
    let ours = module
        || (first.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && names.contains(first));
    if !ours {
        return None;
    }
    // Inside a module, what follows is looked for in that module only.
    let within = module.then(|| module_names(root, first));
    let names = within.as_ref().unwrap_or(names);
    for seg in &segments[usize::from(module)..] {
        if seg.is_empty() || !seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None; // not a plain path after all
        }
        if !names.contains(*seg) {
            return Some(format!("nothing named '{seg}'"));
        }
    }
    None
}

/// The length of the function whose signature starts at `lines[at]`, to its
/// closing brace at the signature's indent (rustfmt's layout); `None` for a
/// declaration without a body.
fn function_length(lines: &[&str], at: usize) -> Option<usize> {
    let indent = lines[at].len() - lines[at].trim_start().len();
    let close = format!("{}}}", &lines[at][..indent]);
    let mut open = at;
    while open < lines.len() {
        let l = lines[open].trim_end();
        if l.ends_with(';') {
            return None;
        }
        if l.ends_with('{') {
            break;
        }
        open += 1;
    }
    (open..lines.len())
        .find(|&k| lines[k] == close)
        .map(|end| end - at + 1)
}

/// A `fn` item's line: `fn`, after any of `pub(..)`, `async`, `const`,
/// `unsafe`, `extern "C"`.
fn is_function(line: &str) -> bool {
    let mut rest = line.trim_start();
    loop {
        let next = [
            "pub(crate) ",
            "pub(super) ",
            "pub ",
            "async ",
            "const ",
            "unsafe ",
        ]
        .iter()
        .find_map(|p| rest.strip_prefix(p));
        match next {
            Some(r) => rest = r,
            None => break,
        }
    }
    rest.strip_prefix("fn ")
        .is_some_and(|r| r.starts_with(|c: char| c.is_alphabetic() || c == '_'))
}

/// Rooms a newcomer can read: no production file over 700 lines before its
/// tests, no function over 80 lines, no two source files of one name (but
/// `mod.rs` and a module's own `tests.rs`).
#[test]
fn rooms_stay_small() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    files_under(&root.join("src"), &mut files);
    let mut wrong = Vec::new();
    let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
    let mut functions = 0;
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rs"))
    {
        let rel = file.strip_prefix(root).unwrap().display().to_string();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if !["mod.rs", "lib.rs", "main.rs", "tests.rs"].contains(&name.as_str()) {
            by_name.entry(name).or_default().push(rel.clone());
        }
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let production = lines
            .iter()
            .position(|l| l.starts_with("#[cfg(test)]"))
            .unwrap_or(lines.len());
        if production > 700 {
            wrong.push(format!("{rel}: {production} lines before its tests (700)"));
        }
        for at in (0..production).filter(|&i| is_function(lines[i])) {
            let Some(len) = function_length(&lines[..production], at) else {
                continue;
            };
            functions += 1;
            if len > 80 {
                let line = lines[at].trim();
                wrong.push(format!("{rel}:{}: {len} lines (80): {line}", at + 1));
            }
        }
    }
    for (name, places) in by_name {
        if places.len() > 1 {
            wrong.push(format!("{name} names {} files: {places:?}", places.len()));
        }
    }
    assert!(functions > 500, "the functions were found ({functions})");
    assert!(wrong.is_empty(), "rooms too big:\n{}", wrong.join("\n"));
}

#[test]
fn the_room_measure_sees_a_long_function() {
    let mut long = vec!["    pub async fn big(", "        x: u8,", "    ) -> u8 {"];
    long.extend(std::iter::repeat_n("        x;", 90));
    long.push("    }");
    assert!(is_function(long[0]));
    assert_eq!(function_length(&long, 0), Some(94));
    assert!(!is_function("    let fnord = 1;"));
    assert_eq!(function_length(&["    fn decl(&self);"], 0), None);
}
