//! The model: hyperparameters read from GGUF metadata and checked against the tensors
//! ([`config`]), the weights as views into the mapping ([`weights`]), the KV cache
//! ([`kv`]), the forward pass ([`forward`]) and the memory all of it needs ([`memory`]).

pub mod config;
pub mod forward;
pub mod kv;
pub mod memory;
pub mod weights;

pub use config::{Architecture, ModelConfig, ModelError};
pub use forward::{Compute, Forward, ForwardError, LogitsFor, RowKind, SeqChunk};
pub use kv::KvCache;
pub use memory::{KvType, MemoryEstimate};
pub use weights::{LoadError, ModelWeights};
