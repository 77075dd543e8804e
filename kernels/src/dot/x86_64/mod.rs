//! x86_64 kernels: the `avx2` path (AVX2 + FMA + F16C) and the `avx512` path (AVX-512 F,
//! BW, VL and VNNI on top of those).

pub(crate) mod avx2;
pub(crate) mod avx2_gemm;
pub(crate) mod avx512_gemm;
mod gemm_common;
mod gemm_formats;
