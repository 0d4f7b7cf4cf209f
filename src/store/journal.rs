//! The handout journal: how a warm handout becomes durable without waiting
//! for SQLite.
//!
//! The handler appends one line (`assign\t{id}\t{assigned_at}\t{owner}`) to
//! `binderd.journal` with a single `write` into an `O_APPEND` file — into the
//! page cache, so it survives a SIGKILL of binderd exactly as a WAL commit at
//! `synchronous=NORMAL` does — and queues the same change for the store's
//! writer thread without waiting for it. At start, before anything is read,
//! every complete line is applied to SQLite again, then the journal is
//! removed. Applying a line is idempotent and can never undo a later change:
//! it only turns a binder still recorded as idle (or starting) into an
//! assigned one, and a handed-out binder never goes back to idle.
//!
//! The journal is kept short: once it passes [`ROTATE_BYTES`], the writer
//! renames it to `binderd.journal.1` and the handlers go on in a new one; the
//! old one is removed once every line in it is committed to SQLite. Lines
//! reach the writer in the order they were appended (the queueing happens
//! under the same lock as the append), so "committed up to line n" is one
//! number.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::auth::Owner;

/// Size past which the writer starts a new journal (small in unit tests, so
/// that they rotate).
pub(super) const ROTATE_BYTES: u64 = if cfg!(test) { 4 << 10 } else { 4 << 20 };

const NAME: &str = "binderd.journal";
const OLD_NAME: &str = "binderd.journal.1";

/// One recorded handout.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Assigned {
    pub id: String,
    /// The owner as the JSON the store keeps: made once, for the journal
    /// line and for the writer's row alike.
    pub owner: String,
    pub assigned_at: u64,
}

impl Assigned {
    pub fn new(id: &str, owner: &Owner, assigned_at: u64) -> Assigned {
        Assigned {
            id: id.to_owned(),
            // serde_json escapes control characters: the owner is one line.
            owner: serde_json::to_string(owner).unwrap_or_else(|_| "null".into()),
            assigned_at,
        }
    }

    fn write_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"assign\t");
        out.extend_from_slice(self.id.as_bytes());
        out.push(b'\t');
        let _ = write!(out, "{}", self.assigned_at);
        out.push(b'\t');
        out.extend_from_slice(self.owner.as_bytes());
        out.push(b'\n');
    }

    fn parse(line: &str) -> Option<Assigned> {
        let mut fields = line.splitn(4, '\t');
        if fields.next()? != "assign" {
            return None;
        }
        let id = fields.next()?;
        let assigned_at = fields.next()?.parse().ok()?;
        let owner = fields.next()?;
        serde_json::from_str::<Owner>(owner).ok()?;
        if id.is_empty() || id.contains(char::is_whitespace) {
            return None;
        }
        Some(Assigned {
            id: id.to_owned(),
            owner: owner.to_owned(),
            assigned_at,
        })
    }
}

struct Inner {
    file: File,
    /// Bytes in the current file.
    bytes: u64,
    /// Lines appended since start (the last one's number).
    appended: u64,
    /// A write failed partway and its part could not be cut off: the next
    /// line starts on a new one.
    torn: bool,
    line: Vec<u8>,
}

