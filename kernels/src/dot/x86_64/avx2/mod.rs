//! Dot products and activation quantizers for x86_64 CPUs with AVX2, FMA and F16C (Intel
//! Haswell, AMD Zen and later).
//!
//! Nothing here uses AVX-512 or VNNI, even where the build machine has them: the path is
//! selected on AVX2+FMA+F16C alone and must run on every CPU that has those.
//!
//! # What is computed
//!
//! [`crate::dot::scalar`] defines the results. The integer part of every quantized dot is
//! exact (see "Overflow" below). Each block's exact integer sum is converted to f32 and
//! multiplied by the same scale product as in the scalar code (`f32(d_w) * f32(d_x)`,
//! `f32(d) * d_x`, ...), so the per-block terms are the reference's; only the order in
//! which they are summed differs. The activation quantizers produce the reference's bytes.
//!
//! # Accumulator strategy
//!
//! Decode streams every weight row from memory once, so the aim is as few vector
//! instructions per weight byte as possible, above all on the two ports that execute
//! `vpmaddubsw`/`vpmaddwd` (on recent cores the other vector ports outnumber them two to
//! one, and `vphaddd` is several times slower than an unpack plus an add).
//!
//! A block's integer products end up spread over the lanes of a vector. Those lanes must
//! not be scaled one by one: with large scales, partial sums that cancel would each be
//! rounded, far outside the reference's error. They are summed exactly first, but not
//! block by block (a horizontal reduction per block would cost as much as the block):
//! blocks go in groups, 8 for Q4_0/Q8_0 and 4 for the k-quants (the model's rows are 12, 16
//! or 36 super-blocks), and a transposing tree of in-lane unpacks and adds turns the
//! group's vectors into one vector holding one block sum per lane. Where the partial sums
//! still fit, the first levels of that tree run on i16 lanes, so a single `vpmaddwd` per
//! four blocks (or per four sub-blocks, applying their scales at the same time) does the
//! widening that would otherwise take one per block. The group's vector is converted once
//! and multiplied with one FMA by the vector of its scale products (F16C converts eight f16
//! scales in one instruction; gathering them takes scalar integer ops, which run on ports
//! the vector code leaves idle). For Q4_K/Q5_K the four `sumi` share the vector with the
//! four `summ`, against negated `dmin` products. There is one f32 accumulator, reduced once
//! per row; blocks after the last whole group are summed one at a time. The float dots use
//! four 8-lane FMA accumulators.
//!
//! Every loop also prefetches the weights `PREFETCH_AHEAD` (8 KiB) ahead, once per 64
//! bytes consumed: with this much work per byte the hardware prefetchers alone keep too
//! few misses in flight, and two threads streaming at once lose a fifth or more of their
//! throughput (measured on Zen 5; harmless where it is not needed).
//!
//! # Formats
//!
//! The workhorse is `vpmaddubsw` (`_mm256_maddubs_epi16`): 32 unsigned bytes times 32
//! signed bytes, adjacent products summed into 16 saturating i16 lanes; `vpmaddwd`
//! (`_mm256_madd_epi16`) then widens pairs of i16 lanes to i32, multiplying them by
//! per-sub-block scales on the way where the format has them.
//!
//! - **Q4_0 · Q8_0**: the 16 packed bytes are broadcast to both halves of a vector and the
//!   upper half shifted down by 4, so one mask leaves the low nibbles (elements 0..16) and
//!   the high nibbles (elements 16..32) in element order as unsigned values 0..15. Instead
//!   of subtracting 8 from the weights (which would make them signed), the block computes
//!   `sum(q * x) - sum(8 * x)`, both with `vpmaddubsw`.
//! - **Q8_0 · Q8_0**: both operands are signed and may be -128, where neither the
//!   unsigned-times-signed form nor the usual sign-transfer trick is exact; the bytes are
//!   sign-extended to i16 and multiplied with `vpmaddwd`.
//! - **Q4_K / Q5_K · Q8_K**: the twelve bytes of packed 6-bit scales and mins are unpacked
//!   with four 32-bit mask-and-shift expressions (all eight sub-blocks at once). Each
//!   32-byte slice of `qs` holds two sub-blocks: low nibbles (sub-block `2j`) and high
//!   nibbles (`2j + 1`). Q5_K adds the fifth bit from `qh`, which is shifted into bit 4.
//!   The unsigned weights 0..15 (0..31) multiply the signed activations directly; the
//!   products of the eight sub-blocks are interleaved and summed on i16 lanes until one
//!   dword holds one sub-block, and two `vpmaddwd` against the scales (each repeated
//!   twice) apply all eight. The mins never touch the values: `sum(min_j * x)` over a
//!   sub-block is `min_j * (bsums[2j] + bsums[2j + 1])`, one `vpmaddwd` of the `bsums`
//!   against the mins (each repeated twice) per block.
//! - **Q6_K · Q8_K**: the low four bits (`ql`) and high two bits (`qh`) are combined into
//!   unsigned values 0..63, four 32-byte vectors per half block, each covering two 16-value
//!   sub-blocks (one per 128-bit lane). Pairs of vectors are interleaved and summed on i16
//!   lanes and one `vpmaddwd` applies four signed scales, arranged by one `vpshufb`. The
//!   `-32` offset is applied afterwards as `32 * sum_j(scale_j * bsums[j])`, again from the
//!   activation's `bsums`, so like the k4 formats this relies on `bsums` being the sums of
//!   `qs` (which [`quantize_q8_k`] and the reference quantizer guarantee).
//! - **F32 / F16 / BF16 · F32**: four 8-lane FMA accumulators over 32 values per
//!   iteration; f16 is widened with `vcvtph2ps`, bf16 by shifting its bits into the top
//!   half of an f32. The tail is copied into a zero-padded buffer of 8 and goes through the
//!   same vector code, so any length works.
//!
//! # Overflow
//!
//! `vpmaddubsw` saturates at i16, so each format's pairwise sums must fit: with
//! activations in -128..127 the worst cases are Q4_0/Q4_K `2 * 15 * 128 = 3840`, Q5_K
//! `2 * 31 * 128 = 7936`, Q6_K `2 * 63 * 128 = 16128` and the Q4_0 offset `2 * 8 * 128`, all
//! below 32767. The i16 levels of the reductions add at most four Q4_0 lanes (+-5872 each),
//! four Q4_K/Q5_K lanes (+-7936) or two Q6_K lanes (+-16128), which still fit. In i32 the
//! largest block sum, and every partial sum on the way to it, is Q6_K's
//! `sum(scale * q * x) <= 128 * 63 * 128 * 256 < 2^29`. Block sums above 2^24 are rounded by
//! the int-to-float conversion exactly as by the reference's `as f32`.
//!
//! # Activation quantizers
//!
//! Both mirror the reference arithmetic operation for operation (the same f32 products,
//! the same rounding), so they produce the same bytes as the scalar code: Q8_0 rounds half
//! away from zero and saturates like Rust's `round() as i8`; Q8_K uses GGML's float
//! magic-number rounding and keeps the low byte like `nearest_int(..) as i8`. `bsums` are
//! computed from the quants just produced.

