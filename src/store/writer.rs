//! The store's two threads. The writer owns the connection and commits
//! every write waiting at that moment in one transaction (journaled
//! handouts first, gathered every few milliseconds; a write someone waits
//! for wakes it), then acknowledges each. The checkpointer copies the WAL
//! back into the database only when the writer is idle or the WAL long.
//! Both run at a background priority.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::journal::Journal;
use super::sql::{apply, read_rows, Op, Rows};
use super::StoreError;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 4096;
/// How often the writer folds journaled handouts into SQLite while they come
/// (they never wake it; a write someone waits for does, and takes them
/// along)...
const JOURNAL_GATHER: Duration = Duration::from_millis(2);
/// ...and while none came in its last round.
const JOURNAL_QUIET: Duration = Duration::from_millis(250);
/// How often the checkpointer looks at the WAL.
pub(super) const CHECKPOINT_POLL: Duration = Duration::from_millis(200);
/// A checkpoint runs once the writer has been idle this long...
pub(super) const CHECKPOINT_IDLE: Duration = Duration::from_secs(1);
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

pub(super) struct Job {
    pub(super) op: Op,
    /// Who waits for the commit; `None` for a journaled handout.
    pub(super) done: Option<oneshot::Sender<Result<(), String>>>,
    /// The journal line this write repeats (0: none).
    pub(super) line: u64,
}

/// Starts the writer (with `conn`, the store's open connection) and the
/// checkpointer (with a second connection of its own); gives the writer's
/// two inboxes.
pub(super) fn start(
    conn: Connection,
    data_dir: &Path,
    journal: Arc<Journal>,
) -> Result<(mpsc::Sender<Job>, Arc<SegQueue<Job>>), StoreError> {
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
    let (written, queued) = (commits.clone(), journaled.clone());
    std::thread::Builder::new()
        .name("binderd-store".into())
        .spawn(move || {
            run_in_background();
            writer(conn, &rx, &queued, &written, &journal);
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
                    let _ =
                        checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    commits.pending.fetch_sub(pending, Ordering::AcqRel);
                }
            }
        })?;
    Ok((tx, journaled))
}

/// The writer thread: commit whatever is waiting, in one transaction. It
/// also keeps the journal short: rotated past its size limit, and the old
/// one removed once every line in it is committed.
fn writer(
    conn: Connection,
    rx: &mpsc::Receiver<Job>,
    journaled: &SegQueue<Job>,
    commits: &Commits,
    journal: &Journal,
) {
    let mut w = Writer::new(conn);
    loop {
        let closed = w.receive(rx);
        let retried = w.gather(journaled);
        let retrying = retried > 0;
        if w.batch.is_empty() {
            if closed {
                return;
            }
            continue;
        }
        if retrying && w.batch.len() == retried && !closed {
            // Only failed handouts to try again: not in a tight loop.
            std::thread::sleep(JOURNAL_QUIET);
        }
        let (committed, results) = w.commit(commits);
        w.acknowledge(&committed, results, retrying);
        if !w.retry.is_empty() {
            continue;
        }
        if retrying {
            tracing::info!("the handouts that could not be recorded are in SQLite now");
        }
        w.tend_journal(journal);
    }
}

/// The writer thread's state between rounds.
struct Writer {
    conn: Connection,
    /// Binder id → SQLite rowid (see [`Rows`]).
    rows: Rows,
    /// The last journal line committed.
    committed_line: u64,
    /// The last line of the rotated-out journal, while it exists.
    old_journal_ends: Option<u64>,
    /// Journaled handouts whose commit failed (a full disk, an I/O error):
    /// tried again each round, first, until they are in; meanwhile the
    /// journal keeps every line (the next start would replay them).
    retry: Vec<Job>,
    /// This round's writes, in commit order.
    batch: Vec<Job>,
    /// Writes someone waits for, received this round.
    waited: Vec<Job>,
    /// No journaled handout came in the last round.
    quiet: bool,
}

