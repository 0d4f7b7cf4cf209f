//! The kubernetes backend against a fake API server, the way kube-rs
//! recommends (controller-rs's ApiServerVerifier): a `tower-test` mock under
//! `kube::Client`. The fake answers like the API server for what binderd
//! uses (create/get/list/watch/delete pods, pods/log), checks every request
//! (method, path and namespace, label selector, body) and records them, and
//! each scenario below drives pod status and asserts on what binderd asked.
//!
//! No real cluster runs here; docs/kubernetes.md says how to try one (kind, k3s).
//! Pod IPs are 127.0.0.1 and every "pod" is served by one stand-in server on
//! the binding's port, so binderd's own HTTP readiness check and proxy are real.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use binderd::backend::kubernetes::KubernetesBackend;
use binderd::backend::{owner_key, Backend};
use bytes::Bytes;
use common::*;
use http::{Method, Request, Response};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodStatus,
};
use serde_json::{json, Value};
use tokio::sync::broadcast;

const NS: &str = "binderd-test";

type FakeBody = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    query: String,
    body: Option<Value>,
}

/// What happens to a pod after it is created, by image.
#[derive(Clone, Copy)]
enum Fate {
    Ready,
    PullFails,
}

struct FakeApi {
    owner: String,
    pods: Mutex<BTreeMap<String, Pod>>,
    rv: AtomicU64,
    log: Mutex<Vec<(u64, String)>>,
    live: broadcast::Sender<(u64, String)>,
    requests: Mutex<Vec<Recorded>>,
    violations: Mutex<Vec<String>>,
}

fn full(body: impl Into<Bytes>) -> FakeBody {
    Full::new(body.into()).boxed_unsync()
}

fn answer(status: u16, body: Value) -> Response<FakeBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

fn not_found(name: &str) -> Response<FakeBody> {
    answer(
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": format!("pods \"{name}\" not found"), "reason": "NotFound", "code": 404}),
    )
}

impl FakeApi {
    fn new(owner: String) -> Arc<FakeApi> {
        Arc::new(FakeApi {
            owner,
            pods: Mutex::new(BTreeMap::new()),
            rv: AtomicU64::new(1),
            log: Mutex::new(Vec::new()),
            live: broadcast::channel(1024).0,
            requests: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
        })
    }

