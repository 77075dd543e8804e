//! aarch64 kernels: NEON baseline and NEON with the ARMv8.2 dot-product extension, each
//! with single-row dot products and matrix–matrix (GEMM) micro-kernels.
//!
//! | file | owns |
//! |---|---|
//! | `common` | loads, f16 conversions, reduction trees, weight unpacking |
//! | `float` | F32/F16/BF16 dots (both paths) |
//! | `quantize` | Q8_0/Q8_K activation quantizers (both paths) |
//! | `quant_dots` | the quantized dots, one macro over the integer product |
//! | `neon`, `dotprod` | each path's integer products, and its quantized dots from `quant_dots` |
//! | `gemm_common`, `gemm_tiles` | the GEMM driver, unpacking and micro-tiles, one macro over the integer product |
//! | `neon_gemm`, `dotprod_gemm` | each path's GEMM kernels from `gemm_tiles` |

mod common;
pub(crate) mod dotprod;
pub(crate) mod dotprod_gemm;
pub(crate) mod float;
mod gemm_common;
mod gemm_tiles;
pub(crate) mod neon;
pub(crate) mod neon_gemm;
mod quant_dots;
pub(crate) mod quantize;