impl Writer {
    fn new(conn: Connection) -> Writer {
        let mut rows = Rows::new();
        read_rows(&conn, &mut rows);
        Writer {
            conn,
            rows,
            committed_line: 0,
            old_journal_ends: None,
            retry: Vec::new(),
            batch: Vec::new(),
            waited: Vec::new(),
            quiet: true,
        }
    }

    /// Waits for a write someone waits for, else for the clock: journaled
    /// handouts (already durable and answered) gather meanwhile, so one
    /// commit takes many and no handout pays for a wake-up. Takes every
    /// such write already waiting too (up to [`MAX_BATCH`]). Whether every
    /// sender is gone.
    fn receive(&mut self, rx: &mpsc::Receiver<Job>) -> bool {
        let wait = if self.quiet {
            JOURNAL_QUIET
        } else {
            JOURNAL_GATHER
        };
        match rx.recv_timeout(wait) {
            Ok(job) => {
                self.waited.push(job);
                while self.waited.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => self.waited.push(job),
                        Err(_) => break,
                    }
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        }
    }

    /// Fills the batch: journaled handouts first — a write someone waits
    /// for may follow a handout (a pause, a delete), never the reverse; the
    /// writes a binder's start awaits are all done before it can be handed
    /// out — with failed ones again before the newer ones; then the writes
    /// received. How many of the batch are tried again.
    fn gather(&mut self, journaled: &SegQueue<Job>) -> usize {
        let retried = self.retry.len();
        self.batch.append(&mut self.retry);
        while self.batch.len() < MAX_BATCH {
            match journaled.pop() {
                Some(job) => self.batch.push(job),
                None => break,
            }
        }
        self.quiet = self.batch.is_empty();
        self.batch.append(&mut self.waited);
        retried
    }

    /// Applies the batch in one transaction: the commit's outcome and each
    /// write's own (fewer than the batch if the transaction did not start).
    fn commit(&mut self, commits: &Commits) -> (rusqlite::Result<()>, Vec<Result<(), String>>) {
        let mut results: Vec<Result<(), String>> = Vec::with_capacity(self.batch.len());
        let rows = &mut self.rows;
        let batch = &self.batch;
        let committed = self.conn.transaction().and_then(|tx| {
            for job in batch {
                results.push(apply(&tx, &job.op, rows).map_err(|e| e.to_string()));
            }
            tx.commit()
        });
        match &committed {
            Ok(()) => commits.committed(),
            // Rolled back: the map may name rows that were never made.
            Err(_) => read_rows(&self.conn, &mut self.rows),
        }
        (committed, results)
    }

    /// Answers each write of the batch with its outcome; a journaled
    /// handout that failed goes to [`Writer::retry`] instead (logged once
    /// per run of failures), and one that is in moves the committed line.
    fn acknowledge(
        &mut self,
        committed: &rusqlite::Result<()>,
        results: Vec<Result<(), String>>,
        retrying: bool,
    ) {
        for (job, result) in self
            .batch
            .drain(..)
            .zip(results.into_iter().chain(std::iter::repeat(Ok(()))))
        {
            let result = match committed {
                Ok(()) => result,
                Err(e) => Err(format!("commit failed: {e}")),
            };
            if job.line > 0 {
                match &result {
                    Ok(()) => self.committed_line = self.committed_line.max(job.line),
                    Err(e) => {
                        if !retrying && self.retry.is_empty() {
                            tracing::error!(error = %e, "cannot record a handout in SQLite; trying again, the journal keeps it meanwhile");
                        }
                        self.retry.push(job);
                        continue;
                    }
                }
            }
            if let Some(done) = job.done {
                let _ = done.send(result);
            }
        }
    }

    /// Removes the rotated-out journal once every line in it is committed,
    /// and rotates the journal past its size limit.
    fn tend_journal(&mut self, journal: &Journal) {
        if self
            .old_journal_ends
            .is_some_and(|end| self.committed_line >= end)
        {
            journal.remove_old();
            self.old_journal_ends = None;
        }
        if self.old_journal_ends.is_none() && journal.bytes() >= super::journal::ROTATE_BYTES {
            self.old_journal_ends = journal.rotate();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::fresh_dir;
    use crate::store::Store;

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
}
