//! `spillway tokenize (--model GGUF | --tekken JSON) [--chat | --decode]`: the tokenizer
//! from the command line, reading stdin and writing stdout.
//!
//! - default: UTF-8 text in, one JSON array of ids out (plain text: no BOS, no control ids).
//!   One line break at the very end of the input is not part of the text (`echo` adds it):
//!   `echo hi | spillway tokenize` gives the ids of `hi`. `--keep-newline` keeps it;
//! - `--chat`: a JSON array of `{"role", "content"}` messages (or `{"messages", "tools"}`)
//!   in, the ids of the formatted Instruct prompt out (BOS included);
//! - `--decode`: a JSON array of ids in, the text out (exactly, without a newline added);
//! - `--lines`: one JSON string per line in (as in `tokenizer-corpus.txt`), one JSON array
//!   of ids per line out: many texts in one run, for parity checks.
//!
//! `--timings` prints the vocabulary load time and the encoding throughput on stderr.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{ArgGroup, Args};
use spillway_gguf::GgufFile;

use crate::tokenizer::{ChatPrompt, Tokenizer};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("vocabulary").required(true).args(["model", "tekken"])))]
#[command(group(ArgGroup::new("mode").args(["chat", "decode", "lines"])))]
pub struct TokenizeArgs {
    /// Take the vocabulary from this GGUF model file.
    #[arg(long, value_name = "GGUF")]
    model: Option<PathBuf>,
    /// Take the vocabulary from mistral-common's tekken.json.
    #[arg(long, value_name = "JSON")]
    tekken: Option<PathBuf>,
    /// Read a JSON array of chat messages and print the ids of the Instruct prompt.
    #[arg(long)]
    chat: bool,
    /// Read a JSON array of ids and print the text.
    #[arg(long)]
    decode: bool,
    /// Read one JSON string per line and print one JSON array of ids per line.
    #[arg(long)]
    lines: bool,
    /// Encode the input exactly, including the line break at its end that `echo` and
    /// editors add (by default one trailing `\n` or `\r\n` is dropped).
    #[arg(long, conflicts_with_all = ["chat", "decode", "lines"])]
    keep_newline: bool,
    /// Print load and encode times on stderr.
    #[arg(long)]
    timings: bool,
}

pub(crate) fn run(args: TokenizeArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let tok = match (&args.model, &args.tekken) {
        (Some(model), _) => {
            let gguf = GgufFile::open(model).with_context(|| model.display().to_string())?;
            Tokenizer::from_gguf(&gguf).with_context(|| model.display().to_string())?
        }
        (None, Some(json)) => {
            Tokenizer::from_tekken_json(json).with_context(|| json.display().to_string())?
        }
        (None, None) => bail!("give --model or --tekken"),
    };
    let loaded = started.elapsed();

    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading stdin")?;
    let input = String::from_utf8(input).context("stdin is not UTF-8")?;

    let mut stdout = std::io::stdout().lock();
    if args.decode {
        let ids: Vec<u64> =
            serde_json::from_str(&input).context("stdin is not a JSON array of token ids")?;
        let ids = ids
            .into_iter()
            .map(|id| u32::try_from(id).with_context(|| format!("token id {id} is too large")))
            .collect::<anyhow::Result<Vec<u32>>>()?;
        let text = tok.decode(&ids)?;
        stdout.write_all(text.as_bytes())?;
    } else if args.lines {
        for (n, line) in input.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let text: String = serde_json::from_str(line)
                .with_context(|| format!("stdin line {}: not a JSON string", n + 1))?;
            serde_json::to_writer(&mut stdout, &tok.encode(&text))?;
            stdout.write_all(b"\n")?;
        }
    } else {
        let encode_start = Instant::now();
        let ids = if args.chat {
            ChatPrompt::from_json(&input)?.encode(&tok)?
        } else if args.keep_newline {
            tok.encode(&input)
        } else {
            tok.encode(without_final_newline(&input))
        };
        let encoded = encode_start.elapsed();
        serde_json::to_writer(&mut stdout, &ids)?;
        stdout.write_all(b"\n")?;
        if args.timings {
            let secs = encoded.as_secs_f64();
            eprintln!(
                "load_ms={:.1} encode_ms={:.3} bytes={} tokens={} mb_per_s={:.2}",
                loaded.as_secs_f64() * 1e3,
                secs * 1e3,
                input.len(),
                ids.len(),
                input.len() as f64 / 1e6 / secs.max(1e-9)
            );
        }
    }
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `text` without one line break at its end (`\n` or `\r\n`).
fn without_final_newline(text: &str) -> &str {
    text.strip_suffix('\n')
        .map_or(text, |t| t.strip_suffix('\r').unwrap_or(t))
}

#[cfg(test)]
mod tests {
    use super::without_final_newline;

    #[test]
    fn only_one_final_line_break_is_dropped() {
        assert_eq!(without_final_newline("hi\n"), "hi");
        assert_eq!(without_final_newline("hi\r\n"), "hi");
        assert_eq!(without_final_newline("hi\n\n"), "hi\n");
        assert_eq!(without_final_newline("hi"), "hi");
        assert_eq!(without_final_newline("a\nb"), "a\nb");
    }
}
