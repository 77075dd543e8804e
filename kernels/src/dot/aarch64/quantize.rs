//! Activation quantizers of the aarch64 paths (Q8_0, Q8_K), the same on `neon` and
//! `dotprod`.
//!
//! Q8_0 finds `amax` with `FMAXNM` (f32::max semantics), scales and rounds half away from
//! zero with `FCVTAS` (C's `roundf`), and narrows with saturation, the same arithmetic as
//! the reference. Q8_K needs the *signed* value of largest magnitude (the first one, on
//! ties); the lane maximum and minimum decide it except when both `+m` and `-m` occur, where
//! a scalar scan finds the first. It rounds with `FCVTNS` (ties to even, like
//! `nearest_int`) and computes `bsums` from its own quants with an `SADDLP`/`ADDP` tree.

use core::arch::aarch64::*;

use super::common::*;
use crate::formats::*;

/// Rounds four vectors of scaled values to i8 with saturation; `round` is the f32 -> i32
/// conversion (`FCVTAS` or `FCVTNS`).
#[target_feature(enable = "neon")]
#[inline]
fn narrow16(v: float32x4x4_t, round: impl Fn(float32x4_t) -> int32x4_t) -> int8x16_t {
    let a = vqmovn_high_s32(vqmovn_s32(round(v.0)), round(v.1));
    let b = vqmovn_high_s32(vqmovn_s32(round(v.2)), round(v.3));
    vqmovn_high_s16(vqmovn_s16(a), b)
}

/// Quantizes activations to Q8_0 (`x.len() == 32 * y.len()`).
///
/// # Safety
/// The CPU must support NEON (every AArch64 CPU does).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    for (b, xs) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let Some(xs) = array_ref::<f32, QK>(xs) else {
            continue;
        };
        let [v0, v1] = as_arrays::<f32, QK, 16, 2>(xs).each_ref().map(ld_f32x4x4);
        let m = |v: float32x4x4_t| {
            vmaxnmq_f32(
                vmaxnmq_f32(vabsq_f32(v.0), vabsq_f32(v.1)),
                vmaxnmq_f32(vabsq_f32(v.2), vabsq_f32(v.3)),
            )
        };
        let amax = vmaxnmvq_f32(vmaxnmq_f32(m(v0), m(v1)));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        let scale = |v: float32x4x4_t| {
            float32x4x4_t(
                vmulq_n_f32(v.0, id),
                vmulq_n_f32(v.1, id),
                vmulq_n_f32(v.2, id),
                vmulq_n_f32(v.3, id),
            )
        };
        let q = int8x16x2_t(
            narrow16(scale(v0), |v| vcvtaq_s32_f32(v)),
            narrow16(scale(v1), |v| vcvtaq_s32_f32(v)),
        );
        // SAFETY: `b.qs` is 32 writable bytes.
        unsafe { vst1q_s8_x2(b.qs.as_mut_ptr(), q) };
    }
}

/// Quantizes activations to Q8_K (`x.len() == 256 * y.len()`).
///
/// # Safety
/// The CPU must support NEON (every AArch64 CPU does).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    for (b, xs) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        let Some(xs) = array_ref::<f32, QK_K>(xs) else {
            continue;
        };
        let xs16: &[[f32; 16]; 16] = as_arrays(xs);
        let mut hi = vdupq_n_f32(0.0);
        let mut lo = vdupq_n_f32(0.0);
        for c in xs16 {
            let v = ld_f32x4x4(c);
            hi = vmaxnmq_f32(
                hi,
                vmaxnmq_f32(vmaxnmq_f32(v.0, v.1), vmaxnmq_f32(v.2, v.3)),
            );
            lo = vminnmq_f32(
                lo,
                vminnmq_f32(vminnmq_f32(v.0, v.1), vminnmq_f32(v.2, v.3)),
            );
        }
        let (hi, lo) = (vmaxnmvq_f32(hi), vminnmvq_f32(lo));
        // The reference takes the first value of largest magnitude. Only when both +m
        // and -m occur does the order matter; then look for the first.
        let amax = hi.max(-lo);
        if amax == 0.0 {
            b.d = 0.0;
            b.qs = [0; QK_K];
            b.bsums = [0; QK_K / 16];
            continue;
        }
        let max = if hi != -lo {
            if hi > -lo { hi } else { lo }
        } else {
            xs.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax)
        };
        let iscale = -127.0 / max;
        let q8: &mut [[i8; 64]; 4] = as_arrays_mut(&mut b.qs);
        let bsums: &mut [[i16; 4]; 4] = as_arrays_mut(&mut b.bsums);
        let xs64: &[[[f32; 16]; 4]; 4] = as_arrays(xs16);
        for ((q8, bsums), xs) in q8.iter_mut().zip(bsums).zip(xs64) {
            let q = xs.each_ref().map(|c| {
                let v = ld_f32x4x4(c);
                let v = float32x4x4_t(
                    vmulq_n_f32(v.0, iscale),
                    vmulq_n_f32(v.1, iscale),
                    vmulq_n_f32(v.2, iscale),
                    vmulq_n_f32(v.3, iscale),
                );
                // FCVTNS rounds ties to even like `nearest_int`; |v| <= 127 here, and
                // the saturating narrow caps at 127 like the reference's `min(127)`.
                narrow16(v, |v| vcvtnq_s32_f32(v))
            });
            // SAFETY: `q8` is 64 writable bytes.
            unsafe { vst1q_s8_x4(q8.as_mut_ptr(), int8x16x4_t(q[0], q[1], q[2], q[3])) };
            // Sums of each 16 quants: SADDLP to i16 pairs, then ADDP down to one lane per
            // vector (at most 16 · 128 in magnitude, exact in i16).
            let p = q.map(|v| vpaddlq_s8(v));
            let s = vpaddq_s16(vpaddq_s16(p[0], p[1]), vpaddq_s16(p[2], p[3]));
            let s = vget_low_s16(vpaddq_s16(s, s));
            // SAFETY: `bsums` is 4 writable i16.
            unsafe { vst1_s16(bsums.as_mut_ptr(), s) };
        }
        b.d = 1.0 / iscale;
    }
}
