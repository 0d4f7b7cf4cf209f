//! The admin CLI (`binderd bindings|apply|pools|binders|spawn`), the real
//! binary against a running binderd: every command, its JSON output parsed
//! back, and the exit codes (0 done, 2 usage, 3 unauthorized or forbidden,
//! 4 not found, 5 conflict or full, 1 anything else).

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// `binderd ARGS --url URL` with `key` in `BINDERD_API_KEY`.
async fn cli(url: &str, key: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = Command::new(binderd_bin());
    cmd.args(args)
        .arg("--url")
        .arg(url)
        .env_remove("BINDERD_API_KEY");
    if let Some(key) = key {
        cmd.env("BINDERD_API_KEY", key);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers_with_tables_json_and_exit_codes() {
    let Harness { data, server, http } = Harness::start("cli").await;
    let url = server.url("");
    let admin = Some(ADMIN);

    // apply -f: the TOML of config/bindings/, the name from the file.
    let file = data.0.join("Notes.toml");
    std::fs::write(
        &file,
        format!(
            "command = [\"{}\", \"--port\", \"{{port}}\", \"--base-url\", \"{{base_url}}\"]\n\
             public = true\npool = {{ min = 1, max = 3 }}\n",
            standin()
        ),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let r = cli(&url, admin, &["apply", "-f", path]).await;
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, "binding 'notes' created"),
        "{}",
        r.stderr
    );
    let r = cli(&url, admin, &["apply", "-f", path]).await;
    assert_eq!(r.stdout.trim(), "binding 'notes' replaced", "{}", r.stderr);
    // No key: 401 → 3; a TOML error names line and column → 2.
    let r = cli(&url, None, &["apply", "-f", path]).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    let broken = data.0.join("broken.toml");
    std::fs::write(&broken, "public = true\ncommand = [\"x\"\n").unwrap();
    let r = cli(&url, admin, &["apply", "-f", broken.to_str().unwrap()]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("line 2") || r.stderr.contains("line 3"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);

    // bindings list / get.
    let r = cli(&url, admin, &["bindings", "list"]).await;
    assert!(
        r.stdout.starts_with("NAME") && r.stdout.contains("notes"),
        "{}",
        r.stdout
    );
    let r = cli(&url, admin, &["bindings", "list", "--output", "json"]).await;
    assert_eq!(r.json()[0]["name"], "notes");
    let r = cli(
        &url,
        admin,
        &["bindings", "get", "notes", "--output", "json"],
    )
    .await;
    assert_eq!(r.json()["pool"]["max"], 3);
    let r = cli(&url, admin, &["bindings", "get", "nothing"]).await;
    assert_eq!(r.code, 4, "{}", r.stderr);

    // pools.
    wait_pool(&http, &url, "notes", 20, |p| p["available"] == 1).await;
    let r = cli(&url, admin, &["pools", "resize", "notes", "--max", "4"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = cli(&url, admin, &["pools", "list", "--output", "json"]).await;
    assert_eq!(r.json()[0]["maxPool"], 4);
    let r = cli(&url, admin, &["pools", "resize", "notes"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);

    // spawn, then the binder's life.
    let r = cli(&url, admin, &["spawn", "notes"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let spawned = r.stdout.trim().to_owned();
    assert!(spawned.starts_with(&format!("{url}/user/")), "{spawned}");
    let r = cli(&url, admin, &["binders", "list", "--output", "json"]).await;
    let id = r.json()[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    let r = cli(&url, admin, &["binders", "list"]).await;
    assert!(
        r.stdout.starts_with("ID") && r.stdout.contains(&id),
        "{}",
        r.stdout
    );
    let r = cli(&url, admin, &["binders", "logs", &id]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("binderd-standin"), "{}", r.stdout);
    let r = cli(&url, admin, &["binders", "pause", &id]).await;
    assert_eq!(
        r.stdout.trim(),
        format!("binder {id} paused"),
        "{}",
        r.stderr
    );
    let r = cli(&url, admin, &["binders", "resume", &id]).await;
    assert_eq!(
        r.stdout.trim(),
        format!("binder {id} ready"),
        "{}",
        r.stderr
    );
    // In use: deleting the binding is a conflict (5) unless forced.
    let r = cli(&url, admin, &["bindings", "delete", "notes"]).await;
    assert_eq!(r.code, 5, "{}", r.stderr);
    let r = cli(&url, admin, &["binders", "stop", &id]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = cli(
        &url,
        admin,
        &["binders", "stop", "0123456789abcdef0123456789abcdef"],
    )
    .await;
    assert_eq!(r.code, 4, "{}", r.stderr);

    // A slow start: spawn waits (progress bar) and still prints the URL; a
    // full pool is 5.
    let slow = data.0.join("slow.toml");
    std::fs::write(
        &slow,
        format!(
            "command = [\"sh\", \"-c\", \"sleep 1; exec {} --port {{port}} --base-url {{base_url}}\"]\n\
             public = true\npool = {{ min = 0, max = 1 }}\n",
            standin()
        ),
    )
    .unwrap();
    let r = cli(&url, admin, &["apply", "-f", slow.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = cli(&url, admin, &["spawn", "slow", "--output", "json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["state"], "ready");
    let r = cli(&url, admin, &["spawn", "slow"]).await;
    assert_eq!(r.code, 5, "{}", r.stderr);
    let r = cli(&url, admin, &["bindings", "delete", "slow", "--force"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);

    // Usage: an unknown command prints the usage, exit 2; a binderd that
    // does not answer names the URL, exit 1.
    let r = cli(&url, admin, &["frobnicate"]).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("Usage"), "{}", r.stderr);
    let r = cli("http://127.0.0.1:9", admin, &["pools", "list"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("http://127.0.0.1:9"), "{}", r.stderr);
    assert!(!r.stderr.contains(ADMIN) && !r.stdout.contains(ADMIN));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rolls_a_new_commit_in_and_build_logs_prints_the_build() {
    let Harness { data, server, http } =
        Harness::with_config("cli-refresh", |c| c.content.allow_local = true).await;
    let url = server.url("");
    let admin = Some(ADMIN);
    let mut repo = Repo::new(&data, "");
    let mut binding = standin_binding("course", 1, 3);
    binding["repo"] = serde_json::json!(repo.url());
    create_binding(&http, &url, &binding).await;
    let first = repo.main.clone();

    // Nothing new: said so, nothing rolls.
    let r = cli(&url, admin, &["bindings", "refresh", "course"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!("still at {first}")),
        "{}",
        r.stdout
    );
    // A new commit: re-resolved and rolled.
    let second = repo.commit("new.ipynb");
    let r = cli(&url, admin, &["bindings", "refresh", "course"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!("{first} -> {second}")),
        "{}",
        r.stdout
    );
    let doc = http.get(&format!("{url}/bindings/course")).await.json();
    assert_eq!(doc["resolvedRef"], second.as_str());
    // The new commit's content is made in the background, then logged.
    let fetched = format!("at {second}");
    let (url2, fetched2) = (url.clone(), fetched.clone());
    wait_for(20, "the new commit's fetch in the build log", || {
        let (url, fetched) = (url2.clone(), fetched2.clone());
        async move {
            let r = cli(&url, admin, &["bindings", "build-logs", "course"]).await;
            assert_eq!(r.code, 0, "{}", r.stderr);
            r.stdout.contains(&fetched).then_some(())
        }
    })
    .await;
    let r = cli(&url, admin, &["bindings", "refresh", "nope"]).await;
    assert_eq!(r.code, 4, "{}", r.stderr);
    server.stop().await;
}

/// `binderd spawn --profile`: a binding with profiles applied from TOML
/// (the config files' form), a binder of the chosen profile, the default
/// without a choice, and an unknown profile named in the error (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_chooses_a_profile() {
    let Harness { data, server, http } = Harness::start("cli-profile").await;
    let url = server.url("");
    let admin = Some(ADMIN);
    let file = data.0.join("course.toml");
    std::fs::write(
        &file,
        format!(
            "command = [\"{}\", \"--port\", \"{{port}}\", \"--base-url\", \"{{base_url}}\"]\n\
             public = true\npool = {{ min = 1, max = 3 }}\n\n\
             [[profiles]]\nname = \"small\"\ndefault = true\n\n\
             [[profiles]]\nname = \"large\"\nresources = {{ nofile = 300 }}\n",
            standin()
        ),
    )
    .unwrap();
    let r = cli(&url, admin, &["apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    wait_pool(&http, &url, "course", 20, |p| {
        p["profiles"]["large"]["available"] == 1 && p["available"] == 1
    })
    .await;
    let r = cli(
        &url,
        admin,
        &["spawn", "course", "--profile", "large", "--output", "json"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["profile"], "large", "{}", r.stdout);
    let r = cli(&url, admin, &["spawn", "course", "--output", "json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["profile"], "small", "{}", r.stdout);
    let r = cli(&url, admin, &["spawn", "course", "--profile", "huge"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("small, large"), "{}", r.stderr);
    // pools: a row per profile; one profile's pool resized on its own.
    let r = cli(&url, admin, &["pools", "list"]).await;
    assert!(
        r.stdout.contains("course/large") && r.stdout.contains("course/small"),
        "{}",
        r.stdout
    );
    let r = cli(
        &url,
        admin,
        &[
            "pools",
            "resize",
            "course",
            "--profile",
            "large",
            "--min",
            "2",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("course/large"), "{}", r.stdout);
    let pool = http.get(&format!("{url}/pools/course")).await.json();
    assert_eq!(pool["profiles"]["large"]["minPool"], 2, "{pool}");
    assert_eq!(pool["profiles"]["small"]["minPool"], 1, "{pool}");
    let r = cli(
        &url,
        admin,
        &[
            "pools",
            "resize",
            "course",
            "--profile",
            "a&minPool=9",
            "--min",
            "2",
        ],
    )
    .await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("a&minPool=9"), "{}", r.stderr);
    server.stop().await;
}

/// `binderd config show`: every setting with where it came from (a file, a
/// variable, a flag, the default), secrets masked; an unknown key is exit
/// 64 naming the nearest known one.
#[test]
fn config_show_prints_every_setting_and_where_it_came_from() {
    let dir = std::env::temp_dir().join(format!("binderd-config-show-{}", std::process::id()));
    let bindings = dir.join("bindings");
    std::fs::create_dir_all(&bindings).unwrap();
    let file = dir.join("binderd.toml");
    std::fs::write(
        &file,
        "spawn_wait_seconds = 7\n[[api_keys]]\nname = \"admin\"\nkey = \"a-very-secret-admin-key\"\nrole = \"admin\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(binderd_bin())
            .args(["config", "show", "--config"])
            .arg(&file)
            .args(["--bindings-dir", bindings.to_str().unwrap()])
            .args(args)
            .env("BINDERD_RATE_LIMIT_GLOBAL_BURST", "9")
            .env_remove("BINDERD_API_KEYS")
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    let shown = run(&["--set", "rate_limit.anonymous_per_minute=0"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let line = |key: &str| {
        shown
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key}: {}", shown.stdout))
            .to_owned()
    };
    assert!(line("spawn_wait_seconds").ends_with("= 7  # file"));
    assert!(line("rate_limit.global_burst").ends_with("= 9  # env"));
    assert!(line("rate_limit.anonymous_per_minute").ends_with("= 0  # flag"));
    assert!(line("bindings_dir").ends_with("# flag"));
    assert!(line("listen").ends_with("= \"127.0.0.1:8585\"  # default"));
    assert!(line("api_keys").contains("1 keys") && line("api_keys").ends_with("# file"));
    assert!(
        !shown.stdout.contains("a-very-secret-admin-key"),
        "{}",
        shown.stdout
    );

    let unknown = run(&["--set", "rate_limit.anonymus_per_minute=0"]);
    assert_eq!(unknown.code, 64, "{}", unknown.stdout);
    assert!(
        unknown
            .stderr
            .contains("did you mean `rate_limit.anonymous_per_minute`"),
        "{}",
        unknown.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}
