//! What a pod's status says about its start: ready at an address, still
//! waiting (and why), or failed (and why).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

/// Waiting reasons that mean the pod will not start by itself.
const FATAL_WAITING: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// What a pod's status says about its start.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PodProgress {
    Ready(IpAddr),
    Waiting(String),
    Failed(String),
}

pub(crate) fn progress(pod: &Pod) -> PodProgress {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodProgress::Failed("the pod is being deleted".into());
    }
    let Some(status) = &pod.status else {
        return PodProgress::Waiting("no status yet".into());
    };
    match status.phase.as_deref() {
        Some("Failed") | Some("Succeeded") => {
            let reason = status
                .reason
                .clone()
                .or_else(|| {
                    status.container_statuses.iter().flatten().find_map(|c| {
                        c.state.as_ref()?.terminated.as_ref().map(|t| {
                            format!(
                                "{} (exit code {})",
                                t.reason.clone().unwrap_or_default(),
                                t.exit_code
                            )
                        })
                    })
                })
                .unwrap_or_else(|| "the pod stopped".into());
            let message = status.message.clone().unwrap_or_default();
            return PodProgress::Failed(format!("{reason} {message}").trim().to_owned());
        }
        _ => {}
    }
    for c in status.container_statuses.iter().flatten() {
        if let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = waiting.reason.clone().unwrap_or_default();
            if FATAL_WAITING.contains(&reason.as_str()) {
                let message = waiting.message.clone().unwrap_or_default();
                return PodProgress::Failed(
                    format!("{reason}: {message}")
                        .trim_end_matches(": ")
                        .to_owned(),
                );
            }
        }
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    match (
        ready,
        status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()),
    ) {
        (true, Some(ip)) => PodProgress::Ready(ip),
        _ => {
            let why = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.status == "False" && c.message.is_some())
                .and_then(|c| c.message.clone())
                .unwrap_or_else(|| status.phase.clone().unwrap_or_else(|| "Pending".into()));
            PodProgress::Waiting(why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
    };

    fn pod(status: PodStatus) -> Pod {
        Pod {
            status: Some(status),
            ..Default::default()
        }
    }

    #[test]
    fn progress_reads_ready_waiting_and_failure_reasons() {
        let ready = pod(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.1.2.3".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(
            progress(&ready),
            PodProgress::Ready("10.1.2.3".parse().unwrap())
        );
        let pulling = pod(PodStatus {
            phase: Some("Pending".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "notebook".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("ImagePullBackOff".into()),
                        message: Some("Back-off pulling image \"nope:1\"".into()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(
            matches!(progress(&pulling), PodProgress::Failed(r) if r.contains("ImagePullBackOff") && r.contains("nope:1"))
        );
        let evicted = pod(PodStatus {
            phase: Some("Failed".into()),
            reason: Some("Evicted".into()),
            message: Some("The node was low on resource: memory.".into()),
            ..Default::default()
        });
        assert!(matches!(progress(&evicted), PodProgress::Failed(r) if r.starts_with("Evicted")));
        let pending = pod(PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                message: Some("0/3 nodes are available".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(
            progress(&pending),
            PodProgress::Waiting("0/3 nodes are available".into())
        );
    }
}
