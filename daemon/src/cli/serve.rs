//! `spillway serve`: load the model under its memory plan, connect to the broker, answer
//! requests until SIGTERM or SIGINT, then stop cleanly (see [`crate::service`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::config::{BoardChoice, Config, Overrides, RamBudgetSetting};
use crate::engine::Engine;
use crate::service::notify::Notifier;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML; `spillway config --print-default` shows every setting).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The GGUF model (model.path).
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT (mqtt.broker).
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
    /// Device id in topics (mqtt.device; default: the hostname).
    #[arg(long, value_name = "ID")]
    device: Option<String>,
    /// Compute threads (engine.threads).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Largest memory plan allowed, e.g. 3GiB (engine.ram_budget).
    #[arg(long, value_name = "BYTES")]
    ram_budget: Option<RamBudgetSetting>,
    /// Requests that may wait for the engine (service.queue).
    #[arg(long, value_name = "N")]
    queue: Option<usize>,
    /// Directory of the request journal (service.state_dir; default: systemd's
    /// $STATE_DIRECTORY, else /var/lib/spillway as root, else ~/.local/state/spillway).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Read /sys and /proc under this directory instead of / (router.fs_root; for tests
    /// and containers).
    #[arg(long, value_name = "DIR")]
    fs_root: Option<PathBuf>,
    /// Board profile: auto, a family (raspberry-pi-4, raspberry-pi-5, rk3588, jetson-orin,
    /// generic) or a RAM variant such as raspberry-pi-5-8gb (router.board; see `spillway
    /// board --list`).
    #[arg(long, value_name = "NAME")]
    board: Option<BoardChoice>,
    /// Spill over HTTPS to this OpenAI-compatible router (default
    /// `https://router.huggingface.co/v1`; giving any --cloud-* flag turns HTTPS spill-over on).
    #[arg(long, value_name = "URL")]
    cloud_base_url: Option<String>,
    /// Model to ask the cloud router for, with its suffixes (:fastest, :cheapest, :provider).
    #[arg(long, value_name = "NAME")]
    cloud_model: Option<String>,
    /// File holding the cloud API token (mode 0600 or stricter); systemd credentials
    /// (`hf-token`) and HF_TOKEN are also looked at.
    #[arg(long, value_name = "FILE")]
    cloud_token_file: Option<PathBuf>,
    /// Also serve the OpenAI- and Ollama-compatible HTTP API (and /metrics) on ADDR: a
    /// PORT (on loopback), IP:PORT or `[IPv6]:PORT` (http.listen). Any address but loopback
    /// needs an API key (http.api_key_file or the systemd credential http-api-key).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
}

impl ServeArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            model: self.model.clone(),
            broker: self.broker.clone(),
            device: self.device.clone(),
            threads: self.threads,
            ram_budget: self.ram_budget,
            queue: self.queue,
            state_dir: self.state_dir.clone(),
            fs_root: self.fs_root.clone(),
            board: self.board.clone(),
            cloud_base_url: self.cloud_base_url.clone(),
            cloud_model: self.cloud_model.clone(),
            cloud_token_file: self.cloud_token_file.clone(),
            http: self.http.clone(),
        }
    }
}

/// Resolves when the process is asked to stop (SIGTERM from systemd, SIGINT from a terminal).
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we can only run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    config.apply(&args.overrides());
    let v = config.resolve()?;
    tracing::info!(
        "device {} on {}://{}:{}, requests on {}",
        v.device,
        if v.broker.tls { "mqtts" } else { "mqtt" },
        v.broker.host,
        v.broker.port,
        v.topics.request
    );
    let board = &v.board;
    tracing::info!(
        "board {} ({}; {}); RAM budget {}",
        board.profile.name,
        board.family_reason,
        board.variant_reason,
        v.budget_source
    );
    let missing = board.profile.missing_features(&v.host);
    if !missing.is_empty() {
        tracing::warn!(
            "this CPU lacks {} that the {} profile expects: slower kernels, or the wrong \
             profile (router.board)",
            missing.join(" "),
            board.profile.family
        );
    }
    let notify = Notifier::from_env();
    if notify.enabled() {
        tracing::debug!(
            "notifying systemd; watchdog {}",
            notify
                .watchdog()
                .map_or("off".to_string(), |w| format!("every {w:?}"))
        );
    }
    // Requests are chat messages: a model without a tokenizer would load and then fail every
    // one of them, so it is refused before any memory is committed to it.
    let has_tokenizer = crate::engine::has_tokenizer(&v.engine.model)
        .with_context(|| format!("reading {}", v.engine.model.display()))?;
    if !has_tokenizer {
        anyhow::bail!(
            "the model {} has no tokenizer (its tokenizer.ggml.model is missing or \"no_vocab\"), \
             and `spillway serve` must tokenize the chat messages it receives: use a GGUF that \
             includes its tokenizer",
            v.engine.model.display()
        );
    }
    notify.status(&format!("loading the model {}", v.engine.model.display()));
    let engine =
        Engine::load(&v.engine).with_context(|| format!("loading {}", v.engine.model.display()))?;
    for line in engine.plan().to_string().lines() {
        tracing::info!("{line}");
    }
    let load = engine.load_report();
    tracing::info!(
        "model loaded in {:.2}s{}; {} kernels, {} threads",
        load.seconds,
        load.resident_bytes
            .map(|r| format!(", resident {}", crate::units::human_bytes(r)))
            .unwrap_or_default(),
        engine.compute().kernels.path(),
        engine.compute().pool.threads()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("spillway-io")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(crate::service::run(v, engine, stop_signal(), notify))?;
    Ok(ExitCode::SUCCESS)
}
