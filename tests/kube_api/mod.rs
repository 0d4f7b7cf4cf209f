//! A small Kubernetes API server on loopback, for several binderd processes
//! at once (shared mode). No real API server can be had on this machine;
//! this one is honest about what binderd relies on, and checks it:
//!
//! - pods: create (409 `AlreadyExists`), get, list and watch with equality
//!   label selectors, watches for any number of clients from any
//!   `resourceVersion`, delete, JSON merge patch with the `metadata.
//!   resourceVersion` precondition (409 `Conflict` with a `Status` of reason
//!   `Conflict`, as the API server answers), logs;
//! - Leases (`coordination.k8s.io/v1`): get, create, replace with the
//!   `resourceVersion` precondition;
//! - a "kubelet": each created pod's notebook runs as a real stand-in
//!   process on an address of its own (127.0.X.Y, the port the pod
//!   declares), with the pod's `BINDERD_*` environment; the pod turns
//!   Running and Ready once it listens, Failed if it exits;
//! - checks: every request in the namespace, every claim (a PATCH setting
//!   `binderd.state=assigned`) carries a `resourceVersion`, and no pod is
//!   claimed twice (each accepted claim is recorded with its replica).
//!
//! Switches for the tests: `split_brain` grants every Lease to whoever
//! asks (two holders at once), `delay` holds every answer.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use tokio::sync::broadcast;

pub const NS: &str = "binderd-test";
/// The Lease duration of [`replica_config`]'s replicas.
pub const LEASE_SECONDS: u64 = 3;

/// The config of a binderd replica against this fake: the kubernetes
/// backend in `NS` (in shared mode as `replica`, or single when `None`), no
/// rate limits, one binding `nb` of the stand-in image with its pool and
/// `more` lines. Top-level keys go before it.
pub fn replica_config(replica: Option<&str>, min: u32, max: u32, more: &str) -> String {
    let shared = replica.map_or(String::new(), |r| {
        format!("shared = true\nreplica = \"{r}\"\nlease_seconds = {LEASE_SECONDS}\n")
    });
    format!(
        r#"backend = "kubernetes"

[rate_limit]
anonymous_per_minute = 0
global_per_second = 0

[kubernetes]
namespace = "{NS}"
{shared}
[[bindings]]
name = "nb"
image = "standin:1"
port = 8888
public = true
start_timeout_seconds = 10
pool = {{ min = {min}, max = {max} }}
{more}
"#
    )
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// An accepted claim: which pod, by which replica, for which token hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimSeen {
    pub pod: String,
    pub replica: String,
    pub token_hash: String,
}

/// A pod's notebook: a process on the host, or a container on a Docker
/// network (with [`Kubelet::Docker`]).
struct Running {
    child: Option<std::process::Child>,
    container: Option<String>,
}

impl Running {
    fn stop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(id) = &self.container {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", id])
                .output();
        }
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }
}

/// Where the fake's kubelet runs pods.
#[derive(Clone, Debug)]
pub enum Kubelet {
    /// Stand-in processes on 127.0.X.Y.
    Processes,
    /// Containers of `image` (the stand-in image) on the Docker network
    /// `network`, labelled `label` (for clean-up).
    Docker {
        network: String,
        image: String,
        label: String,
    },
}

