//! The engine thread: takes accepted requests from the bounded queue into the engine's
//! session slots, several at once, and steps them together (continuous batching, see
//! [`crate::engine`]); never on the async runtime: generation is seconds of CPU work. Each
//! answer streams through its request's [`ReplySink`]. A request waits in the queue while
//! every slot is busy, or while its own session's slot is (a session's turns run one after
//! another). It returns when the queue is closed and empty and nothing runs; after
//! [`Control::cancel_all`] it stops every running generation and answers whatever is still
//! queued `shutting_down` on its way out. A job whose client went away (its own cancel
//! flag) stops within a step and is answered `cancelled`.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::notify::Heartbeat;
use super::queue::{EXPIRED_WHILE_WAITING, Job, JobReceiver};
use super::route::Routing;
use super::schema::{ErrorCode, RequestError, ServedRoute, final_json, finish_reason};
use super::sink::{Finished, Outgoing, ReplySink};
use super::stats::{Outcome, Stats};
use crate::engine::{
    Completion, Engine, EngineError, FinishReason, GenerateRequest, SeqId, StepEvent,
};
use crate::tokenizer::{ReplyParser, Tokenizer};

/// Flags the service sets to stop the engine thread.
#[derive(Debug, Default)]
pub struct Control {
    /// Cancel the running generations and refuse what is queued (the shutdown deadline
    /// passed).
    pub cancel: AtomicBool,
    /// The engine's sign of life for systemd's watchdog: beats while waiting for work and
    /// for every generated token.
    pub heartbeat: Heartbeat,
}

