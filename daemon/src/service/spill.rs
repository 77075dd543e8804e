//! The two cloud routes a request can spill to: HTTPS (an OpenAI-compatible router, the
//! Hugging Face router by default) and MQTT (a cloud broker where `role = "worker"` daemons
//! serve a fleet's overflow). Each spilled request runs in its own task, holding one of
//! `service.max_cloud_inflight` permits, streams what the cloud sends to the requester and
//! ends with exactly one final, journaled like a local one.
//!
//! A cloud route that fails before anything was forwarded falls back to the local queue
//! (unless the client asked for the cloud only). At the shutdown deadline every spill still
//! running is cancelled and answered `shutting_down`, so shutdown is bounded whatever the
//! cloud does (a trickling stream, a stall).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use super::queue::{Job, LocalQueue, Refused};
use super::route;
use super::schema::{self, ErrorCode, RequestError, Served, ServedRoute, cloud_final_json};
use super::sink::{Delivery, Finished, Outgoing};
use super::stats::{Outcome, Stats};
use super::upstream::Upstream;
use crate::cloud::{CloudClient, CloudErrorCode};

/// Where a spill goes.
#[derive(Debug)]
pub enum CloudTarget {
    Https(Arc<CloudClient>),
    /// The cloud broker, with the request as it is published there.
    Mqtt(Arc<Upstream>, Vec<u8>),
}

/// A request on its way to a cloud route, with what it needs to answer (or fall back to
/// the local engine).
#[derive(Debug)]
pub struct Spill {
    /// The request as the local queue would hold it: its fallback, and everything a reply
    /// needs (key, reply address, times, the routing decision).
    pub job: Job,
    pub out: mpsc::Sender<Outgoing>,
    pub stats: Arc<Stats>,
    pub queue: Arc<LocalQueue>,
    /// Turns true at the shutdown deadline.
    pub cancel: watch::Receiver<bool>,
    /// One of `service.max_cloud_inflight`, released when the spill ends.
    pub permit: OwnedSemaphorePermit,
}

/// How a cloud attempt ended.
enum Ending {
    /// With this final (a cloud answer or an error).
    Final(Outgoing),
    /// The cloud could not take it; serve it here, with this reason.
    Fallback(String),
}

/// Runs a spill to its one final.
pub async fn run(spill: Spill, to: CloudTarget) {
    let mut cancel = spill.cancel.clone();
    let attempt = async {
        match &to {
            CloudTarget::Https(client) => forward_https(client, &spill).await,
            CloudTarget::Mqtt(up, payload) => forward_mqtt(up, payload.clone(), &spill).await,
        }
    };
    let ending = tokio::select! {
        e = attempt => e,
        _ = cancel.wait_for(|c| *c) => {
            spill
                .stats
                .count(Some(spill.job.served.route), Outcome::Failed(ErrorCode::ShuttingDown));
            Ending::Final(spill.error(
                ErrorCode::ShuttingDown,
                "the device is shutting down and the cloud had not finished answering; \
                 send the request again later"
                    .into(),
            ))
        }
        _ = client_gone(&spill.job.cancel) => {
            spill
                .stats
                .count(Some(spill.job.served.route), Outcome::Failed(ErrorCode::Cancelled));
            Ending::Final(spill.error(
                ErrorCode::Cancelled,
                "the client went away before the cloud had answered".into(),
            ))
        }
    };
    let out = spill.out.clone();
    let reply = match ending {
        Ending::Final(reply) => Some(reply),
        Ending::Fallback(reason) => fallback_local(spill, reason),
    };
    if let Some(reply) = reply {
        let _ = out.send(reply).await;
    }
}

/// Resolves once the job's client has gone away ([`super::intake::Intake::cancel`]): the
/// cloud request is dropped (its connection closed) and the permit freed.
async fn client_gone(cancel: &std::sync::atomic::AtomicBool) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    while !cancel.load(std::sync::atomic::Ordering::Relaxed) {
        tick.tick().await;
    }
}

impl Spill {
    /// A final error reply of this request.
    fn error(&self, code: ErrorCode, message: String) -> Outgoing {
        self.job.error_reply(&RequestError::new(code, message))
    }
}

