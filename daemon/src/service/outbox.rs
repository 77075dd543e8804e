//! Knowing when the broker has a reply. rumqttc's `publish` only queues a message; whether
//! the broker took it shows later, as a PUBACK for a packet id rumqttc chose. The
//! [`Outbox`] is the one way the front end publishes: it notes, in hand-over order, what
//! each message is (a tag, for the finals that must not be lost), and the connection
//! driver reports through [`DeliveryTracking`] what rumqttc wrote and what the broker
//! acknowledged. Each tagged message ends [`Settled`]: acknowledged, refused by the broker,
//! or lost with a session the broker forgot (then the owner sends it again).
//!
//! The bookkeeping is a pure state machine, [`AckTracker`], tested without I/O. It rests on
//! three facts about rumqttc's event loop (0.25, v5): it takes requests from one FIFO
//! channel and writes them in order, yielding `Outgoing::Publish(pkid)` for each (pkid 0
//! at QoS 0); when a connection fails it moves the unacknowledged publishes (their packet
//! ids kept) and everything still in the channel (packet id 0) to its pending queue, sent
//! first after reconnecting, or dropped if the broker starts a new session; and a publish
//! whose packet id is still in use waits (`Outgoing::AwaitAck`) until the older one is
//! acknowledged, then goes out under that id.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::{AsyncClient, ClientError};
use tokio::sync::mpsc;

/// How a tagged publish ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled<T> {
    /// The broker acknowledged it (PUBACK, success or "no matching subscribers").
    Acked(T),
    /// The broker acknowledged it with a failure reason (not authorized, quota exceeded,
    /// ...): it will not be delivered, and sending it again would not change that.
    Refused(T, String),
    /// The broker started a new session before acknowledging it: it may never have
    /// arrived. Send it again.
    Lost(T),
}

/// The hand-over order and the packet ids of tracked publishes (see the module doc).
/// `None` tags are publishes nobody waits for (chunks, telemetry, status); they are
/// followed all the same, to keep the order and to tell retransmissions apart.
#[derive(Debug)]
pub struct AckTracker<T> {
    /// Handed to the client, not yet written, oldest first.
    unwritten: VecDeque<Option<T>>,
    /// Written at QoS 1, awaiting their PUBACK, by packet id.
    awaiting: HashMap<u16, Option<T>>,
    /// A publish held back because its packet id was still in use.
    collided: Option<(u16, Option<T>)>,
    /// How many of the oldest `unwritten` sit in rumqttc's pending queue since the last
    /// failure (dropped with it if the next session is new).
    requeued: usize,
}

impl<T> Default for AckTracker<T> {
    fn default() -> Self {
        AckTracker {
            unwritten: VecDeque::new(),
            awaiting: HashMap::new(),
            collided: None,
            requeued: 0,
        }
    }
}

impl<T> AckTracker<T> {
    /// A publish was handed to the client's channel (after every earlier one).
    pub fn handed(&mut self, tag: Option<T>) {
        self.unwritten.push_back(tag);
    }

    /// Handing the newest publish failed: forget it.
    pub fn unhand_newest(&mut self) -> Option<T> {
        self.unwritten.pop_back().flatten()
    }

    /// A publish of our own was put straight into rumqttc's pending queue behind
    /// `first_time_ahead` never-written publishes: it is written after them and before
    /// anything still in the channel.
    pub fn injected(&mut self, first_time_ahead: usize) {
        let at = first_time_ahead.min(self.unwritten.len());
        self.unwritten.insert(at, None);
    }

    /// rumqttc wrote a publish with packet id `pkid` (0: QoS 0).
    pub fn written(&mut self, pkid: u16) {
        if pkid == 0 {
            self.take_oldest();
            return;
        }
        if let Some((held, _)) = &self.collided
            && *held == pkid
        {
            let (_, tag) = self.collided.take().expect("checked above");
            self.awaiting.insert(pkid, tag);
            return;
        }
        if self.awaiting.contains_key(&pkid) {
            return; // a retransmission after reconnecting
        }
        let tag = self.take_oldest();
        self.awaiting.insert(pkid, tag);
    }

    /// rumqttc holds a publish back until packet id `pkid` is acknowledged.
    pub fn collided(&mut self, pkid: u16) {
        let tag = self.take_oldest();
        self.collided = Some((pkid, tag));
    }

    /// The oldest unwritten publish has left rumqttc's queues: its tag. If it was one of
    /// the requeued, one fewer is left to lose with a new session.
    fn take_oldest(&mut self) -> Option<T> {
        self.requeued = self.requeued.saturating_sub(1);
        self.unwritten.pop_front().flatten()
    }

    /// The broker acknowledged packet id `pkid`; `refusal` is its failure reason, if any.
    pub fn acked(&mut self, pkid: u16, refusal: Option<String>) -> Option<Settled<T>> {
        let tag = self.awaiting.remove(&pkid)??;
        Some(match refusal {
            None => Settled::Acked(tag),
            Some(reason) => Settled::Refused(tag, reason),
        })
    }

