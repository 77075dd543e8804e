//! Float dots of the aarch64 paths (F32, F16, BF16 weights · F32 activations), the same on
//! `neon` and `dotprod` (the dot-product extension has nothing for floats).
//!
//! Four independent `float32x4_t` accumulators take 16 products per iteration with `FMLA`,
//! four FMA chains in flight, enough to hide the A72's FMA latency at memory speed; a
//! 4-wide loop and one zero-padded vector finish any tail (including rows shorter than a
//! vector), and the lanes are reduced once at the end. F16 weights are widened with `FCVTL`/`FCVTL2`, which are
//! part of base ARMv8 (the FP16 *arithmetic* extension is not needed, and the `vcvt_f32_f16`
//! intrinsic is unstable in Rust, hence a one-instruction `asm!`). BF16 is the top half of
//! an f32, so `USHLL #16` widens it exactly.

use core::arch::aarch64::*;

use super::common::*;
use crate::formats::*;

/// The body shared by the three float dots: `$load16` turns 16 weights into four f32
/// vectors, `$load4` 4 weights into one.
macro_rules! float_dot {
    ($w:expr, $x:expr, $wty:ty, $load16:expr, $load4:expr) => {{
        let (w, x): (&[$wty], &[f32]) = ($w, $x);
        let mut acc = [vdupq_n_f32(0.0); 4];
        let (w16, x16) = (w.chunks_exact(16), x.chunks_exact(16));
        let (wr, xr) = (w16.remainder(), x16.remainder());
        for (wc, xc) in w16.zip(x16) {
            let (Some(wc), Some(xc)) = (array_ref(wc), array_ref(xc)) else {
                continue;
            };
            let wv: [float32x4_t; 4] = $load16(wc);
            let xv = ld_f32x4x4(xc);
            acc[0] = vfmaq_f32(acc[0], wv[0], xv.0);
            acc[1] = vfmaq_f32(acc[1], wv[1], xv.1);
            acc[2] = vfmaq_f32(acc[2], wv[2], xv.2);
            acc[3] = vfmaq_f32(acc[3], wv[3], xv.3);
        }
        let (w4, x4) = (wr.chunks_exact(4), xr.chunks_exact(4));
        let (wt, xt) = (w4.remainder(), x4.remainder());
        for (wc, xc) in w4.zip(x4) {
            let (Some(wc), Some(xc)) = (array_ref(wc), array_ref(xc)) else {
                continue;
            };
            acc[0] = vfmaq_f32(acc[0], $load4(wc), ld_f32x4(xc));
        }
        // The last 1..=3 values, zero-padded to a full vector (0 · 0 adds nothing).
        if !wt.is_empty() {
            let mut wpad = [<$wty>::default(); 4];
            let mut xpad = [0.0f32; 4];
            for ((pw, px), (&a, &b)) in wpad.iter_mut().zip(&mut xpad).zip(wt.iter().zip(xt)) {
                *pw = a;
                *px = b;
            }
            acc[1] = vfmaq_f32(acc[1], $load4(&wpad), ld_f32x4(&xpad));
        }
        vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ))
    }};
}

/// F32 weights · F32 activations.
///
/// # Safety
/// The CPU must support NEON (every AArch64 CPU does); `w.len() == x.len()`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let load16 = |c: &[f32; 16]| {
        let v = ld_f32x4x4(c);
        [v.0, v.1, v.2, v.3]
    };
    float_dot!(w, x, f32, load16, ld_f32x4)
}

/// F16 weights · F32 activations.
///
/// # Safety
/// The CPU must support NEON (every AArch64 CPU does); `w.len() == x.len()`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    let load16 = |c: &[f16; 16]| {
        let v = ld_u16x8x2(c);
        [
            f16x4_to_f32(vget_low_u16(v.0)),
            f16x4_high_to_f32(v.0),
            f16x4_to_f32(vget_low_u16(v.1)),
            f16x4_high_to_f32(v.1),
        ]
    };
    let load4 = |c: &[f16; 4]| f16x4_to_f32(ld_u16x4(c));
    float_dot!(w, x, f16, load16, load4)
}

/// BF16 weights · F32 activations.
///
/// # Safety
/// The CPU must support NEON (every AArch64 CPU does); `w.len() == x.len()`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    // A bf16 is the upper half of an f32: widen the bits and shift them up by 16.
    let widen_lo = |v: uint16x8_t| vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(v)));
    let widen_hi = |v: uint16x8_t| vreinterpretq_f32_u32(vshll_high_n_u16::<16>(v));
    let load16 = |c: &[bf16; 16]| {
        let v = ld_u16x8x2(c);
        [widen_lo(v.0), widen_hi(v.0), widen_lo(v.1), widen_hi(v.1)]
    };
    let load4 = |c: &[bf16; 4]| vreinterpretq_f32_u32(vshll_n_u16::<16>(ld_u16x4(c)));
    float_dot!(w, x, bf16, load16, load4)
}
