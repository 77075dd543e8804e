//! Random-weight models with the exact Ministral 3 graph and shapes, written as GGUF.
//!
//! Weights cannot be downloaded here and tests must not commit large binaries, so tests and
//! benchmarks build their models: `tiny` (the fixtures' shape: 256 wide, 3 layers) or `3b`
//! (the official Ministral-3-3B-Instruct-2512 shapes). Quantization mixes follow llama.cpp's
//! `llama-quantize` rules, and the quantizers are GGML's reference ones (bit-exact), so a
//! synthesized Q4_K_M file is laid out like the official one.
//!
//! Every row's values come from its own seeded generator, so the output is identical for a
//! given seed whatever the thread count, and tensors are produced and written in bounded
//! chunks: the 3B embedding (1.6 GB as f32) never sits in memory whole.

use std::io::Write;

use spillway_gguf::{GgufError, GgufWriter, MetaValue, TensorPlan};
use spillway_kernels::GgmlType;
use spillway_kernels::formats::{FormatError, quantize_to_bytes};

use crate::rng::SplitMix64;

/// Model shapes `synth` can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// The fixtures' shape: embedding 256, 3 layers, 8 heads (2 kv) of 64, FFN 768,
    /// vocabulary 1024, YaRN over an original context of 64.
    Tiny,
    /// Ministral 3 3B: embedding 3072, 26 layers, 32 heads (8 kv) of 128, FFN 9216,
    /// vocabulary 131072, context 262144 (YaRN x16 over 16384).
    #[value(name = "3b")]
    ThreeB,
}

/// Quantization mixes, named as llama.cpp names its file types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Quant {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_k_m")]
    Q4KM,
    #[value(name = "q5_k_m")]
    Q5KM,
}

impl Quant {
    /// llama.cpp's `general.file_type` (`llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            Quant::F32 => 0,
            Quant::F16 => 1,
            Quant::Q4_0 => 2,
            Quant::Q8_0 => 7,
            Quant::Q4KM => 15,
            Quant::Q5KM => 17,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Quant::F32 => "f32",
            Quant::F16 => "f16",
            Quant::Q8_0 => "q8_0",
            Quant::Q4_0 => "q4_0",
            Quant::Q4KM => "q4_k_m",
            Quant::Q5KM => "q5_k_m",
        }
    }
}

/// Hyperparameters of a shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hparams {
    pub n_embd: u64,
    pub n_layer: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim: u64,
    pub n_vocab: u64,
    pub context_length: u32,
    pub original_context: u32,
}

impl Shape {
    pub fn hparams(self) -> Hparams {
        match self {
            Shape::Tiny => Hparams {
                n_embd: 256,
                n_layer: 3,
                n_ff: 768,
                n_head: 8,
                n_head_kv: 2,
                head_dim: 64,
                n_vocab: 1024,
                context_length: 4096,
                original_context: 64,
            },
            Shape::ThreeB => Hparams {
                n_embd: 3072,
                n_layer: 26,
                n_ff: 9216,
                n_head: 32,
                n_head_kv: 8,
                head_dim: 128,
                n_vocab: 131072,
                context_length: 262_144,
                original_context: 16384,
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Shape::Tiny => "tiny",
            Shape::ThreeB => "3b",
        }
    }
}

/// llama.cpp's `use_more_bits`: the layers whose attn_v and ffn_down get more bits in the
/// `_M` mixes (the first and last eighth, and every third in between).
fn use_more_bits(layer: u64, n_layer: u64) -> bool {
    let eighth = n_layer / 8;
    // `layer - eighth` only matters (and only cannot underflow) once layer >= eighth.
    layer < eighth || layer >= 7 * n_layer / 8 || (layer - eighth) % 3 == 2
}

/// The type llama-quantize gives tensor `name` (of `layer`, for block tensors) in `quant`.
pub fn tensor_type(
    quant: Quant,
    name: &str,
    layer: Option<u64>,
    n_layer: u64,
    dims: usize,
) -> GgmlType {
    if dims == 1 {
        return GgmlType::F32; // norms stay f32 in every mix
    }
    // The tied embedding doubles as the output matrix, which llama.cpp keeps at 6 bits
    // unless the whole file is 8-bit or float.
    let output = name == "token_embd.weight" || name == "output.weight";
    let more_bits = layer.is_some_and(|l| use_more_bits(l, n_layer))
        && (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight"));
    match quant {
        Quant::F32 => GgmlType::F32,
        Quant::F16 => GgmlType::F16,
        Quant::Q8_0 => GgmlType::Q8_0,
        Quant::Q4_0 if output => GgmlType::Q6_K,
        Quant::Q4_0 => GgmlType::Q4_0,
        Quant::Q4KM | Quant::Q5KM if output || more_bits => GgmlType::Q6_K,
        Quant::Q4KM => GgmlType::Q4_K,
        Quant::Q5KM => GgmlType::Q5_K,
    }
}

/// What to write.
#[derive(Clone, Debug)]
pub struct SynthSpec {
    pub shape: Shape,
    pub quant: Quant,
    pub seed: u64,
    /// Tokenizer metadata to embed (its token count sets the vocabulary); `None` writes a
    /// `no_vocab` model that takes token ids.
    pub tokenizer: Option<Tokenizer>,
}

/// A vocabulary to embed: its GGUF keys and its size.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    pub metadata: Vec<(String, MetaValue)>,
    pub n_vocab: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("quantizing {name}: {source}")]
    Quantize {
        name: String,
        #[source]
        source: FormatError,
    },
}

