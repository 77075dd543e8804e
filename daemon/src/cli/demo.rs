//! `spillway demo`: the whole path in one command, with nothing installed. Starts an
//! embedded MQTT broker (rumqttd, which carries the MQTT 5 response topic, correlation data
//! and message expiry we rely on) on a free loopback port, loads `--model` or synthesizes a
//! tiny random-weight model on first use (cached; with Mistral's Tekken vocabulary when a
//! `tekken.json` is at hand, else the built-in demo vocabulary), starts the service, sends one prompt
//! through a real MQTT 5 client, prints the streamed reply and how it was routed, and exits.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use super::partial::PartialFile;
use crate::config::Config;
use crate::engine::Engine;
use crate::synth::{self, Quant, Shape, SynthSpec};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// A GGUF model with its tokenizer (default: a tiny random-weight model, synthesized
    /// once and cached; its answers are gibberish by design).
    #[arg(long, value_name = "GGUF")]
    model: Option<PathBuf>,
    /// mistral-common's tekken.json, to synthesize the tiny model's vocabulary (default:
    /// SPILLWAY_TEKKEN, or the shared fixtures beside a checkout, else a small vocabulary
    /// built into the binary).
    #[arg(long, value_name = "PATH")]
    tekken: Option<PathBuf>,
    /// Use the small vocabulary built into the binary even when a tekken.json is at hand.
    #[arg(long, conflicts_with_all = ["tekken", "model"])]
    builtin_vocab: bool,
    /// The prompt to send.
    #[arg(long, default_value = "What is the capital of France?")]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 48)]
    max_tokens: usize,
}

/// Where a cached demo model lives: `$XDG_CACHE_HOME/spillway` or `~/.cache/spillway`.
fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("spillway")
}

/// Where the demo model's vocabulary comes from.
enum Vocabulary {
    /// A mistral-common `tekken.json`: Mistral's own vocabulary.
    Tekken(PathBuf),
    /// The small vocabulary built into the binary ([`Tokenizer::demo`]).
    BuiltIn,
}

/// `--tekken`, else `SPILLWAY_TEKKEN`, else the shared fixtures beside a checkout, else the
/// built-in vocabulary: the demo works offline from a plain clone.
fn find_vocabulary(given: Option<&Path>, builtin: bool) -> anyhow::Result<Vocabulary> {
    if builtin {
        return Ok(Vocabulary::BuiltIn);
    }
    if let Some(p) = given {
        if !p.is_file() {
            bail!("--tekken {}: no such file", p.display());
        }
        return Ok(Vocabulary::Tekken(p.to_owned()));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("SPILLWAY_TEKKEN")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    for base in [
        PathBuf::from("."),
        PathBuf::from(".."),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
    ] {
        candidates.push(base.join("shared/fixtures/tekken_240911.json"));
    }
    Ok(candidates
        .into_iter()
        .find(|p| p.is_file())
        .map_or(Vocabulary::BuiltIn, Vocabulary::Tekken))
}

/// A short fingerprint of a vocabulary (FNV-1a over every token's bytes), so that a cached
/// demo model is reused only with the vocabulary it was made with.
fn fingerprint(tok: &Tokenizer) -> anyhow::Result<u64> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for id in 0..tok.n_vocab() as u32 {
        for b in tok.decode_bytes(&[id])?.into_iter().chain([0xff]) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(hash)
}

/// The tiny demo model, synthesized into the cache on first use with each vocabulary.
fn demo_model(tekken: Option<&Path>, builtin: bool) -> anyhow::Result<PathBuf> {
    let (tok, source) = match find_vocabulary(tekken, builtin)? {
        Vocabulary::Tekken(path) => (
            Tokenizer::from_tekken_json(&path)?,
            format!("the Tekken vocabulary in {}", path.display()),
        ),
        Vocabulary::BuiltIn => (
            Tokenizer::demo()?,
            "the built-in demo vocabulary (pass --tekken tekken.json for Mistral's)".to_owned(),
        ),
    };
    let path = cache_dir().join(format!("demo-tiny-{:016x}-q4_k_m.gguf", fingerprint(&tok)?));
    if path.is_file() {
        return Ok(path);
    }
    eprintln!(
        "synthesizing a tiny random-weight demo model with {source}, once, into {} ...",
        path.display()
    );
    std::fs::create_dir_all(path.parent().expect("a file in a dir"))
        .with_context(|| format!("cannot create {}", cache_dir().display()))?;
    let spec = SynthSpec {
        shape: Shape::Tiny,
        quant: Quant::Q4KM,
        seed: 3,
        tokenizer: Some(synth::Tokenizer {
            metadata: tok.gguf_metadata()?,
            n_vocab: tok.n_vocab() as u64,
        }),
    };
    let (partial, file) = PartialFile::create(&path)?;
    synth::write(&spec, std::io::BufWriter::new(file), 2, |_| {})?;
    partial.commit()?;
    Ok(path)
}

/// An embedded rumqttd broker on `port` (MQTT 5 and 3.1.1 listeners), in the background.
fn start_broker(port_v5: u16, port_v4: u16) {
    let conn = rumqttd::ConnectionSettings {
        connection_timeout_ms: 5000,
        max_payload_size: 1 << 20,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, port: u16| rumqttd::ServerSettings {
        name: name.into(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        tls: None,
        next_connection_delay_ms: 1,
        connections: conn.clone(),
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 200,
            max_segment_size: 1 << 20,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_string(), server("v4", port_v4))])),
        v5: Some(HashMap::from([("v5".to_string(), server("v5", port_v5))])),
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            if let Err(e) = rumqttd::Broker::new(config).start() {
                eprintln!("embedded broker stopped: {e}");
            }
        })
        .expect("spawning the broker thread");
}

