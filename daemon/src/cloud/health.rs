//! Which endpoints may be tried now: LiteLLM-style cooldowns and a circuit breaker.
//!
//! - Cooldown, per endpoint: `failures_to_cool` failures (429, 5xx, timeouts, broken
//!   streams...) within `window` take the endpoint out of rotation for `cooldown`; so does a
//!   `Retry-After` longer than the client is willing to wait. When the cooldown ends the
//!   endpoint starts again with a clean slate.
//! - Circuit, per base URL: 401/403 (token refused) and 402 (credits exhausted) are about
//!   the account at that router, not one model, so every endpoint on that base URL is
//!   skipped until the circuit closes; retrying sooner would only burn more refusals.
//!
//! Reasons are taken only as [`Excerpt`]s (server text already through the redactor), so
//! no reason this module gives out can hold the token.
//!
//! Time is passed in, so the state machine is tested without sleeping.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::redact::Excerpt;

/// Whether an endpoint may be tried now, and if not, which of the two blocks it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EndpointState {
    /// It may be tried.
    #[default]
    Up,
    /// It failed too often (or sent a long `Retry-After`) and is out of rotation for a
    /// while.
    CoolingDown,
    /// Its base URL's circuit is open (token refused, credits exhausted): every endpoint
    /// there is skipped.
    CircuitOpen,
}

impl EndpointState {
    /// `up`, `cooling_down`, `circuit_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Up => "up",
            EndpointState::CoolingDown => "cooling_down",
            EndpointState::CircuitOpen => "circuit_open",
        }
    }

    /// Every state, in declaration order.
    pub const ALL: [EndpointState; 3] = [
        EndpointState::Up,
        EndpointState::CoolingDown,
        EndpointState::CircuitOpen,
    ];
}

/// When endpoints cool down.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HealthPolicy {
    pub(crate) failures_to_cool: u32,
    pub(crate) window: Duration,
    pub(crate) cooldown: Duration,
}

#[derive(Clone, Debug)]
struct Block {
    until: Instant,
    reason: String,
}

#[derive(Debug, Default)]
struct EndpointHealth {
    /// Times of recent failures, oldest first, at most `failures_to_cool` of them.
    failures: VecDeque<Instant>,
    cooling: Option<Block>,
}

/// The health of every endpoint of one client.
#[derive(Debug)]
pub(crate) struct Health {
    policy: HealthPolicy,
    endpoints: Vec<EndpointHealth>,
    labels: Vec<String>,
    /// Per endpoint, the index of its circuit (one per distinct base URL).
    circuit_of: Vec<usize>,
    circuit_bases: Vec<String>,
    circuits: Vec<Option<Block>>,
}