use core::arch::x86_64::*;

use crate::formats::*;
// `core::arch::x86_64` has a `bf16` of its own (AVX-512); the weights are `half`'s.
use crate::formats::bf16;

// ------------------------------------------------------------------ loads and stores
//
// Every memory access of the kernels goes through these helpers. Each takes a reference to
// an array of exactly the elements it touches, so the bounds argument is made once, here;
// the kernels themselves only split block arrays with `as_chunks`, which cannot go out of
// bounds.

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_u8x32(a: &[u8; 32]) -> __m256i {
    // SAFETY: `a` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn load_i8x32(a: &[i8; 32]) -> __m256i {
    // SAFETY: `a` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn load_u8x16(a: &[u8; 16]) -> __m128i {
    // SAFETY: `a` is 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_i8x16(a: &[i8; 16]) -> __m128i {
    // SAFETY: `a` is 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(a.as_ptr().cast()) }
}

/// The two 16-byte halves of a 32-byte array (loaded separately so they can be widened
/// straight from memory).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_i8x16_halves(a: &[i8; 32]) -> (__m128i, __m128i) {
    let hi = a.as_ptr().wrapping_add(16);
    // SAFETY: bytes 0..16 of the 32-byte array `a`.
    let lo = unsafe { _mm_loadu_si128(a.as_ptr().cast()) };
    // SAFETY: `hi` points at byte 16 of `a`, so bytes 16..32 are in bounds.
    let hi = unsafe { _mm_loadu_si128(hi.cast()) };
    (lo, hi)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_i16x16(a: &[i16; 16]) -> __m256i {
    // SAFETY: `a` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_f32x8(a: &[f32; 8]) -> __m256 {
    // SAFETY: `a` is 8 readable f32; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(a.as_ptr()) }
}

