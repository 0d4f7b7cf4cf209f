//! The layers of ARCHITECTURE.md, checked: every `crate::` path in a module
//! of `src/` names a module of a lower layer. An import that points up (or
//! sideways, which is how cycles start) fails here with the file and line.

use std::path::Path;

/// Layer of each top-level module: a module may use only lower layers.
const LAYERS: &[(&str, u32)] = &[
    ("auth", 0),
    ("text", 0),
    ("limits", 1),
    ("binding", 2),
    ("body", 0),
    ("metrics", 0),
    ("tcp", 0),
    ("quota", 3),
    ("backend", 3),
    ("content", 3),
    ("upstream", 3),
    ("ratelimit", 3),
    ("binder", 4),
    ("config", 4),
    ("store", 5),
    ("kernel", 5),
    ("pool", 6),
    ("proxy", 6),
    ("api", 7),
    ("admin", 7),
    ("server", 8),
    ("cli", 8),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_imports_one_above_or_beside_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs");
        if matches!(module, "lib" | "main" | "bin") {
            continue; // the entry points wire everything
        }
        let Some(own) = layer(module) else {
            panic!(
                "src/{}: module '{module}' has no layer in tests/layers.rs",
                rel.display()
            );
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let used: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if used == module {
                    continue;
                }
                checked += 1;
                match layer(&used) {
                    Some(l) if l < own => {}
                    _ => wrong.push(format!(
                        "src/{}:{}: {module} (layer {own}) uses {used} ({:?})",
                        rel.display(),
                        n + 1,
                        layer(&used)
                    )),
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} imports found: is the scan broken?"
    );
    assert!(
        wrong.is_empty(),
        "imports that point up:\n{}",
        wrong.join("\n")
    );
}
