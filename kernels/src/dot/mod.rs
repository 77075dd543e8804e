//! Per-format dot products of one weight row with one activation row.
//!
//! | weights | activations | scalar | x86_64 | aarch64 |
//! |---|---|---|---|---|
//! | F32, F16, BF16 | F32 | [`scalar`] | AVX2+FMA+F16C | NEON |
//! | Q8_0, Q4_0 | Q8_0 | [`scalar`] | AVX2 | NEON (vmull/vpadal), NEON+dotprod (SDOT) |
//! | Q4_K, Q5_K, Q6_K | Q8_K | [`scalar`] | AVX2 | NEON (vmull/vpadal), NEON+dotprod (SDOT) |
//!
//! Nothing here is called directly: [`crate::dispatch::Kernels`] holds the functions of the
//! path chosen for this CPU and is the only safe entry point to the SIMD ones.

pub mod scalar;

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
