//! The MQTT cloud route: requests spill to a cloud broker on a second connection, where a
//! fleet of Spillway workers (`service.role = "worker"`) serves them through a shared
//! subscription, and the streamed replies are relayed back to the original requester.
//!
//! Each forwarded request is published (same JSON schema, QoS 1) to `upstream.topic` with
//! our reply topic, `<prefix>/<device>/upstream-replies`, as its MQTT 5 Response Topic and a
//! correlation id unique to this forward; its message expiry is the time left before the
//! original deadline. Replies arriving on the reply topic are routed by correlation data to
//! the waiting forward. The session is not persistent (clean start): a forward waits in
//! memory, and after a reconnect unanswered forwards end by their timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::{AsyncClient, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, watch};

use super::connection::{self, ConnectionConfig, ConnectionEvent, ConnectionState};
use super::mqtt::{MqttSetupError, tls_client_config};
use crate::config::{BrokerAddr, Validated};

/// Replies of one forward, as they arrive.
type Pending = Arc<Mutex<HashMap<Bytes, mpsc::UnboundedSender<Bytes>>>>;

/// The connection to the cloud broker. Dropping it disconnects.
pub struct Upstream {
    client: AsyncClient,
    pending: Pending,
    state: Arc<ConnectionState>,
    /// Tells the connection's driver to stop reconnecting (on drop).
    stop: watch::Sender<bool>,
    label: String,
    reply_topic: String,
    topic: String,
    /// `<device>-<start time>`: with the counter after it, a forward's correlation data is
    /// unique across restarts too. The worker keys its idempotency on it (with the request
    /// id and our reply topic), so a counter starting over at 0 would have it replay an
    /// answer from before the restart for a new request with a reused id.
    correlation_prefix: String,
    next: AtomicU64,
    pub timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        // Best effort: with the client's queue full, the connection just drops, and the
        // driver ends at the first failure after the stop.
        let _ = self.client.try_disconnect();
    }
}

/// A forward in flight: replies arrive on `replies`; dropping it forgets the correlation.
#[derive(Debug)]
pub struct Forward {
    pub replies: mpsc::UnboundedReceiver<Bytes>,
    correlation: Bytes,
    pending: Pending,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.correlation);
    }
}

impl Upstream {
    /// Connects (in the background, through [`connection::drive`]: backoff with jitter,
    /// the reply topic subscribed after every CONNACK). Must be called within the tokio
    /// runtime.
    pub fn start(v: &Validated, addr: &BrokerAddr) -> Result<Upstream, MqttSetupError> {
        let u = &v.config.upstream;
        let client_id = format!("{}-upstream", v.client_id);
        let mut o = MqttOptions::new(client_id.clone(), addr.host.clone(), addr.port);
        o.set_keep_alive(Duration::from_secs(v.config.mqtt.keep_alive_secs));
        o.set_clean_start(true);
        o.set_max_packet_size(Some(v.config.mqtt.max_packet_bytes));
        o.set_connection_timeout(10);
        if !u.username.is_empty() {
            let password = v
                .upstream_password
                .as_ref()
                .map(|p| p.expose_secret().to_string())
                .unwrap_or_default();
            o.set_credentials(u.username.clone(), password);
        }
        if addr.tls {
            let tls = tls_client_config(&u.ca_file, &u.client_cert, &u.client_key)?;
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )));
        }
        let (client, eventloop) = AsyncClient::new(o, 256);
        let prefix = v.config.mqtt.topic_prefix.trim_end_matches('/');
        let reply_topic = format!("{prefix}/{}/upstream-replies", v.device);
        let label = format!("the cloud broker {}:{}", addr.host, addr.port);
        let pending: Pending = Arc::default();
        let state = Arc::new(ConnectionState::default());
        let (stop, stop_rx) = watch::channel(false);
        let (events_tx, events) = mpsc::unbounded_channel();
        let cfg = ConnectionConfig {
            label: label.clone(),
            client_id,
            subscriptions: vec![(reply_topic.clone(), QoS::AtLeastOnce)],
            online: None,
            backoff: connection::BackoffConfig::default(),
        };
        tokio::spawn(connection::drive(
            eventloop,
            cfg,
            events_tx,
            Arc::clone(&state),
            stop_rx,
            None,
        ));
        tokio::spawn(route_replies(events, Arc::clone(&pending)));
        Ok(Upstream {
            client,
            pending,
            state,
            stop,
            label,
            reply_topic,
            topic: u.topic.clone(),
            correlation_prefix: format!(
                "{}-{:x}",
                v.device,
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros())
            ),
            next: AtomicU64::new(0),
            timeout: Duration::from_secs(u.timeout_secs),
        })
    }

    /// Whether forwards can go out now, with the reason when not.
    pub fn availability(&self) -> Result<(), String> {
        if self.state.is_connected() {
            return Ok(());
        }
        let e = self.state.last_error();
        Err(if e.is_empty() {
            format!("not connected to {} yet", self.label)
        } else {
            e
        })
    }

    /// Publishes `payload` (a request in our schema) and returns where its replies arrive.
    pub async fn forward(
        &self,
        payload: Vec<u8>,
        expiry: Option<Duration>,
    ) -> Result<Forward, String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let correlation = Bytes::from(format!("{}-{n}", self.correlation_prefix));
        let (tx, rx) = mpsc::unbounded_channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(correlation.clone(), tx);
        let forward = Forward {
            replies: rx,
            correlation: correlation.clone(),
            pending: Arc::clone(&self.pending),
        };
        let props = PublishProperties {
            response_topic: Some(self.reply_topic.clone()),
            correlation_data: Some(correlation),
            content_type: Some("application/json".into()),
            payload_format_indicator: Some(1),
            message_expiry_interval: expiry
                .map(|d| u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX)),
            ..PublishProperties::default()
        };
        self.client
            .publish_with_properties(self.topic.clone(), QoS::AtLeastOnce, false, payload, props)
            .await
            .map_err(|e| format!("cannot publish to the cloud broker: {e}"))?;
        Ok(forward)
    }
}

/// Hands each reply to the forward waiting for its correlation data, until the driver
/// ends.
async fn route_replies(mut events: mpsc::UnboundedReceiver<ConnectionEvent>, pending: Pending) {
    while let Some(event) = events.recv().await {
        let ConnectionEvent::Publish(p) = event else {
            continue;
        };
        let corr = p
            .properties
            .as_ref()
            .and_then(|p| p.correlation_data.clone());
        let Some(corr) = corr else { continue };
        let tx = pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&corr)
            .cloned();
        match tx {
            Some(tx) => {
                let _ = tx.send(p.payload);
            }
            None => tracing::debug!("a late or unknown upstream reply: dropped"),
        }
    }
}

/// The request as it goes upstream: the client's JSON without what only makes sense here
/// (`reply_to`: replies come back through us; `route`: the worker decides for itself).
pub fn upstream_payload(original: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(original).ok()?;
    let obj = v.as_object_mut()?;
    obj.remove("reply_to");
    obj.remove("route");
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_payload_drops_reply_to_and_route_only() {
        let p = upstream_payload(
            br#"{"id":"a","prompt":"hi","reply_to":"x/y","route":"cloud","max_tokens":3}"#,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "a", "prompt": "hi", "max_tokens": 3})
        );
        assert_eq!(upstream_payload(b"[1]"), None);
    }
}
