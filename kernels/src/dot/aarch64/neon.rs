//! Baseline AArch64 Advanced SIMD (NEON) kernels: every ARMv8-A core, in particular the
//! Cortex-A53/A72 of the Raspberry Pi 3/4, which lack the dot-product instructions.
//!
//! # Float weights (F32, F16, BF16 · F32)
//!
//! Four independent `float32x4_t` accumulators take 16 products per iteration with `FMLA`,
//! four FMA chains in flight, enough to hide the A72's FMA latency at memory speed; a
//! 4-wide loop and one zero-padded vector finish any tail (including rows shorter than a
//! vector), and the lanes are reduced once at the end. F16 weights are widened with `FCVTL`/`FCVTL2`, which are
//! part of base ARMv8 (the FP16 *arithmetic* extension is not needed, and the `vcvt_f32_f16`
//! intrinsic is unstable in Rust, hence a one-instruction `asm!`). BF16 is the top half of
//! an f32, so `USHLL #16` widens it exactly.
//!
//! # Integer dots without SDOT
//!
//! The quantized dots multiply i8 by i8 with `SMULL`/`SMLAL` (8 products widened to i16) and
//! fold the i16 lanes pairwise into i32 with `SADALP`/`SADDLP`. How many products may share
//! an i16 lane before folding is bounded by the format's value range, so every sum is exact:
//!
//! | weights | value range | max abs product (vs. i8 down to -128) | products per i16 lane |
//! |---|---|---|---|
//! | Q8_0 | -128..=127 | 16384 | 1 (two could reach 32768) |
//! | Q4_0 | -8..=7 | 1024 | 4 |
//! | Q4_K | 0..=15 | 1920 | 4 |
//! | Q5_K | 0..=31 | 3968 | 4 |
//! | Q6_K | -32..=31 | 4096 | 2 |
//!
//! Unpacking (shared with [`super::dotprod`], which only swaps the multiply for `SDOT`):
//!
//! - **Q4_0**: byte `j` holds element `j` (low nibble) and `j + 16` (high nibble): one
//!   `AND 0x0F` and one `USHR #4` give the two 16-lane halves, minus 8.
//! - **Q4_K**: each 32 bytes hold two sub-blocks of 32: low nibbles are sub-block `2p`,
//!   high nibbles sub-block `2p + 1`, against activations `64p..64p+32` and `64p+32..64p+64`.
//! - **Q5_K**: as Q4_K plus a fifth bit from `qh`: bit `2p` (low-nibble sub-block) and bit
//!   `2p + 1` (high) of `qh[l]`. Shifting `qh` right by 2 per pair keeps the bits needed at
//!   positions 0 and 1; `SLI #4` / `USRA #4` merge them above the nibble.
//! - **Q6_K**: per half of 128: `ql` gives the low 4 bits (low nibbles of bytes 0..32 and
//!   32..64, then their high nibbles), `qh` the top 2 bits (bit pairs 0, 2, 4, 6 of each
//!   byte); both are masked into place, merged with `ORR`/`SRI`, and 32 is subtracted.
//!
//! # Applying the scales
//!
//! Q8_0/Q4_0 take two blocks per iteration: each block's exact i32 sum is reduced with one
//! `ADDP` tree (`sumi` of both blocks land in one `int32x2_t`), converted to f32 and
//! multiplied by the block's `d_w * d_x` in the same order as the scalar reference; the
//! per-block results are summed in f32 lanes and reduced at the end.
//!
//! The k-quants keep one i32x4 of partial sums per sub-block; [`sum4`] (an `ADDP` tree)
//! turns four of them into one vector of four sub-block sums, which is multiplied by the
//! vector of the four sub-block scales (`MLA`, exact in i32). So there is one horizontal
//! `ADDV` per 256-value super-block, not one per sub-block. The Q4_K/Q5_K mins never touch
//! the values: `Σ_j min_j · Σ_{i∈j} x_i` uses the activation `bsums` (widened pairwise to
//! the 32-value sub-blocks), exactly like the scalar reference. The final float expression
//! per super-block is the scalar one, accumulated in block order, so the k-quant results
//! are bit-identical to [`crate::dot::scalar`].
//!
//! # Why this streams at memory speed
//!
//! Decode reads every weight once per token, so a kernel only has to keep up with DRAM.
//! Compiled, the loop bodies are 41 instructions per two Q4_0 blocks (36 bytes), 41 per two
//! Q8_0 blocks (68 bytes), 130 per Q4_K super-block (144 bytes), 161 per Q5_K (176) and 165
//! per Q6_K (210): 10 to 18 instructions per 16 weight bytes, with no calls, no spills and
//! no scalar work besides the per-block scales. A Cortex-A72 sustains about 3 of these per
//! cycle, and its single multiply pipe needs 32 cycles for the 32 `SMULL`/`SMLAL` of a
//! k-quant super-block, so one core consumes roughly 2.5-5 bytes per cycle, 4-9 GB/s at
//! 1.8 GHz, while a Pi 4's LPDDR4 delivers about 4-5 GB/s to all four cores together. The
//! latency chains are short and independent (two blocks, or eight to sixteen sub-blocks,
//! per iteration; four FMA accumulators for the float dots), horizontal reductions happen
//! once per block (per 256 values for the k-quants), loads are unaligned `LD1`s straight
//! from the GGML blocks, and the constants are materialised outside the loops.
//!
//! # Activation quantizers
//!
//! Q8_0 finds `amax` with `FMAXNM` (f32::max semantics), scales and rounds half away from
//! zero with `FCVTAS` (C's `roundf`), and narrows with saturation, the same arithmetic as
//! the reference. Q8_K needs the *signed* value of largest magnitude (the first one, on
//! ties); the lane maximum and minimum decide it except when both `+m` and `-m` occur, where
//! a scalar scan finds the first. It rounds with `FCVTNS` (ties to even, like
//! `nearest_int`) and computes `bsums` from its own quants with an `SADDLP`/`ADDP` tree.

