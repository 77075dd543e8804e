//! One MQTT connection, driven: the loop around rumqttc's [`EventLoop`] shared by the
//! daemon's connections (the request front end and the cloud-broker upstream). It owns
//! reconnecting (exponential backoff with jitter, reset only once a connection has proved
//! stable), subscribing and announcing `online` after every CONNACK, spotting a client id
//! that another client keeps taking over, the connection's health for status checks, and
//! the orderly end after a stop signal.
//!
//! Built like rumqttc itself: the decisions live in small pure state machines ([`Backoff`],
//! [`TakeoverWatch`]) fed with explicit times, unit-tested without I/O; [`drive`] only
//! feeds them events and carries out what they decide.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, Filter, Packet, PubAckReason, Publish, Subscribe,
};
use rumqttc::v5::{ConnectionError, Event, EventLoop, Request, StateError};
use tokio::sync::{mpsc, watch};

use super::outbox::DeliveryTracking;

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

/// How a connection ended, as far as a takeover goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The broker said another connection with our client id took the session over
    /// (MQTT 5 DISCONNECT, reason 0x8E).
    TakenOver,
    /// It was dropped before it had been up for `stable_after`.
    ShortLived,
    /// Anything else: an attempt that failed before CONNACK, or a drop of a stable
    /// connection.
    Other,
}

/// The first sign of an episode of takeovers worth an error in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakeoverAlert {
    /// Signs within the window, the latest included.
    pub signs: usize,
    /// Whether the broker said so itself (0x8E) at least once, or we only infer it.
    pub confirmed: bool,
}

/// Spots a client id that another client keeps taking over: counts takeover disconnects
/// and short-lived connections within a window and raises one alert per episode. An
/// episode ends with a connection that stays up for `stable_after`, or a whole window
/// without a sign.
#[derive(Debug, Clone)]
pub struct TakeoverWatch {
    window: Duration,
    threshold: usize,
    /// Times of the latest signs (at most `threshold`), with whether each was a 0x8E.
    signs: VecDeque<(Instant, bool)>,
    alerted: bool,
}

impl TakeoverWatch {
    /// Alerts once `threshold` signs (at least 1) fall within `window`.
    pub fn new(window: Duration, threshold: usize) -> TakeoverWatch {
        TakeoverWatch {
            window,
            threshold: threshold.max(1),
            signs: VecDeque::new(),
            alerted: false,
        }
    }

    /// A connection ended at `now`; returns the alert when this is the episode's first.
    pub fn on_ending(&mut self, now: Instant, ending: Ending) -> Option<TakeoverAlert> {
        self.forget_before(now);
        if self.signs.is_empty() {
            // A window went by without a sign: whatever happened before is over.
            self.alerted = false;
        }
        let taken_over = match ending {
            Ending::TakenOver => true,
            Ending::ShortLived => false,
            Ending::Other => return None,
        };
        if self.signs.len() == self.threshold {
            self.signs.pop_front();
        }
        self.signs.push_back((now, taken_over));
        if self.alerted || self.signs.len() < self.threshold {
            return None;
        }
        self.alerted = true;
        Some(TakeoverAlert {
            signs: self.signs.len(),
            confirmed: self.signs.iter().any(|&(_, t)| t),
        })
    }

    /// The connection proved stable: the episode, if any, is over.
    pub fn on_stable(&mut self) {
        self.signs.clear();
        self.alerted = false;
    }

    fn forget_before(&mut self, now: Instant) {
        while let Some(&(at, _)) = self.signs.front() {
            if now.saturating_duration_since(at) > self.window {
                self.signs.pop_front();
            } else {
                break;
            }
        }
    }
}

/// What one connection is and does after each CONNACK.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Names the peer in logs and errors after "connected to", e.g. `127.0.0.1:1883` (the
    /// request broker: the front end's old wording) or `the cloud broker 127.0.0.1:1883`.
    pub label: String,
    /// Our client id (named in the takeover error).
    pub client_id: String,
    /// Subscribed after every CONNACK, whatever `session_present` says: subscribing is
    /// idempotent, and a resumed session may have lost them (a clean shutdown
    /// unsubscribes but keeps the session).
    pub subscriptions: Vec<(String, QoS)>,
    /// A retained status publish (topic, payload) sent at QoS 1 after every CONNACK.
    pub online: Option<(String, Bytes)>,
    pub backoff: BackoffConfig,
}

/// What the driver reports to its owner.
// Nearly every event is a Publish: boxing it would cost an allocation per message to save
// space in the rare Connected.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ConnectionEvent {
    /// The broker accepted the connection (subscriptions and `online` are on their way).
    Connected { session_present: bool },
    /// An incoming message; with manual acks the receiver acknowledges it.
    Publish(Publish),
}

/// The connection's health, for status and health checks.
#[derive(Debug, Default)]
pub struct ConnectionState {
    connected: AtomicBool,
    connects: AtomicU64,
    last_error: Mutex<String>,
}

impl ConnectionState {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// How many times the broker accepted the connection.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::SeqCst)
    }

    /// Why the connection last failed (empty before any failure).
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_error(&self, e: String) {
        self.connected.store(false, Ordering::SeqCst);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = e;
    }
}

