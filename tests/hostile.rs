//! A hostile notebook: code inside a real process binder tries what a reader
//! of a public page could, and nothing may escape. Each binder here runs a
//! probe (a shell and Python, as a notebook's code would) before it starts
//! the stand-in server; the probe writes what it found into its own working
//! dir, which the test reads from outside.
//!
//! Skipped (with a line saying so) where binderd reports no isolation for
//! the process backend: that backend then runs trusted code only.

mod common;

use common::*;
use serde_json::{json, Value};

/// The probe: what a notebook's code would look for, written to `probe.txt`
/// in its working dir, then the stand-in server as the binder.
const PROBE: &str = r#"
import os, socket, sys, json
found = {}
found["env"] = dict(os.environ)
found["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
def every(name):
    out = []
    for p in found["pids"]:
        try:
            out.append(open(f"/proc/{p}/{name}", "rb").read().decode("latin-1"))
        except OSError:
            pass
    return out
found["environs"] = every("environ")
found["cmdlines"] = every("cmdline")
data = os.environ["PROBE_DATA_DIR"]
try:
    found["data_dir"] = sorted(os.listdir(data))
except OSError as e:
    found["data_dir"] = str(e)
try:
    open(os.path.join(data, "binderd.sqlite3"), "rb").read(16)
    found["store_readable"] = True
except OSError:
    found["store_readable"] = False
try:
    open("/etc/probe-write", "w").write("x")
    found["host_writable"] = True
except OSError:
    found["host_writable"] = False
host, port = os.environ["PROBE_BINDERD"].rsplit(":", 1)
s = socket.socket()
s.settimeout(2)
try:
    s.connect((host, int(port)))
    found["binderd_reachable"] = True
except OSError as e:
    found["binderd_reachable"] = False
found["uid"] = os.getuid()
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
found["no_new_privs"] = status.get("NoNewPrivs", "").strip()
found["cap_eff"] = status.get("CapEff", "").strip()
found["cap_prm"] = status.get("CapPrm", "").strip()
for name, path in [("shadow_readable", "/etc/shadow"), ("root_home_readable", "/root")]:
    try:
        (os.listdir if os.path.isdir(path) else (lambda p: open(p).read(1)))(path)
        found[name] = True
    except OSError:
        found[name] = False
try:
    open("/var/tmp/probe-write", "w").write("x")
    found["var_tmp_writable"] = True
except OSError:
    found["var_tmp_writable"] = False
json.dump(found, open("probe.txt.tmp", "w"))
os.rename("probe.txt.tmp", "probe.txt")
"#;

fn probe_binding(name: &str, binderd: &str, data_dir: &str) -> Value {
    let script = format!(
        "python3 -c '{}' ; exec {} --port {{port}} --base-url {{base_url}}",
        PROBE.replace('\'', "'\"'\"'"),
        standin()
    );
    json!({
        "name": name,
        "command": ["sh", "-c", script],
        "env": {"PROBE_BINDERD": binderd, "PROBE_DATA_DIR": data_dir},
        "public": true,
        "pool": {"min": 2, "max": 4},
        "start_timeout_seconds": 20,
    })
}

/// Whether this machine gives process binders namespaces (the test's
/// binderd says so in `GET /`).
async fn isolated(h: &Harness) -> bool {
    let root = h.http.get(&h.server.url("/")).await.json();
    let level = root["isolation"]["level"].as_str().unwrap_or("").to_owned();
    if level != "namespaces" {
        eprintln!(
            "skipped: no namespaces here ({}): the process backend runs trusted code only",
            root["isolation"]["message"]
        );
    }
    level == "namespaces"
}

fn probes(data: &DataDir) -> Vec<Value> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(data.0.join("binders")) else {
        return out;
    };
    for dir in dirs.flatten() {
        if let Ok(text) = std::fs::read_to_string(dir.path().join("probe.txt")) {
            out.push(serde_json::from_str(&text).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn a_notebook_finds_no_key_no_neighbour_no_store_and_no_host_to_write() {
    // A key in binderd's own environment too, as a careless operator would
    // leave it: the binder must not see it either way.
    let h = Harness::start("hostile-secrets").await;
    if !isolated(&h).await {
        return;
    }
    let binderd = h.server.url("").trim_start_matches("http://").to_owned();
    let data = h.data.0.to_string_lossy().into_owned();
    h.create_and_fill(&probe_binding("probe", &binderd, &data))
        .await;
    // A reader holds one of them: its token is what the other must not find.
    let (_, location) = hand_out(&h.http, &h.server.url(""), "probe", None).await;
    let token = location.trim_start_matches("/user/").trim_end_matches('/');
    let found = wait_for(20, "both probes to report", || {
        let found = probes(&h.data);
        async move { (found.len() >= 2).then_some(found) }
    })
    .await;
    for f in &found {
        let everything = f.to_string();
        for key in [ADMIN, ALICE, BOB] {
            assert!(!everything.contains(key), "a key leaked into a binder: {f}");
        }
        let env = f["env"].as_object().unwrap();
        assert!(!env.contains_key("BINDERD_API_KEYS"), "{env:?}");
        // Its own processes only: a handful, none of another binder's.
        let pids = f["pids"].as_array().unwrap();
        assert!(
            pids.len() < 10,
            "the binder sees the host's processes: {pids:?}"
        );
        let own_token = env["BINDERD_BASE_URL"].as_str().unwrap();
        if !own_token.contains(token) {
            assert!(
                !everything.contains(token),
                "another reader's token is visible to a binder: {f}"
            );
        }
        // binderd's data dir: only this binder's own working dir shows.
        let listing = f["data_dir"].to_string();
        assert!(!listing.contains("sqlite3"), "{listing}");
        assert!(!listing.contains("journal"), "{listing}");
        assert_eq!(f["store_readable"], false, "{f}");
        assert_eq!(f["host_writable"], false, "{f}");
        assert_eq!(
            f["binderd_reachable"], false,
            "binderd's port is reachable: {f}"
        );
        assert_ne!(f["uid"], 0, "a binder runs as root");
        // No capabilities, and no way back to any through a set-uid program.
        assert_eq!(f["no_new_privs"], "1", "{f}");
        assert_eq!(f["cap_eff"], "0000000000000000", "{f}");
        assert_eq!(f["cap_prm"], "0000000000000000", "{f}");
        assert_eq!(f["var_tmp_writable"], false, "{f}");
        if nix_is_root() {
            // As another uid: root's own files stay closed.
            assert_eq!(f["shadow_readable"], false, "{f}");
            assert_eq!(f["root_home_readable"], false, "{f}");
        }
    }
    assert!(!std::path::Path::new("/etc/probe-write").exists());
    assert!(!std::path::Path::new("/var/tmp/probe-write").exists());
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_pids_limit_and_the_rest_keeps_answering() {
    // Forks until refused (children sleep), counts.
    let bomb = r#"
import os, time
n = 0
try:
    while n < 5000:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError:
    pass
open("bomb.txt", "w").write(str(n))
"#;
    let Some(forks) = set_off("hostile-forks", bomb, json!({"pids": 64})).await else {
        return;
    };
    assert!(
        forks < 64,
        "{forks} processes forked past a pids limit of 64"
    );
}

/// Starts a binder whose code is `bomb` (Python, writing a number to
/// `bomb.txt` in its working dir before the binder serves) with
/// `resources`, beside a calm binding; returns that number once written,
/// after checking that binderd and the calm binding still answer. `None`
/// where there is no isolation to test.
async fn set_off(name: &str, bomb: &str, resources: Value) -> Option<u64> {
    let h = Harness::start(name).await;
    if !isolated(&h).await {
        return None;
    }
    h.create_and_fill(&standin_binding("calm", 1, 2)).await;
    let script = format!(
        "python3 -c '{bomb}' ; exec {} --port {{port}} --base-url {{base_url}}",
        standin()
    );
    let binding = json!({
        "name": "bomb",
        "command": ["sh", "-c", script],
        "resources": resources,
        "public": true,
        "pool": {"min": 1, "max": 1},
        "start_timeout_seconds": 30,
    });
    create_binding(&h.http, &h.server.url(""), &binding).await;
    let outcome = wait_for(30, "the bomb to be stopped", || {
        let data = h.data.0.clone();
        async move {
            let dirs = std::fs::read_dir(data.join("binders")).ok()?;
            dirs.flatten()
                .find_map(|d| std::fs::read_to_string(d.path().join("bomb.txt")).ok())
                .and_then(|t| t.trim().parse().ok())
        }
    })
    .await;
    // binderd and the other binding still answer while the bomb's leftovers live.
    let a = h.http.get(&h.server.url("/healthcheck")).await;
    assert_eq!(a.status, 200);
    let (_, location) = hand_out(&h.http, &h.server.url(""), "calm", None).await;
    let a = h.http.get(&h.server.url(&location)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    Some(outcome)
}

#[tokio::test]
async fn ambiguous_memory_and_raised_limits_are_refused_with_the_reason() {
    let h = Harness::start("hostile-limits").await;
    let base = h.server.url("");
    let mut b = standin_binding("mem", 0, 1);
    b["resources"] = json!({"memory": "512m"});
    let a = h
        .http
        .post_json(&format!("{base}/bindings"), Some(ADMIN), &b)
        .await;
    assert_error(&a, 400);
    assert!(a.body.contains("512Mi"), "{}", a.body);
    // Above the server's [limits] (1Gi by default): an admin key may.
    let b =
        json!({"name": "big", "command": ["true"], "resources": {"memory": "4Gi", "pids": 100000}});
    let a = h
        .http
        .post_json(&format!("{base}/bindings"), Some(ADMIN), &b)
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
}

#[tokio::test]
async fn a_memory_bomb_gets_no_more_than_its_limit_and_the_rest_keeps_answering() {
    // Takes memory 16 MiB at a time (touched, so it is real) until refused.
    let bomb = r#"
got = []
try:
    while len(got) < 1024:
        got.append(bytearray(16 << 20))
except MemoryError:
    pass
open("bomb.txt", "w").write(str(len(got) * 16))
del got
"#;
    let Some(mib) = set_off("hostile-memory", bomb, json!({"memory": "256Mi"})).await else {
        return;
    };
    assert!(mib <= 256, "a binder limited to 256Mi got {mib} MiB");
    assert!(
        mib >= 64,
        "the limit left the binder almost nothing: {mib} MiB"
    );
}

#[tokio::test]
async fn a_docker_binder_has_the_default_limits_and_cannot_reach_its_neighbour() {
    if !docker_ready() {
        return;
    }
    let h = Harness::with_config("hostile-docker", |c| {
        c.backend = binderd::backend::BackendKind::Docker;
    })
    .await;
    let _cleanup = DockerCleanup::new(&h.data);
    let base = h.server.url("");
    // No resources: the server's [limits] apply.
    h.create_and_fill(&docker_binding("plain", 2, 2)).await;
    let (_, location) = hand_out(&h.http, &base, "plain", None).await;
    let owner = binderd::backend::owner_key(&h.data.0);
    let ids = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=binderd.owner={owner}"),
    ]);
    assert!(ids.len() >= 2, "{ids:?}");
    let net = binderd::backend::docker::SHARED_NET;
    let mut addresses = Vec::new();
    for id in &ids {
        let host: Value =
            serde_json::from_str(&docker(&["inspect", "-f", "{{json .HostConfig}}", id]).join(""))
                .unwrap();
        assert_eq!(host["CapDrop"], json!(["ALL"]), "{host}");
        assert_eq!(host["Memory"], json!(1u64 << 30), "{host}");
        assert_eq!(
            host["MemorySwap"], host["Memory"],
            "swap no larger than memory"
        );
        assert_eq!(host["NanoCpus"], json!(1_000_000_000u64), "{host}");
        assert_eq!(host["PidsLimit"], json!(512), "{host}");
        assert_eq!(host["Privileged"], json!(false));
        assert!(
            host["SecurityOpt"]
                .to_string()
                .contains("no-new-privileges"),
            "{host}"
        );
        assert_eq!(host["LogConfig"]["Config"]["max-size"], "10m", "{host}");
        assert_eq!(host["Ulimits"][0]["Name"], "nofile", "{host}");
        assert_eq!(host["NetworkMode"], net, "{host}");
        let ip = docker(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
            id,
        ]);
        addresses.push(ip.join(""));
    }
    let icc = docker(&[
        "network",
        "inspect",
        "-f",
        "{{index .Options \"com.docker.network.bridge.enable_icc\"}}",
        net,
    ]);
    assert_eq!(icc, ["false"]);
    // From inside the handed-out binder, as a reader's code would: itself
    // answers (the probe works), each neighbour does not.
    let fetch = |url: String| {
        let http = &h.http;
        let at = h.server.url(&format!("{location}fetch?url={url}"));
        async move { http.get(&at).await }
    };
    let own = fetch("http://127.0.0.1:8888/".into()).await;
    assert_eq!(own.status, 200, "{}", own.body);
    let mut refused = 0;
    for ip in &addresses {
        let a = fetch(format!("http://{ip}:8888/")).await;
        if a.status != 200 {
            refused += 1;
        }
    }
    // One of the addresses is the binder's own (reachable from itself);
    // every other one is refused.
    assert!(
        refused >= addresses.len() - 1,
        "a neighbour answered: {addresses:?}"
    );
}

#[tokio::test]
async fn a_paused_binder_cannot_make_binderd_chown_a_host_directory() {
    let h = Harness::start("hostile-resume").await;
    if !isolated(&h).await || !nix_is_root() {
        return; // only a root binderd changes owners
    }
    // A directory of root's that the binder's `tmp` will point at.
    let victim = std::path::PathBuf::from(format!(
        "/var/tmp/binderd-test-victim-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = format!(
        "rm -rf tmp; ln -s {} tmp; exec {} --port {{port}} --base-url {{base_url}}",
        victim.display(),
        standin()
    );
    let mut binding = standin_binding("links", 1, 2);
    binding["command"] = json!(["sh", "-c", script]);
    h.create_and_fill(&binding).await;
    let (id, location) = hand_out(&h.http, &h.server.url(""), "links", Some(ALICE)).await;
    write_then_pause(&h.server, &h.http, "links", (&id, &location), "x").await;
    resume_then_read(&h.server, &h.http, "links", (&id, &location), "x").await;
    let meta = std::fs::metadata(&victim).unwrap();
    let _ = std::fs::remove_dir(&victim);
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(
        meta.uid(),
        0,
        "binderd chowned a host directory to a binder"
    );
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o755,
        "binderd chmodded a host directory"
    );
}

#[tokio::test]
async fn a_binder_that_floods_its_output_keeps_its_log_under_ten_mebibytes() {
    let h = Harness::start("hostile-log").await;
    if !isolated(&h).await {
        return;
    }
    // 30 MB of output before it serves.
    let script = format!(
        "head -c 30000000 /dev/zero | tr '\\0' x; echo; echo flooded; exec {} --port {{port}} --base-url {{base_url}}",
        standin()
    );
    let mut binding = standin_binding("loud", 1, 1);
    binding["command"] = json!(["sh", "-c", script]);
    binding["start_timeout_seconds"] = json!(30);
    h.create_and_fill(&binding).await;
    let logs = std::fs::read_dir(h.data.0.join("logs")).unwrap();
    let mut seen = 0;
    for log in logs.flatten() {
        let len = log.metadata().unwrap().len();
        assert!(len <= 10 << 20, "a binder's log grew to {len} bytes");
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(text.contains("starts again"), "no note of the cut");
        assert!(text.contains("flooded"), "the latest output is kept");
        seen += 1;
    }
    assert_eq!(seen, 1);
}

#[tokio::test]
async fn a_docker_memory_bomb_kills_only_its_own_binder_which_is_replaced() {
    if !docker_ready() {
        return;
    }
    let h = Harness::with_config("hostile-docker-memory", |c| {
        c.backend = binderd::backend::BackendKind::Docker;
    })
    .await;
    let _cleanup = DockerCleanup::new(&h.data);
    let base = h.server.url("");
    let mut binding = docker_binding("small", 2, 3);
    binding["resources"] = json!({"memory": "32Mi"});
    h.create_and_fill(&binding).await;
    let (id, location) = hand_out(&h.http, &base, "small", None).await;
    let (_, neighbour) = hand_out(&h.http, &base, "small", None).await;
    // Its own code asks for 256 MiB: the engine kills it, nothing else.
    let bomb = h
        .http
        .get(&h.server.url(&format!("{location}alloc?mib=256")))
        .await;
    assert_ne!(bomb.status, 200, "{}", bomb.body);
    let failed = wait_for(30, "binderd to see the bomb's binder die", || {
        let url = h.server.url(&format!("/binders/small/{id}"));
        let http = &h.http;
        async move {
            let d = http.get(&url).await.json();
            (d["state"] == "failed").then_some(d)
        }
    })
    .await;
    assert!(
        failed["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{failed}"
    );
    let a = h
        .http
        .get(&h.server.url(&format!("{neighbour}api/status")))
        .await;
    assert_eq!(a.status, 200, "the neighbour went down too: {}", a.body);
    // The pool is whole again: two warm beside the neighbour.
    wait_pool(&h.http, &base, "small", 30, |p| {
        p["available"] == 2 && p["running"] == 3
    })
    .await;
}

/// Processes in `/proc` whose environment has `var=value`.
fn processes_with(var: &str, value: &str) -> Vec<u32> {
    let needle = format!("{var}={value}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

/// The orphan sweep (run once a deleted binding's binders have stopped)
/// removes a process labelled as this binderd's that no binder owns, and
/// does nothing for one whose label a binder's code wrote to name a path:
/// before the sweep refused such labels, binderd removed the "working dir"
/// `binders/../victim` it named.
#[tokio::test]
async fn a_notebook_cannot_make_the_orphan_sweep_remove_a_path() {
    let h = Harness::start("hostile-sweep").await;
    let victim = h.data.0.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep"), "x").unwrap();
    // The notebook's code: a process of its own, in a session of its own
    // (so it leads its group, as a binder's first process does), labelled
    // with a binder id that walks out of binderd's working dirs.
    let script = format!(
        "setsid env BINDERD_BINDER_ID=../victim sleep 300 </dev/null >/dev/null 2>&1 & exec {} --port {{port}} --base-url {{base_url}}",
        standin()
    );
    let mut hostile = standin_binding("labeller", 1, 1);
    hostile["command"] = json!(["sh", "-c", script]);
    h.create_and_fill(&hostile).await;
    wait_for(20, "the relabelled process", || async {
        (!processes_with("BINDERD_BINDER_ID", "../victim").is_empty()).then_some(())
    })
    .await;
    // A true orphan: labelled for this binderd, a binder id nobody has. The
    // sweep goes through binder ids in order, one at a time: once this one
    // (after "../victim") is gone, the labelled path has had its turn.
    let orphan_id = "0123456789abcdef0123456789abcdef";
    use std::os::unix::process::CommandExt;
    let mut orphan = std::process::Command::new("sleep")
        .arg("300")
        .env("BINDERD_OWNER", binderd::backend::owner_key(&h.data.0))
        .env("BINDERD_BINDING", "gone")
        .env("BINDERD_BINDER_ID", orphan_id)
        .process_group(0)
        .spawn()
        .unwrap();
    // Deleting any binding sweeps once its binders have stopped.
    h.create_and_fill(&standin_binding("decoy", 1, 1)).await;
    let del = h
        .http
        .call(
            hyper::Method::DELETE,
            &h.server.url("/bindings/decoy"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(del.status, 202, "{}", del.body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while orphan.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweep left the orphan running"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        victim.join("keep").exists(),
        "the sweep removed the directory a binder's label named"
    );
    assert!(
        !processes_with("BINDERD_BINDER_ID", "../victim").is_empty(),
        "the relabelled process was taken for a binder"
    );
}

/// Attack: a binding's `env` names a `PATH` whose first folder holds a
/// program called `bwrap` (a binder could write one into its working dir, a
/// package could install a script of that name). binderd starts every
/// binder through bubblewrap with the binder's environment; were bubblewrap
/// looked up on that `PATH`, binderd would run the attacker's program, as
/// root and outside any sandbox. It must run its own, found at start.
#[tokio::test]
async fn a_binding_s_path_cannot_choose_the_bubblewrap_binderd_runs() {
    let h = Harness::start("hostile-path").await;
    if !isolated(&h).await {
        return;
    }
    let evil =
        std::path::PathBuf::from(format!("/var/tmp/binderd-test-path-{}", std::process::id()));
    std::fs::create_dir_all(&evil).unwrap();
    let marker = evil.join("ran-as-binderd");
    let fake = evil.join("bwrap");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nid > {}\nexit 1\n", marker.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut binding = standin_binding("pathy", 1, 2);
    binding["env"] = json!({"PATH": format!("{}:/usr/bin:/bin", evil.display())});
    h.create_and_fill(&binding).await;
    let ran = std::fs::read_to_string(&marker).ok();
    let _ = std::fs::remove_dir_all(&evil);
    assert_eq!(ran, None, "binderd ran the binding's own bwrap");
    h.server.stop().await;
}
