//! Demand-sized pools: with `pool.warm_target` (the share of handouts to
//! serve warm), the reconciler sizes the warm pool itself between `minPool`
//! and `maxPool`.
//!
//! The rule: while a refill is under way (the binding's measured time to
//! ready, `T`), handouts keep arriving at the recent rate `λ`. Treating them
//! as a Poisson process, the warm pool needs the smallest `k` with
//! `P(N ≤ k) ≥ warm_target` for `N ~ Poisson(λ·T)`: then a refill started at
//! each handout lands before the pool runs dry, with that probability. The
//! target rises at once in a rush and falls back (towards `minPool`) only
//! after `pool.cooldown_seconds` without a rise, so a lull between two waves
//! of a class does not empty the pool. Surplus warm binders are stopped
//! then; handed-out ones never are.

use std::time::Duration;

use tokio::time::Instant;

/// Time constant of the handout-rate average: recent enough for a rush,
/// smooth enough not to chase single clicks.
const RATE_WINDOW: Duration = Duration::from_secs(5);
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
    last_count: u64,
    last_at: Instant,
    target: u32,
    raised_at: Instant,
}

impl Demand {
    pub fn new(handouts: u64, now: Instant, min: u32) -> Demand {
        Demand {
            rate: 0.0,
            last_count: handouts,
            last_at: now,
            target: min,
            raised_at: now,
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
            let alpha = 1.0 - (-dt / RATE_WINDOW.as_secs_f64()).exp();
            self.rate += alpha * (arrived / dt - self.rate);
            self.last_count = handouts;
            self.last_at = now;
        }
        let needed = poisson_quantile(self.rate * ready.as_secs_f64(), warm_target, max);
        let needed = needed.clamp(min, max);
        if needed >= self.target {
            self.target = needed;
            self.raised_at = now;
        } else if now.saturating_duration_since(self.raised_at) >= cooldown {
            self.target = needed;
        }
        self.target = self.target.clamp(min, max);
        self.target
    }

    pub fn rate(&self) -> f64 {
        self.rate
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
        // Quiet again: held through the cool-down, then back to minPool.
        let held = d.update(n, t + Duration::from_secs(10), ready, 0.99, cool, 2, 50);
        assert_eq!(held, peak);
        let later = d.update(n, t + Duration::from_secs(120), ready, 0.99, cool, 2, 50);
        assert_eq!(later, 2);
    }
}
