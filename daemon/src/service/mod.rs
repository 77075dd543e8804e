//! `spillway serve`: the service. One request, one path: a front end (MQTT today, see
//! [`mqtt_front`]) hands each message to the transport-neutral [`intake`], which validates
//! it, recognises a request it has seen ([`journal`]: idempotency keys and replayed
//! finals), journals it before the front end acknowledges it, routes it ([`route`]) to the
//! local queue ([`queue`], run by the engine thread in [`worker`]) or a cloud route
//! ([`spill`]), and records its one final before the front end delivers it.
//!
//! Start: the model is mapped, the journal opened and what it holds from before a crash
//! answered ([`intake::Intake::recover`]), then the front end connects. Shutdown (SIGTERM,
//! SIGINT): no new requests are taken (they stay unacknowledged at the broker, in the
//! persistent session, for the next start); queued, running and spilled work gets up to
//! `service.shutdown_deadline_secs` to finish, then is cancelled and answered
//! `shutting_down`; the last replies go out, `offline` is published, and the process exits
//! within the deadline plus 2 s.
//!
//! Under systemd (`Type=notify`, see [`notify`]): `READY=1` at the first connection to the
//! broker, `STATUS=` lines as the state changes, `WATCHDOG=1` pings while the engine thread
//! is healthy, `STOPPING=1` on shutdown.

pub mod connection;
pub mod discovery;
pub mod http;
pub mod intake;
pub mod journal;
pub mod metrics;
pub mod mqtt;
pub mod mqtt_front;
pub mod notify;
pub mod outbox;
pub mod queue;
pub mod route;
pub mod schema;
pub mod sink;
pub mod spill;
pub mod stats;
pub mod upstream;
pub mod worker;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::Validated;
use crate::engine::Engine;
use connection::ConnectionState;
use intake::{Intake, IntakeConfig};
use journal::{Journal, JournalLimits};
use metrics::Metrics;
use mqtt_front::{FrontContext, MqttFront};
use notify::Notifier;
use route::Routing;
use schema::Limits;
use stats::Stats;
use worker::Control;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttSetupError),
    #[error("MQTT client: {0}")]
    Client(String),
    #[error(transparent)]
    Routing(#[from] route::RoutingSetupError),
    #[error("{0} (set service.state_dir or --state-dir to a writable directory)")]
    Journal(#[from] journal::JournalError),
    #[error("state directory {dir}: {message} (set service.state_dir or --state-dir)")]
    StateDir { dir: String, message: String },
    #[error(transparent)]
    Http(#[from] http::HttpSetupError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// The journal's file in the state directory.
pub const JOURNAL_FILE: &str = "journal.sqlite3";

/// Opens the request journal in the configured state directory (created if missing,
/// mode 0700: it holds prompts), with the directory's lock: keep the file to keep it.
fn open_journal(v: &Validated) -> Result<(Journal, std::fs::File), ServiceError> {
    let dir = v.state_dir.clone();
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| ServiceError::StateDir {
                dir: dir.display().to_string(),
                message: e.to_string(),
            })?;
    }
    // One daemon per state directory: a second one would take the first one's pending
    // requests for its own and answer them again. The lock lasts as long as the process.
    let lock_path = dir.join("journal.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| ServiceError::StateDir {
            dir: dir.display().to_string(),
            message: format!("cannot open {}: {e}", lock_path.display()),
        })?;
    if let Err(e) = lock.try_lock() {
        return Err(ServiceError::StateDir {
            dir: dir.display().to_string(),
            message: format!(
                "another spillway serve is using this state directory ({e}); give each \
                 daemon its own"
            ),
        });
    }
    let s = &v.config.service;
    let limits = JournalLimits {
        // Waiting, running, spilled, and what a restart recovers on top: a bound, not a
        // target.
        max_pending: s.queue + 1 + s.max_cloud_inflight + 64,
        reply_cache: s.reply_cache,
        max_record_bytes: s.max_request_bytes.max(1 << 20),
    };
    Ok((Journal::open(&dir.join(JOURNAL_FILE), limits)?, lock))
}

