//! Shared mode (`[kubernetes] shared = true`): several binderd replicas on
//! one namespace, with the API server deciding what they must agree on.
//!
//! - **Owner**: every replica's pods carry the same `binderd.owner` (a hash
//!   of the namespace, [`shared_owner_key`]), so every replica watches and
//!   mirrors all of them; `binderd.replica` names the replica that made a
//!   pod, for the logs and `kubectl`.
//! - **Life of a pod**, in its `binderd.state` label: `starting` when
//!   created, `warm` once its maker saw it answer ([`Cluster::offer`](crate::backend::Cluster::offer)),
//!   `assigned` once claimed. A claim is one merge PATCH carrying the pod's
//!   `metadata.resourceVersion` as it was seen: of two replicas racing for
//!   one pod, the API server accepts one and answers the other 409
//!   `Conflict`. It sets the token's SHA-256 (never the token), the owner,
//!   the time and the claiming replica: the durable record of the handout,
//!   so any replica can route and adopt the binder after a crash.
//! - **Leases** (`coordination.k8s.io/v1`), one per binding: the holder runs
//!   that binding's reconciler. Taken when absent or expired, renewed by the
//!   holder, every write fenced by the Lease's `resourceVersion`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::super::{BackendError, Claim, Discovered, Instance, PodView, SharedPhase};
use super::apiserver::{classify, is_not_found, timed, unavailable, CALL_TIMEOUT};
use super::pod_status::{progress, PodProgress};

use crate::backend::labels::ENV_BASE_URL;
pub use crate::backend::labels::{
    ANNOTATION_ASSIGNED_AT, ANNOTATION_CLAIMED_BY, ANNOTATION_OWNER, ANNOTATION_WARM_KERNEL,
    LABEL_REPLICA, LABEL_STATE, LABEL_TOKEN_HASH, STATE_ASSIGNED, STATE_STARTING, STATE_WARM,
};

/// The owner label every replica on `namespace` shares.
pub fn shared_owner_key(namespace: &str) -> String {
    format!(
        "s{}",
        &token_hash(&format!("binderd-shared:{namespace}"))[..15]
    )
}

