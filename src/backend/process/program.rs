//! Programs binderd runs itself (bubblewrap, the Python that makes an
//! environment), found on binderd's own `PATH` once, as an absolute path.
//! A command started with a binder's environment would otherwise be looked
//! up on the binder's `PATH` (std searches the child's), where a binding's
//! `env` or a package's scripts could put a program of their own, run by
//! binderd (as root, outside any sandbox).

use std::path::{Path, PathBuf};

/// `program` as binderd's `PATH` finds it (itself when it has a `/`).
pub(super) fn on_path(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 || program.is_absolute() {
        return Some(program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
        .and_then(|p| std::fs::canonicalize(&p).ok().or(Some(p)))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_is_found_once_as_an_absolute_path() {
        let sh = on_path(Path::new("sh")).expect("sh is on PATH");
        assert!(sh.is_absolute(), "{}", sh.display());
        assert_eq!(
            on_path(Path::new("/bin/true")),
            Some(PathBuf::from("/bin/true"))
        );
        assert_eq!(on_path(Path::new("no-such-program-here")), None);
    }
}