    /// The connection failed; rumqttc's pending queue now holds `first_time_pending`
    /// publishes never written (they were the oldest in its channel).
    pub fn connection_lost(&mut self, first_time_pending: usize) {
        self.requeued = first_time_pending.min(self.unwritten.len());
    }

    /// The broker accepted a connection. Without a session, whatever was awaiting its
    /// acknowledgement or pending in rumqttc is gone: those tags are returned as lost.
    pub fn connected(&mut self, session_present: bool) -> Vec<Settled<T>> {
        let mut lost = Vec::new();
        if !session_present {
            let mut pkids: Vec<u16> = self.awaiting.keys().copied().collect();
            // Oldest first (as far as packet ids tell), so they go out again in order.
            pkids.sort_unstable();
            lost.extend(pkids.into_iter().filter_map(|p| self.awaiting.remove(&p)?));
            lost.extend(self.collided.take().and_then(|(_, t)| t));
            lost.extend(self.unwritten.drain(..self.requeued).flatten());
        }
        self.requeued = 0;
        lost.into_iter().map(Settled::Lost).collect()
    }

    /// Tagged publishes not settled yet.
    pub fn outstanding(&self) -> usize {
        self.unwritten.iter().filter(|t| t.is_some()).count()
            + self.awaiting.values().filter(|t| t.is_some()).count()
            + usize::from(self.collided.as_ref().is_some_and(|(_, t)| t.is_some()))
    }
}

/// What the connection driver tells about the publishes it writes and the acknowledgements
/// it reads (see [`super::connection::drive`]).
pub trait DeliveryTracking: Send + Sync + std::fmt::Debug {
    fn written(&self, pkid: u16);
    fn collided(&self, pkid: u16);
    fn acked(&self, pkid: u16, refusal: Option<String>);
    fn connection_lost(&self, first_time_pending: usize);
    fn connected(&self, session_present: bool);
    fn injected(&self, first_time_ahead: usize);
}

/// A message as the outbox publishes it.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    pub payload: Bytes,
    pub properties: Option<PublishProperties>,
}

/// The front end's one way to publish (see the module doc). Settlements of tagged
/// messages arrive on the receiver [`Outbox::new`] returns.
#[derive(Debug)]
pub struct Outbox<T> {
    client: AsyncClient,
    /// Serializes hand-overs, so that the tracker's order is the channel's.
    handing: tokio::sync::Mutex<()>,
    tracker: Mutex<AckTracker<T>>,
    settled: mpsc::UnboundedSender<Settled<T>>,
}

impl<T: Send + std::fmt::Debug> Outbox<T> {
    pub fn new(client: AsyncClient) -> (Outbox<T>, mpsc::UnboundedReceiver<Settled<T>>) {
        let (settled, rx) = mpsc::unbounded_channel();
        let outbox = Outbox {
            client,
            handing: tokio::sync::Mutex::new(()),
            tracker: Mutex::new(AckTracker::default()),
            settled,
        };
        (outbox, rx)
    }

    /// Hands `m` to the client (waiting for room in its channel); `tag` comes back in a
    /// [`Settled`] once the broker has answered for it. A tag on a QoS 0 message is
    /// dropped when written (there is no acknowledgement to wait for).
    pub async fn publish(&self, m: Message, tag: Option<T>) -> Result<(), ClientError> {
        let _order = self.handing.lock().await;
        // The tag goes in first: the driver may see the write before `publish` returns.
        self.tracker().handed(tag);
        let sent = match m.properties {
            Some(p) => {
                self.client
                    .publish_with_properties(m.topic, m.qos, m.retain, m.payload, p)
                    .await
            }
            None => {
                self.client
                    .publish(m.topic, m.qos, m.retain, m.payload)
                    .await
            }
        };
        if sent.is_err() {
            self.tracker().unhand_newest();
        }
        sent
    }

    /// Tagged messages not settled yet.
    pub fn outstanding(&self) -> usize {
        self.tracker().outstanding()
    }

