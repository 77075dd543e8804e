//! Takeover detection for the connection driver: [`ending_of`] classifies how a connection
//! ended ([`Ending`]), and [`TakeoverWatch`] counts the signs of another client using our
//! client id (the broker's "session taken over", connections dropped soon after CONNACK)
//! within a window and raises one [`TakeoverAlert`] per episode. Pure state fed with
//! explicit times, unit-tested without I/O.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
use rumqttc::v5::{ConnectionError, StateError};

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

/// Classifies a connection's end for [`TakeoverWatch`].
pub(super) fn ending_of(
    e: &ConnectionError,
    lived: Option<Duration>,
    stable_after: Duration,
) -> Ending {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

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