/// Puts a request the cloud could not take into the local queue; returns the final reply
/// when the queue refuses it.
fn fallback_local(s: Spill, reason: String) -> Option<Outgoing> {
    let Spill {
        mut job,
        stats,
        queue,
        ..
    } = s;
    job.served = Served {
        route: ServedRoute::Local,
        reason: reason.clone(),
    };
    let (code, message, job) = match queue.admit(job) {
        Ok(()) => return None,
        Err(Refused::Full(job)) => (
            ErrorCode::Busy,
            format!("{reason}, but the local queue is full"),
            job,
        ),
        Err(Refused::Closed(job)) => (
            ErrorCode::ShuttingDown,
            format!("{reason}, but the device is shutting down"),
            job,
        ),
    };
    stats.count(None, Outcome::Failed(code));
    let err = RequestError::new(code, message);
    Some(job.error_reply(&err))
}

/// Serves a request through the MQTT cloud route: publishes it to the cloud broker and
/// relays the worker's chunks and final (marked `route: "cloud-mqtt"`) to the requester.
async fn forward_mqtt(up: &Upstream, payload: Vec<u8>, s: &Spill) -> Ending {
    let expiry = s
        .job
        .deadline
        .map(|d| d.saturating_duration_since(Instant::now()));
    let wait = expiry.map_or(up.timeout, |e| e.min(up.timeout));
    let mut forward = match up.forward(payload, expiry).await {
        Ok(f) => f,
        Err(e) if s.job.request.route != schema::RouteHint::Cloud => {
            return Ending::Fallback(format!("{}; {e}, served here", s.job.served.reason));
        }
        Err(e) => {
            s.stats.count(
                Some(s.job.served.route),
                Outcome::Failed(ErrorCode::CloudUnavailable),
            );
            return Ending::Final(s.error(ErrorCode::CloudUnavailable, e));
        }
    };
    let until = tokio::time::Instant::now() + wait;
    // The first streamed piece of the answer (a worker streams only when the client asked).
    let mut first_token = None;
    loop {
        let msg = match tokio::time::timeout_at(until, forward.replies.recv()).await {
            Err(_) => {
                s.stats.count(
                    Some(s.job.served.route),
                    Outcome::Failed(ErrorCode::Timeout),
                );
                return Ending::Final(s.error(
                    ErrorCode::Timeout,
                    format!("no final reply from the cloud worker within {wait:?}"),
                ));
            }
            Ok(None) => {
                s.stats.count(
                    Some(s.job.served.route),
                    Outcome::Failed(ErrorCode::Internal),
                );
                return Ending::Final(
                    s.error(ErrorCode::Internal, "the cloud connection went away".into()),
                );
            }
            Ok(Some(msg)) => msg,
        };
        // The worker speaks our schema; anything else is dropped (its size is bounded by
        // the broker's and our maximum packet size).
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&msg) else {
            tracing::warn!(id = %s.job.request.id, "unreadable reply from the cloud worker: dropped");
            continue;
        };
        if v["done"] != true {
            // A piece of the answer: text, reasoning or a tool call's (the worker streams
            // what its engine does).
            let piece = ["delta", "reasoning", "tool_calls"]
                .iter()
                .any(|k| v.get(k).is_some());
            if piece {
                first_token.get_or_insert_with(|| s.job.received.elapsed());
            }
            if s.job.request.stream && piece {
                let _ = s
                    .out
                    .send(Outgoing {
                        target: s.job.target.clone(),
                        payload: msg.to_vec(),
                        delivery: Delivery::Chunk,
                    })
                    .await;
            }
            continue;
        }
        // The worker's final names the worker's request id; ours is the client's.
        v["id"] = serde_json::json!(s.job.request.id);
        let finished = if v.get("error").is_none() {
            let worker_route = v["route"].as_str().unwrap_or("?").to_string();
            v["route"] = serde_json::json!(s.job.served.route);
            v["reason"] = serde_json::json!(format!(
                "{}; the cloud worker served it ({worker_route})",
                s.job.served.reason
            ));
            s.stats.count(Some(s.job.served.route), Outcome::Ok);
            s.stats
                .observe_answer(s.job.served.route, first_token, s.job.received.elapsed());
            Finished::Answer {
                route: s.job.served.route,
                finish_reason: v["finish_reason"].as_str().unwrap_or("?").to_string(),
                completion_tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            }
        } else {
            s.stats.count(
                Some(s.job.served.route),
                Outcome::Failed(ErrorCode::CloudError),
            );
            // The worker's own code, as it told the client.
            let code = v["error"]["code"].as_str().and_then(ErrorCode::parse);
            Finished::Error(code.unwrap_or(ErrorCode::CloudError))
        };
        return Ending::Final(Outgoing {
            target: s.job.target.clone(),
            payload: serde_json::to_vec(&v).unwrap_or_default(),
            delivery: Delivery::Journaled {
                key: s.job.key.clone(),
                finished,
            },
        });
    }
}