    /// Asks the client to disconnect (after everything handed before).
    pub async fn disconnect(&self) {
        let _order = self.handing.lock().await;
        let _ = self.client.disconnect().await;
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, AckTracker<T>> {
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends settlements on while the tracker is still locked (`_tracker`): whoever sees
    /// [`Outbox::outstanding`] drop finds them in the channel already.
    fn report(
        &self,
        _tracker: std::sync::MutexGuard<'_, AckTracker<T>>,
        settled: impl IntoIterator<Item = Settled<T>>,
    ) {
        for s in settled {
            let _ = self.settled.send(s);
        }
    }
}

impl<T: Send + std::fmt::Debug> DeliveryTracking for Outbox<T> {
    fn written(&self, pkid: u16) {
        self.tracker().written(pkid);
    }

    fn collided(&self, pkid: u16) {
        self.tracker().collided(pkid);
    }

    fn acked(&self, pkid: u16, refusal: Option<String>) {
        let mut tracker = self.tracker();
        let settled = tracker.acked(pkid, refusal);
        self.report(tracker, settled);
    }

    fn connection_lost(&self, first_time_pending: usize) {
        self.tracker().connection_lost(first_time_pending);
    }

    fn connected(&self, session_present: bool) {
        let mut tracker = self.tracker();
        let lost = tracker.connected(session_present);
        self.report(tracker, lost);
    }

    fn injected(&self, first_time_ahead: usize) {
        self.tracker().injected(first_time_ahead);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> AckTracker<&'static str> {
        AckTracker::default()
    }

    #[test]
    fn a_tag_settles_on_its_own_packet_ids_ack() {
        let mut t = tracker();
        t.handed(None); // a chunk
        t.handed(Some("final"));
        t.written(1);
        t.written(2);
        assert_eq!(t.outstanding(), 1);
        assert_eq!(t.acked(1, None), None, "the chunk has no tag");
        assert_eq!(t.acked(2, None), Some(Settled::Acked("final")));
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn qos0_publishes_keep_the_order() {
        let mut t = tracker();
        t.handed(None); // telemetry, QoS 0
        t.handed(Some("final"));
        t.written(0);
        t.written(7);
        assert_eq!(t.acked(7, None), Some(Settled::Acked("final")));
    }

    #[test]
    fn a_refusal_is_reported_as_such() {
        let mut t = tracker();
        t.handed(Some("final"));
        t.written(3);
        assert_eq!(
            t.acked(3, Some("NotAuthorized".into())),
            Some(Settled::Refused("final", "NotAuthorized".into()))
        );
    }

    #[test]
    fn a_resumed_session_retransmits_without_losing_anything() {
        let mut t = tracker();
        t.handed(Some("a"));
        t.handed(Some("b"));
        t.handed(Some("c"));
        t.written(1); // a, then the connection fails before its ack
        // rumqttc requeues a (pkid 1) and b, c from its channel (pkid 0).
        t.connection_lost(2);
        assert!(t.connected(true).is_empty());
        t.written(1); // a again
        t.written(2); // b
        t.written(3); // c
        assert_eq!(t.acked(1, None), Some(Settled::Acked("a")));
        assert_eq!(t.acked(2, None), Some(Settled::Acked("b")));
        assert_eq!(t.acked(3, None), Some(Settled::Acked("c")));
    }

    #[test]
    fn a_new_session_loses_what_was_awaiting_or_requeued_and_keeps_the_rest() {
        let mut t = tracker();
        t.handed(Some("a"));
        t.handed(Some("b"));
        t.written(1); // a
        t.connection_lost(1); // b requeued
        t.handed(Some("c")); // handed after the failure: still in the channel
        let lost = t.connected(false);
        assert_eq!(lost, vec![Settled::Lost("a"), Settled::Lost("b")]);
        assert_eq!(t.outstanding(), 1);
        t.written(1); // c, under a reused packet id
        assert_eq!(t.acked(1, None), Some(Settled::Acked("c")));
    }

    #[test]
    fn a_requeued_qos0_publish_written_before_a_new_session_is_not_counted_lost() {
        let mut t = tracker();
        t.handed(None); // telemetry, QoS 0
        t.handed(Some("a"));
        t.handed(Some("b"));
        t.connection_lost(2); // telemetry and a requeued; b still in the channel
        t.written(0); // the telemetry goes out (a buffered event) before the CONNACK
        // Only a, requeued, is lost with the session; b, still in the channel, is not.
        assert_eq!(t.connected(false), vec![Settled::Lost("a")]);
        assert_eq!(t.outstanding(), 1, "b is still to be written");
    }

    #[test]
    fn our_own_injected_publish_does_not_take_anothers_tag() {
        let mut t = tracker();
        t.handed(Some("a"));
        t.handed(Some("b"));
        t.connection_lost(1); // a requeued; b still in the channel
        assert!(t.connected(true).is_empty());
        t.injected(1); // `online`, behind a
        t.written(1); // a
        t.written(2); // online
        t.written(3); // b
        assert_eq!(t.acked(2, None), None);
        assert_eq!(t.acked(3, None), Some(Settled::Acked("b")));
        assert_eq!(t.acked(1, None), Some(Settled::Acked("a")));
    }

    #[test]
    fn a_collision_waits_for_the_older_ack() {
        let mut t = tracker();
        t.handed(Some("old"));
        t.handed(Some("new"));
        t.written(1);
        t.collided(1);
        assert_eq!(t.outstanding(), 2);
        assert_eq!(t.acked(1, None), Some(Settled::Acked("old")));
        t.written(1); // the held one goes out under the freed id
        assert_eq!(t.acked(1, None), Some(Settled::Acked("new")));
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn unhanding_forgets_the_newest() {
        let mut t = tracker();
        t.handed(Some("a"));
        t.handed(Some("b"));
        assert_eq!(t.unhand_newest(), Some("b"));
        t.written(4);
        assert_eq!(t.acked(4, None), Some(Settled::Acked("a")));
    }

    #[test]
    fn unknown_acks_are_ignored() {
        let mut t = tracker();
        assert_eq!(t.acked(9, None), None);
        t.written(0); // nothing handed: no panic
        assert_eq!(t.outstanding(), 0);
    }
}
