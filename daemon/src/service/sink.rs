//! The one way out for a request's answer. A [`ReplySink`] streams chunks and then ends with
//! exactly one final message: `finish`/`fail` consume it, and dropping it unfinished (a
//! panic, a forgotten path) sends an `internal` error, so a client always gets its final.
//! Sinks are used on the engine thread (their sends block); the intake answers the
//! requests it refuses itself, asynchronously.
//!
//! Every message says how it must be delivered ([`Delivery`]): the final of a journaled
//! request is recorded in the journal before it goes out and marked delivered after, so
//! that a crash in between cannot lose it (see [`super::intake`]).

use bytes::Bytes;
use tokio::sync::mpsc;

use super::journal::RequestKey;
use super::schema::{ErrorCode, RequestError, ServedRoute, error_json, piece_json};
use crate::tokenizer::ReplyPiece;

/// Where replies go: a topic and the request's correlation data (MQTT 5's response topic
/// and correlation data, or an MQTT 3.1.1 client's `reply_to`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTarget {
    pub topic: String,
    pub correlation: Option<Bytes>,
}

/// Reply addresses a front end makes for one client connection (an HTTP request's) start
/// with this: no MQTT client can name them (reply topics may not start with `$`), and they
/// are gone with the connection, so a request pending on one after a restart has nobody
/// to answer.
pub const CONNECTION_PREFIX: &str = "$http";

impl ReplyTarget {
    /// Whether the address lives only as long as a client's connection (see
    /// [`CONNECTION_PREFIX`]).
    pub fn is_connection_bound(topic: &str) -> bool {
        topic
            .strip_prefix(CONNECTION_PREFIX)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// How a message is delivered.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// A streamed piece of an answer.
    Chunk,
    /// A final that is not journaled: a refusal before the request was accepted, or a
    /// replay of a final the journal already holds.
    Final,
    /// The final of a journaled request, to be recorded before it is sent; `finished`
    /// says what it is (an answer is kept to answer a resend again).
    Journaled { key: RequestKey, finished: Finished },
    /// The final of a journaled request, already recorded: mark it delivered once sent.
    Recorded { key: RequestKey },
}

/// What a journaled final says, for the line the finished request leaves in the log and
/// for the journal (an answer is kept for replay, an error is not).
#[derive(Clone, Debug, PartialEq)]
pub enum Finished {
    /// An answer: where it was served, why generation stopped (`finish_reason`), and the
    /// completion tokens (0 when the cloud did not say).
    Answer {
        route: ServedRoute,
        finish_reason: String,
        completion_tokens: u64,
    },
    /// An error reply, with its code.
    Error(ErrorCode),
}

impl Finished {
    /// Whether the final is an answer, kept to answer a resend of the request again.
    pub fn keep_for_replay(&self) -> bool {
        matches!(self, Finished::Answer { .. })
    }
}

/// A message for the front end that accepted the request.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub target: ReplyTarget,
    pub payload: Vec<u8>,
    pub delivery: Delivery,
}

impl Outgoing {
    /// Whether this ends a request.
    pub fn is_final(&self) -> bool {
        self.delivery != Delivery::Chunk
    }

    /// The final error reply of request `id`, journaled under `key`.
    pub fn journaled_error(
        key: &RequestKey,
        id: &str,
        target: &ReplyTarget,
        err: &RequestError,
    ) -> Outgoing {
        Outgoing {
            target: target.clone(),
            payload: error_json(Some(id), err),
            delivery: Delivery::Journaled {
                key: key.clone(),
                finished: Finished::Error(err.code),
            },
        }
    }
}

/// Streams one journaled request's replies.
#[derive(Debug)]
pub struct ReplySink {
    key: RequestKey,
    /// The request's id, which its replies carry (the key's id is the client's idempotency
    /// key when it gave one).
    id: String,
    target: ReplyTarget,
    tx: mpsc::Sender<Outgoing>,
    seq: u64,
    done: bool,
}