use core::arch::aarch64::*;
use core::arch::asm;

use crate::formats::*;

// ---------------------------------------------------------------- shared helpers

/// Views a fixed-size array as `M` consecutive arrays of `K` elements. The sizes are checked
/// at compile time, so sub-blocks of GGML blocks can be iterated without bounds checks.
#[inline(always)]
pub(super) fn as_arrays<T, const N: usize, const K: usize, const M: usize>(
    a: &[T; N],
) -> &[[T; K]; M] {
    const { assert!(K * M == N) };
    // SAFETY: `[[T; K]; M]` has the size of `[T; N]` (checked above), the alignment of `T`
    // and no padding, so it describes the same initialised memory; the borrow is carried
    // over unchanged.
    unsafe { &*(a as *const [T; N]).cast::<[[T; K]; M]>() }
}

#[inline(always)]
pub(super) fn ld_u8x16(a: &[u8; 16]) -> uint8x16_t {
    // SAFETY: `a` is 16 readable bytes; LD1 has no alignment requirement.
    unsafe { vld1q_u8(a.as_ptr()) }
}

#[inline(always)]
pub(super) fn ld_u8x16x2(a: &[u8; 32]) -> uint8x16x2_t {
    // SAFETY: `a` is 32 readable bytes; LD1 has no alignment requirement.
    unsafe { vld1q_u8_x2(a.as_ptr()) }
}

#[inline(always)]
pub(super) fn ld_u8x16x4(a: &[u8; 64]) -> uint8x16x4_t {
    // SAFETY: `a` is 64 readable bytes; LD1 has no alignment requirement.
    unsafe { vld1q_u8_x4(a.as_ptr()) }
}

