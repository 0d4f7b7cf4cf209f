//! The container plan: what a container backend (Docker, Kubernetes) makes
//! of a start request before it speaks to its engine. Both render the same
//! plan into their own objects, so labels, the `BINDERD_*` environment, the
//! filled-in command and the image checks are decided once, here.

use std::collections::BTreeMap;

use super::labels::{ENV_BASE_URL, ENV_BINDER_ID, ENV_BINDING, ENV_PORT};
pub use super::labels::{LABEL_PORT, LABEL_ROLE, ROLE_NOTEBOOK, ROLE_SERVICE};
use super::{fill_template, BackendError, StartSpec, LABEL_BINDER, LABEL_BINDING, LABEL_OWNER};
use crate::binding::Resources;

/// One binder's containers, as every container backend runs them.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerPlan<'a> {
    pub image: &'a str,
    /// The binding's command with `{port}`, `{base_url}` and `{token}`
    /// filled in: the image's arguments (its entrypoint is kept).
    pub args: Vec<String>,
    /// The binding's environment, then binderd's `BINDERD_*` variables.
    pub env: Vec<(String, String)>,
    /// The notebook container's labels (role `notebook`, with its port).
    pub labels: BTreeMap<String, String>,
    pub port: u16,
    pub resources: &'a Resources,
    /// Capabilities added back to the notebook (all others are dropped).
    pub capabilities: &'a [String],
    pub services: Vec<ServicePlan<'a>>,
}

/// A service beside the notebook (a database, say), reachable by its name.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePlan<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub args: &'a [String],
    pub env: Vec<(String, String)>,
    pub capabilities: &'a [String],
}

impl<'a> ContainerPlan<'a> {
    /// The plan for `spec`, for the binderd whose owner key is `owner`.
    /// `backend` names the backend in errors ("the docker backend needs an
    /// 'image'").
    pub fn new(
        spec: &StartSpec<'a>,
        owner: &str,
        backend: &str,
    ) -> Result<ContainerPlan<'a>, BackendError> {
        let binding = spec.binding;
        let image = binding.image.as_deref().ok_or_else(|| {
            BackendError::Start(format!("the {backend} backend needs an 'image'"))
        })?;
        let services = binding
            .services
            .iter()
            .map(|service| {
                let image = service.image.as_deref().ok_or_else(|| {
                    BackendError::Start(format!("service '{}' has no image", service.name))
                })?;
                Ok(ServicePlan {
                    name: &service.name,
                    image,
                    args: &service.command,
                    env: pairs(&service.env),
                    capabilities: &service.capabilities,
                })
            })
            .collect::<Result<_, BackendError>>()?;
        let mut env = pairs(&binding.env);
        env.extend([
            (ENV_BINDER_ID.to_owned(), spec.binder_id.to_owned()),
            (ENV_BINDING.to_owned(), binding.name.clone()),
            (ENV_PORT.to_owned(), binding.port.to_string()),
            (ENV_BASE_URL.to_owned(), spec.base_url.to_owned()),
        ]);
        Ok(ContainerPlan {
            image,
            args: binding
                .command
                .iter()
                .map(|a| fill_template(a, binding.port, spec.base_url, spec.token))
                .collect(),
            env,
            labels: labels(
                owner,
                &binding.name,
                spec.binder_id,
                ROLE_NOTEBOOK,
                Some(binding.port),
            ),
            port: binding.port,
            resources: &binding.resources,
            capabilities: &binding.capabilities,
            services,
        })
    }
}

/// The labels of one of a binder's objects: whose binderd, which binding,
/// which binder, what role, and (for the notebook) its port.
pub fn labels(
    owner: &str,
    binding: &str,
    binder_id: &str,
    role: &str,
    port: Option<u16>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_OWNER.to_owned(), owner.to_owned()),
        (LABEL_BINDING.to_owned(), binding.to_owned()),
        (LABEL_BINDER.to_owned(), binder_id.to_owned()),
        (LABEL_ROLE.to_owned(), role.to_owned()),
    ]);
    if let Some(port) = port {
        labels.insert(LABEL_PORT.to_owned(), port.to_string());
    }
    labels
}

fn pairs<'m>(env: impl IntoIterator<Item = (&'m String, &'m String)>) -> Vec<(String, String)> {
    env.into_iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::Binding;

    fn binding(json: serde_json::Value) -> Binding {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_plan_fills_the_command_labels_and_environment_once() {
        let b = binding(serde_json::json!({
            "name": "nb", "image": "img:1", "port": 8888,
            "command": ["--port={port}", "--base={base_url}", "--token={token}"],
            "env": {"A": "1"},
            "services": [{"name": "db", "image": "postgres:16", "env": {"P": "x"}}],
        }));
        let spec = StartSpec {
            binder_id: "bid",
            token: "tok",
            binding: &b,
            base_url: "/user/tok/",
            content: None,
        };
        let plan = ContainerPlan::new(&spec, "owner", "docker").unwrap();
        assert_eq!(plan.image, "img:1");
        assert_eq!(
            plan.args,
            ["--port=8888", "--base=/user/tok/", "--token=tok"]
        );
        assert_eq!(plan.env[0], ("A".into(), "1".into()));
        assert!(plan
            .env
            .contains(&("BINDERD_BASE_URL".into(), "/user/tok/".into())));
        assert_eq!(plan.labels[LABEL_OWNER], "owner");
        assert_eq!(plan.labels[LABEL_BINDER], "bid");
        assert_eq!(plan.labels[LABEL_ROLE], ROLE_NOTEBOOK);
        assert_eq!(plan.labels[LABEL_PORT], "8888");
        assert_eq!(plan.services[0].name, "db");
        assert_eq!(plan.services[0].env, [("P".into(), "x".into())]);
        assert!(!labels("o", "b", "i", ROLE_SERVICE, None).contains_key(LABEL_PORT));
    }

    #[test]
    fn missing_images_are_start_errors_that_name_what_lacks_one() {
        let no_image = binding(serde_json::json!({"name": "nb", "command": ["x"]}));
        let spec = StartSpec {
            binder_id: "b",
            token: "t",
            binding: &no_image,
            base_url: "/",
            content: None,
        };
        let e = ContainerPlan::new(&spec, "o", "kubernetes").unwrap_err();
        assert!(
            e.to_string()
                .contains("kubernetes backend needs an 'image'"),
            "{e}"
        );
        let no_service_image = binding(serde_json::json!({
            "name": "nb", "image": "i", "services": [{"name": "db"}],
        }));
        let spec = StartSpec {
            binding: &no_service_image,
            ..spec
        };
        let e = ContainerPlan::new(&spec, "o", "docker").unwrap_err();
        assert!(e.to_string().contains("service 'db' has no image"), "{e}");
    }
}
