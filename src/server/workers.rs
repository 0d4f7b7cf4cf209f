//! The proxy's event loops: one thread per core, each running its own
//! single-threaded runtime, as nginx runs one worker process per core. A
//! connection accepted on the main runtime is given to one of them (in
//! turn) and stays there while its requests take the fast path: no work
//! stealing, no waking another thread, its upstream connections kept by
//! the same loop (see [`crate::upstream::Conns`]). A connection handed to
//! hyper goes back to the main runtime, where the routes live.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

/// A connection's work, made on the worker (so that its sockets and timers
/// belong to the worker's runtime).
pub(super) type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The most event loops started, whatever the core count.
const MAX_WORKERS: usize = 16;

pub(super) struct Workers {
    queues: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// One event loop per core (at least one).
    pub(super) fn start() -> std::io::Result<Workers> {
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_WORKERS);
        let mut queues = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let thread = std::thread::Builder::new()
                .name(format!("binderd-proxy-{i}"))
                .spawn(move || {
                    crate::upstream::set_loop_index(i);
                    runtime.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            tokio::spawn(job());
                        }
                    });
                    // Dropping the runtime ends what still runs on it.
                })?;
            queues.push(tx);
            threads.push(thread);
        }
        Ok(Workers {
            queues,
            next: AtomicUsize::new(0),
            threads,
        })
    }

    /// Gives `job` to the next event loop.
    pub(super) fn run(&self, job: Job) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        let _ = self.queues[i].send(job);
    }

    /// Ends every event loop (what still runs on them is dropped) and waits
    /// for their threads.
    pub(super) fn stop(self) {
        drop(self.queues);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
