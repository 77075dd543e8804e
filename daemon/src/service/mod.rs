//! `spillway serve`: the MQTT front end. One request, one path: parse and validate at the
//! edge, accept it into a bounded queue (acknowledging the MQTT message only then), run it
//! on the engine thread, stream chunks and exactly one final reply to the client's response
//! topic (MQTT 5) or `reply_to` (MQTT 3.1.1 clients).
//!
//! Tasks: the *poller* drives rumqttc's event loop (reconnecting with backoff, subscribing
//! when the broker lost our session, publishing `online`); the *dispatcher* handles
//! incoming requests; the *publisher* sends replies; the *telemetry* task reports. The
//! engine runs on its own OS thread. On shutdown (SIGTERM/SIGINT): stop intake, let queued
//! and running work finish within the deadline, then cancel the rest (answered
//! `shutting_down`), publish `offline`, disconnect.
//!
//! Under systemd (`Type=notify`, see [`notify`]): `READY=1` at the first connection to the
//! broker (the model is mapped before the service starts), `STATUS=` lines as the state
//! changes, `WATCHDOG=1` pings while the engine thread is healthy, `STOPPING=1` on shutdown.

pub mod dedup;
pub mod mqtt;
pub mod notify;
pub mod route;
pub mod schema;
pub mod sink;
pub mod stats;
pub mod upstream;
pub mod worker;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio::sync::{mpsc, watch};

use crate::config::Validated;
use crate::engine::Engine;
use crate::router::Route;
use dedup::DedupWindow;
use notify::Notifier;
use route::Router;
use schema::{
    ErrorCode, Limits, Request, RequestError, Served, cloud_final_json, error_json, parse_request,
    salvage_id, salvage_reply_to, valid_reply_topic,
};
use sink::{Outgoing, ReplyTarget};
use stats::Stats;
use worker::{Control, Job};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttSetupError),
    #[error("MQTT client: {0}")]
    Client(String),
    #[error(transparent)]
    Router(#[from] route::RouterSetupError),
}

/// Everything the tasks share.
struct Shared {
    v: Validated,
    stats: Arc<Stats>,
    /// False once shutdown began: requests are left unacknowledged for the broker to
    /// deliver again after a restart.
    accepting: AtomicBool,
    started: Instant,
    model_name: String,
    kernels: &'static str,
    router: Arc<Router>,
    /// systemd notifications (nothing when not under systemd).
    notify: Notifier,
    /// Whether the broker connection is up (for `STATUS=`).
    connected: AtomicBool,
}

