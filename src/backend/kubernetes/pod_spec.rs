//! A binder's pod as the API server is asked to create it: the notebook
//! container from the [`ContainerPlan`], its services beside it, the
//! repository's folder from an init container, the "restricted" Pod
//! Security Standard on every container, the pod template merged over it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HostAlias, Pod,
    PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

pub use crate::backend::labels::LABEL_EGRESS;
use crate::backend::plan::{ContainerPlan, ServicePlan};
use crate::backend::{BackendError, StartSpec};
use crate::limits::Limits;

use super::KubernetesBackend;

/// Where a binding's repository folder is in its pods, the notebook's
/// working dir (repo2docker's home, a folder of it: the image's own home
/// stays as it is).
pub const CONTENT_DIR: &str = "/home/jovyan/work";

/// The init container's script: the commit of the repository, its folder
/// copied into the shared `emptyDir`. Arguments, never spliced in: `$1` the
/// URL, `$2` the commit, `$3` the folder (`.` for the root).
const CONTENT_SCRIPT: &str = "set -eu\n\
    git init -q /tmp/binderd-repo\n\
    cd /tmp/binderd-repo\n\
    git fetch -q --depth 1 -- \"$1\" \"$2\" || git fetch -q -- \"$1\"\n\
    git -c advice.detachedHead=false checkout -q \"$2\"\n\
    cp -R -- \"./$3/.\" /binderd-content/\n\
    rm -rf /binderd-content/.git\n";

/// The init container that puts a binding's repository folder (at its
/// `resolvedRef`) into the pod, from the binding's own image: that image
/// must have `sh`, `git` and `cp`, and the pod egress to the repository.
fn content_container(
    binding: &crate::binding::Binding,
    image: &str,
    resources: ResourceRequirements,
    security: SecurityContext,
) -> Option<Container> {
    if binding.content_from() != crate::binding::ContentFrom::Repo {
        return None;
    }
    let (url, commit) = (binding.repo.as_ref()?, binding.resolved_ref.as_ref()?);
    let folder = binding
        .notebooks
        .as_deref()
        .map(|n| {
            n.strip_prefix("repo/")
                .unwrap_or(if n == "repo" { "" } else { n })
        })
        .filter(|n| !n.is_empty())
        .unwrap_or(".");
    Some(Container {
        name: "content".into(),
        image: Some(image.to_owned()),
        command: Some(vec!["sh".into(), "-c".into(), CONTENT_SCRIPT.into()]),
        args: Some(vec![
            "binderd-content".into(),
            url.clone(),
            commit.clone(),
            folder.to_owned(),
        ]),
        volume_mounts: Some(vec![VolumeMount {
            name: "content".into(),
            mount_path: "/binderd-content".into(),
            ..Default::default()
        }]),
        resources: Some(resources),
        security_context: Some(security),
        ..Default::default()
    })
}

impl KubernetesBackend {
    /// The pod for `spec`, named `name`.
    pub(super) fn pod_for(&self, spec: &StartSpec<'_>, name: &str) -> Result<Pod, BackendError> {
        let plan = ContainerPlan::new(spec, &self.owner, "kubernetes")?;
        let resources = requirements(&self.limits.with(plan.resources.wanted()));
        let mut containers = vec![notebook(&plan, resources.clone())?];
        for service in &plan.services {
            // A service gets the `[limits]`, not the binding's resources.
            containers.push(service_container(service, requirements(&self.limits))?);
        }
        // A repository's folder: cloned by an init container into an
        // `emptyDir`, the notebook's working dir.
        let init = content_container(
            spec.binding,
            plan.image,
            resources,
            restricted(plan.capabilities)?,
        );
        let volumes = init.as_ref().map(|_| mount_content(&mut containers[0]));
        let mut pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(pod_labels(&plan.labels, spec.binding.network.egress)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers,
                init_containers: init.map(|c| vec![c]),
                volumes,
                restart_policy: Some("Never".into()),
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                host_aliases: host_aliases(&plan),
                security_context: Some(pod_security()),
                ..Default::default()
            }),
            status: None,
        };
        self.apply_template(&mut pod)?;
        Ok(pod)
    }

    /// Merges `[kubernetes] pod_template` over the pod's spec.
    fn apply_template(&self, pod: &mut Pod) -> Result<(), BackendError> {
        if let Some(template) = &self.pod_template {
            let mut spec =
                serde_json::to_value(&pod.spec).map_err(|e| BackendError::Start(e.to_string()))?;
            merge(&mut spec, template);
            pod.spec = serde_json::from_value(spec).map_err(|e| {
                BackendError::Start(format!("the pod template does not fit a pod spec: {e}"))
            })?;
        }
        Ok(())
    }
}

/// `limits` as both the requests and the limits of a container.
fn requirements(limits: &Limits) -> ResourceRequirements {
    let quantities = BTreeMap::from([
        ("memory".to_owned(), Quantity(limits.memory_quantity())),
        ("cpu".to_owned(), Quantity(limits.cpu_quantity())),
    ]);
    ResourceRequirements {
        limits: Some(quantities.clone()),
        requests: Some(quantities),
        ..Default::default()
    }
}

/// `KEY=value` pairs as a container's environment.
fn env_vars(env: &[(String, String)]) -> Vec<EnvVar> {
    env.iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            ..Default::default()
        })
        .collect()
}

