//! Demand-sized pools: with `pool.warm_target` (the share of handouts to
//! serve warm), the reconciler sizes the warm pool itself between `minPool`
//! and `maxPool`.
//!
//! The rule: while a refill is under way (the binding's measured time to
//! ready, `T`), handouts keep arriving. Treating them as a Poisson process
//! of mean `m` over that time, the warm pool needs the smallest `k` with
//! `P(N ≤ k) ≥ warm_target` for `N ~ Poisson(m)`: then a refill started at
//! each handout lands before the pool runs dry, with that probability. The
//! target rises at once in a rush and falls back (towards `minPool`) only
//! after `pool.cooldown_seconds` without a rise, so a lull between two waves
//! of a class does not empty the pool. Surplus warm binders are stopped
//! then; handed-out ones never are.
//!
//! The pool is sized by the larger of two targets. The **base** takes `m`
//! as `T` times the handout rate averaged over [`RATE_WINDOW`]; it is held
//! through the cool-down as above. An average trails a rising rate by its
//! window's worth of rise, so in a rush that keeps speeding up the base
//! sizes the pool for the readers of seconds ago (at `warm_target` 0.99 a
//! pool served 86% of such a rush warm). The **lead** looks ahead: a second,
//! faster average ([`FAST_WINDOW`]) stands above the slow one by the rise
//! between their windows, which gives the rate's slope; the lead's `m` is
//! the rate extrapolated over the refill (`T·r + slope·T²/2`, `r` the fast
//! average plus its own lag's worth of rise). It is held only for one time
//! to ready, long enough for the refills it began to land without being
//! stopped, so a steady stream's jitter costs little and a fall almost
//! nothing (the slope is then zero: the lead is the fast average alone,
//! below the held base). Chosen over a least-squares fit of the recent rate
//! and a Holt trend by replaying synthetic rushes, steady streams and the
//! demand bench's curve against each (the unit tests below keep the
//! figures): the two averages bought the most warm handouts in a rush per
//! pool-second spent elsewhere.

use std::time::Duration;

use tokio::time::Instant;

/// Time constant of the handout-rate average: recent enough for a rush,
/// smooth enough not to chase single clicks.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// Time constant of the fast average, which tells a rise from a level.
const FAST_WINDOW: Duration = Duration::from_millis(2500);
/// The time to ready assumed before the first start was measured.
pub const FIRST_GUESS: Duration = Duration::from_secs(2);

/// The smallest `k` with `P(N ≤ k) ≥ share`, `N ~ Poisson(mean)`, at most
/// `cap`.
pub fn poisson_quantile(mean: f64, share: f64, cap: u32) -> u32 {
    if mean <= 0.0 || !mean.is_finite() {
        return 0;
    }
    let share = share.clamp(0.0, 1.0 - 1e-12);
    let mut term = (-mean).exp();
    if term == 0.0 {
        // Past what f64 holds: the normal approximation is exact enough.
        let z = 4.0;
        return ((mean + z * mean.sqrt()).ceil() as u64).min(u64::from(cap)) as u32;
    }
    let mut cdf = term;
    let mut k = 0u32;
    while cdf < share && k < cap {
        k += 1;
        term *= mean / f64::from(k);
        cdf += term;
    }
    k
}

/// The reconciler's view of one pool's demand (owned by its task: no locks).
#[derive(Debug)]
pub struct Demand {
    /// Handouts per second, averaged over [`RATE_WINDOW`].
    rate: f64,
    /// The same over [`FAST_WINDOW`].
    fast: f64,
    last_count: u64,
    last_at: Instant,
    /// The base target, held through the cool-down.
    target: u32,
    raised_at: Instant,
    /// The lead target, held for one time to ready.
    lead: u32,
    lead_until: Instant,
    /// Off only in tests, as the control: the base alone.
    follow_rises: bool,
}

impl Demand {
    pub fn new(handouts: u64, now: Instant, min: u32) -> Demand {
        Demand {
            rate: 0.0,
            fast: 0.0,
            last_count: handouts,
            last_at: now,
            target: min,
            raised_at: now,
            lead: 0,
            lead_until: now,
            follow_rises: true,
        }
    }

