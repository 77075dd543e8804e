//! One MQTT connection, driven: the loop around rumqttc's [`EventLoop`] shared by the
//! daemon's connections (the request front end and the cloud-broker upstream). It owns
//! reconnecting (exponential backoff with jitter, reset only once a connection has proved
//! stable), subscribing and announcing `online` after every CONNACK, spotting a client id
//! that another client keeps taking over, the connection's health for status checks, and
//! the orderly end after a stop signal.
//!
//! Built like rumqttc itself: the decisions live in small pure state machines fed with
//! explicit times and unit-tested without I/O, each in its own submodule: [`Backoff`] (in
//! `backoff`, the reconnection delays) and [`TakeoverWatch`] (in `takeover`, the client-id
//! takeover detection). This module holds the connection's configuration, events and
//! health, and [`drive`], which only feeds those machines events and carries out what they
//! decide.

mod backoff;
mod takeover;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PubAckReason, Publish, Subscribe};
use rumqttc::v5::{Event, EventLoop, Request};
use tokio::sync::{mpsc, watch};

pub use backoff::{Backoff, BackoffConfig, clock_seed};
use takeover::ending_of;
pub use takeover::{Ending, TakeoverAlert, TakeoverWatch};

use super::outbox::DeliveryTracking;

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
