//! The Kubernetes API server client: how its errors read (a start error,
//! or the API server not there) and the deadline on every call.

use std::time::Duration;

use crate::backend::{with_deadline, BackendError};

/// How long one API call may take.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The API server, as errors name it.
pub(super) const API_SERVER: &str = "the Kubernetes API server";

pub(super) fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("the Kubernetes API server is not answering: {e}"))
}

/// API errors: answers about the request (below 500) are start errors,
/// the rest mean the API server is not there.
pub(super) fn classify(e: kube::Error, what: &str) -> BackendError {
    match e {
        kube::Error::Api(status) if status.code < 500 => {
            BackendError::Start(format!("{what}: {}", status.message))
        }
        other => unavailable(format!("{what}: {other}")),
    }
}

/// Whether the API server answered "no such object".
pub(super) fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

/// One API call, `what` naming it in errors, with [`CALL_TIMEOUT`].
pub(super) async fn timed<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, BackendError> {
    with_deadline(API_SERVER, what, CALL_TIMEOUT, call, classify).await
}
