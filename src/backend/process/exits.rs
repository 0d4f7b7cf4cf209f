//! A process binder's exit, reported on the backend's
//! [`ExitSink`](crate::backend::ExitSink): a child binderd started is
//! reaped, an adopted process (not binderd's child) is looked at until it
//! is gone.

use std::path::Path;
use std::time::Duration;

use nix::unistd::Pid;

use crate::backend::Exit;

use super::procfs::alive;
use super::ProcessBackend;

/// How often adopted processes (not our children) are checked for life.
const ADOPTED_POLL: Duration = Duration::from_millis(500);

impl ProcessBackend {
    /// Reaps our child `child` (pid `pid`, the binder's first process) and
    /// reports its exit; the pool ignores exits of binders it is stopping
    /// itself. Until it is reaped, `pid` is recorded as the binder's.
    pub(super) fn reap(&self, binder_id: &str, mut child: tokio::process::Child, pid: i32) {
        self.children.insert(pid, binder_id.to_owned());
        let exits = self.exits.clone();
        let children = self.children.clone();
        let binder_id = binder_id.to_owned();
        let log_path = self.log_path(&binder_id);
        tokio::spawn(async move {
            let status = child.wait().await;
            children.remove(&pid);
            let reason = match status {
                Ok(s) if !s.success() => sandbox_failure(&log_path)
                    .unwrap_or_else(|| format!("the process exited ({s})")),
                Ok(s) => format!("the process exited ({s})"),
                Err(e) => format!("the process exited ({e})"),
            };
            let _ = exits.send(Exit {
                binder_id,
                handle: pid.to_string(),
                reason,
            });
        });
    }

    /// Reports the exit of `pid`, an adopted binder's process: not our
    /// child, so nobody will tell us when it exits; look.
    pub(super) fn watch_adopted(&self, binder_id: &str, pid: Pid) {
        let exits = self.exits.clone();
        let binder_id = binder_id.to_owned();
        tokio::spawn(async move {
            while alive(pid.as_raw()) && !exits.is_closed() {
                tokio::time::sleep(ADOPTED_POLL).await;
            }
            let _ = exits.send(Exit {
                binder_id,
                handle: pid.as_raw().to_string(),
                reason: "the process exited".into(),
            });
        });
    }
}

/// Why a binder's sandbox did not start its command, if that is why it
/// exited: the last line bubblewrap or the helper wrote to its log
/// ("cannot run '/x': No such file or directory").
fn sandbox_failure(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with("binderd sandbox: ") || l.starts_with("bwrap: "))?;
    let said = line
        .trim_start_matches("binderd sandbox: ")
        .trim_start_matches("bwrap: ");
    // The binder writes to this log too: keep it short and printable.
    Some(said.chars().filter(|c| !c.is_control()).take(300).collect())
}