/// Removes a directory when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let model = match &args.model {
        Some(m) => m.clone(),
        None => demo_model(args.tekken.as_deref(), args.builtin_vocab)?,
    };
    let (port, port_v4) = (free_port()?, free_port()?);
    start_broker(port, port_v4);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("embedded MQTT broker on 127.0.0.1:{port} (MQTT 5) and :{port_v4} (MQTT 3.1.1)");

    let mut config = Config::default();
    config.model.path = model.clone();
    config.mqtt.broker = format!("mqtt://127.0.0.1:{port}");
    config.mqtt.device = "demo".into();
    config.engine.context = 2048;
    config.service.telemetry_secs = 0;
    // A journal of its own for each run: the demo's one request must not be answered from
    // the last run's reply cache.
    let state = std::env::temp_dir().join(format!("spillway-demo-{}", std::process::id()));
    config.service.state_dir = state.clone();
    let _remove_state = RemoveOnDrop(state);
    let v = config.resolve()?;
    let request_topic = v.topics.request.clone();
    let engine = Engine::load(&v.engine).with_context(|| format!("loading {}", model.display()))?;
    println!(
        "model {} ({} kernels, {} threads); service listening on {request_topic}",
        model.display(),
        engine.compute().kernels.path(),
        engine.compute().pool.threads()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let service = tokio::spawn(crate::service::run(
            v,
            engine,
            async {
                let _ = stop_rx.await;
            },
            crate::service::notify::Notifier::disabled(),
        ));

        let mut opts = MqttOptions::new("spillway-demo-client", "127.0.0.1", port);
        opts.set_max_packet_size(Some(1 << 20));
        let (client, mut events) = AsyncClient::new(opts, 64);
        client.subscribe("demo/replies", QoS::AtLeastOnce).await?;
        let request = serde_json::json!({
            "id": "demo-1",
            "prompt": args.prompt,
            "max_tokens": args.max_tokens,
            "seed": 1,
        });
        let mut subscribed_status = false;
        let mut sent = false;
        let mut answered = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut out = std::io::stdout();
        while answered.is_none() {
            let ev = tokio::time::timeout_at(deadline, events.poll())
                .await
                .context("no answer within 120 s")??;
            match ev {
                // Once the reply subscription is in place, watch the service's retained
                // status; the request goes out when it says `online`.
                Event::Incoming(Packet::SubAck(_)) if !subscribed_status => {
                    subscribed_status = true;
                    client
                        .subscribe("spillway/demo/status", QoS::AtLeastOnce)
                        .await?;
                }
                Event::Incoming(Packet::Publish(p))
                    if p.topic.as_ref() == b"spillway/demo/status"
                        && p.payload.as_ref() == b"online"
                        && !sent =>
                {
                    sent = true;
                    println!("request on {request_topic}: {request}");
                    print!("answer: ");
                    let props = PublishProperties {
                        response_topic: Some("demo/replies".into()),
                        correlation_data: Some(bytes::Bytes::from_static(b"demo-1")),
                        ..PublishProperties::default()
                    };
                    client
                        .publish_with_properties(
                            request_topic.clone(),
                            QoS::AtLeastOnce,
                            false,
                            request.to_string(),
                            props,
                        )
                        .await?;
                }
                Event::Incoming(Packet::Publish(p)) if p.topic.as_ref() == b"spillway/demo/status" => {}
                Event::Incoming(Packet::Publish(p)) => {
                    let msg: serde_json::Value = serde_json::from_slice(&p.payload)?;
                    if msg["done"] == true {
                        answered = Some(msg);
                    } else if let Some(d) = msg["delta"].as_str() {
                        print!("{d}");
                        let _ = out.flush();
                    }
                }
                _ => {}
            }
        }
        let done = answered.expect("loop ends with an answer");
        println!();
        if let Some(err) = done.get("error") {
            bail!("the service answered with an error: {err}");
        }
        println!(
            "route: {} ({}); finish: {}; {} prompt + {} generated tokens; {:.1} tokens/s; first token after {:.0} ms",
            done["route"].as_str().unwrap_or("?"),
            done["reason"].as_str().unwrap_or(""),
            done["finish_reason"].as_str().unwrap_or("?"),
            done["usage"]["prompt_tokens"],
            done["usage"]["completion_tokens"],
            done["timings"]["generation_tokens_per_s"].as_f64().unwrap_or(0.0),
            done["timings"]["time_to_first_token_ms"].as_f64().unwrap_or(0.0),
        );
        if args.model.is_none() {
            println!("(a tiny model with random weights answers gibberish; give --model for a real one)");
        }
        let _ = stop_tx.send(());
        service.await??;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
