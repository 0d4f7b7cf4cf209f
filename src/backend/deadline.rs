//! Calls to a backend's daemon or API server: each under a deadline, and
//! whether the service answers ([`Availability`]).

use super::BackendError;

/// Whether a backend's daemon or API server answers, as its watch stream
/// last saw it: read on the handout path (one atomic load), so no I/O there.
#[derive(Debug)]
pub struct Availability {
    up: std::sync::atomic::AtomicBool,
    reason: std::sync::Mutex<Option<String>>,
}

impl Default for Availability {
    fn default() -> Self {
        Availability {
            up: std::sync::atomic::AtomicBool::new(true),
            reason: std::sync::Mutex::new(None),
        }
    }
}

impl Availability {
    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn down(&self, reason: String) {
        if let Ok(mut r) = self.reason.lock() {
            *r = Some(reason);
        }
        self.up.store(false, std::sync::atomic::Ordering::Release);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Acquire)
    }

    /// `Some(why)` while down.
    pub fn reason(&self) -> Option<String> {
        if self.is_up() {
            return None;
        }
        self.reason.lock().ok().and_then(|r| r.clone())
    }
}

/// Runs one call to a backend's daemon or API server (`service`) with a
/// deadline: its errors go through `classify`; a missed deadline means the
/// service is not answering.
pub(crate) async fn with_deadline<T, E>(
    service: &str,
    what: &str,
    limit: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, E>>,
    classify: impl FnOnce(E, &str) -> BackendError,
) -> Result<T, BackendError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(|e| classify(e, what)),
        Err(_) => Err(BackendError::Unavailable(format!(
            "{service} is not answering: {what}: no answer in {}s",
            limit.as_secs()
        ))),
    }
}

/// As [`with_deadline`], with the answers `gone` recognises (not found,
/// already being removed) as `Ok(None)`.
pub(crate) async fn with_deadline_or_gone<T, E>(
    service: &str,
    what: &str,
    limit: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, E>>,
    gone: impl FnOnce(&E) -> bool,
    classify: impl FnOnce(E, &str) -> BackendError,
) -> Result<Option<T>, BackendError> {
    let call = async {
        match call.await {
            Ok(v) => Ok(Some(v)),
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    };
    with_deadline(service, what, limit, call, classify).await
}
