//! `spillway inspect FILE [--json]`: what a GGUF file holds and what it would cost to run.
//!
//! Human output: architecture and hyperparameters, tokenizer, tensor table, totals per type,
//! memory figures. `--json` prints exactly one object with the file's structure (version,
//! alignment, metadata, tensors with absolute offsets) and, for a model it can run, the
//! same memory figures (`memory`, in bytes). Any invalid file is refused with a
//! one-line error and exit code 1.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::{Map, Value, json};
use spillway_gguf::{ArrayRef, GgufFile, ValueRef};
use spillway_kernels::ops::RopeScaling;

use crate::model::{KvType, MemoryEstimate, ModelConfig, ModelError};
use crate::units::human_bytes;

/// Arrays longer than this are summarised in `--json` output.
const JSON_ARRAY_LIMIT: usize = 64;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The GGUF file.
    file: PathBuf,
    /// Print one JSON object (version, alignment, metadata, tensors) instead of the report.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let gguf = GgufFile::open(&args.file)?;
    // A known architecture must also be a valid model; others are reported as they are.
    let model = match ModelConfig::from_gguf(&gguf) {
        Ok(cfg) => Some(cfg),
        Err(ModelError::UnsupportedArchitecture(_)) | Err(ModelError::NoArchitecture) => None,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("{}", args.file.display()))),
    };
    if args.json {
        let mut doc = to_json(&gguf);
        if let Some(m) = &model {
            doc["memory"] = memory_json(m, gguf.tensor_data_bytes());
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", report(&gguf, model.as_ref()));
    }
    Ok(ExitCode::SUCCESS)
}

fn value_json(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::U8(x) => json!(x),
        ValueRef::I8(x) => json!(x),
        ValueRef::U16(x) => json!(x),
        ValueRef::I16(x) => json!(x),
        ValueRef::U32(x) => json!(x),
        ValueRef::I32(x) => json!(x),
        // Exact widening, so readers see the stored f32 value.
        ValueRef::F32(x) => json!(f64::from(x)),
        ValueRef::F64(x) => json!(x),
        ValueRef::U64(x) => json!(x),
        ValueRef::I64(x) => json!(x),
        ValueRef::Bool(x) => json!(x),
        ValueRef::Str(s) => json!(s),
        ValueRef::Array(a) => array_json(a),
    }
}

fn array_json(a: ArrayRef<'_>) -> Value {
    if a.len() > JSON_ARRAY_LIMIT {
        json!({"array": a.elem_type().spec_name(), "len": a.len()})
    } else {
        Value::Array(a.iter().map(value_json).collect())
    }
}

/// The report's memory figures as JSON (bytes): weights, and the KV cache per token, at
/// 4096 tokens and at the full context for each cache type.
fn memory_json(m: &ModelConfig, weights: u64) -> Value {
    let mem = MemoryEstimate::new(m, weights);
    let ctx = u64::from(m.context_length);
    let kv: Map<String, Value> = [KvType::F16, KvType::Q8_0]
        .into_iter()
        .map(|ty| {
            let figures = json!({
                "bytes_per_token": mem.kv_bytes_per_token(ty),
                "bytes_at_4096_tokens": mem.kv_bytes(ty, 4096),
                "bytes_at_full_context": mem.kv_bytes(ty, ctx),
            });
            (ty.name().to_owned(), figures)
        })
        .collect();
    json!({
        "weights_bytes": mem.weights,
        "context_length": ctx,
        "kv_cache": kv,
    })
}

fn to_json(g: &GgufFile) -> Value {
    let metadata: Map<String, Value> = g
        .metadata()
        .map(|(k, v)| (k.to_owned(), value_json(v)))
        .collect();
    let tensors: Vec<Value> = g
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "type": t.ggml_type.name(),
                "shape": t.dims,
                "offset": t.file_offset,
                "bytes": t.n_bytes,
            })
        })
        .collect();
    json!({
        "version": g.version(),
        "alignment": g.alignment(),
        "metadata": metadata,
        "tensors": tensors,
    })
}

fn short(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Str(s) => format!("{s:?}"),
        ValueRef::Array(a) => format!("[{} x {}]", a.len(), a.elem_type().spec_name()),
        other => value_json(other).to_string(),
    }
}

