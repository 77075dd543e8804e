//! Quantized dots for AArch64 cores with the ARMv8.2 dot-product extension (Cortex-A55,
//! A76, A78: Raspberry Pi 5, RK3588, Jetson Orin). The float dots and the quantizers gain
//! nothing from it; the dispatch table takes those from [`super::neon`].
//!
//! `SDOT Vd.4S, Vn.16B, Vm.16B` adds four 4-way i8 products into each i32 lane, so 16
//! products cost one instruction instead of the `SMULL`/`SMLAL`/`SADALP` sequence of the
//! baseline path, and no intermediate i16 lane can overflow: every format, Q8_0 included,
//! is exact with plain chained `SDOT`s. The intrinsic (`vdotq_s32`) is unstable in Rust, so
//! [`sdot`] issues the instruction with `asm!`. It is a `#[target_feature(enable =
//! "dotprod")]` function, which lets LLVM's assembler accept the mnemonic (no
//! `.arch_extension` directive needed) and lets it inline into the kernels below, which are
//! compiled with the same features.
//!
//! Everything else is the NEON path's, shared from [`super::neon`]: the nibble and high-bit
//! unpacking per format, the two-block structure of Q8_0/Q4_0 with one `ADDP` tree per pair
//! of blocks, the k-quant scheme of one i32x4 per sub-block turned into a vector of four
//! sub-block sums ([`sum4`]) and multiplied by four scales at once, the Q4_K/Q5_K mins
//! applied through the activation `bsums`, and one `ADDV` per super-block. See that module
//! for the layouts and the exactness arguments.
//!
//! Compiled, the loop bodies are 37 instructions per two Q4_0 blocks (36 weight bytes), 31
//! per two Q8_0 blocks (68), 114 per Q4_K super-block (144), 145 per Q5_K (176) and 149 per
//! Q6_K (210). A Cortex-A76 decodes 4 instructions per cycle and runs `SDOT` on both of its
//! SIMD pipes, so one core consumes roughly 4-9 bytes per cycle, 9-21 GB/s at 2.4 GHz:
//! two cores already match what the LPDDR4X of a Pi 5 or RK3588 delivers, so
//! matrix-vector products are bound by memory bandwidth, as decode should be.

use core::arch::aarch64::*;
use core::arch::asm;

use super::neon::{
    add_scaled2, as_arrays, f16_to_f32, k4_mins_dot, k4_scales_mins, ld_i8x16x2, ld_i8x16x4,
    ld_u8x16x2, ld_u8x16x4, q6_k_scales, scale_products, sum2, sum4, unpack_q4_0, unpack_q4_k,
    unpack_q5_k, unpack_q6_k_half,
};
use crate::formats::*;

/// `acc + [Σ_{k<4} a[4i+k] · b[4i+k] for each lane i]` with `SDOT`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: this function is only callable where the dot-product extension is enabled
    // (its `target_feature`), so SDOT exists; it reads and writes only the named
    // registers.
    unsafe {
        asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
             acc = inout(vreg) acc, a = in(vreg) a, b = in(vreg) b,
             options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// `Σ a_i b_i` over 32 lanes as an i32x4 of partial sums (two chained `SDOT`s).
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn dot32(a0: int8x16_t, a1: int8x16_t, b0: int8x16_t, b1: int8x16_t) -> int32x4_t {
    sdot(sdot(vdupq_n_s32(0), a0, b0), a1, b1)
}

/// Q8_0 weights · Q8_0 activations.
///
/// # Safety
/// The CPU must support NEON and the dot-product extension; `w.len() == x.len()`.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    let block = |a: &BlockQ8_0, b: &BlockQ8_0| {
        let (p, q) = (ld_i8x16x2(&a.qs), ld_i8x16x2(&b.qs));
        dot32(p.0, p.1, q.0, q.1)
    };
    let mut acc = vdup_n_f32(0.0);
    let (w2, x2) = (w.chunks_exact(2), x.chunks_exact(2));
    let (wr, xr) = (w2.remainder(), x2.remainder());
    for (wp, xp) in w2.zip(x2) {
        let ([w0, w1], [x0, x1]) = (wp, xp) else {
            continue;
        };
        let sumi = sum2(block(w0, x0), block(w1, x1));
        acc = add_scaled2(acc, sumi, scale_products(w0.d, w1.d, x0.d, x1.d));
    }
    let mut sumf = vaddv_f32(acc);
    if let ([a], [b]) = (wr, xr) {
        let sumi = vaddvq_s32(block(a, b));
        sumf += sumi as f32 * (f16_to_f32(a.d) * f16_to_f32(b.d));
    }
    sumf
}

/// Q4_0 weights · Q8_0 activations.
///
/// # Safety
/// The CPU must support NEON and the dot-product extension; `w.len() == x.len()`.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    let block = |a: &BlockQ4_0, b: &BlockQ8_0| {
        let (lo, hi) = unpack_q4_0(&a.qs);
        let y = ld_i8x16x2(&b.qs);
        dot32(lo, hi, y.0, y.1)
    };
    let mut acc = vdup_n_f32(0.0);
    let (w2, x2) = (w.chunks_exact(2), x.chunks_exact(2));
    let (wr, xr) = (w2.remainder(), x2.remainder());
    for (wp, xp) in w2.zip(x2) {
        let ([w0, w1], [x0, x1]) = (wp, xp) else {
            continue;
        };
        let sumi = sum2(block(w0, x0), block(w1, x1));
        acc = add_scaled2(acc, sumi, scale_products(w0.d, w1.d, x0.d, x1.d));
    }
    let mut sumf = vaddv_f32(acc);
    if let ([a], [b]) = (wr, xr) {
        let sumi = vaddvq_s32(block(a, b));
        sumf += sumi as f32 * (f16_to_f32(a.d) * f16_to_f32(b.d));
    }
    sumf
}