/// Runs the service until `shutdown` resolves, then stops cleanly, notifying systemd
/// through `notify` (pass [`Notifier::disabled`] when not a service).
pub async fn run(
    v: Validated,
    engine: Engine,
    shutdown: impl Future<Output = ()>,
    notify: Notifier,
) -> Result<(), ServiceError> {
    let (journal, _state_lock) = open_journal(&v)?;
    let journal = Arc::new(journal);
    tracing::info!("request journal {}", journal.path().display());
    let stats = Arc::new(Stats::default());
    let control = Arc::new(Control::default());
    let routing = Arc::new(Routing::new(&v, &engine)?);
    tokio::spawn(Routing::follow_readings(Arc::downgrade(&routing)));
    restore_estimates(&journal, &routing);
    let s = &v.config.service;
    let intake_config = IntakeConfig {
        limits: Limits {
            max_request_bytes: s.max_request_bytes,
            default_max_tokens: s.default_max_tokens,
            max_tokens_limit: s.max_tokens_limit,
        },
        default_deadline: Duration::from_secs(v.config.router.default_deadline_secs),
        max_cloud_inflight: s.max_cloud_inflight,
    };
    let (intake, jobs, replies) = Intake::start(
        intake_config,
        Arc::clone(&journal),
        Arc::clone(&routing),
        Arc::clone(&stats),
        s.queue,
    );
    let model_name = engine
        .weights()
        .config
        .name
        .clone()
        .unwrap_or_else(|| engine.weights().config.arch.name().to_string());
    let models = http_models(&v, &engine, &model_name, &routing);
    let kernels = engine.compute().kernels.path().name();
    let worker = {
        let (stats, control, routing) = (
            Arc::clone(&stats),
            Arc::clone(&control),
            Arc::clone(&routing),
        );
        let out = intake
            .reply_sender()
            .ok_or_else(|| ServiceError::Client("the intake closed at start".into()))?;
        std::thread::Builder::new()
            .name("spillway-engine".into())
            .spawn(move || worker::run(engine, jobs, out, stats, control, routing))
            .map_err(|e| ServiceError::Client(format!("cannot start the engine thread: {e}")))?
    };
    let recovery = intake.recover().await?;
    if recovery.resent + recovery.resumed + recovery.interrupted > 0 {
        tracing::warn!(
            "the last run ended without answering everything: {} finals sent again, {} \
             requests run again, {} answered `interrupted` (deadline passed)",
            recovery.resent,
            recovery.resumed,
            recovery.interrupted
        );
    }

    notify.status(&format!(
        "connecting to the broker {}:{}",
        v.broker.host, v.broker.port
    ));
    // One registry over the stats and the routing: `GET /metrics` encodes it.
    let metrics = Arc::new(Metrics::new(
        Arc::clone(&stats),
        Arc::clone(&routing) as Arc<dyn metrics::Source>,
    ));
    let ctx = Arc::new(FrontContext {
        v,
        intake: Arc::clone(&intake),
        stats: Arc::clone(&stats),
        routing: Arc::clone(&routing),
        metrics,
        notify,
        model_name,
        kernels,
        started: Instant::now(),
    });
    let waiters = Arc::new(http::replies::Waiters::new());
    let mqtt_replies = http::replies::switch(replies, Arc::clone(&waiters), Arc::clone(&intake));
    let front = MqttFront::start(Arc::clone(&ctx), mqtt_replies)?;
    let http_front = match ctx.v.config.http.listen_addr()? {
        None => None,
        Some(addr) => {
            let state = Arc::clone(front.state());
            let probes = http::Probes {
                broker_connected: Arc::new(move || state.is_connected()),
                metrics: {
                    let metrics = Arc::clone(&ctx.metrics);
                    Arc::new(move || metrics.encode())
                },
            };
            let config = http::HttpConfig {
                addr,
                section: ctx.v.config.http.clone(),
                max_body: ctx.v.config.service.max_request_bytes,
                default_deadline: Duration::from_secs(ctx.v.config.router.default_deadline_secs),
            };
            Some(
                http::HttpFront::start(config, Arc::clone(&intake), waiters, models, probes)
                    .await?,
            )
        }
    };
    let saver = tokio::spawn(save_estimates_every(
        Arc::clone(&journal),
        Arc::clone(&routing),
        Duration::from_secs(300),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let supervisor = ctx.notify.enabled().then(|| {
        tokio::spawn(supervise(
            Arc::clone(&ctx),
            Arc::clone(front.state()),
            Arc::clone(&control),
            stop_rx,
        ))
    });

    shutdown.await;
    let deadline = ctx.v.shutdown_deadline();
    let stop_by = Instant::now() + deadline;
    tracing::info!(
        "shutting down: no new requests; {} in hand get up to {deadline:?} to finish",
        intake.in_flight()
    );
    intake.stop_accepting();
    let _ = stop_tx.send(true);
    ctx.notify.stopping(&format!(
        "shutting down: finishing {} queued, {} running",
        stats.queued.load(Ordering::SeqCst),
        stats.running.load(Ordering::SeqCst)
    ));
    while intake.in_flight() > 0 && Instant::now() < stop_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if intake.in_flight() > 0 {
        tracing::warn!(
            "shutdown deadline of {deadline:?} passed: cancelling {} requests (answered \
             `shutting_down`)",
            intake.in_flight()
        );
        control.cancel_all();
        intake.cancel_spills();
    }
    // From here on at most 2 s: the engine stops within a token (or a prompt batch), the
    // spills answer at once, the front end sends what is left.
    let grace = Instant::now() + Duration::from_millis(1900);
    intake.close();
    let worker = tokio::task::spawn_blocking(move || worker.join());
    if tokio::time::timeout_at(grace.into(), worker).await.is_err() {
        tracing::error!("the engine thread did not stop in time");
    }
    intake
        .join_spills(grace.saturating_duration_since(Instant::now()))
        .await;
    saver.abort();
    save_estimates(&journal, &routing);
    if let Some(h) = http_front {
        h.finish(grace.saturating_duration_since(Instant::now()))
            .await;
    }
    front
        .finish(grace.saturating_duration_since(Instant::now()))
        .await;
    if let Some(s) = supervisor {
        s.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// What the HTTP API says of the models it serves: the local one (its id is the model's
/// name, lower case, spaces as dashes) and the cloud ones requests may name.
fn http_models(v: &Validated, engine: &Engine, name: &str, routing: &Routing) -> http::Models {
    let w = engine.weights();
    let meta = std::fs::metadata(&v.config.model.path).ok();
    let created = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let params = w.config.n_params() as f64;
    let cloud = routing
        .cloud()
        .map(|c| {
            c.endpoint_status()
                .into_iter()
                .map(|s| s.endpoint.model)
                .collect()
        })
        .unwrap_or_default();
    http::Models {
        local: name.trim().to_lowercase().replace(char::is_whitespace, "-"),
        cloud,
        created,
        details: http::ModelDetails {
            family: w.config.arch.name().to_string(),
            parameter_size: if params >= 1e9 {
                format!("{:.1}B", params / 1e9)
            } else {
                format!("{:.1}M", params / 1e6)
            },
            quantization: w
                .layers
                .first()
                .map_or_else(String::new, |l| l.w_gate.ggml_type.name().to_string()),
            file_bytes: meta.map_or(0, |m| m.len()),
            context_length: engine.plan().context,
        },
    }
}

/// The measured estimates admission uses, as the journal's settings name them, with the
/// routing's getter and setter.
type Estimate = (&'static str, fn(&Routing) -> Option<f64>, fn(&Routing, f64));
const ESTIMATES: [Estimate; 2] = [
    (
        "generation_tokens_per_s",
        Routing::generation_rate,
        Routing::restore_generation_rate,
    ),
    (
        "completion_tokens",
        Routing::completion_tokens,
        Routing::restore_completion_tokens,
    ),
];

/// Starts the routing's measured estimates (generation rate, answer length) from the last
/// run's, so admission does not start from a guess after every restart.
fn restore_estimates(journal: &Journal, routing: &Routing) {
    for (name, _, restore) in ESTIMATES {
        match journal.meta(name) {
            Ok(Some(text)) => match text.parse::<f64>() {
                Ok(x) if x.is_finite() && x > 0.0 => {
                    tracing::info!("{name} from the last run: {x:.2}");
                    restore(routing, x);
                }
                _ => tracing::warn!("ignoring an unreadable stored {name} {text:?}"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("request journal: {e}"),
        }
    }
}

/// Saves the routing's measured estimates for the next start.
fn save_estimates(journal: &Journal, routing: &Routing) {
    for (name, get, _) in ESTIMATES {
        if let Some(x) = get(routing)
            && let Err(e) = journal.set_meta(name, &format!("{x:.3}"))
        {
            tracing::warn!("request journal: cannot save {name}: {e}");
        }
    }
}

/// Saves the estimates now and then, so that a crash loses at most a few minutes of
/// measurements.
async fn save_estimates_every(journal: Arc<Journal>, routing: Arc<Routing>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (j, r) = (Arc::clone(&journal), Arc::clone(&routing));
        let _ = tokio::task::spawn_blocking(move || save_estimates(&j, &r)).await;
    }
}

/// What `systemctl status` shows while running.
fn serving_status(ctx: &FrontContext, connection: &ConnectionState) -> String {
    let queued = ctx.stats.queued.load(Ordering::SeqCst);
    let running = ctx.stats.running.load(Ordering::SeqCst);
    if connection.is_connected() {
        format!("serving: {queued} queued, {running} running")
    } else {
        format!(
            "reconnecting to the broker {}:{}: {queued} queued, {running} running",
            ctx.v.broker.host, ctx.v.broker.port
        )
    }
}

/// Under systemd: keeps `STATUS=` current (until shutdown, which sets its own) and, when
/// systemd wants watchdog pings, sends them at half its interval while the engine thread
/// is healthy (idle, or beating within the interval): a wedged generation stops the pings
/// and systemd restarts the daemon.
async fn supervise(
    ctx: Arc<FrontContext>,
    connection: Arc<ConnectionState>,
    control: Arc<Control>,
    mut stop: watch::Receiver<bool>,
) {
    let watchdog = ctx.notify.watchdog();
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
                    ctx.notify.ping();
                } else if !wedged {
                    tracing::error!(
                        "the engine made no progress for over {limit:?}: no more watchdog pings"
                    );
                    wedged = true;
                }
            }
            _ = status_tick.tick(), if !stopping => {
                // Before the first connection the start-up status stands.
                if !connection.is_connected() && last_status.is_empty() {
                    continue;
                }
                let status = serving_status(&ctx, &connection);
                if status != last_status {
                    ctx.notify.status(&status);
                    last_status = status;
                }
            }
            _ = stop.changed(), if !stopping => stopping = true,
        }
    }
}