    /// A `kube::Client` whose requests this fake answers.
    fn client(self: &Arc<Self>) -> kube::Client {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<FakeBody>>();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let fake = fake.clone();
                tokio::spawn(async move { send.send_response(fake.serve(req).await) });
            }
        });
        kube::Client::new(service, NS)
    }

    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }

    fn event(&self, kind: &str, pod: &Pod) {
        // Numbered under the log's lock, so the log is always in rv order.
        let mut log = self.log.lock().unwrap();
        let rv = self.rv.fetch_add(1, Ordering::SeqCst) + 1;
        let mut pod = pod.clone();
        pod.metadata.resource_version = Some(rv.to_string());
        let line = json!({"type": kind, "object": pod}).to_string() + "\n";
        log.push((rv, line.clone()));
        let _ = self.live.send((rv, line));
    }

    fn set_status(&self, name: &str, status: PodStatus) {
        let pod = {
            let mut pods = self.pods.lock().unwrap();
            let Some(pod) = pods.get_mut(name) else {
                return;
            };
            pod.status = Some(status);
            pod.clone()
        };
        self.event("MODIFIED", &pod);
    }

    /// Deletes a pod as if someone ran `kubectl delete pod`.
    fn delete_behind_binderds_back(&self, name: &str) {
        let pod = self.pods.lock().unwrap().remove(name);
        if let Some(pod) = pod {
            self.event("DELETED", &pod);
        }
    }

    fn pod_names(&self) -> Vec<String> {
        self.pods.lock().unwrap().keys().cloned().collect()
    }

    fn recorded(&self, method: &str) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == method)
            .cloned()
            .collect()
    }

    async fn serve(self: Arc<Self>, req: Request<kube::client::Body>) -> Response<FakeBody> {
        let method = req.method().to_string();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let bytes = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        self.requests.lock().unwrap().push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: body.clone(),
        });
        let base = format!("/api/v1/namespaces/{NS}/pods");
        let Some(rest) = path.strip_prefix(&base) else {
            self.violation(format!(
                "{method} {path}: outside the configured namespace's pods"
            ));
            return not_found("?");
        };
        let selector_ok = query.contains(&format!("labelSelector=binderd.owner%3D{}", self.owner));
        match (method.as_str(), rest.trim_start_matches('/')) {
            ("POST", "") => {
                let Some(mut pod) = body.and_then(|b| serde_json::from_value::<Pod>(b).ok()) else {
                    self.violation("POST pods: the body is not a Pod".into());
                    return answer(
                        400,
                        json!({"kind": "Status", "code": 400, "message": "bad pod"}),
                    );
                };
                let name = pod.metadata.name.clone().unwrap_or_default();
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                if labels.get("binderd.owner") != Some(&self.owner)
                    || !labels.contains_key("binderd.binder")
                {
                    self.violation(format!("POST pod {name}: missing binderd labels"));
                }
                pod.metadata.namespace = Some(NS.into());
                pod.status = Some(PodStatus {
                    phase: Some("Pending".into()),
                    ..Default::default()
                });
                let image = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers[0].image.clone())
                    .unwrap_or_default();
                self.pods.lock().unwrap().insert(name.clone(), pod.clone());
                self.event("ADDED", &pod);
                let fate = if image.starts_with("missing") {
                    Fate::PullFails
                } else {
                    Fate::Ready
                };
                let fake = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    fake.set_status(&name, fate_status(fate));
                });
                answer(201, serde_json::to_value(&pod).unwrap())
            }
            ("GET", "") if query.contains("watch=true") => {
                if !selector_ok {
                    self.violation(format!("watch without our label selector: {query}"));
                }
                let since: u64 = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("resourceVersion="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let (replay, live, last) = {
                    let log = self.log.lock().unwrap();
                    let replay: Vec<String> = log
                        .iter()
                        .filter(|(rv, _)| *rv > since)
                        .map(|(_, l)| l.clone())
                        .collect();
                    // Everything up to here is replayed; later events come live.
                    let last = log.last().map_or(0, |(rv, _)| *rv).max(since);
                    (replay, self.live.subscribe(), last)
                };
                let stream = futures_util::stream::unfold(
                    (replay.into_iter(), live, last),
                    |(mut replay, mut live, last)| async move {
                        if let Some(line) = replay.next() {
                            return Some((
                                Ok::<_, Infallible>(Frame::data(Bytes::from(line))),
                                (replay, live, last),
                            ));
                        }
                        loop {
                            match live.recv().await {
                                Ok((rv, line)) if rv > last => {
                                    return Some((
                                        Ok(Frame::data(Bytes::from(line))),
                                        (replay, live, rv),
                                    ))
                                }
                                Ok(_) => continue,
                                Err(_) => return None,
                            }
                        }
                    },
                );
                Response::builder()
                    .status(200)
                    .body(StreamBody::new(stream).boxed_unsync())
                    .unwrap()
            }
            ("GET", "") => {
                if !selector_ok {
                    self.violation(format!("list without our label selector: {query}"));
                }
                // The version first: changes that land while the items are
                // read are replayed to the watch that follows (harmless twice).
                let rv = self.log.lock().unwrap().last().map_or(0, |(rv, _)| *rv);
                let items: Vec<Pod> = self.pods.lock().unwrap().values().cloned().collect();
                answer(
                    200,
                    json!({"kind": "PodList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
                )
            }
            ("GET", name) if !name.contains('/') => match self.pods.lock().unwrap().get(name) {
                Some(pod) => answer(200, serde_json::to_value(pod).unwrap()),
                None => not_found(name),
            },
            ("DELETE", name) if !name.contains('/') => {
                let pod = self.pods.lock().unwrap().remove(name);
                match pod {
                    Some(pod) => {
                        self.event("DELETED", &pod);
                        answer(200, serde_json::to_value(&pod).unwrap())
                    }
                    None => not_found(name),
                }
            }
            ("GET", sub) if sub.ends_with("/log") => {
                if !query.contains("tailLines=") || !query.contains("container=notebook") {
                    self.violation(format!("log request without tail or container: {query}"));
                }
                Response::builder()
                    .status(200)
                    .body(full("line one\nline two\n"))
                    .unwrap()
            }
            _ => {
                self.violation(format!("unexpected {method} {path}?{query}"));
                not_found("?")
            }
        }
    }
}

