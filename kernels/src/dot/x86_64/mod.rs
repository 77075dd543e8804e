//! x86_64 kernels: the `avx2` path (AVX2 + FMA + F16C) and the `avx512` path (AVX-512 F,
//! BW, VL and VNNI on top of those).
//!
//! | file | owns |
//! |---|---|
//! | `avx2/` | the single-row dots (float, Q8_0/Q4_0, k-quants) and activation quantizers; the `avx512` path uses them too |
//! | `gemm_common` | the GEMM pass loops and write-back, one macro over the float register type |
//! | `gemm_formats` | the k-quant repacking steps and the `gemm_*` entry points, one macro over the register width |
//! | `avx2_gemm`, `avx512_gemm` | each path's tile shape, repacking and micro-kernels (`vpmaddubsw` chains vs VNNI) |

pub(crate) mod avx2;
pub(crate) mod avx2_gemm;
pub(crate) mod avx512_gemm;
mod gemm_common;
mod gemm_formats;
