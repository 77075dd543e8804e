//! The MQTT front end: requests arrive on `<prefix>/<device>/request` (and a fleet's shared
//! subscription), replies go to each request's MQTT 5 response topic with its correlation
//! data (or an MQTT 3.1.1 client's `reply_to`).
//!
//! Tasks: the [connection driver](super::connection) keeps the broker connection up; the
//! *dispatcher* turns each incoming message into a [`Submission`] for the [`Intake`] and
//! acknowledges it (manual acks, QoS 1) once the intake has journaled or answered it, so a
//! request is never acknowledged and then lost; the *publisher* sends what the intake
//! produces, in order, through the [`Outbox`], and tells the intake when the broker has
//! acknowledged a final; the *telemetry* task reports the board's state. The persistent
//! session (clean start off) keeps the subscription and the requests sent while the
//! daemon restarts.
//!
//! With Home Assistant discovery on (`[homeassistant]`, see [`super::discovery`]) the
//! dispatcher also publishes the discovery configs after every connection, and again
//! whenever Home Assistant's status topic (`<prefix>/status`, subscribed then) says
//! `online`; a message on that topic is never taken for a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::connection::{BackoffConfig, ConnectionConfig, ConnectionEvent, ConnectionState, drive};
use super::discovery;
use super::intake::{Intake, Submission};
use super::journal::RequestKey;
use super::metrics::Metrics;
use super::notify::Notifier;
use super::outbox::{DeliveryTracking, Message, Outbox, Settled};
use super::route::Routing;
use super::schema::valid_reply_topic;
use super::sink::{Delivery, Outgoing, ReplyTarget};
use super::stats::Stats;
use super::{ServiceError, mqtt};
use crate::config::Validated;

/// What the MQTT tasks share with the rest of the service.
#[derive(Debug)]
pub struct FrontContext {
    pub v: Validated,
    pub intake: Arc<Intake>,
    pub stats: Arc<Stats>,
    pub routing: Arc<Routing>,
    /// The Prometheus registry (over `stats` and `routing`), for a front end that serves
    /// `GET /metrics`: [`Metrics::encode`].
    pub metrics: Arc<Metrics>,
    pub notify: Notifier,
    pub model_name: String,
    pub kernels: &'static str,
    pub started: std::time::Instant,
}

/// A final the broker has not acknowledged yet, kept to send again if its session is lost.
#[derive(Debug)]
struct Unconfirmed {
    key: RequestKey,
    target: ReplyTarget,
    payload: Bytes,
}

type Replies = Outbox<Unconfirmed>;

/// The running front end.
#[derive(Debug)]
pub struct MqttFront {
    outbox: Arc<Replies>,
    ctx: Arc<FrontContext>,
    state: Arc<ConnectionState>,
    stop: watch::Sender<bool>,
    driver: JoinHandle<()>,
    publisher: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
    telemetry: JoinHandle<()>,
}