    /// Takes in the handout count at `now` and returns the pool size to aim
    /// at, between `min` and `max`.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        handouts: u64,
        now: Instant,
        ready: Duration,
        warm_target: f64,
        cooldown: Duration,
        min: u32,
        max: u32,
    ) -> u32 {
        let dt = now.saturating_duration_since(self.last_at).as_secs_f64();
        if dt > 0.0 {
            let arrived = handouts.saturating_sub(self.last_count) as f64;
            let smooth = |avg: &mut f64, window: Duration| {
                let alpha = 1.0 - (-dt / window.as_secs_f64()).exp();
                *avg += alpha * (arrived / dt - *avg);
            };
            smooth(&mut self.rate, RATE_WINDOW);
            smooth(&mut self.fast, FAST_WINDOW);
            self.last_count = handouts;
            self.last_at = now;
        }
        let t = ready.as_secs_f64();
        let needed = poisson_quantile(t * self.rate, warm_target, max).clamp(min, max);
        if needed >= self.target {
            self.target = needed;
            self.raised_at = now;
        } else if now.saturating_duration_since(self.raised_at) >= cooldown {
            self.target = needed;
        }
        self.target = self.target.clamp(min, max);
        if self.follow_rises {
            let lead = poisson_quantile(self.ahead(t), warm_target, max);
            if lead >= self.lead || now >= self.lead_until {
                self.lead = lead;
                self.lead_until = now + ready;
            }
        }
        self.target.max(self.lead).clamp(min, max)
    }

    #[cfg(test)]
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The rate's rise per second, from the gap between the two averages
    /// (each trails a steady rise by its window's worth of it); 0 when not
    /// rising.
    fn slope(&self) -> f64 {
        (self.fast - self.rate).max(0.0) / (RATE_WINDOW - FAST_WINDOW).as_secs_f64()
    }

    /// The handouts expected over the next `t` seconds, the rate's rise
    /// carried on.
    fn ahead(&self, t: f64) -> f64 {
        let slope = self.slope();
        let now = self.fast + slope * FAST_WINDOW.as_secs_f64();
        t * now + slope * t * t / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quantile_covers_the_share() {
        assert_eq!(poisson_quantile(0.0, 0.99, 100), 0);
        // Mean 1: P(N ≤ 3) = 0.981, P(N ≤ 4) = 0.996.
        assert_eq!(poisson_quantile(1.0, 0.99, 100), 4);
        assert_eq!(poisson_quantile(1.0, 0.9, 100), 2);
        // Mean 20 at 99%: 31.
        assert_eq!(poisson_quantile(20.0, 0.99, 100), 31);
        assert_eq!(poisson_quantile(20.0, 0.99, 10), 10, "capped at max");
        assert!(poisson_quantile(1000.0, 0.99, 10_000) >= 1000);
    }

    use rand::{Rng, SeedableRng};

    const TICK: Duration = Duration::from_millis(100);
    const READY: Duration = Duration::from_secs(2);
    const COOL: Duration = Duration::from_secs(10);

    /// Poisson arrivals per [`TICK`] for a rate (per second) given at each
    /// tick's start, from a fixed seed.
    fn arrivals(rates: &[f64], seed: u64) -> Vec<u64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        rates
            .iter()
            .map(|r| {
                let mean = r * TICK.as_secs_f64();
                // Knuth: count uniform draws until their product drops below e^-mean.
                let (limit, mut product, mut k) = ((-mean).exp(), 1.0, 0);
                loop {
                    product *= rng.gen::<f64>();
                    if product < limit {
                        break k;
                    }
                    k += 1;
                }
            })
            .collect()
    }

    /// The target at each tick for these arrivals (`minPool` 2, `maxPool`
    /// 500, `warm_target` 0.99), with or without following rises.
    fn targets(per_tick: &[u64], follow_rises: bool) -> Vec<u32> {
        let t0 = Instant::now();
        let mut d = Demand::new(0, t0, 2);
        d.follow_rises = follow_rises;
        let mut count = 0;
        per_tick
            .iter()
            .enumerate()
            .map(|(i, n)| {
                count += n;
                d.update(count, t0 + TICK * (i as u32 + 1), READY, 0.99, COOL, 2, 500)
            })
            .collect()
    }

    /// A pool run by these targets: at each tick the tick's readers take
    /// warm binders while there are any, then starts are begun up to the
    /// target (available + starting), each ready [`READY`] later. Returns
    /// the share served warm and the pool-binder-ticks (available +
    /// starting, summed).
    fn replay(per_tick: &[u64], targets: &[u32]) -> (f64, u64) {
        let ahead = (READY.as_millis() / TICK.as_millis()) as usize;
        let (mut available, mut warm, mut total, mut cost) = (2u64, 0u64, 0u64, 0u64);
        let mut starting = std::collections::VecDeque::new();
        for (i, (&n, &target)) in per_tick.iter().zip(targets).enumerate() {
            while starting.front().is_some_and(|&at| at <= i) {
                starting.pop_front();
                available += 1;
            }
            let taken = n.min(available);
            available -= taken;
            warm += taken;
            total += n;
            while available + (starting.len() as u64) < u64::from(target) {
                starting.push_back(i + ahead);
            }
            cost += available + starting.len() as u64;
        }
        (warm as f64 / total.max(1) as f64, cost)
    }

    #[test]
    fn a_rush_that_speeds_up_is_served_warm_where_the_slow_average_trails() {
        // 15 s, the rate rising steadily to 12 a second (90 readers, faster
        // and faster), then 3 s of quiet.
        let rates: Vec<f64> = (0..180)
            .map(|i| {
                let t = i as f64 * TICK.as_secs_f64();
                if t < 15.0 {
                    12.0 * t / 15.0
                } else {
                    0.0
                }
            })
            .collect();
        for seed in 0..8 {
            let per_tick = arrivals(&rates, seed);
            let (led, _) = replay(&per_tick, &targets(&per_tick, true));
            let (trailed, _) = replay(&per_tick, &targets(&per_tick, false));
            eprintln!("seed {seed}: rush warm {led:.3} (slow average alone {trailed:.3})");
            assert!(led >= 0.9, "seed {seed}: {led:.3} served warm");
            assert!(
                trailed < led - 0.08,
                "seed {seed}: the control served {trailed:.3}, about as many as {led:.3}"
            );
        }
    }

    #[test]
    fn a_steady_stream_costs_about_what_the_slow_average_does() {
        let rates = vec![2.5; 600];
        for seed in 0..8 {
            let per_tick = arrivals(&rates, seed);
            let (warm, cost) = replay(&per_tick, &targets(&per_tick, true));
            let (_, before) = replay(&per_tick, &targets(&per_tick, false));
            let ratio = cost as f64 / before as f64;
            eprintln!("seed {seed}: steady warm {warm:.3}, cost {ratio:.3}x");
            assert!(ratio <= 1.3, "seed {seed}: {ratio:.2}x the pool-seconds");
        }
    }

    #[test]
    fn a_falling_rate_costs_no_more_than_the_base_alone() {
        // 10 a second for 10 s, then down to none over 20 s.
        let rates: Vec<f64> = (0..300)
            .map(|i| {
                if i < 100 {
                    10.0
                } else {
                    10.0 * (1.0 - (i - 100) as f64 / 200.0)
                }
            })
            .collect();
        for seed in 0..8 {
            let per_tick = arrivals(&rates, seed);
            let (with, without) = (targets(&per_tick, true), targets(&per_tick, false));
            // The fall, once the lead of the first seconds has lapsed.
            let fall = |t: &[u32]| t[130..].iter().map(|&k| u64::from(k)).sum::<u64>() as f64;
            let ratio = fall(&with) / fall(&without);
            eprintln!("seed {seed}: fall cost {ratio:.3}x");
            assert!(ratio <= 1.08, "seed {seed}: the fall cost {ratio:.3}x");
        }
    }

    #[test]
    fn a_spike_raises_the_target_briefly_and_the_cool_down_lowers_it() {
        let mut per_tick = vec![0u64; 300];
        per_tick[50] = 20;
        let with = targets(&per_tick, true);
        let without = targets(&per_tick, false);
        assert!(with[50] > without[50], "the spike raised no lead");
        // The lead lapses (held one time to ready, its averages decaying):
        // five seconds on, only the held base is left.
        assert_eq!(with[100..], without[100..], "the lead outlived the spike");
        assert_eq!(
            *with.last().unwrap(),
            2,
            "not back to minPool after the cool-down"
        );
    }

    #[test]
    fn a_rush_raises_the_target_at_once_and_the_cool_down_lowers_it() {
        let t0 = Instant::now();
        let ready = Duration::from_secs(2);
        let cool = Duration::from_secs(30);
        let mut d = Demand::new(0, t0, 2);
        // Quiet: minPool.
        assert_eq!(
            d.update(0, t0 + Duration::from_secs(1), ready, 0.99, cool, 2, 50),
            2
        );
        // 10 handouts a second for 10 s: well above minPool.
        let mut n = 0;
        let mut t = t0 + Duration::from_secs(1);
        let mut peak = 0;
        for _ in 0..10 {
            n += 10;
            t += Duration::from_secs(1);
            peak = d.update(n, t, ready, 0.99, cool, 2, 50);
        }
        assert!(peak > 10, "{peak} at {} handouts/s", d.rate());
        // Quiet again: the base held through the cool-down (the lead is
        // gone), then back to minPool.
        let held = d.update(n, t + Duration::from_secs(10), ready, 0.99, cool, 2, 50);
        assert!(held > 10 && held <= peak, "{held} of {peak}");
        let later = d.update(n, t + Duration::from_secs(120), ready, 0.99, cool, 2, 50);
        assert_eq!(later, 2);
    }
}
