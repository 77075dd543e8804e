//! Replies to HTTP clients: the switch that sends each of the intake's messages to the front
//! end owning its reply address, and the [`Exchange`] an HTTP handler holds while it waits
//! for its request's chunks and final.
//!
//! An HTTP request's reply address is a topic no MQTT client can name (`$http/...`:
//! [`valid_reply_topic`](crate::service::schema::valid_reply_topic) refuses `$`), unique
//! across restarts, so a final recovered from the journal after a crash cannot reach a
//! later request. A final for a waiter that is gone (its client disconnected, or the
//! daemon restarted) has nobody to go to: it is marked delivered, and stays in the journal
//! to answer a resend of its idempotency key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::ClientGone;
use super::errors::ApiError;
use crate::service::intake::{Admission, Intake, Submission};
use crate::service::sink::{CONNECTION_PREFIX, Delivery, Outgoing, ReplyTarget};

/// Reply topics of HTTP requests start with this (the connection-bound addresses of
/// [`crate::service::sink`]); the journal's client of an HTTP request is this alone.
pub const HTTP_PREFIX: &str = CONNECTION_PREFIX;

/// Whether a reply address belongs to the HTTP front end.
pub fn is_http(topic: &str) -> bool {
    ReplyTarget::is_connection_bound(topic)
}

/// The HTTP requests waiting for replies, by reply topic.
#[derive(Debug)]
pub struct Waiters {
    /// Makes topics unique across restarts.
    nonce: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<String, mpsc::UnboundedSender<Outgoing>>>,
}

impl Waiters {
    pub fn new() -> Waiters {
        Waiters {
            nonce: super::random_hex(8),
            next: AtomicU64::new(0),
            waiting: Mutex::default(),
        }
    }

    /// A new reply address and the receiver of what is sent to it. The channel is not
    /// bounded by count, but by the request: at most `max_tokens` chunks and one final.
    fn register(&self) -> (ReplyTarget, mpsc::UnboundedReceiver<Outgoing>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let topic = format!("{HTTP_PREFIX}/{}/{n}", self.nonce);
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(topic.clone(), tx);
        let target = ReplyTarget {
            topic,
            correlation: None,
        };
        (target, rx)
    }

    fn unregister(&self, target: &ReplyTarget) {
        self.lock().remove(&target.topic);
    }

    /// Hands a message to its waiter; `false` when there is none any more.
    fn deliver(&self, msg: Outgoing) -> bool {
        let waiting = self.lock();
        match waiting.get(&msg.target.topic) {
            Some(tx) => tx.send(msg).is_ok(),
            None => false,
        }
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Outgoing>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Waiters {
    fn default() -> Self {
        Waiters::new()
    }
}

/// Sends the intake's output on: HTTP replies to their waiters (a recorded final is then
/// marked delivered), everything else to the MQTT front end. Returns the MQTT front end's
/// receiver; the switch ends, closing it, when the intake's output ends.
pub fn switch(
    mut output: mpsc::Receiver<Outgoing>,
    waiters: Arc<Waiters>,
    intake: Arc<Intake>,
) -> mpsc::Receiver<Outgoing> {
    let (mqtt_tx, mqtt_rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(msg) = output.recv().await {
            if !is_http(&msg.target.topic) {
                if mqtt_tx.send(msg).await.is_err() {
                    tracing::warn!("the MQTT front end is gone: replies dropped");
                }
                continue;
            }
            let recorded = match &msg.delivery {
                Delivery::Recorded { key } => Some(key.clone()),
                _ => None,
            };
            if !waiters.deliver(msg) && recorded.is_none() {
                continue;
            }
            if let Some(key) = recorded {
                // Handed over, or nobody to hand it to: either way this final is done; a
                // resend of its key gets it from the journal.
                let intake = Arc::clone(&intake);
                tokio::spawn(async move { intake.delivered(key).await });
            }
        }
    });
    mqtt_rx
}

/// A finished request's answer, as the intake's final reply says it.
#[derive(Clone, Debug, Deserialize)]
pub struct Answer {
    pub id: String,
    #[serde(default)]
    pub text: String,
    /// Thinking text (`[THINK]`), when the model reasoned.
    #[serde(default)]
    pub reasoning_content: Option<String>,
    /// The calls, in OpenAI's message form (`id`, `type`, `function: {name, arguments}`).
    #[serde(default)]
    pub tool_calls: Vec<serde_json::Value>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
    /// The cloud model that answered (cloud routes only).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub timings: serde_json::Value,
    #[serde(default)]
    pub replayed: bool,
    #[serde(default)]
    pub resumed: bool,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
}

impl Answer {
    /// OpenAI's `finish_reason`: `length` when `max_tokens` ended it, `tool_calls` when it
    /// ended with calls, else `stop`.
    pub fn openai_finish_reason(&self) -> &'static str {
        match self.finish_reason.as_deref() {
            Some("length") => "length",
            _ if !self.tool_calls.is_empty() => "tool_calls",
            _ => "stop",
        }
    }