#[inline(always)]
pub(super) fn ld_i8x16(a: &[i8; 16]) -> int8x16_t {
    // SAFETY: `a` is 16 readable bytes; LD1 has no alignment requirement.
    unsafe { vld1q_s8(a.as_ptr()) }
}

#[inline(always)]
pub(super) fn ld_i8x16x2(a: &[i8; 32]) -> int8x16x2_t {
    // SAFETY: `a` is 32 readable bytes; LD1 has no alignment requirement.
    unsafe { vld1q_s8_x2(a.as_ptr()) }
}

#[inline(always)]
pub(super) fn ld_i8x16x4(a: &[i8; 64]) -> int8x16x4_t {
    // SAFETY: `a` is 64 readable bytes; LD1 has no alignment requirement.
    unsafe { vld1q_s8_x4(a.as_ptr()) }
}

#[inline(always)]
pub(super) fn ld_i16x8x2(a: &[i16; 16]) -> int16x8x2_t {
    // SAFETY: `a` is 16 readable i16; LD1 only needs element (2-byte) alignment, which a
    // reference to i16 has.
    unsafe { vld1q_s16_x2(a.as_ptr()) }
}

/// One f16 to f32 with `FCVT` (base ARMv8 floating point; exact, subnormals included).
/// `half`'s own conversion only uses hardware when the FP16 arithmetic extension is
/// present, which the Pi 4's Cortex-A72 lacks.
#[inline(always)]
pub(super) fn f16_to_f32(h: f16) -> f32 {
    let out: f32;
    // SAFETY: FCVT (half to single) exists on every AArch64 CPU; it only reads and writes
    // the named registers.
    unsafe {
        asm!("fcvt {o:s}, {h:h}", o = lateout(vreg) out, h = in(vreg) h.to_bits(),
             options(pure, nomem, nostack, preserves_flags));
    }
    out
}

/// One f32 to f16 with `FCVT`: round to nearest even, like `f16::from_f32`.
#[inline(always)]
fn f32_to_f16(v: f32) -> f16 {
    let out: u16;
    // SAFETY: FCVT (single to half) exists on every AArch64 CPU; it only reads and writes
    // the named registers.
    unsafe {
        asm!("fcvt {o:h}, {v:s}", o = lateout(vreg) out, v = in(vreg) v,
             options(pure, nomem, nostack, preserves_flags));
    }
    f16::from_bits(out)
}

/// Four f16 (as bits) to f32 with `FCVTL` (base ARMv8 Advanced SIMD; exact).
#[inline(always)]
pub(super) fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: FCVTL exists on every AArch64 CPU; it only reads and writes the named
    // registers.
    unsafe {
        asm!("fcvtl {o:v}.4s, {h:v}.4h", o = lateout(vreg) out, h = in(vreg) h,
             options(pure, nomem, nostack, preserves_flags));
    }
    out
}

/// The upper four f16 of `h` to f32 with `FCVTL2`.
#[inline(always)]
fn f16x4_high_to_f32(h: uint16x8_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: FCVTL2 exists on every AArch64 CPU; it only reads and writes the named
    // registers.
    unsafe {
        asm!("fcvtl2 {o:v}.4s, {h:v}.8h", o = lateout(vreg) out, h = in(vreg) h,
             options(pure, nomem, nostack, preserves_flags));
    }
    out
}

/// `[w0 * x0, w1 * x1]` for the f16 scales of two block pairs: one `FCVTL` for all four
/// scales, then the products exactly as the scalar reference forms them.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn scale_products(w0: f16, w1: f16, x0: f16, x1: f16) -> float32x2_t {
    let bits = u64::from(w0.to_bits())
        | (u64::from(w1.to_bits()) << 16)
        | (u64::from(x0.to_bits()) << 32)
        | (u64::from(x1.to_bits()) << 48);
    let f = f16x4_to_f32(vcreate_u16(bits));
    vmul_f32(vget_low_f32(f), vget_high_f32(f))
}

