//! Hyperparameters of a Ministral 3 (`mistral3`) or older Mistral (`llama`) model, read from
//! GGUF metadata and validated: required keys present with the right kinds of value, values
//! in range, and every tensor the graph needs present with the shape they imply.
//!
//! Keys (prefix = architecture), per `docs/ministral3.md`:
//! required `context_length`, `embedding_length`, `block_count`, `feed_forward_length`,
//! `attention.head_count`, `attention.layer_norm_rms_epsilon`; optional (with defaults)
//! `attention.head_count_kv` (= heads), `attention.key_length`/`value_length`
//! (= embedding / heads), `rope.freq_base` (10000), `rope.dimension_count` (= key length),
//! `rope.scaling.*`, `attention.temperature_scale` (mistral3), `vocab_size` (else the
//! tokenizer's token count).

use spillway_gguf::{Gguf, TensorInfo, ValueRef};
use spillway_kernels::ops::{RopeParams, RopeScaling};

/// Largest hyperparameter values accepted: far beyond any model Spillway could run, small
/// enough that no size computed from them can overflow.
const MAX_DIM: u64 = 1 << 20;
const MAX_LAYERS: u64 = 1024;
const MAX_CONTEXT: u64 = 1 << 24;
const MAX_VOCAB: u64 = 1 << 22;

/// The model families Spillway runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Ministral 3: YaRN RoPE and an attention temperature on the queries.
    Mistral3,
    /// Older Mistral GGUFs: the same graph without the temperature term.
    Llama,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Mistral3 => "mistral3",
            Architecture::Llama => "llama",
        }
    }
}

/// Why a file is not a model Spillway can run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("general.architecture is missing or not a string")]
    NoArchitecture,
    #[error("architecture {0:?} is not supported (Spillway runs mistral3 and llama)")]
    UnsupportedArchitecture(String),
    #[error("required key {0} is missing")]
    MissingKey(String),
    #[error("key {key} must be {expected}, found {found}")]
    KeyType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("key {key} = {value}: {problem}")]
    KeyValue {
        key: String,
        value: String,
        problem: String,
    },
    #[error("required tensor {0} is missing")]
    MissingTensor(String),
    #[error("tensor {name} has shape {found:?}, expected {expected:?} (from the hyperparameters)")]
    TensorShape {
        name: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("tensor {name} is {ty}, which Spillway has no kernels for")]
    TensorType { name: String, ty: String },
}

/// Attention temperature (Ministral 3): queries at position `p` are scaled by
/// `1 + scale * ln(1 + floor(p / original_context))`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionTemperature {
    pub scale: f32,
    pub original_context: u32,
}

/// Everything the forward pass needs to know about the model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub name: Option<String>,
    /// Training context (`context_length`).
    pub context_length: u32,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head size of queries and keys.
    pub head_dim_k: usize,
    /// Per-head size of values.
    pub head_dim_v: usize,
    pub n_vocab: usize,
    pub rms_eps: f32,
    pub rope: RopeParams,
    pub temperature: Option<AttentionTemperature>,
    /// No `output.weight`: logits use `token_embd.weight`.
    pub tied_embeddings: bool,
}

struct Keys<'a, B> {
    gguf: &'a Gguf<B>,
    prefix: &'static str,
}

