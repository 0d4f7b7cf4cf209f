//! A process binder's working dir (`{data_dir}/binders/{id}`), its log and
//! its `tmp/`: made before it runs, owned by its uid when binderd is root,
//! with the repository's files put in. Whatever starts a binder's processes
//! starts from here.

use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::backend::{BackendError, StartSpec};

use super::unpack::unpack_blocking;
use super::ProcessBackend;

/// A binder's working dir, made ready to run in.
pub(super) struct Workdir {
    pub dir: PathBuf,
    /// `{dir}/tmp`, its `TMPDIR`.
    pub tmp: PathBuf,
    /// The uid it runs as (binderd is root), owner of both.
    pub uid: Option<u32>,
}

impl ProcessBackend {
    /// Path of a binder's output, for the logs endpoint.
    pub fn log_path(&self, binder_id: &str) -> PathBuf {
        self.log_root.join(format!("{binder_id}.log"))
    }

    /// The binder's log file, binderd's only: started again, or appended to
    /// (`resume`).
    pub(super) fn open_log(&self, binder_id: &str, resume: bool) -> std::io::Result<fs::File> {
        fs::OpenOptions::new()
            .create(true)
            .append(resume)
            .write(true)
            .truncate(!resume)
            .mode(0o600)
            .open(self.log_path(binder_id))
    }

    /// Makes the binder's working dir and its `tmp/` (kept by a resumed
    /// binder), owned by a uid of its own when binderd is root; `resume`
    /// keeps the repository's files as the binder left them, else they are
    /// put in.
    pub(super) async fn prepare_workdir(
        &self,
        spec: &StartSpec<'_>,
        resume: bool,
    ) -> Result<Workdir, BackendError> {
        let dir = self.work_root.join(spec.binder_id);
        fs::create_dir_all(&dir)?;
        // Temporary files go with the binder: a `tmp/` of its own in its
        // working dir (removed when it stops), unless the binding says where.
        let tmp = dir.join("tmp");
        // A resumed binder had the run of its working dir: its `tmp` may
        // now be a link to anywhere, which binderd (root) must not chown.
        if fs::symlink_metadata(&tmp).is_ok_and(|m| !m.is_dir()) {
            fs::remove_file(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        let uid = if self.root {
            Some(self.own_workdir(spec.binder_id, &dir, &tmp)?)
        } else {
            None
        };
        // The repository's files, before the binder runs (a resumed one
        // has them, and its own changes to them).
        if let (false, Some(files)) = (resume, spec.content.and_then(|c| c.files.as_ref())) {
            unpack_blocking(files, &dir, uid).await?;
        }
        Ok(Workdir { dir, tmp, uid })
    }

    /// Gives `dir` and `tmp` to the binder's uid (binderd is root): the one
    /// that owns them when resumed, else a free one.
    fn own_workdir(&self, binder_id: &str, dir: &Path, tmp: &Path) -> Result<u32, BackendError> {
        // A resumed binder keeps the uid that owns its files.
        let owner = fs::symlink_metadata(dir).ok().map(|m| m.uid());
        let uid = self.take_uid(binder_id, owner)?;
        // Its own; others may pass through (bubblewrap, root without
        // capabilities, enters it) but not list it. Neither is a link
        // (checked above; the working dir is binderd's to make).
        for (dir, mode) in [(dir, 0o711), (tmp, 0o700)] {
            std::os::unix::fs::lchown(dir, Some(uid), Some(uid))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
        }
        Ok(uid)
    }

    /// Puts the files of the tar `files` into a running binder's working
    /// dir, as the uid that owns it (the binder's, as root).
    pub(super) async fn put_into_workdir(
        &self,
        binder_id: &str,
        files: &Path,
    ) -> Result<(), BackendError> {
        let dir = self.work_root.join(binder_id);
        let owner = if self.root {
            Some(fs::symlink_metadata(&dir)?.uid())
        } else {
            None
        };
        unpack_blocking(files, &dir, owner).await
    }

    /// Removes a stopped binder's working dir and log.
    pub(super) async fn remove_workdir(&self, binder_id: &str) {
        let dir = self.work_root.join(binder_id);
        if dir.exists() {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        let _ = tokio::fs::remove_file(self.log_path(binder_id)).await;
    }
}
