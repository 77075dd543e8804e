//! The intake: where every request enters, whatever front end received it. It owns the
//! rules a request meets on its way to one final reply, so that no front end repeats any
//! of them: validation, idempotency, the request journal, routing, admission to the local
//! queue or a cloud route, and the recording of every final. Nothing here knows MQTT: a
//! front end hands in a [`Submission`] (the payload, where replies go, the transport's
//! expiry), gets an [`Admission`] that says whether to acknowledge the message, and
//! delivers the [`Outgoing`] messages of the receiver [`Intake::start`] returns.
//!
//! **Idempotency.** A request's key is its id, reply address and correlation data. A
//! request whose key is in flight is attached to the running one (it gets that one's
//! answer); one whose key has a successful final in the journal's reply cache gets that
//! final again, marked `"replayed": true` (unless the transport says it is a redelivery
//! of a message it delivered before: that client has its answer); after a refusal or an
//! error a resend is a new attempt.
//!
//! **Durability.** A request is journaled (fsync'd) before the front end acknowledges it.
//! Its final is recorded in the journal before it goes out and marked delivered after.
//! At start, [`Intake::recover`] sends again every final recorded but not delivered, and
//! answers every journaled request without a final exactly once: it runs again (seeded as
//! before, without streaming, its final marked `"resumed": true`) while its deadline
//! allows, else it is answered `interrupted`.
//!
//! Besides this file: `recover` (what the journal holds from before a restart),
//! `placement` (where an admitted request goes: the local queue or a cloud route) and
//! `finals` (recording every final, answering queued requests past their deadline).

mod finals;
mod placement;
mod recover;

use crate::constrain::Constraint;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::journal::{Accepted, Journal, JournalError, Lookup, RequestKey};
use super::queue::{Job, JobReceiver, LocalQueue};
use super::route::Routing;
use super::schema::{
    ErrorCode, Limits, MAX_ID_LEN, Request, RequestError, error_json, parse_request, salvage_id,
    salvage_reply_to,
};
use super::sink::{Delivery, Outgoing, ReplyTarget};
use super::stats::{Outcome, Stats};
use finals::{answer_expired, record_finals, with_flag};
use placement::Placement;

/// Longest correlation data accepted (it is part of the journal's key).
pub const MAX_CORRELATION_BYTES: usize = super::journal::MAX_CORRELATION_BYTES;

/// A request as a front end received it.
#[derive(Clone, Debug)]
pub struct Submission {
    /// The request JSON.
    pub payload: Bytes,
    /// Where replies go, if the transport says (MQTT 5's response topic and correlation
    /// data); else the payload's `reply_to`.
    pub reply: Option<ReplyTarget>,
    /// Time left before the transport's expiry (MQTT 5's message expiry interval).
    pub expiry: Option<Duration>,
    /// The transport delivers this message again (MQTT's DUP flag): its sender does not
    /// resend it, so a final it already got is not replayed.
    pub redelivered: bool,
    /// The client's own idempotency key (HTTP's `Idempotency-Key` header, MQTT 5's
    /// `idempotency-key` user property). When given, it alone is the request's key,
    /// whatever transport brought it: the same key sent over HTTP and over MQTT runs once,
    /// and each sender gets the one final.
    pub idempotency_key: Option<String>,
    /// Who sent it, for prefix-cache isolation (an HTTP front end names the API key); the
    /// reply topic when `None`.
    pub client: Option<String>,
}

impl Submission {
    /// A submission with only a payload and where its replies go.
    pub fn new(payload: Bytes, reply: Option<ReplyTarget>) -> Submission {
        Submission {
            payload,
            reply,
            expiry: None,
            redelivered: false,
            idempotency_key: None,
            client: None,
        }
    }
}

/// What became of a submission; all but `Deferred` are acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Journaled: it will get its final.
    Accepted,
    /// The same request is in flight, or was answered and this is a redelivery.
    Attached,
    /// Answered already: refused, or its final replayed.
    Answered,
    /// Shutting down: not taken; the transport should deliver it again after a restart.
    Deferred,
}

impl Admission {
    /// Whether the front end acknowledges the message.
    pub fn acknowledge(self) -> bool {
        self != Admission::Deferred
    }
}

/// Settings of the intake.
#[derive(Clone, Copy, Debug)]
pub struct IntakeConfig {
    pub limits: Limits,
    /// Deadline of requests whose transport gives no expiry.
    pub default_deadline: Duration,
    pub max_cloud_inflight: usize,
}