/// How many takeover signs within how long make an episode worth an error.
const TAKEOVER_WINDOW: Duration = Duration::from_secs(300);
const TAKEOVER_THRESHOLD: usize = 3;

/// Drives `eventloop` until stopped: reconnects with [`Backoff`]; after every CONNACK
/// subscribes to `cfg.subscriptions`, publishes `cfg.online`, marks `state` connected and
/// sends [`ConnectionEvent::Connected`]; forwards incoming publishes to `events` (with
/// nobody receiving, they stay unacknowledged under manual acks).
///
/// The subscriptions and `online` go straight into the event loop's own pending queue
/// rather than through an [`rumqttc::v5::AsyncClient`]: the client's channel is bounded,
/// and awaiting room in it from the one task that drains it would deadlock.
///
/// Once `stop` turns true (or its sender is gone), nothing is subscribed and nothing
/// reconnects: while connected it keeps polling, so that what is queued (final replies, a
/// retained `offline`) still goes out, until the owner's `disconnect()` has been sent or
/// the connection fails; while disconnected it returns at once. The owner must therefore
/// call `disconnect()` after stopping, and bound its wait for this task.
///
/// With `tracking`, every publish written, held back, acknowledged, requeued or dropped
/// with a session is reported to it (see [`super::outbox`]).
pub async fn drive(
    mut eventloop: EventLoop,
    cfg: ConnectionConfig,
    events: mpsc::UnboundedSender<ConnectionEvent>,
    state: Arc<ConnectionState>,
    mut stop: watch::Receiver<bool>,
    tracking: Option<Arc<dyn DeliveryTracking>>,
) {
    let mut backoff = Backoff::new(cfg.backoff, clock_seed());
    let mut takeovers = TakeoverWatch::new(TAKEOVER_WINDOW, TAKEOVER_THRESHOLD);
    let mut connected_at: Option<Instant> = None;
    let mut stopping = *stop.borrow();
    loop {
        let polled = tokio::select! {
            e = eventloop.poll() => e,
            _ = stop.wait_for(|s| *s), if !stopping => {
                // Stop asked (or the owner gone, which means the same).
                stopping = true;
                if connected_at.is_none() {
                    return;
                }
                continue;
            }
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                let now = Instant::now();
                connected_at = Some(now);
                backoff.on_connected(now);
                if let Some(t) = &tracking {
                    t.connected(ack.session_present);
                }
                if stopping {
                    // Connected while stopping: only to let the queue drain.
                    continue;
                }
                tracing::info!(
                    "connected to {} as {} (session {})",
                    cfg.label,
                    cfg.client_id,
                    if ack.session_present {
                        "resumed"
                    } else {
                        "new"
                    }
                );
                after_connack(&mut eventloop, &cfg, tracking.as_deref());
                state.connects.fetch_add(1, Ordering::SeqCst);
                state.connected.store(true, Ordering::SeqCst);
                let _ = events.send(ConnectionEvent::Connected {
                    session_present: ack.session_present,
                });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // A closed receiver means its owner is shutting down: leaving the message
                // unacknowledged lets the broker deliver it again after a restart.
                let _ = events.send(ConnectionEvent::Publish(p));
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                if let Some(t) = &tracking {
                    t.written(pkid);
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::AwaitAck(pkid))) => {
                if let Some(t) = &tracking {
                    t.collided(pkid);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(t) = &tracking {
                    let refusal = (!matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ))
                    .then(|| format!("{:?}", ack.reason));
                    t.acked(ack.pkid, refusal);
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                tracing::debug!("{}: disconnect sent", cfg.label);
                state.connected.store(false, Ordering::SeqCst);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(t) = &tracking {
                    t.connection_lost(first_time_publishes(&eventloop.pending));
                }
                let now = Instant::now();
                let lived = connected_at.take().map(|at| now.duration_since(at));
                let message = format!("MQTT connection to {} failed: {e}", cfg.label);
                state.set_error(message.clone());
                if stopping {
                    tracing::debug!("{message}; stopping, so not reconnecting");
                    return;
                }
                let ending = ending_of(&e, lived, cfg.backoff.stable_after);
                if lived.is_some_and(|l| l >= cfg.backoff.stable_after) {
                    takeovers.on_stable();
                }
                if let Some(alert) = takeovers.on_ending(now, ending) {
                    log_takeover(&cfg, alert);
                }
                let delay = backoff.on_failure(now);
                tracing::warn!("{message}; retrying in {delay:.1?}");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

/// Publishes in rumqttc's pending queue that were never written (no packet id yet):
/// requeued from its channel when a connection failed.
fn first_time_publishes(pending: &VecDeque<Request>) -> usize {
    pending
        .iter()
        .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0))
        .count()
}

/// Queues the subscriptions and the `online` announcement ahead of anything the owner
/// sends later.
fn after_connack(
    eventloop: &mut EventLoop,
    cfg: &ConnectionConfig,
    tracking: Option<&dyn DeliveryTracking>,
) {
    if !cfg.subscriptions.is_empty() {
        let filters = cfg
            .subscriptions
            .iter()
            .map(|(topic, qos)| Filter::new(topic.clone(), *qos));
        eventloop
            .pending
            .push_back(Request::Subscribe(Subscribe::new_many(filters, None)));
    }
    if let Some((topic, payload)) = &cfg.online {
        let mut p = Publish::new(topic.clone(), QoS::AtLeastOnce, payload.clone(), None);
        p.retain = true;
        if let Some(t) = tracking {
            t.injected(first_time_publishes(&eventloop.pending));
        }
        eventloop.pending.push_back(Request::Publish(p));
    }
}

/// Classifies a connection's end for [`TakeoverWatch`].
fn ending_of(e: &ConnectionError, lived: Option<Duration>, stable_after: Duration) -> Ending {
    if let ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. }) = e
        && *reason_code == DisconnectReasonCode::SessionTakenOver
    {
        return Ending::TakenOver;
    }
    match lived {
        Some(l) if l < stable_after => Ending::ShortLived,
        _ => Ending::Other,
    }
}

