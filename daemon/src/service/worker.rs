//! The engine thread: takes accepted requests from the bounded queue one at a time, runs
//! them on the engine (never on the async runtime: generation is seconds of CPU work), and
//! streams the answer through the request's [`ReplySink`]. It returns when the queue is
//! closed and empty; after [`Control::cancel_all`] it stops the running generation and
//! answers whatever is still queued `shutting_down` on its way out. A job whose client went
//! away (its own cancel flag) stops within a token and is answered `cancelled`.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::notify::Heartbeat;
use super::queue::{EXPIRED_WHILE_WAITING, Job, JobReceiver};
use super::route::Routing;
use super::schema::{ErrorCode, RequestError, ServedRoute, final_json, finish_reason};
use super::sink::{Finished, Outgoing, ReplySink};
use super::stats::{Outcome, Stats};
use crate::engine::{Engine, EngineError, FinishReason, GenerateRequest};
use crate::tokenizer::ReplyParser;

/// Flags the service sets to stop the engine thread.
#[derive(Debug, Default)]
pub struct Control {
    /// Cancel the running generation and refuse what is queued (the shutdown deadline
    /// passed).
    pub cancel: AtomicBool,
    /// The engine's sign of life for systemd's watchdog: beats while waiting for work and
    /// for every generated token.
    pub heartbeat: Heartbeat,
    /// The running job's cancel flag, which the engine checks between tokens.
    running: Mutex<Option<Arc<AtomicBool>>>,
}

impl Control {
    /// Cancels the running generation and everything queued (the shutdown deadline passed).
    pub fn cancel_all(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        if let Some(job) = &*self.running.lock().unwrap_or_else(PoisonError::into_inner) {
            job.store(true, Ordering::SeqCst);
        }
    }

    fn set_running(&self, job: Option<Arc<AtomicBool>>) {
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = job;
    }
}

/// The `cancelled` answer's message.
const CLIENT_GONE: &str = "the client went away before the answer was finished";

/// How often the idle engine thread wakes to beat.
const IDLE_BEAT: Duration = Duration::from_secs(1);

/// Runs jobs until the queue's senders are gone and it is empty.
pub fn run(
    mut engine: Engine,
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
    loop {
        let job = match jobs.recv_timeout(IDLE_BEAT) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                control.heartbeat.beat();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        control.heartbeat.set_busy(true);
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        let tokens = job.tokens;
        let sink = ReplySink::new(
            job.key.clone(),
            job.request.id.clone(),
            job.target.clone(),
            out.clone(),
        );
        wait_while_hot(&job, &control, &routing);
        let threads = routing.local_threads();
        let pool = &engine.compute().pool;
        if threads != pool.threads() {
            tracing::info!(
                "local generation now on {threads} of {} threads (SoC temperature)",
                pool.capacity()
            );
            pool.set_active_threads(threads);
        }
        stats.running.store(1, Ordering::Relaxed);
        control.set_running(Some(Arc::clone(&job.cancel)));
        let outcome = serve(&mut engine, job, sink, &control, &stats, &routing);
        control.set_running(None);
        routing.local_done(tokens);
        stats.count(Some(ServedRoute::Local), outcome);
        stats.running.store(0, Ordering::Relaxed);
        control.heartbeat.set_busy(false);
    }
}

/// Above the hard temperature limit nothing new starts here: the job waits for the SoC to
/// cool below the hard exit threshold, until its deadline (then `serve` answers `expired`)
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

/// Runs one job to its final reply; returns its outcome for the counters.
fn serve(
    engine: &mut Engine,
    job: Job,
    mut sink: ReplySink,
    control: &Control,
    stats: &Stats,
    routing: &Routing,
) -> Outcome {
    let fail = |sink: ReplySink, code: ErrorCode, message: String| {
        sink.fail(&RequestError::new(code, message));
        Outcome::Failed(code)
    };
    if control.cancel.load(Ordering::Relaxed) {
        return fail(
            sink,
            ErrorCode::ShuttingDown,
            "the device is shutting down; send the request again later".into(),
        );
    }
    if job.cancel.load(Ordering::Relaxed) {
        return fail(sink, ErrorCode::Cancelled, CLIENT_GONE.into());
    }
    if job.expired_at(Instant::now()) {
        return fail(sink, ErrorCode::Expired, EXPIRED_WHILE_WAITING.into());
    }
    let req = job.request;
    // Encoded by the intake, which routed on its length.
    let prompt = job.prompt;
    let queue_ms = job.received.elapsed().as_secs_f64() * 1e3;
    // A cached prompt prefix serves only the client it came from (engine::session): the
    // client's identity is its reply address, and session keys live in the client's own
    // namespace, so guessing another client's key reveals nothing either.
    let job_request = GenerateRequest {
        prompt,
        session: req
            .session
            .as_ref()
            .map(|s| format!("{}\u{0}{s}", job.client)),
        owner: Some(job.client.clone()),
        max_tokens: Some(req.max_tokens),
        sampling: req.sampling.clone(),
        stop: req.stop.clone(),
        constraint: Some(job.constraint),
    };
    let Some(tokenizer) = engine.shared_tokenizer() else {
        return fail(
            sink,
            ErrorCode::Internal,
            "the model has no tokenizer".into(),
        );
    };
    let mut reply = ReplyParser::new(&tokenizer, req.sampling.seed);
    let mut first_token: Option<Instant> = None;
    let result = engine.generate(&job_request, &job.cancel, |ev| {
        control.heartbeat.beat();
        first_token.get_or_insert_with(Instant::now);
        reply.push(ev.id, ev.text, &mut |piece| {
            if req.stream {
                sink.piece(&piece);
            }
        });
        ControlFlow::Continue(())
    });
    let reply = reply.finish(&mut |piece| {
        if req.stream {
            sink.piece(&piece);
        }
    });
    match result {
        Ok(done)
            if done.finish_reason == FinishReason::Cancelled
                && !control.cancel.load(Ordering::Relaxed) =>
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
            stats.generated(done.completion_tokens);
            stats.observe_answer(
                ServedRoute::Local,
                first_token.map(|t| t.saturating_duration_since(job.received)),
                job.received.elapsed(),
            );
            routing.observe_completion(done.completion_tokens);
            // A handful of tokens measures the prompt's tail more than the decode speed.
            if done.completion_tokens >= 8 {
                routing.observe_rate(done.generation_tokens_per_s());
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
        Err(EngineError::ContextLength(m)) => fail(sink, ErrorCode::ContextLength, m),
        Err(e @ (EngineError::Sampling(_) | EngineError::Stop(_) | EngineError::Constraint(_))) => {
            fail(sink, ErrorCode::InvalidRequest, e.to_string())
        }
        Err(e) => {
            tracing::error!(id = %req.id, "generation failed: {e}");
            fail(sink, ErrorCode::Internal, format!("generation failed: {e}"))
        }
    }
}