pub(super) struct Journal {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Journal {
    /// Opens a new, empty journal in `dir` (after [`read`] and
    /// [`remove`] of the previous one).
    pub fn create(dir: &Path) -> io::Result<Journal> {
        let file = open_append(&dir.join(NAME))?;
        Ok(Journal {
            dir: dir.to_owned(),
            inner: Mutex::new(Inner {
                file,
                bytes: 0,
                appended: 0,
                torn: false,
                line: Vec::with_capacity(256),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; if something ever did, the file
        // and counters are still consistent (a line is written whole or not
        // counted).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `record` in one write, then hands it to `queue` with its
    /// line number, still under the lock (so lines are queued in file
    /// order).
    pub fn append(&self, record: Assigned, queue: impl FnOnce(Assigned, u64)) -> io::Result<()> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.line.clear();
        if inner.torn {
            inner.line.push(b'\n');
        }
        record.write_line(&mut inner.line);
        if let Err(e) = (&inner.file).write_all(&inner.line) {
            // The handout is refused, so no part of its line may stay: cut
            // the file back to the last whole line.
            if let Err(cut) = inner.file.set_len(inner.bytes) {
                tracing::error!(error = %cut, "cannot cut a failed handout journal line");
                inner.torn = true;
            }
            return Err(e);
        }
        inner.bytes += inner.line.len() as u64;
        if inner.torn {
            // The file also holds the failed part: its length is the truth.
            inner.torn = false;
            if let Ok(meta) = inner.file.metadata() {
                inner.bytes = meta.len();
            }
        }
        inner.appended += 1;
        queue(record, inner.appended);
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Moves the current journal aside and starts a new one. Returns the
    /// number of the last line in the old one, or `None` if no new file
    /// could be made (the current one then goes on).
    pub fn rotate(&self) -> Option<u64> {
        let mut inner = self.lock();
        let (current, old) = (self.dir.join(NAME), self.dir.join(OLD_NAME));
        std::fs::rename(&current, &old).ok()?;
        match open_append(&current) {
            Ok(file) => {
                inner.file = file;
                inner.bytes = 0;
                Some(inner.appended)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a new handout journal");
                let _ = std::fs::rename(&old, &current);
                None
            }
        }
    }

    /// Removes the rotated-out journal (all its lines are committed).
    pub fn remove_old(&self) {
        if let Err(e) = std::fs::remove_file(self.dir.join(OLD_NAME)) {
            tracing::warn!(error = %e, "cannot remove the old handout journal");
        }
    }
}

/// Every complete line of the journals a previous run left in `dir`, oldest
/// first. A line cut short by a crash (no newline) or unreadable is skipped.
pub(super) fn read(dir: &Path) -> io::Result<Vec<Assigned>> {
    let mut records = Vec::new();
    for name in [OLD_NAME, NAME] {
        let text = match std::fs::read(dir.join(name)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut complete = text.split(|&b| b == b'\n').collect::<Vec<_>>();
        complete.pop(); // after the last newline: empty, or a torn line
        for line in complete {
            match std::str::from_utf8(line).ok().and_then(Assigned::parse) {
                Some(record) => records.push(record),
                None => tracing::warn!(
                    file = name,
                    line = %String::from_utf8_lossy(line),
                    "skipping an unreadable handout journal line"
                ),
            }
        }
    }
    Ok(records)
}

/// Removes the journals once their lines are committed to SQLite.
pub(super) fn remove(dir: &Path) -> io::Result<()> {
    for name in [OLD_NAME, NAME] {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("binderd-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn record(i: u64) -> Assigned {
        let owner = if i.is_multiple_of(2) {
            Owner::Anonymous
        } else {
            Owner::Key(format!("tab\tand\nnewline {i}"))
        };
        Assigned::new(&format!("b{i}"), &owner, 1_000 + i)
    }

    #[test]
    fn lines_read_back_in_order_across_a_rotation_and_a_torn_tail_is_skipped() {
        let dir = dir("order");
        let journal = Journal::create(&dir).unwrap();
        let mut queued = Vec::new();
        for i in 0..5 {
            journal.append(record(i), |_, n| queued.push(n)).unwrap();
        }
        assert_eq!(journal.rotate(), Some(5));
        assert_eq!(journal.bytes(), 0);
        for i in 5..8 {
            journal.append(record(i), |_, n| queued.push(n)).unwrap();
        }
        assert_eq!(queued, (1..=8).collect::<Vec<_>>());
        // A crash in the middle of a line, and a line that is not ours.
        let mut f = open_append(&dir.join(NAME)).unwrap();
        f.write_all(b"assign\tb9\t12").unwrap();
        let mut old = open_append(&dir.join(OLD_NAME)).unwrap();
        old.write_all(b"garbage\n").unwrap();
        let read_back = read(&dir).unwrap();
        assert_eq!(read_back, (0..8).map(record).collect::<Vec<_>>());
        remove(&dir).unwrap();
        assert!(read(&dir).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_fields_are_refused() {
        for line in [
            "assign\tb1\tnot-a-number\t{\"kind\":\"anonymous\"}",
            "assign\t\t5\t{\"kind\":\"anonymous\"}",
            "assign\tb1\t5\t{not json",
            "unassign\tb1\t5\t{\"kind\":\"anonymous\"}",
            "assign\tb1\t5",
        ] {
            assert_eq!(Assigned::parse(line), None, "{line}");
        }
        assert!(Assigned::parse("assign\tb1\t5\t{\"kind\":\"anonymous\"}").is_some());
    }
}
