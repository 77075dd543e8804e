//! aarch64 kernels: NEON baseline and NEON with the ARMv8.2 dot-product extension.

pub(crate) mod dotprod;
pub(crate) mod neon;
