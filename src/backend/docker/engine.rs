//! The Docker engine client: how its errors read (a start error, or the
//! engine not there), the deadline on every call, and the calls every job
//! of the backend shares (listing and removing labelled containers).

use std::collections::HashMap;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};

use crate::backend::{with_deadline, with_deadline_or_gone, BackendError, LABEL_OWNER};

use super::DockerBackend;

/// How long one engine call may take before it counts as unavailable.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The engine, as errors name it.
pub(super) const ENGINE: &str = "the Docker engine";

pub(super) fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("the Docker engine is not answering: {e}"))
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Engine errors: answers about the request are start errors, the rest mean
/// the engine is not there.
pub(super) fn classify(e: DockerError, what: &str) -> BackendError {
    match e {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } if status_code < 500 => BackendError::Start(format!("{what}: {message}")),
        DockerError::DockerResponseServerError { message, .. } => {
            BackendError::Unavailable(format!("{what}: the Docker engine failed: {message}"))
        }
        other => unavailable(format!("{what}: {other}")),
    }
}

/// One engine call, `what` naming it in errors, with [`CALL_TIMEOUT`].
pub(super) async fn timed<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, DockerError>>,
) -> Result<T, BackendError> {
    with_deadline(ENGINE, what, CALL_TIMEOUT, call, classify).await
}

/// As [`timed`], with "no such object" as `Ok(None)`.
pub(super) async fn timed_or_gone<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, DockerError>>,
) -> Result<Option<T>, BackendError> {
    with_deadline_or_gone(ENGINE, what, CALL_TIMEOUT, call, is_not_found, classify).await
}

impl DockerBackend {
    /// The engine's filter for this binderd's objects, with `extra` labels.
    pub(super) fn label_filter(&self, extra: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
        let mut labels = vec![format!("{LABEL_OWNER}={}", self.owner)];
        labels.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
        HashMap::from([("label".to_owned(), labels)])
    }

    /// Removes a container (and its volumes), running or not.
    pub(super) async fn remove(&self, id: &str) -> Result<(), BackendError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        // Gone already, or its removal already in progress (409): done.
        let gone = |e: &DockerError| {
            is_not_found(e)
                || matches!(
                    e,
                    DockerError::DockerResponseServerError {
                        status_code: 409,
                        ..
                    }
                )
        };
        with_deadline_or_gone(
            ENGINE,
            "removing a container",
            CALL_TIMEOUT,
            self.docker.remove_container(id, Some(options)),
            gone,
            classify,
        )
        .await
        .map(drop)
    }

    pub(super) async fn list_labelled(
        &self,
        extra: &[(&str, &str)],
    ) -> Result<Vec<bollard::models::ContainerSummary>, BackendError> {
        timed(
            "listing containers",
            self.docker.list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(self.label_filter(extra)),
                ..Default::default()
            })),
        )
        .await
    }
}