impl MqttFront {
    /// Connects (in the background) and starts the tasks. `replies` is the intake's
    /// output.
    pub fn start(
        ctx: Arc<FrontContext>,
        replies: mpsc::Receiver<Outgoing>,
    ) -> Result<MqttFront, ServiceError> {
        let v = &ctx.v;
        let opts = mqtt::options(v)?;
        let (client, eventloop) = AsyncClient::new(opts, 1024);
        let mut subscriptions = vec![(v.topics.request.clone(), QoS::AtLeastOnce)];
        if let Some(shared) = &v.topics.shared_request {
            subscriptions.push((shared.clone(), QoS::AtLeastOnce));
        }
        let ha = &v.config.homeassistant;
        let home_assistant = HomeAssistant {
            status_topic: ha.status_topic(),
            configs: if ha.discovery {
                subscriptions.push((ha.status_topic(), QoS::AtLeastOnce));
                discovery_messages(&ctx)
            } else {
                Vec::new()
            },
        };
        let config = ConnectionConfig {
            label: format!("{}:{}", v.broker.host, v.broker.port),
            client_id: v.client_id.clone(),
            subscriptions,
            online: Some((v.topics.status.clone(), Bytes::from_static(b"online"))),
            backoff: BackoffConfig::default(),
        };
        let state = Arc::new(ConnectionState::default());
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let (outbox, settled) = Outbox::new(client.clone());
        let outbox = Arc::new(outbox);
        let tracking: Arc<dyn DeliveryTracking> = outbox.clone();
        let driver = tokio::spawn(drive(
            eventloop,
            config,
            events_tx,
            Arc::clone(&state),
            stop_rx.clone(),
            Some(tracking),
        ));
        let dispatcher = tokio::spawn(dispatch(
            events_rx,
            client,
            Arc::clone(&ctx),
            Arc::clone(&outbox),
            home_assistant,
        ));
        let publisher = tokio::spawn(publish(
            replies,
            settled,
            Arc::clone(&outbox),
            Arc::clone(&ctx),
        ));
        let telemetry = tokio::spawn(telemetry(Arc::clone(&outbox), Arc::clone(&ctx), stop_rx));
        Ok(MqttFront {
            outbox,
            ctx,
            state,
            stop,
            driver,
            publisher,
            dispatcher,
            telemetry,
        })
    }

    /// The connection's state (for `STATUS=` and readiness).
    pub fn state(&self) -> &Arc<ConnectionState> {
        &self.state
    }

    /// Ends the front end once the intake is closed: waits up to `limit` for the last
    /// replies to go out and the broker to acknowledge every final, publishes `offline`,
    /// disconnects. A final still unacknowledged stays undelivered in the journal, and the
    /// next start sends it again. The session (and its subscription) stays with the
    /// broker for the next start.
    pub async fn finish(self, limit: Duration) {
        let end = tokio::time::Instant::now() + limit;
        if tokio::time::timeout_at(end, self.publisher).await.is_err() {
            tracing::warn!(
                "{} finals not acknowledged by the broker at exit: the journal keeps them for \
                 the next start",
                self.outbox.outstanding()
            );
        }
        self.telemetry.abort();
        self.stop.send_replace(true);
        // Both wait only for room in the client's channel, which the driver keeps draining
        // while connected (and which is gone once it has returned).
        let _ = tokio::time::timeout_at(end, async {
            let offline = message(
                &self.ctx.v.topics.status,
                Bytes::from_static(b"offline"),
                true,
                None,
            );
            let _ = self.outbox.publish(offline, None).await;
            self.outbox.disconnect().await;
        })
        .await;
        let _ = tokio::time::timeout_at(
            end.max(tokio::time::Instant::now()) + Duration::from_millis(500),
            self.driver,
        )
        .await;
        self.dispatcher.abort();
    }
}

/// A QoS 1 message for `topic`.
fn message(
    topic: &str,
    payload: Bytes,
    retain: bool,
    properties: Option<PublishProperties>,
) -> Message {
    Message {
        topic: topic.to_owned(),
        qos: QoS::AtLeastOnce,
        retain,
        payload,
        properties,
    }
}

/// A reply's message: to its target, with the request's correlation data.
fn reply_message(target: &ReplyTarget, payload: Bytes) -> Message {
    let props = PublishProperties {
        correlation_data: target.correlation.clone(),
        content_type: Some("application/json".into()),
        payload_format_indicator: Some(1),
        ..PublishProperties::default()
    };
    message(&target.topic, payload, false, Some(props))
}

/// Where a message's replies go, from its MQTT 5 properties.
fn reply_target(p: &Publish) -> Option<ReplyTarget> {
    let props = p.properties.as_ref()?;
    let topic = props
        .response_topic
        .clone()
        .filter(|t| valid_reply_topic(t))?;
    Some(ReplyTarget {
        topic,
        correlation: props.correlation_data.clone(),
    })
}

/// The client's own idempotency key: MQTT 5's user property `idempotency-key` (the name
/// compared without case, as HTTP's `Idempotency-Key` header is).
fn idempotency_key(p: &Publish) -> Option<String> {
    let props = p.properties.as_ref()?;
    props
        .user_properties
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(IDEMPOTENCY_KEY))
        .map(|(_, value)| value.clone())
}