/// Serves a request through the HTTPS cloud route, streaming its pieces (text, reasoning,
/// tool calls) to the original requester as they arrive, in the chunks a local answer
/// streams. A failure before anything was forwarded falls back to the local engine, unless
/// the client asked for the cloud only.
async fn forward_https(client: &CloudClient, s: &Spill) -> Ending {
    let cloud_req = route::cloud_request(&s.job.request);
    // Chunks as they are made (already numbered): the callback cannot await the sink.
    let (chunk_tx, mut chunk_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let started = Instant::now();
    let queue_ms = started.duration_since(s.job.received).as_secs_f64() * 1e3;
    let mut first_token_ms = None;
    let chunk = |payload: Vec<u8>| Outgoing {
        target: s.job.target.clone(),
        payload,
        delivery: Delivery::Chunk,
    };
    let result = {
        let id = s.job.request.id.clone();
        let mut seq = 0u64;
        let call = client.complete(&cloud_req, move |piece| {
            let _ = chunk_tx.send(schema::piece_json(&id, seq, &piece));
            seq += 1;
        });
        let call = async {
            match s.job.deadline {
                Some(d) => tokio::time::timeout_at(d.into(), call).await.ok(),
                None => Some(call.await),
            }
        };
        let mut call = std::pin::pin!(call);
        loop {
            tokio::select! {
                r = &mut call => break r,
                Some(payload) = chunk_rx.recv() => {
                    first_token_ms.get_or_insert_with(|| s.job.received.elapsed().as_secs_f64() * 1e3);
                    if s.job.request.stream {
                        let _ = s.out.send(chunk(payload)).await;
                    }
                }
            }
        }
    };
    while let Ok(payload) = chunk_rx.try_recv() {
        first_token_ms.get_or_insert_with(|| s.job.received.elapsed().as_secs_f64() * 1e3);
        if s.job.request.stream {
            let _ = s.out.send(chunk(payload)).await;
        }
    }
    let total_ms = s.job.received.elapsed().as_secs_f64() * 1e3;
    match result {
        Some(Ok(outcome)) => {
            s.stats.count(Some(s.job.served.route), Outcome::Ok);
            s.stats.observe_answer(
                s.job.served.route,
                first_token_ms.map(|ms| Duration::from_secs_f64(ms / 1e3)),
                Duration::from_secs_f64(total_ms / 1e3),
            );
            tracing::debug!(
                id = %s.job.request.id,
                provider = outcome.provider.as_deref().unwrap_or("?"),
                attempts = outcome.attempts,
                "answered by the cloud"
            );
            Ending::Final(Outgoing {
                target: s.job.target.clone(),
                payload: cloud_final_json(
                    &s.job.request.id,
                    &outcome,
                    &s.job.served,
                    queue_ms,
                    total_ms,
                    first_token_ms,
                ),
                delivery: Delivery::Journaled {
                    key: s.job.key.clone(),
                    finished: Finished::Answer {
                        route: s.job.served.route,
                        // As the final says.
                        finish_reason: schema::cloud_finish_reason(&outcome),
                        completion_tokens: outcome
                            .usage
                            .as_ref()
                            .map_or(0, |u| u.completion_tokens),
                    },
                },
            })
        }
        None => {
            s.stats.count(
                Some(s.job.served.route),
                Outcome::Failed(ErrorCode::Expired),
            );
            Ending::Final(s.error(
                ErrorCode::Expired,
                format!(
                    "the request's message expiry passed while the cloud was answering ({})",
                    s.job.served.reason
                ),
            ))
        }
        Some(Err(e)) if !e.partial && s.job.request.route != schema::RouteHint::Cloud => {
            tracing::warn!(id = %s.job.request.id, "cloud route failed before answering ({e}); serving here");
            Ending::Fallback(format!(
                "{}; cloud failed ({e}), served here",
                s.job.served.reason
            ))
        }
        Some(Err(e)) => {
            let code = match e.code() {
                CloudErrorCode::Timeout => ErrorCode::Timeout,
                CloudErrorCode::Unavailable => ErrorCode::CloudUnavailable,
                CloudErrorCode::InvalidRequest => ErrorCode::InvalidRequest,
                CloudErrorCode::Error => ErrorCode::CloudError,
            };
            s.stats
                .count(Some(s.job.served.route), Outcome::Failed(code));
            Ending::Final(s.error(code, e.to_string()))
        }
    }
}