/// Runs the service until `shutdown` resolves, then stops cleanly, notifying systemd
/// through `notify` (pass [`Notifier::disabled`] when not a service).
pub async fn run(
    v: Validated,
    engine: Engine,
    shutdown: impl Future<Output = ()>,
    notify: Notifier,
) -> Result<(), ServiceError> {
    let opts = mqtt::options(&v)?;
    let (client, eventloop) = AsyncClient::new(opts, 1024);
    let stats = Arc::new(Stats::default());
    let control = Arc::new(Control::default());
    let router = Arc::new(Router::new(&v, &engine)?);
    tokio::spawn(Router::follow_readings(Arc::downgrade(&router)));
    let shared = Arc::new(Shared {
        router: Arc::clone(&router),
        model_name: engine
            .weights()
            .config
            .name
            .clone()
            .unwrap_or_else(|| engine.weights().config.arch.name().to_string()),
        kernels: engine.compute().kernels.path().name(),
        stats: Arc::clone(&stats),
        accepting: AtomicBool::new(true),
        started: Instant::now(),
        notify,
        connected: AtomicBool::new(false),
        v,
    });
    shared.notify.status(&format!(
        "connecting to the broker {}:{}",
        shared.v.broker.host, shared.v.broker.port
    ));

    let (incoming_tx, incoming_rx) = mpsc::unbounded_channel::<Publish>();
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(1024);
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Job>(shared.v.config.service.queue);
    let (stop_tx, stop_rx) = watch::channel(false);

    let poller = tokio::spawn(poll(
        eventloop,
        client.clone(),
        incoming_tx,
        Arc::clone(&shared),
        stop_rx.clone(),
    ));
    let dispatcher = tokio::spawn(dispatch(
        incoming_rx,
        client.clone(),
        job_tx,
        out_tx.clone(),
        Arc::clone(&shared),
        stop_rx.clone(),
    ));
    let publisher = tokio::spawn(publish(out_rx, client.clone()));
    let telemetry = tokio::spawn(telemetry(
        client.clone(),
        Arc::clone(&shared),
        stop_rx.clone(),
    ));
    let supervisor = shared.notify.enabled().then(|| {
        tokio::spawn(supervise(
            Arc::clone(&shared),
            Arc::clone(&control),
            stop_rx.clone(),
        ))
    });
    let worker = {
        let (stats, control, out) = (Arc::clone(&stats), Arc::clone(&control), out_tx);
        std::thread::Builder::new()
            .name("spillway-engine".into())
            .spawn(move || worker::run(engine, job_rx, out, stats, control, router))
            .map_err(|e| ServiceError::Client(format!("cannot start the engine thread: {e}")))?
    };

    shutdown.await;
    tracing::info!("shutting down: no new requests; finishing queued and running work");
    shared.accepting.store(false, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    shared.notify.stopping(&format!(
        "shutting down: finishing {} queued, {} running",
        stats.queued.load(Ordering::SeqCst),
        stats.running.load(Ordering::SeqCst)
    ));
    for t in request_topics(&shared.v) {
        let _ = client.unsubscribe(t).await;
    }
    // The dispatcher exits on the stop signal, dropping the queue's sender: the engine
    // thread then finishes what is queued and returns.
    let _ = dispatcher.await;
    let deadline = shared.v.shutdown_deadline();
    let worker = tokio::task::spawn_blocking(move || worker.join());
    let mut worker = std::pin::pin!(worker);
    if tokio::time::timeout(deadline, &mut worker).await.is_err() {
        tracing::warn!("shutdown deadline of {deadline:?} passed: cancelling the remaining work");
        control.cancel.store(true, Ordering::SeqCst);
        let _ = worker.await;
    }
    // Every sink is gone: the publisher drains the last replies and ends.
    let _ = tokio::time::timeout(Duration::from_secs(10), publisher).await;
    let _ = client
        .publish(
            shared.v.topics.status.clone(),
            QoS::AtLeastOnce,
            true,
            "offline",
        )
        .await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), poller).await;
    telemetry.abort();
    if let Some(s) = supervisor {
        s.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

fn request_topics(v: &Validated) -> Vec<String> {
    let mut t = vec![v.topics.request.clone()];
    t.extend(v.topics.shared_request.clone());
    t
}

/// Drives the connection: reconnects with backoff, subscribes when the broker has no
/// session for us (and only then: no resubscription loops), announces `online`.
async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    incoming: mpsc::UnboundedSender<Publish>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut stopping = false;
    let mut ready = false;
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = stop.changed(), if !stopping => { stopping = true; continue; }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(500);
                tracing::info!(
                    "connected to {}:{} (session {})",
                    shared.v.broker.host,
                    shared.v.broker.port,
                    if ack.session_present {
                        "resumed"
                    } else {
                        "new"
                    }
                );
                if !ack.session_present && !stopping {
                    for t in request_topics(&shared.v) {
                        if let Err(e) = client.subscribe(t.clone(), QoS::AtLeastOnce).await {
                            tracing::error!("cannot subscribe to {t}: {e}");
                        }
                    }
                }
                if !stopping {
                    let _ = client
                        .publish(
                            shared.v.topics.status.clone(),
                            QoS::AtLeastOnce,
                            true,
                            "online",
                        )
                        .await;
                    shared.connected.store(true, Ordering::SeqCst);
                    if !ready {
                        // The model was mapped before the service started: ready now.
                        ready = true;
                        shared.notify.ready(&serving_status(&shared));
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if incoming.send(p).is_err() {
                    // The dispatcher is gone (shutting down): leave the message unacked.
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                tracing::debug!("disconnect sent");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                if stopping {
                    return;
                }
                shared.connected.store(false, Ordering::SeqCst);
                tracing::warn!(
                    "MQTT connection to {}:{} failed: {e}; retrying in {backoff:?}",
                    shared.v.broker.host,
                    shared.v.broker.port
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Handles incoming requests until the stop signal.
async fn dispatch(
    mut incoming: mpsc::UnboundedReceiver<Publish>,
    client: AsyncClient,
    jobs: SyncSender<Job>,
    out: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let s = &shared.v.config.service;
    let limits = Limits {
        max_request_bytes: s.max_request_bytes,
        default_max_tokens: s.default_max_tokens,
        max_tokens_limit: s.max_tokens_limit,
    };
    let mut dedup = DedupWindow::new(s.dedup_window);
    loop {
        let p = tokio::select! {
            p = incoming.recv() => match p { Some(p) => p, None => return },
            _ = stop.changed() => return,
        };
        if !shared.accepting.load(Ordering::SeqCst) {
            return;
        }
        let ack = handle(&p, &limits, &mut dedup, &jobs, &out, &shared).await;
        if ack && let Err(e) = client.ack(&p).await {
            tracing::warn!("cannot acknowledge a request: {e}");
        }
    }
}

/// One incoming request. Returns whether to acknowledge it (everything but a request left
/// for redelivery).
async fn handle(
    p: &Publish,
    limits: &Limits,
    dedup: &mut DedupWindow,
    jobs: &SyncSender<Job>,
    out: &mpsc::Sender<Outgoing>,
    shared: &Shared,
) -> bool {
    let received = Instant::now();
    let props = p.properties.clone().unwrap_or_default();
    let property_target = props
        .response_topic
        .clone()
        .filter(|t| valid_reply_topic(t))
        .map(|topic| ReplyTarget {
            topic,
            correlation: props.correlation_data.clone(),
        });
    let deadline = props
        .message_expiry_interval
        .map(|s| received + Duration::from_secs(u64::from(s)));
    let req = match parse_request(&p.payload, limits) {
        Ok(r) => r,
        Err(err) => {
            let id = salvage_id(&p.payload);
            let target = property_target.or_else(|| {
                salvage_reply_to(&p.payload).map(|topic| ReplyTarget {
                    topic,
                    correlation: None,
                })
            });
            tracing::info!(id = id.as_deref().unwrap_or("?"), "refused: {err}");
            shared.stats.count("none", err.code.as_str());
            reply_error(out, target, id.as_deref(), &err).await;
            return true;
        }
    };
    let target = property_target.or_else(|| {
        req.reply_to.clone().map(|topic| ReplyTarget {
            topic,
            correlation: None,
        })
    });
    let Some(target) = target else {
        tracing::warn!(id = %req.id, "request has no response topic and no reply_to: dropped");
        shared.stats.count("none", "no_reply_address");
        return true;
    };
    let correlation = target.correlation.as_deref().unwrap_or(&[]);
    if !dedup.first_time(&req.id, &target.topic, correlation) {
        tracing::info!(id = %req.id, "redelivered request recognised; not run again");
        return true;
    }
    if deadline.is_some_and(|d| d <= received) {
        let err = RequestError::new(ErrorCode::Expired, "the request had expired on arrival");
        shared.stats.count("none", err.code.as_str());
        reply_error(out, Some(target), Some(&req.id), &err).await;
        return true;
    }
    let deadline_left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let queued = shared.stats.queued.load(Ordering::SeqCst);
    let decision = shared.router.decide(&req, deadline_left, queued);
    tracing::info!(
        id = %req.id,
        route = decision.route.as_str(),
        rule = decision.rule.number(),
        "{}",
        decision.reason
    );
    match decision.route {
        Route::Local | Route::Queue => {
            let served = Served {
                route: "local",
                reason: decision.reason,
            };
            enqueue_local(req, target, received, deadline, served, jobs, out, shared).await
        }
        Route::CloudHttps | Route::CloudMqtt => {
            let https = decision.route == Route::CloudHttps;
            let client = shared.router.cloud().cloned();
            let up = shared.router.upstream().cloned();
            let payload = upstream::upstream_payload(&p.payload);
            let spill = Spill {
                served: Served {
                    route: decision.route.as_str(),
                    reason: decision.reason,
                },
                req,
                target,
                received,
                deadline,
                jobs: jobs.clone(),
                out: out.clone(),
                stats: Arc::clone(&shared.stats),
                router: Arc::clone(&shared.router),
            };
            match (https, client, up, payload) {
                (true, Some(client), _, _) => drop(tokio::spawn(forward_https(client, spill))),
                (false, _, Some(up), Some(payload)) => {
                    drop(tokio::spawn(forward_mqtt(up, payload, spill)));
                }
                // The policy only picks configured routes.
                _ => {
                    let err = RequestError::new(ErrorCode::Internal, "no such cloud route");
                    reply_error(out, Some(spill.target), Some(&spill.req.id), &err).await;
                }
            }
            true
        }
        Route::Reject(code) => {
            let err = RequestError::new(route::reject_code(code), decision.reason);
            shared.stats.count("none", err.code.as_str());
            reply_error(out, Some(target), Some(&req.id), &err).await;
            true
        }
    }
}

/// Puts a request in the engine's queue (answering `busy` when it is full). Returns whether
/// to acknowledge the MQTT message.
#[allow(clippy::too_many_arguments)]
async fn enqueue_local(
    req: Request,
    target: ReplyTarget,
    received: Instant,
    deadline: Option<Instant>,
    served: Served,
    jobs: &SyncSender<Job>,
    out: &mpsc::Sender<Outgoing>,
    shared: &Shared,
) -> bool {
    let id = req.id.clone();
    let job = Job {
        request: req,
        target: Some(target.clone()),
        received,
        deadline,
        served,
        tokens: 0,
    };
    match admit_local(job, jobs, &shared.stats, &shared.router) {
        Ok(()) => {
            tracing::debug!(id = %id, "queued");
            true
        }
        Err(TrySendError::Full(())) => {
            let err = RequestError::new(
                ErrorCode::Busy,
                format!(
                    "the queue is full ({} waiting); try again shortly",
                    shared.v.config.service.queue
                ),
            );
            shared.stats.count("none", err.code.as_str());
            reply_error(out, Some(target), Some(&id), &err).await;
            true
        }
        Err(TrySendError::Disconnected(())) => false,
    }
}

/// Puts a job in the engine's queue, counting it in the queue depth and in the router's
/// estimate of the work ahead (`job.tokens` is set here); both are undone when the queue
/// refuses it.
fn admit_local(
    mut job: Job,
    jobs: &SyncSender<Job>,
    stats: &Stats,
    router: &Router,
) -> Result<(), TrySendError<()>> {
    let tokens = router.local_admitted(&job.request);
    job.tokens = tokens;
    stats.queued.fetch_add(1, Ordering::SeqCst);
    jobs.try_send(job).map_err(|e| {
        stats.queued.fetch_sub(1, Ordering::SeqCst);
        router.local_done(tokens);
        match e {
            TrySendError::Full(_) => TrySendError::Full(()),
            TrySendError::Disconnected(_) => TrySendError::Disconnected(()),
        }
    })
}

/// The final error reply of request `id`.
fn error_reply(target: &ReplyTarget, id: Option<&str>, err: &RequestError) -> Outgoing {
    Outgoing {
        target: target.clone(),
        payload: error_json(id, err),
        is_final: true,
    }
}

/// A request on its way to a cloud route, with what it needs to answer (or fall back to
/// the local engine).
struct Spill {
    req: Request,
    target: ReplyTarget,
    received: Instant,
    deadline: Option<Instant>,
    served: Served,
    jobs: SyncSender<Job>,
    out: mpsc::Sender<Outgoing>,
    stats: Arc<Stats>,
    router: Arc<Router>,
}

/// Puts a request the cloud could not take into the local queue; returns the `busy` reply
/// when the queue is full.
#[allow(clippy::too_many_arguments)]
fn fallback_local(
    req: Request,
    target: &ReplyTarget,
    received: Instant,
    deadline: Option<Instant>,
    reason: String,
    jobs: &SyncSender<Job>,
    stats: &Stats,
    router: &Router,
) -> Option<Outgoing> {
    let id = req.id.clone();
    let job = Job {
        request: req,
        target: Some(target.clone()),
        received,
        deadline,
        served: Served {
            route: "local",
            reason: reason.clone(),
        },
        tokens: 0,
    };
    if admit_local(job, jobs, stats, router).is_ok() {
        return None;
    }
    stats.count("none", "busy");
    let err = RequestError::new(
        ErrorCode::Busy,
        format!("{reason}, but the local queue is full"),
    );
    Some(error_reply(target, Some(&id), &err))
}

/// Serves a request through the MQTT cloud route: publishes it to the cloud broker and
/// relays the worker's chunks and final (marked `route: "cloud-mqtt"`) to the requester.
async fn forward_mqtt(up: Arc<upstream::Upstream>, payload: Vec<u8>, spill: Spill) {
    let Spill {
        req,
        target,
        received,
        deadline,
        served,
        jobs,
        out,
        stats,
        router,
    } = spill;
    let expiry = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let wait = expiry.map_or(up.timeout, |e| e.min(up.timeout));
    let fail = |code: ErrorCode, message: String| {
        error_reply(&target, Some(&req.id), &RequestError::new(code, message))
    };
    let mut forward = match up.forward(payload, expiry).await {
        Ok(f) => f,
        Err(e) if req.route != schema::RouteHint::Cloud => {
            let reason = format!("{}; {e}, served here", served.reason);
            let busy = fallback_local(
                req, &target, received, deadline, reason, &jobs, &stats, &router,
            );
            if let Some(busy) = busy {
                let _ = out.send(busy).await;
            }
            return;
        }
        Err(e) => {
            stats.count(served.route, "cloud_unavailable");
            let _ = out.send(fail(ErrorCode::CloudUnavailable, e)).await;
            return;
        }
    };
    let until = tokio::time::Instant::now() + wait;
    loop {
        let msg = match tokio::time::timeout_at(until, forward.replies.recv()).await {
            Err(_) => {
                stats.count(served.route, "timeout");
                let _ = out
                    .send(fail(
                        ErrorCode::Timeout,
                        format!("no final reply from the cloud worker within {wait:?}"),
                    ))
                    .await;
                return;
            }
            Ok(None) => {
                let _ = out
                    .send(fail(
                        ErrorCode::Internal,
                        "the cloud connection went away".into(),
                    ))
                    .await;
                return;
            }
            Ok(Some(msg)) => msg,
        };
        // The worker speaks our schema; anything else is dropped (its size is bounded by
        // the broker's and our maximum packet size).
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&msg) else {
            tracing::warn!(id = %req.id, "unreadable reply from the cloud worker: dropped");
            continue;
        };
        if v["done"] != true {
            if v.get("delta").is_some() {
                let _ = out
                    .send(Outgoing {
                        target: target.clone(),
                        payload: msg.to_vec(),
                        is_final: false,
                    })
                    .await;
            }
            continue;
        }
        let outcome = match v.get("error") {
            Some(e) => e["code"].as_str().unwrap_or("cloud_error").to_string(),
            None => {
                let worker_route = v["route"].as_str().unwrap_or("?").to_string();
                v["route"] = serde_json::json!(served.route);
                v["reason"] = serde_json::json!(format!(
                    "{}; the cloud worker served it ({worker_route})",
                    served.reason
                ));
                "ok".to_string()
            }
        };
        stats.count(
            served.route,
            if outcome == "ok" { "ok" } else { "cloud_error" },
        );
        let _ = out
            .send(Outgoing {
                target: target.clone(),
                payload: serde_json::to_vec(&v).expect("plain JSON"),
                is_final: true,
            })
            .await;
        return;
    }
}

/// Serves a request through the HTTPS cloud route, streaming its chunks to the original
/// requester as they arrive. A failure before any text was forwarded falls back to the
/// local engine, unless the client asked for the cloud only.
async fn forward_https(client: Arc<crate::cloud::CloudClient>, spill: Spill) {
    let Spill {
        req,
        target,
        received,
        deadline,
        served,
        jobs,
        out,
        stats,
        router,
    } = spill;
    let cloud_req = route::cloud_request(&req);
    let (delta_tx, mut delta_rx) = mpsc::unbounded_channel::<String>();
    let started = Instant::now();
    let queue_ms = started.duration_since(received).as_secs_f64() * 1e3;
    let mut first_token_ms = None;
    let mut seq = 0u64;
    let send_chunk = |seq: &mut u64, delta: String| {
        let payload = schema::chunk_json(&req.id, *seq, &delta);
        *seq += 1;
        Outgoing {
            target: target.clone(),
            payload,
            is_final: false,
        }
    };
    let result = {
        let call = client.complete(&cloud_req, move |d| {
            let _ = delta_tx.send(d.to_owned());
        });
        let call = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d.into(), call).await.ok(),
                None => Some(call.await),
            }
        };
        let mut call = std::pin::pin!(call);
        loop {
            tokio::select! {
                r = &mut call => break r,
                Some(delta) = delta_rx.recv() => {
                    first_token_ms.get_or_insert_with(|| received.elapsed().as_secs_f64() * 1e3);
                    if req.stream {
                        let _ = out.send(send_chunk(&mut seq, delta)).await;
                    }
                }
            }
        }
    };
    while let Ok(delta) = delta_rx.try_recv() {
        first_token_ms.get_or_insert_with(|| received.elapsed().as_secs_f64() * 1e3);
        if req.stream {
            let _ = out.send(send_chunk(&mut seq, delta)).await;
        }
    }
    let total_ms = received.elapsed().as_secs_f64() * 1e3;
    let fail = |code: ErrorCode, message: String| {
        error_reply(&target, Some(&req.id), &RequestError::new(code, message))
    };
    let reply = match result {
        Some(Ok(outcome)) => {
            stats.count(served.route, "ok");
            tracing::info!(
                id = %req.id,
                provider = outcome.provider.as_deref().unwrap_or("?"),
                attempts = outcome.attempts,
                "answered by the cloud"
            );
            Outgoing {
                target: target.clone(),
                payload: cloud_final_json(
                    &req.id,
                    &outcome,
                    &served,
                    queue_ms,
                    total_ms,
                    first_token_ms,
                ),
                is_final: true,
            }
        }
        None => {
            stats.count(served.route, "expired");
            fail(
                ErrorCode::Expired,
                format!(
                    "the request's message expiry passed while the cloud was answering ({})",
                    served.reason
                ),
            )
        }
        Some(Err(e)) if !e.partial && req.route != schema::RouteHint::Cloud => {
            tracing::warn!(id = %req.id, "cloud route failed before answering ({e}); serving here");
            let reason = format!("{}; cloud failed ({e}), served here", served.reason);
            match fallback_local(
                req, &target, received, deadline, reason, &jobs, &stats, &router,
            ) {
                None => return,
                Some(busy) => busy,
            }
        }
        Some(Err(e)) => {
            let code = match e.code() {
                "timeout" => ErrorCode::Timeout,
                "cloud_unavailable" => ErrorCode::CloudUnavailable,
                "invalid_request" => ErrorCode::InvalidRequest,
                _ => ErrorCode::CloudError,
            };
            stats.count(served.route, code.as_str());
            fail(code, e.to_string())
        }
    };
    let _ = out.send(reply).await;
}

async fn reply_error(
    out: &mpsc::Sender<Outgoing>,
    target: Option<ReplyTarget>,
    id: Option<&str>,
    err: &RequestError,
) {
    let Some(target) = target else {
        tracing::warn!(
            id = id.unwrap_or("?"),
            "cannot answer a refused request: it gave no reply topic"
        );
        return;
    };
    let _ = out.send(error_reply(&target, id, err)).await;
}

/// Sends replies, in order, until every sender is gone.
async fn publish(mut out: mpsc::Receiver<Outgoing>, client: AsyncClient) {
    while let Some(m) = out.recv().await {
        let props = PublishProperties {
            correlation_data: m.target.correlation.clone(),
            content_type: Some("application/json".into()),
            payload_format_indicator: Some(1),
            ..PublishProperties::default()
        };
        if let Err(e) = client
            .publish_with_properties(
                m.target.topic.clone(),
                QoS::AtLeastOnce,
                false,
                Bytes::from(m.payload),
                props,
            )
            .await
        {
            tracing::warn!("cannot publish a reply to {}: {e}", m.target.topic);
        }
    }
}

/// What `systemctl status` shows while running.
fn serving_status(shared: &Shared) -> String {
    let queued = shared.stats.queued.load(Ordering::SeqCst);
    let running = shared.stats.running.load(Ordering::SeqCst);
    if shared.connected.load(Ordering::SeqCst) {
        format!("serving: {queued} queued, {running} running")
    } else {
        format!(
            "reconnecting to the broker {}:{}: {queued} queued, {running} running",
            shared.v.broker.host, shared.v.broker.port
        )
    }
}

/// Under systemd: keeps `STATUS=` current (until shutdown, which sets its own) and, when
/// systemd wants watchdog pings, sends them at half its interval while the engine thread
/// is healthy (idle, or beating within the interval): a wedged generation stops the pings
/// and systemd restarts the daemon.
async fn supervise(shared: Arc<Shared>, control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    let watchdog = shared.notify.watchdog();
    let mut ping = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| w / 2));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status_tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_status = String::new();
    let mut stopping = false;
    let mut wedged = false;
    loop {
        tokio::select! {
            _ = ping.tick() => {
                let Some(limit) = watchdog else { continue };
                if control.heartbeat.healthy(limit) {
                    if wedged {
                        tracing::info!("the engine made progress again: watchdog pings resume");
                        wedged = false;
                    }
                    shared.notify.ping();
                } else if !wedged {
                    tracing::error!(
                        "the engine made no progress for over {limit:?}: no more watchdog pings"
                    );
                    wedged = true;
                }
            }
            _ = status_tick.tick(), if !stopping => {
                // Before the first connection the start-up status stands.
                if !shared.connected.load(Ordering::SeqCst) && last_status.is_empty() {
                    continue;
                }
                let status = serving_status(&shared);
                if status != last_status {
                    shared.notify.status(&status);
                    last_status = status;
                }
            }
            _ = stop.changed(), if !stopping => stopping = true,
        }
    }
}

/// Publishes the board's state every `telemetry_secs`.
async fn telemetry(client: AsyncClient, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let secs = shared.v.config.service.telemetry_secs;
    if secs == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(secs));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let snap = shared.router.snapshot();
        let mut msg = shared.stats.json();
        msg["device"] = serde_json::json!(shared.v.device);
        msg["time"] = serde_json::json!(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        );
        msg["uptime_s"] = serde_json::json!(shared.started.elapsed().as_secs());
        msg["model"] = serde_json::json!(shared.model_name);
        msg["kernels"] = serde_json::json!(shared.kernels);
        msg["temperature_c"] = serde_json::json!(snap.temperature_c);
        msg["routing"] = shared.router.telemetry();
        msg["memory"] = serde_json::json!({
            "available_bytes": snap.mem_available,
            "rss_bytes": crate::engine::resident_bytes(),
        });
        let payload = serde_json::to_vec(&msg).expect("plain JSON");
        let _ = client
            .publish(
                shared.v.topics.telemetry.clone(),
                QoS::AtMostOnce,
                false,
                payload,
            )
            .await;
    }
}