/// Q4_K weights · Q8_K activations.
///
/// # Safety
/// The CPU must support NEON and the dot-product extension; `w.len() == x.len()`.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn dot_q4_k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let (sc_lo, sc_hi, mins) = k4_scales_mins(&a.scales);
        let summ = k4_mins_dot(mins, &b.bsums);
        let q4: &[[u8; 64]; 2] = as_arrays(&a.qs);
        let q8: &[[i8; 128]; 2] = as_arrays(&b.qs);
        let mut isum = vdupq_n_s32(0);
        // Each half: two 32-byte groups = sub-blocks 4h..4h+4, against 128 activations.
        for ((q4, q8), sc) in q4.iter().zip(q8).zip([sc_lo, sc_hi]) {
            let q = ld_u8x16x4(q4);
            let q8: &[[i8; 64]; 2] = as_arrays(q8);
            let (y0, y1) = (ld_i8x16x4(&q8[0]), ld_i8x16x4(&q8[1]));
            let v0 = unpack_q4_k(q.0, q.1);
            let v1 = unpack_q4_k(q.2, q.3);
            let s = sum4(
                dot32(v0[0], v0[1], y0.0, y0.1),
                dot32(v0[2], v0[3], y0.2, y0.3),
                dot32(v1[0], v1[1], y1.0, y1.1),
                dot32(v1[2], v1[3], y1.2, y1.3),
            );
            isum = vmlaq_s32(isum, s, sc);
        }
        let sumi = vaddvq_s32(isum);
        let bd = b.d;
        sumf += f16_to_f32(a.d) * bd * sumi as f32 - f16_to_f32(a.dmin) * bd * summ as f32;
    }
    sumf
}

/// Q5_K weights · Q8_K activations.
///
/// # Safety
/// The CPU must support NEON and the dot-product extension; `w.len() == x.len()`.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn dot_q5_k(w: &[BlockQ5K], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let (sc_lo, sc_hi, mins) = k4_scales_mins(&a.scales);
        let summ = k4_mins_dot(mins, &b.bsums);
        let q5: &[[u8; 64]; 2] = as_arrays(&a.qs);
        let q8: &[[i8; 128]; 2] = as_arrays(&b.qs);
        let qh = ld_u8x16x2(&a.qh);
        let (mut h0, mut h1) = (qh.0, qh.1);
        let mut isum = vdupq_n_s32(0);
        for ((q5, q8), sc) in q5.iter().zip(q8).zip([sc_lo, sc_hi]) {
            let q = ld_u8x16x4(q5);
            let q8: &[[i8; 64]; 2] = as_arrays(q8);
            let (y0, y1) = (ld_i8x16x4(&q8[0]), ld_i8x16x4(&q8[1]));
            let v0 = unpack_q5_k(q.0, q.1, h0, h1);
            (h0, h1) = (vshrq_n_u8::<2>(h0), vshrq_n_u8::<2>(h1));
            let v1 = unpack_q5_k(q.2, q.3, h0, h1);
            (h0, h1) = (vshrq_n_u8::<2>(h0), vshrq_n_u8::<2>(h1));
            let s = sum4(
                dot32(v0[0], v0[1], y0.0, y0.1),
                dot32(v0[2], v0[3], y0.2, y0.3),
                dot32(v1[0], v1[1], y1.0, y1.1),
                dot32(v1[2], v1[3], y1.2, y1.3),
            );
            isum = vmlaq_s32(isum, s, sc);
        }
        let sumi = vaddvq_s32(isum);
        let bd = b.d;
        sumf += f16_to_f32(a.d) * bd * sumi as f32 - f16_to_f32(a.dmin) * bd * summ as f32;
    }
    sumf
}

/// Q6_K weights · Q8_K activations.
///
/// # Safety
/// The CPU must support NEON and the dot-product extension; `w.len() == x.len()`.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn dot_q6_k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let sc = q6_k_scales(&a.scales);
        let ql: &[[u8; 64]; 2] = as_arrays(&a.ql);
        let qh: &[[u8; 32]; 2] = as_arrays(&a.qh);
        let q8: &[[i8; 128]; 2] = as_arrays(&b.qs);
        let sc: &[[int32x4_t; 2]; 2] = as_arrays(&sc);
        let zero = vdupq_n_s32(0);
        let mut isum = zero;
        for (((ql, qh), q8), sc) in ql.iter().zip(qh).zip(q8).zip(sc) {
            let v = unpack_q6_k_half(ql, qh);
            let q8: &[[i8; 64]; 2] = as_arrays(q8);
            let (y0, y1) = (ld_i8x16x4(&q8[0]), ld_i8x16x4(&q8[1]));
            // One SDOT per 16-value sub-block, each with its own scale.
            let s0 = sum4(
                sdot(zero, v[0], y0.0),
                sdot(zero, v[1], y0.1),
                sdot(zero, v[2], y0.2),
                sdot(zero, v[3], y0.3),
            );
            let s1 = sum4(
                sdot(zero, v[4], y1.0),
                sdot(zero, v[5], y1.1),
                sdot(zero, v[6], y1.2),
                sdot(zero, v[7], y1.3),
            );
            isum = vmlaq_s32(vmlaq_s32(isum, s0, sc[0]), s1, sc[1]);
        }
        let sumi = vaddvq_s32(isum);
        sumf += f16_to_f32(a.d) * b.d * sumi as f32;
    }
    sumf
}
