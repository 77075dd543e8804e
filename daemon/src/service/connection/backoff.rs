//! Reconnection delays for the connection driver: the [`BackoffConfig`] each connection is
//! given and the [`Backoff`] state machine ("full jitter" exponential backoff whose delays
//! start over only after a stable connection), fed with explicit times and unit-tested
//! without I/O. Its jitter comes from a small xorshift generator seeded by [`clock_seed`].

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How reconnection delays grow and when they start over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The shortest delay before reconnecting.
    pub min: Duration,
    /// The longest delay before reconnecting.
    pub max: Duration,
    /// How long a connection must stay up before the delays start over from `min` (and
    /// before its end no longer counts as a sign of a client id taken over).
    pub stable_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            min: Duration::from_millis(500),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
        }
    }
}

/// Reconnection delays: "full jitter" exponential backoff, each delay drawn uniformly
/// between `min` and `min * 2^failures` (capped at `max`). The failure count starts over
/// only when a connection stayed up for `stable_after`: a broker that accepts and then
/// drops us at once (a client id taken over, a flaky broker) still sees the delays grow.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    /// Failures since the last stable connection.
    failures: u32,
    /// When the current connection was accepted (None while disconnected).
    connected_at: Option<Instant>,
    rng: XorShift,
}

impl Backoff {
    /// A backoff whose jitter comes from `seed` (use [`clock_seed`] in production, a fixed
    /// value in tests).
    pub fn new(config: BackoffConfig, seed: u64) -> Backoff {
        Backoff {
            config,
            failures: 0,
            connected_at: None,
            rng: XorShift::new(seed),
        }
    }

    /// The broker accepted the connection at `now`.
    pub fn on_connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The connection (or the attempt to make one) failed at `now`: the delay to wait
    /// before the next attempt.
    pub fn on_failure(&mut self, now: Instant) -> Duration {
        if let Some(at) = self.connected_at.take()
            && now.saturating_duration_since(at) >= self.config.stable_after
        {
            self.failures = 0;
        }
        let min = self.config.min;
        let max = self.config.max.max(min);
        // 2^20 * min is far past any sensible max: stop doubling there (no overflow).
        let ceiling = min.saturating_mul(1u32 << self.failures.min(20)).min(max);
        self.failures = self.failures.saturating_add(1);
        let spread = ceiling.saturating_sub(min);
        let spread_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
        let jitter_ms = if spread_ms == 0 {
            0
        } else {
            self.rng.next() % (spread_ms + 1)
        };
        min + Duration::from_millis(jitter_ms)
    }
}

/// A tiny xorshift64 generator: jitter only needs to differ between boards, not to be
/// unpredictable, and this keeps the crate free of a random-number dependency.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // Zero is xorshift's one fixed point.
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// A seed from the clock's nanoseconds and the process id, so boards (and daemons)
/// restarting together do not draw the same delays.
pub fn clock_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Only the low bits matter: truncation is the point.
    (nanos as u64) ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn config() -> BackoffConfig {
        BackoffConfig {
            min: MS(500),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn delays_stay_within_min_and_the_doubling_ceiling_and_cap_at_max() {
        let mut b = Backoff::new(config(), 42);
        let t = Instant::now();
        let mut seen_above_half = 0;
        for failure in 0..40u32 {
            let d = b.on_failure(t);
            let ceiling = MS(500)
                .saturating_mul(1 << failure.min(20))
                .min(Duration::from_secs(30));
            assert!(d >= MS(500) && d <= ceiling, "failure {failure}: {d:?}");
            if failure >= 7 && d > Duration::from_secs(15) {
                seen_above_half += 1;
            }
        }
        assert_eq!(Backoff::new(config(), 42).on_failure(t), MS(500));
        // Capped at 30 s, yet drawn across the range, not pinned to the cap.
        assert!(
            seen_above_half > 5 && seen_above_half < 30,
            "{seen_above_half}"
        );
    }

    #[test]
    fn delays_grow_on_average() {
        let t = Instant::now();
        let mut early = Duration::ZERO;
        let mut late = Duration::ZERO;
        for seed in 1..200u64 {
            let mut b = Backoff::new(config(), seed);
            let d: Vec<Duration> = (0..6).map(|_| b.on_failure(t)).collect();
            early += d[1];
            late += d[5];
        }
        // Means: ~0.75 s after the 2nd failure, ~8.25 s after the 6th.
        assert!(late > early * 5, "{early:?} then {late:?}");
    }

    #[test]
    fn the_same_seed_draws_the_same_delays_and_another_seed_others() {
        let t = Instant::now();
        let draw = |seed| {
            let mut b = Backoff::new(config(), seed);
            (0..8).map(|_| b.on_failure(t)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert_eq!(draw(0).len(), 8, "seed 0 still works");
        assert!(draw(0)[3] > Duration::ZERO);
    }

    #[test]
    fn a_connection_dropped_soon_after_connack_keeps_the_delays_growing() {
        let mut b = Backoff::new(config(), 3);
        let mut t = Instant::now();
        let mut max_seen = Duration::ZERO;
        for _ in 0..12 {
            b.on_connected(t);
            t += Duration::from_secs(5); // taken over after 5 s, every time
            let d = b.on_failure(t);
            max_seen = max_seen.max(d);
            t += d;
        }
        assert!(max_seen > Duration::from_secs(4), "{max_seen:?}");
        assert_eq!(b.failures, 12);
    }

    #[test]
    fn the_delays_start_over_only_after_a_stable_connection() {
        let mut b = Backoff::new(config(), 9);
        let mut t = Instant::now();
        for _ in 0..8 {
            t += b.on_failure(t);
        }
        b.on_connected(t);
        t += Duration::from_secs(29);
        b.on_failure(t);
        assert_eq!(b.failures, 9, "29 s is not stable yet");
        b.on_connected(t);
        t += Duration::from_secs(30);
        assert_eq!(b.on_failure(t), MS(500), "stable for 30 s: from the start");
        assert_eq!(b.failures, 1);
        // A failed attempt (no CONNACK) never resets.
        t += Duration::from_secs(600);
        b.on_failure(t);
        assert_eq!(b.failures, 2);
    }

    #[test]
    fn stable_after_is_configurable() {
        let mut b = Backoff::new(
            BackoffConfig {
                stable_after: Duration::from_secs(1),
                ..config()
            },
            5,
        );
        let t = Instant::now();
        for _ in 0..5 {
            b.on_failure(t);
        }
        b.on_connected(t);
        assert_eq!(b.on_failure(t + Duration::from_secs(1)), MS(500));
    }

    #[test]
    fn min_above_max_waits_min() {
        let mut b = Backoff::new(
            BackoffConfig {
                min: Duration::from_secs(5),
                max: Duration::from_secs(1),
                stable_after: Duration::from_secs(30),
            },
            1,
        );
        let t = Instant::now();
        for _ in 0..5 {
            assert_eq!(b.on_failure(t), Duration::from_secs(5));
        }
    }
}