impl<B: AsRef<[u8]>> Keys<'_, B> {
    fn full(&self, key: &str) -> String {
        format!("{}.{key}", self.prefix)
    }

    fn get(&self, key: &str) -> Option<ValueRef<'_>> {
        self.gguf.get(&self.full(key))
    }

    fn describe(v: &ValueRef<'_>) -> String {
        match v {
            ValueRef::Array(a) => format!("an array of {} {}", a.len(), a.elem_type()),
            v => format!("{}", v.value_type()),
        }
    }

    /// An integer key in `1..=max`.
    fn uint(&self, key: &str, default: Option<u64>, max: u64) -> Result<u64, ModelError> {
        let full = self.full(key);
        let v = match self.get(key) {
            None => return default.ok_or(ModelError::MissingKey(full)),
            Some(v) => v,
        };
        let n = v.as_u64().ok_or_else(|| ModelError::KeyType {
            key: full.clone(),
            expected: "a non-negative integer",
            found: Self::describe(&v),
        })?;
        if n == 0 || n > max {
            return Err(ModelError::KeyValue {
                key: full,
                value: n.to_string(),
                problem: format!("must be between 1 and {max}"),
            });
        }
        Ok(n)
    }

    /// A float key, finite and positive.
    fn float(&self, key: &str, default: Option<f32>) -> Result<f32, ModelError> {
        let full = self.full(key);
        let v = match self.get(key) {
            None => return default.ok_or(ModelError::MissingKey(full)),
            Some(v) => v,
        };
        let f = v.as_f32().ok_or_else(|| ModelError::KeyType {
            key: full.clone(),
            expected: "a float",
            found: Self::describe(&v),
        })?;
        if !f.is_finite() || f < 0.0 {
            return Err(ModelError::KeyValue {
                key: full,
                value: f.to_string(),
                problem: "must be a finite, non-negative number".into(),
            });
        }
        Ok(f)
    }

    fn string(&self, key: &str) -> Result<Option<&str>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| ModelError::KeyType {
                key: self.full(key),
                expected: "a string",
                found: Self::describe(&v),
            }),
        }
    }
}

