//! aarch64 kernels: NEON baseline and NEON with the ARMv8.2 dot-product extension, each
//! with single-row dot products and matrix–matrix (GEMM) micro-kernels.

pub(crate) mod dotprod;
pub(crate) mod dotprod_gemm;
pub(crate) mod neon;
pub(crate) mod neon_gemm;