/// A request accepted and not yet answered.
#[derive(Clone, Debug)]
struct InFlight {
    received: Instant,
    /// Taken back from the journal at start: its final says so.
    resumed: bool,
    /// Where its replies go.
    target: ReplyTarget,
    /// Other senders of the same key (another transport, another HTTP connection): each
    /// gets a copy of the final.
    also: Vec<ReplyTarget>,
    /// The job's cancel flag ([`Intake::cancel`]).
    cancel: Arc<AtomicBool>,
}

/// Requests accepted and not yet answered, shared with the final recorder.
type InFlightMap = Arc<Mutex<HashMap<RequestKey, InFlight>>>;

/// See the module docs.
#[derive(Debug)]
pub struct Intake {
    config: IntakeConfig,
    journal: Arc<Journal>,
    routing: Arc<Routing>,
    queue: Arc<LocalQueue>,
    stats: Arc<Stats>,
    /// Into the final recorder; taken at [`Intake::close`].
    replies: Mutex<Option<mpsc::Sender<Outgoing>>>,
    in_flight: InFlightMap,
    cloud_permits: Arc<Semaphore>,
    spills: Mutex<JoinSet<()>>,
    /// Turns true at the shutdown deadline: spills still running are cancelled.
    cancel_spills: watch::Sender<bool>,
    accepting: AtomicBool,
    /// One admission at a time from lookup to journal: two front ends delivering the same
    /// request at once must not both run it.
    admission: tokio::sync::Mutex<()>,
}

/// What [`Intake::recover`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recovery {
    /// Finals recorded before the restart but not delivered, sent again.
    pub resent: usize,
    /// Requests run again.
    pub resumed: usize,
    /// Requests whose deadline had passed, answered `interrupted`.
    pub interrupted: usize,
}

/// The key of a request that names its own idempotency key: the same whatever the
/// transport (no reply address, no correlation data; the reply address goes in the
/// journal's client column, see [`finals::key_target`]).
fn shared_key(idempotency_key: &str) -> RequestKey {
    RequestKey {
        id: idempotency_key.to_string(),
        reply_to: String::new(),
        correlation: Vec::new(),
    }
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs a journal call off the async runtime (it may wait for the disk).
async fn blocking<T: Send + 'static>(
    journal: &Arc<Journal>,
    f: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    let journal = Arc::clone(journal);
    tokio::task::spawn_blocking(move || f(&journal))
        .await
        .unwrap_or_else(|e| match e.try_into_panic() {
            // A bug in the journal: fail here as an inline call would have.
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => Err(JournalError::Unavailable(e.to_string())),
        })
}

impl Intake {
    /// The intake, the engine's job queue receiver, and the receiver of every message the
    /// front end must deliver. Spawns the final recorder on the current runtime.
    pub fn start(
        config: IntakeConfig,
        journal: Arc<Journal>,
        routing: Arc<Routing>,
        stats: Arc<Stats>,
        queue_depth: usize,
    ) -> (Arc<Intake>, JobReceiver, mpsc::Receiver<Outgoing>) {
        let recovered_room = journal.limits().max_pending;
        let (queue, jobs) = LocalQueue::new(
            queue_depth,
            recovered_room,
            Arc::clone(&stats),
            Arc::clone(&routing),
        );
        let (replies_tx, replies_rx) = mpsc::channel::<Outgoing>(1024);
        let (front_tx, front_rx) = mpsc::channel::<Outgoing>(1024);
        let in_flight: InFlightMap = Arc::default();
        tokio::spawn(record_finals(
            replies_rx,
            front_tx,
            Arc::clone(&journal),
            Arc::clone(&in_flight),
        ));
        let intake = Intake {
            config,
            journal,
            routing,
            queue: Arc::new(queue),
            stats,
            replies: Mutex::new(Some(replies_tx)),
            in_flight,
            cloud_permits: Arc::new(Semaphore::new(config.max_cloud_inflight)),
            spills: Mutex::new(JoinSet::new()),
            cancel_spills: watch::channel(false).0,
            accepting: AtomicBool::new(true),
            admission: tokio::sync::Mutex::new(()),
        };
        let intake = Arc::new(intake);
        tokio::spawn(answer_expired(Arc::downgrade(&intake)));
        (intake, jobs, front_rx)
    }