/// The horizontal sums of two i32x4 accumulators, `[Σa, Σb]`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn sum2(a: int32x4_t, b: int32x4_t) -> int32x2_t {
    let t = vpaddq_s32(a, b);
    vpadd_s32(vget_low_s32(t), vget_high_s32(t))
}

/// The horizontal sums of four i32x4 accumulators, `[Σa, Σb, Σc, Σd]` (three `ADDP`).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn sum4(a: int32x4_t, b: int32x4_t, c: int32x4_t, d: int32x4_t) -> int32x4_t {
    vpaddq_s32(vpaddq_s32(a, b), vpaddq_s32(c, d))
}

/// Adds the f32 results of a two-block step: `acc + sumi * (d_w * d_x)` per lane.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn add_scaled2(acc: float32x2_t, sumi: int32x2_t, d: float32x2_t) -> float32x2_t {
    vadd_f32(acc, vmul_f32(vcvt_f32_s32(sumi), d))
}

/// Q4_0 values of one block, `(elements 0..16, elements 16..32)`, as i8 in -8..=7.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn unpack_q4_0(qs: &[u8; 16]) -> (int8x16_t, int8x16_t) {
    let q = ld_u8x16(qs);
    let eight = vdupq_n_s8(8);
    let lo = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F)));
    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q));
    (vsubq_s8(lo, eight), vsubq_s8(hi, eight))
}

/// Scales and mins of a Q4_K/Q5_K block: `(scales 0..4, scales 4..8, mins 0..8)`.
///
/// The 12 bytes pack eight 6-bit scales and mins: bytes 0..4 hold scales 0..3 in their
/// low 6 bits, bytes 4..8 mins 0..3; bytes 8..12 hold the low 4 bits of scales 4..7
/// (low nibble) and mins 4..7 (high nibble), whose top 2 bits are the top bits of bytes
/// 0..4 and 4..8 respectively. Done four lanes at a time in 32-bit words.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn k4_scales_mins(s: &[u8; 12]) -> (int32x4_t, int32x4_t, int32x4x2_t) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const BITS45: u32 = 0x3030_3030;
    let a = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let b = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let c = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    // `>> 2` moves each byte's bits 6..7 to 4..5 of the same byte; the mask drops what
    // slid in from the next byte.
    let sc_hi = (c & LOW4) | ((a >> 2) & BITS45);
    let mn_hi = ((c >> 4) & LOW4) | ((b >> 2) & BITS45);
    let sc = u64::from(a & LOW6) | (u64::from(sc_hi) << 32);
    let mn = u64::from(b & LOW6) | (u64::from(mn_hi) << 32);
    let sc = vmovl_u8(vcreate_u8(sc));
    let mn = vmovl_u8(vcreate_u8(mn));
    (
        vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(sc))),
        vreinterpretq_s32_u32(vmovl_high_u16(sc)),
        int32x4x2_t(
            vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(mn))),
            vreinterpretq_s32_u32(vmovl_high_u16(mn)),
        ),
    )
}

/// `Σ_j bsums[j] · mins[j / 2]`: the 16 sums of 16 activations folded pairwise (in i32,
/// so any i16 `bsums` are exact) into the eight 32-value sub-blocks the mins cover.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn k4_mins_dot(mins: int32x4x2_t, bsums: &[i16; 16]) -> i32 {
    let bs = ld_i16x8x2(bsums);
    let p = vmulq_s32(mins.0, vpaddlq_s16(bs.0));
    vaddvq_s32(vmlaq_s32(p, mins.1, vpaddlq_s16(bs.1)))
}

