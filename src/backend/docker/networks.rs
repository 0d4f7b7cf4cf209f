//! The Docker networks of binders: [`SHARED_NET`], which every notebook
//! without services joins (inter-container traffic off), and the network of
//! its own a binder with services gets.

use std::collections::HashMap;

use bollard::errors::Error as DockerError;
use bollard::models::NetworkCreateRequest;

use crate::backend::labels::{LABEL_ROLE, ROLE_SHARED};
use crate::backend::plan::ContainerPlan;
use crate::backend::{BackendError, StartSpec};

use super::engine::{classify, timed, timed_or_gone};
use super::{DockerBackend, SHARED_NET};

impl DockerBackend {
    /// Makes the shared notebook network unless it exists: a bridge with
    /// inter-container traffic off.
    pub(super) async fn ensure_shared_net(&self) -> Result<(), BackendError> {
        let existing = timed_or_gone(
            "inspecting the binders' network",
            self.docker.inspect_network(
                SHARED_NET,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            ),
        )
        .await?;
        if existing.is_some() {
            return Ok(());
        }
        let made = self
            .docker
            .create_network(NetworkCreateRequest {
                name: SHARED_NET.to_owned(),
                driver: Some("bridge".into()),
                options: Some(HashMap::from([(
                    "com.docker.network.bridge.enable_icc".to_owned(),
                    "false".to_owned(),
                )])),
                // Nobody's in particular (no owner label): see the module doc.
                labels: Some(HashMap::from([(
                    LABEL_ROLE.to_owned(),
                    ROLE_SHARED.to_owned(),
                )])),
                ..Default::default()
            })
            .await;
        match made {
            Ok(_) => Ok(()),
            // Made meanwhile by another binderd on the same engine.
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(classify(e, "creating the binders' network")),
        }
    }

    /// A binder with services gets a network of its own, the services
    /// started on it; `None` for a binder without services.
    pub(super) async fn binder_network(
        &self,
        spec: &StartSpec<'_>,
        plan: &ContainerPlan<'_>,
    ) -> Result<Option<String>, BackendError> {
        let Some(net) = (!plan.services.is_empty()).then(|| network_name(spec.binder_id)) else {
            return Ok(None);
        };
        let labels = self.service_labels(spec);
        timed(
            "creating the binder's network",
            self.docker.create_network(NetworkCreateRequest {
                name: net.clone(),
                driver: Some("bridge".into()),
                labels: Some(labels.into_iter().collect()),
                ..Default::default()
            }),
        )
        .await?;
        self.start_services(plan, spec, &net).await?;
        Ok(Some(net))
    }
}

/// The network of its own of a binder with services.
pub(super) fn network_name(binder_id: &str) -> String {
    format!("binderd-net-{binder_id}")
}
