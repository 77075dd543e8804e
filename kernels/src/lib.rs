//! Spillway's compute kernels: GGML block formats and the SIMD code that multiplies them.
//!
//! Token generation reads every weight once per token, so it is bound by memory bandwidth;
//! these kernels exist to stream GGUF weight blocks as fast as the memory delivers them, on
//! Cortex-A53/A72 (NEON), Cortex-A76/A78 (NEON + dot product) and x86_64 (AVX2).
//!
//! - [`formats`]: the GGML type table, `#[repr(C)]` blocks, dequantization, reference
//!   quantizers (bit-exact with GGML).
//! - [`block_format`]: the traits that make "which format" a type parameter: a weight
//!   block's activation type, dot product and matrix–matrix product.
//! - [`dot`]: per-format dot products, scalar reference and SIMD paths.
//! - [`dispatch`]: picks a path once from CPU features (`SPILLWAY_KERNELS` overrides) and is
//!   the only safe door to the SIMD code.
//! - [`matmul`](mod@matmul): matrix–vector and matrix–matrix products split over a [`pool`] of
//!   persistent threads.
//! - [`ops`]: RMSNorm, RoPE/YaRN, softmax, SiLU·mul, residual add.
//!
//! No I/O, no async, no allocation in the per-token paths.

pub mod block_format;
pub mod dispatch;
pub mod dot;
pub mod formats;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod probe;

pub use block_format::{ActBlock, BlockFormat};
pub use dispatch::{KernelPath, Kernels};
pub use formats::{GgmlType, Weights};
pub use matmul::{ActFormat, Activations, Matrix, matmul, matmul_rows, matvec};
pub use pool::{PoolConfig, ThreadPool};
