//! Several binderd replicas in shared mode (`[kubernetes] shared = true`),
//! as separate processes, against one fake API server on loopback
//! (`tests/kube_api`): a real cluster was not run here (none can be had on
//! this machine). Each pod's notebook is a real stand-in process on an
//! address of its own, so "reachable through every replica" means the
//! replica routed to that pod.

mod common;
mod kube_api;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Method;
use kube_api::KubeApi;

use kube_api::LEASE_SECONDS;

struct Replicas {
    api: Arc<KubeApi>,
    dir: DataDir,
    procs: Vec<Process>,
}

fn config(dir: &DataDir, replica: &str, min: u32, max: u32) -> std::path::PathBuf {
    config_with(dir, replica, min, max, "")
}

/// [`config`] with more lines for the binding.
fn config_with(dir: &DataDir, replica: &str, min: u32, max: u32, more: &str) -> std::path::PathBuf {
    let path = dir.0.join(format!("{replica}.toml"));
    let text = kube_api::replica_config(Some(replica), min, max, more);
    std::fs::write(&path, format!("cull_interval_ms = 200\n{text}")).unwrap();
    path
}

impl Replicas {
    async fn start(name: &str, n: usize, min: u32, max: u32) -> Replicas {
        let api = KubeApi::start(standin()).await;
        let dir = DataDir::new(name);
        let kubeconfig = dir.0.join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
        let mut r = Replicas {
            api,
            dir,
            procs: Vec::new(),
        };
        for i in 0..n {
            r.spawn(&format!("r{i}"), min, max);
        }
        r
    }

    fn spawn(&mut self, replica: &str, min: u32, max: u32) {
        let data = DataDir(self.dir.0.join(replica));
        std::fs::create_dir_all(&data.0).unwrap();
        let cfg = config(&self.dir, replica, min, max);
        let kubeconfig = self.dir.0.join("kubeconfig");
        let p = Process::spawn(
            &data,
            &["--config", cfg.to_str().unwrap()],
            &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        );
        std::mem::forget(data); // the parent dir is cleaned with `dir`
        self.procs.push(p);
    }