/// Q4_K values of one 32-byte group: `[sub-block 2p lanes 0..16, 16..32, sub-block 2p+1
/// lanes 0..16, 16..32]`, as i8 in 0..=15.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn unpack_q4_k(q0: uint8x16_t, q1: uint8x16_t) -> [int8x16_t; 4] {
    let m4 = vdupq_n_u8(0x0F);
    [
        vreinterpretq_s8_u8(vandq_u8(q0, m4)),
        vreinterpretq_s8_u8(vandq_u8(q1, m4)),
        vreinterpretq_s8_u8(vshrq_n_u8::<4>(q0)),
        vreinterpretq_s8_u8(vshrq_n_u8::<4>(q1)),
    ]
}

/// Q5_K values of one 32-byte group, laid out as [`unpack_q4_k`], in 0..=31. `h0`/`h1`
/// are `qh[0..16]`/`qh[16..32]` already shifted right by `2p`, so bit 0 is the fifth bit
/// of the low-nibble sub-block and bit 1 that of the high-nibble one.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn unpack_q5_k(
    q0: uint8x16_t,
    q1: uint8x16_t,
    h0: uint8x16_t,
    h1: uint8x16_t,
) -> [int8x16_t; 4] {
    let one = vdupq_n_u8(1);
    let two = vdupq_n_u8(2);
    // SLI #4 keeps the low nibble of q and inserts bit 0 of h above it.
    let lo = |q, h| vreinterpretq_s8_u8(vsliq_n_u8::<4>(q, vandq_u8(h, one)));
    // (h & 2) << 3 is 16 or 0; USRA adds q >> 4 to it.
    let hi = |q, h| vreinterpretq_s8_u8(vsraq_n_u8::<4>(vshlq_n_u8::<3>(vandq_u8(h, two)), q));
    [lo(q0, h0), lo(q1, h1), hi(q0, h0), hi(q1, h1)]
}

/// Q6_K values of one half (128 values) in element order: eight vectors of 16, one per
/// 16-value sub-block, as i8 in -32..=31.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn unpack_q6_k_half(ql: &[u8; 64], qh: &[u8; 32]) -> [int8x16_t; 8] {
    let l = ld_u8x16x4(ql);
    let h = ld_u8x16x2(qh);
    let m4 = vdupq_n_u8(0x0F);
    let m30 = vdupq_n_u8(0x30);
    let k32 = vdupq_n_s8(32);
    // Bit pair 2k of qh moved to bits 4..5: k = 0: << 4, k = 1: << 2, k = 2: in place,
    // k = 3: >> 2.
    let top = |hk: uint8x16_t, k: u8| match k {
        0 => vandq_u8(vshlq_n_u8::<4>(hk), m30),
        1 => vandq_u8(vshlq_n_u8::<2>(hk), m30),
        2 => vandq_u8(hk, m30),
        _ => vandq_u8(vshrq_n_u8::<2>(hk), m30),
    };
    // Low nibble of ql plus top bits; and high nibble of ql inserted under the top bits.
    let low = |q: uint8x16_t, t| vorrq_u8(vandq_u8(q, m4), t);
    let high = |q: uint8x16_t, t| vsriq_n_u8::<4>(t, q);
    let v = [
        low(l.0, top(h.0, 0)),
        low(l.1, top(h.1, 0)),
        low(l.2, top(h.0, 1)),
        low(l.3, top(h.1, 1)),
        high(l.0, top(h.0, 2)),
        high(l.1, top(h.1, 2)),
        high(l.2, top(h.0, 3)),
        high(l.3, top(h.1, 3)),
    ];
    v.map(|u| vsubq_s8(vreinterpretq_s8_u8(u), k32))
}

/// Q6_K scales as four i32x4 (sub-blocks 0..4, 4..8, 8..12, 12..16).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn q6_k_scales(s: &[i8; 16]) -> [int32x4_t; 4] {
    let s = ld_i8x16(s);
    let lo = vmovl_s8(vget_low_s8(s));
    let hi = vmovl_high_s8(s);
    [
        vmovl_s16(vget_low_s16(lo)),
        vmovl_high_s16(lo),
        vmovl_s16(vget_low_s16(hi)),
        vmovl_high_s16(hi),
    ]
}

