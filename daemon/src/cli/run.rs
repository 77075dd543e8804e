//! `spillway run`: one chat turn from the command line. Formats the Instruct prompt,
//! streams the answer to stdout as it is generated, and prints the memory plan and timings
//! (prompt tokens/s, generation tokens/s, time to first token) to stderr.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Args;

use crate::cli::logits::KvArg;
use crate::engine::{Engine, EngineConfig, GenerateRequest, SamplingParams};
use crate::tokenizer::ChatPrompt;
use crate::units::parse_bytes;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The GGUF model (with its tokenizer).
    #[arg(long, value_name = "GGUF")]
    model: PathBuf,
    /// The user's message.
    #[arg(long, value_name = "TEXT")]
    prompt: String,
    /// A system prompt.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Most tokens to generate (the service's default, `service.default_max_tokens`, is
    /// the same 512); generation also stops at the end-of-sequence token or the context's end.
    #[arg(long, value_name = "N", default_value_t = 512)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = SamplingParams::default().temperature)]
    temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the K most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Drop tokens less likely than this fraction of the most likely (0: off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Penalise tokens repeated within the last 64 (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Stop when the answer contains this text (repeatable, at most 4).
    #[arg(long, value_name = "TEXT")]
    stop: Vec<String>,
    /// Random seed (same seed, same answer).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compute threads (defaults to every CPU).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Context size in tokens.
    #[arg(long, default_value_t = 4096)]
    context: usize,
    /// KV cache element type.
    #[arg(long, value_enum, default_value_t = KvArg::F16)]
    kv: KvArg,
    /// Refuse to start if the memory plan exceeds this (e.g. 3GiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    ram_budget: Option<u64>,
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = EngineConfig::new(&args.model);
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    cfg.context = args.context;
    cfg.kv_type = args.kv.into();
    cfg.ram_budget = args.ram_budget;
    let mut engine =
        Engine::load(&cfg).with_context(|| format!("loading {}", args.model.display()))?;
    let report = engine.load_report().clone();
    eprintln!("{}", engine.plan());
    eprintln!(
        "loaded in {:.2}s{}; {} kernels, {} threads",
        report.seconds,
        report
            .resident_bytes
            .map(|r| format!(", resident {}", crate::units::human_bytes(r)))
            .unwrap_or_default(),
        engine.compute().kernels.path(),
        engine.compute().pool.threads()
    );

    let tok = engine
        .tokenizer()
        .context("this model has no tokenizer; `spillway run` needs one (use `spillway logits` for id-only models)")?;
    let mut chat = ChatPrompt::new();
    if let Some(s) = &args.system {
        chat = chat.system(s.clone());
    }
    let prompt = chat.user(args.prompt.clone()).encode(tok)?;
    let req = GenerateRequest {
        prompt,
        session: None,
        owner: None,
        max_tokens: Some(args.max_tokens),
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            seed: args.seed,
            ..SamplingParams::default()
        },
        stop: args.stop.clone(),
        constraint: None,
    };
    let mut out = std::io::stdout().lock();
    let mut write_err = None;
    let done = engine.generate(&req, &AtomicBool::new(false), |ev| {
        if let Err(e) = out.write_all(ev.text.as_bytes()).and_then(|_| out.flush()) {
            // stdout closed (e.g. piped into `head`): stop generating.
            write_err = Some(e);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    let _ = writeln!(out);
    let t = &done.timings;
    eprintln!(
        "\nprompt: {} tokens ({} from cache) in {:.2}s, {:.1} tokens/s; generation: {} tokens in {:.2}s, {:.2} tokens/s; time to first token {:.0} ms; finish: {}",
        done.prompt_tokens,
        done.cached_tokens,
        t.prompt.as_secs_f64(),
        t.prompt_tokens_per_s(),
        done.completion_tokens,
        t.generation.as_secs_f64(),
        done.generation_tokens_per_s(),
        t.time_to_first_token.as_secs_f64() * 1e3,
        done.finish_reason.as_str()
    );
    match write_err {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}