/// Eight f16 (or bf16) values as raw 16-bit lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn load_16bit_x8<T>(a: &[T; 8]) -> __m128i {
    const { assert!(size_of::<T>() == 2) };
    // SAFETY: `a` is 8 elements of 2 bytes, 16 readable bytes; no alignment requirement.
    unsafe { _mm_loadu_si128(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn store_i8x32(a: &mut [i8; 32], v: __m256i) {
    // SAFETY: `a` is 32 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_si256(a.as_mut_ptr().cast(), v) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn store_i16x8(a: &mut [i16; 8], v: __m128i) {
    // SAFETY: `a` is 16 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm_storeu_si128(a.as_mut_ptr().cast(), v) }
}

// ------------------------------------------------------------------ small helpers

/// How far ahead of the data being computed on the weights are prefetched, in bytes.
///
/// The kernels do enough work per byte that, left to the hardware prefetchers alone, too
/// few cache misses are in flight to keep up with memory once two threads stream at
/// once. Rows are handed to threads in contiguous chunks, so prefetching past the end of
/// a row fetches the start of the thread's next row.
const PREFETCH_AHEAD: usize = 8192;

/// Prefetches the data `PREFETCH_AHEAD` bytes after the `bytes` bytes at `start`, one
/// prefetch per 64 bytes. Called once per group of blocks with the group's size, so
/// consecutive groups' prefetches are at most 64 bytes apart and every cache line of the
/// weights is asked for. `bytes` is a constant at every call site, so the loop unrolls.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch_ahead<T>(start: &T, bytes: usize) {
    let p = (start as *const T)
        .cast::<i8>()
        .wrapping_add(PREFETCH_AHEAD);
    let mut offset = 0;
    while offset < bytes {
        // A prefetch is only a hint: it never faults, so the address (possibly past the
        // end of the weights) need not be valid.
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(offset));
        offset += 64;
    }
}

/// Sum of the eight lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Maximum of the eight lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hmax_ps(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// `[f32(a), f32(b), 0, 0]`: two f16 scales with one F16C conversion.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16x2_to_f32(a: f16, b: f16) -> __m128 {
    let bits = u32::from(a.to_bits()) | (u32::from(b.to_bits()) << 16);
    _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))
}

/// `f32(a) * f32(b)`, the scale product of a Q4_0/Q8_0 block pair.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16_product(a: f16, b: f16) -> f32 {
    let v = f16x2_to_f32(a, b);
    _mm_cvtss_f32(_mm_mul_ss(v, _mm_movehdup_ps(v)))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16_to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits()))))
}

/// f32 to f16, rounding to nearest even like `f16::from_f32`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f32_to_f16(v: f32) -> f16 {
    let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v));
    f16::from_bits(_mm_extract_epi16::<0>(h) as u16)
}

/// `_mm256_set1_epi8(v)` for a byte constant written as `u8` (the intrinsic takes `i8`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn splat_u8(v: u8) -> __m256i {
    _mm256_set1_epi8(v as i8)
}

