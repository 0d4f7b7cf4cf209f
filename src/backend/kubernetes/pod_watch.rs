//! The watch on binderd's pods (kube-runtime): it keeps the backend's view
//! of them current, wakes the `start`s waiting for their pod, reports pods
//! that fail or are deleted as exits, feeds shared mode's views, and says
//! whether the API server answers.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use tokio::sync::broadcast;

use crate::backend::{BackendError, Exit, ExitSink, LABEL_BINDER};

use super::apiserver::unavailable;
use super::pod_status::{progress, PodProgress};
use super::{claims, KubernetesBackend};

impl KubernetesBackend {
    /// The watcher: keeps `seen` current, wakes `start`s, reports exits.
    pub(super) fn follow_pods(&self, exits: ExitSink) {
        let stream = watcher(
            self.pods.clone(),
            watcher::Config::default().labels(&self.selector()),
        );
        let (seen, changes, availability) = (
            self.seen.clone(),
            self.changes.clone(),
            self.availability.clone(),
        );
        let views = self.replicas.as_ref().map(|s| s.views.clone());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let pod = match event {
                    Ok(watcher::Event::Apply(pod)) | Ok(watcher::Event::InitApply(pod)) => pod,
                    Ok(watcher::Event::Delete(pod)) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        seen.remove(&name);
                        report_exit(&exits, &pod, "the pod was deleted".into());
                        let _ = changes.send(name);
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        availability
                            .down(format!("the Kubernetes API server is not answering: {e}"));
                        tracing::warn!(error = %e, "pod watch failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                availability.up();
                let name = pod.metadata.name.clone().unwrap_or_default();
                if let PodProgress::Failed(reason) = progress(&pod) {
                    report_exit(&exits, &pod, reason);
                }
                if let Some(views) = &views {
                    if let Some(view) = claims::view(&pod) {
                        // Closed only when binderd stops.
                        let _ = views.send(view).is_ok();
                    }
                }
                claims::remember_newer(&seen, pod);
                let _ = changes.send(name);
                if exits.is_closed() {
                    return;
                }
            }
        });
    }

    /// Waits on the watch stream until the pod is ready or has failed.
    pub(super) async fn wait_ready(
        &self,
        name: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<SocketAddr, BackendError> {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no status yet");
        loop {
            if let Some(pod) = self.seen.get(name) {
                match progress(&pod) {
                    PodProgress::Ready(ip) => return Ok(SocketAddr::new(ip, port)),
                    PodProgress::Failed(reason) => return Err(BackendError::Start(reason)),
                    PodProgress::Waiting(why) => last = why,
                }
            }
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Err(_) => {
                    return Err(BackendError::Start(format!(
                        "Pending past the start timeout of {}s: {last}",
                        timeout.as_secs()
                    )))
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Err(unavailable("the pod watch ended"))
                }
                // A name, or "missed some": look again either way.
                Ok(_) => {}
            }
        }
    }
}

/// Reports `pod`'s exit (its binder, from its label) for `reason`.
fn report_exit(exits: &ExitSink, pod: &Pod, reason: String) {
    let binder = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_BINDER))
        .cloned();
    if let (Some(binder_id), Some(handle)) = (binder, pod.metadata.name.clone()) {
        let _ = exits.send(Exit {
            binder_id,
            handle,
            reason,
        });
    }
}
