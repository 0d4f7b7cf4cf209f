//! The handout structure under contention, against a `Mutex<VecDeque>`
//! baseline in the same run: each thread pops a binder (Idle → Assigned, as a
//! handout does) and pushes it back (as a refill does), 1, 2 and 8 threads.
//! Also prints what one binder costs in memory, measured from the process's
//! resident set while making 100,000 of them.
//!
//! `cargo bench --bench allocator`

use std::collections::VecDeque;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use binderd::binding::BindingName;
use binderd::parts::{Binder, State};
use binderd::parts::{Counters, ReadyQueue};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const OPS_PER_THREAD: u64 = 10_000;

fn binders(n: usize) -> Vec<Arc<Binder>> {
    let name = BindingName::parse("bench").unwrap();
    (0..n)
        .map(|_| Arc::new(Binder::new(name.clone(), State::Idle)))
        .collect()
}

/// Runs `op` OPS_PER_THREAD times on each of `threads` threads at once;
/// returns the wall time.
fn contended(threads: usize, op: impl Fn() + Sync) -> Duration {
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                start.wait();
                for _ in 0..OPS_PER_THREAD {
                    op();
                }
            });
        }
        start.wait();
        let t = Instant::now();
        // Scope end joins the threads.
        t
    })
    .elapsed()
}

fn handout(c: &mut Criterion) {
    let mut group = c.benchmark_group("pop+push");
    for threads in [1usize, 2, 8] {
        group.throughput(Throughput::Elements(OPS_PER_THREAD * threads as u64));
        group.bench_with_input(
            BenchmarkId::new("lock-free ReadyQueue", threads),
            &threads,
            |b, &threads| {
                let counters = Counters::default();
                let queue = ReadyQueue::default();
                for binder in binders(1024) {
                    assert!(counters.try_reserve(u32::MAX));
                    counters.entered(State::Idle);
                    queue.push(binder);
                }
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            contended(threads, || {
                                let binder =
                                    queue.pop_transition(&counters, State::Assigned).unwrap();
                                // Back to the pool, as if refilled.
                                assert!(counters.transition(&binder, State::Assigned, State::Idle));
                                queue.push(binder);
                            })
                        })
                        .sum()
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("Mutex<VecDeque> baseline", threads),
            &threads,
            |b, &threads| {
                // Counted as the lock-free side is, so that the two differ
                // only in the queue.
                let counters = Counters::default();
                for _ in 0..1024 {
                    assert!(counters.try_reserve(u32::MAX));
                    counters.entered(State::Idle);
                }
                let queue = Mutex::new(binders(1024).into_iter().collect::<VecDeque<_>>());
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            contended(threads, || {
                                let binder = queue.lock().unwrap().pop_front().unwrap();
                                assert!(counters.transition(&binder, State::Idle, State::Assigned));
                                assert!(counters.transition(&binder, State::Assigned, State::Idle));
                                queue.lock().unwrap().push_back(binder);
                            })
                        })
                        .sum()
                });
            },
        );
    }
    group.finish();
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn memory_per_binder(_: &mut Criterion) {
    let before = rss_bytes();
    let queue = ReadyQueue::default();
    let all = binders(100_000);
    for b in &all {
        queue.push(b.clone());
    }
    let after = rss_bytes();
    println!(
        "memory: {:.0} bytes per pooled binder (RSS grew {} KiB for 100,000; struct Binder is {} bytes)",
        (after.saturating_sub(before)) as f64 / 100_000.0,
        (after.saturating_sub(before)) / 1024,
        std::mem::size_of::<Binder>()
    );
    drop(all);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = handout, memory_per_binder
}
criterion_main!(benches);