fn report(g: &GgufFile, model: Option<&ModelConfig>) -> String {
    let mut o = String::new();
    let file_len = g.bytes().len() as u64;
    let _ = writeln!(
        o,
        "file: {} ({file_len} bytes, {}), GGUF v{}, alignment {}, {} metadata keys, {} tensors",
        g.path().display(),
        human_bytes(file_len),
        g.version(),
        g.alignment(),
        g.metadata_len(),
        g.tensors().len()
    );
    let arch = g
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    match model {
        None => {
            let _ = writeln!(
                o,
                "architecture: {arch} (not one Spillway runs: mistral3, llama)"
            );
        }
        Some(m) => {
            let _ = writeln!(
                o,
                "architecture: {}{}",
                m.arch.name(),
                m.name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            );
            let _ = writeln!(
                o,
                "  {:.2}B parameters: {} layers, embedding {}, feed-forward {}, heads {} (kv {}), head size {}/{}, vocabulary {}",
                m.n_params() as f64 / 1e9,
                m.n_layer,
                m.n_embd,
                m.n_ff,
                m.n_head,
                m.n_head_kv,
                m.head_dim_k,
                m.head_dim_v,
                m.n_vocab
            );
            let rope = match m.rope.scaling {
                RopeScaling::None => String::new(),
                RopeScaling::Linear { factor } => format!(", linear scaling x{factor}"),
                RopeScaling::Yarn {
                    factor,
                    original_context,
                    beta_fast,
                    beta_slow,
                } => format!(
                    ", YaRN x{factor} over {original_context} (beta fast {beta_fast}, slow {beta_slow})"
                ),
            };
            let _ = writeln!(
                o,
                "  context {} tokens; RoPE base {} on {} dims{rope}",
                m.context_length, m.rope.freq_base, m.rope.n_dims
            );
            let temp = m
                .temperature
                .map(|t| {
                    format!(
                        "attention temperature {} per {} tokens",
                        t.scale, t.original_context
                    )
                })
                .unwrap_or_else(|| "no attention temperature".into());
            let _ = writeln!(
                o,
                "  RMSNorm eps {:e}; {temp}; embeddings {}",
                m.rms_eps,
                if m.tied_embeddings {
                    "tied (no output.weight)"
                } else {
                    "separate output.weight"
                }
            );
        }
    }

    let tok_model = g.get("tokenizer.ggml.model").and_then(|v| v.as_str());
    match tok_model {
        None => {
            let _ = writeln!(o, "tokenizer: none in the file");
        }
        Some(tm) => {
            let count = |k: &str| g.get(k).and_then(|v| v.as_array()).map(|a| a.len());
            let mut line = format!("tokenizer: {tm}");
            if let Some(pre) = g.get("tokenizer.ggml.pre").and_then(|v| v.as_str()) {
                let _ = write!(line, " (pre-tokenizer {pre})");
            }
            if let Some(n) = count("tokenizer.ggml.tokens") {
                let _ = write!(line, ", {n} tokens");
            }
            if let Some(n) = count("tokenizer.ggml.merges") {
                let _ = write!(line, ", {n} merges");
            }
            for (label, key) in [
                ("bos", "tokenizer.ggml.bos_token_id"),
                ("eos", "tokenizer.ggml.eos_token_id"),
                ("add bos", "tokenizer.ggml.add_bos_token"),
            ] {
                if let Some(v) = g.get(key) {
                    let _ = write!(line, ", {label} {}", short(v));
                }
            }
            let _ = writeln!(o, "{line}");
        }
    }

    let _ = writeln!(o, "\nmetadata:");
    for (k, v) in g.metadata() {
        let _ = writeln!(o, "  {k} = {}", short(v));
    }

    let _ = writeln!(o, "\ntensors:");
    let width = g
        .tensors()
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        o,
        "  {:<width$}  {:<6} {:<22} {:>14}",
        "name", "type", "shape", "bytes"
    );
    let mut totals: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
    for t in g.tensors() {
        let shape = format!("{:?}", t.dims);
        let _ = writeln!(
            o,
            "  {:<width$}  {:<6} {:<22} {:>14}",
            t.name,
            t.ggml_type.name(),
            shape,
            t.n_bytes
        );
        let e = totals.entry(t.ggml_type.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
        e.2 += t.n_elements();
    }
    let _ = writeln!(o, "\ntotals by type:");
    for (ty, (n, bytes, elems)) in &totals {
        let _ = writeln!(
            o,
            "  {ty:<6} {n:>4} tensors {:>12} ({:.2} bits per weight)",
            human_bytes(*bytes),
            *bytes as f64 * 8.0 / (*elems).max(1) as f64
        );
    }
    let weights = g.tensor_data_bytes();
    let _ = writeln!(
        o,
        "  all    {:>4} tensors {:>12}",
        g.tensors().len(),
        human_bytes(weights)
    );

    if let Some(m) = model {
        let mem = MemoryEstimate::new(m, weights);
        let _ = writeln!(o, "\nmemory:");
        let _ = writeln!(o, "  weights (memory-mapped): {}", human_bytes(mem.weights));
        for ty in [KvType::F16, KvType::Q8_0] {
            let ctx = u64::from(m.context_length);
            let _ = writeln!(
                o,
                "  KV cache {}: {} per token; {} at 4096 tokens; {} at the full {ctx}-token context",
                ty.name(),
                human_bytes(mem.kv_bytes_per_token(ty)),
                human_bytes(mem.kv_bytes(ty, 4096)),
                human_bytes(mem.kv_bytes(ty, ctx))
            );
        }
    }
    o
}