    /// A timing from the final reply, in milliseconds.
    pub fn timing_ms(&self, name: &str) -> Option<f64> {
        self.timings.get(name).and_then(serde_json::Value::as_f64)
    }

    /// The `spillway` object of a reply: where and why it was served, and how long it took.
    pub fn spillway_json(&self) -> serde_json::Value {
        let mut o = serde_json::json!({
            "route": self.route,
            "reason": self.reason,
            "provider": self.provider,
            "timings": self.timings,
        });
        if self.replayed {
            o["replayed"] = true.into();
        }
        if self.resumed {
            o["resumed"] = true.into();
        }
        o
    }
}

/// What an [`Exchange`] receives.
#[derive(Debug)]
pub enum Event {
    /// A piece of the answer's text.
    Delta(String),
    /// A piece of its thinking.
    Reasoning(String),
    /// Tool-call deltas in OpenAI's streamed form: `[{"index", "id"?, "type"?,
    /// "function": {"name"?, "arguments"}}]`.
    ToolCalls(serde_json::Value),
    /// The answer, whole.
    Done(Box<Answer>),
    /// The request's error final.
    Failed(ApiError),
}

/// A chunk: one of text, thinking or tool-call deltas (`schema::piece_json`).
#[derive(Deserialize)]
struct ChunkJson {
    #[serde(default)]
    delta: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Option<serde_json::Value>,
}

impl ChunkJson {
    fn into_event(self) -> Event {
        match (self.delta, self.reasoning, self.tool_calls) {
            (Some(d), _, _) => Event::Delta(d),
            (None, Some(r), _) => Event::Reasoning(r),
            (None, None, Some(t)) => Event::ToolCalls(t),
            (None, None, None) => Event::Delta(String::new()),
        }
    }
}

#[derive(Deserialize)]
struct ErrorFinal {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

/// One HTTP request's conversation with the intake. Dropping it before the final (the
/// client went away) cancels the request, unless another sender of its key still waits.
#[derive(Debug)]
pub struct Exchange {
    request_id: String,
    target: ReplyTarget,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    waiters: Arc<Waiters>,
    intake: Arc<Intake>,
    finished: bool,
    /// The latest the final may come: the request's deadline and a margin.
    give_up: tokio::time::Instant,
    /// Turns true when the client hangs up.
    gone: ClientGone,
}

/// What an HTTP front end submits.
#[derive(Debug)]
pub struct HttpSubmission {
    /// The id the payload gives the request.
    pub request_id: String,
    /// The request in the intake's schema.
    pub payload: Vec<u8>,
    pub idempotency_key: Option<String>,
    pub deadline: Duration,
    /// The connection's hang-up flag.
    pub gone: ClientGone,
}

/// How long past its deadline an HTTP request waits for the final the intake owes it.
const FINAL_MARGIN: Duration = Duration::from_secs(30);

impl Exchange {
    /// Submits a request; refused only while shutting down (every other refusal comes as
    /// the first [`Event`]).
    pub async fn submit(
        intake: &Arc<Intake>,
        waiters: &Arc<Waiters>,
        s: HttpSubmission,
    ) -> Result<Exchange, ApiError> {
        let (target, rx) = waiters.register();
        let mut ex = Exchange {
            request_id: s.request_id,
            target: target.clone(),
            rx,
            waiters: Arc::clone(waiters),
            intake: Arc::clone(intake),
            finished: false,
            give_up: tokio::time::Instant::now() + s.deadline + FINAL_MARGIN,
            gone: s.gone,
        };
        let admission = intake
            .submit(Submission {
                payload: Bytes::from(s.payload),
                reply: Some(target),
                expiry: Some(s.deadline),
                redelivered: false,
                idempotency_key: s.idempotency_key,
                client: Some(HTTP_PREFIX.to_string()),
            })
            .await;
        if admission == Admission::Deferred {
            ex.finished = true;
            return Err(ApiError::shutting_down());
        }
        Ok(ex)
    }

