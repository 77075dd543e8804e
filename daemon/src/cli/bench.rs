//! `spillway bench`: prompt-processing and text-generation speed, as llama.cpp's
//! `llama-bench` measures them: `pp` evaluates P prompt tokens as batches from an empty
//! cache, `tg` generates N tokens one at a time from an empty cache (random token ids, no
//! sampling); each is repeated and reported as mean ± standard deviation of tokens/s,
//! after one warm-up run. `--tools` measures constrained decoding ([`bench_tools`]),
//! `--concurrency` several streams batched together ([`bench_batch`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use spillway_gguf::GgufFile;
use spillway_kernels::{PoolConfig, ThreadPool, dispatch};

use crate::cli::bench_input::{random_ids, stats};
use crate::cli::logits::KvArg;
use crate::cli::{bench_batch, bench_tools};
use crate::engine::resident_bytes;
use crate::model::{Compute, Forward, KvCache, LogitsFor, ModelWeights};
use crate::units::human_bytes;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The GGUF model.
    #[arg(long, value_name = "GGUF")]
    model: PathBuf,
    /// Prompt tokens to process (0 to skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Tokens to generate (0 to skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Threads (defaults to every CPU).
    #[arg(short = 't', long, value_name = "N")]
    threads: Option<usize>,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 5)]
    reps: usize,
    /// Prompt tokens per batch (llama-bench's ubatch).
    #[arg(short = 'b', long, default_value_t = 512)]
    batch: usize,
    /// KV cache element type.
    #[arg(long, value_enum, default_value_t = KvArg::F16)]
    kv: KvArg,
    /// Pin threads to these CPUs (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    cpus: Option<Vec<usize>>,
    /// Also measure constrained decoding: generation with these tools (a JSON array of
    /// OpenAI tool definitions, or a request with `tools`) under `tool_choice: required`,
    /// against the same generation free, through the engine and its sampler (`-n` tokens
    /// at most; the model needs a vocabulary).
    #[arg(long, value_name = "JSON")]
    tools: Option<PathBuf>,
    /// Measure continuous batching instead: for each stream count in LIST (e.g. 1,2,4,8),
    /// that many requests of `-p` prompt and `-n` generated tokens started together and
    /// stepped as the service does; prints aggregate and per-stream decode t/s, prompt t/s
    /// and time to first token, as llama-batched-bench does. A short prompt (-p 32) keeps
    /// the run short.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    concurrency: Option<Vec<usize>>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.reps >= 1, "--reps must be at least 1");
    anyhow::ensure!(
        args.n_prompt + args.n_gen > 0,
        "nothing to measure: -p and -n are both 0"
    );
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    if let Some(levels) = &args.concurrency {
        return run_concurrency(&args, threads, levels);
    }
    let file = Arc::new(GgufFile::open(&args.model)?);
    let w = ModelWeights::new(Arc::clone(&file))
        .with_context(|| format!("{}", args.model.display()))?;
    let compute = Compute::new(
        ThreadPool::new(PoolConfig {
            threads,
            cpus: args.cpus.clone(),
            ..PoolConfig::with_threads(threads)
        })?,
        dispatch::select()?,
    );
    let n_ctx = args.n_prompt.max(args.n_gen).max(1);
    let batch = args.batch.clamp(1, args.n_prompt.max(1));
    let mut fwd = Forward::new(&w, n_ctx, batch, false, threads);
    let mut kv = KvCache::new(&w.config, args.kv.into(), n_ctx)?;
    let mut next_id = random_ids(w.config.n_vocab);
    let prompt: Vec<u32> = (0..args.n_prompt).map(|_| next_id()).collect();
    let generated: Vec<u32> = (0..args.n_gen).map(|_| next_id()).collect();

    let mut measure = |tokens: &[u32], one_by_one: bool| -> anyhow::Result<f64> {
        kv.truncate(0);
        let start = Instant::now();
        if one_by_one {
            for &t in tokens {
                fwd.eval(&w, &mut kv, &[t], LogitsFor::Last, &compute)?;
            }
        } else {
            fwd.eval(&w, &mut kv, tokens, LogitsFor::Last, &compute)?;
        }
        Ok(tokens.len() as f64 / start.elapsed().as_secs_f64())
    };
    let mut results = Vec::new();
    for (name, tokens, one_by_one) in [("pp", &prompt, false), ("tg", &generated, true)] {
        if tokens.is_empty() {
            continue;
        }
        measure(tokens, one_by_one)?; // warm-up: page in the weights, spin up the threads
        let runs = (0..args.reps)
            .map(|_| measure(tokens, one_by_one))
            .collect::<anyhow::Result<Vec<f64>>>()?;
        let (mean, sd) = stats(&runs);
        results.push((name, tokens.len(), mean, sd));
    }
    let constrained = match &args.tools {
        None => None,
        Some(tools) => {
            drop(fwd);
            drop(kv);
            let n_gen = args.n_gen.max(16);
            Some(bench_tools::measure(
                &args.model,
                tools,
                threads,
                n_gen,
                args.reps,
            )?)
        }
    };
    let rss = resident_bytes();
    let kernels = compute.kernels.path();
    if args.json {
        let mut obj = json!({
            "model": args.model.display().to_string(),
            "threads": threads,
            "kernels": kernels.name(),
            "rss_bytes": rss,
        });
        for (name, n, mean, sd) in &results {
            obj[*name] = json!({"n": n, "tokens_per_s": mean, "sd": sd});
        }
        if let Some((modes, compile_ms)) = &constrained {
            let mut c = json!({"grammar_compile_ms": compile_ms});
            for m in modes {
                let (mean, sd) = stats(&m.runs);
                c[m.name] = json!({"tokens_per_s": mean, "sd": sd, "tokens": m.tokens});
            }
            obj["constrained"] = c;
        }
        println!("{obj}");
    } else {
        let name = w
            .config
            .name
            .clone()
            .unwrap_or_else(|| w.config.arch.name().to_string());
        println!("| model | size | params | kernels | threads | test | t/s |");
        println!("| --- | ---: | ---: | --- | ---: | ---: | ---: |");
        for (test, n, mean, sd) in &results {
            println!(
                "| {name} | {} | {:.2} B | {kernels} | {threads} | {test}{n} | {mean:.2} ± {sd:.2} |",
                human_bytes(w.bytes()),
                w.config.n_params() as f64 / 1e9
            );
        }
        if let Some((modes, compile_ms)) = &constrained {
            println!("\n| sampled generation | t/s | tokens per run |");
            println!("| --- | ---: | --- |");
            for m in modes {
                let (mean, sd) = stats(&m.runs);
                println!("| {} | {mean:.2} ± {sd:.2} | {:?} |", m.name, m.tokens);
            }
            let free = stats(&modes[0].runs).0;
            let tools = stats(&modes[1].runs).0;
            println!(
                "\nconstraint overhead: {:.1}% of the free rate; grammar compiled in {compile_ms:.1} ms",
                (1.0 - tools / free) * 100.0
            );
        }
        if let Some(r) = rss {
            println!("\nresident memory: {}", human_bytes(r));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--concurrency`: several streams batched together ([`bench_batch`]), printed.
fn run_concurrency(args: &BenchArgs, threads: usize, levels: &[usize]) -> anyhow::Result<ExitCode> {
    let spec = bench_batch::Spec {
        model: &args.model,
        threads,
        kv: args.kv.into(),
        batch: args.batch.max(1),
        n_prompt: args.n_prompt,
        n_gen: args.n_gen,
        reps: args.reps,
        levels,
    };
    let (levels, kernels) = bench_batch::measure(&spec)?;
    if args.json {
        let obj = json!({
            "model": args.model.display().to_string(),
            "threads": threads,
            "kernels": kernels.name(),
            "n_prompt": args.n_prompt,
            "n_gen": args.n_gen,
            "concurrency": bench_batch::to_json(&levels),
        });
        println!("{obj}");
    } else {
        println!(
            "{}: {threads} threads, {} kernels, -p {} -n {}, {} repetitions",
            args.model.display(),
            kernels.name(),
            args.n_prompt,
            args.n_gen,
            args.reps
        );
        bench_batch::print_table(&levels);
    }
    Ok(ExitCode::SUCCESS)
}
