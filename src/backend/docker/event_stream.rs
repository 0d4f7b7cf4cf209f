//! The engine's event stream: the `die` of a notebook container is a
//! binder's exit, and the stream being down is the backend being
//! unavailable.

use std::time::Duration;

use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;

use crate::backend::plan::{LABEL_ROLE, ROLE_NOTEBOOK};
use crate::backend::{Exit, ExitSink, LABEL_BINDER};

use super::DockerBackend;

impl DockerBackend {
    /// Follows `die` events of our notebook containers, reconnecting after
    /// errors; the backend is unavailable while the stream is down.
    pub(super) fn follow_events(&self, exits: ExitSink) {
        let docker = self.docker.clone();
        let mut filters = self.label_filter(&[(LABEL_ROLE, ROLE_NOTEBOOK)]);
        filters.insert("type".into(), vec!["container".into()]);
        filters.insert("event".into(), vec!["die".into(), "destroy".into()]);
        let availability = self.availability.clone();
        tokio::spawn(async move {
            let mut since: Option<i64> = None;
            while !exits.is_closed() {
                let options = EventsOptions {
                    since: since.map(|s| s.to_string()),
                    until: None,
                    filters: Some(filters.clone()),
                };
                let mut stream = docker.events(Some(options));
                let mut reason = String::from("the event stream ended");
                // The first item or error tells whether the engine is there;
                // ping to learn it without waiting for an event.
                match docker.ping().await {
                    Ok(_) => availability.up(),
                    Err(e) => reason = e.to_string(),
                }
                if availability.is_up() {
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok(event) => {
                                since = event.time.or(since);
                                if let Some(exit) = exit_of(event) {
                                    let _ = exits.send(exit);
                                }
                            }
                            Err(e) => {
                                reason = e.to_string();
                                break;
                            }
                        }
                    }
                }
                availability.down(format!("the Docker engine is not answering: {reason}"));
                tracing::warn!(%reason, "lost the Docker engine's event stream; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

/// The exit an engine event reports: the binder its container's label
/// names, the container, and why (its exit code); `None` for an event of
/// no binder's container.
fn exit_of(event: EventMessage) -> Option<Exit> {
    let actor = event.actor?;
    let handle = actor.id.unwrap_or_default();
    let mut attrs = actor.attributes.unwrap_or_default();
    let reason = match attrs.get("exitCode").map(String::as_str) {
        Some("137") => {
            "the container was killed (code 137: out of memory at its limit, or SIGKILL)".into()
        }
        Some(code) => format!("the container exited (code {code})"),
        None => "the container went away".into(),
    };
    Some(Exit {
        binder_id: attrs.remove(LABEL_BINDER)?,
        handle,
        reason,
    })
}