/// One tensor with its generator settings.
#[derive(Clone, Debug)]
struct Planned {
    plan: TensorPlan,
    /// Values are `mean + std * N(0, 1)`.
    mean: f32,
    std: f32,
}

/// The metadata and tensor list of the model `spec` describes (no data yet).
pub fn plan(spec: &SynthSpec) -> (Vec<(String, MetaValue)>, Vec<TensorPlan>) {
    let (meta, tensors) = plan_inner(spec);
    (meta, tensors.into_iter().map(|t| t.plan).collect())
}

fn plan_inner(spec: &SynthSpec) -> (Vec<(String, MetaValue)>, Vec<Planned>) {
    let mut h = spec.shape.hparams();
    if let Some(t) = &spec.tokenizer {
        h.n_vocab = t.n_vocab;
    }
    let a = "mistral3";
    let s = |v: &str| MetaValue::String(v.into());
    let u = |v: u64| MetaValue::U32(v as u32);
    let name = match &spec.tokenizer {
        Some(_) => format!("synthetic-ministral3-{}-tekken", spec.shape.name()),
        None => format!("synthetic-ministral3-{}", spec.shape.name()),
    };
    let mut meta: Vec<(String, MetaValue)> = vec![
        ("general.architecture".into(), s(a)),
        ("general.name".into(), MetaValue::String(name)),
        (format!("{a}.context_length"), u(h.context_length.into())),
        (format!("{a}.embedding_length"), u(h.n_embd)),
        (format!("{a}.block_count"), u(h.n_layer)),
        (format!("{a}.feed_forward_length"), u(h.n_ff)),
        (format!("{a}.attention.head_count"), u(h.n_head)),
        (format!("{a}.attention.head_count_kv"), u(h.n_head_kv)),
        (format!("{a}.attention.key_length"), u(h.head_dim)),
        (format!("{a}.attention.value_length"), u(h.head_dim)),
        (format!("{a}.rope.dimension_count"), u(h.head_dim)),
        (format!("{a}.rope.freq_base"), MetaValue::F32(1e6)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            MetaValue::F32(1e-5),
        ),
        (format!("{a}.rope.scaling.type"), s("yarn")),
        (format!("{a}.rope.scaling.factor"), MetaValue::F32(16.0)),
        (
            format!("{a}.rope.scaling.original_context_length"),
            u(h.original_context.into()),
        ),
        (
            format!("{a}.rope.scaling.yarn_beta_fast"),
            MetaValue::F32(32.0),
        ),
        (
            format!("{a}.rope.scaling.yarn_beta_slow"),
            MetaValue::F32(1.0),
        ),
        (
            format!("{a}.rope.scaling.yarn_log_multiplier"),
            MetaValue::F32(1.0),
        ),
        (
            format!("{a}.attention.temperature_scale"),
            MetaValue::F32(0.1),
        ),
        (format!("{a}.vocab_size"), u(h.n_vocab)),
    ];
    match &spec.tokenizer {
        Some(t) => meta.extend(t.metadata.iter().cloned()),
        None => meta.push(("tokenizer.ggml.model".into(), s("no_vocab"))),
    }
    if !matches!(spec.quant, Quant::F32 | Quant::F16) {
        meta.push(("general.quantization_version".into(), MetaValue::U32(2)));
    }
    meta.push((
        "general.file_type".into(),
        MetaValue::U32(spec.quant.file_type()),
    ));

    let (e, ff) = (h.n_embd, h.n_ff);
    let q = h.n_head * h.head_dim;
    let kv = h.n_head_kv * h.head_dim;
    let mut tensors = Vec::new();
    let mut push = |name: String, layer: Option<u64>, dims: Vec<u64>| {
        let ty = tensor_type(spec.quant, &name, layer, h.n_layer, dims.len());
        let (mean, std) = if dims.len() == 1 {
            (1.0, 0.05) // norm gains near one
        } else {
            (0.0, 1.0 / (dims[0] as f32).sqrt()) // keeps activations near unit scale
        };
        tensors.push(Planned {
            plan: TensorPlan {
                name,
                ggml_type: ty,
                dims,
            },
            mean,
            std,
        });
    };
    // Graph order, so loading reads the file front to back.
    push("token_embd.weight".into(), None, vec![e, h.n_vocab]);
    for l in 0..h.n_layer {
        for (t, dims) in [
            ("attn_norm", vec![e]),
            ("attn_q", vec![e, q]),
            ("attn_k", vec![e, kv]),
            ("attn_v", vec![e, kv]),
            ("attn_output", vec![q, e]),
            ("ffn_norm", vec![e]),
            ("ffn_gate", vec![e, ff]),
            ("ffn_up", vec![e, ff]),
            ("ffn_down", vec![ff, e]),
        ] {
            push(format!("blk.{l}.{t}.weight"), Some(l), dims);
        }
    }
    push("output_norm.weight".into(), None, vec![e]);
    (meta, tensors)
}

