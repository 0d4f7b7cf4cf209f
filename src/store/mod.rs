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

mod journal;

use journal::{Assigned, Journal};

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::mpsc::{self, RecvTimeoutError};
use tokio::sync::oneshot;

use crate::auth::Owner;
use crate::backend::Instance;
use crate::binder::{Binder, State};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 4096;
/// How often the writer folds journaled handouts into SQLite while they come
/// (they never wake it; a write someone waits for does, and takes them
/// along)...
const JOURNAL_GATHER: Duration = Duration::from_millis(2);
/// ...and while none came in its last round.
const JOURNAL_QUIET: Duration = Duration::from_millis(250);
/// How often the checkpointer looks at the WAL.
const CHECKPOINT_POLL: Duration = Duration::from_millis(200);
/// A checkpoint runs once the writer has been idle this long...
const CHECKPOINT_IDLE: Duration = Duration::from_secs(1);
/// ...or after this many commits (a few tens of MB of WAL) whatever the load.
const CHECKPOINT_AFTER_COMMITS: u64 = 10_000;

/// The nice value of the writer and checkpointer threads. A warm handout is
/// durable once its journal line is written; bringing SQLite up to date
/// after it is background work, which should not take a core from the
/// event loops answering requests (on two cores, a writer's round landing
/// on one of them showed in the handouts' p99). Under a saturated CPU the
/// writer still gets its share (about a tenth of a contended core), and
/// catches up in the gaps.
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to [`BACKGROUND_NICE`]
/// (Linux keeps a nice value per thread; elsewhere it would be the whole
/// process's, so this is Linux only). Failing only logs: the thread then
/// runs at the process's priority, as before.
fn run_in_background() {
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), BACKGROUND_NICE)
    {
        tracing::debug!(error = %e, "cannot lower the store thread's priority");
    }
}

/// What the writer tells the checkpointer.
struct Commits {
    /// Commits since the last checkpoint.
    pending: AtomicU64,
    /// When the last commit ended, in milliseconds since `epoch`.
    last_ms: AtomicU64,
    epoch: Instant,
    /// The writer has stopped (every `Store` is gone).
    stopped: std::sync::atomic::AtomicBool,
}

