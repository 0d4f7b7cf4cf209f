//! A repository's files (a tar) put into a process binder's working dir.

use std::path::Path;

/// Puts the files of `tar` into `dir` (made if missing), owned by `owner`
/// when given. Links stay links (never followed), and nothing lands outside
/// `dir`.
pub fn unpack(tar: &Path, dir: &Path, owner: Option<u32>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut archive = ::tar::Archive::new(std::fs::File::open(tar)?);
    archive.set_preserve_permissions(false);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        // Files, folders and links; nothing else (git's pax header, devices).
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link()) {
            continue;
        }
        // `unpack_in` refuses a path that would leave `dir` (`..`, a link
        // made by an earlier entry).
        if !entry.unpack_in(dir)? {
            continue;
        }
        if let Some(uid) = owner {
            let path = entry.path()?.into_owned();
            std::os::unix::fs::lchown(dir.join(path), Some(uid), Some(uid))?;
        }
    }
    Ok(())
}

/// [`unpack`] off the runtime's threads, its error a start error.
pub(super) async fn unpack_blocking(
    tar: &Path,
    dir: &Path,
    owner: Option<u32>,
) -> Result<(), crate::backend::BackendError> {
    use crate::backend::BackendError;
    let (tar, dir) = (tar.to_path_buf(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || unpack(&tar, &dir, owner))
        .await
        .map_err(|e| BackendError::Start(e.to_string()))?
        .map_err(|e| {
            BackendError::Start(format!("cannot put the repository's files in place: {e}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_tar_cannot_write_outside_the_working_dir() {
        let dir = std::env::temp_dir().join(format!("binderd-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tar_path = dir.join("evil.tar");
        {
            let mut builder = ::tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
            // A link to a folder outside, then a file through the link.
            let mut header = ::tar::Header::new_gnu();
            header.set_entry_type(::tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            let outside = dir.join("outside");
            std::fs::create_dir_all(&outside).unwrap();
            builder.append_link(&mut header, "link", &outside).unwrap();
            let body = b"pwned";
            let mut header = ::tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(::tar::EntryType::Regular);
            builder
                .append_data(&mut header, "link/owned.txt", &body[..])
                .unwrap();
            builder.finish().unwrap();
        }
        let out = dir.join("work");
        let _ = unpack(&tar_path, &out, None);
        assert!(!dir.join("outside/owned.txt").exists());
    }
}
