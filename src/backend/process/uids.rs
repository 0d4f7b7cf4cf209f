//! Where binderd runs as root, each binder runs as a uid (and gid) of its
//! own from `[process] uid_range`: which uid is whose.

use crate::backend::BackendError;

use super::{ProcessBackend, DEFAULT_UIDS};

impl ProcessBackend {
    /// A uid of its own for a binder (binderd runs as root): the one it has,
    /// or `owner` (the uid owning its working dir, when resumed) if that is
    /// in the range and free, or a free one.
    pub(super) fn take_uid(
        &self,
        binder_id: &str,
        owner: Option<u32>,
    ) -> Result<u32, BackendError> {
        if let Some(uid) = self.uids.iter().find(|e| e.value() == binder_id) {
            return Ok(*uid.key());
        }
        let [first, last] = self.config.uid_range.unwrap_or(DEFAULT_UIDS);
        if let Some(uid) = owner.filter(|u| (first..=last).contains(u) && *u != 0) {
            if let dashmap::Entry::Vacant(v) = self.uids.entry(uid) {
                v.insert(binder_id.to_owned());
                return Ok(uid);
            }
        }
        let span = last.saturating_sub(first).saturating_add(1).max(1);
        let start = rand::random::<u32>() % span;
        for i in 0..span.min(1 << 20) {
            let uid = first + (start + i) % span;
            if uid == 0 {
                continue;
            }
            if let dashmap::Entry::Vacant(v) = self.uids.entry(uid) {
                v.insert(binder_id.to_owned());
                return Ok(uid);
            }
        }
        Err(BackendError::Start(format!(
            "every uid of [process] uid_range {first}–{last} is in use"
        )))
    }

    /// Gives back the uid `binder_id` had, if any.
    pub(super) fn release_uid(&self, binder_id: &str) {
        self.uids.retain(|_, b| b != binder_id);
    }
}