// ---------------------------------------------------------------- widening i8 products

/// `Σ a_i b_i` over 32 lanes for any i8 values: every product (up to 16384) gets its own
/// i16 lane before `SADDLP`/`SADALP` folds it into i32.
#[target_feature(enable = "neon")]
#[inline]
fn dot32_wide(a: int8x16x2_t, b: int8x16x2_t) -> int32x4_t {
    let s0 = vpaddlq_s16(vmull_s8(vget_low_s8(a.0), vget_low_s8(b.0)));
    let s1 = vpaddlq_s16(vmull_high_s8(a.0, b.0));
    let s0 = vpadalq_s16(s0, vmull_s8(vget_low_s8(a.1), vget_low_s8(b.1)));
    let s1 = vpadalq_s16(s1, vmull_high_s8(a.1, b.1));
    vaddq_s32(s0, s1)
}

/// `Σ a_i b_i` over 32 lanes when every `|a_i b_i| <= 8191`: four products share an i16
/// lane (`SMULL` + three `SMLAL`) before one `SADDLP`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn dot32_narrow(
    a0: int8x16_t,
    a1: int8x16_t,
    b0: int8x16_t,
    b1: int8x16_t,
) -> int32x4_t {
    let p = vmull_s8(vget_low_s8(a0), vget_low_s8(b0));
    let p = vmlal_high_s8(p, a0, b0);
    let p = vmlal_s8(p, vget_low_s8(a1), vget_low_s8(b1));
    vpaddlq_s16(vmlal_high_s8(p, a1, b1))
}

/// `Σ a_i b_i` over 16 lanes when every `|a_i b_i| <= 16383`: two products per i16 lane.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn dot16_narrow(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    vpaddlq_s16(vmlal_high_s8(p, a, b))
}

// ---------------------------------------------------------------- float dots

#[inline(always)]
fn ld_f32x4(a: &[f32; 4]) -> float32x4_t {
    // SAFETY: `a` is 4 readable floats; LD1 needs only the element alignment `a` has.
    unsafe { vld1q_f32(a.as_ptr()) }
}

#[inline(always)]
fn ld_f32x4x4(a: &[f32; 16]) -> float32x4x4_t {
    // SAFETY: `a` is 16 readable floats; LD1 needs only the element alignment `a` has.
    unsafe { vld1q_f32_x4(a.as_ptr()) }
}

/// The bits of 4 f16 or bf16 values.
#[inline(always)]
fn ld_u16x4<T: Half>(a: &[T; 4]) -> uint16x4_t {
    // SAFETY: `a` is 4 readable 2-byte values whose bits are a u16 each (`Half`); LD1
    // needs only the 2-byte alignment `a` has.
    unsafe { vld1_u16(a.as_ptr().cast::<u16>()) }
}

/// The bits of 16 f16 or bf16 values.
#[inline(always)]
fn ld_u16x8x2<T: Half>(a: &[T; 16]) -> uint16x8x2_t {
    // SAFETY: as in `ld_u16x4`, for 16 values.
    unsafe { vld1q_u16_x2(a.as_ptr().cast::<u16>()) }
}

/// 16-bit float types whose storage is exactly their bits as a `u16`.
///
/// # Safety
/// Implementors must be `#[repr(transparent)]` wrappers of `u16`.
unsafe trait Half: Copy + Default {}
// SAFETY: `half::f16` is `#[repr(transparent)]` over its `u16` bits.
unsafe impl Half for f16 {}
// SAFETY: `half::bf16` is `#[repr(transparent)]` over its `u16` bits.
unsafe impl Half for bf16 {}

/// `s` as an array reference, `None` if its length is not `N` (never the case for the
/// chunks of `chunks_exact(N)`, so the check folds away).
#[inline(always)]
fn array_ref<T, const N: usize>(s: &[T]) -> Option<&[T; N]> {
    s.try_into().ok()
}

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

