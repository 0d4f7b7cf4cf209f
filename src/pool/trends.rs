//! A pool's last hour, minute by minute, in binderd's memory: a ring of 60
//! minutes per pool (about 7 KB), written with atomics on the handout path
//! (a handout, warm or cold, and how long its answer took) and by the
//! sampler (`available`, `running`, `target`, every few seconds), read by
//! `GET /trends` for the dashboard's charts. `/metrics` keeps the same
//! series for Prometheus, unbounded in time; this is what the page can show
//! without one.
//!
//! A minute's slot is taken over by the first writer of a new minute, which
//! clears it; a write racing that clear can be lost (one handout in a
//! chart), never a binder.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Pool, Pools};

/// Minutes kept.
pub const MINUTES: usize = 60;

/// Latency buckets: bucket `i` holds answers under `16 µs << i` (the last
/// one everything longer, from ~67 s).
const BUCKETS: usize = 23;

/// How often the sampler records a pool's counts.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Minute {
    /// Unix minute + 1 this slot holds (0: none yet).
    at: AtomicU64,
    handouts: AtomicU32,
    warm: AtomicU32,
    latency: [AtomicU32; BUCKETS],
    /// The last sampled counts, + 1 (0: not sampled this minute).
    available: AtomicU32,
    running: AtomicU32,
    target: AtomicU32,
}

impl Minute {
    fn clear(&self) {
        for c in [
            &self.handouts,
            &self.warm,
            &self.available,
            &self.running,
            &self.target,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        for b in &self.latency {
            b.store(0, Ordering::Relaxed);
        }
    }

    /// The latency under which `share` of the minute's answers came (the
    /// bucket's upper bound), in µs.
    fn quantile(&self, share: f64) -> Option<u64> {
        let counts: Vec<u32> = self
            .latency
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let all: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        if all == 0 {
            return None;
        }
        let rank = ((all as f64) * share).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(16u64 << i);
            }
        }
        Some(16u64 << (BUCKETS - 1))
    }
}

/// One minute of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The minute's start, unix seconds.
    pub minute: u64,
    pub handouts: u32,
    /// Warm handouts' share of the minute's (none without handouts).
    pub warm_share: Option<f64>,
    /// Handout answers' p50 and p99 in µs (a bucket's upper bound).
    pub p50_micros: Option<u64>,
    pub p99_micros: Option<u64>,
    /// The last sampled counts of the minute (none: not sampled).
    pub available: Option<u32>,
    pub running: Option<u32>,
    pub target: Option<u32>,
}

/// A pool's ring of minutes.
pub struct Trends {
    minutes: Box<[Minute]>,
}

impl Default for Trends {
    fn default() -> Self {
        Trends {
            minutes: (0..MINUTES).map(|_| Minute::default()).collect(),
        }
    }
}

fn unix_minute(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60
}

impl Trends {
    /// The slot of `minute`, cleared first if it held an older one.
    fn slot(&self, minute: u64) -> &Minute {
        let m = &self.minutes[(minute % MINUTES as u64) as usize];
        let stamp = minute + 1;
        let held = m.at.load(Ordering::Acquire);
        if held < stamp
            && m.at
                .compare_exchange(held, stamp, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            m.clear();
        }
        m
    }