fn log_takeover(cfg: &ConnectionConfig, alert: TakeoverAlert) {
    let id = &cfg.client_id;
    if alert.confirmed {
        tracing::error!(
            "another client is using the client id {id}: {} keeps handing our session \
             to it ({} takeovers or dropped connections lately); give every board its own \
             mqtt.device (or mqtt.client_id)",
            cfg.label,
            alert.signs
        );
    } else {
        tracing::error!(
            "{} keeps dropping the connection soon after accepting it ({} times lately): \
             another client may be using the client id {id}; give every board its own \
             mqtt.device (or mqtt.client_id), or check the broker",
            cfg.label,
            alert.signs
        );
    }
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

    #[test]
    fn takeovers_alert_once_per_episode() {
        let mut w = TakeoverWatch::new(Duration::from_secs(300), 3);
        let mut t = Instant::now();
        assert_eq!(w.on_ending(t, Ending::TakenOver), None);
        t += Duration::from_secs(2);
        assert_eq!(w.on_ending(t, Ending::ShortLived), None);
        t += Duration::from_secs(2);
        assert_eq!(
            w.on_ending(t, Ending::TakenOver),
            Some(TakeoverAlert {
                signs: 3,
                confirmed: true
            })
        );
        for _ in 0..20 {
            t += Duration::from_secs(10);
            assert_eq!(w.on_ending(t, Ending::TakenOver), None, "not per reconnect");
        }
        // A stable connection ends the episode; the next one alerts again.
        w.on_stable();
        for _ in 0..2 {
            t += Duration::from_secs(1);
            assert_eq!(w.on_ending(t, Ending::TakenOver), None);
        }
        t += Duration::from_secs(1);
        assert!(w.on_ending(t, Ending::TakenOver).is_some());
    }

    #[test]
    fn short_lived_connections_alone_alert_unconfirmed() {
        let mut w = TakeoverWatch::new(Duration::from_secs(300), 3);
        let t = Instant::now();
        w.on_ending(t, Ending::ShortLived);
        w.on_ending(t + MS(500), Ending::ShortLived);
        assert_eq!(
            w.on_ending(t + MS(1500), Ending::ShortLived),
            Some(TakeoverAlert {
                signs: 3,
                confirmed: false
            })
        );
    }

    #[test]
    fn other_endings_and_signs_spread_beyond_the_window_do_not_alert() {
        let mut w = TakeoverWatch::new(Duration::from_secs(60), 3);
        let mut t = Instant::now();
        for _ in 0..10 {
            assert_eq!(w.on_ending(t, Ending::Other), None);
            t += Duration::from_secs(1);
        }
        for _ in 0..10 {
            assert_eq!(w.on_ending(t, Ending::TakenOver), None);
            t += Duration::from_secs(31); // two fit in the window, never three
        }
        assert!(w.signs.len() <= 3, "bounded");
    }

    #[test]
    fn a_quiet_window_ends_the_episode() {
        let mut w = TakeoverWatch::new(Duration::from_secs(60), 2);
        let t = Instant::now();
        w.on_ending(t, Ending::TakenOver);
        assert!(w.on_ending(t + MS(10), Ending::TakenOver).is_some());
        assert!(w.on_ending(t + MS(20), Ending::TakenOver).is_none());
        let later = t + Duration::from_secs(120);
        assert!(w.on_ending(later, Ending::TakenOver).is_none());
        assert!(w.on_ending(later + MS(10), Ending::TakenOver).is_some());
    }

    #[test]
    fn endings_are_classified_by_reason_and_lifetime() {
        let taken = ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code: DisconnectReasonCode::SessionTakenOver,
            reason_string: None,
        });
        let s = Duration::from_secs(30);
        assert_eq!(ending_of(&taken, None, s), Ending::TakenOver);
        let other = ConnectionError::MqttState(StateError::ConnectionAborted);
        assert_eq!(
            ending_of(&other, Some(Duration::from_secs(3)), s),
            Ending::ShortLived
        );
        assert_eq!(ending_of(&other, Some(s), s), Ending::Other);
        assert_eq!(ending_of(&other, None, s), Ending::Other);
    }
}
