//! Stopping a process binder's processes: SIGTERM, a grace, then SIGKILL,
//! to exactly the processes that carry its label.

use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::backend::Instance;

use super::procfs::{alive, parse_pid};
use super::ProcessBackend;

/// How long a process group gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

impl ProcessBackend {
    /// Stops a binder's process group (SIGTERM, then SIGKILL) and anything
    /// else carrying its label; files stay.
    pub(super) async fn kill_binder(&self, binder_id: &str, instance: &Instance) {
        // SIGTERM to everything carrying the binder's label but the process
        // binderd started (in a sandbox that is bubblewrap, which would die
        // at once and leave the sandbox behind; the helper inside waits for
        // the command), so the server shuts down cleanly and the started
        // process exits after it; without a sandbox, to its group as well.
        // Then SIGKILL to whatever is left: the sandbox's first process
        // going takes its whole pid namespace with it, including anything
        // that rewrote its own labels.
        let leader = parse_pid(instance).filter(|pid| self.is_ours(*pid, Some(binder_id)));
        if let Some(pid) = leader.filter(|_| self.bwrap.is_none()) {
            let _ = killpg(pid, Signal::SIGTERM);
        }
        for (pid, _) in self.scan(Some(binder_id)) {
            if Some(pid) != leader.map(Pid::as_raw) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        if let Some(pid) = leader {
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            while alive(pid.as_raw()) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _ = killpg(pid, Signal::SIGKILL);
        }
        for (pid, _) in self.scan(Some(binder_id)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// SIGKILLs every process of this binderd's `owner` key at once,
    /// without waiting; how many binders were hit.
    pub(super) fn kill_owned(owner: &str) -> usize {
        let found = super::procfs::scan(owner, None);
        for (pid, _) in &found {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        super::procfs::binders_of(found)
    }
}
