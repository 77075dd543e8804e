//! The engine thread: takes accepted requests from the bounded queue one at a time, runs
//! them on the engine (never on the async runtime: generation is seconds of CPU work), and
//! streams the answer through the request's [`ReplySink`].

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use tokio::sync::mpsc;

use super::schema::{ErrorCode, Request, RequestError, RouteHint, Served, final_json};
use super::sink::{Outgoing, ReplySink, ReplyTarget};
use super::stats::Stats;
use crate::engine::{Engine, EngineError, FinishReason, GenerateRequest};

/// An accepted request waiting for the engine.
#[derive(Debug)]
pub struct Job {
    pub request: Request,
    pub target: Option<ReplyTarget>,
    pub received: Instant,
    /// The MQTT 5 message expiry: not started after this, it is answered `expired`.
    pub deadline: Option<Instant>,
}

/// Flags the service sets to stop the engine thread.
#[derive(Debug, Default)]
pub struct Control {
    /// Cancel the running generation and refuse what is queued (the shutdown deadline
    /// passed).
    pub cancel: AtomicBool,
}

/// Runs jobs until the queue's senders are gone and it is empty.
pub fn run(
    mut engine: Engine,
    jobs: Receiver<Job>,
    out: mpsc::Sender<Outgoing>,
    stats: Arc<Stats>,
    control: Arc<Control>,
) {
    while let Ok(job) = jobs.recv() {
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        stats.running.store(1, Ordering::Relaxed);
        let sink = ReplySink::new(
            Some(job.request.id.clone()),
            job.target.clone(),
            out.clone(),
        );
        let outcome = serve(&mut engine, job, sink, &control, &stats);
        stats.count("local", outcome);
        stats.running.store(0, Ordering::Relaxed);
    }
}

/// Runs one job to its final reply; returns the outcome for the counters.
fn serve(
    engine: &mut Engine,
    job: Job,
    mut sink: ReplySink,
    control: &Control,
    stats: &Stats,
) -> &'static str {
    let fail = |sink: ReplySink, code: ErrorCode, message: String| {
        sink.fail(&RequestError::new(code, message));
        code.as_str()
    };
    if control.cancel.load(Ordering::Relaxed) {
        return fail(
            sink,
            ErrorCode::ShuttingDown,
            "the device is shutting down; send the request again later".into(),
        );
    }
    if job.deadline.is_some_and(|d| Instant::now() >= d) {
        return fail(
            sink,
            ErrorCode::Expired,
            "the request's message expiry passed while it waited".into(),
        );
    }
    let req = job.request;
    if req.route == RouteHint::Cloud {
        return fail(
            sink,
            ErrorCode::InvalidRequest,
            "route \"cloud\" was asked for, but this device has no cloud route configured".into(),
        );
    }
    let Some(tok) = engine.tokenizer() else {
        return fail(
            sink,
            ErrorCode::Internal,
            "the loaded model has no tokenizer".into(),
        );
    };
    let prompt = match req.chat.encode(tok) {
        Ok(p) => p,
        Err(e) => return fail(sink, ErrorCode::InvalidRequest, e.to_string()),
    };
    let queue_ms = job.received.elapsed().as_secs_f64() * 1e3;
    let job_request = GenerateRequest {
        prompt,
        session: req.session.clone(),
        max_tokens: Some(req.max_tokens),
        sampling: req.sampling.clone(),
        stop: req.stop.clone(),
    };
    // The whole text goes in the final reply; reserve what a typical answer needs up front.
    let mut text = String::with_capacity(req.max_tokens * 4);
    let result = engine.generate(&job_request, &control.cancel, |ev| {
        text.push_str(ev.text);
        if req.stream {
            sink.chunk(ev.text);
        }
        ControlFlow::Continue(())
    });
    match result {
        Ok(done) if done.finish_reason == FinishReason::Cancelled => fail(
            sink,
            ErrorCode::ShuttingDown,
            format!(
                "the device is shutting down; generation stopped after {} tokens",
                done.completion_tokens
            ),
        ),
        Ok(done) => {
            stats.generation(done.completion_tokens, done.generation_tokens_per_s());
            let served = Served {
                route: "local",
                reason: "served on this device (no overflow route configured)".into(),
            };
            sink.finish(final_json(&req.id, &text, &done, &served, queue_ms));
            "ok"
        }
        Err(EngineError::ContextLength(m)) => fail(sink, ErrorCode::ContextLength, m),
        Err(e @ (EngineError::Sampling(_) | EngineError::Stop(_))) => {
            fail(sink, ErrorCode::InvalidRequest, e.to_string())
        }
        Err(e) => {
            tracing::error!(id = %req.id, "generation failed: {e}");
            fail(sink, ErrorCode::Internal, format!("generation failed: {e}"))
        }
    }
}
