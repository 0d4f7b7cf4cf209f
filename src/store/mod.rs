//! What must survive a restart or a crash: API-created bindings, pool sizes
//! set through the API, and every binder binderd started (its token,
//! container handle and whether it was handed out).
//!
//! SQLite in WAL mode with `synchronous=NORMAL`: a commit survives a SIGKILL
//! of binderd without an fsync per commit. One writer thread owns the
//! connection; it takes every write waiting at that moment and commits them
//! in one transaction, then acknowledges each. So a burst of handouts costs
//! one commit, and nothing on the async side ever holds a database lock.
//!
//! A warm handout does not wait for that commit: it is made durable by one
//! line appended to the handout journal ([`journal`]), which the writer
//! then folds into SQLite like any other write, and which the next start
//! replays.
//!
//! The store is read once, at start ([`Store::open`]); afterwards binderd's
//! in-memory state is the truth for reads and the store only follows it.
//!
//! Rooms: this file is the handle ([`Store`]) and the records; `sql.rs` the
//! schema, the reads at start and each write's SQL; `writer.rs` the writer
//! and checkpointer threads; [`journal`] the handout journal; `tests.rs`
//! the store against a real file.

mod journal;
mod sql;
#[cfg(test)]
mod tests;
mod writer;

use journal::{Assigned, Journal};
use sql::{load, replay_journal, Op, SCHEMA};
use writer::Job;

use std::path::Path;
use std::sync::Arc;

use crossbeam_queue::SegQueue;
use rusqlite::Connection;
use std::sync::mpsc;
use tokio::sync::oneshot;

use crate::auth::Owner;
use crate::backend::Instance;
use crate::binder::{Binder, State};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("cannot write to the database: {0}")]
    Write(String),
    #[error("the store's writer has stopped")]
    Closed,
    #[error("data dir I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Where a binding came from: `config/bindings/*.toml` or the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    File,
    Api,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StoredBinding {
    pub name: String,
    /// The binding's JSON as accepted.
    pub spec: String,
    pub owner: String,
    pub created_at: u64,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StoredBinder {
    pub id: String,
    /// Its binding's name, or `binding/profile` for a binder made from a
    /// profile ([`Binder::pool_key`]).
    pub binding: String,
    pub token: String,
    pub state: State,
    pub owner: Option<Owner>,
    pub instance: Option<Instance>,
    pub created_at: u64,
    pub assigned_at: u64,
}

/// The row the store keeps for a binder.
impl From<&Binder> for StoredBinder {
    fn from(binder: &Binder) -> StoredBinder {
        StoredBinder {
            id: binder.id.to_string(),
            binding: binder.pool_key(),
            token: binder.token.to_string(),
            state: binder.state(),
            owner: binder.owner().cloned(),
            instance: binder.instance().map(|i| (*i).clone()),
            created_at: binder.created_at,
            assigned_at: binder.assigned_at(),
        }
    }
}

/// Everything read at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// How the run before this one ended.
    pub previous: PreviousRun,
    pub bindings: Vec<StoredBinding>,
    pub binders: Vec<StoredBinder>,
    /// `(binding, min, max)` set through `/pools`.
    pub pool_sizes: Vec<(String, u32, u32)>,
}

/// How the run before this one ended, read from `binderd.running` (written
/// and synced at start with this boot's id, removed once a clean stop has
/// made everything durable on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreviousRun {
    /// A clean stop (or the first start).
    #[default]
    Clean,
    /// Killed, on this same boot: the page cache survived, so the handout
    /// journal and SQLite hold every handout that was answered.
    Crashed,
    /// Killed, and the machine has booted since (or its boot cannot be
    /// told): the last moments of the journal and of SQLite's WAL may have
    /// been in a page cache that is gone. A binder the store calls pooled
    /// may have been handed out.
    Rebooted,
}

impl PreviousRun {
    /// Whether the store can prove a binder it calls pooled was never
    /// handed out.
    pub fn handouts_all_recorded(self) -> bool {
        self != PreviousRun::Rebooted
    }
}

const RUNNING: &str = "binderd.running";

/// This boot's id (Linux); `None` elsewhere or when unreadable.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Reads how the last run ended and marks this one as running, durably
/// (the file and the directory entry synced) before anything is handed out.
fn previous_run(data_dir: &Path) -> Result<PreviousRun, StoreError> {
    let marker = data_dir.join(RUNNING);
    let now = boot_id();
    let previous = match std::fs::read_to_string(&marker) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PreviousRun::Clean,
        Ok(then) if now.as_deref().is_some_and(|now| now == then.trim()) => PreviousRun::Crashed,
        _ => PreviousRun::Rebooted,
    };
    let mut file = std::fs::File::create(&marker)?;
    std::io::Write::write_all(&mut file, now.as_deref().unwrap_or("unknown").as_bytes())?;
    file.sync_all()?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(previous)
}