    /// A sender for replies (the engine thread's sinks use one); `None` once closed.
    pub fn reply_sender(&self) -> Option<mpsc::Sender<Outgoing>> {
        self.replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn send(&self, msg: Outgoing) {
        match self.reply_sender() {
            Some(tx) => {
                let _ = tx.send(msg).await;
            }
            None => tracing::warn!("a reply after shutdown was dropped"),
        }
    }

    /// Answers a request that was not accepted (nothing is journaled).
    async fn refuse(&self, target: Option<ReplyTarget>, id: Option<&str>, err: &RequestError) {
        self.stats.count(None, Outcome::Failed(err.code));
        tracing::info!(id = id.unwrap_or("?"), "refused: {err}");
        let Some(target) = target else {
            tracing::warn!(
                id = id.unwrap_or("?"),
                "cannot answer a refused request: it gave no reply topic"
            );
            return;
        };
        self.send(Outgoing {
            target,
            payload: error_json(id, err),
            delivery: Delivery::Final,
        })
        .await;
    }

    /// Takes in one request.
    pub async fn submit(&self, s: Submission) -> Admission {
        if !self.accepting.load(Ordering::SeqCst) {
            return Admission::Deferred;
        }
        let received = Instant::now();
        let req = match parse_request(&s.payload, &self.config.limits) {
            Ok(r) => r,
            Err(err) => {
                let target = s.reply.clone().or_else(|| {
                    salvage_reply_to(&s.payload).map(|topic| ReplyTarget {
                        topic,
                        correlation: None,
                    })
                });
                self.refuse(target, salvage_id(&s.payload).as_deref(), &err)
                    .await;
                return Admission::Answered;
            }
        };
        let target = s.reply.clone().or_else(|| {
            req.reply_to.clone().map(|topic| ReplyTarget {
                topic,
                correlation: None,
            })
        });
        let Some(target) = target else {
            tracing::warn!(id = %req.id, "request has no response topic and no reply_to: dropped");
            self.stats.count(None, Outcome::NoReplyAddress);
            return Admission::Answered;
        };
        let correlation = target.correlation.clone().unwrap_or_default();
        if let Some(k) = &s.idempotency_key
            && (k.is_empty() || k.len() > MAX_ID_LEN || k.chars().any(char::is_control))
        {
            let err = RequestError::new(
                ErrorCode::InvalidRequest,
                format!("the idempotency key must be 1 to {MAX_ID_LEN} printable characters"),
            );
            self.refuse(Some(target), Some(&req.id), &err).await;
            return Admission::Answered;
        }
        if correlation.len() > MAX_CORRELATION_BYTES {
            let err = RequestError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "the correlation data is {} bytes; the limit is {MAX_CORRELATION_BYTES}",
                    correlation.len()
                ),
            );
            self.refuse(Some(target), Some(&req.id), &err).await;
            return Admission::Answered;
        }
        let key = match &s.idempotency_key {
            Some(k) => shared_key(k),
            None => RequestKey {
                id: req.id.clone(),
                reply_to: target.topic.clone(),
                correlation: correlation.to_vec(),
            },
        };
        let client = s.client.clone().unwrap_or_else(|| target.topic.clone());

        let _admission = self.admission.lock().await;
        let lookup_key = key.clone();
        match blocking(&self.journal, move |j| j.lookup(&lookup_key)).await {
            Ok(Lookup::Pending) => {
                self.stats.duplicate();
                tracing::info!(id = %req.id, "the same request is in flight: attached to it");
                self.attach(&key, target);
                return Admission::Attached;
            }
            Ok(Lookup::Answered { .. }) if s.redelivered => {
                self.stats.duplicate();
                tracing::info!(id = %req.id, "a redelivery of an answered request: not run again");
                return Admission::Attached;
            }
            Ok(Lookup::Answered { final_payload }) => {
                self.stats.replay();
                tracing::info!(id = %req.id, "resent after its answer: the final is replayed");
                self.send(Outgoing {
                    target,
                    payload: with_flag(&final_payload, "replayed"),
                    delivery: Delivery::Final,
                })
                .await;
                return Admission::Answered;
            }
            Ok(Lookup::Unknown) => {}
            Err(e) => {
                tracing::error!(id = %req.id, "request journal: {e}");
                let err = RequestError::new(
                    ErrorCode::Internal,
                    "the request journal cannot be read; try again later",
                );
                self.refuse(Some(target), Some(&req.id), &err).await;
                return Admission::Answered;
            }
        }

        if s.expiry.is_some_and(|e| e.is_zero()) {
            let err = RequestError::new(ErrorCode::Expired, "the request had expired on arrival");
            self.refuse(Some(target), Some(&req.id), &err).await;
            return Admission::Answered;
        }
        let (prompt, constraint) = match self.prepare(&req).await {
            Ok(prepared) => prepared,
            Err(err) => {
                self.refuse(Some(target), Some(&req.id), &err).await;
                return Admission::Answered;
            }
        };
        let placement = self.place(&req, prompt.len(), &s.payload, s.expiry, false);
        let (served, cloud) = match placement {
            Placement::Refuse(err) => {
                self.refuse(Some(target), Some(&req.id), &err).await;
                return Admission::Answered;
            }
            Placement::Local(served) => (served, None),
            Placement::Cloud(served, to, permit) => (served, Some((to, permit))),
        };