/// The user property naming a request's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Home Assistant's side of the front end.
#[derive(Debug)]
struct HomeAssistant {
    /// Where Home Assistant says `online` (kept apart from requests even with discovery
    /// off: a session from a run with it on may still hold the subscription).
    status_topic: String,
    /// The discovery configs; empty with discovery off.
    configs: Vec<Message>,
}

/// The discovery configs of this board, as retained QoS 1 messages.
fn discovery_messages(ctx: &FrontContext) -> Vec<Message> {
    let v = &ctx.v;
    let board = discovery::Board {
        prefix: v.config.homeassistant.prefix.clone(),
        device: v.device.clone(),
        telemetry_topic: v.topics.telemetry.clone(),
        status_topic: v.topics.status.clone(),
        model: v
            .host
            .device_tree
            .model
            .clone()
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| v.board.profile.description.clone()),
        sw_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    discovery::configs(&board)
        .into_iter()
        .map(|c| {
            let payload = serde_json::to_vec(&c.payload).unwrap_or_default();
            message(&c.topic, Bytes::from(payload), true, None)
        })
        .collect()
}

/// Publishes the discovery configs (none with discovery off).
async fn publish_discovery(outbox: &Replies, ha: &HomeAssistant) {
    if ha.configs.is_empty() {
        return;
    }
    for m in &ha.configs {
        if let Err(e) = outbox.publish(m.clone(), None).await {
            tracing::warn!("cannot publish the discovery config {}: {e}", m.topic);
            return;
        }
    }
    tracing::debug!(
        "published {} Home Assistant discovery configs",
        ha.configs.len()
    );
}

/// Hands incoming requests to the intake and acknowledges them as it says; publishes
/// Home Assistant's discovery configs after each connection and when Home Assistant
/// comes online.
async fn dispatch(
    mut events: mpsc::UnboundedReceiver<ConnectionEvent>,
    client: AsyncClient,
    ctx: Arc<FrontContext>,
    outbox: Arc<Replies>,
    ha: HomeAssistant,
) {
    let ready = AtomicBool::new(false);
    while let Some(event) = events.recv().await {
        let p = match event {
            ConnectionEvent::Connected { .. } => {
                if !ready.swap(true, Ordering::SeqCst) {
                    // The model was mapped and the journal recovered before: ready now.
                    ctx.notify.ready(&format!(
                        "serving: {} queued, {} running",
                        ctx.stats.queued.load(Ordering::SeqCst),
                        ctx.stats.running.load(Ordering::SeqCst)
                    ));
                }
                publish_discovery(&outbox, &ha).await;
                continue;
            }
            ConnectionEvent::Publish(p) => p,
        };
        if p.topic == ha.status_topic.as_bytes() {
            if p.qos != QoS::AtMostOnce
                && let Err(e) = client.ack(&p).await
            {
                tracing::warn!("cannot acknowledge Home Assistant's status: {e}");
            }
            if p.payload.as_ref() == b"online" && !ha.configs.is_empty() {
                tracing::info!("Home Assistant is online: publishing the discovery configs again");
                publish_discovery(&outbox, &ha).await;
            }
            continue;
        }
        let submission = Submission {
            payload: p.payload.clone(),
            reply: reply_target(&p),
            expiry: p
                .properties
                .as_ref()
                .and_then(|props| props.message_expiry_interval)
                .map(|s| Duration::from_secs(u64::from(s))),
            redelivered: p.dup,
            idempotency_key: idempotency_key(&p),
            client: None,
        };
        let admission = ctx.intake.submit(submission).await;
        if admission.acknowledge()
            && p.qos != QoS::AtMostOnce
            && let Err(e) = client.ack(&p).await
        {
            tracing::warn!("cannot acknowledge a request: {e}");
        }
    }
}