/// The token's hash as the claim labels it (40 hex digits of SHA-256).
pub fn token_hash(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut hex = String::with_capacity(40);
    for b in &digest.as_ref()[..20] {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// A replica's name as a label value: what the config gives, else the pod's
/// name (`POD_NAME`, then `HOSTNAME`), else a random one.
pub fn replica_name(configured: Option<&str>) -> String {
    configured
        .map(str::to_owned)
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|n| is_label_value(n))
        .unwrap_or_else(|| format!("replica-{:08x}", rand::random::<u32>()))
}

/// Whether `s` may be a label value: ≤ 63 of `[A-Za-z0-9._-]`, alphanumeric
/// at both ends.
pub fn is_label_value(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// The ConfigMap the replicas share the API's bindings in.
pub const BINDINGS_CONFIGMAP: &str = "binderd-bindings";

/// The backend's state in shared mode: this replica's name and Lease
/// duration, the APIs of Leases and of the shared bindings' ConfigMap,
/// and the channels that carry the watches' views to the pool.
pub(crate) struct Replicas {
    pub replica: String,
    pub lease_duration: Duration,
    pub leases: Api<Lease>,
    pub configmaps: Api<ConfigMap>,
    pub binding_changes:
        std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<BTreeMap<String, String>>>>,
    pub views: tokio::sync::mpsc::UnboundedSender<PodView>,
    pub taken: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<PodView>>>,
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The token a pod serves under, from its `BINDERD_BASE_URL` (`/user/{token}/`).
fn pod_token(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let env = spec.containers.first()?.env.as_ref()?;
    let base = env
        .iter()
        .find(|e| e.name == ENV_BASE_URL)?
        .value
        .as_deref()?;
    let token = base.strip_prefix("/user/")?.trim_end_matches('/');
    (!token.is_empty() && !token.contains('/')).then(|| token.to_owned())
}

fn created_at(pod: &Pod) -> u64 {
    pod.metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| u64::try_from(t.0.timestamp()).unwrap_or(0))
}

/// What a replica sees of a pod: `None` for a pod that is not ready, not
/// ours, or not fully labelled.
pub(crate) fn view(pod: &Pod) -> Option<PodView> {
    let PodProgress::Ready(ip) = progress(pod) else {
        return None;
    };
    let port: u16 = label(pod, super::super::plan::LABEL_PORT)?.parse().ok()?;
    let phase = match label(pod, LABEL_STATE)? {
        STATE_WARM => SharedPhase::Warm {
            kernel: annotation(pod, ANNOTATION_WARM_KERNEL).and_then(|k| {
                let (id, name) = k.split_once('/')?;
                Some((id.to_owned(), name.to_owned()))
            }),
        },
        STATE_ASSIGNED => SharedPhase::Claimed {
            owner: annotation(pod, ANNOTATION_OWNER)
                .filter(|o| !o.is_empty())
                .map(str::to_owned),
            at: annotation(pod, ANNOTATION_ASSIGNED_AT)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            replica: annotation(pod, ANNOTATION_CLAIMED_BY)
                .unwrap_or_default()
                .to_owned(),
        },
        _ => SharedPhase::Starting,
    };
    Some(PodView {
        binder_id: label(pod, super::super::LABEL_BINDER)?.to_owned(),
        binding: label(pod, super::super::LABEL_BINDING)?.to_owned(),
        token: pod_token(pod)?,
        instance: Instance {
            handle: pod.metadata.name.clone()?,
            addr: std::net::SocketAddr::new(ip, port),
        },
        created_at: created_at(pod),
        phase,
    })
}

/// Puts `pod` in `seen` unless `seen` holds a newer version of it (by
/// `resourceVersion`, which this API server numbers; one it cannot compare
/// replaces). The watch and this replica's own writes both go through here,
/// so a late watch event never hides a write this replica made.
pub(crate) fn remember_newer(seen: &dashmap::DashMap<String, Pod>, pod: Pod) {
    let Some(name) = pod.metadata.name.clone() else {
        return;
    };
    let version = |p: &Pod| {
        p.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    let newer =
        seen.get(&name)
            .is_none_or(|cached| match (version(&pod), version(cached.value())) {
                (Some(new), Some(old)) => new >= old,
                _ => true,
            });
    if newer {
        seen.insert(name, pod);
    }
}

/// The labels a pod is created with in shared mode.
pub(crate) fn starting_labels(labels: &mut BTreeMap<String, String>, replica: &str) {
    labels.insert(LABEL_STATE.to_owned(), STATE_STARTING.to_owned());
    labels.insert(LABEL_REPLICA.to_owned(), replica.to_owned());
}

fn now_rfc3339_micros() -> String {
    k8s_openapi::chrono::Utc::now()
        .to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Micros, true)
}

impl super::KubernetesBackend {
    fn replicas(&self) -> Result<&Replicas, BackendError> {
        self.replicas
            .as_ref()
            .ok_or_else(|| BackendError::Unsupported("not in shared mode".into()))
    }

    pub(crate) async fn offer_pod(
        &self,
        instance: &Instance,
        kernel: Option<(&str, &str)>,
    ) -> Result<(), BackendError> {
        let mut patch = serde_json::json!({"metadata": {"labels": {LABEL_STATE: STATE_WARM}}});
        if let Some((id, name)) = kernel {
            patch["metadata"]["annotations"] =
                serde_json::json!({ANNOTATION_WARM_KERNEL: format!("{id}/{name}")});
        }
        let pod = timed(
            "offering a pod",
            self.pods.patch(
                &instance.handle,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            ),
        )
        .await?;
        // Handed out here before the watch brings this change, the pod
        // must be claimed at the version the offer made.
        self.remember(pod);
        Ok(())
    }

    /// Keeps `pod` in the watch's cache if it is newer than what is there:
    /// this replica's own writes are never older in its cache than in the
    /// API server.
    pub(crate) fn remember(&self, pod: Pod) {
        remember_newer(&self.seen, pod);
    }

    /// How long a claim or a Lease renewal may take: a third of the Lease
    /// (at least a second). A replica whose calls hang (a cut network
    /// drops packets, it answers nothing) must know before its Leases
    /// expire, and a handout must not wait out the general call timeout.
    fn quick_limit(&self) -> Duration {
        self.replicas
            .as_ref()
            .map_or(CALL_TIMEOUT, |s| s.lease_duration / 3)
            .max(Duration::from_secs(1))
    }

    /// `call`, given [`Self::quick_limit`]; what it says of the API server
    /// goes into the backend's availability: a failure or no answer marks
    /// it down (handouts then answer 503 at once), an answer up.
    async fn quick<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let limit = self.quick_limit();
        let result = match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(format!(
                "{what}: no answer within {}s",
                limit.as_secs()
            ))),
        };
        match &result {
            Err(BackendError::Unavailable(why)) => self.availability.down(why.clone()),
            Ok(_) => self.availability.up(),
            Err(_) => {}
        }
        result
    }

    pub(crate) async fn claim_pod(
        &self,
        instance: &Instance,
        claim: &Claim<'_>,
    ) -> Result<bool, BackendError> {
        self.quick("claiming a pod", self.try_claim(instance, claim))
            .await
    }

    async fn try_claim(
        &self,
        instance: &Instance,
        claim: &Claim<'_>,
    ) -> Result<bool, BackendError> {
        let replica = &self.replicas()?.replica;
        // The version this replica saw it warm at; then, once, a fresh one
        // (a status change, not a claim, may have moved it on).
        let mut seen = self.seen.get(&instance.handle).map(|p| p.value().clone());
        for attempt in 0..2 {
            let Some(pod) = seen.take() else {
                return Ok(false);
            };
            let expected = if claim.from_starting {
                STATE_STARTING
            } else {
                STATE_WARM
            };
            if label(&pod, LABEL_STATE) != Some(expected) {
                return Ok(false);
            }
            let Some(version) = pod.metadata.resource_version.clone() else {
                return Ok(false);
            };
            let patch = serde_json::json!({"metadata": {
                "resourceVersion": version,
                "labels": {LABEL_STATE: STATE_ASSIGNED, LABEL_TOKEN_HASH: token_hash(claim.token)},
                "annotations": {
                    ANNOTATION_OWNER: claim.owner.unwrap_or(""),
                    ANNOTATION_ASSIGNED_AT: claim.at.to_string(),
                    ANNOTATION_CLAIMED_BY: replica,
                },
            }});
            let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
            let call = self.pods.patch(&instance.handle, &params, &patch);
            match call.await {
                Ok(pod) => {
                    self.remember(pod);
                    return Ok(true);
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    if attempt == 0 {
                        seen = timed("reading a pod", self.pods.get_opt(&instance.handle)).await?;
                    }
                }
                Err(e) if is_not_found(&e) => return Ok(false),
                Err(e) => return Err(classify(e, "claiming a pod")),
            }
        }
        Ok(false)
    }

    /// [`Self::try_lease`], and what it says of the API server: a replica
    /// that cannot renew its Leases cannot claim either, so it reports
    /// itself unavailable (handouts answer 503 at once) until a call
    /// succeeds again. Its watch alone may not notice a cut network for
    /// minutes (a quiet TCP stream).
    pub(crate) async fn take_lease(&self, name: &str) -> Result<bool, BackendError> {
        self.quick("renewing a lease", self.try_lease(name)).await
    }

    async fn try_lease(&self, name: &str) -> Result<bool, BackendError> {
        let shared = self.replicas()?;
        let seconds = i32::try_from(shared.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let now = now_rfc3339_micros();
        let current = timed("reading a lease", shared.leases.get_opt(name)).await?;
        let Some(current) = current else {
            let lease: Lease = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"holderIdentity": shared.replica, "leaseDurationSeconds": seconds,
                         "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
            }))
            .map_err(|e| BackendError::Unsupported(e.to_string()))?;
            return match shared.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(classify(e, "creating a lease")),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == shared.replica;
        let expired = spec.renew_time.as_ref().is_none_or(|t| {
            let until = t.0
                + k8s_openapi::chrono::Duration::seconds(i64::from(
                    spec.lease_duration_seconds.unwrap_or(seconds),
                ));
            until < k8s_openapi::chrono::Utc::now()
        });
        if !mine && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let mut next = serde_json::json!({
            "metadata": {"name": name, "resourceVersion": current.metadata.resource_version},
            "spec": {"holderIdentity": shared.replica, "leaseDurationSeconds": seconds,
                     "renewTime": now, "leaseTransitions": transitions},
        });
        next["spec"]["acquireTime"] = if mine {
            serde_json::to_value(&spec.acquire_time).unwrap_or_default()
        } else {
            serde_json::Value::String(now.clone())
        };
        let lease: Lease =
            serde_json::from_value(next).map_err(|e| BackendError::Unsupported(e.to_string()))?;
        match shared
            .leases
            .replace(name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if !mine {
                    tracing::info!(lease = name, from = %holder, "lease taken over");
                }
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(classify(e, "renewing a lease")),
        }
    }

    pub(crate) async fn read_binding_docs(&self) -> Result<BTreeMap<String, String>, BackendError> {
        let shared = self.replicas()?;
        let map = timed(
            "reading the shared bindings",
            shared.configmaps.get_opt(BINDINGS_CONFIGMAP),
        )
        .await?;
        Ok(map.and_then(|m| m.data).unwrap_or_default())
    }

    /// Read, change one entry, write back with the version read; on a
    /// conflict, again (a few times).
    pub(crate) async fn write_binding_doc(
        &self,
        key: &str,
        doc: Option<&str>,
        create_only: bool,
    ) -> Result<bool, BackendError> {
        let shared = self.replicas()?;
        for _ in 0..8 {
            let current = timed(
                "reading the shared bindings",
                shared.configmaps.get_opt(BINDINGS_CONFIGMAP),
            )
            .await?;
            let exists = current.is_some();
            let mut map = current.unwrap_or_else(|| ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(BINDINGS_CONFIGMAP.into()),
                    labels: Some(BTreeMap::from([(
                        super::super::LABEL_OWNER.to_owned(),
                        self.owner.clone(),
                    )])),
                    ..Default::default()
                },
                ..Default::default()
            });
            let data = map.data.get_or_insert_with(BTreeMap::new);
            if create_only && data.contains_key(key) {
                return Ok(false);
            }
            match doc {
                Some(doc) => {
                    data.insert(key.to_owned(), doc.to_owned());
                }
                None => {
                    data.remove(key);
                }
            }
            let written = if exists {
                shared
                    .configmaps
                    .replace(BINDINGS_CONFIGMAP, &PostParams::default(), &map)
                    .await
            } else {
                shared.configmaps.create(&PostParams::default(), &map).await
            };
            match written {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(classify(e, "writing the shared bindings")),
            }
        }
        Err(unavailable(
            "writing the shared bindings: too many concurrent writes",
        ))
    }

    /// Follows the shared bindings' ConfigMap; each change goes to the pool
    /// as the whole map.
    pub(crate) fn follow_binding_docs(
        configmaps: Api<ConfigMap>,
        owner: &str,
        changes: tokio::sync::mpsc::UnboundedSender<BTreeMap<String, String>>,
    ) {
        let stream = kube::runtime::watcher(
            configmaps,
            kube::runtime::watcher::Config::default()
                .labels(&format!("{}={owner}", super::super::LABEL_OWNER)),
        );
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let map = match event {
                    Ok(kube::runtime::watcher::Event::Apply(m))
                    | Ok(kube::runtime::watcher::Event::InitApply(m)) => m,
                    Ok(kube::runtime::watcher::Event::Delete(_)) => ConfigMap::default(),
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "shared bindings watch failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if map
                    .metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n != BINDINGS_CONFIGMAP)
                {
                    continue;
                }
                if changes.send(map.data.unwrap_or_default()).is_err() {
                    return;
                }
            }
        });
    }

    pub(crate) fn stale_pods(&self, binding: &str, older_than: Duration) -> Vec<Discovered> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.seen
            .iter()
            .filter(|p| {
                label(p.value(), super::super::LABEL_BINDING) == Some(binding)
                    && label(p.value(), LABEL_STATE) == Some(STATE_STARTING)
                    && created_at(p.value()) + older_than.as_secs() < now
            })
            .filter_map(|p| {
                let pod = p.value();
                let port: u16 = label(pod, super::super::plan::LABEL_PORT)?.parse().ok()?;
                Some(Discovered {
                    binder_id: label(pod, super::super::LABEL_BINDER)?.to_owned(),
                    binding: binding.to_owned(),
                    instance: Instance {
                        handle: pod.metadata.name.clone()?,
                        addr: std::net::SocketAddr::new([0, 0, 0, 0].into(), port),
                    },
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_at(version: &str, state: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.resource_version = Some(version.into());
        pod.metadata.labels = Some(BTreeMap::from([(LABEL_STATE.into(), state.into())]));
        pod
    }

    #[test]
    fn a_late_watch_event_never_hides_a_newer_write() {
        let seen = dashmap::DashMap::new();
        remember_newer(&seen, pod_at("7", STATE_WARM)); // the offer's answer
        remember_newer(&seen, pod_at("6", STATE_STARTING)); // the watch, late
        assert_eq!(
            label(&seen.get("p").unwrap(), LABEL_STATE),
            Some(STATE_WARM)
        );
        remember_newer(&seen, pod_at("9", STATE_ASSIGNED));
        assert_eq!(
            label(&seen.get("p").unwrap(), LABEL_STATE),
            Some(STATE_ASSIGNED)
        );
    }

    #[test]
    fn token_hashes_are_label_values_and_owner_keys_are_per_namespace() {
        let h = token_hash("secret-token");
        assert_eq!(h.len(), 40);
        assert!(is_label_value(&h));
        assert_ne!(h, token_hash("secret-tokem"));
        assert!(!h.contains("secret"));
        let a = shared_owner_key("notebooks");
        assert!(is_label_value(&a) && a.len() == 16, "{a}");
        assert_eq!(a, shared_owner_key("notebooks"));
        assert_ne!(a, shared_owner_key("other"));
        assert!(!is_label_value("-x"));
        assert!(!is_label_value(&"a".repeat(64)));
        assert!(is_label_value("binderd-7d9f-abc"));
    }
}