    fn url(&self, i: usize, path: &str) -> String {
        self.procs[i].url(path)
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, p) in self.procs.iter().enumerate() {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- replica r{i} (last lines) ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Hands out one binder through replica `i`: (id, token) on 201.
async fn hand_out_at(http: &Http, r: &Replicas, i: usize) -> Result<(String, String), String> {
    let a = http
        .call(Method::POST, &r.url(i, "/binders/nb"), Some(ADMIN))
        .await;
    if a.status != 201 && a.status != 202 {
        return Err(format!("{}: {}", a.status, a.body));
    }
    let mut doc = a.json();
    // Started for the caller (202): its location comes once it is ready.
    let id = doc["id"].as_str().unwrap_or_default().to_owned();
    for _ in 0..400 {
        if doc["location"].as_str().is_some_and(|l| !l.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        doc = http
            .call(
                Method::GET,
                &r.url(i, &format!("/binders/nb/{id}")),
                Some(ADMIN),
            )
            .await
            .json();
    }
    let location = doc["location"].as_str().unwrap_or_default().to_owned();
    let token = location
        .trim_start_matches("/user/")
        .trim_end_matches('/')
        .to_owned();
    Ok((doc["id"].as_str().unwrap_or_default().to_owned(), token))
}

/// Through replica `i`, the binder id the pod behind `token` reports.
async fn reached(http: &Http, r: &Replicas, i: usize, token: &str) -> Option<String> {
    let a = http
        .get(&r.url(i, &format!("/user/{token}/api/status")))
        .await;
    (a.status == 200).then(|| a.json()["binder"].as_str().unwrap_or_default().to_owned())
}

fn assert_each_pod_claimed_once(api: &KubeApi) {
    let claims = api.claims.lock().unwrap().clone();
    let mut pods = HashSet::new();
    for c in &claims {
        assert!(
            pods.insert(c.pod.clone()),
            "pod {} claimed twice: {claims:?}",
            c.pod
        );
        assert_eq!(c.token_hash.len(), 40, "{c:?}");
    }
    assert!(api.violations().is_empty(), "{:?}", api.violations());
}

async fn wait_warm(api: &KubeApi, n: usize) {
    eventually(60, &format!("{n} warm pods"), || async move {
        api.pods_in("warm") >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_hand_out_each_pod_once_and_any_replica_reaches_any_binder() {
    let r = Replicas::start("replicas-burst", 3, 6, 40).await;
    wait_warm(&r.api, 6).await;
    // One replica leads the binding and made every pod.
    let makers: HashSet<String> = r
        .api
        .pod_names()
        .iter()
        .filter_map(|n| r.api.pod(n))
        .map(|p| {
            p["metadata"]["labels"]["binderd.replica"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(makers.len(), 1, "pods made by {makers:?}");

    let http = Http::new();
    let burst = (0..18).map(|k| {
        let http = &http;
        let r = &r;
        async move { hand_out_at(http, r, k % 3).await }
    });
    let answers = futures_util::future::join_all(burst).await;
    let handed: Vec<(String, String)> = answers.into_iter().map(|a| a.unwrap()).collect();
    let tokens: HashSet<&String> = handed.iter().map(|(_, t)| t).collect();
    assert_eq!(
        tokens.len(),
        handed.len(),
        "a token handed out twice: {handed:?}"
    );
    let ids: HashSet<&String> = handed.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), handed.len(), "a binder handed out twice");
    assert_each_pod_claimed_once(&r.api);
    assert_eq!(r.api.claims.lock().unwrap().len(), handed.len());

    // Every binder answers through every replica, from its own pod.
    for (id, token) in &handed {
        for i in 0..3 {
            let (http, r) = (&http, &r);
            let got = wait_for(20, &format!("{id} through replica {i}"), || async move {
                reached(http, r, i, token).await
            })
            .await;
            assert_eq!(&got, id, "replica {i} routed {token} to another pod");
        }
    }
    // The config file's binding is changed in the file, not through one
    // replica's API.
    let resized = http
        .post_json(
            &r.url(1, "/pools/nb"),
            Some(ADMIN),
            &serde_json::json!({"minPool": 1}),
        )
        .await;
    assert_error(&resized, 409);
    let deleted = http
        .call(
            Method::DELETE,
            &r.url(2, "/bindings/nb?force=true"),
            Some(ADMIN),
        )
        .await;
    assert_error(&deleted, 409);
    // A token nobody was given reaches nothing anywhere.
    for i in 0..3 {
        assert!(reached(&http, &r, i, "not-a-token-0123456789")
            .await
            .is_none());
    }
    // The pool refills to its minimum, still from one maker at a time.
    wait_warm(&r.api, 6).await;
    assert_each_pod_claimed_once(&r.api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_loses_its_leases_and_nothing_it_handed_out() {
    let mut r = Replicas::start("replicas-kill", 3, 4, 40).await;
    wait_warm(&r.api, 4).await;
    let http = Http::new();
    let lease = wait_for(20, "a lease holder", || async {
        r.api.lease_holders().into_iter().next()
    })
    .await;
    let holder: usize = lease.1.trim_start_matches('r').parse().unwrap();
    // Handed out through the holder, then the holder dies mid-burst.
    let mine = hand_out_at(&http, &r, holder).await.unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != holder).collect();
    let before =
        futures_util::future::join_all((0..6).map(|k| hand_out_at(&http, &r, others[k % 2])));
    let pid = r.procs[holder].child.id().to_string();
    let kill = async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
        assert!(killed.unwrap().success());
        std::time::Instant::now()
    };
    let (answers, killed_at) = tokio::join!(before, kill);
    let mut handed: Vec<(String, String)> = answers.into_iter().map(|a| a.unwrap()).collect();
    r.procs[holder].sigkill(); // reaped
                               // The others keep handing out.
    for k in 0..6 {
        handed.push(hand_out_at(&http, &r, others[k % 2]).await.unwrap());
    }
    // Its lease moves to a live replica within the lease time (plus a
    // renewal period).
    let (moved_to, moved_at) = wait_for(3 * LEASE_SECONDS + 5, "the lease to move", || async {
        let takeovers = r.api.takeovers.lock().unwrap().clone();
        takeovers
            .into_iter()
            .find(|(n, h, at)| *n == lease.0 && *h != lease.1 && *at > killed_at)
            .map(|(_, h, at)| (h, at))
    })
    .await;
    let took = moved_at - killed_at;
    assert!(
        took <= Duration::from_secs(LEASE_SECONDS + LEASE_SECONDS / 3 + 1),
        "the lease took {took:?} to move to {moved_to}"
    );
    assert_ne!(moved_to, lease.1);
    // The new holder keeps the pool warm.
    wait_warm(&r.api, 4).await;
    // What the lost replica handed out still answers through the others.
    for (id, token) in std::iter::once(&mine).chain(handed.iter()) {
        for &i in &others {
            let (http, r) = (&http, &r);
            let got = wait_for(20, &format!("{id} through replica {i}"), || async move {
                reached(http, r, i, token).await
            })
            .await;
            assert_eq!(&got, id);
        }
    }
    assert_each_pod_claimed_once(&r.api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lease_holders_at_once_still_hand_out_no_pod_twice() {
    let r = Replicas::start("replicas-split", 0, 3, 60).await;
    // Every replica is told every Lease is free: all three lead at once.
    r.api
        .split_brain
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut r = r;
    for i in 0..3 {
        r.spawn(&format!("r{i}"), 3, 60);
    }
    wait_warm(&r.api, 3).await;
    // Each of the three believes it leads the binding.
    for p in &r.procs {
        let log = &p.log;
        eventually(10, "every replica leading", || async move {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains("leading this binding")
        })
        .await;
    }
    let http = Http::new();
    let answers = futures_util::future::join_all((0..24).map(|k| {
        let http = &http;
        let r = &r;
        async move { hand_out_at(http, r, k % 3).await }
    }))
    .await;
    let handed: Vec<(String, String)> = answers.into_iter().map(|a| a.unwrap()).collect();
    let tokens: HashSet<&String> = handed.iter().map(|(_, t)| t).collect();
    assert_eq!(tokens.len(), handed.len());
    assert_each_pod_claimed_once(&r.api);
    let by_replica: HashMap<String, usize> =
        r.api
            .claims
            .lock()
            .unwrap()
            .iter()
            .fold(HashMap::new(), |mut m, c| {
                *m.entry(c.replica.clone()).or_default() += 1;
                m
            });
    assert!(by_replica.len() >= 2, "{by_replica:?}");
}

/// A shared-mode backend in this process, as replica `name`.
async fn backend_as(api: &KubeApi, name: &str) -> binderd::backend::kubernetes::KubernetesBackend {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&api.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let (exits, _) = tokio::sync::mpsc::unbounded_channel();
    binderd::backend::kubernetes::KubernetesBackend::new_shared(
        client,
        kube_api::NS,
        name.to_owned(),
        Duration::from_secs(LEASE_SECONDS),
        None,
        exits,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_racing_claims_on_one_pod_the_api_server_takes_one() {
    use binderd::backend::{Backend, Claim, Cluster, SharedPhase};
    let r = Replicas::start("replicas-race", 1, 2, 10).await;
    wait_warm(&r.api, 2).await;
    let (a, b) = (
        backend_as(&r.api, "ra").await,
        backend_as(&r.api, "rb").await,
    );
    // Both see the same warm pod, at the same version.
    let mut views = a.cluster().unwrap().take_views().unwrap();
    let warm = wait_for(20, "a warm pod in the watch", || {
        let got = views.try_recv().ok();
        async move { got.filter(|v| matches!(v.phase, SharedPhase::Warm { .. })) }
    })
    .await;
    let mut other = b.cluster().unwrap().take_views().unwrap();
    wait_for(20, "the same pod in the other watch", || {
        let got = other.try_recv().ok();
        let id = warm.binder_id.clone();
        async move { got.filter(|v| v.binder_id == id) }
    })
    .await;
    let conflicts = r.api.conflicts.load(std::sync::atomic::Ordering::Relaxed);
    let claim = |token: &'static str| Claim {
        token,
        owner: None,
        at: 1,
        from_starting: false,
    };
    let (ca, cb) = (claim("token-of-a"), claim("token-of-b"));
    let (x, y) = tokio::join!(a.claim(&warm.instance, &ca), b.claim(&warm.instance, &cb));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x ^ y, "exactly one claim must win: {x} {y}");
    assert_eq!(
        r.api.conflicts.load(std::sync::atomic::Ordering::Relaxed),
        conflicts + 1,
        "the loser's PATCH was refused by its resourceVersion"
    );
    let winner = if x { "token-of-a" } else { "token-of-b" };
    let pod = r.api.pod(&warm.instance.handle).unwrap();
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["binderd.state"], "assigned");
    assert_eq!(
        labels["binderd.token-hash"],
        binderd::backend::kubernetes::claims::token_hash(winner)
    );
    // No token in the pod's labels or annotations.
    let meta = pod["metadata"].to_string();
    assert!(!meta.contains("token-of-"), "{meta}");
    // A pod already claimed cannot be claimed again.
    assert!(!a.claim(&warm.instance, &claim("token-of-c")).await.unwrap());
    assert_each_pod_claimed_once(&r.api);
}

/// The fake's own rules, as the API server has them.
#[test]
fn merge_patches_and_selectors_behave_like_the_api_servers() {
    let mut pod =
        serde_json::json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": [1]}});
    kube_api::merge_patch(
        &mut pod,
        &serde_json::json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"x": [2]}}),
    );
    assert_eq!(
        pod,
        serde_json::json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"x": [2]}})
    );
    let l = serde_json::json!({"binderd.owner": "o", "binderd.state": "warm"});
    assert!(kube_api::selects("binderd.owner=o", &l));
    assert!(kube_api::selects(
        "binderd.owner==o,binderd.state!=assigned",
        &l
    ));
    assert!(!kube_api::selects("binderd.owner=p", &l));
    assert_eq!(
        kube_api::percent_decode("binderd.owner%3Do%2Cx"),
        "binderd.owner=o,x"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_after_a_crash_adopts_its_binders_from_the_claims() {
    let mut r = Replicas::start("replicas-restart", 1, 2, 10).await;
    wait_warm(&r.api, 2).await;
    let http = Http::new();
    let (id, token) = hand_out_at(&http, &r, 0).await.unwrap();
    r.procs[0].sigkill();
    r.spawn("r0", 2, 10);
    let got = wait_for(20, "the binder through the restarted replica", || {
        let (http, r, token) = (&http, &r, &token);
        async move { reached(http, r, 1, token).await }
    })
    .await;
    assert_eq!(got, id);
    let doc = http
        .call(
            Method::GET,
            &r.url(1, &format!("/binders/nb/{id}")),
            Some(ADMIN),
        )
        .await
        .json();
    assert_eq!(doc["state"], "ready", "{doc}");
    // The claimed pod is never handed out again.
    for _ in 0..3 {
        let (other, _) = hand_out_at(&http, &r, 1).await.unwrap();
        assert_ne!(other, id);
    }
    assert_each_pod_claimed_once(&r.api);
}

/// Removes the containers and networks of the Docker replicas test.
struct DockerRun(String);

impl Drop for DockerRun {
    fn drop(&mut self) {
        let filter = format!("label=binderd-replicas-test={}", self.0);
        let ids = docker(&["ps", "-aq", "--filter", &filter]);
        if std::thread::panicking() {
            for id in &ids {
                let out = std::process::Command::new("docker")
                    .args(["logs", "--tail", "30", id])
                    .output()
                    .unwrap();
                eprintln!(
                    "--- container {id} ---\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            docker(&args);
        }
        // The engine may still be letting go of an endpoint: a few tries.
        for _ in 0..10 {
            let left = docker(&["network", "ls", "-q", "--filter", &filter]);
            if left.is_empty() {
                break;
            }
            for n in left {
                docker(&["network", "rm", &n]);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn inspect(what: &str, format: &str) -> String {
    docker(&["inspect", "-f", format, what])
        .into_iter()
        .next()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_docker_a_replica_cut_off_from_the_api_server_stops_handing_out_and_the_others_go_on() {
    if !docker_ready() {
        return;
    }
    let built = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/build-test-image"
    ))
    .arg(binderd_bin())
    .env("IMAGE", "binderd/binderd:test")
    .status()
    .unwrap();
    assert!(built.success());
    let tag = format!("{:08x}", rand::random::<u32>());
    let _cleanup = DockerRun(tag.clone());
    let label = format!("binderd-replicas-test={tag}");
    // The API server's network, and an internal one (no route out) the
    // test reaches the replicas on.
    let api_net = format!("binderd-api-{tag}");
    let client_net = format!("binderd-clients-{tag}");
    docker(&["network", "create", "--label", &label, &api_net]);
    docker(&[
        "network",
        "create",
        "--internal",
        "--label",
        &label,
        &client_net,
    ]);
    let gateway = docker(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Gateway}}",
        &api_net,
    ])
    .into_iter()
    .next()
    .expect("the network's gateway");
    let api = KubeApi::start_on(
        standin(),
        gateway.parse().unwrap(),
        kube_api::Kubelet::Docker {
            network: api_net.clone(),
            image: TEST_IMAGE.into(),
            label: label.clone(),
        },
    )
    .await;
    // The replicas reach it only through a relay container on the API's
    // network: the host's own addresses stay reachable from any Docker
    // network, a container on another network does not.
    let relay = format!("binderd-apiserver-{tag}");
    let upstream = api.addr.to_string();
    docker(&[
        "run",
        "-d",
        "--name",
        &relay,
        "--label",
        &label,
        "--network",
        &api_net,
        TEST_IMAGE,
        "--port",
        "6443",
        "--all-interfaces",
        "--relay-to",
        &upstream,
    ]);
    let relay_ip = inspect(
        &relay,
        &format!("{{{{(index .NetworkSettings.Networks \"{api_net}\").IPAddress}}}}"),
    );
    let dir = DataDir::new("replicas-docker");
    let server: std::net::SocketAddr = format!("{relay_ip}:6443").parse().unwrap();
    std::fs::write(dir.0.join("kubeconfig"), api.kubeconfig_via(server)).unwrap();
    let mut bases = Vec::new();
    let mut names = Vec::new();
    for i in 0..3 {
        let replica = format!("r{i}");
        let cfg = config(&dir, &replica, 3, 30);
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, format!("listen = \"0.0.0.0:8585\"\n{text}")).unwrap();
        let name = format!("binderd-{replica}-{tag}");
        let volume = format!("{}:/cfg:ro", dir.0.display());
        let keys = format!("BINDERD_API_KEYS=admin:{ADMIN}:admin");
        let created = docker(&[
            "create",
            "--name",
            &name,
            "--label",
            &label,
            "--network",
            &client_net,
            "-v",
            &volume,
            "-e",
            "KUBECONFIG=/cfg/kubeconfig",
            "-e",
            &keys,
            "-e",
            "RUST_LOG=info",
            "binderd/binderd:test",
            "serve",
            "--config",
            &format!("/cfg/{replica}.toml"),
            "--data-dir",
            "/data",
        ]);
        assert_eq!(created.len(), 1, "docker create {name}");
        docker(&["network", "connect", &api_net, &name]);
        docker(&["start", &name]);
        let ip = inspect(
            &name,
            &format!("{{{{(index .NetworkSettings.Networks \"{client_net}\").IPAddress}}}}"),
        );
        bases.push(format!("http://{ip}:8585"));
        names.push(name);
    }
    let http = Http::new();
    for base in &bases {
        eventually(60, &format!("{base} answering"), || async {
            let url = format!("{base}/healthcheck");
            let answer = http
                .try_send(Method::GET, &url, &[], bytes::Bytes::new())
                .await;
            answer.is_ok_and(|a| a.status == 200)
        })
        .await;
    }
    wait_warm(&api, 3).await;
    let hand_out = |i: usize| {
        let (http, base) = (&http, bases[i].clone());
        async move {
            let a = http
                .call(Method::POST, &format!("{base}/binders/nb"), Some(ADMIN))
                .await;
            (a.status, a.json())
        }
    };
    for i in 0..3 {
        let (status, doc) = hand_out(i).await;
        assert!(
            status == 201 || status == 202,
            "replica {i}: {status} {doc}"
        );
    }
    // r1 loses the API server's network.
    docker(&["network", "disconnect", &api_net, &names[1]]);
    let cut_at = std::time::Instant::now();
    let by_r1 = || {
        api.claims
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.replica == "r1")
            .count()
    };
    let claimed_by_r1 = by_r1();
    // Within a Lease renewal and its call's limit it knows it cannot reach
    // the API server, and says so where an operator's probe looks...
    let health = format!("{}/health", bases[1]);
    eventually(
        2 * LEASE_SECONDS,
        "r1 reporting the API server gone",
        || async { http.get(&health).await.status == 503 },
    )
    .await;
    assert!(cut_at.elapsed() < Duration::from_secs(2 * LEASE_SECONDS));
    let said = http.get(&health).await;
    assert!(said.body.contains("Kubernetes API server"), "{}", said.body);
    // ...and from then on hands out nothing: no claim, no start.
    for _ in 0..3 {
        let (status, doc) = hand_out(1).await;
        assert_eq!(
            status, 503,
            "a replica that cannot claim must not hand out: {doc}"
        );
        let message = doc["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("Kubernetes API server"), "{doc}");
    }
    assert_eq!(by_r1(), claimed_by_r1, "r1 claimed nothing once cut off");
    // The others go on, and what they hand out answers through each other.
    for k in 0..6 {
        let i = [0, 2][k % 2];
        let (status, doc) = hand_out(i).await;
        assert!(
            status == 201 || status == 202,
            "replica {i}: {status} {doc}"
        );
        let id = doc["id"].as_str().unwrap().to_owned();
        let base = &bases[i];
        let location = wait_for(30, "a location", || {
            let (http, id) = (&http, &id);
            async move {
                let d = http
                    .call(Method::GET, &format!("{base}/binders/nb/{id}"), Some(ADMIN))
                    .await
                    .json();
                d["location"]
                    .as_str()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
            }
        })
        .await;
        let other = &bases[2 - i];
        let got = wait_for(30, "the binder through the other replica", || {
            let (http, location) = (&http, &location);
            async move {
                let a = http.get(&format!("{other}{location}api/status")).await;
                (a.status == 200).then(|| a.json()["binder"].as_str().unwrap_or("").to_owned())
            }
        })
        .await;
        assert_eq!(got, id);
    }
    assert_each_pod_claimed_once(&api);
    api.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_holder_culls_a_lost_replicas_binders_by_age() {
    let mut r = Replicas::start("replicas-age", 0, 2, 10).await;
    for i in 0..2 {
        let replica = format!("r{i}");
        let cull = "cull = { max_age_seconds = 4, idle_seconds = 3600, unvisited_seconds = 0 }";
        let cfg = config_with(&r.dir, &replica, 2, 10, cull);
        let data = DataDir(r.dir.0.join(&replica));
        std::fs::create_dir_all(&data.0).unwrap();
        let kubeconfig = r.dir.0.join("kubeconfig");
        r.procs.push(Process::spawn(
            &data,
            &["--config", cfg.to_str().unwrap()],
            &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        ));
        std::mem::forget(data);
    }
    wait_warm(&r.api, 2).await;
    let holder = wait_for(20, "a lease holder", || async {
        r.api.lease_holders().into_iter().next().map(|(_, h)| h)
    })
    .await;
    let other: usize = if holder == "r0" { 1 } else { 0 };
    let http = Http::new();
    let (id, _) = hand_out_at(&http, &r, other).await.unwrap();
    let pod = r
        .api
        .pod_names()
        .into_iter()
        .find(|n| {
            r.api
                .pod(n)
                .is_some_and(|p| p["metadata"]["labels"]["binderd.binder"] == id.as_str())
        })
        .expect("the binder's pod");
    // The replica that claimed it dies: nobody counts its traffic now.
    r.procs[other].sigkill();
    let killed = std::time::Instant::now();
    eventually(15, "the lost replica's binder culled by age", || async {
        r.api.pod(&pod).is_none()
    })
    .await;
    // Not before its age (4 s after the claim, which came before the kill).
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "{:?}",
        killed.elapsed()
    );
    assert_each_pod_claimed_once(&r.api);
}

/// Warm pods of `binding` in the fake.
fn warm_of(api: &KubeApi, binding: &str) -> usize {
    api.pod_names()
        .iter()
        .filter_map(|n| api.pod(n))
        .filter(|p| {
            p["metadata"]["labels"]["binderd.binding"] == binding
                && p["metadata"]["labels"]["binderd.state"] == "warm"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_made_resized_and_deleted_through_any_replica_reach_every_replica() {
    let mut r = Replicas::start("replicas-bindings", 3, 1, 10).await;
    wait_warm(&r.api, 1).await;
    let http = Http::new();
    let body = serde_json::json!({
        "name": "made", "image": "standin:1", "port": 8888, "public": true,
        "start_timeout_seconds": 10, "pool": {"min": 2, "max": 10},
    });
    let a = http
        .post_json(&r.url(0, "/bindings"), Some(ADMIN), &body)
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    // Every replica has it, and one of them (the Lease holder) fills it.
    for i in 0..3 {
        let url = r.url(i, "/bindings/made");
        eventually(10, &format!("the binding on replica {i}"), || async {
            http.call(Method::GET, &url, Some(ADMIN)).await.status == 200
        })
        .await;
    }
    eventually(30, "two warm pods of it", || async {
        warm_of(&r.api, "made") >= 2
    })
    .await;
    let doc = r
        .api
        .configmap_data("binderd-bindings")
        .expect("the shared document");
    assert!(doc.to_string().contains("made"), "{doc}");
    // An entry edited in by hand that is no valid binding is skipped by
    // every replica (the API's own check), and the rest goes on.
    r.api.set_configmap_entry(
        "binderd-bindings",
        "by-hand",
        &serde_json::json!({"binding": {"name": "../escape", "image": "standin:1", "port": 0},
                            "owner": "x", "created_at": 1, "min": 1, "max": 1})
        .to_string(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        let listed = http
            .call(Method::GET, &r.url(i, "/bindings"), Some(ADMIN))
            .await;
        assert!(!listed.body.contains("escape"), "{}", listed.body);
        assert!(listed.body.contains("made"), "{}", listed.body);
    }
    // Profiles are not offered in shared mode (yet): a clear 400, nothing
    // made.
    let mut profiled = body.clone();
    profiled["name"] = serde_json::json!("profiled");
    profiled["profiles"] = serde_json::json!([{"name": "a"}, {"name": "b"}]);
    let refused = http
        .post_json(&r.url(1, "/bindings"), Some(ADMIN), &profiled)
        .await;
    assert_error(&refused, 400);
    assert!(
        refused.body.contains("several replicas"),
        "{}",
        refused.body
    );
    // A second create of the same name, on another replica: 409.
    let again = http
        .post_json(&r.url(2, "/bindings"), Some(ADMIN), &body)
        .await;
    assert_error(&again, 409);
    // A replica that starts now has it from the start.
    r.spawn("r3", 1, 10);
    let late = http
        .call(Method::GET, &r.url(3, "/bindings/made"), Some(ADMIN))
        .await;
    assert_eq!(late.status, 200, "{}", late.body);
    // Resized through one replica, seen by another, filled by the holder.
    let resized = http
        .post_json(
            &r.url(1, "/pools/made"),
            Some(ADMIN),
            &serde_json::json!({"minPool": 3}),
        )
        .await;
    assert_eq!(resized.status, 200, "{}", resized.body);
    let pool_url = r.url(2, "/pools/made");
    eventually(10, "the new size on another replica", || async {
        http.call(Method::GET, &pool_url, Some(ADMIN)).await.json()["minPool"] == 3
    })
    .await;
    eventually(30, "three warm pods", || async {
        warm_of(&r.api, "made") >= 3
    })
    .await;
    let (id, token) = hand_out_at_binding(&http, &r, 2, "made").await;
    // Through another replica once its watch has brought the claim.
    let got = wait_for(10, "the binder through replica 0", || {
        let (http, r, token) = (&http, &r, &token);
        async move { reached(http, r, 0, token).await }
    })
    .await;
    assert_eq!(got, id);
    // Deleted through a third: gone everywhere, its pods with it.
    let deleted = http
        .call(
            Method::DELETE,
            &r.url(2, "/bindings/made?force=true"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(deleted.status, 202, "{}", deleted.body);
    for i in 0..4 {
        let url = r.url(i, "/bindings/made");
        eventually(
            10,
            &format!("the binding gone from replica {i}"),
            || async { http.call(Method::GET, &url, Some(ADMIN)).await.status == 404 },
        )
        .await;
    }
    eventually(20, "its pods removed", || async {
        !r.api
            .pod_names()
            .iter()
            .filter_map(|n| r.api.pod(n))
            .any(|p| p["metadata"]["labels"]["binderd.binding"] == "made")
    })
    .await;
    // The file's binding is untouched.
    assert_eq!(
        http.call(Method::GET, &r.url(0, "/bindings/nb"), Some(ADMIN))
            .await
            .status,
        200
    );
    assert_each_pod_claimed_once(&r.api);
}

/// A warm handout of `binding` through replica `i`: (id, token).
async fn hand_out_at_binding(
    http: &Http,
    r: &Replicas,
    i: usize,
    binding: &str,
) -> (String, String) {
    let a = http
        .call(
            Method::POST,
            &r.url(i, &format!("/binders/{binding}")),
            Some(ADMIN),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let doc = a.json();
    let token = doc["location"]
        .as_str()
        .unwrap()
        .trim_start_matches("/user/")
        .trim_end_matches('/')
        .to_owned();
    (doc["id"].as_str().unwrap().to_owned(), token)
}
