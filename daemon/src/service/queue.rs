//! The local engine's queue: accepted requests waiting for the engine thread, bounded by
//! `service.queue`. Every way into it goes through [`LocalQueue::admit`], which keeps the
//! queue depth and the routing estimate of the work ahead in step with the jobs.
//!
//! It has room for more than the configured depth: requests recovered from the journal
//! after a crash must always find a place (they were accepted before), while new ones are
//! refused at the configured depth. A job whose deadline passes while it waits is taken
//! out ([`LocalQueue::take_expired`]) so that it is answered at its expiry and frees its
//! place, rather than when the engine reaches it. Closing the queue (shutdown): the engine
//! thread finishes what is queued and returns, and a late admission (a cloud request
//! falling back to the engine) is refused, never lost.

use crate::constrain::Constraint;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::journal::RequestKey;
use super::route::Routing;
use super::schema::{Request, RequestError, Served};
use super::sink::{Outgoing, ReplyTarget};
use super::stats::Stats;

/// An accepted request waiting for the engine.
#[derive(Debug)]
pub struct Job {
    pub request: Request,
    /// The prompt's ids as the engine runs them ([`Routing::prepare`]): counted for routing,
    /// encoded once.
    pub prompt: Vec<u32>,
    /// The answer's grammar, compiled with the prompt ([`Routing::prepare`]).
    pub constraint: Constraint,
    /// Its idempotency key, under which the journal holds it.
    pub key: RequestKey,
    pub target: ReplyTarget,
    /// Who sent it: a cached prompt prefix is reused only for the same client (see
    /// [`crate::engine::session`]).
    pub client: String,
    pub received: Instant,
    /// Not started by then, it is answered `expired`.
    pub deadline: Option<Instant>,
    /// The routing decision, for the final reply.
    pub served: Served,
    /// What [`Routing::local_admitted`] counted for it.
    pub tokens: u64,
    /// Set when its client went away ([`super::intake::Intake::cancel`]): the engine
    /// stops within a token, and a job not started yet is answered without running.
    pub cancel: Arc<AtomicBool>,
}

/// The message of the `expired` answer to a job whose deadline passed before it started.
pub const EXPIRED_WHILE_WAITING: &str = "the request's message expiry passed while it waited";

impl Job {
    /// Its final error reply, journaled under its key, carrying its id, to its client.
    pub fn error_reply(&self, err: &RequestError) -> Outgoing {
        Outgoing::journaled_error(&self.key, &self.request.id, &self.target, err)
    }

    /// Whether its deadline is `now` or past.
    pub fn expired_at(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }
}

/// Why a job was not queued; the job comes back so that the caller can answer it.
#[derive(Debug)]
pub enum Refused {
    /// `service.queue` requests are waiting already.
    Full(Box<Job>),
    /// The service is shutting down.
    Closed(Box<Job>),
}

/// The jobs, and whether the queue still takes any.
#[derive(Debug, Default)]
struct Waiting {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// What the two ends share.
#[derive(Debug, Default)]
struct Shared {
    waiting: Mutex<Waiting>,
    /// Signalled on every job queued and on closing.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The engine thread's end of the queue.
#[derive(Debug)]
pub struct JobReceiver {
    shared: Arc<Shared>,
}

impl JobReceiver {
    /// The oldest job, waiting up to `timeout` for one; `Disconnected` once the queue is
    /// closed and empty.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Job, RecvTimeoutError> {
        self.recv_where(timeout, |_| true)
    }

    /// The oldest job that `can_start` accepts (one whose session's slot is free), waiting
    /// up to `timeout` for one; `Disconnected` once the queue is closed and empty.
    pub fn recv_where(
        &self,
        timeout: Duration,
        mut can_start: impl FnMut(&Job) -> bool,
    ) -> Result<Job, RecvTimeoutError> {
        let end = Instant::now() + timeout;
        let mut waiting = self.shared.lock();
        loop {
            if let Some(i) = waiting.jobs.iter().position(&mut can_start) {
                return Ok(waiting.jobs.remove(i).expect("found just now"));
            }
            if waiting.closed {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            waiting = self
                .shared
                .changed
                .wait_timeout(waiting, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The sending side of the engine's queue.
#[derive(Debug)]
pub struct LocalQueue {
    shared: Arc<Shared>,
    depth: usize,
    /// The configured depth plus the room kept for recovered jobs.
    room: usize,
    stats: Arc<Stats>,
    routing: Arc<Routing>,
}

impl LocalQueue {
    /// A queue refusing new work beyond `depth` waiting jobs, with room for `recovered`
    /// more (requests taken back from the journal at start).
    pub fn new(
        depth: usize,
        recovered: usize,
        stats: Arc<Stats>,
        routing: Arc<Routing>,
    ) -> (LocalQueue, JobReceiver) {
        let shared = Arc::new(Shared::default());
        let queue = LocalQueue {
            shared: Arc::clone(&shared),
            depth,
            room: depth + recovered,
            stats,
            routing,
        };
        (queue, JobReceiver { shared })
    }

    /// Whether a new job would be refused as `Full` now.
    pub fn is_full(&self) -> bool {
        self.stats.queued.load(Ordering::SeqCst) >= self.depth
    }

    /// Queues a new job (refused at the configured depth), counting it in the queue depth
    /// and in the routing estimate of the work ahead.
    pub fn admit(&self, job: Job) -> Result<(), Refused> {
        if self.is_full() {
            return Err(Refused::Full(Box::new(job)));
        }
        self.push(job)
    }

    /// Queues a job taken back from the journal: it was accepted before the restart, so
    /// the configured depth does not apply (the room kept for recovered jobs does).
    pub fn readmit(&self, job: Job) -> Result<(), Refused> {
        self.push(job)
    }

    fn push(&self, mut job: Job) -> Result<(), Refused> {
        let mut waiting = self.shared.lock();
        if waiting.closed {
            return Err(Refused::Closed(Box::new(job)));
        }
        if waiting.jobs.len() >= self.room {
            // Only when more requests were recovered than the room made for them.
            return Err(Refused::Full(Box::new(job)));
        }
        job.tokens = self.routing.local_admitted(&job.request);
        self.stats.queued.fetch_add(1, Ordering::SeqCst);
        waiting.jobs.push_back(job);
        self.shared.changed.notify_one();
        Ok(())
    }

    /// Takes out the jobs whose deadline is `now` or past, uncounting them; the caller
    /// answers them `expired`.
    pub fn take_expired(&self, now: Instant) -> Vec<Job> {
        let mut waiting = self.shared.lock();
        if !waiting.jobs.iter().any(|j| j.expired_at(now)) {
            return Vec::new();
        }
        let (expired, kept): (VecDeque<Job>, VecDeque<Job>) =
            waiting.jobs.drain(..).partition(|j| j.expired_at(now));
        waiting.jobs = kept;
        for job in &expired {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
            self.routing.local_done(job.tokens);
        }
        expired.into()
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Stops taking jobs: the engine thread drains what is queued, then returns.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}
