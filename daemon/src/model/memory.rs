//! What a model costs in memory: mapped weights and the KV cache per token of context.
//! The engine's full plan (sessions, scratch, the RAM budget) builds on these numbers.

use super::ModelConfig;

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F16,
    Q8_0,
}

impl KvType {
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }

    /// The type called `name` (`f16` or `q8_0`).
    pub fn from_name(name: &str) -> Option<KvType> {
        match name {
            "f16" => Some(KvType::F16),
            "q8_0" => Some(KvType::Q8_0),
            _ => None,
        }
    }

    /// Bytes for `n` values (`n` a multiple of 32 for Q8_0: 34 bytes per 32).
    pub fn bytes_for(self, n: u64) -> u64 {
        match self {
            KvType::F16 => 2 * n,
            KvType::Q8_0 => n.div_ceil(32) * 34,
        }
    }
}

/// Memory figures of one model file.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryEstimate {
    /// Tensor data, memory-mapped (resident once touched).
    pub weights: u64,
    /// Values stored per token in the KV cache (keys and values, every layer).
    pub kv_values_per_token: u64,
}

impl MemoryEstimate {
    pub fn new(cfg: &ModelConfig, weights: u64) -> MemoryEstimate {
        let per_layer = cfg.n_head_kv * (cfg.head_dim_k + cfg.head_dim_v);
        MemoryEstimate {
            weights,
            kv_values_per_token: (cfg.n_layer * per_layer) as u64,
        }
    }

    /// KV cache bytes per token of context.
    pub fn kv_bytes_per_token(&self, ty: KvType) -> u64 {
        // Each layer's K and V rows are stored (and, for Q8_0, blocked) separately.
        ty.bytes_for(self.kv_values_per_token)
    }

    /// KV cache bytes for `tokens` tokens of context.
    pub fn kv_bytes(&self, ty: KvType, tokens: u64) -> u64 {
        self.kv_bytes_per_token(ty).saturating_mul(tokens)
    }
}
