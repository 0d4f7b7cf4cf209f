//! Tars of a repository's files as container engines take them.

/// `uid` or `uid:gid` (an image's `User`), as numbers; a name is `None`.
pub(crate) fn numeric_user(user: &str) -> Option<(u64, u64)> {
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

/// The tar at `path` again, each entry owned by `owner` (uid, gid) when
/// given, for an engine that unpacks it as the archive says.
pub(crate) fn tar_owned_by(
    path: &std::path::Path,
    owner: Option<(u64, u64)>,
) -> std::io::Result<Vec<u8>> {
    let mut archive = ::tar::Archive::new(std::fs::File::open(path)?);
    let mut out = ::tar::Builder::new(Vec::new());
    out.follow_symlinks(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let mut header = entry.header().clone();
        if !header.entry_type().is_file()
            && !header.entry_type().is_dir()
            && !header.entry_type().is_symlink()
        {
            continue;
        }
        if let Some((uid, gid)) = owner {
            header.set_uid(uid);
            header.set_gid(gid);
        }
        let path = entry.path()?.into_owned();
        if header.entry_type().is_symlink() {
            let target = entry.link_name()?.unwrap_or_default().into_owned();
            out.append_link(&mut header, &path, &target)?;
        } else {
            out.append_data(&mut header, &path, &mut entry)?;
        }
    }
    out.into_inner()
}