impl Default for Commits {
    fn default() -> Self {
        Commits {
            pending: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            stopped: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Commits {
    fn committed(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether `pending` commits should be checkpointed now.
    fn checkpoint_due(&self, pending: u64) -> bool {
        let idle_ms = (self.epoch.elapsed().as_millis() as u64)
            .saturating_sub(self.last_ms.load(Ordering::Acquire));
        pending > 0
            && (idle_ms >= CHECKPOINT_IDLE.as_millis() as u64
                || pending >= CHECKPOINT_AFTER_COMMITS)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt record: {0}")]
    Corrupt(String),
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
            binding: binder.binding.to_string(),
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
    pub bindings: Vec<StoredBinding>,
    pub binders: Vec<StoredBinder>,
    /// `(binding, min, max)` set through `/pools`.
    pub pool_sizes: Vec<(String, u32, u32)>,
}

enum Op {
    PutBinding(StoredBinding),
    DeleteBinding(String),
    PutBinder(StoredBinder),
    Assign(Assigned),
    Claim { id: String, owner: Owner },
    SetBinderState(String, State),
    DeleteBinder(String),
    SetPoolSize(String, u32, u32),
}

struct Job {
    op: Op,
    /// Who waits for the commit; `None` for a journaled handout.
    done: Option<oneshot::Sender<Result<(), String>>>,
    /// The journal line this write repeats (0: none).
    line: u64,
}

/// Handle to the writer thread and the handout journal. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Writes someone waits for: each wakes the writer.
    tx: mpsc::Sender<Job>,
    /// Journaled handouts, in line order: they wake nobody.
    journaled: Arc<SegQueue<Job>>,
    journal: Arc<Journal>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bindings (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS binders (
    id TEXT PRIMARY KEY,
    binding TEXT NOT NULL,
    token TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    owner TEXT,
    instance TEXT,
    created_at INTEGER NOT NULL,
    assigned_at INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS pool_sizes (
    binding TEXT PRIMARY KEY,
    min INTEGER NOT NULL,
    max INTEGER NOT NULL
);
";

/// The name a state is stored under (its serde name, which the store also
/// reads back through serde).
fn state_name(state: State) -> &'static str {
    match state {
        State::Starting => "starting",
        State::StartingClaimed => "starting_claimed",
        State::Idle => "idle",
        State::Assigned => "assigned",
        State::Stopping => "stopping",
        State::Stopped => "stopped",
        State::Failed => "failed",
        State::Paused => "paused",
    }
}

impl Store {
    /// Opens (or creates) `binderd.sqlite3` in `data_dir`, reads it, and
    /// starts the writer thread.
    pub fn open(data_dir: &Path) -> Result<(Store, Loaded), StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let conn = Connection::open(data_dir.join("binderd.sqlite3"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        replay_journal(&conn, data_dir)?;
        let loaded = load(&conn)?;
        let journal = Arc::new(Journal::create(data_dir)?);
        // Checkpoints copy the WAL back into the database and fsync it. Done
        // by the writer at commit time they stall every handout waiting on
        // that commit, so the writer never does them. A thread of their own
        // does, PASSIVE (never blocking the writer) — and only once the
        // writer has been idle for a moment or the WAL has grown long: the
        // fsync stalls the writer's appends to the WAL for tens of
        // milliseconds on this kind of disk, which under sustained handouts
        // would land in every second's latency tail.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = Connection::open(data_dir.join("binderd.sqlite3"))?;
        checkpointer.busy_timeout(std::time::Duration::from_secs(5))?;
        let commits = Arc::new(Commits::default());
        let (tx, rx) = mpsc::channel();
        let journaled = Arc::new(SegQueue::new());
        let (written, rotated, queued) = (commits.clone(), journal.clone(), journaled.clone());
        std::thread::Builder::new()
            .name("binderd-store".into())
            .spawn(move || {
                run_in_background();
                writer(conn, &rx, &queued, &written, &rotated);
                written.stopped.store(true, Ordering::Release);
            })?;
        std::thread::Builder::new()
            .name("binderd-checkpoint".into())
            .spawn(move || {
                run_in_background();
                while !commits.stopped.load(Ordering::Acquire) {
                    std::thread::sleep(CHECKPOINT_POLL);
                    let pending = commits.pending.load(Ordering::Acquire);
                    if commits.checkpoint_due(pending) {
                        let _ = checkpointer.query_row(
                            "PRAGMA wal_checkpoint(PASSIVE)",
                            [],
                            |_| Ok(()),
                        );
                        commits.pending.fetch_sub(pending, Ordering::AcqRel);
                    }
                }
            })?;
        Ok((
            Store {
                tx,
                journaled,
                journal,
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
            Ok(Err(msg)) => Err(StoreError::Corrupt(msg)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    pub async fn put_binding(&self, binding: StoredBinding) -> Result<(), StoreError> {
        self.submit(Op::PutBinding(binding)).await
    }

    /// Removes the binding and its pool size override.
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

fn load(conn: &Connection) -> Result<Loaded, StoreError> {
    let mut loaded = Loaded::default();
    let mut stmt = conn.prepare("SELECT name, spec, owner, created_at, source FROM bindings")?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredBinding {
            name: r.get(0)?,
            spec: r.get(1)?,
            owner: r.get(2)?,
            created_at: r.get::<_, i64>(3)? as u64,
            source: if r.get::<_, String>(4)? == "file" {
                Source::File
            } else {
                Source::Api
            },
        })
    })?;
    for row in rows {
        loaded.bindings.push(row?);
    }
    let mut stmt = conn.prepare(
        "SELECT id, binding, token, state, owner, instance, created_at, assigned_at FROM binders",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, i64>(7)?,
        ))
    })?;
    for row in rows {
        let (id, binding, token, state, owner, instance, created_at, assigned_at) = row?;
        let corrupt = |what: &str| StoreError::Corrupt(format!("binder {id}: bad {what}"));
        let state: State = serde_json::from_value(serde_json::Value::String(state))
            .map_err(|_| corrupt("state"))?;
        let owner = owner
            .map(|o| serde_json::from_str(&o))
            .transpose()
            .map_err(|_| corrupt("owner"))?;
        let instance = instance
            .map(|i| serde_json::from_str(&i))
            .transpose()
            .map_err(|_| corrupt("instance"))?;
        loaded.binders.push(StoredBinder {
            id,
            binding,
            token,
            state,
            owner,
            instance,
            created_at: created_at as u64,
            assigned_at: assigned_at as u64,
        });
    }
    let mut stmt = conn.prepare("SELECT binding, min, max FROM pool_sizes")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    for row in rows {
        loaded.pool_sizes.push(row?);
    }
    Ok(loaded)
}

/// Binder id → SQLite rowid, kept by the writer so that a handout updates its
/// row by rowid (one integer b-tree descent) rather than through the id index
/// (a string-keyed descent through random pages, then the table). The writer
/// makes every insert and delete of a binder row, and updates the map with
/// each, so an entry is always its binder's current row.
type Rows = std::collections::HashMap<String, i64>;

fn apply(conn: &Connection, op: &Op, rows: &mut Rows) -> rusqlite::Result<()> {
    match op {
        Op::PutBinding(b) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO bindings (name, spec, owner, created_at, source)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                b.name,
                b.spec,
                b.owner,
                b.created_at as i64,
                if b.source == Source::File {
                    "file"
                } else {
                    "api"
                }
            ])?;
        }
        Op::DeleteBinding(name) => {
            conn.prepare_cached("DELETE FROM bindings WHERE name = ?1")?
                .execute([name])?;
            conn.prepare_cached("DELETE FROM pool_sizes WHERE binding = ?1")?
                .execute([name])?;
        }
        Op::PutBinder(b) => {
            let owner = b.owner.as_ref().and_then(|o| serde_json::to_string(o).ok());
            let instance = b
                .instance
                .as_ref()
                .and_then(|i| serde_json::to_string(i).ok());
            conn.prepare_cached(
                "INSERT OR REPLACE INTO binders
                 (id, binding, token, state, owner, instance, created_at, assigned_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                b.id,
                b.binding,
                b.token,
                state_name(b.state),
                owner,
                instance,
                b.created_at as i64,
                b.assigned_at as i64
            ])?;
            rows.insert(b.id.clone(), conn.last_insert_rowid());
        }
        Op::Assign(Assigned {
            id,
            owner,
            assigned_at,
        }) => {
            let state = state_name(State::Assigned);
            // The map follows every insert and delete (this thread makes
            // them all), so its rowid is this binder's row.
            let by_rowid = match rows.get(id) {
                Some(row) => conn
                    .prepare_cached(
                        "UPDATE binders SET state = ?2, owner = ?3, assigned_at = ?4
                         WHERE rowid = ?1",
                    )?
                    .execute(params![row, state, owner, *assigned_at as i64])?,
                None => 0,
            };
            if by_rowid == 0 {
                conn.prepare_cached(
                    "UPDATE binders SET state = ?2, owner = ?3, assigned_at = ?4 WHERE id = ?1",
                )?
                .execute(params![id, state, owner, *assigned_at as i64])?;
            }
        }
        Op::Claim { id, owner } => {
            let owner = serde_json::to_string(owner).ok();
            conn.prepare_cached("UPDATE binders SET state = ?2, owner = ?3 WHERE id = ?1")?
                .execute(params![id, state_name(State::StartingClaimed), owner])?;
        }
        Op::SetBinderState(id, state) => {
            conn.prepare_cached("UPDATE binders SET state = ?2 WHERE id = ?1")?
                .execute(params![id, state_name(*state)])?;
        }
        Op::DeleteBinder(id) => {
            conn.prepare_cached("DELETE FROM binders WHERE id = ?1")?
                .execute([id])?;
            rows.remove(id);
        }
        Op::SetPoolSize(binding, min, max) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO pool_sizes (binding, min, max) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![binding, min, max])?;
        }
    }
    Ok(())
}

/// Reads the id → rowid map back from the table.
fn read_rows(conn: &Connection, rows: &mut Rows) {
    rows.clear();
    if let Ok(mut stmt) = conn.prepare("SELECT id, rowid FROM binders") {
        if let Ok(found) = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        {
            rows.extend(found.flatten());
        }
    }
}

/// Applies the journal a previous run left (its handouts may not all have
/// reached SQLite), then removes it. A line only turns a binder recorded as
/// idle or starting into an assigned one, so it never undoes a later change
/// (a handed-out binder is never idle again) and applying it twice is the
/// same as once.
fn replay_journal(conn: &Connection, dir: &Path) -> Result<(), StoreError> {
    let records = journal::read(dir)?;
    if !records.is_empty() {
        let tx = conn.unchecked_transaction()?;
        let mut changed = 0;
        for r in &records {
            changed += tx
                .prepare_cached(
                    "UPDATE binders SET state = ?2, owner = ?3, assigned_at = ?4
                     WHERE id = ?1 AND state IN (?5, ?6)",
                )?
                .execute(params![
                    r.id,
                    state_name(State::Assigned),
                    r.owner,
                    r.assigned_at as i64,
                    state_name(State::Idle),
                    state_name(State::Starting)
                ])?;
        }
        tx.commit()?;
        tracing::info!(lines = records.len(), changed, "handout journal replayed");
    }
    journal::remove(dir)?;
    Ok(())
}

/// The writer thread: commit whatever is waiting, in one transaction. It
/// also keeps the journal short: rotated past its size limit, and the old
/// one removed once every line in it is committed.
fn writer(
    mut conn: Connection,
    rx: &mpsc::Receiver<Job>,
    journaled: &SegQueue<Job>,
    commits: &Commits,
    journal: &Journal,
) {
    // The last journal line committed; the last line of the rotated-out
    // journal, while it exists; whether a journaled write failed (its line
    // must then stay until the next start replays it).
    let mut committed_line = 0;
    let mut old_journal_ends: Option<u64> = None;
    let mut journal_failed = false;
    let mut rows = Rows::new();
    read_rows(&conn, &mut rows);
    let mut batch: Vec<Job> = Vec::new();
    let mut waited: Vec<Job> = Vec::new();
    let mut quiet = true;
    loop {
        // Woken by a write someone waits for, else by the clock: journaled
        // handouts (already durable and answered) gather meanwhile, so one
        // commit takes many and no handout pays for a wake-up.
        let wait = if quiet { JOURNAL_QUIET } else { JOURNAL_GATHER };
        let closed = match rx.recv_timeout(wait) {
            Ok(job) => {
                waited.push(job);
                while waited.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => waited.push(job),
                        Err(_) => break,
                    }
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        // Journaled handouts first: a write someone waits for may follow a
        // handout (a pause, a delete), never the reverse — the writes a
        // binder's start awaits are all done before it can be handed out.
        while batch.len() < MAX_BATCH {
            match journaled.pop() {
                Some(job) => batch.push(job),
                None => break,
            }
        }
        quiet = batch.is_empty();
        batch.append(&mut waited);
        if batch.is_empty() {
            if closed {
                return;
            }
            continue;
        }
        let mut results: Vec<Result<(), String>> = Vec::with_capacity(batch.len());
        let committed = conn.transaction().and_then(|tx| {
            for job in &batch {
                results.push(apply(&tx, &job.op, &mut rows).map_err(|e| e.to_string()));
            }
            tx.commit()
        });
        match &committed {
            Ok(()) => commits.committed(),
            // Rolled back: the map may name rows that were never made.
            Err(_) => read_rows(&conn, &mut rows),
        }
        for (job, result) in batch
            .drain(..)
            .zip(results.into_iter().chain(std::iter::repeat(Ok(()))))
        {
            let result = match &committed {
                Ok(()) => result,
                Err(e) => Err(format!("commit failed: {e}")),
            };
            if job.line > 0 {
                match &result {
                    Ok(()) => committed_line = committed_line.max(job.line),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot record a handout in SQLite; the journal keeps it until the next start");
                        journal_failed = true;
                    }
                }
            }
            if let Some(done) = job.done {
                let _ = done.send(result);
            }
        }
        if journal_failed {
            continue;
        }
        if old_journal_ends.is_some_and(|end| committed_line >= end) {
            journal.remove_old();
            old_journal_ends = None;
        }
        if old_journal_ends.is_none() && journal.bytes() >= journal::ROTATE_BYTES {
            old_journal_ends = journal.rotate();
        }
    }
}

/// Reads one binder back (tests and diagnostics).
pub fn read_binder_state(data_dir: &Path, id: &str) -> Result<Option<String>, StoreError> {
    let conn = Connection::open(data_dir.join("binderd.sqlite3"))?;
    Ok(conn
        .query_row("SELECT state FROM binders WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn states_are_stored_under_their_serde_names() {
        use State::*;
        let all = [
            Starting,
            StartingClaimed,
            Idle,
            Assigned,
            Stopping,
            Stopped,
            Failed,
            Paused,
        ];
        for state in all {
            let serde = serde_json::to_value(state).unwrap();
            assert_eq!(serde.as_str(), Some(state_name(state)), "{state:?}");
        }
    }

    /// The nice value of each of this process's threads named `name`
    /// (`/proc/self/task/*/stat`, field 19).
    #[cfg(target_os = "linux")]
    fn nice_of_threads(name: &str) -> Vec<i32> {
        let mut nices = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue; // the thread has just ended
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            if &stat[open + 1..close] != name {
                continue;
            }
            // Fields after the name start at field 3 (the state).
            let nice = stat[close + 1..].split_whitespace().nth(19 - 3);
            nices.push(nice.unwrap().parse().unwrap());
        }
        nices
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_writer_and_checkpointer_run_at_background_priority() {
        let dir = fresh_dir("store-nice");
        let (store, _) = Store::open(&dir).unwrap();
        // Thread names are cut to 15 bytes. Other tests open stores too:
        // every one of their threads lowers its own priority as it starts.
        let deadline = Instant::now() + Duration::from_secs(5);
        for name in ["binderd-store", "binderd-checkpo"] {
            loop {
                let nices = nice_of_threads(name);
                if !nices.is_empty() && nices.iter().all(|n| *n >= BACKGROUND_NICE) {
                    break;
                }
                assert!(Instant::now() < deadline, "{name}: nice {nices:?}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn checkpoints_wait_for_an_idle_writer_or_a_long_wal() {
        let c = Commits::default();
        assert!(!c.checkpoint_due(0), "nothing to checkpoint");
        c.committed();
        assert!(!c.checkpoint_due(1), "the writer is busy");
        assert!(
            c.checkpoint_due(CHECKPOINT_AFTER_COMMITS),
            "the WAL is long"
        );
        c.last_ms.store(0, Ordering::Release);
        std::thread::sleep(CHECKPOINT_IDLE + Duration::from_millis(10));
        assert!(c.checkpoint_due(1), "the writer has been idle");
    }

    /// Once the writer is idle, commits reach the database file itself (a
    /// copy of it without the WAL has them).
    #[tokio::test]
    async fn idle_commits_are_checkpointed_into_the_database_file() {
        let dir = fresh_dir("ckpt");
        let (store, _) = Store::open(&dir).unwrap();
        store.put_binder(binder("ck1")).await.unwrap();
        let copy = dir.join("copy.sqlite3");
        let rows_in_copy = || {
            std::fs::copy(dir.join("binderd.sqlite3"), &copy).unwrap();
            let conn = Connection::open(&copy).unwrap();
            conn.query_row("SELECT count(*) FROM binders", [], |r| r.get::<_, i64>(0))
                .unwrap_or(0)
        };
        assert_eq!(rows_in_copy(), 0, "still only in the WAL");
        let deadline = Instant::now() + CHECKPOINT_IDLE * 5;
        while rows_in_copy() == 0 {
            assert!(Instant::now() < deadline, "never checkpointed");
            tokio::time::sleep(CHECKPOINT_POLL).await;
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An empty data dir of this test's own.
    fn fresh_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("binderd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn binder(id: &str) -> StoredBinder {
        StoredBinder {
            id: id.into(),
            binding: "b".into(),
            token: format!("tok-{id}"),
            state: State::Idle,
            owner: None,
            instance: Some(Instance {
                handle: "42".into(),
                addr: SocketAddr::from(([127, 0, 0, 1], 9)),
            }),
            created_at: 7,
            assigned_at: 0,
        }
    }

    #[tokio::test]
    async fn writes_survive_reopen_and_batch_concurrently() {
        let dir = fresh_dir("store");
        {
            let (store, loaded) = Store::open(&dir).unwrap();
            assert!(loaded.bindings.is_empty());
            store
                .put_binding(StoredBinding {
                    name: "b".into(),
                    spec: "{}".into(),
                    owner: "alice".into(),
                    created_at: 1,
                    source: Source::Api,
                })
                .await
                .unwrap();
            let mut tasks = Vec::new();
            for i in 0..100 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let id = format!("id{i}");
                    store.put_binder(binder(&id)).await.unwrap();
                    if i % 2 == 0 {
                        store
                            .assign(&id, Owner::Key("alice".into()), 99)
                            .await
                            .unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            store.delete_binder("id1").await.unwrap();
            store.set_pool_size("b", 3, 9).await.unwrap();
        }
        let (store, loaded) = Store::open(&dir).unwrap();
        assert_eq!(loaded.bindings.len(), 1);
        assert_eq!(loaded.bindings[0].owner, "alice");
        assert_eq!(loaded.binders.len(), 99);
        let assigned = loaded
            .binders
            .iter()
            .filter(|b| b.state == State::Assigned)
            .count();
        assert_eq!(assigned, 50);
        let b0 = loaded.binders.iter().find(|b| b.id == "id0").unwrap();
        assert_eq!(b0.owner, Some(Owner::Key("alice".into())));
        assert_eq!(b0.assigned_at, 99);
        assert_eq!(b0.instance, binder("id0").instance);
        assert_eq!(loaded.pool_sizes, vec![("b".to_string(), 3, 9)]);
        assert_eq!(
            read_binder_state(&dir, "id0").unwrap().as_deref(),
            Some("assigned")
        );
        // After a reopen the writer finds rows by the rowids it read back;
        // a binder recorded again (a new rowid) is still found.
        let mut again = binder("id3");
        again.created_at = 8;
        store.put_binder(again).await.unwrap();
        store.assign("id3", Owner::Anonymous, 100).await.unwrap();
        store.assign("id5", Owner::Anonymous, 101).await.unwrap();
        assert_eq!(
            read_binder_state(&dir, "id3").unwrap().as_deref(),
            Some("assigned")
        );
        assert_eq!(
            read_binder_state(&dir, "id5").unwrap().as_deref(),
            Some("assigned")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A warm handout is durable when `record_handout` returns: its line is
    /// in the journal file, and that line alone (SQLite still saying
    /// "idle", as after a crash before the writer's commit) makes the next
    /// start see the binder assigned. A line never undoes a later change.
    #[tokio::test]
    async fn journaled_handouts_are_durable_before_sqlite_has_them() {
        let dir = fresh_dir("journal-store");
        {
            let (store, _) = Store::open(&dir).unwrap();
            for id in ["j1", "j2", "j3", "j4"] {
                store.put_binder(binder(id)).await.unwrap();
            }
            store
                .record_handout("j1", &Owner::Key("bob".into()), 500)
                .unwrap();
            let lines = journal::read(&dir).unwrap();
            assert_eq!(lines.len(), 1, "not in the journal when the call returned");
            assert_eq!(lines[0].id, "j1");
        }
        // What a crash before the writer's commit leaves: lines in the journal
        // for binders SQLite still has as idle (j2), starting (j3), paused
        // since (j4: a later change the line must not undo), or gone (j9).
        let conn = Connection::open(dir.join("binderd.sqlite3")).unwrap();
        conn.execute_batch(
            "UPDATE binders SET state = 'idle', owner = NULL, assigned_at = 0;
             UPDATE binders SET state = 'starting' WHERE id = 'j3';
             UPDATE binders SET state = 'paused', assigned_at = 7 WHERE id = 'j4';",
        )
        .unwrap();
        drop(conn);
        let journal = Journal::create(&dir).unwrap();
        for (id, at) in [("j2", 501), ("j3", 502), ("j4", 503), ("j9", 504)] {
            let record = Assigned::new(id, &Owner::Anonymous, at);
            journal.append(record, |_, _| {}).unwrap();
        }
        drop(journal);
        let (_store, loaded) = Store::open(&dir).unwrap();
        let get = |id: &str| loaded.binders.iter().find(|b| b.id == id).unwrap();
        // The journal is removed only once replayed at a start: j1's line,
        // written by `record_handout` above, is replayed onto the row this
        // test set back to idle.
        assert_eq!(get("j1").state, State::Assigned);
        assert_eq!(get("j1").owner, Some(Owner::Key("bob".into())));
        assert_eq!(get("j1").assigned_at, 500);
        assert_eq!(
            (get("j2").state, get("j2").assigned_at),
            (State::Assigned, 501)
        );
        assert_eq!(
            (get("j3").state, get("j3").assigned_at),
            (State::Assigned, 502)
        );
        assert_eq!((get("j4").state, get("j4").assigned_at), (State::Paused, 7));
        assert_eq!(loaded.binders.len(), 4);
        assert!(
            journal::read(&dir).unwrap().is_empty(),
            "replayed journal left behind"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Under a stream of handouts the journal is rotated and the old one
    /// removed once committed, and every handout is in SQLite after a
    /// reopen.
    #[tokio::test]
    async fn the_journal_stays_short_and_loses_nothing() {
        let dir = fresh_dir("journal-rotate");
        let n = 400;
        {
            let (store, _) = Store::open(&dir).unwrap();
            for i in 0..n {
                store.put_binder(binder(&format!("r{i}"))).await.unwrap();
            }
            for i in 0..n {
                store
                    .record_handout(&format!("r{i}"), &Owner::Anonymous, 1000 + i)
                    .unwrap();
                if i % 50 == 49 {
                    // Let the writer catch up now and then, as a real load does.
                    store.set_pool_size("b", 1, 2).await.unwrap();
                }
            }
            store.set_pool_size("b", 1, 2).await.unwrap();
            let size = |name: &str| std::fs::metadata(dir.join(name)).map(|m| m.len());
            assert!(
                size("binderd.journal").unwrap() < 2 * journal::ROTATE_BYTES,
                "never rotated"
            );
            // The writer removes it after the batch that commits its last
            // line (acknowledged before that): a later batch sees it gone.
            let deadline = Instant::now() + Duration::from_secs(5);
            while size("binderd.journal.1").is_ok() {
                assert!(
                    Instant::now() < deadline,
                    "old journal kept after its commit"
                );
                store.set_pool_size("b", 1, 2).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                journal::read(&dir).unwrap().len() < n as usize,
                "every line still in the journal"
            );
        }
        // SQLite alone (the journal removed) has them all.
        std::fs::remove_file(dir.join("binderd.journal")).unwrap();
        let (_store, loaded) = Store::open(&dir).unwrap();
        let assigned = loaded
            .binders
            .iter()
            .filter(|b| b.state == State::Assigned)
            .count();
        assert_eq!(assigned, n as usize);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
