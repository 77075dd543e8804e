//! `spillway logits`: evaluate token ids from position 0 and write every position's logits
//! (one row of `n_vocab` little-endian f32 per position), either as one batch (`prefill`) or
//! one token at a time through the KV cache (`decode`). For comparing with other
//! implementations.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use spillway_gguf::GgufFile;
use spillway_kernels::{PoolConfig, ThreadPool, dispatch};

use crate::model::{Compute, Forward, KvCache, KvType, LogitsFor, ModelWeights};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// All ids as one batch (matrix–matrix kernels).
    Prefill,
    /// One id at a time through the KV cache (matrix–vector kernels).
    Decode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KvArg {
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

impl From<KvArg> for KvType {
    fn from(k: KvArg) -> KvType {
        match k {
            KvArg::F16 => KvType::F16,
            KvArg::Q8_0 => KvType::Q8_0,
        }
    }
}

#[derive(Debug, Args)]
pub struct LogitsArgs {
    /// The GGUF model.
    #[arg(long, value_name = "GGUF")]
    model: PathBuf,
    /// Token ids, whitespace-separated.
    #[arg(long, value_name = "FILE")]
    ids: PathBuf,
    /// Output: one row of n_vocab little-endian f32 logits per position.
    #[arg(long, value_name = "OUT.f32")]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = Mode::Prefill)]
    mode: Mode,
    /// KV cache element type.
    #[arg(long, value_enum, default_value_t = KvArg::F16)]
    kv: KvArg,
    /// Threads (defaults to every CPU).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

pub(crate) fn run(args: LogitsArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.ids)
        .with_context(|| format!("cannot read {}", args.ids.display()))?;
    let ids = text
        .split_whitespace()
        .map(|s| {
            s.parse::<u32>()
                .with_context(|| format!("{s:?} in {} is not a token id", args.ids.display()))
        })
        .collect::<anyhow::Result<Vec<u32>>>()?;
    anyhow::ensure!(!ids.is_empty(), "{} holds no token ids", args.ids.display());

    let threads = args.threads.unwrap_or_else(default_threads).max(1);
    let loaded = Instant::now();
    let file = Arc::new(GgufFile::open(&args.model)?);
    let w = ModelWeights::new(file).with_context(|| format!("{}", args.model.display()))?;
    let compute = Compute::new(
        ThreadPool::new(PoolConfig::with_threads(threads))?,
        dispatch::select()?,
    );
    let n = ids.len();
    let mut kv = KvCache::new(&w.config, args.kv.into(), n)?;
    let batch = if args.mode == Mode::Prefill { n } else { 1 };
    let mut fwd = Forward::new(&w, n, batch, args.mode == Mode::Prefill, threads);
    tracing::info!(
        "loaded {} in {:.2}s",
        args.model.display(),
        loaded.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let mut out = Vec::with_capacity(n * w.config.n_vocab * 4);
    match args.mode {
        Mode::Prefill => {
            let logits = fwd.eval(&w, &mut kv, &ids, LogitsFor::All, &compute)?;
            out.extend(logits.iter().flat_map(|v| v.to_le_bytes()));
        }
        Mode::Decode => {
            for &id in &ids {
                let logits = fwd.eval(&w, &mut kv, &[id], LogitsFor::Last, &compute)?;
                out.extend(logits.iter().flat_map(|v| v.to_le_bytes()));
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    std::fs::File::create(&args.out)
        .and_then(|mut f| f.write_all(&out))
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "{n} positions x {} logits in {secs:.3}s ({:.1} tokens/s, {} kernels, {threads} threads) -> {}",
        w.config.n_vocab,
        n as f64 / secs,
        compute.kernels.path(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