pub struct KubeApi {
    pub addr: SocketAddr,
    standin: String,
    how: Kubelet,
    rv: AtomicU64,
    pods: Mutex<BTreeMap<String, Value>>,
    /// ConfigMaps (their events share the pods' log, told apart by kind).
    configmaps: Mutex<BTreeMap<String, Value>>,
    leases: Mutex<BTreeMap<String, Value>>,
    /// Pod events in rv order, for watches to replay.
    log: Mutex<Vec<(u64, Value)>>,
    live: broadcast::Sender<(u64, Value)>,
    kubelet: Mutex<HashMap<String, Running>>,
    /// Every change of a Lease's holder: (lease, new holder, when).
    pub takeovers: Mutex<Vec<(String, String, std::time::Instant)>>,
    pub claims: Mutex<Vec<ClaimSeen>>,
    pub violations: Mutex<Vec<String>>,
    pub conflicts: AtomicU64,
    pub requests: AtomicU64,
    pub split_brain: AtomicBool,
    /// Pods must carry shared mode's `binderd.state` (off for a single
    /// replica, whose pods have none).
    pub expect_shared: AtomicBool,
    /// Every answer waits this long (µs).
    pub delay_us: AtomicU64,
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

fn answer(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

fn status(code: u16, reason: &str, message: String) -> Response<Body> {
    answer(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_map(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Whether `labels` satisfy an equality selector (`a=b,c!=d`).
pub fn selects(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels.get(k).and_then(Value::as_str) != Some(v)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.get(k).and_then(Value::as_str) == Some(v)
        } else {
            labels.get(term).is_some()
        }
    })
}

fn labels(obj: &Value) -> &Value {
    &obj["metadata"]["labels"]
}

impl KubeApi {
    /// Starts the server on a free loopback port. `standin` is the stand-in
    /// binary the kubelet runs for every pod.
    pub async fn start(standin: &str) -> Arc<KubeApi> {
        KubeApi::start_on(standin, [127, 0, 0, 1].into(), Kubelet::Processes).await
    }

    /// [`Self::start`] on `ip` (a Docker network's gateway, for replicas in
    /// containers), with pods run as `how` says.
    pub async fn start_on(standin: &str, ip: std::net::IpAddr, how: Kubelet) -> Arc<KubeApi> {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let api = Arc::new(KubeApi {
            addr: listener.local_addr().unwrap(),
            standin: standin.to_owned(),
            how,
            rv: AtomicU64::new(100),
            pods: Mutex::default(),
            configmaps: Mutex::default(),
            leases: Mutex::default(),
            log: Mutex::default(),
            live: broadcast::channel(4096).0,
            kubelet: Mutex::default(),
            takeovers: Mutex::default(),
            claims: Mutex::default(),
            violations: Mutex::default(),
            conflicts: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            split_brain: AtomicBool::new(false),
            expect_shared: AtomicBool::new(true),
            delay_us: AtomicU64::new(0),
        });
        let served = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                let api = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.serve(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        api.clone().spawn_kubelet_watch();
        api
    }

    /// A kubeconfig naming this server and [`NS`].
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_via(self.addr)
    }

    /// A kubeconfig naming `server` (a relay in front of this one).
    pub fn kubeconfig_via(&self, server: SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {NS}\ncurrent-context: fake\n",
            server
        )
    }

    pub fn violation(&self, what: String) {
        eprintln!("kube fake: violation: {what}");
        self.violations.lock().unwrap().push(what);
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    pub fn pod_names(&self) -> Vec<String> {
        self.pods.lock().unwrap().keys().cloned().collect()
    }

    pub fn pod(&self, name: &str) -> Option<Value> {
        self.pods.lock().unwrap().get(name).cloned()
    }

    pub fn lease_holder(&self, name: &str) -> Option<String> {
        let leases = self.leases.lock().unwrap();
        leases
            .get(name)
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    }

    /// Every Lease's (name, holder).
    pub fn lease_holders(&self) -> Vec<(String, String)> {
        let leases = self.leases.lock().unwrap();
        leases
            .iter()
            .filter_map(|(n, l)| {
                Some((n.clone(), l["spec"]["holderIdentity"].as_str()?.to_owned()))
            })
            .collect()
    }

    /// Pods by their `binderd.state` label.
    pub fn pods_in(&self, state: &str) -> usize {
        self.pods
            .lock()
            .unwrap()
            .values()
            .filter(|p| labels(p)["binderd.state"] == state)
            .count()
    }

    fn next_rv(&self) -> u64 {
        self.rv.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Stores `pod` under a new resourceVersion and tells the watches.
    /// Called with `pods` locked, so events are in rv order.
    fn emit(&self, kind: &str, pod: &mut Value, log: &mut Vec<(u64, Value)>) {
        let rv = self.next_rv();
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let event = json!({"type": kind, "object": pod.clone()});
        log.push((rv, event.clone()));
        let _ = self.live.send((rv, event));
    }

    fn update_pod(&self, name: &str, change: impl FnOnce(&mut Value)) {
        let mut pods = self.pods.lock().unwrap();
        let mut log = self.log.lock().unwrap();
        if let Some(pod) = pods.get_mut(name) {
            change(pod);
            self.emit("MODIFIED", pod, &mut log);
        }
    }

    /// Deletes a pod as `kubectl delete pod` would.
    pub fn delete_pod(&self, name: &str) -> Option<Value> {
        let removed = {
            let mut pods = self.pods.lock().unwrap();
            let mut log = self.log.lock().unwrap();
            let mut pod = pods.remove(name)?;
            self.emit("DELETED", &mut pod, &mut log);
            pod
        };
        if let Some(mut run) = self.kubelet.lock().unwrap().remove(name) {
            run.stop();
        }
        Some(removed)
    }

    /// Stops every pod's process.
    pub fn shutdown(&self) {
        for (_, mut run) in self.kubelet.lock().unwrap().drain() {
            run.stop();
        }
    }

    /// The kubelet: runs a created pod's notebook as a stand-in process on
    /// an address of its own, marks the pod Ready when it listens, Failed
    /// if it exits.
    fn run_pod(self: &Arc<Self>, name: String, pod: &Value) {
        let container = &pod["spec"]["containers"][0];
        let env: Vec<(String, String)> = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_owned(),
                    e["value"].as_str()?.to_owned(),
                ))
            })
            .collect();
        let port: u16 = container["ports"][0]["containerPort"].as_u64().unwrap_or(0) as u16;
        if let Kubelet::Docker { .. } = &self.how {
            return self.run_pod_in_docker(name, env, port);
        }
        // One counter for every fake in the process: tests run side by side.
        static NEXT_IP: AtomicU32 = AtomicU32::new(0);
        let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
        let ip = Ipv4Addr::new(127, 0, 1 + (n / 250) as u8 % 250, 1 + (n % 250) as u8);
        let child = std::process::Command::new(&self.standin)
            .args(["--port", &port.to_string(), "--bind", &ip.to_string()])
            .envs(env)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                self.violation(format!("kubelet cannot run {name}: {e}"));
                return;
            }
        };
        self.kubelet.lock().unwrap().insert(
            name.clone(),
            Running {
                child: Some(child),
                container: None,
            },
        );
        let api = self.clone();
        tokio::spawn(async move { api.ready_when_listening(name, ip, port).await });
    }

    /// Marks the pod Running and Ready once `ip:port` accepts, or Failed if
    /// its notebook exits (or never listens, 20 s).
    async fn ready_when_listening(self: Arc<Self>, name: String, ip: Ipv4Addr, port: u16) {
        let addr = SocketAddr::from((ip, port));
        for _ in 0..1000 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                self.update_pod(&name, |pod| {
                    pod["status"] = json!({"phase": "Running", "podIP": ip.to_string(),
                        "conditions": [{"type": "Ready", "status": "True"}]});
                });
                return;
            }
            let exited = self
                .kubelet
                .lock()
                .unwrap()
                .get_mut(&name)
                .is_none_or(Running::exited);
            if exited {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.update_pod(&name, |pod| {
            pod["status"] = json!({"phase": "Failed", "reason": "Error",
                "message": "the notebook exited before it listened"});
        });
    }

    /// The kubelet on Docker: the pod is a container of the stand-in image on
    /// the network, Ready once its address answers.
    fn run_pod_in_docker(self: &Arc<Self>, name: String, env: Vec<(String, String)>, port: u16) {
        let Kubelet::Docker {
            network,
            image,
            label,
        } = self.how.clone()
        else {
            return;
        };
        let api = self.clone();
        tokio::spawn(async move {
            let base = env
                .iter()
                .find(|(k, _)| k == "BINDERD_BASE_URL")
                .map_or("/".to_owned(), |(_, v)| v.clone());
            let run = tokio::task::spawn_blocking(move || {
                let mut cmd = std::process::Command::new("docker");
                cmd.args(["run", "-d", "--network", &network, "--label", &label]);
                for (k, v) in &env {
                    cmd.args(["-e", &format!("{k}={v}")]);
                }
                cmd.args([
                    &image,
                    "--port",
                    &port.to_string(),
                    "--base-url",
                    &base,
                    "--all-interfaces",
                ]);
                let out = cmd.output().ok()?;
                let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if !out.status.success() || id.is_empty() {
                    return None;
                }
                let format =
                    format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
                let out = std::process::Command::new("docker")
                    .args(["inspect", "-f", &format, &id])
                    .output()
                    .ok()?;
                let ip: Ipv4Addr = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
                Some((id, ip))
            })
            .await
            .ok()
            .flatten();
            let Some((id, ip)) = run else {
                api.violation(format!("kubelet cannot run {name} on Docker"));
                return;
            };
            let mut run = Running {
                child: None,
                container: Some(id),
            };
            if api.pod(&name).is_none() {
                run.stop(); // deleted while it was being made
                return;
            }
            api.kubelet.lock().unwrap().insert(name.clone(), run);
            api.ready_when_listening(name, ip, port).await;
        });
    }

    /// Pods whose process died are marked Failed (checked every 200 ms).
    fn spawn_kubelet_watch(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Some(api) = weak.upgrade() else { return };
                let dead: Vec<String> = api
                    .kubelet
                    .lock()
                    .unwrap()
                    .iter_mut()
                    .filter_map(|(n, r)| r.exited().then(|| n.clone()))
                    .collect();
                for name in dead {
                    api.kubelet.lock().unwrap().remove(&name);
                    api.update_pod(&name, |pod| {
                        pod["status"]["phase"] = json!("Failed");
                        pod["status"]["reason"] = json!("Error");
                    });
                }
            }
        });
    }

    async fn serve(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let delay = self.delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = query_map(req.uri().query().unwrap_or(""));
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let pods = format!("/api/v1/namespaces/{NS}/pods");
        let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases");
        if let Some(rest) = path.strip_prefix(&pods) {
            let rest = rest.trim_start_matches('/');
            return match (method.as_str(), rest) {
                ("POST", "") => self.create_pod(body),
                ("GET", "") if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                    self.watch(&query, "Pod")
                }
                ("GET", "") => self.list(&query),
                ("GET", name) if name.ends_with("/log") => Response::builder()
                    .status(200)
                    .body(full("line one\nline two\n"))
                    .unwrap(),
                ("GET", name) => match self.pod(name) {
                    Some(p) => answer(200, &p),
                    None => status(404, "NotFound", format!("pods \"{name}\" not found")),
                },
                ("DELETE", name) => match self.delete_pod(name) {
                    Some(p) => answer(200, &p),
                    None => status(404, "NotFound", format!("pods \"{name}\" not found")),
                },
                ("PATCH", name) => self.patch_pod(name, &content_type, body),
                _ => {
                    self.violation(format!("unexpected {method} {path}"));
                    status(405, "MethodNotAllowed", format!("{method} {path}"))
                }
            };
        }
        let configmaps = format!("/api/v1/namespaces/{NS}/configmaps");
        if let Some(rest) = path.strip_prefix(&configmaps) {
            let name = rest.trim_start_matches('/');
            return match (method.as_str(), name) {
                ("GET", "") if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                    self.watch(&query, "ConfigMap")
                }
                ("GET", "") => {
                    let selector = query.get("labelSelector").cloned().unwrap_or_default();
                    let _order = self.pods.lock().unwrap();
                    let items: Vec<Value> = self
                        .configmaps
                        .lock()
                        .unwrap()
                        .values()
                        .filter(|c| selects(&selector, labels(c)))
                        .cloned()
                        .collect();
                    let rv = self.rv.load(Ordering::SeqCst);
                    answer(
                        200,
                        &json!({"kind": "ConfigMapList", "apiVersion": "v1",
                                "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
                    )
                }
                (m, name) => self.configmap(m, name, body),
            };
        }
        if let Some(rest) = path.strip_prefix(&leases) {
            let name = rest.trim_start_matches('/');
            return self.lease(method.as_str(), name, body);
        }
        self.violation(format!(
            "{method} {path}: outside the namespace's pods and leases"
        ));
        status(404, "NotFound", format!("{path} not found"))
    }

    fn create_pod(self: &Arc<Self>, body: Option<Value>) -> Response<Body> {
        let Some(mut pod) = body.filter(|b| b["kind"] == "Pod" || b["spec"].is_object()) else {
            self.violation("POST pods: the body is not a Pod".into());
            return status(400, "BadRequest", "the body is not a Pod".into());
        };
        let name = pod["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let l = labels(&pod);
        for key in [
            "binderd.owner",
            "binderd.binder",
            "binderd.binding",
            "binderd.state",
        ] {
            if key == "binderd.state" && !self.expect_shared.load(Ordering::Relaxed) {
                continue;
            }
            if l.get(key).is_none() {
                self.violation(format!("POST pod {name}: no {key} label"));
            }
        }
        {
            let mut pods = self.pods.lock().unwrap();
            if pods.contains_key(&name) {
                return status(
                    409,
                    "AlreadyExists",
                    format!("pods \"{name}\" already exists"),
                );
            }
            pod["metadata"]["namespace"] = json!(NS);
            pod["kind"] = json!("Pod");
            pod["metadata"]["uid"] = json!(format!("uid-{}", self.next_rv()));
            pod["metadata"]["creationTimestamp"] = json!(now_rfc3339());
            pod["status"] = json!({"phase": "Pending"});
            let mut log = self.log.lock().unwrap();
            self.emit("ADDED", &mut pod, &mut log);
            pods.insert(name.clone(), pod.clone());
        }
        self.run_pod(name, &pod);
        answer(201, &pod)
    }

    fn list(&self, query: &HashMap<String, String>) -> Response<Body> {
        let selector = query.get("labelSelector").cloned().unwrap_or_default();
        if !selector.contains("binderd.owner=") {
            self.violation(format!(
                "a pod list without binderd's owner selector: {selector:?}"
            ));
        }
        let pods = self.pods.lock().unwrap();
        let rv = self.rv.load(Ordering::SeqCst);
        let items: Vec<Value> = pods
            .values()
            .filter(|p| selects(&selector, labels(p)))
            .cloned()
            .collect();
        answer(
            200,
            &json!({"kind": "PodList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
        )
    }

    fn watch(&self, query: &HashMap<String, String>, kind: &'static str) -> Response<Body> {
        let selector = query.get("labelSelector").cloned().unwrap_or_default();
        if !selector.contains("binderd.owner=") {
            self.violation(format!(
                "a {kind} watch without binderd's owner selector: {selector:?}"
            ));
        }
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290u64);
        let (replay, live) = {
            // Under the pods lock: no event can slip between replay and live.
            let _pods = self.pods.lock().unwrap();
            let log = self.log.lock().unwrap();
            let replay: Vec<(u64, Value)> =
                log.iter().filter(|(rv, _)| *rv > since).cloned().collect();
            (replay, self.live.subscribe())
        };
        let last = replay.last().map_or(since, |(rv, _)| *rv);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let selector2 = selector.clone();
        let keep = move |event: &Value| {
            event["object"]["kind"] == kind && selects(&selector2, labels(&event["object"]))
        };
        let replay: Vec<Value> = replay
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| keep(e))
            .collect();
        let stream = futures_util::stream::unfold(
            (replay.into_iter(), live, last, keep),
            move |(mut replay, mut live, last, keep)| async move {
                if let Some(event) = replay.next() {
                    let line = Bytes::from(event.to_string() + "\n");
                    return Some((
                        Ok::<_, Infallible>(Frame::data(line)),
                        (replay, live, last, keep),
                    ));
                }
                loop {
                    match tokio::time::timeout_at(deadline, live.recv()).await {
                        Ok(Ok((rv, event))) if rv > last => {
                            if !keep(&event) {
                                continue;
                            }
                            let line = Bytes::from(event.to_string() + "\n");
                            return Some((Ok(Frame::data(line)), (replay, live, rv, keep)));
                        }
                        Ok(Ok(_)) => continue,
                        // Lagged or closed, or the watch's time is up: end
                        // it (the client lists again, as with a real server).
                        _ => return None,
                    }
                }
            },
        );
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed_unsync())
            .unwrap()
    }

    fn patch_pod(&self, name: &str, content_type: &str, body: Option<Value>) -> Response<Body> {
        if !content_type.starts_with("application/merge-patch+json") {
            self.violation(format!(
                "PATCH pod {name} as {content_type:?}, not a merge patch"
            ));
            return status(415, "UnsupportedMediaType", content_type.to_owned());
        }
        let Some(patch) = body else {
            return status(400, "BadRequest", "not JSON".into());
        };
        let claiming = patch["metadata"]["labels"]["binderd.state"] == "assigned";
        let precondition = patch["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_owned);
        if claiming && precondition.is_none() {
            self.violation(format!("a claim on {name} without a resourceVersion"));
        }
        let mut pods = self.pods.lock().unwrap();
        let Some(pod) = pods.get_mut(name) else {
            return status(404, "NotFound", format!("pods \"{name}\" not found"));
        };
        if let Some(want) = &precondition {
            if pod["metadata"]["resourceVersion"].as_str() != Some(want.as_str()) {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
                return status(
                    409,
                    "Conflict",
                    format!("Operation cannot be fulfilled on pods \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
                );
            }
        }
        if claiming {
            if labels(pod)["binderd.state"] == "assigned" {
                self.violation(format!("pod {name} claimed twice"));
            }
            self.claims.lock().unwrap().push(ClaimSeen {
                pod: name.to_owned(),
                replica: patch["metadata"]["annotations"]["binderd.io/claimed-by"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                token_hash: patch["metadata"]["labels"]["binderd.token-hash"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            });
        }
        let mut patch = patch;
        if let Some(m) = patch["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        merge_patch(pod, &patch);
        let mut log = self.log.lock().unwrap();
        self.emit("MODIFIED", pod, &mut log);
        answer(200, pod)
    }

    /// One ConfigMap: get, create (409 `AlreadyExists`), replace fenced by
    /// its `resourceVersion` (409 `Conflict`).
    fn configmap(&self, method: &str, name: &str, body: Option<Value>) -> Response<Body> {
        // The pods' lock orders every event in the shared log.
        let _order = self.pods.lock().unwrap();
        let mut maps = self.configmaps.lock().unwrap();
        let mut log = self.log.lock().unwrap();
        match (method, name) {
            ("GET", name) => match maps.get(name) {
                Some(c) => answer(200, c),
                None => status(404, "NotFound", format!("configmaps \"{name}\" not found")),
            },
            ("POST", "") => {
                let Some(mut map) = body else {
                    return status(400, "BadRequest", "not JSON".into());
                };
                let name = map["metadata"]["name"].as_str().unwrap_or("").to_owned();
                if maps.contains_key(&name) {
                    return status(
                        409,
                        "AlreadyExists",
                        format!("configmaps \"{name}\" already exists"),
                    );
                }
                map["kind"] = json!("ConfigMap");
                self.emit("ADDED", &mut map, &mut log);
                maps.insert(name, map.clone());
                answer(201, &map)
            }
            ("PUT", name) => {
                let Some(mut map) = body else {
                    return status(400, "BadRequest", "not JSON".into());
                };
                let Some(current) = maps.get(name) else {
                    return status(404, "NotFound", format!("configmaps \"{name}\" not found"));
                };
                let want = map["metadata"]["resourceVersion"].as_str();
                if want.is_none() {
                    self.violation(format!(
                        "a ConfigMap replaced without a resourceVersion: {name}"
                    ));
                }
                if want != current["metadata"]["resourceVersion"].as_str() {
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    return status(409, "Conflict", format!("Operation cannot be fulfilled on configmaps \"{name}\": the object has been modified"));
                }
                map["kind"] = json!("ConfigMap");
                self.emit("MODIFIED", &mut map, &mut log);
                maps.insert(name.to_owned(), map.clone());
                answer(200, &map)
            }
            _ => {
                self.violation(format!("unexpected {method} on configmaps/{name}"));
                status(405, "MethodNotAllowed", method.to_owned())
            }
        }
    }

    /// Sets one entry of an existing ConfigMap as `kubectl edit` would.
    pub fn set_configmap_entry(&self, name: &str, key: &str, value: &str) {
        let _order = self.pods.lock().unwrap();
        let mut maps = self.configmaps.lock().unwrap();
        let mut log = self.log.lock().unwrap();
        if let Some(map) = maps.get_mut(name) {
            map["data"][key] = json!(value);
            self.emit("MODIFIED", map, &mut log);
        }
    }

    /// A ConfigMap's data, as binderd last wrote it.
    pub fn configmap_data(&self, name: &str) -> Option<Value> {
        self.configmaps
            .lock()
            .unwrap()
            .get(name)
            .map(|c| c["data"].clone())
    }

    fn lease(&self, method: &str, name: &str, body: Option<Value>) -> Response<Body> {
        let split = self.split_brain.load(Ordering::Relaxed);
        let mut leases = self.leases.lock().unwrap();
        match (method, name) {
            ("GET", name) => match leases.get(name) {
                // Two holders at once: every replica is told the Lease is free.
                Some(_) if split => status(404, "NotFound", format!("leases \"{name}\" not found")),
                Some(l) => answer(200, l),
                None => status(404, "NotFound", format!("leases \"{name}\" not found")),
            },
            ("POST", "") => {
                let Some(mut lease) = body else {
                    return status(400, "BadRequest", "not JSON".into());
                };
                let name = lease["metadata"]["name"].as_str().unwrap_or("").to_owned();
                if leases.contains_key(&name) && !split {
                    return status(
                        409,
                        "AlreadyExists",
                        format!("leases \"{name}\" already exists"),
                    );
                }
                lease["metadata"]["resourceVersion"] = json!(self.next_rv().to_string());
                leases.insert(name, lease.clone());
                answer(201, &lease)
            }
            ("PUT", name) => {
                let Some(mut lease) = body else {
                    return status(400, "BadRequest", "not JSON".into());
                };
                let Some(current) = leases.get(name) else {
                    return status(404, "NotFound", format!("leases \"{name}\" not found"));
                };
                let want = lease["metadata"]["resourceVersion"].as_str();
                if want.is_none() {
                    self.violation(format!(
                        "a Lease replaced without a resourceVersion: {name}"
                    ));
                }
                if want != current["metadata"]["resourceVersion"].as_str() && !split {
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    return status(409, "Conflict", format!("Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified"));
                }
                let holder = lease["spec"]["holderIdentity"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                if current["spec"]["holderIdentity"].as_str() != Some(holder.as_str()) {
                    self.takeovers.lock().unwrap().push((
                        name.to_owned(),
                        holder,
                        std::time::Instant::now(),
                    ));
                }
                lease["metadata"]["resourceVersion"] = json!(self.next_rv().to_string());
                leases.insert(name.to_owned(), lease.clone());
                answer(200, &lease)
            }
            _ => {
                self.violation(format!("unexpected {method} on leases/{name}"));
                status(405, "MethodNotAllowed", method.to_owned())
            }
        }
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.shutdown();
    }
}