// ------------------------------------------------------------------ exact block sums
//
// The transposing reductions described in the module documentation ("Accumulator
// strategy"): a group's vectors in, one exact block sum per lane out.

/// Per 128-bit lane, the dwords `[a, b, a, b]` of `a` and `b` summed as 16-bit lanes:
/// `[a0 + a2, b0 + b2, a1 + a3, b1 + b3]` (dword `k` of `a` is `ak`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn zip_add_epi16(a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi16(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b))
}

/// Per 128-bit lane, `[a, b, c, d]` from two outputs of [`zip_add_epi16`]
/// (`ab = [a, b, a, b]`, `cd = [c, d, c, d]`), summed as 16-bit lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn zip_add_epi16_64(ab: __m256i, cd: __m256i) -> __m256i {
    _mm256_add_epi16(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd))
}

/// Per 128-bit lane, `[sum a, sum b, sum c, sum d]` over that lane's four i32 elements.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn lane_sums4_epi32(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m256i {
    let ab = _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
    let cd = _mm256_add_epi32(_mm256_unpacklo_epi32(c, d), _mm256_unpackhi_epi32(c, d));
    _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd))
}

/// Per 128-bit lane, `[sum a, sum b, sum c, sum d]` over that lane's eight i16 elements,
/// as i32. Every sum of four of an input's i16 elements must fit in i16 (inputs within
/// +-8191 always do).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn lane_sums4_epi16(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m256i {
    let abcd = zip_add_epi16_64(zip_add_epi16(a, b), zip_add_epi16(c, d));
    _mm256_madd_epi16(abcd, _mm256_set1_epi16(1))
}

/// Adds the 128-bit halves of two [`lane_sums4_epi32`]-style results:
/// `[lo.low + lo.high | hi.low + hi.high]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn fold_halves(lo: __m256i, hi: __m256i) -> __m256i {
    // [lo.low | hi.high] + [lo.high | hi.low].
    _mm256_add_epi32(
        _mm256_blend_epi32::<0xF0>(lo, hi),
        _mm256_permute2x128_si256::<0x21>(lo, hi),
    )
}

/// Lane `i` of the result is the sum of the eight i32 lanes of `v[i]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn transpose_sum8(v: [__m256i; 8]) -> __m256i {
    let [v0, v1, v2, v3, v4, v5, v6, v7] = v;
    fold_halves(
        lane_sums4_epi32(v0, v1, v2, v3),
        lane_sums4_epi32(v4, v5, v6, v7),
    )
}

/// Lane `i` of the result is the sum of the eight i32 lanes of `v[i]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn transpose_sum4(v: [__m256i; 4]) -> __m128i {
    let [v0, v1, v2, v3] = v;
    let s = lane_sums4_epi32(v0, v1, v2, v3);
    _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s))
}

/// The sum of the eight i32 lanes (for the last blocks of a row, fewer than a group).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s)))
}

/// Four f16 bit patterns packed little-endian into 64 bits.
#[inline]
fn pack_f16x4(h: [f16; 4]) -> u64 {
    let [a, b, c, d] = h;
    let bits = |h: f16| u64::from(h.to_bits());
    bits(a) | (bits(b) << 16) | (bits(c) << 32) | (bits(d) << 48)
}

/// Eight f16 scales as f32 lanes: gathered with scalar integer ops (which run on ports
/// the vector code leaves idle), converted with one F16C instruction.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16x8_to_f32(lo: [f16; 4], hi: [f16; 4]) -> __m256 {
    _mm256_cvtph_ps(_mm_set_epi64x(pack_f16x4(hi) as i64, pack_f16x4(lo) as i64))
}

mod float;
mod kquants;
mod q32;
mod quantize;
#[cfg(test)]
mod tests;

pub(crate) use float::{dot_bf16, dot_f16, dot_f32};
pub(crate) use kquants::{dot_q4_k, dot_q5_k, dot_q6_k};
pub(crate) use q32::{dot_q4_0, dot_q8_0};
pub(crate) use quantize::{quantize_q8_0, quantize_q8_k};