        let received_unix_ms = unix_ms();
        let deadline = s.expiry.unwrap_or(self.config.default_deadline);
        let accepted = Accepted {
            key: key.clone(),
            payload: s.payload.to_vec(),
            received_unix_ms,
            deadline_unix_ms: Some(
                received_unix_ms
                    .saturating_add(u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX)),
            ),
            seed: req.sampling.seed,
            client: client.clone(),
        };
        if let Err(e) = blocking(&self.journal, move |j| j.accept(&accepted)).await {
            let err = match e {
                JournalError::Full { .. } => RequestError::new(ErrorCode::Busy, e.to_string()),
                JournalError::TooLarge { .. } => {
                    RequestError::new(ErrorCode::TooLarge, e.to_string())
                }
                _ => {
                    tracing::error!(id = %req.id, "request journal: {e}");
                    RequestError::new(
                        ErrorCode::Internal,
                        "the request journal cannot be written; try again later",
                    )
                }
            };
            self.refuse(Some(target), Some(&req.id), &err).await;
            return Admission::Answered;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                key.clone(),
                InFlight {
                    received,
                    resumed: false,
                    target: target.clone(),
                    also: Vec::new(),
                    cancel: Arc::clone(&cancel),
                },
            );
        let job = Job {
            request: req,
            prompt,
            constraint,
            key,
            client,
            target,
            received,
            deadline: s.expiry.map(|e| received + e),
            served,
            tokens: 0,
            cancel,
        };
        self.start_placed(job, cloud).await;
        Admission::Accepted
    }

    /// The prompt's ids as the engine will run them (the chat template, encoded) and the
    /// answer's grammar, off the async runtime; a prompt the tokenizer cannot encode or a
    /// schema that cannot be enforced is an invalid request.
    async fn prepare(&self, req: &Request) -> Result<(Vec<u32>, Constraint), RequestError> {
        let routing = Arc::clone(&self.routing);
        let chat = req.chat.clone();
        let output = req.output.clone();
        match tokio::task::spawn_blocking(move || routing.prepare(&chat, &output)).await {
            Ok(prepared) => prepared,
            // A bug in the tokenizer: fail here as an inline call would have.
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => Err(RequestError::new(
                    ErrorCode::Internal,
                    format!("the prompt could not be encoded: {e}"),
                )),
            },
        }
    }

    /// Another sender of an in-flight key: it gets a copy of the final, unless it is the
    /// request's own reply address (a transport's redelivery, answered there already).
    fn attach(&self, key: &RequestKey, target: ReplyTarget) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = in_flight.get_mut(key)
            && f.target != target
            && !f.also.contains(&target)
        {
            f.also.push(target);
        }
    }

    /// The sender replying to `target` went away (an HTTP client closed its connection):
    /// if nobody else waits for that request, it is cancelled (the engine stops within a
    /// token; a queued job is answered without running), and its final, `cancelled`, is
    /// recorded like any other. Returns whether a request was cancelled.
    pub fn cancel(&self, target: &ReplyTarget) -> bool {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for f in in_flight.values_mut() {
            if let Some(i) = f.also.iter().position(|t| t == target) {
                f.also.swap_remove(i);
                return false;
            }
            if &f.target == target {
                // Others waiting for the same key still get their copy of the final.
                if f.also.is_empty() {
                    f.cancel.store(true, Ordering::SeqCst);
                }
                return f.also.is_empty();
            }
        }
        false
    }

    /// Marks a final as handed to the transport.
    pub async fn delivered(&self, key: RequestKey) {
        if let Err(e) = blocking(&self.journal, move |j| j.delivered(&key)).await {
            tracing::warn!("request journal: cannot mark a final delivered: {e}");
        }
    }

    /// Stops taking requests: submissions are `Deferred` from now on.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Requests accepted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Cancels every spill still running (each answers `shutting_down`).
    pub fn cancel_spills(&self) {
        self.cancel_spills.send_replace(true);
    }

    /// Closes the local queue and the intake's own reply sender: the recorder ends once
    /// the engine thread and the spills are done.
    pub fn close(&self) {
        self.queue.close();
        self.replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Waits up to `limit` for the spills to end.
    pub async fn join_spills(&self, limit: Duration) {
        let mut spills =
            std::mem::take(&mut *self.spills.lock().unwrap_or_else(PoisonError::into_inner));
        let all = async { while spills.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("cloud requests still running at exit: aborted");
        }
    }

    /// The journal's figures, for telemetry: (unanswered, finals kept for replay).
    pub async fn journal_counts(&self) -> Option<(usize, usize)> {
        blocking(&self.journal, |j| j.counts()).await.ok()
    }

    /// The journal (for persisted settings).
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }
}