impl ModelConfig {
    /// Reads and validates the hyperparameters, then checks every tensor against them.
    pub fn from_gguf<B: AsRef<[u8]>>(gguf: &Gguf<B>) -> Result<ModelConfig, ModelError> {
        let arch = match gguf.get("general.architecture").and_then(|v| v.as_str()) {
            Some("mistral3") => Architecture::Mistral3,
            Some("llama") => Architecture::Llama,
            Some(other) => return Err(ModelError::UnsupportedArchitecture(other.to_owned())),
            None => return Err(ModelError::NoArchitecture),
        };
        let k = Keys {
            gguf,
            prefix: arch.name(),
        };
        let context_length = k.uint("context_length", None, MAX_CONTEXT)? as u32;
        let n_embd = k.uint("embedding_length", None, MAX_DIM)?;
        let n_layer = k.uint("block_count", None, MAX_LAYERS)?;
        let n_ff = k.uint("feed_forward_length", None, MAX_DIM)?;
        let n_head = k.uint("attention.head_count", None, MAX_DIM)?;
        let n_head_kv = k.uint("attention.head_count_kv", Some(n_head), MAX_DIM)?;
        if n_head % n_head_kv != 0 {
            return Err(ModelError::KeyValue {
                key: k.full("attention.head_count_kv"),
                value: n_head_kv.to_string(),
                problem: format!("must divide the head count {n_head}"),
            });
        }
        let default_head = (n_embd % n_head == 0).then_some(n_embd / n_head);
        let head_dim_k = k.uint("attention.key_length", default_head, MAX_DIM)?;
        let head_dim_v = k.uint("attention.value_length", Some(head_dim_k), MAX_DIM)?;
        let rms_eps = k.float("attention.layer_norm_rms_epsilon", None)?;
        let freq_base = k.float("rope.freq_base", Some(10_000.0))?;
        let rope_dims = k.uint("rope.dimension_count", Some(head_dim_k), head_dim_k)?;
        if rope_dims % 2 != 0 || freq_base <= 1.0 {
            return Err(ModelError::KeyValue {
                key: k.full("rope.dimension_count"),
                value: format!("{rope_dims} (base {freq_base})"),
                problem: "rotary dimensions must be even and the base above 1".into(),
            });
        }
        let scaling = match k.string("rope.scaling.type")? {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: positive(&k, "rope.scaling.factor", None)?,
            },
            Some("yarn") => RopeScaling::Yarn {
                factor: positive(&k, "rope.scaling.factor", None)?,
                original_context: k.uint(
                    "rope.scaling.original_context_length",
                    None,
                    MAX_CONTEXT,
                )? as u32,
                beta_fast: positive(&k, "rope.scaling.yarn_beta_fast", Some(32.0))?,
                beta_slow: positive(&k, "rope.scaling.yarn_beta_slow", Some(1.0))?,
            },
            Some(other) => {
                return Err(ModelError::KeyValue {
                    key: k.full("rope.scaling.type"),
                    value: other.into(),
                    problem: "Spillway supports none, linear and yarn".into(),
                });
            }
        };
        let temperature = match arch {
            Architecture::Llama => None,
            Architecture::Mistral3 => match k.get("attention.temperature_scale") {
                None => None,
                Some(_) => {
                    let scale = k.float("attention.temperature_scale", None)?;
                    let original_context = match scaling {
                        RopeScaling::Yarn {
                            original_context, ..
                        } => original_context,
                        _ => context_length,
                    };
                    (scale > 0.0).then_some(AttentionTemperature {
                        scale,
                        original_context,
                    })
                }
            },
        };
        let n_vocab = match k.get("vocab_size") {
            Some(_) => k.uint("vocab_size", None, MAX_VOCAB)?,
            None => match gguf.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
                Some(a) if !a.is_empty() && a.len() as u64 <= MAX_VOCAB => a.len() as u64,
                _ => return Err(ModelError::MissingKey(k.full("vocab_size"))),
            },
        };
        let name = gguf
            .get("general.name")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let cfg = ModelConfig {
            arch,
            name,
            context_length,
            n_embd: n_embd as usize,
            n_layer: n_layer as usize,
            n_ff: n_ff as usize,
            n_head: n_head as usize,
            n_head_kv: n_head_kv as usize,
            head_dim_k: head_dim_k as usize,
            head_dim_v: head_dim_v as usize,
            n_vocab: n_vocab as usize,
            rms_eps,
            rope: RopeParams {
                n_dims: rope_dims as usize,
                freq_base,
                scaling,
            },
            temperature,
            tied_embeddings: gguf.tensor("output.weight").is_none(),
        };
        cfg.check_tensors(gguf)?;
        Ok(cfg)
    }

    /// Every tensor the graph reads, with the GGML-order shape the hyperparameters imply.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (e, ff, v) = (self.n_embd as u64, self.n_ff as u64, self.n_vocab as u64);
        let q = (self.n_head * self.head_dim_k) as u64;
        let kk = (self.n_head_kv * self.head_dim_k) as u64;
        let vv = (self.n_head_kv * self.head_dim_v) as u64;
        let o = (self.n_head * self.head_dim_v) as u64;
        let mut t = vec![
            ("token_embd.weight".to_string(), vec![e, v]),
            ("output_norm.weight".to_string(), vec![e]),
        ];
        if !self.tied_embeddings {
            t.push(("output.weight".to_string(), vec![e, v]));
        }
        for l in 0..self.n_layer {
            for (name, shape) in [
                ("attn_norm", vec![e]),
                ("attn_q", vec![e, q]),
                ("attn_k", vec![e, kk]),
                ("attn_v", vec![e, vv]),
                ("attn_output", vec![o, e]),
                ("ffn_norm", vec![e]),
                ("ffn_gate", vec![e, ff]),
                ("ffn_up", vec![e, ff]),
                ("ffn_down", vec![ff, e]),
            ] {
                t.push((format!("blk.{l}.{name}.weight"), shape));
            }
        }
        t
    }

    fn check_tensors<B: AsRef<[u8]>>(&self, gguf: &Gguf<B>) -> Result<(), ModelError> {
        for (name, expected) in self.expected_tensors() {
            let t: &TensorInfo = gguf
                .tensor(&name)
                .ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
            // GGUF may carry trailing unit dimensions; compare the meaningful ones.
            let mut found = t.dims.clone();
            while found.len() > expected.len() && found.last() == Some(&1) {
                found.pop();
            }
            if found != expected {
                return Err(ModelError::TensorShape {
                    name,
                    found: t.dims.clone(),
                    expected,
                });
            }
            if !t.ggml_type.is_supported() {
                return Err(ModelError::TensorType {
                    name,
                    ty: t.ggml_type.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Parameters (weights) in the graph.
    pub fn n_params(&self) -> u64 {
        self.expected_tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<u64>())
            .sum()
    }
}

fn positive<B: AsRef<[u8]>>(
    k: &Keys<'_, B>,
    key: &str,
    default: Option<f32>,
) -> Result<f32, ModelError> {
    let f = k.float(key, default)?;
    if f == 0.0 {
        return Err(ModelError::KeyValue {
            key: k.full(key),
            value: "0".into(),
            problem: "must be positive".into(),
        });
    }
    Ok(f)
}