/// The notebook container: the plan's image, arguments, environment and
/// port, with `resources`.
fn notebook(
    plan: &ContainerPlan<'_>,
    resources: ResourceRequirements,
) -> Result<Container, BackendError> {
    Ok(Container {
        name: "notebook".into(),
        image: Some(plan.image.to_owned()),
        args: (!plan.args.is_empty()).then(|| plan.args.clone()),
        env: Some(env_vars(&plan.env)),
        ports: Some(vec![ContainerPort {
            container_port: i32::from(plan.port),
            name: Some("http".into()),
            ..Default::default()
        }]),
        resources: Some(resources),
        security_context: Some(restricted(plan.capabilities)?),
        ..Default::default()
    })
}

/// One of the binding's services, as a container of the pod.
fn service_container(
    service: &ServicePlan<'_>,
    resources: ResourceRequirements,
) -> Result<Container, BackendError> {
    Ok(Container {
        name: service.name.to_owned(),
        image: Some(service.image.to_owned()),
        args: (!service.args.is_empty()).then(|| service.args.to_vec()),
        env: Some(env_vars(&service.env)),
        resources: Some(resources),
        security_context: Some(restricted(service.capabilities)?),
        ..Default::default()
    })
}

/// Mounts the content `emptyDir` at [`CONTENT_DIR`] in `notebook`, its
/// working dir; the pod's volumes.
fn mount_content(notebook: &mut Container) -> Vec<Volume> {
    notebook.volume_mounts = Some(vec![VolumeMount {
        name: "content".into(),
        mount_path: CONTENT_DIR.into(),
        ..Default::default()
    }]);
    notebook.working_dir = Some(CONTENT_DIR.into());
    vec![Volume {
        name: "content".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }]
}

/// The services' names on 127.0.0.1 (they share the pod's network).
fn host_aliases(plan: &ContainerPlan<'_>) -> Option<Vec<HostAlias>> {
    (!plan.services.is_empty()).then(|| {
        vec![HostAlias {
            ip: "127.0.0.1".into(),
            hostnames: Some(plan.services.iter().map(|s| s.name.to_owned()).collect()),
        }]
    })
}

/// The pod's security context: not root (uid 1000, group 100), the
/// runtime's seccomp profile.
fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(1000),
        run_as_group: Some(100),
        fs_group: Some(100),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Deep-merges `patch` into `base`: objects key by key, anything else replaced.
fn merge(base: &mut serde_json::Value, patch: &serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// The pod's labels: the plan's, and `binderd.egress=none` for a binding
/// that closes egress (deploy/kubernetes/notebooks' NetworkPolicy then lets
/// nothing out).
fn pod_labels(
    labels: &BTreeMap<String, String>,
    egress: crate::binding::Egress,
) -> BTreeMap<String, String> {
    let mut labels = labels.clone();
    if egress == crate::binding::Egress::None {
        labels.insert(LABEL_EGRESS.to_owned(), "none".to_owned());
    }
    labels
}

/// A container's security context under the "restricted" Pod Security
/// Standard: not root, no privilege escalation, the runtime's seccomp
/// profile, every capability dropped but `NET_BIND_SERVICE` if asked for
/// (the only one that standard lets a pod add).
pub fn restricted(capabilities: &[String]) -> Result<SecurityContext, BackendError> {
    let mut add = Vec::new();
    for cap in capabilities {
        let name = cap.strip_prefix("CAP_").unwrap_or(cap);
        if name != "NET_BIND_SERVICE" {
            return Err(BackendError::Start(format!(
                "capability '{name}' is not allowed on Kubernetes (the restricted Pod Security Standard adds only NET_BIND_SERVICE)"
            )));
        }
        add.push(name.to_owned());
    }
    Ok(SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: (!add.is_empty()).then_some(add),
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_egress_is_a_label_and_only_net_bind_service_may_be_added() {
        let labels = BTreeMap::from([("binderd.binder".to_owned(), "b".to_owned())]);
        let open = pod_labels(&labels, crate::binding::Egress::Open);
        assert!(!open.contains_key(LABEL_EGRESS));
        let closed = pod_labels(&labels, crate::binding::Egress::None);
        assert_eq!(closed[LABEL_EGRESS], "none");
        assert_eq!(closed["binderd.binder"], "b");
        let ok = restricted(&["CAP_NET_BIND_SERVICE".into()]).unwrap();
        let caps = ok.capabilities.unwrap();
        assert_eq!(caps.drop.unwrap(), ["ALL"]);
        assert_eq!(caps.add.unwrap(), ["NET_BIND_SERVICE"]);
        assert_eq!(ok.run_as_non_root, Some(true));
        assert_eq!(ok.allow_privilege_escalation, Some(false));
        let e = restricted(&["CHOWN".into()]).unwrap_err();
        assert!(e.to_string().contains("restricted"), "{e}");
    }

    #[test]
    fn templates_merge_objects_and_replace_the_rest() {
        let mut base = serde_json::json!({"a": {"b": 1, "c": [1]}, "d": 2});
        merge(
            &mut base,
            &serde_json::json!({"a": {"c": [9], "e": true}, "f": "x"}),
        );
        assert_eq!(
            base,
            serde_json::json!({"a": {"b": 1, "c": [9], "e": true}, "d": 2, "f": "x"})
        );
    }
}