// ---------------------------------------------------------------- Q8_0, Q4_0

/// Q8_0 weights · Q8_0 activations.
///
/// # Safety
/// The CPU must support NEON (every AArch64 CPU does); `w.len() == x.len()`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    let block = |a: &BlockQ8_0, b: &BlockQ8_0| dot32_wide(ld_i8x16x2(&a.qs), ld_i8x16x2(&b.qs));
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
/// The CPU must support NEON (every AArch64 CPU does); `w.len() == x.len()`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    let block = |a: &BlockQ4_0, b: &BlockQ8_0| {
        let (lo, hi) = unpack_q4_0(&a.qs);
        let y = ld_i8x16x2(&b.qs);
        dot32_narrow(lo, hi, y.0, y.1)
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

// ---------------------------------------------------------------- k-quants

/// Q4_K weights · Q8_K activations.
///
/// # Safety
/// The CPU must support NEON (every AArch64 CPU does); `w.len() == x.len()`.
#[target_feature(enable = "neon")]
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
                dot32_narrow(v0[0], v0[1], y0.0, y0.1),
                dot32_narrow(v0[2], v0[3], y0.2, y0.3),
                dot32_narrow(v1[0], v1[1], y1.0, y1.1),
                dot32_narrow(v1[2], v1[3], y1.2, y1.3),
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
/// The CPU must support NEON (every AArch64 CPU does); `w.len() == x.len()`.
#[target_feature(enable = "neon")]
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
                dot32_narrow(v0[0], v0[1], y0.0, y0.1),
                dot32_narrow(v0[2], v0[3], y0.2, y0.3),
                dot32_narrow(v1[0], v1[1], y1.0, y1.1),
                dot32_narrow(v1[2], v1[3], y1.2, y1.3),
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
/// The CPU must support NEON (every AArch64 CPU does); `w.len() == x.len()`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot_q6_k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let sc = q6_k_scales(&a.scales);
        let ql: &[[u8; 64]; 2] = as_arrays(&a.ql);
        let qh: &[[u8; 32]; 2] = as_arrays(&a.qh);
        let q8: &[[i8; 128]; 2] = as_arrays(&b.qs);
        let sc: &[[int32x4_t; 2]; 2] = as_arrays(&sc);
        let mut isum = vdupq_n_s32(0);
        for (((ql, qh), q8), sc) in ql.iter().zip(qh).zip(q8).zip(sc) {
            let v = unpack_q6_k_half(ql, qh);
            let q8: &[[i8; 64]; 2] = as_arrays(q8);
            let (y0, y1) = (ld_i8x16x4(&q8[0]), ld_i8x16x4(&q8[1]));
            let s0 = sum4(
                dot16_narrow(v[0], y0.0),
                dot16_narrow(v[1], y0.1),
                dot16_narrow(v[2], y0.2),
                dot16_narrow(v[3], y0.3),
            );
            let s1 = sum4(
                dot16_narrow(v[4], y1.0),
                dot16_narrow(v[5], y1.1),
                dot16_narrow(v[6], y1.2),
                dot16_narrow(v[7], y1.3),
            );
            isum = vmlaq_s32(vmlaq_s32(isum, s0, sc[0]), s1, sc[1]);
        }
        let sumi = vaddvq_s32(isum);
        sumf += f16_to_f32(a.d) * b.d * sumi as f32;
    }
    sumf
}

// ---------------------------------------------------------------- activation quantizers

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

/// The mutable counterpart of [`as_arrays`].
#[inline(always)]
fn as_arrays_mut<T, const N: usize, const K: usize, const M: usize>(
    a: &mut [T; N],
) -> &mut [[T; K]; M] {
    const { assert!(K * M == N) };
    // SAFETY: as in `as_arrays`; the unique borrow is carried over unchanged.
    unsafe { &mut *(a as *mut [T; N]).cast::<[[T; K]; M]>() }
}