/// Whole seconds left, rounded up, for messages ("back in 0 s" would read as a lie).
fn secs_left(until: Instant, now: Instant) -> u64 {
    let d = until.saturating_duration_since(now);
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Health {
    /// `endpoints`: (label, base URL) of each endpoint, in order.
    pub(crate) fn new(policy: HealthPolicy, endpoints: &[(String, String)]) -> Health {
        let mut circuit_bases: Vec<String> = Vec::new();
        let mut circuit_of = Vec::with_capacity(endpoints.len());
        for (_, base) in endpoints {
            let i = match circuit_bases.iter().position(|b| b == base) {
                Some(i) => i,
                None => {
                    circuit_bases.push(base.clone());
                    circuit_bases.len() - 1
                }
            };
            circuit_of.push(i);
        }
        Health {
            policy,
            endpoints: endpoints
                .iter()
                .map(|_| EndpointHealth::default())
                .collect(),
            labels: endpoints.iter().map(|(l, _)| l.clone()).collect(),
            circuits: vec![None; circuit_bases.len()],
            circuit_of,
            circuit_bases,
        }
    }

    /// Why endpoint `i` must not be tried now, or `None` if it may. Expired cooldowns and
    /// circuits are cleared here.
    pub(crate) fn blocked(&mut self, i: usize, now: Instant) -> Option<String> {
        let c = self.circuit_of[i];
        if self.circuits[c].as_ref().is_some_and(|b| b.until <= now) {
            self.circuits[c] = None;
        }
        let e = &mut self.endpoints[i];
        if e.cooling.as_ref().is_some_and(|b| b.until <= now) {
            e.cooling = None;
            e.failures.clear();
        }
        if let Some(b) = &self.circuits[c] {
            return Some(format!(
                "circuit open for {}: {}; closes in {} s",
                self.circuit_bases[c],
                b.reason,
                secs_left(b.until, now)
            ));
        }
        self.endpoints[i].cooling.as_ref().map(|b| {
            format!(
                "{} cooling down: {}; back in {} s",
                self.labels[i],
                b.reason,
                secs_left(b.until, now)
            )
        })
    }

    /// Counts a failure of endpoint `i`; returns true if it has just started cooling down.
    pub(crate) fn record_failure(&mut self, i: usize, now: Instant, what: &Excerpt) -> bool {
        let policy = self.policy;
        let e = &mut self.endpoints[i];
        while e
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= policy.window)
        {
            e.failures.pop_front();
        }
        e.failures.push_back(now);
        if e.failures.len() < policy.failures_to_cool as usize {
            return false;
        }
        e.failures.clear();
        let reason = format!(
            "{} failures within {} s, the last: {what}",
            policy.failures_to_cool,
            policy.window.as_secs()
        );
        Self::extend(&mut e.cooling, now + policy.cooldown, reason);
        true
    }

    /// Takes endpoint `i` out of rotation for `d` (a long `Retry-After`).
    pub(crate) fn cool_for(&mut self, i: usize, now: Instant, d: Duration, reason: &Excerpt) {
        Self::extend(&mut self.endpoints[i].cooling, now + d, reason.to_string());
    }

    /// A success: the endpoint's failure history starts over.
    pub(crate) fn record_success(&mut self, i: usize) {
        self.endpoints[i].failures.clear();
    }

    /// Opens the circuit of endpoint `i`'s base URL for `d`.
    pub(crate) fn open_circuit(&mut self, i: usize, now: Instant, d: Duration, reason: &Excerpt) {
        let c = self.circuit_of[i];
        Self::extend(&mut self.circuits[c], now + d, reason.to_string());
    }

    /// Ok if some endpoint may be tried now; otherwise every endpoint's reason.
    pub(crate) fn availability(&mut self, now: Instant) -> Result<(), String> {
        let mut reasons: Vec<String> = Vec::new();
        for i in 0..self.endpoints.len() {
            match self.blocked(i, now) {
                None => return Ok(()),
                Some(r) => {
                    if !reasons.contains(&r) {
                        reasons.push(r);
                    }
                }
            }
        }
        Err(reasons.join("; "))
    }

    /// Each endpoint's state, with the reason for being skipped when it is.
    pub(crate) fn status(&mut self, now: Instant) -> Vec<(EndpointState, Option<String>)> {
        (0..self.endpoints.len())
            .map(|i| {
                // Clears what has expired first.
                let why = self.blocked(i, now);
                let state = if self.circuits[self.circuit_of[i]].is_some() {
                    EndpointState::CircuitOpen
                } else if self.endpoints[i].cooling.is_some() {
                    EndpointState::CoolingDown
                } else {
                    EndpointState::Up
                };
                (state, why)
            })
            .collect()
    }

    /// Blocks until `until` unless already blocked for longer (a short block must not cut
    /// a long one short).
    fn extend(slot: &mut Option<Block>, until: Instant, reason: String) {
        match slot {
            Some(b) if b.until >= until => {}
            _ => *slot = Some(Block { until, reason }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::redact::Redactor;

    fn ex(text: &str) -> Excerpt {
        Redactor::new(None).excerpt(text, 100)
    }

    const S: Duration = Duration::from_secs(1);

    fn health() -> Health {
        Health::new(
            HealthPolicy {
                failures_to_cool: 3,
                window: 60 * S,
                cooldown: 120 * S,
            },
            &[
                ("a".into(), "https://r/v1".into()),
                ("b".into(), "https://r/v1".into()),
                ("c".into(), "http://lan/v1".into()),
            ],
        )
    }

    #[test]
    fn failures_within_the_window_cool_an_endpoint_until_the_cooldown_ends() {
        let mut h = health();
        let t0 = Instant::now();
        assert!(!h.record_failure(0, t0, &ex("HTTP 503")));
        assert!(!h.record_failure(0, t0 + 10 * S, &ex("HTTP 503")));
        assert_eq!(h.blocked(0, t0 + 10 * S), None);
        assert!(h.record_failure(0, t0 + 20 * S, &ex("HTTP 500")));
        let why = h.blocked(0, t0 + 21 * S).unwrap();
        assert_eq!(
            why,
            "a cooling down: 3 failures within 60 s, the last: HTTP 500; back in 119 s"
        );
        // Other endpoints are unaffected, so the client is still available.
        assert_eq!(h.blocked(1, t0 + 21 * S), None);
        assert!(h.availability(t0 + 21 * S).is_ok());
        assert!(h.blocked(0, t0 + 139 * S).is_some());
        assert_eq!(h.blocked(0, t0 + 140 * S), None);
        // A clean slate after the cooldown: one more failure does not cool it again.
        assert!(!h.record_failure(0, t0 + 141 * S, &ex("HTTP 503")));
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_cool() {
        let mut h = health();
        let t0 = Instant::now();
        for k in 0..10u32 {
            assert!(!h.record_failure(2, t0 + k * 31 * S, &ex("timeout")));
        }
        assert_eq!(h.blocked(2, t0 + 400 * S), None);
    }

    #[test]
    fn success_resets_the_count() {
        let mut h = health();
        let t0 = Instant::now();
        h.record_failure(0, t0, &ex("x"));
        h.record_failure(0, t0, &ex("x"));
        h.record_success(0);
        assert!(!h.record_failure(0, t0, &ex("x")));
        assert!(!h.record_failure(0, t0, &ex("x")));
        assert!(h.record_failure(0, t0, &ex("x")));
    }

    #[test]
    fn circuit_covers_every_endpoint_of_the_base_url() {
        let mut h = health();
        let t0 = Instant::now();
        h.open_circuit(1, t0, 600 * S, &ex("credits exhausted (HTTP 402)"));
        let why = h.blocked(0, t0).unwrap();
        assert_eq!(
            why,
            "circuit open for https://r/v1: credits exhausted (HTTP 402); closes in 600 s"
        );
        assert!(h.blocked(1, t0).is_some());
        assert_eq!(h.blocked(2, t0), None);
        assert!(h.availability(t0).is_ok());
        // With the LAN endpoint cooling too, nothing is left; the reason lists both causes.
        h.cool_for(2, t0, 30 * S, &ex("Retry-After 30 s"));
        let why = h.availability(t0 + S).unwrap_err();
        assert!(why.contains("HTTP 402"), "{why}");
        assert!(why.contains("Retry-After 30 s"), "{why}");
        let states: Vec<EndpointState> = h.status(t0 + S).into_iter().map(|s| s.0).collect();
        assert_eq!(
            states,
            [
                EndpointState::CircuitOpen,
                EndpointState::CircuitOpen,
                EndpointState::CoolingDown
            ]
        );
        assert!(h.status(t0 + S).iter().all(|(_, why)| why.is_some()));
        // The LAN endpoint returns first, then the router.
        assert!(h.availability(t0 + 30 * S).is_ok());
        assert!(h.blocked(0, t0 + 599 * S).is_some());
        assert_eq!(h.blocked(0, t0 + 600 * S), None);
        assert_eq!(
            h.status(t0 + 600 * S),
            [
                (EndpointState::Up, None),
                (EndpointState::Up, None),
                (EndpointState::Up, None)
            ]
        );
    }

    #[test]
    fn a_shorter_block_does_not_shorten_a_longer_one() {
        let mut h = health();
        let t0 = Instant::now();
        h.open_circuit(0, t0, 3600 * S, &ex("402"));
        h.open_circuit(0, t0, 10 * S, &ex("401"));
        assert!(h.blocked(0, t0 + 20 * S).unwrap().contains("402"));
        h.cool_for(2, t0, 100 * S, &ex("long"));
        h.cool_for(2, t0, 5 * S, &ex("short"));
        assert!(h.blocked(2, t0 + 50 * S).unwrap().contains("long"));
    }
}