    /// The id of the request as submitted (a replayed final carries its first run's).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The next event; after [`Event::Done`] or [`Event::Failed`] there is none.
    pub async fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        let next = tokio::select! {
            next = tokio::time::timeout_at(self.give_up, self.rx.recv()) => next,
            () = self.gone.wait() => {
                // Not finished: dropping the exchange cancels the request.
                return Some(Event::Failed(ApiError::from_code(
                    "cancelled",
                    "the client went away".into(),
                )));
            }
        };
        let msg = match next {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                self.finished = true;
                return Some(Event::Failed(ApiError::internal(
                    "the reply channel closed before the final",
                )));
            }
            Err(_) => {
                // The intake owes a final by the deadline; this only guards against a bug.
                self.finished = true;
                self.intake.cancel(&self.target);
                return Some(Event::Failed(ApiError::timeout(
                    "no answer came before the request's deadline",
                )));
            }
        };
        if !msg.is_final() {
            return match serde_json::from_slice::<ChunkJson>(&msg.payload) {
                Ok(c) => Some(c.into_event()),
                Err(e) => Some(Event::Failed(ApiError::internal(format!(
                    "an unreadable chunk: {e}"
                )))),
            };
        }
        self.finished = true;
        if let Ok(e) = serde_json::from_slice::<ErrorFinal>(&msg.payload) {
            return Some(Event::Failed(ApiError::from_code(
                &e.error.code,
                e.error.message,
            )));
        }
        Some(match serde_json::from_slice::<Answer>(&msg.payload) {
            Ok(a) => Event::Done(Box::new(a)),
            Err(e) => Event::Failed(ApiError::internal(format!("an unreadable final: {e}"))),
        })
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.waiters.unregister(&self.target);
        if !self.finished && self.intake.cancel(&self.target) {
            tracing::info!("an HTTP client went away: its request is cancelled");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_topics_are_ones_mqtt_clients_cannot_name() {
        let w = Waiters::new();
        let (a, _rx_a) = w.register();
        let (b, _rx_b) = w.register();
        assert_ne!(a, b);
        for t in [&a.topic, &b.topic] {
            assert!(is_http(t), "{t}");
            assert!(!crate::service::schema::valid_reply_topic(t), "{t}");
        }
        assert!(is_http(HTTP_PREFIX));
        assert!(!is_http("$httpx/1") && !is_http("replies/http"));
        assert_ne!(
            Waiters::new().register().0.topic,
            a.topic,
            "another start names its waiters differently"
        );
        assert_eq!(w.len(), 2);
        w.unregister(&a);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn finals_parse_into_answers() {
        let a: Answer = serde_json::from_str(
            r#"{"id":"q","done":true,"text":"hi","finish_reason":"length",
                "usage":{"prompt_tokens":3,"completion_tokens":2,"cached_tokens":0},
                "route":"local","reason":"cool","timings":{"queue_ms":1.5},"resumed":true}"#,
        )
        .unwrap();
        assert_eq!(a.openai_finish_reason(), "length");
        assert_eq!(a.timing_ms("queue_ms"), Some(1.5));
        assert_eq!(
            (a.usage.prompt_tokens, a.usage.completion_tokens),
            (Some(3), Some(2))
        );
        let s = a.spillway_json();
        assert_eq!(
            (s["route"].as_str(), s["resumed"].as_bool()),
            (Some("local"), Some(true))
        );
        assert!(s.get("replayed").is_none());
    }
}
