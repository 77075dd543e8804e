//! `spillway synth`: write a random-weight Ministral 3 model (tiny or the real 3B shapes) in
//! one of llama.cpp's quantization mixes. For tests and benchmarks, where real weights
//! cannot be downloaded and large files must not be committed.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::partial::PartialFile;
use crate::synth::{self, Quant, Shape, SynthSpec};
use crate::tokenizer::Tokenizer;
use crate::units::human_bytes;

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Model shape.
    #[arg(long, value_enum)]
    shape: Shape,
    /// Quantization mix (llama.cpp's: q4_k_m keeps the embedding and some attn_v/ffn_down
    /// tensors at Q6_K; q4_0 keeps the embedding at Q6_K).
    #[arg(long, value_enum)]
    quant: Quant,
    /// Embed this mistral-common `tekken.json` vocabulary (tokens, merges, token types,
    /// bos/eos) the way llama.cpp's converter does; without it the model is `no_vocab` and
    /// takes token ids.
    #[arg(long, value_name = "PATH")]
    tekken: Option<PathBuf>,
    /// Seed of the random weights (same seed, same file).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads quantizing (defaults to every CPU).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Output GGUF file (written to FILE.partial, then renamed).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub(crate) fn run(args: SynthArgs) -> anyhow::Result<ExitCode> {
    let tokenizer = match &args.tekken {
        None => None,
        Some(path) => {
            let tok = Tokenizer::from_tekken_json(path)?;
            Some(synth::Tokenizer {
                metadata: tok.gguf_metadata()?,
                n_vocab: tok.n_vocab() as u64,
            })
        }
    };
    let spec = SynthSpec {
        shape: args.shape,
        quant: args.quant,
        seed: args.seed,
        tokenizer,
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let (partial, file) = PartialFile::create(&args.out)?;
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_report = Instant::now();
    let result = synth::write(
        &spec,
        BufWriter::with_capacity(1 << 20, file),
        threads,
        |p| {
            // A live line on a terminal; a line every few seconds in logs.
            let due = last_report.elapsed().as_secs_f32() >= if tty { 0.2 } else { 5.0 };
            if due || p.tensors_done == p.tensors_total {
                last_report = Instant::now();
                let secs = started.elapsed().as_secs_f64();
                let frac = p.bytes_done as f64 / p.bytes_total.max(1) as f64;
                let eta = if frac > 0.0 { secs / frac - secs } else { 0.0 };
                let line = format!(
                    "synth: {}/{} tensors, {} of {} ({:.0}%), {secs:.0}s elapsed, about {eta:.0}s left",
                    p.tensors_done,
                    p.tensors_total,
                    human_bytes(p.bytes_done),
                    human_bytes(p.bytes_total),
                    frac * 100.0
                );
                if tty {
                    eprint!("\r{line}\x1b[K");
                } else {
                    tracing::info!("{line}");
                }
            }
        },
    );
    if tty {
        eprintln!();
    }
    match result {
        Ok(_) => {
            partial.commit()?;
            let size = std::fs::metadata(&args.out)?.len();
            let mut stdout = std::io::stdout().lock();
            writeln!(
                stdout,
                "wrote {} ({} {} model{}, seed {}, {} bytes = {}) in {:.1}s",
                args.out.display(),
                spec.shape.name(),
                spec.quant.name(),
                if spec.tokenizer.is_some() {
                    " with the Tekken vocabulary"
                } else {
                    ""
                },
                spec.seed,
                size,
                human_bytes(size),
                started.elapsed().as_secs_f64()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        // Dropping `partial` removes the half-written file.
        Err(e) => Err(e).context(format!("writing {}", args.out.display())),
    }
}
