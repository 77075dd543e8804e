//! The MQTT side of the chaos tests: a [`Collector`] that keeps every message seen on its
//! filters (reconnecting with its persistent session whenever the broker comes back), a
//! [`Requester`] that publishes requests and records which ones the broker acknowledged,
//! and the checks every case ends with: per request, its chunks and finals.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mqtt5::{Connection, Message, Options, PublishProps};

/// Every message a collector has received, in order of arrival.
#[derive(Debug, Default)]
struct Inbox {
    messages: Mutex<Vec<Message>>,
    arrived: Condvar,
}

/// A subscriber that keeps everything it receives, across broker restarts: it reconnects
/// (every 20 ms while the broker is away) with its persistent session, and subscribes again
/// each time (a broker without persistence has forgotten the subscription).
#[derive(Debug)]
pub struct Collector {
    inbox: Arc<Inbox>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    /// Connects as `client_id` and subscribes to `filters`; returns once subscribed.
    pub fn start(port: u16, client_id: &str, filters: &[&str]) -> Result<Collector, String> {
        let opts = Options {
            client_id: client_id.to_string(),
            clean_start: true,
            session_expiry_secs: 600,
        };
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        // A broker that has just opened its port may still be settling: a few tries.
        let mut attempt = 0;
        let mut first = loop {
            match Connection::connect(port, &opts, Duration::from_secs(5)) {
                Ok(c) => break c,
                Err(e) if attempt >= 20 => {
                    return Err(format!(
                        "collector {client_id}: connecting to port {port}: {e}"
                    ));
                }
                Err(_) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
        first
            .subscribe(&refs, Duration::from_secs(5))
            .map_err(|e| format!("collector {client_id}: {e}"))?;
        let inbox = Arc::new(Inbox::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (inbox, stop) = (Arc::clone(&inbox), Arc::clone(&stop));
            let reconnect = Options {
                clean_start: false,
                ..opts
            };
            std::thread::Builder::new()
                .name(format!("collector-{client_id}"))
                .spawn(move || collect(port, reconnect, filters, first, &inbox, &stop))
                .map_err(|e| format!("spawning the collector thread: {e}"))?
        };
        Ok(Collector {
            inbox,
            stop,
            thread: Some(thread),
        })
    }

    /// Runs `f` over every message so far.
    pub fn with<R>(&self, f: impl FnOnce(&[Message]) -> R) -> R {
        let m = self
            .inbox
            .messages
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f(&m)
    }

    /// A copy of every message so far.
    pub fn messages(&self) -> Vec<Message> {
        self.with(<[Message]>::to_vec)
    }

    /// Messages from index `from` on (for consumers that keep their own cursor).
    pub fn since(&self, from: usize) -> Vec<Message> {
        self.with(|m| m.get(from..).map(<[Message]>::to_vec).unwrap_or_default())
    }

    /// Waits until `done` holds over the messages (true) or `timeout` passes (false).
    pub fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&[Message]) -> bool) -> bool {
        let end = Instant::now() + timeout;
        let mut m = self
            .inbox
            .messages
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        loop {
            if done(&m) {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            m = self
                .inbox
                .arrived
                .wait_timeout(m, left.min(Duration::from_millis(200)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits for an `online` on `spillway/DEVICE/status` received after `since`: the daemon
    /// (re)started, or reconnected to a restarted broker, after `since` is connected.
    ///
    /// A retained copy counts too: when the broker lost this collector's session (a kill
    /// before its save), the collector subscribes again and gets the retained status
    /// instead of the live one. A stale retained `online` cannot come after a daemon
    /// restart: its SIGTERM or its will replaced it with `offline`.
    pub fn wait_online(&self, device: &str, since: Instant, timeout: Duration) -> bool {
        let topic = format!("spillway/{device}/status");
        self.wait_until(timeout, |m| {
            m.iter()
                .any(|m| m.at >= since && m.topic == topic && m.payload == b"online")
        })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn collect(
    port: u16,
    opts: Options,
    filters: Vec<String>,
    first: Connection,
    inbox: &Inbox,
    stop: &AtomicBool,
) {
    let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
    let mut conn = Some(first);
    while !stop.load(Ordering::SeqCst) {
        let Some(c) = conn.as_mut() else {
            conn = Connection::connect(port, &opts, Duration::from_secs(2))
                .ok()
                .and_then(|mut c| c.subscribe(&refs, Duration::from_secs(2)).ok().map(|()| c));
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        };
        match c.recv(Duration::from_millis(50)) {
            Some(msg) => {
                inbox
                    .messages
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(msg);
                inbox.arrived.notify_all();
            }
            None if c.is_closed() => {
                // Messages the reader kept before the socket died are still in the channel.
                while let Some(msg) = c.recv(Duration::ZERO) {
                    inbox
                        .messages
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(msg);
                }
                inbox.arrived.notify_all();
                conn = None;
            }
            None => {}
        }
    }
    if let Some(c) = conn {
        c.disconnect();
    }
}

/// A request as sent: what identifies it (id, reply topic, correlation data) and the JSON.
#[derive(Clone, Debug)]
pub struct Request {
    pub id: String,
    pub reply_topic: String,
    pub correlation: Vec<u8>,
    pub payload: String,
    pub expiry_secs: Option<u32>,
}

impl Request {
    /// A request for `max_tokens` tokens that never leaves the board (`route: local`), with
    /// a fixed seed; `extra` fields are merged into the JSON.
    pub fn local(
        id: &str,
        reply_topic: &str,
        prompt: &str,
        max_tokens: u32,
        extra: Value,
    ) -> Request {
        let mut json = serde_json::json!({
            "id": id,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "seed": 11,
            "route": "local",
        });
        if let (Some(obj), Some(more)) = (json.as_object_mut(), extra.as_object()) {
            for (k, v) in more {
                obj.insert(k.clone(), v.clone());
            }
        }
        Request {
            id: id.to_string(),
            reply_topic: reply_topic.to_string(),
            correlation: format!("corr-{id}").into_bytes(),
            payload: json.to_string(),
            expiry_secs: None,
        }
    }

    fn props(&self) -> PublishProps {
        PublishProps {
            response_topic: Some(self.reply_topic.clone()),
            correlation: Some(self.correlation.clone()),
            expiry_secs: self.expiry_secs,
        }
    }
}

/// A publish of a request and whether the broker acknowledged it.
#[derive(Clone, Debug)]
pub struct Sent {
    pub request: Request,
    /// PUBACK with reason code 0 or 0x10 (no matching subscribers: still accepted).
    pub acked: bool,
    pub at: Instant,
}

/// Publishes requests (a clean session of its own), reconnecting when the broker is back.
#[derive(Debug)]
pub struct Requester {
    port: u16,
    opts: Options,
    conn: Option<Connection>,
    /// Every publish, acknowledged or not.
    pub sent: Vec<Sent>,
}

impl Requester {
    pub fn new(port: u16, client_id: &str) -> Requester {
        Requester {
            port,
            opts: Options {
                client_id: client_id.to_string(),
                clean_start: true,
                session_expiry_secs: 0,
            },
            conn: None,
            sent: Vec::new(),
        }
    }

    fn connection(&mut self) -> Option<&mut Connection> {
        if self.conn.as_ref().is_some_and(Connection::is_closed) {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Connection::connect(self.port, &self.opts, Duration::from_secs(2)).ok();
        }
        self.conn.as_mut()
    }

    /// Publishes `req` to `topic` at QoS 1 and waits up to `ack_wait` for the PUBACK;
    /// returns whether it came. Recorded in [`Requester::sent`] either way (unless the
    /// broker could not even be reached).
    pub fn send(&mut self, topic: &str, req: &Request, ack_wait: Duration) -> bool {
        let props = req.props();
        let Some(c) = self.connection() else {
            return false;
        };
        let at = Instant::now();
        let acked = match c.publish(topic, req.payload.as_bytes(), &props) {
            Ok(pkid) => matches!(c.wait_ack(pkid, ack_wait), Some(0 | 0x10)),
            Err(_) => false,
        };
        self.sent.push(Sent {
            request: req.clone(),
            acked,
            at,
        });
        acked
    }

    /// Publishes `req` twice as one QoS 1 message and its redelivery: the same packet id,
    /// the second with DUP set (as a client does when the first PUBACK was lost), with
    /// `between` run in between. Waits for both acknowledgements.
    pub fn send_with_redelivery(
        &mut self,
        topic: &str,
        req: &Request,
        between: impl FnOnce(),
    ) -> bool {
        let props = req.props();
        let Some(c) = self.connection() else {
            return false;
        };
        let at = Instant::now();
        let first = c
            .publish(topic, req.payload.as_bytes(), &props)
            .ok()
            .and_then(|pkid| {
                c.wait_ack(pkid, Duration::from_secs(5))
                    .map(|code| (pkid, code))
            });
        let acked = match first {
            Some((pkid, 0 | 0x10)) => {
                between();
                c.publish_raw(topic, req.payload.as_bytes(), &props, Some(pkid), true)
                    .is_ok()
                    && matches!(c.wait_ack(pkid, Duration::from_secs(5)), Some(0 | 0x10))
            }
            _ => false,
        };
        self.sent.push(Sent {
            request: req.clone(),
            acked,
            at,
        });
        acked
    }
}

/// What came back for one request (matched by reply topic, correlation data and id).
#[derive(Clone, Debug, Default)]
pub struct Replies {
    /// Chunks in arrival order, with the time they arrived.
    pub chunks: Vec<(Instant, Value)>,
    /// Final replies (`done: true`), in arrival order.
    pub finals: Vec<(Instant, Value)>,
    /// Messages that were byte-for-byte copies of an earlier one (MQTT QoS 1 may deliver a
    /// message twice when the broker dies between receiving and acknowledging it).
    pub identical_copies: usize,
    /// Chunks that arrived after a final.
    pub chunks_after_final: usize,
}

impl Replies {
    /// Collects the replies to `req` from `msgs`.
    pub fn of(msgs: &[Message], req: &Request) -> Replies {
        let mut r = Replies::default();
        let mut seen: Vec<&[u8]> = Vec::new();
        for m in msgs {
            if m.topic != req.reply_topic || m.correlation.as_deref() != Some(&req.correlation[..])
            {
                continue;
            }
            let j = m.json();
            if j["id"] != req.id.as_str() {
                continue;
            }
            if seen.contains(&m.payload.as_slice()) {
                r.identical_copies += 1;
                continue;
            }
            seen.push(&m.payload);
            if j["done"] == true {
                r.finals.push((m.at, j));
            } else {
                if !r.finals.is_empty() {
                    r.chunks_after_final += 1;
                }
                r.chunks.push((m.at, j));
            }
        }
        r
    }

    /// The streamed text (chunks' deltas in order).
    pub fn streamed(&self) -> String {
        self.chunks
            .iter()
            .filter_map(|(_, c)| c["delta"].as_str())
            .collect()
    }

    /// Checks the promise for one publish: exactly one final; chunks numbered 0..n without
    /// gaps or repeats, all before it; identical copies only when `copies_allowed` (a
    /// broker was killed). Across a broker kill -9 chunks are best effort, so then they
    /// may come out of order or with gaps (rumqttc resends unacknowledged publishes in
    /// packet-id order, not sending order, and mosquitto loses what it acknowledged since
    /// its last autosave), but never with a number the answer did not have. Returns the
    /// final.
    pub fn answered_once(&self, copies_allowed: bool) -> Result<&Value, String> {
        let finals: Vec<&Value> = self.finals.iter().map(|(_, f)| f).collect();
        if finals.len() != 1 {
            return Err(format!("{} finals (want 1): {finals:?}", finals.len()));
        }
        let seqs: Vec<u64> = self
            .chunks
            .iter()
            .map(|(_, c)| c["seq"].as_u64().unwrap_or(u64::MAX))
            .collect();
        if copies_allowed {
            let tokens = finals[0]["usage"]["completion_tokens"].as_u64();
            if let Some(bad) = seqs.iter().find(|&&s| tokens.is_some_and(|t| s >= t)) {
                return Err(format!(
                    "chunk seq {bad} past the answer's {tokens:?} tokens"
                ));
            }
        } else if seqs.iter().enumerate().any(|(i, &s)| s != i as u64) {
            return Err(format!("chunk seqs are not 0..{}: {seqs:?}", seqs.len()));
        }
        if self.chunks_after_final > 0 {
            return Err(format!(
                "{} chunks after the final",
                self.chunks_after_final
            ));
        }
        if self.identical_copies > 0 && !copies_allowed {
            return Err(format!(
                "{} byte-identical copies of replies",
                self.identical_copies
            ));
        }
        Ok(finals[0])
    }
}

/// The error code of a final (`""` for a success).
pub fn error_code(fin: &Value) -> &str {
    fin["error"]["code"].as_str().unwrap_or("")
}

/// Every message (topic or payload) that contains the canary.
pub fn canary_in_messages<'a>(msgs: &'a [Message], canary: &super::Canary) -> Vec<&'a Message> {
    msgs.iter()
        .filter(|m| {
            canary.leaks_in(&m.topic) || canary.leaks_in(&String::from_utf8_lossy(&m.payload))
        })
        .collect()
}