fn fate_status(fate: Fate) -> PodStatus {
    match fate {
        Fate::Ready => PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("127.0.0.1".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        Fate::PullFails => PodStatus {
            phase: Some("Pending".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "notebook".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("ImagePullBackOff".into()),
                        message: Some("Back-off pulling image \"missing:1\"".into()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        },
    }
}

/// The stand-in that answers for every "pod" (pod IP 127.0.0.1).
struct Standin(std::process::Child, u16);

impl Standin {
    fn start() -> Standin {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(standin())
            .args(["--port", &port.to_string(), "--base-url", "/"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Standin(child, port)
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// binderd in-process on the kubernetes backend, talking to `fake`.
async fn binderd(
    data: &DataDir,
    fake: &Arc<FakeApi>,
    template: Option<Value>,
) -> (Server, tokio::sync::oneshot::Sender<()>) {
    binderd_with(data, fake, template, |_| {}).await
}

/// [`binderd`] with the test config as `adjust` leaves it.
async fn binderd_with(
    data: &DataDir,
    fake: &Arc<FakeApi>,
    template: Option<Value>,
    adjust: impl FnOnce(&mut binderd::config::Config),
) -> (Server, tokio::sync::oneshot::Sender<()>) {
    let mut config = test_config(data);
    config.backend = binderd::backend::BackendKind::Kubernetes;
    adjust(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (exits_tx, exits_rx) = tokio::sync::mpsc::unbounded_channel();
    let backend: Arc<dyn Backend> = Arc::new(KubernetesBackend::new(
        fake.client(),
        NS,
        owner_key(&data.0),
        template,
        exits_tx,
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(binderd::run_with_backend(
        config,
        listener,
        async {
            let _ = stopped.await;
        },
        backend,
        exits_rx,
    ));
    (Server::external(addr), stop)
}

fn binding(name: &str, image: &str, port: u16, min: u32) -> Value {
    json!({
        "name": name, "image": image, "port": port, "public": true,
        "command": ["--port={port}", "--base-url={base_url}"],
        "pool": {"min": min, "max": 5}, "start_timeout_seconds": 5,
    })
}

fn assert_clean(fake: &FakeApi) {
    let v = fake.violations.lock().unwrap();
    assert!(
        v.is_empty(),
        "requests the API server would not expect: {v:?}"
    );
    let prefix = format!("/api/v1/namespaces/{NS}/pods");
    for r in fake.requests.lock().unwrap().iter() {
        assert!(
            r.path.starts_with(&prefix),
            "{} {} left the namespace",
            r.method,
            r.path
        );
    }
}

/// The "restricted" Pod Security Standard (v1.33), as the API server's
/// admission would check a pod spec: no host namespaces, paths or ports,
/// not privileged, no privilege escalation, not root, the runtime's seccomp
/// profile, every capability dropped and at most NET_BIND_SERVICE added,
/// only the volume types it allows.
fn assert_restricted(spec: &Value) {
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(spec[host], true, "{host}");
    }
    let pod_non_root = spec["securityContext"]["runAsNonRoot"] == true;
    assert_ne!(spec["securityContext"]["runAsUser"], 0);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let allowed = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        let keys = volume.as_object().unwrap().keys();
        assert!(
            keys.into_iter()
                .all(|k| k == "name" || allowed.contains(&k.as_str())),
            "{volume}"
        );
    }
    let init = spec["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for c in spec["containers"].as_array().unwrap().iter().chain(&init) {
        let sc = &c["securityContext"];
        assert_eq!(sc["privileged"], false, "{c}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{c}");
        assert!(pod_non_root || sc["runAsNonRoot"] == true, "{c}");
        assert_ne!(sc["runAsUser"], 0, "{c}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{c}");
        for added in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            assert_eq!(added, "NET_BIND_SERVICE", "{c}");
        }
        for port in c["ports"].as_array().into_iter().flatten() {
            assert!(port["hostPort"].is_null(), "{c}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_labelled_restricted_and_served_through_the_proxy() {
    let data = DataDir::new("k8s-create");
    let fake = FakeApi::new(owner_key(&data.0));
    let standin = Standin::start();
    let template = json!({"nodeSelector": {"pool": "notebooks"}, "runtimeClassName": "gvisor"});
    let (server, stop) = binderd(&data, &fake, Some(template)).await;
    let http = Http::new();
    let mut body = binding("kube", "stand-in:1", standin.1, 2);
    body["resources"] = json!({"memory": "512Mi", "cpu": "500m"});
    body["services"] =
        json!([{"name": "db", "image": "postgres:16", "env": {"POSTGRES_PASSWORD": "x"}}]);
    create_binding(&http, &server.url(""), &body).await;
    wait_pool(&http, &server.url(""), "kube", 20, |p| p["available"] == 2).await;

    let created = fake.recorded("POST");
    assert_eq!(created.len(), 2);
    let pod = created[0].body.clone().unwrap();
    let spec = &pod["spec"];
    assert_eq!(pod["metadata"]["labels"]["binderd.binding"], "kube");
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(
        spec["nodeSelector"]["pool"], "notebooks",
        "the operator's template applies"
    );
    assert_eq!(spec["runtimeClassName"], "gvisor");
    let notebook = &spec["containers"][0];
    assert_eq!(notebook["image"], "stand-in:1");
    assert_eq!(
        notebook["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        notebook["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(notebook["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(notebook["resources"]["requests"]["cpu"], "500m");
    let args = notebook["args"].as_array().unwrap();
    assert_eq!(args[0], format!("--port={}", standin.1));
    assert!(args[1].as_str().unwrap().starts_with("--base-url=/user/"));
    assert_eq!(spec["containers"][1]["name"], "db");
    assert_restricted(spec);
    // The service gets the server's [limits], as every container does.
    assert_eq!(
        spec["containers"][1]["resources"]["limits"]["memory"],
        "1Gi"
    );
    assert_eq!(spec["hostAliases"][0]["hostnames"], json!(["db"]));
    assert_eq!(spec["hostAliases"][0]["ip"], "127.0.0.1");

    // Handout, then through the proxy to the pod's IP and port.
    let b = http
        .call(Method::POST, &server.url("/binders/kube"), None)
        .await;
    assert_eq!(b.status, 201, "{}", b.body);
    let location = b.json()["location"].as_str().unwrap().to_owned();
    let s = http
        .get(&server.url(&format!("{location}api/status")))
        .await;
    assert_eq!(s.status, 200, "{}", s.body);
    // Logs come from pods/log.
    let id = b.json()["id"].as_str().unwrap().to_owned();
    let logs = http
        .call(
            Method::GET,
            &server.url(&format!("/binders/kube/{id}/logs?tail=5")),
            Some(ADMIN),
        )
        .await;
    assert_eq!(logs.body, "line one\nline two\n");
    // Pause is refused clearly on this backend.
    let p = http
        .post_json(
            &server.url(&format!("/binders/kube/{id}/actions/pause")),
            Some(ADMIN),
            &json!({"paused": true}),
        )
        .await;
    assert_error(&p, 409);
    assert!(p.body.contains("kubernetes"), "{}", p.body);
    // List and watch carried our label selector (checked on each request).
    assert!(fake
        .recorded("GET")
        .iter()
        .any(|r| r.query.contains("watch=true")));
    assert_clean(&fake);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_is_a_failed_start_with_its_reason() {
    let data = DataDir::new("k8s-pull");
    let fake = FakeApi::new(owner_key(&data.0));
    let (server, stop) = binderd(&data, &fake, None).await;
    let http = Http::new();
    create_binding(
        &http,
        &server.url(""),
        &binding("ghost", "missing:1", 8888, 1),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let doc = loop {
        let d = http.get(&server.url("/bindings/ghost")).await.json();
        if d["status"] == "error" {
            break d;
        }
        assert!(tokio::time::Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        doc["message"]
            .as_str()
            .unwrap()
            .contains("ImagePullBackOff"),
        "{doc}"
    );
    // The failed pod was deleted, and the pool backs off instead of looping.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(fake.pod_names().len() <= 1, "{:?}", fake.pod_names());
    assert!(!fake.recorded("DELETE").is_empty());
    assert!(
        fake.recorded("POST").len() <= 4,
        "no hot loop: {}",
        fake.recorded("POST").len()
    );
    assert_clean(&fake);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_behind_binderds_back_is_replaced_and_never_handed_out() {
    let data = DataDir::new("k8s-deleted");
    let fake = FakeApi::new(owner_key(&data.0));
    let standin = Standin::start();
    let (server, stop) = binderd(&data, &fake, None).await;
    let http = Http::new();
    create_and_fill(
        &http,
        &server.url(""),
        &binding("gone", "stand-in:1", standin.1, 1),
    )
    .await;
    let first = fake.pod_names();
    assert_eq!(first.len(), 1);
    fake.delete_behind_binderds_back(&first[0]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fake.pod_names().is_empty() || fake.pod_names() == first {
        assert!(tokio::time::Instant::now() < deadline, "not replaced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_pool(&http, &server.url(""), "gone", 20, |p| {
        p["available"] == 1 && p["running"] == 1
    })
    .await;
    let b = http
        .call(Method::POST, &server.url("/binders/gone"), None)
        .await;
    assert_eq!(b.status, 201);
    let id = b.json()["id"].as_str().unwrap().to_owned();
    assert!(
        !first[0].ends_with(&id[..12]),
        "the deleted pod was handed out"
    );
    assert_clean(&fake);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_pods_are_adopted_and_deleting_the_binding_deletes_them() {
    let data = DataDir::new("k8s-adopt");
    let fake = FakeApi::new(owner_key(&data.0));
    let standin = Standin::start();
    let (server, stop) = binderd(&data, &fake, None).await;
    let http = Http::new();
    create_binding(
        &http,
        &server.url(""),
        &binding("kept", "stand-in:1", standin.1, 2),
    )
    .await;
    wait_pool(&http, &server.url(""), "kept", 20, |p| p["available"] == 2).await;
    let b = http
        .call(Method::POST, &server.url("/binders/kept"), None)
        .await
        .json();
    wait_pool(&http, &server.url(""), "kept", 20, |p| {
        p["available"] == 2 && p["running"] == 3
    })
    .await;
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let creates_before = fake.recorded("POST").len();
    assert_eq!(fake.pod_names().len(), 3);

    // A new binderd on the same data dir and the same cluster.
    let (server, stop) = binderd(&data, &fake, None).await;
    let location = b["location"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = http
            .get(&server.url(&format!("{location}api/status")))
            .await;
        if s.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} {}",
            s.status,
            s.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pool = wait_pool(&http, &server.url(""), "kept", 20, |p| p["available"] == 2).await;
    assert_eq!(pool["running"], 3, "{pool}");
    assert_eq!(
        fake.recorded("POST").len(),
        creates_before,
        "adopted, not created again"
    );

    let d = http
        .call(
            Method::DELETE,
            &server.url("/bindings/kept?force=true"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(d.status, 202, "{}", d.body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !fake.pod_names().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "left: {:?}",
            fake.pod_names()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_clean(&fake);
    let _ = stop.send(());
}

/// What a user key (not an admin) may create, on a backend where user keys
/// create bindings at all: only images `[security] allowed_images` lists
/// (its services' too), pools up to `user_max_pool` (a resize too), at most
/// `user_max_bindings` of its own. An admin is bound by none of these.
#[tokio::test]
async fn a_user_key_creates_only_allowed_images_and_a_bounded_share() {
    let data = DataDir::new("k8s-user-share");
    let fake = FakeApi::new(owner_key(&data.0));
    let standin = Standin::start();
    let (server, stop) = binderd_with(&data, &fake, None, |c| {
        c.security.allowed_images = vec!["stand-in:*".into()];
        c.security.user_max_bindings = 2;
        c.security.user_max_pool = 3;
    })
    .await;
    let http = Http::new();
    let create = |body: Value, key: &'static str| {
        let (http, url) = (&http, server.url("/bindings"));
        async move { http.post_json(&url, Some(key), &body).await }
    };
    let mut small = binding("mine", "stand-in:1", standin.1, 0);
    small["pool"] = json!({"min": 0, "max": 3});
    // An image outside the list (the notebook's or a service's): 403 naming it.
    let mut other = small.clone();
    other["name"] = json!("miner");
    other["image"] = json!("xmrig/xmrig:latest");
    let refused = create(other.clone(), ALICE).await;
    assert_error(&refused, 403);
    assert!(
        refused.body.contains("xmrig/xmrig:latest"),
        "{}",
        refused.body
    );
    let mut with_service = small.clone();
    with_service["name"] = json!("sneaky");
    with_service["services"] = json!([{"name": "db", "image": "postgres:16"}]);
    assert_error(&create(with_service, ALICE).await, 403);
    // A pool beyond the user's cap: 403.
    let mut big = small.clone();
    big["name"] = json!("big");
    big["pool"] = json!({"min": 0, "max": 50});
    let refused = create(big.clone(), ALICE).await;
    assert_error(&refused, 403);
    assert!(refused.body.contains("user_max_pool"), "{}", refused.body);
    // Through a profile: an image outside the list, a raised limit, pools
    // that together pass the cap (a binding's profiles share its
    // allowance): each 403 naming it.
    let mut profiled = small.clone();
    profiled["name"] = json!("profiled");
    profiled["profiles"] = json!([{"name": "a"}, {"name": "b", "image": "xmrig/xmrig:latest"}]);
    let refused = create(profiled.clone(), ALICE).await;
    assert_error(&refused, 403);
    assert!(refused.body.contains("xmrig"), "{}", refused.body);
    profiled["profiles"] = json!([{"name": "a"}, {"name": "b", "resources": {"memory": "64Gi"}}]);
    let refused = create(profiled.clone(), ALICE).await;
    assert_error(&refused, 403);
    assert!(refused.body.contains("profile 'b'"), "{}", refused.body);
    profiled["profiles"] = json!([{"name": "a"}, {"name": "b"}]);
    let refused = create(profiled.clone(), ALICE).await;
    assert_error(&refused, 403);
    assert!(refused.body.contains("user_max_pool"), "{}", refused.body);
    // Within the share: created; a resize beyond it is refused.
    assert_eq!(create(small.clone(), ALICE).await.status, 201);
    let resize = http
        .post_json(
            &server.url("/pools/mine"),
            Some(ALICE),
            &json!({"maxPool": 10}),
        )
        .await;
    assert_error(&resize, 403);
    let mut second = small.clone();
    second["name"] = json!("mine2");
    assert_eq!(create(second, ALICE).await.status, 201);
    let mut third = small.clone();
    third["name"] = json!("mine3");
    let refused = create(third, ALICE).await;
    assert_error(&refused, 403);
    assert!(
        refused.body.contains("user_max_bindings"),
        "{}",
        refused.body
    );
    // An admin is bound by none of it.
    assert_eq!(create(other, ADMIN).await.status, 201);
    assert_eq!(create(big, ADMIN).await.status, 201);
    let _ = stop.send(());
}

#[tokio::test]
async fn a_repositorys_folder_is_cloned_into_each_pod_by_an_init_container() {
    let data = DataDir::new("k8s-content");
    let fake = FakeApi::new(owner_key(&data.0));
    let standin = Standin::start();
    let (server, stop) = binderd_with(&data, &fake, None, |c| c.content.allow_local = true).await;
    let http = Http::new();
    let repo = Repo::new(&data, "cowsay\n");
    let mut body = binding("kuberepo", "notebook:1", standin.1, 1);
    body["repo"] = json!(repo.url());
    body["notebooks"] = json!("repo/notebooks");
    let made = create_binding(&http, &server.url(""), &body).await.json();
    assert_eq!(made["resolvedRef"], repo.main.as_str());
    wait_pool(&http, &server.url(""), "kuberepo", 20, |p| {
        p["available"] == 1
    })
    .await;
    let created = fake.recorded("POST");
    let pod = created[0].body.clone().unwrap();
    let spec = &pod["spec"];
    let init = &spec["initContainers"][0];
    assert_eq!(init["name"], "content");
    assert_eq!(init["image"], "notebook:1", "the binding's own image");
    assert_eq!(init["command"], json!(["sh", "-c", init["command"][2]]));
    // The URL, commit and folder as arguments, never spliced into the script.
    assert_eq!(
        init["args"],
        json!(["binderd-content", repo.url(), repo.main, "notebooks"])
    );
    assert!(!init["command"][2].as_str().unwrap().contains(&repo.main));
    assert_eq!(
        spec["volumes"],
        json!([{"name": "content", "emptyDir": {}}])
    );
    let notebook = &spec["containers"][0];
    assert_eq!(notebook["workingDir"], "/home/jovyan/work");
    assert_eq!(
        notebook["volumeMounts"][0]["mountPath"],
        "/home/jovyan/work"
    );
    assert_restricted(spec);

    // Requirements need an image built and pushed: refused, saying so.
    let mut with_reqs = binding("kubereqs", "notebook:1", standin.1, 1);
    with_reqs["repo"] = json!(repo.url());
    with_reqs["requirements"] = json!("repo/requirements.txt");
    let a = http
        .post_json(&server.url("/bindings"), Some(ADMIN), &with_reqs)
        .await;
    assert_error(&a, 400);
    assert!(a.body.contains("push it"), "{}", a.body);
    assert_clean(&fake);
    let _ = stop.send(());
}

/// Profiles on the kubernetes backend (one replica): each profile's pool
/// is pods of its own, each pod asking the resources its profile says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_profiles_pods_ask_what_the_profile_says() {
    let data = DataDir::new("k8s-profiles");
    let fake = FakeApi::new(owner_key(&data.0));
    let standin = Standin::start();
    let (server, stop) = binderd(&data, &fake, None).await;
    let http = Http::new();
    let mut body = binding("kprof", "stand-in:1", standin.1, 1);
    body["resources"] = json!({"memory": "512Mi", "cpu": "500m"});
    body["profiles"] = json!([
        {"name": "small"},
        {"name": "large", "image": "stand-in:2", "resources": {"memory": "2Gi"},
         "pool": {"min": 1, "max": 2}},
    ]);
    create_binding(&http, &server.url(""), &body).await;
    wait_pool(&http, &server.url(""), "kprof", 20, |p| {
        p["available"] == 1 && p["profiles"]["large"]["available"] == 1
    })
    .await;
    for (query, profile, image, memory) in [
        ("", "small", "stand-in:1", "512Mi"),
        ("?profile=large", "large", "stand-in:2", "2Gi"),
    ] {
        let a = http
            .call(
                Method::POST,
                &server.url(&format!("/binders/kprof{query}")),
                None,
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        let doc = a.json();
        assert_eq!(doc["profile"], profile, "{doc}");
        let id = doc["id"].as_str().unwrap();
        let pod = fake
            .recorded("POST")
            .into_iter()
            .filter_map(|r| r.body)
            .find(|p| p["metadata"]["labels"]["binderd.binder"] == id)
            .unwrap_or_else(|| panic!("no pod made for {id}"));
        let notebook = &pod["spec"]["containers"][0];
        assert_eq!(notebook["image"], image, "{profile}");
        assert_eq!(
            notebook["resources"]["limits"]["memory"], memory,
            "{profile}"
        );
        assert_eq!(
            notebook["resources"]["requests"]["cpu"], "500m",
            "{profile}"
        );
        assert_eq!(pod["metadata"]["labels"]["binderd.binding"], "kprof");
    }
    let _ = stop.send(());
}