impl ReplySink {
    /// A sink for request `id` journaled under `key`, replying to `target`.
    pub fn new(
        key: RequestKey,
        id: String,
        target: ReplyTarget,
        tx: mpsc::Sender<Outgoing>,
    ) -> ReplySink {
        ReplySink {
            key,
            id,
            target,
            tx,
            seq: 0,
            done: false,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn send(&self, payload: Vec<u8>, delivery: Delivery) {
        let msg = Outgoing {
            target: self.target.clone(),
            payload,
            delivery,
        };
        // Sinks live on the engine thread: this blocks while the front end is behind, which
        // paces generation to what the network takes. It fails only when the front end is
        // gone (the end of a shutdown), and then there is nobody left to tell; the journal
        // still holds the request, so the next start answers it.
        let _ = self.tx.blocking_send(msg);
    }

    fn send_final(&self, payload: Vec<u8>, finished: Finished) {
        let delivery = Delivery::Journaled {
            key: self.key.clone(),
            finished,
        };
        self.send(payload, delivery);
    }

    /// Sends the next piece of text (empty pieces are skipped).
    pub fn chunk(&mut self, delta: &str) {
        self.piece(&ReplyPiece::Content(delta));
    }

    /// Sends the next piece of the answer (empty text is skipped).
    pub fn piece(&mut self, piece: &ReplyPiece<'_>) {
        if matches!(
            piece,
            ReplyPiece::Content("")
                | ReplyPiece::Reasoning("")
                | ReplyPiece::CallArguments { text: "", .. }
        ) {
            return;
        }
        let payload = piece_json(&self.id, self.seq, piece);
        self.seq += 1;
        self.send(payload, Delivery::Chunk);
    }

    /// Chunks sent so far.
    pub fn chunks(&self) -> u64 {
        self.seq
    }

    /// Ends the request with its (successful) final reply, already serialized, and what
    /// it says (a [`Finished::Answer`]).
    pub fn finish(mut self, payload: Vec<u8>, answer: Finished) {
        self.done = true;
        self.send_final(payload, answer);
    }

    /// Ends the request with an error.
    pub fn fail(mut self, err: &RequestError) {
        self.done = true;
        self.send_final(error_json(Some(&self.id), err), Finished::Error(err.code));
    }
}

impl Drop for ReplySink {
    fn drop(&mut self) {
        if !self.done {
            let err = RequestError::new(ErrorCode::Internal, "the request ended without an answer");
            self.send_final(error_json(Some(&self.id), &err), Finished::Error(err.code));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RequestKey {
        RequestKey {
            id: "q".into(),
            reply_to: "r".into(),
            correlation: Vec::new(),
        }
    }

    #[test]
    fn exactly_one_final_even_when_dropped() {
        // Sinks block on a full channel: run them off the async runtime, as the engine does.
        let (tx, mut rx) = mpsc::channel(16);
        let target = ReplyTarget {
            topic: "r".into(),
            correlation: None,
        };
        let mut s = ReplySink::new(key(), "q".into(), target.clone(), tx.clone());
        s.chunk("a");
        s.chunk("");
        s.chunk("b");
        drop(s);
        let msgs: Vec<Outgoing> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(msgs.len(), 3);
        assert!(!msgs[0].is_final() && !msgs[1].is_final() && msgs[2].is_final());
        assert_eq!(
            msgs[2].delivery,
            Delivery::Journaled {
                key: key(),
                finished: Finished::Error(ErrorCode::Internal)
            },
            "an unfinished request's final is journaled as an internal error"
        );
        let last: serde_json::Value = serde_json::from_slice(&msgs[2].payload).unwrap();
        assert_eq!(last["error"]["code"], "internal");
        let first: serde_json::Value = serde_json::from_slice(&msgs[1].payload).unwrap();
        assert_eq!(
            (first["seq"].as_u64(), first["delta"].as_str()),
            (Some(1), Some("b"))
        );

        let s = ReplySink::new(key(), "q".into(), target, tx);
        let answer = Finished::Answer {
            route: ServedRoute::Local,
            finish_reason: "stop".into(),
            completion_tokens: 3,
        };
        assert!(answer.keep_for_replay());
        s.finish(b"{}".to_vec(), answer.clone());
        let msgs: Vec<Outgoing> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            msgs.len(),
            1,
            "finish sends one final and the drop nothing more"
        );
        assert_eq!(
            msgs[0].delivery,
            Delivery::Journaled {
                key: key(),
                finished: answer
            }
        );
        assert!(!Finished::Error(ErrorCode::Internal).keep_for_replay());
    }
}