/// Sends replies, in order, until the intake's output ends and the broker has
/// acknowledged every final; tells the intake when one has (then, and only then, it is
/// delivered). A final whose session the broker lost goes out again; one the broker
/// refuses (not authorized for its topic, ...) is given up, with a warning.
async fn publish(
    mut replies: mpsc::Receiver<Outgoing>,
    mut settled: mpsc::UnboundedReceiver<Settled<Unconfirmed>>,
    outbox: Arc<Replies>,
    ctx: Arc<FrontContext>,
) {
    let mut open = true;
    loop {
        if !open && outbox.outstanding() == 0 {
            // Every final is settled: take in the last settlements (a lost one goes out
            // again, and then there is more to wait for).
            let mut again = false;
            while let Ok(s) = settled.try_recv() {
                again |= matches!(s, Settled::Lost(_));
                settle(s, &outbox, &ctx).await;
            }
            if !again {
                return;
            }
        }
        tokio::select! {
            m = replies.recv(), if open => {
                let Some(m) = m else {
                    open = false;
                    continue;
                };
                let payload = Bytes::from(m.payload);
                let tag = match m.delivery {
                    Delivery::Recorded { key } => Some(Unconfirmed {
                        key,
                        target: m.target.clone(),
                        payload: payload.clone(),
                    }),
                    _ => None,
                };
                send(&outbox, &m.target, payload, tag).await;
            }
            Some(s) = settled.recv() => settle(s, &outbox, &ctx).await,
        }
    }
}

/// Acts on how a final ended at the broker.
async fn settle(s: Settled<Unconfirmed>, outbox: &Replies, ctx: &FrontContext) {
    match s {
        Settled::Acked(u) => ctx.intake.delivered(u.key).await,
        Settled::Refused(u, reason) => {
            tracing::warn!(
                id = %u.key.id,
                "the broker refused the final reply to {} ({reason}); not sending it again",
                u.target.topic
            );
            ctx.intake.delivered(u.key).await;
        }
        Settled::Lost(u) => {
            tracing::info!(
                id = %u.key.id,
                "the broker lost the session before acknowledging a final reply: sending it again"
            );
            let (target, payload) = (u.target.clone(), u.payload.clone());
            send(outbox, &target, payload, Some(u)).await;
        }
    }
}

async fn send(outbox: &Replies, target: &ReplyTarget, payload: Bytes, tag: Option<Unconfirmed>) {
    if let Err(e) = outbox.publish(reply_message(target, payload), tag).await {
        tracing::warn!("cannot publish a reply to {}: {e}", target.topic);
    }
}

/// Publishes the board's state every `telemetry_secs`, until stopped.
async fn telemetry(outbox: Arc<Replies>, ctx: Arc<FrontContext>, mut stop: watch::Receiver<bool>) {
    let secs = ctx.v.config.service.telemetry_secs;
    if secs == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(secs));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let msg = telemetry_json(&ctx).await;
        let payload = serde_json::to_vec(&msg).unwrap_or_default();
        let m = Message {
            qos: QoS::AtMostOnce,
            ..message(&ctx.v.topics.telemetry, Bytes::from(payload), false, None)
        };
        let _ = outbox.publish(m, None).await;
    }
}

/// The telemetry message.
async fn telemetry_json(ctx: &FrontContext) -> serde_json::Value {
    let snap = ctx.routing.snapshot();
    let mut msg = ctx.stats.json(ctx.routing.generation_rate());
    msg["device"] = serde_json::json!(ctx.v.device);
    msg["time"] = serde_json::json!(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    msg["uptime_s"] = serde_json::json!(ctx.started.elapsed().as_secs());
    msg["model"] = serde_json::json!(ctx.model_name);
    msg["kernels"] = serde_json::json!(ctx.kernels);
    msg["temperature_c"] = serde_json::json!(snap.temperature_c);
    msg["routing"] = ctx.routing.telemetry();
    msg["memory"] = serde_json::json!({
        "available_bytes": snap.mem_available,
        "rss_bytes": crate::engine::resident_bytes(),
    });
    if let Some((pending, cached)) = ctx.intake.journal_counts().await {
        msg["journal"] = serde_json::json!({"pending": pending, "replay_cache": cached});
    }
    msg
}
