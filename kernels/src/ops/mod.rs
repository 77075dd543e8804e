//! The f32 operations of the forward pass: RMSNorm, RoPE with YaRN, softmax, SiLU·mul,
//! residual add, and attention's weighted sum of V rows (`axpy` over f16 and Q8_0 rows).
//!
//! [`reference`](mod@reference) defines the behaviour (f64 sums, libm `exp`). [`fast`] holds the same
//! operations written so the compiler vectorizes them (f32 lanes, a polynomial `exp`); on
//! aarch64 that is NEON code as compiled, on x86_64 `avx2` recompiles them with AVX2+FMA
//! enabled. The dispatch table picks one set; tests hold each to the reference.
//! RoPE and the residual add are not hot enough to need more than one version.

pub mod fast;
pub mod reference;
mod rope;

pub use rope::{RopeParams, RopeScaling, RopeTable, apply_rope, attention_temperature};

/// `x += y` (the residual connection).
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len());
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `x *= s`.
pub fn scale(x: &mut [f32], s: f32) {
    for v in x {
        *v *= s;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    //! [`super::fast`] compiled with AVX2 and FMA enabled.
    #![allow(unsafe_code)]

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        super::fast::rmsnorm(x, w, eps, out)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn softmax(x: &mut [f32]) {
        super::fast::softmax(x)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn axpy_f16(a: f32, x: &[crate::formats::f16], y: &mut [f32]) {
        super::fast::axpy_f16(a, x, y)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn axpy_q8_0(a: f32, x: &[crate::formats::BlockQ8_0], y: &mut [f32]) {
        super::fast::axpy_q8_0(a, x, y)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
        super::fast::silu_mul(gate, up)
    }
}
