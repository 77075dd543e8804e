//! Command-line interface: the argument types and one module per subcommand.

mod bench;
mod bench_batch;
mod bench_input;
mod bench_tools;
mod board;
mod config;
mod demo;
mod inspect;
mod kernels;
mod logits;
mod partial;
mod run;
mod serve;
mod synth;
mod tokenize;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Spillway runs Ministral 3 on ARM boards under a RAM budget and spills requests to the
/// cloud when the board is too hot, short of memory or too busy.
#[derive(Debug, Parser)]
#[command(name = "spillway", version, propagate_version = true)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). `SPILLWAY_LOG` (tracing's filter syntax,
    /// e.g. `spillway=debug`) takes precedence.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: take prompts over MQTT, answer with streamed tokens (until SIGTERM).
    Serve(serve::ServeArgs),
    /// Show the board profile that applies here (detected or configured), the engine
    /// settings it leads to, and the configured model's memory plan; exits 1 if the model
    /// does not fit. `--list` shows every profile.
    Board(board::BoardArgs),
    /// Print the commented default configuration, or check a configuration file.
    Config(config::ConfigArgs),
    /// See it work: embedded MQTT broker, a (synthesized) model, the service, one prompt
    /// sent over MQTT and its streamed answer.
    Demo(demo::DemoArgs),
    /// Report the CPU's kernel paths, self-check them against the scalar reference, and
    /// optionally measure matrix–vector bandwidth against the memory's read roofline.
    Kernels(kernels::KernelsArgs),
    /// Show what a GGUF model file holds (hyperparameters, tokenizer, tensors) and what it
    /// needs in memory; `--json` for a machine-readable dump. Exits 1 on an invalid file.
    Inspect(inspect::InspectArgs),
    /// Write a random-weight Ministral 3 model (tiny, or the real 3B shapes) as GGUF, in one
    /// of llama.cpp's quantization mixes, for tests and benchmarks.
    Synth(synth::SynthArgs),
    /// Evaluate token ids from position 0 and write every position's logits (little-endian
    /// f32, one row of n_vocab per position), as one batch or one token at a time.
    Logits(logits::LogitsArgs),
    /// One chat turn: format the prompt, stream the answer to stdout, print timings
    /// (prompt and generation tokens/s, time to first token) to stderr.
    Run(run::RunArgs),
    /// Measure prompt processing and text generation speed, llama-bench style (mean ± sd
    /// tokens/s over repetitions); `--json` for one machine-readable object.
    Bench(bench::BenchArgs),
    /// Tokenize stdin with the Tekken vocabulary of a GGUF model or a tekken.json: text to
    /// a JSON array of ids, `--chat` messages to the Instruct prompt's ids, `--decode` ids
    /// to text.
    Tokenize(tokenize::TokenizeArgs),
}

/// Logs go to stderr as plain lines (no colours when not a terminal, no timestamps under
/// systemd, which adds its own), filtered by `SPILLWAY_LOG` or the `-v` count.
pub fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "spillway=info,spillway_kernels=info",
        1 => "spillway=debug,spillway_kernels=debug",
        _ => "trace",
    };
    let filter =
        EnvFilter::try_from_env("SPILLWAY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if under_systemd {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Board(args) => board::run(args),
        Command::Config(args) => config::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Kernels(args) => kernels::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Logits(args) => logits::run(args),
        Command::Run(args) => run::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Tokenize(args) => tokenize::run(args),
    }
}