    /// One handout at `now`: warm or not, and how long its answer took.
    pub fn handout(&self, now: SystemTime, warm: bool, took: Duration) {
        let m = self.slot(unix_minute(now));
        m.handouts.fetch_add(1, Ordering::Relaxed);
        if warm {
            m.warm.fetch_add(1, Ordering::Relaxed);
        }
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = (0..BUCKETS - 1)
            .find(|&i| us < 16u64 << i)
            .unwrap_or(BUCKETS - 1);
        m.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The pool's counts at `now`.
    pub fn sample(&self, now: SystemTime, available: u32, running: u32, target: u32) {
        let m = self.slot(unix_minute(now));
        m.available
            .store(available.saturating_add(1), Ordering::Relaxed);
        m.running
            .store(running.saturating_add(1), Ordering::Relaxed);
        m.target.store(target.saturating_add(1), Ordering::Relaxed);
    }

    /// The last hour up to `now`, oldest first, a point per minute (empty
    /// minutes too, so the charts keep time).
    pub fn series(&self, now: SystemTime) -> Vec<Point> {
        let last = unix_minute(now);
        let first = last.saturating_sub(MINUTES as u64 - 1);
        (first..=last)
            .map(|minute| {
                let m = &self.minutes[(minute % MINUTES as u64) as usize];
                let here = m.at.load(Ordering::Acquire) == minute + 1;
                let gauge = |c: &AtomicU32| {
                    let v = c.load(Ordering::Relaxed);
                    (here && v > 0).then(|| v - 1)
                };
                let handouts = if here {
                    m.handouts.load(Ordering::Relaxed)
                } else {
                    0
                };
                let warm = m.warm.load(Ordering::Relaxed);
                Point {
                    minute: minute * 60,
                    handouts,
                    warm_share: (handouts > 0)
                        .then(|| f64::from(warm.min(handouts)) / f64::from(handouts)),
                    p50_micros: here.then(|| m.quantile(0.5)).flatten(),
                    p99_micros: here.then(|| m.quantile(0.99)).flatten(),
                    available: gauge(&m.available),
                    running: gauge(&m.running),
                    target: gauge(&m.target),
                }
            })
            .collect()
    }
}

/// Records `pool`'s counts now.
pub fn sample(pool: &Pool) {
    let c = pool.counts();
    pool.trends
        .sample(SystemTime::now(), c.available, c.running, pool.target());
}

impl Pools {
    /// The sampler: every pool's counts every [`SAMPLE_EVERY`].
    pub(crate) fn spawn_trend_sampler(&self) {
        let this = self.clone();
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => this.pools().iter().for_each(|p| sample(p)),
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }

    /// `pool`'s last hour, its counts of this moment in the last minute.
    pub fn trends(&self, pool: &Arc<Pool>) -> Vec<Point> {
        sample(pool);
        pool.trends.series(SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: u64, second: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(minute * 60 + second)
    }

    #[test]
    fn handouts_and_samples_land_in_their_minute() {
        let t = Trends::default();
        let base = 29_000_000;
        for i in 0..99 {
            t.handout(at(base, 1), i % 3 != 0, Duration::from_micros(100));
        }
        t.handout(at(base, 2), true, Duration::from_millis(50));
        t.sample(at(base, 3), 4, 7, 5);
        t.handout(at(base + 2, 0), false, Duration::from_secs(2));
        let s = t.series(at(base + 2, 30));
        assert_eq!(s.len(), MINUTES);
        let last = &s[MINUTES - 1];
        assert_eq!((last.minute, last.handouts), ((base + 2) * 60, 1));
        assert_eq!(last.warm_share, Some(0.0));
        assert_eq!(last.available, None, "not sampled that minute");
        let empty = &s[MINUTES - 2];
        assert_eq!((empty.handouts, empty.p50_micros), (0, None));
        let busy = &s[MINUTES - 3];
        assert_eq!(busy.handouts, 100);
        assert_eq!(busy.warm_share, Some(0.67), "67 of 100 warm");
        assert_eq!(busy.p50_micros, Some(128), "100 µs is under 128");
        assert_eq!(busy.p99_micros, Some(128));
        assert_eq!(
            (busy.available, busy.running, busy.target),
            (Some(4), Some(7), Some(5))
        );
    }

    #[test]
    fn an_hour_later_a_slot_starts_afresh() {
        let t = Trends::default();
        let base = 29_000_000;
        t.handout(at(base, 0), true, Duration::from_micros(10));
        t.sample(at(base, 0), 1, 1, 1);
        let later = base + MINUTES as u64;
        t.handout(at(later, 0), true, Duration::from_micros(10));
        let s = t.series(at(later, 0));
        assert_eq!(s[MINUTES - 1].handouts, 1);
        assert_eq!(s[MINUTES - 1].available, None);
        assert!(s[..MINUTES - 1].iter().all(|p| p.handouts == 0));
        // An older minute's late write does not take a newer slot back.
        t.handout(at(base, 5), true, Duration::from_micros(10));
        assert_eq!(t.series(at(later, 0))[MINUTES - 1].handouts, 2);
    }
}