/// Handle to the writer thread and the handout journal. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Writes someone waits for: each wakes the writer.
    tx: mpsc::Sender<Job>,
    /// Journaled handouts, in line order: they wake nobody.
    journaled: Arc<SegQueue<Job>>,
    journal: Arc<Journal>,
    dir: Arc<std::path::PathBuf>,
}

impl Store {
    /// Opens (or creates) `binderd.sqlite3` in `data_dir`, reads it, and
    /// starts the writer thread.
    pub fn open(data_dir: &Path) -> Result<(Store, Loaded), StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let previous = previous_run(data_dir)?;
        let conn = Connection::open(data_dir.join("binderd.sqlite3"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        replay_journal(&conn, data_dir)?;
        let mut loaded = load(&conn)?;
        loaded.previous = previous;
        let journal = Arc::new(Journal::create(data_dir)?);
        let (tx, journaled) = writer::start(conn, data_dir, journal.clone())?;
        Ok((
            Store {
                tx,
                journaled,
                journal,
                dir: Arc::new(data_dir.to_owned()),
            },
            loaded,
        ))
    }

    async fn submit(&self, op: Op) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job {
                op,
                done: Some(done),
                line: 0,
            })
            .map_err(|_| StoreError::Closed)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(StoreError::Write(msg)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// A clean stop: once every write so far is committed, makes the
    /// database durable on disk (a checkpoint syncs it) and removes the
    /// running mark, so the next start trusts every pooled binder.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.submit(Op::Barrier).await?;
        let conn = Connection::open(self.dir.join("binderd.sqlite3"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        std::fs::remove_file(self.dir.join(RUNNING))?;
        std::fs::File::open(&*self.dir)?.sync_all()?;
        Ok(())
    }

    pub async fn put_binding(&self, binding: StoredBinding) -> Result<(), StoreError> {
        self.submit(Op::PutBinding(binding)).await
    }

    /// Removes the binding and its pool size overrides (its profiles' too).
    pub async fn delete_binding(&self, name: &str) -> Result<(), StoreError> {
        self.submit(Op::DeleteBinding(name.to_owned())).await
    }

    pub async fn put_binder(&self, binder: StoredBinder) -> Result<(), StoreError> {
        self.submit(Op::PutBinder(binder)).await
    }

    /// Records a warm handout: durable when this returns (one line appended
    /// to the journal), committed to SQLite soon after by the writer. No
    /// waiting: this is the handout's hot path.
    pub fn record_handout(
        &self,
        id: &str,
        owner: &Owner,
        assigned_at: u64,
    ) -> Result<(), StoreError> {
        // Made before the journal's lock is taken: under it, only a copy.
        let record = Assigned::new(id, owner, assigned_at);
        self.journal.append(record, |record, line| {
            self.journaled.push(Job {
                op: Op::Assign(record),
                done: None,
                line,
            });
        })?;
        Ok(())
    }

    /// Records a handout. Returns once it is committed.
    pub async fn assign(&self, id: &str, owner: Owner, assigned_at: u64) -> Result<(), StoreError> {
        self.submit(Op::Assign(Assigned::new(id, &owner, assigned_at)))
            .await
    }

    /// Records that a starting pool binder now belongs to `owner`. A row
    /// not written yet is written whole, with the owner, by its start.
    pub async fn claim(&self, id: &str, owner: Owner) -> Result<(), StoreError> {
        self.submit(Op::Claim {
            id: id.to_owned(),
            owner,
        })
        .await
    }

    pub async fn set_binder_state(&self, id: &str, state: State) -> Result<(), StoreError> {
        self.submit(Op::SetBinderState(id.to_owned(), state)).await
    }

    pub async fn delete_binder(&self, id: &str) -> Result<(), StoreError> {
        self.submit(Op::DeleteBinder(id.to_owned())).await
    }

    pub async fn set_pool_size(&self, binding: &str, min: u32, max: u32) -> Result<(), StoreError> {
        self.submit(Op::SetPoolSize(binding.to_owned(), min, max))
            .await
    }
}
/// Reads one binder back (the store's tests).
#[cfg(test)]
pub fn read_binder_state(data_dir: &Path, id: &str) -> Result<Option<String>, StoreError> {
    use rusqlite::OptionalExtension;
    let conn = Connection::open(data_dir.join("binderd.sqlite3"))?;
    Ok(conn
        .query_row("SELECT state FROM binders WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?)
}
