//! The model: hyperparameters read from GGUF metadata and checked against the tensors
//! ([`config`]), and the memory the model needs ([`memory`]). The forward pass joins them
//! with the engine work.

pub mod config;
pub mod memory;

pub use config::{Architecture, ModelConfig, ModelError};
pub use memory::{KvType, MemoryEstimate};
