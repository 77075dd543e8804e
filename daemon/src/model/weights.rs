//! The model's tensors, resolved once against the memory-mapped GGUF file.
//!
//! Matrices are never copied: each [`TensorSlot`] records where a tensor's bytes are, and
//! [`ModelWeights::matrix`] turns it into a typed, zero-copy [`Matrix`] view on demand (a
//! bounds and alignment check, nothing more). The small norm vectors are copied into f32
//! once, whatever their stored type.

use std::sync::Arc;

use spillway_gguf::{GgufError, GgufFile};
use spillway_kernels::formats::Weights;
use spillway_kernels::{GgmlType, Matrix};

use super::config::{ModelConfig, ModelError};

/// Where one weight matrix lives in the file, and its shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSlot {
    pub name: String,
    pub ggml_type: GgmlType,
    pub file_offset: usize,
    pub n_bytes: usize,
    pub rows: usize,
    pub cols: usize,
}

/// One transformer block's weights.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: TensorSlot,
    pub wk: TensorSlot,
    pub wv: TensorSlot,
    pub wo: TensorSlot,
    pub ffn_norm: Vec<f32>,
    pub w_gate: TensorSlot,
    pub w_up: TensorSlot,
    pub w_down: TensorSlot,
}

/// All weights of a model, borrowing the matrices from the mapped file.
#[derive(Debug)]
pub struct ModelWeights {
    file: Arc<GgufFile>,
    pub config: ModelConfig,
    pub token_embd: TensorSlot,
    pub output_norm: Vec<f32>,
    /// `token_embd` again when the embeddings are tied.
    pub output: TensorSlot,
    pub layers: Vec<LayerWeights>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl ModelWeights {
    /// Validates the model in `file` and resolves every tensor the forward pass reads.
    pub fn new(file: Arc<GgufFile>) -> Result<ModelWeights, LoadError> {
        let config = ModelConfig::from_gguf(&file)?;
        let slot = |name: &str| -> Result<TensorSlot, LoadError> {
            let t = file
                .tensor(name)
                .ok_or_else(|| ModelError::MissingTensor(name.to_owned()))?;
            // Check the view once here, so `matrix()` cannot fail later.
            file.weights(name)?;
            let (rows, cols) = t.rows_cols();
            Ok(TensorSlot {
                name: name.to_owned(),
                ggml_type: t.ggml_type,
                file_offset: t.file_offset as usize,
                n_bytes: t.n_bytes as usize,
                rows: rows as usize,
                cols: cols as usize,
            })
        };
        let vector = |name: &str| -> Result<Vec<f32>, LoadError> {
            let w = file.weights(name)?;
            let mut v = vec![0.0; w.n_elements()];
            w.dequantize(&mut v);
            Ok(v)
        };
        let mut layers = Vec::with_capacity(config.n_layer);
        for l in 0..config.n_layer {
            let n = |t: &str| format!("blk.{l}.{t}.weight");
            layers.push(LayerWeights {
                attn_norm: vector(&n("attn_norm"))?,
                wq: slot(&n("attn_q"))?,
                wk: slot(&n("attn_k"))?,
                wv: slot(&n("attn_v"))?,
                wo: slot(&n("attn_output"))?,
                ffn_norm: vector(&n("ffn_norm"))?,
                w_gate: slot(&n("ffn_gate"))?,
                w_up: slot(&n("ffn_up"))?,
                w_down: slot(&n("ffn_down"))?,
            });
        }
        let token_embd = slot("token_embd.weight")?;
        let output = if config.tied_embeddings {
            token_embd.clone()
        } else {
            slot("output.weight")?
        };
        Ok(ModelWeights {
            output_norm: vector("output_norm.weight")?,
            token_embd,
            output,
            layers,
            config,
            file,
        })
    }

    /// The mapped file.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// A zero-copy view of a matrix.
    pub fn matrix(&self, slot: &TensorSlot) -> Matrix<'_> {
        let bytes = &self.file.bytes()[slot.file_offset..slot.file_offset + slot.n_bytes];
        let w = Weights::from_bytes(slot.ggml_type, bytes).expect("checked in ModelWeights::new");
        Matrix::new(w, slot.rows, slot.cols).expect("shape checked by ModelConfig")
    }

    /// Bytes of all tensor data (what inference streams per token, roughly).
    pub fn bytes(&self) -> u64 {
        self.file.tensor_data_bytes()
    }
}
