//! The ends of requests: the final recorder (every journaled final recorded before it goes
//! to the front end, with one log line per finished request) and the sweep that answers
//! queued requests whose deadline passed.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{InFlight, InFlightMap, Intake, blocking};
use crate::service::journal::{Journal, RequestKey};
use crate::service::queue::EXPIRED_WHILE_WAITING;
use crate::service::schema::{ErrorCode, RequestError, ServedRoute};
use crate::service::sink::{Delivery, Finished, Outgoing, ReplyTarget};
use crate::service::stats::Outcome;

/// How often the local queue is swept for requests whose deadline passed while they
/// waited.
const EXPIRY_SWEEP: Duration = Duration::from_millis(200);

/// Answers `expired` each queued request whose deadline passes, within [`EXPIRY_SWEEP`] of
/// it, until the queue closes: its place is free for the next request at once.
pub(super) async fn answer_expired(intake: std::sync::Weak<Intake>) {
    let mut tick = tokio::time::interval(EXPIRY_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(intake) = intake.upgrade() else {
            return;
        };
        if intake.queue.is_closed() {
            return;
        }
        let expired = intake.queue.take_expired(Instant::now());
        if expired.is_empty() {
            continue;
        }
        let err = RequestError::new(ErrorCode::Expired, EXPIRED_WHILE_WAITING);
        for job in expired {
            intake
                .stats
                .count(Some(ServedRoute::Local), Outcome::Failed(err.code));
            intake.send(job.error_reply(&err)).await;
        }
    }
}

/// The reply address of a journaled request: its key's, or, for a key the client named
/// itself (no reply address in it), the journaled client, which is the reply topic of an
/// MQTT sender (its correlation data is not kept) and an HTTP sender's `$http` name.
pub(super) fn key_target(key: &RequestKey, client: &str) -> ReplyTarget {
    if key.reply_to.is_empty() {
        return ReplyTarget {
            topic: client.to_string(),
            correlation: None,
        };
    }
    ReplyTarget {
        topic: key.reply_to.clone(),
        correlation: (!key.correlation.is_empty()).then(|| Bytes::from(key.correlation.clone())),
    }
}

/// `payload` (a JSON object) with `"<flag>": true` added; unchanged if it is not one.
pub(super) fn with_flag(payload: &[u8], flag: &str) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(mut o)) => {
            o.insert(flag.into(), serde_json::Value::Bool(true));
            serde_json::to_vec(&o).unwrap_or_else(|_| payload.to_vec())
        }
        _ => payload.to_vec(),
    }
}

/// Records every journaled final before passing it on to the front end, and logs one line
/// per finished request. Ends when every reply sender is gone.
pub(super) async fn record_finals(
    mut replies: mpsc::Receiver<Outgoing>,
    front: mpsc::Sender<Outgoing>,
    journal: Arc<Journal>,
    in_flight: InFlightMap,
) {
    while let Some(mut msg) = replies.recv().await {
        if let Delivery::Journaled { key, finished } = &msg.delivery {
            let (key, keep) = (key.clone(), finished.keep_for_replay());
            let entry = in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
            if entry.as_ref().is_some_and(|e| e.resumed) {
                msg.payload = with_flag(&msg.payload, "resumed");
            }
            log_finished(&key, finished, entry.as_ref());
            let payload = msg.payload.clone();
            let record_key = key.clone();
            if let Err(e) =
                blocking(&journal, move |j| j.answered(&record_key, &payload, keep)).await
            {
                tracing::error!(id = %key.id, "request journal: cannot record the final: {e}");
            }
            msg.delivery = Delivery::Recorded { key };
            // The other senders of the same key get the final too (not journaled: the
            // request's own delivery is the one recorded).
            for target in entry.map(|e| e.also).unwrap_or_default() {
                let copy = Outgoing {
                    target,
                    payload: msg.payload.clone(),
                    delivery: Delivery::Final,
                };
                if front.send(copy).await.is_err() {
                    tracing::warn!("the front end is gone: replies dropped");
                    return;
                }
            }
        }
        if front.send(msg).await.is_err() {
            tracing::warn!("the front end is gone: replies dropped (the journal keeps them)");
            return;
        }
    }
}

/// The one line a finished request leaves in the log: where it was served (`none` for an
/// error), its finish reason or error code, and its completion tokens.
fn log_finished(key: &RequestKey, finished: &Finished, entry: Option<&InFlight>) {
    let (route, outcome, tokens) = match finished {
        Finished::Answer {
            route,
            finish_reason,
            completion_tokens,
        } => (route.as_str(), finish_reason.as_str(), *completion_tokens),
        Finished::Error(code) => ("none", code.as_str(), 0),
    };
    let ms = entry.map_or(0, |e| e.received.elapsed().as_millis());
    tracing::info!(
        id = %key.id,
        route,
        outcome,
        tokens,
        ms = u64::try_from(ms).unwrap_or(u64::MAX),
        resumed = entry.is_some_and(|e| e.resumed),
        "finished"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_added_to_objects_only() {
        let v: serde_json::Value =
            serde_json::from_slice(&with_flag(br#"{"id":"a","done":true}"#, "replayed")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "a", "done": true, "replayed": true})
        );
        assert_eq!(with_flag(b"[1]", "replayed"), b"[1]".to_vec());
        assert_eq!(with_flag(b"junk", "replayed"), b"junk".to_vec());
    }

    #[test]
    fn a_key_names_its_reply_address() {
        let key = RequestKey {
            id: "a".into(),
            reply_to: "r/1".into(),
            correlation: b"c".to_vec(),
        };
        let t = key_target(&key, "client");
        assert_eq!(
            (t.topic.as_str(), t.correlation.as_deref()),
            ("r/1", Some(&b"c"[..]))
        );
        let key = RequestKey {
            correlation: Vec::new(),
            ..key
        };
        assert_eq!(key_target(&key, "client").correlation, None);
        let shared = RequestKey {
            id: "k".into(),
            reply_to: String::new(),
            correlation: Vec::new(),
        };
        assert_eq!(
            key_target(&shared, "replies/alice"),
            ReplyTarget {
                topic: "replies/alice".into(),
                correlation: None
            },
            "a key the client named replies to the journaled client"
        );
    }
}