/// Uniform in (0, 1].
fn unit(rng: &mut SplitMix64) -> f64 {
    ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
}

/// Standard normal pairs (Box–Muller).
fn normal_pair(rng: &mut SplitMix64) -> (f32, f32) {
    let r = (-2.0 * unit(rng).ln()).sqrt();
    let t = std::f64::consts::TAU * unit(rng);
    ((r * t.cos()) as f32, (r * t.sin()) as f32)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn fill_row(seed: u64, tensor: &str, row: u64, mean: f32, std: f32, out: &mut [f32]) {
    // One generator per row, seeded from (seed, tensor, row).
    let mut rng = SplitMix64::new(seed ^ fnv1a(tensor) ^ row.wrapping_mul(0xd134_2543_de82_ef95));
    for pair in out.chunks_mut(2) {
        let (a, b) = normal_pair(&mut rng);
        pair[0] = mean + std * a;
        if let Some(x) = pair.get_mut(1) {
            *x = mean + std * b;
        }
    }
}

/// Progress of a write, reported after each chunk.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub tensors_done: usize,
    pub tensors_total: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Bytes of f32 values generated per chunk (bounds memory on the 3B shape).
const CHUNK_VALUES: u64 = 16 << 20;

/// Writes the model to `out` with `threads` threads, calling `progress` as it goes.
/// Returns the number of bytes written.
pub fn write<W: Write>(
    spec: &SynthSpec,
    out: W,
    threads: usize,
    mut progress: impl FnMut(Progress),
) -> Result<u64, SynthError> {
    let (meta, tensors) = plan_inner(spec);
    let bytes_total: u64 = tensors
        .iter()
        .map(|t| t.plan.n_bytes())
        .sum::<Result<u64, _>>()?;
    let mut writer = GgufWriter::new(out, &meta, tensors.iter().map(|t| t.plan.clone()).collect())?;
    let threads = threads.max(1);
    let mut bytes_done = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let cols = t.plan.dims[0];
        let rows: u64 = t.plan.dims[1..].iter().product();
        let row_bytes = t
            .plan
            .ggml_type
            .bytes_for(cols)
            .expect("planned rows are whole blocks");
        let chunk_rows = (CHUNK_VALUES / cols).clamp(1, rows);
        let mut start = 0;
        while start < rows {
            let n = chunk_rows.min(rows - start);
            let mut chunk = vec![0u8; (n * row_bytes) as usize];
            let per_thread = n.div_ceil(threads as u64);
            std::thread::scope(|scope| -> Result<(), SynthError> {
                let mut handles = Vec::new();
                for (k, part) in chunk
                    .chunks_mut((per_thread * row_bytes) as usize)
                    .enumerate()
                {
                    let first = start + k as u64 * per_thread;
                    handles.push(scope.spawn(move || -> Result<(), SynthError> {
                        let mut values = vec![0f32; cols as usize];
                        for (r, dst) in part.chunks_mut(row_bytes as usize).enumerate() {
                            fill_row(
                                spec.seed,
                                &t.plan.name,
                                first + r as u64,
                                t.mean,
                                t.std,
                                &mut values,
                            );
                            let q =
                                quantize_to_bytes(t.plan.ggml_type, &values).map_err(|source| {
                                    SynthError::Quantize {
                                        name: t.plan.name.clone(),
                                        source,
                                    }
                                })?;
                            dst.copy_from_slice(&q);
                        }
                        Ok(())
                    }));
                }
                for h in handles {
                    h.join().expect("quantization threads do not panic")?;
                }
                Ok(())
            })?;
            writer.write_part(&t.plan.name, &chunk)?;
            bytes_done += chunk.len() as u64;
            start += n;
            progress(Progress {
                tensors_done: i + usize::from(start == rows),
                tensors_total: tensors.len(),
                bytes_done,
                bytes_total,
            });
        }
    }
    writer.finish()?;
    Ok(bytes_done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_3b_q4_k_m_mix_matches_the_official_file() {
        // docs/ministral3.md: 53 f32, 156 Q4_K, 27 Q6_K tensors.
        let spec = SynthSpec {
            shape: Shape::ThreeB,
            quant: Quant::Q4KM,
            seed: 1,
            tokenizer: None,
        };
        let (_, tensors) = plan(&spec);
        let count = |ty| tensors.iter().filter(|t| t.ggml_type == ty).count();
        assert_eq!(
            (
                count(GgmlType::F32),
                count(GgmlType::Q4_K),
                count(GgmlType::Q6_K)
            ),
            (53, 156, 27)
        );
    }

    #[test]
    fn the_3b_q4_0_file_is_about_2_04_gb() {
        let spec = SynthSpec {
            shape: Shape::ThreeB,
            quant: Quant::Q4_0,
            seed: 1,
            tokenizer: None,
        };
        let (_, tensors) = plan(&spec);
        let bytes: u64 = tensors.iter().map(|t| t.n_bytes().unwrap()).sum();
        assert!((2.00e9..2.08e9).contains(&(bytes as f64)), "{bytes}");
    }

    #[test]
    fn rows_are_reproducible_and_distinct() {
        let mut a = vec![0.0; 300];
        let mut b = vec![0.0; 300];
        fill_row(7, "x", 3, 0.0, 1.0, &mut a);
        fill_row(7, "x", 3, 0.0, 1.0, &mut b);
        assert_eq!(a, b);
        fill_row(7, "x", 4, 0.0, 1.0, &mut b);
        assert_ne!(a, b);
        let mean = a.iter().sum::<f32>() / 300.0;
        let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 300.0;
        assert!(
            mean.abs() < 0.2 && (0.7..1.3).contains(&var),
            "{mean} {var}"
        );
    }
}
