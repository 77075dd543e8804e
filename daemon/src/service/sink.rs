//! The one way out for a request's answer. A [`ReplySink`] streams chunks and then ends with
//! exactly one final message: `finish`/`fail` consume it, and dropping it unfinished (a
//! panic, a forgotten path) sends an `internal` error, so a client always gets its final.
//! Sinks are used on the engine thread (their sends block); the MQTT side answers the
//! requests it refuses itself, asynchronously.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::schema::{ErrorCode, RequestError, chunk_json, error_json};

/// Where replies go: an MQTT topic and the request's correlation data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTarget {
    pub topic: String,
    pub correlation: Option<Bytes>,
}

/// A message for the MQTT publisher.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub target: ReplyTarget,
    pub payload: Vec<u8>,
    /// Whether this ends a request (for bookkeeping).
    pub is_final: bool,
}

/// Streams one request's replies.
#[derive(Debug)]
pub struct ReplySink {
    id: Option<String>,
    target: Option<ReplyTarget>,
    tx: mpsc::Sender<Outgoing>,
    seq: u64,
    done: bool,
}

impl ReplySink {
    /// A sink for request `id` replying to `target` (`None`: the client gave no way to
    /// reply, so replies are dropped, but the bookkeeping still happens).
    pub fn new(
        id: Option<String>,
        target: Option<ReplyTarget>,
        tx: mpsc::Sender<Outgoing>,
    ) -> ReplySink {
        ReplySink {
            id,
            target,
            tx,
            seq: 0,
            done: false,
        }
    }

    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn send(&self, payload: Vec<u8>, is_final: bool) {
        let Some(target) = &self.target else { return };
        let msg = Outgoing {
            target: target.clone(),
            payload,
            is_final,
        };
        // Sinks live on the engine thread: this blocks while the publisher is behind, which
        // paces generation to what the network takes. It fails only when the publisher is
        // gone (shutdown), and then there is nobody left to tell.
        let _ = self.tx.blocking_send(msg);
    }

    /// Sends the next piece of the answer (empty pieces are skipped).
    pub fn chunk(&mut self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        let payload = chunk_json(self.id.as_deref().unwrap_or(""), self.seq, delta);
        self.seq += 1;
        self.send(payload, false);
    }

    /// Chunks sent so far.
    pub fn chunks(&self) -> u64 {
        self.seq
    }

    /// Ends the request with its final reply (already serialized).
    pub fn finish(mut self, payload: Vec<u8>) {
        self.done = true;
        self.send(payload, true);
    }

    /// Ends the request with an error.
    pub fn fail(mut self, err: &RequestError) {
        self.done = true;
        self.send(error_json(self.id.as_deref(), err), true);
    }
}

impl Drop for ReplySink {
    fn drop(&mut self) {
        if !self.done {
            let err = RequestError::new(ErrorCode::Internal, "the request ended without an answer");
            self.send(error_json(self.id.as_deref(), &err), true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_final_even_when_dropped() {
        // Sinks block on a full channel: run them off the async runtime, as the engine does.
        let (tx, mut rx) = mpsc::channel(16);
        let target = ReplyTarget {
            topic: "r".into(),
            correlation: None,
        };
        let mut s = ReplySink::new(Some("q".into()), Some(target.clone()), tx.clone());
        s.chunk("a");
        s.chunk("");
        s.chunk("b");
        drop(s);
        let msgs: Vec<Outgoing> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(msgs.len(), 3);
        assert!(!msgs[0].is_final && !msgs[1].is_final && msgs[2].is_final);
        let last: serde_json::Value = serde_json::from_slice(&msgs[2].payload).unwrap();
        assert_eq!(last["error"]["code"], "internal");
        let first: serde_json::Value = serde_json::from_slice(&msgs[1].payload).unwrap();
        assert_eq!(
            (first["seq"].as_u64(), first["delta"].as_str()),
            (Some(1), Some("b"))
        );

        let s = ReplySink::new(Some("q".into()), Some(target), tx);
        s.finish(b"{}".to_vec());
        let msgs: Vec<Outgoing> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            msgs.len(),
            1,
            "finish sends one final and the drop nothing more"
        );
    }
}
