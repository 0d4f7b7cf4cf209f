//! What `/proc` says of a process binder: its processes' `BINDERD_*` labels
//! (`/proc/{pid}/environ`), their state, parent and group
//! (`/proc/{pid}/stat`) and memory (`/proc/{pid}/status`). That is how
//! [`Backend::list`](crate::backend::Backend::list) finds this binderd's
//! processes after a restart and how `stop` makes sure a pid still belongs
//! to the binder before signalling it (pids are reused).

use std::collections::HashMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};

use nix::unistd::Pid;

use crate::backend::{is_binder_id, Discovered, Instance};

use crate::backend::labels::ENV_PREFIX;

use super::{ProcessBackend, ENV_BINDER, ENV_BINDING, ENV_OWNER, ENV_PORT, ENV_UID};

/// A process and its `BINDERD_*` variables.
pub(super) type Labelled = (i32, HashMap<String, String>);

/// The pid an [`Instance`] names, unless it is none a binder can have.
pub(super) fn parse_pid(instance: &Instance) -> Option<Pid> {
    instance
        .handle
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 1)
        .map(Pid::from_raw)
}

/// The `BINDERD_*` variables of a process, or `None` when it is gone or not
/// readable.
fn binderd_env(pid: i32) -> Option<HashMap<String, String>> {
    let raw = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mut vars = HashMap::new();
    for entry in raw.split(|b| *b == 0) {
        if !entry.starts_with(ENV_PREFIX.as_bytes()) {
            continue;
        }
        let entry = String::from_utf8_lossy(entry);
        if let Some((k, v)) = entry.split_once('=') {
            vars.insert(k.to_owned(), v.to_owned());
        }
    }
    Some(vars)
}

/// Process state letter, parent and process group of a pid, from
/// `/proc/{pid}/stat`.
fn stat(pid: i32) -> Option<(char, i32, i32)> {
    let raw = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: parse after it.
    let rest = raw.get(raw.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Resident set size of a pid, from `/proc/{pid}/status` (`VmRSS`, kB).
pub(super) fn resident_bytes(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// Whether `pid` is a live process (neither gone nor a zombie).
pub(super) fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some((s, _, _)) if s != 'Z' && s != 'X')
}

/// How many binders the labelled processes `found` belong to.
pub(super) fn binders_of(found: Vec<Labelled>) -> usize {
    let ids: std::collections::HashSet<String> = found
        .into_iter()
        .filter_map(|(_, mut vars)| vars.remove(ENV_BINDER))
        .collect();
    ids.len()
}

/// Every live pid labelled with `owner` and `binder_id` (or any binder when
/// `binder_id` is `None`), with its variables.
pub(super) fn scan(owner: &str, binder_id: Option<&str>) -> Vec<Labelled> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Some(vars) = binderd_env(pid) else {
            continue;
        };
        if vars.get(ENV_OWNER).map(String::as_str) != Some(owner) {
            continue;
        }
        if let Some(id) = binder_id {
            if vars.get(ENV_BINDER).map(String::as_str) != Some(id) {
                continue;
            }
        }
        if alive(pid) {
            found.push((pid, vars));
        }
    }
    found
}

impl ProcessBackend {
    /// This binderd's labelled live processes (of `binder_id`, or of every
    /// binder).
    pub(super) fn scan(&self, binder_id: Option<&str>) -> Vec<Labelled> {
        scan(&self.owner, binder_id)
    }

    /// Whether `pid` is this binderd's (and `binder_id`'s, when given): a
    /// child not yet reaped by its record, any other by its labels.
    pub(super) fn is_ours(&self, pid: Pid, binder_id: Option<&str>) -> bool {
        if let Some(child) = self.children.get(&pid.as_raw()) {
            return binder_id.is_none_or(|id| id == child.value());
        }
        binderd_env(pid.as_raw()).is_some_and(|vars| {
            vars.get(ENV_OWNER) == Some(&self.owner)
                && binder_id.is_none_or(|id| vars.get(ENV_BINDER).map(String::as_str) == Some(id))
        })
    }

    /// Every binder with live labelled processes, one [`Discovered`] each
    /// (its leader's pid and port), its uid taken again.
    pub(super) fn discover(&self) -> Vec<Discovered> {
        let mut by_binder: HashMap<String, Discovered> = HashMap::new();
        for (pid, vars) in self.scan(None) {
            let (Some(binder_id), Some(binding)) = (vars.get(ENV_BINDER), vars.get(ENV_BINDING))
            else {
                continue;
            };
            // A binder's code can give a process any labels: one naming a
            // path would otherwise have its "working dir" removed.
            if !is_binder_id(binder_id) {
                continue;
            }
            let (_, ppid, pgrp) = stat(pid).unwrap_or(('?', 0, pid));
            let entry = by_binder
                .entry(binder_id.clone())
                .or_insert_with(|| Discovered {
                    binder_id: binder_id.clone(),
                    binding: binding.clone(),
                    instance: Instance {
                        handle: pgrp.to_string(),
                        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    },
                });
            // Its address and uid are read from the leader only: binderd
            // wrote that process's environment, and a binder's own code
            // could rewrite its labels to name another binder's port.
            if self.is_leader(pid, ppid, pgrp, binder_id) {
                let port: u16 = vars.get(ENV_PORT).and_then(|p| p.parse().ok()).unwrap_or(0);
                entry.instance.handle = pid.to_string();
                entry.instance.addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                if let Some(uid) = vars.get(ENV_UID).and_then(|u| u.parse().ok()) {
                    self.uids.insert(uid, binder_id.clone());
                }
            }
        }
        by_binder.into_values().collect()
    }

    /// Whether `pid` (parent `ppid`, group `pgrp`) leads the group binderd
    /// started for `binder_id`: that leader is the binder's handle (in a
    /// sandbox, processes inside lead sessions of their own: the handle is
    /// the one whose parent is not the same binder's). A member whose leader
    /// is gone names the (dead) leader, so it is found not running.
    fn is_leader(&self, pid: i32, ppid: i32, pgrp: i32, binder_id: &str) -> bool {
        let parent_is_same_binder = binderd_env(ppid).is_some_and(|p| {
            p.get(ENV_BINDER).map(String::as_str) == Some(binder_id)
                && p.get(ENV_OWNER) == Some(&self.owner)
        });
        pgrp == pid && !parent_is_same_binder
    }
}