impl Control {
    /// Cancels the running generations and everything queued (the shutdown deadline
    /// passed): the engine thread stops them before its next step.
    pub fn cancel_all(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

/// The `cancelled` answer's message.
const CLIENT_GONE: &str = "the client went away before the answer was finished";

/// How often the idle engine thread wakes to beat.
const IDLE_BEAT: Duration = Duration::from_secs(1);

/// A request running in one of the engine's slots.
struct Running {
    job: Job,
    sink: ReplySink,
    reply: ReplyParser,
    /// Time it waited in the queue, in milliseconds.
    queue_ms: f64,
    /// When its first token came, and how many tokens the engine had generated for every
    /// request by then (the engine's throughput during this request is measured from it).
    first: Option<FirstToken>,
}

/// The moment a request's first token came.
#[derive(Clone, Copy)]
struct FirstToken {
    at: Instant,
    generated: u64,
}

/// The session key a job's request runs under in the engine: a cached prompt prefix serves
/// only the client it came from ([`crate::engine::session`]), so keys live in the client's
/// own namespace (its reply address), and guessing another client's key reveals nothing.
fn session_key(job: &Job) -> Option<String> {
    job.request
        .session
        .as_ref()
        .map(|s| format!("{}\u{0}{s}", job.client))
}

/// What the engine thread keeps between steps.
struct EngineThread {
    engine: Engine,
    tokenizer: Option<Arc<Tokenizer>>,
    running: Vec<Option<Running>>,
    /// Tokens generated so far, all requests together.
    generated: u64,
    out: mpsc::Sender<Outgoing>,
    stats: Arc<Stats>,
    control: Arc<Control>,
    routing: Arc<Routing>,
}

/// Runs jobs until the queue's senders are gone, it is empty and nothing runs.
pub fn run(
    engine: Engine,
    jobs: JobReceiver,
    out: mpsc::Sender<Outgoing>,
    stats: Arc<Stats>,
    control: Arc<Control>,
    routing: Arc<Routing>,
) {
    // Layers evaluated count as progress: a long prompt has no token for minutes.
    control
        .heartbeat
        .follow(Arc::clone(&engine.compute().layers_done));
    let mut t = EngineThread {
        tokenizer: engine.shared_tokenizer(),
        running: (0..engine.sessions()).map(|_| None).collect(),
        engine,
        generated: 0,
        out,
        stats,
        control,
        routing,
    };
    loop {
        t.stop_cancelled();
        match t.take_jobs(&jobs) {
            ControlFlow::Break(()) => break,
            ControlFlow::Continue(()) => {}
        }
        if t.engine.active() > 0 {
            t.step();
        }
    }
}

impl EngineThread {
    /// Stops what must not go on: everything at the shutdown deadline, and requests whose
    /// client went away.
    fn stop_cancelled(&mut self) {
        let shutting_down = self.control.cancel.load(Ordering::Relaxed);
        for slot in 0..self.running.len() {
            let gone = self.running[slot]
                .as_ref()
                .is_some_and(|r| shutting_down || r.job.cancel.load(Ordering::Relaxed));
            if gone && let Some(done) = self.engine.cancel(SeqId::from_slot(slot)) {
                self.finish(slot, Ok(done));
            }
        }
    }

    /// Starts queued jobs while slots are free (waiting for one when nothing runs); breaks
    /// when the queue is closed and empty and nothing runs.
    fn take_jobs(&mut self, jobs: &JobReceiver) -> ControlFlow<()> {
        // Above the hard temperature limit nothing new starts while something runs.
        if self.engine.active() > 0 && self.routing.thermal_hold().is_some() {
            return ControlFlow::Continue(());
        }
        while self.engine.active() < self.engine.sessions() {
            let idle = self.engine.active() == 0;
            let timeout = if idle { IDLE_BEAT } else { Duration::ZERO };
            let engine = &self.engine;
            let job = jobs.recv_where(timeout, |job| engine.can_start(session_key(job).as_deref()));
            match job {
                Ok(job) => self.start(job),
                Err(RecvTimeoutError::Timeout) => {
                    if idle {
                        self.control.heartbeat.beat();
                    }
                    break;
                }
                Err(RecvTimeoutError::Disconnected) if idle => return ControlFlow::Break(()),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        ControlFlow::Continue(())
    }

    /// Starts `job` in a slot, or answers it at once (shutting down, cancelled, expired,
    /// refused by the engine).
    fn start(&mut self, job: Job) {
        self.stats.queued.fetch_sub(1, Ordering::Relaxed);
        let sink = ReplySink::new(
            job.key.clone(),
            job.request.id.clone(),
            job.target.clone(),
            self.out.clone(),
        );
        if self.engine.active() == 0 {
            self.control.heartbeat.set_busy(true);
            wait_while_hot(&job, &self.control, &self.routing);
        }
        let refused = if self.control.cancel.load(Ordering::Relaxed) {
            Some((
                ErrorCode::ShuttingDown,
                "the device is shutting down; send the request again later".to_owned(),
            ))
        } else if job.cancel.load(Ordering::Relaxed) {
            Some((ErrorCode::Cancelled, CLIENT_GONE.to_owned()))
        } else if job.expired_at(Instant::now()) {
            Some((ErrorCode::Expired, EXPIRED_WHILE_WAITING.to_owned()))
        } else if self.tokenizer.is_none() {
            Some((ErrorCode::Internal, "the model has no tokenizer".to_owned()))
        } else {
            None
        };
        if let Some((code, message)) = refused {
            self.answered(&job, fail(sink, code, message));
            return;
        }
        let req = &job.request;
        let generate = GenerateRequest {
            prompt: job.prompt.clone(),
            session: session_key(&job),
            owner: Some(job.client.clone()),
            max_tokens: Some(req.max_tokens),
            sampling: req.sampling.clone(),
            stop: req.stop.clone(),
            constraint: Some(job.constraint.clone()),
        };
        match self.engine.start(&generate) {
            Ok(id) => {
                let tokenizer = self.tokenizer.as_deref().expect("checked above");
                self.running[id.slot()] = Some(Running {
                    reply: ReplyParser::new(tokenizer, req.sampling.seed),
                    queue_ms: job.received.elapsed().as_secs_f64() * 1e3,
                    job,
                    sink,
                    first: None,
                });
                self.stats
                    .running
                    .store(self.engine.active(), Ordering::Relaxed);
            }
            Err(e) => {
                let outcome = fail_with(sink, &req.id, e);
                self.answered(&job, outcome);
            }
        }
    }

    /// Follows the thread count the thermal policy allows (before every pass).
    fn set_threads(&self) {
        let threads = self.routing.local_threads();
        let pool = &self.engine.compute().pool;
        if threads != pool.threads() {
            tracing::info!(
                "local generation now on {threads} of {} threads (SoC temperature)",
                pool.capacity()
            );
            pool.set_active_threads(threads);
        }
    }

    /// One pass over every running request.
    fn step(&mut self) {
        self.set_threads();
        let mut ended: [Option<Result<Completion, EngineError>>; crate::engine::MAX_SESSIONS] =
            std::array::from_fn(|_| None);
        let (running, control, generated) = (&mut self.running, &self.control, &mut self.generated);
        self.engine.step(|id, ev| {
            let Some(r) = running[id.slot()].as_mut() else {
                return ControlFlow::Continue(());
            };
            match ev {
                StepEvent::Token(t) => {
                    control.heartbeat.beat();
                    if t.id.is_some() {
                        *generated += 1;
                    }
                    r.first.get_or_insert_with(|| FirstToken {
                        at: Instant::now(),
                        generated: *generated,
                    });
                    let (stream, sink) = (r.job.request.stream, &mut r.sink);
                    r.reply.push(t.id, t.text, &mut |piece| {
                        if stream {
                            sink.piece(&piece);
                        }
                    });
                    if r.job.cancel.load(Ordering::Relaxed) {
                        return ControlFlow::Break(());
                    }
                }
                StepEvent::Done(result) => ended[id.slot()] = Some(result),
            }
            ControlFlow::Continue(())
        });
        for (slot, result) in ended.iter_mut().enumerate() {
            if let Some(result) = result.take() {
                self.finish(slot, result);
            }
        }
    }

    /// Sends the final reply of the request in `slot`, which ended with `result`.
    fn finish(&mut self, slot: usize, result: Result<Completion, EngineError>) {
        let Some(r) = self.running[slot].take() else {
            return;
        };
        let Running {
            job,
            mut sink,
            reply,
            queue_ms,
            first,
        } = r;
        let req = &job.request;
        let stream = req.stream;
        let reply = reply.finish(&mut |piece| {
            if stream {
                sink.piece(&piece);
            }
        });
        let outcome = match result {
            Ok(done)
                if done.finish_reason == FinishReason::Cancelled
                    && !self.control.cancel.load(Ordering::Relaxed) =>
            {
                fail(
                    sink,
                    ErrorCode::Cancelled,
                    format!(
                        "{CLIENT_GONE}; generation stopped after {} tokens",
                        done.completion_tokens
                    ),
                )
            }
            Ok(done) if done.finish_reason == FinishReason::Cancelled => fail(
                sink,
                ErrorCode::ShuttingDown,
                format!(
                    "the device is shutting down; generation stopped after {} tokens",
                    done.completion_tokens
                ),
            ),
            Ok(done) => {
                self.stats.generated(done.completion_tokens);
                self.stats.observe_answer(
                    ServedRoute::Local,
                    first.map(|f| f.at.saturating_duration_since(job.received)),
                    job.received.elapsed(),
                );
                self.routing.observe_completion(done.completion_tokens);
                // The engine's throughput while this request generated (its own tokens and
                // those of the requests batched with it): the rate at which the work ahead
                // of a new request drains. A handful of tokens measures the prompt's tail
                // more than the decode speed.
                if done.completion_tokens >= 8
                    && let Some(f) = first
                {
                    let tokens = self.generated.saturating_sub(f.generated);
                    let seconds = f.at.elapsed().as_secs_f64();
                    if seconds > 0.0 {
                        self.routing.observe_rate(tokens as f64 / seconds);
                    }
                }
                let answer = Finished::Answer {
                    route: job.served.route,
                    finish_reason: finish_reason(&reply, done.finish_reason.as_str()),
                    completion_tokens: u64::try_from(done.completion_tokens).unwrap_or(u64::MAX),
                };
                sink.finish(
                    final_json(&req.id, &reply, &done, &job.served, queue_ms),
                    answer,
                );
                Outcome::Ok
            }
            Err(e) => fail_with(sink, &req.id, e),
        };
        self.answered(&job, outcome);
    }

    /// Counts a request's final answer and gives back what it held.
    fn answered(&mut self, job: &Job, outcome: Outcome) {
        self.routing.local_done(job.tokens);
        self.stats.count(Some(ServedRoute::Local), outcome);
        let active = self.engine.active();
        self.stats.running.store(active, Ordering::Relaxed);
        if active == 0 {
            self.control.heartbeat.set_busy(false);
        }
    }
}

/// Answers with an error; returns its outcome for the counters.
fn fail(sink: ReplySink, code: ErrorCode, message: String) -> Outcome {
    sink.fail(&RequestError::new(code, message));
    Outcome::Failed(code)
}

/// Answers the engine's refusal or failure of request `id`.
fn fail_with(sink: ReplySink, id: &str, e: EngineError) -> Outcome {
    match e {
        EngineError::ContextLength(m) => fail(sink, ErrorCode::ContextLength, m),
        e @ (EngineError::Sampling(_) | EngineError::Stop(_) | EngineError::Constraint(_)) => {
            fail(sink, ErrorCode::InvalidRequest, e.to_string())
        }
        e => {
            tracing::error!(id = %id, "generation failed: {e}");
            fail(sink, ErrorCode::Internal, format!("generation failed: {e}"))
        }
    }
}

/// Above the hard temperature limit nothing new starts here: the job waits for the SoC to
/// cool below the hard exit threshold, until its deadline (then [`EngineThread::start`] answers `expired`)
/// or shutdown.
fn wait_while_hot(job: &Job, control: &Control, routing: &Routing) {
    let mut logged = false;
    while let Some(hot) = routing.thermal_hold() {
        if control.cancel.load(Ordering::Relaxed)
            || job.cancel.load(Ordering::Relaxed)
            || job.expired_at(Instant::now())
        {
            return;
        }
        if !logged {
            let reason = hot.reason().unwrap_or_default();
            tracing::info!(id = %job.request.id, "waiting for the SoC to cool: {reason}");
            logged = true;
        }
        // Waiting to cool is progress, not a wedge.
        control.heartbeat.beat();
        std::thread::sleep(Duration::from_millis(200));
    }
}
