//! What every aarch64 kernel shares: loads from GGML blocks and f32 rows, f16/bf16
//! conversions that need no FP16 arithmetic extension, the `ADDP` reduction trees, the
//! weight unpacking per format (nibbles, high bits, k-quant scales) and the views of fixed
//! arrays as sub-block arrays. Nothing here multiplies: the integer products are the
//! paths' own ([`super::neon`], [`super::dotprod`]).
//!
//! Unpacking, per format:
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

use core::arch::aarch64::*;
use core::arch::asm;

use crate::formats::*;

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
pub(super) fn f32_to_f16(v: f32) -> f16 {
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
pub(super) fn f16x4_high_to_f32(h: uint16x8_t) -> float32x4_t {
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

// ---------------------------------------------------------------- f32 and 16-bit float loads

#[inline(always)]
pub(super) fn ld_f32x4(a: &[f32; 4]) -> float32x4_t {
    // SAFETY: `a` is 4 readable floats; LD1 needs only the element alignment `a` has.
    unsafe { vld1q_f32(a.as_ptr()) }
}

#[inline(always)]
pub(super) fn ld_f32x4x4(a: &[f32; 16]) -> float32x4x4_t {
    // SAFETY: `a` is 16 readable floats; LD1 needs only the element alignment `a` has.
    unsafe { vld1q_f32_x4(a.as_ptr()) }
}

/// The bits of 4 f16 or bf16 values.
#[inline(always)]
pub(super) fn ld_u16x4<T: Half>(a: &[T; 4]) -> uint16x4_t {
    // SAFETY: `a` is 4 readable 2-byte values whose bits are a u16 each (`Half`); LD1
    // needs only the 2-byte alignment `a` has.
    unsafe { vld1_u16(a.as_ptr().cast::<u16>()) }
}

/// The bits of 16 f16 or bf16 values.
#[inline(always)]
pub(super) fn ld_u16x8x2<T: Half>(a: &[T; 16]) -> uint16x8x2_t {
    // SAFETY: as in `ld_u16x4`, for 16 values.
    unsafe { vld1q_u16_x2(a.as_ptr().cast::<u16>()) }
}

/// 16-bit float types whose storage is exactly their bits as a `u16`.
///
/// # Safety
/// Implementors must be `#[repr(transparent)]` wrappers of `u16`.
pub(super) unsafe trait Half: Copy + Default {}
// SAFETY: `half::f16` is `#[repr(transparent)]` over its `u16` bits.
unsafe impl Half for f16 {}
// SAFETY: `half::bf16` is `#[repr(transparent)]` over its `u16` bits.
unsafe impl Half for bf16 {}

/// `s` as an array reference, `None` if its length is not `N` (never the case for the
/// chunks of `chunks_exact(N)`, so the check folds away).
#[inline(always)]
pub(super) fn array_ref<T, const N: usize>(s: &[T]) -> Option<&[T; N]> {
    s.try_into().ok()
}

/// The mutable counterpart of [`as_arrays`].
#[inline(always)]
pub(super) fn as_arrays_mut<T, const N: usize, const K: usize, const M: usize>(
    a: &mut [T; N],
) -> &mut [[T; K]; M] {
    const { assert!(K * M == N) };
    // SAFETY: as in `as_arrays`; the unique borrow is carried over unchanged.
    unsafe { &mut *(a as *mut [T; N]).cast::<[[T; K]; M]>() }
}
