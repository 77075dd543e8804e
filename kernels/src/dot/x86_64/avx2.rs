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

// ------------------------------------------------------------------ float weights

/// The shared loop of the float dots: `widen` turns 8 weights into 8 f32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_widened<T: Copy + Default>(w: &[T], x: &[f32], widen: impl Fn(&[T; 8]) -> __m256) -> f32 {
    let (w32, w_rest) = w.as_chunks::<32>();
    let (x32, x_rest) = x.as_chunks::<32>();
    // Four independent chains: an FMA's latency is hidden behind the other three.
    let mut acc = [_mm256_setzero_ps(); 4];
    for (a, b) in w32.iter().zip(x32) {
        prefetch_ahead(a, size_of::<[T; 32]>());
        for ((acc, a), b) in acc
            .iter_mut()
            .zip(a.as_chunks::<8>().0)
            .zip(b.as_chunks::<8>().0)
        {
            *acc = _mm256_fmadd_ps(widen(a), load_f32x8(b), *acc);
        }
    }
    // Fewer than 32 left: whole vectors of 8, then the last 0..8 values zero-padded.
    let (w8, w_tail) = w_rest.as_chunks::<8>();
    let (x8, x_tail) = x_rest.as_chunks::<8>();
    for (acc, (a, b)) in acc.iter_mut().zip(w8.iter().zip(x8)) {
        *acc = _mm256_fmadd_ps(widen(a), load_f32x8(b), *acc);
    }
    if !w_tail.is_empty() {
        let mut wp = [T::default(); 8];
        let mut xp = [0.0f32; 8];
        for (d, s) in wp.iter_mut().zip(w_tail) {
            *d = *s;
        }
        for (d, s) in xp.iter_mut().zip(x_tail) {
            *d = *s;
        }
        acc[3] = _mm256_fmadd_ps(widen(&wp), load_f32x8(&xp), acc[3]);
    }
    let [a0, a1, a2, a3] = acc;
    hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `w.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    dot_widened(w, x, |a| load_f32x8(a))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `w.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    dot_widened(w, x, |a| _mm256_cvtph_ps(load_16bit_x8(a)))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `w.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    // A bf16 is the top half of an f32: zero-extend to 32 bits and shift into place.
    dot_widened(w, x, |a| {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
            load_16bit_x8(a),
        )))
    })
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

// ------------------------------------------------------------------ Q8_0 and Q4_0

/// `sum(w * x)` of a Q8_0 block pair, spread over 8 i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q8_0_block(a: &BlockQ8_0, b: &BlockQ8_0) -> __m256i {
    // Both sides may be -128, so widen to i16: `vpmaddwd` of two i16 lanes is exact.
    let (al, ah) = load_i8x16_halves(&a.qs);
    let (bl, bh) = load_i8x16_halves(&b.qs);
    let lo = _mm256_madd_epi16(_mm256_cvtepi8_epi16(al), _mm256_cvtepi8_epi16(bl));
    let hi = _mm256_madd_epi16(_mm256_cvtepi8_epi16(ah), _mm256_cvtepi8_epi16(bh));
    _mm256_add_epi32(lo, hi)
}

/// Exact sums of eight Q8_0 block pairs, one per lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q8_0_group(a: &[BlockQ8_0; 8], b: &[BlockQ8_0; 8]) -> __m256i {
    let [a0, a1, a2, a3, a4, a5, a6, a7] = a;
    let [b0, b1, b2, b3, b4, b5, b6, b7] = b;
    transpose_sum8([
        q8_0_block(a0, b0),
        q8_0_block(a1, b1),
        q8_0_block(a2, b2),
        q8_0_block(a3, b3),
        q8_0_block(a4, b4),
        q8_0_block(a5, b5),
        q8_0_block(a6, b6),
        q8_0_block(a7, b7),
    ])
}

/// `sum((q - 8) * x)` of a Q4_0 block and its Q8_0 activations, spread over 16 i16 lanes
/// (each within +-5872).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q4_0_block_epi16(a: &BlockQ4_0, b: &BlockQ8_0) -> __m256i {
    // Low nibbles are elements 0..16, high nibbles 16..32: the 16 bytes go to both halves
    // of the vector and the upper half is shifted down by 4 (bits that cross into the
    // byte below are masked off).
    let packed = _mm256_broadcastsi128_si256(load_u8x16(&a.qs));
    let q = _mm256_and_si256(
        _mm256_srlv_epi32(packed, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
        splat_u8(0x0F),
    );
    let x = load_i8x32(&b.qs);
    // q * x - 8 * x, both as unsigned-times-signed pairs: within [-3840, 3810] and
    // [-2048, 2032], so the difference is within +-5872.
    let qx = _mm256_maddubs_epi16(q, x);
    let eight_x = _mm256_maddubs_epi16(splat_u8(8), x);
    _mm256_sub_epi16(qx, eight_x)
}

/// `sum((q - 8) * x)` of a Q4_0 block, spread over 8 i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q4_0_block(a: &BlockQ4_0, b: &BlockQ8_0) -> __m256i {
    _mm256_madd_epi16(q4_0_block_epi16(a, b), _mm256_set1_epi16(1))
}

/// Exact sums of eight Q4_0 blocks, one per lane. Sums of four of a block's i16 lanes
/// stay within +-23488, so the first two levels of the reduction run on i16 and only two
/// `vpmaddwd` widen the result.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q4_0_group(a: &[BlockQ4_0; 8], b: &[BlockQ8_0; 8]) -> __m256i {
    let [a0, a1, a2, a3, a4, a5, a6, a7] = a;
    let [b0, b1, b2, b3, b4, b5, b6, b7] = b;
    let lo = lane_sums4_epi16(
        q4_0_block_epi16(a0, b0),
        q4_0_block_epi16(a1, b1),
        q4_0_block_epi16(a2, b2),
        q4_0_block_epi16(a3, b3),
    );
    let hi = lane_sums4_epi16(
        q4_0_block_epi16(a4, b4),
        q4_0_block_epi16(a5, b5),
        q4_0_block_epi16(a6, b6),
        q4_0_block_epi16(a7, b7),
    );
    fold_halves(lo, hi)
}

/// The driver shared by Q4_0 and Q8_0 weights (32-value blocks with one f16 scale, Q8_0
/// activations): `sum over blocks of (d_w * d_x) * sum(w * x)`. `group` returns the exact
/// integer sums of eight blocks, one per lane; `block` one block's sum over 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_32<W>(
    w: &[W],
    x: &[BlockQ8_0],
    scale: impl Fn(&W) -> f16,
    group: impl Fn(&[W; 8], &[BlockQ8_0; 8]) -> __m256i,
    block: impl Fn(&W, &BlockQ8_0) -> __m256i,
) -> f32 {
    let (w8, w_rest) = w.as_chunks::<8>();
    let (x8, x_rest) = x.as_chunks::<8>();
    let mut acc = _mm256_setzero_ps();
    for (a, b) in w8.iter().zip(x8) {
        prefetch_ahead(a, size_of::<[W; 8]>());
        let sums = group(a, b);
        // Lane i: f32(d_w) * f32(d_x) of block i, rounded exactly as the reference does.
        let [a0, a1, a2, a3, a4, a5, a6, a7] = a;
        let [b0, b1, b2, b3, b4, b5, b6, b7] = b;
        let dw = f16x8_to_f32(
            [scale(a0), scale(a1), scale(a2), scale(a3)],
            [scale(a4), scale(a5), scale(a6), scale(a7)],
        );
        let dx = f16x8_to_f32([b0.d, b1.d, b2.d, b3.d], [b4.d, b5.d, b6.d, b7.d]);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(dw, dx), acc);
    }
    let mut tail = 0.0f32;
    for (a, b) in w_rest.iter().zip(x_rest) {
        tail += hsum_epi32(block(a, b)) as f32 * f16_product(scale(a), b.d);
    }
    hsum_ps(acc) + tail
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `w.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    dot_32(
        w,
        x,
        |a| a.d,
        |a, b| q8_0_group(a, b),
        |a, b| q8_0_block(a, b),
    )
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `w.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    dot_32(
        w,
        x,
        |a| a.d,
        |a, b| q4_0_group(a, b),
        |a, b| q4_0_block(a, b),
    )
}

// ------------------------------------------------------------------ k-quants

/// Scales and mins of a Q4_K/Q5_K block as i16, each scale repeated twice so that a
/// dword holds one sub-block's scale in both halves: `scales_lo` is
/// `[s0, s0, s1, s1, s2, s2, s3, s3]` in both 128-bit lanes, `scales_hi` the same for
/// scales 4..8, and `mins` is `[m0, m0, m1, m1, .., m7, m7]` (pairing with the sixteen
/// `bsums`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn k4_scales_mins(packed: &[u8; K_SCALE_SIZE]) -> (__m256i, __m256i, __m256i) {
    // `scale_min_k4` for all j at once: bytes 0..4 hold scales 0..4 (low 6 bits) and the
    // top bits of scales 4..8; bytes 4..8 the same for the mins; bytes 8..12 the low
    // nibbles of scales 4..8 and mins 4..8.
    let [a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3] = *packed;
    let a = u32::from_le_bytes([a0, a1, a2, a3]);
    let b = u32::from_le_bytes([b0, b1, b2, b3]);
    let c = u32::from_le_bytes([c0, c1, c2, c3]);
    let scales_lo = a & 0x3F3F_3F3F;
    let mins_lo = b & 0x3F3F_3F3F;
    let scales_hi = (c & 0x0F0F_0F0F) | ((a >> 2) & 0x3030_3030);
    let mins_hi = ((c >> 4) & 0x0F0F_0F0F) | ((b >> 2) & 0x3030_3030);
    let scales = u64::from(scales_lo) | (u64::from(scales_hi) << 32);
    let mins = u64::from(mins_lo) | (u64::from(mins_hi) << 32);
    // Bytes 0..8: scales, 8..16: mins; each byte doubled by unpacking with itself.
    let v = _mm_set_epi64x(mins as i64, scales as i64);
    let scales = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, v));
    let mins = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(v, v));
    (
        _mm256_permute4x64_epi64::<0x44>(scales),
        _mm256_permute4x64_epi64::<0xEE>(scales),
        mins,
    )
}

/// The integer sums of a Q4_K or Q5_K block, spread over 8 i32 lanes each:
/// `sumi = sum_j scale_j * sum(q * x)` and `summ = sum_j min_j * sum(x)` over sub-blocks.
#[derive(Clone, Copy)]
struct K4Sums {
    sumi: __m256i,
    summ: __m256i,
}

/// The 32 low nibbles and the 32 high nibbles of 32 packed bytes, as bytes 0..15.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn nibbles(q: __m256i) -> (__m256i, __m256i) {
    let low4 = splat_u8(0x0F);
    (
        _mm256_and_si256(q, low4),
        _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4),
    )
}

/// The block body shared by Q4_K and Q5_K. `values` turns the `j`-th 32 bytes of `qs`
/// (called for j = 0, 1, 2, 3 in order) into the unsigned values of sub-blocks `2j` and
/// `2j + 1`, at most 31.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn k4_block(
    packed_scales: &[u8; K_SCALE_SIZE],
    qs: &[u8; QK_K / 2],
    b: &BlockQ8K,
    mut values: impl FnMut(__m256i) -> (__m256i, __m256i),
) -> K4Sums {
    let (scales_lo, scales_hi, mins) = k4_scales_mins(packed_scales);
    // sum_j min_j * (bsums[2j] + bsums[2j + 1]).
    let summ = _mm256_madd_epi16(load_i16x16(&b.bsums), mins);

    // Products of each pair of sub-blocks (2j, 2j + 1): 16 i16 lanes each, at most
    // 2 * 31 * 128 = 7936 in magnitude.
    let mut pairs = [_mm256_setzero_si256(); 4];
    let (q4, _) = qs.as_chunks::<32>();
    let (q8, _) = b.qs.as_chunks::<32>();
    for ((pair, q), [xl, xh]) in pairs.iter_mut().zip(q4).zip(q8.as_chunks::<2>().0) {
        let (lo, hi) = values(load_u8x32(q));
        let pl = _mm256_maddubs_epi16(lo, load_i8x32(xl));
        let ph = _mm256_maddubs_epi16(hi, load_i8x32(xh));
        // Dwords [2j, 2j + 1, 2j, 2j + 1] per 128-bit lane, sums of two lanes.
        *pair = zip_add_epi16(pl, ph);
    }
    // Dwords [0, 1, 2, 3] and [4, 5, 6, 7] (sub-blocks), sums of four lanes: at most
    // 31744, still i16. One `vpmaddwd` applies four sub-blocks' scales.
    let [p01, p23, p45, p67] = pairs;
    let s0123 = zip_add_epi16_64(p01, p23);
    let s4567 = zip_add_epi16_64(p45, p67);
    let sumi = _mm256_add_epi32(
        _mm256_madd_epi16(s0123, scales_lo),
        _mm256_madd_epi16(s4567, scales_hi),
    );
    K4Sums { sumi, summ }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q4_k_block(a: &BlockQ4K, b: &BlockQ8K) -> K4Sums {
    // 32 bytes of nibbles = sub-blocks 2j (low nibbles) and 2j + 1 (high nibbles).
    k4_block(&a.scales, &a.qs, b, |q| nibbles(q))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q5_k_block(a: &BlockQ5K, b: &BlockQ8K) -> K4Sums {
    let bit4 = splat_u8(0x10);
    // Bit 2j of qh[l] is the fifth bit of element l of sub-block 2j, bit 2j + 1 that of
    // sub-block 2j + 1. `high` is shifted down by 2 per pair, so the pair's two bits are
    // always bits 0 and 1 of each byte (16-bit shifts move bits across bytes, but only
    // into bits that are masked off), and are moved to bit 4.
    let mut high = load_u8x32(&a.qh);
    k4_block(&a.scales, &a.qs, b, |q| {
        let (lo, hi) = nibbles(q);
        let hl = _mm256_and_si256(_mm256_slli_epi16::<4>(high), bit4);
        let hh = _mm256_and_si256(_mm256_slli_epi16::<3>(high), bit4);
        high = _mm256_srli_epi16::<2>(high);
        (_mm256_or_si256(lo, hl), _mm256_or_si256(hi, hh))
    })
}

/// The driver shared by Q4_K and Q5_K:
/// `sum over blocks of (d * d_x) * sumi - (dmin * d_x) * summ`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_k4<W>(
    w: &[W],
    x: &[BlockQ8K],
    scales: impl Fn(&W) -> (f16, f16),
    block: impl Fn(&W, &BlockQ8K) -> K4Sums,
) -> f32 {
    let (w4, w_rest) = w.as_chunks::<4>();
    let (x4, x_rest) = x.as_chunks::<4>();
    // Flips the sign of the upper four lanes: the mins are subtracted.
    let negate_hi = _mm256_setr_ps(0.0, 0.0, 0.0, 0.0, -0.0, -0.0, -0.0, -0.0);
    let mut acc = _mm256_setzero_ps();
    for (a, b) in w4.iter().zip(x4) {
        prefetch_ahead(a, size_of::<[W; 4]>());
        let ([a0, a1, a2, a3], [b0, b1, b2, b3]) = (a, b);
        let [s0, s1, s2, s3] = [block(a0, b0), block(a1, b1), block(a2, b2), block(a3, b3)];
        // Lanes 0..4: the blocks' sumi, lanes 4..8: their summ.
        let sums = transpose_sum8([
            s0.sumi, s1.sumi, s2.sumi, s3.sumi, s0.summ, s1.summ, s2.summ, s3.summ,
        ]);
        // Lanes 0..4: d * d_x of each block; lanes 4..8: -(dmin * d_x).
        let [(d0, m0), (d1, m1), (d2, m2), (d3, m3)] =
            [scales(a0), scales(a1), scales(a2), scales(a3)];
        let dx = _mm_setr_ps(b0.d, b1.d, b2.d, b3.d);
        let d = _mm256_mul_ps(
            f16x8_to_f32([d0, d1, d2, d3], [m0, m1, m2, m3]),
            _mm256_set_m128(dx, dx),
        );
        let d = _mm256_xor_ps(d, negate_hi);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), d, acc);
    }
    let mut tail = 0.0f32;
    for (a, b) in w_rest.iter().zip(x_rest) {
        let (d, dmin) = scales(a);
        let K4Sums { sumi, summ } = block(a, b);
        tail += f16_to_f32(d) * b.d * hsum_epi32(sumi) as f32
            - f16_to_f32(dmin) * b.d * hsum_epi32(summ) as f32;
    }
    hsum_ps(acc) + tail
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `w.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q4_k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    dot_k4(w, x, |a| (a.d, a.dmin), |a, b| q4_k_block(a, b))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `w.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q5_k(w: &[BlockQ5K], x: &[BlockQ8K]) -> f32 {
    dot_k4(w, x, |a| (a.d, a.dmin), |a, b| q5_k_block(a, b))
}

/// Q6_K: `vpshufb` controls that arrange the 16 scale bytes for half `h` of a block as
/// `[s0, s0, s2, s2, s4, s4, s6, s6, s1, s1, s3, s3, s5, s5, s7, s7]` (relative to `8h`):
/// once sign-extended to i16, the even sub-blocks' scales fill the low 128-bit lane and
/// the odd ones the high lane, each repeated to fill a dword.
const Q6K_SCALE_ORDER: [[i8; 16]; 2] = [
    [0, 0, 2, 2, 4, 4, 6, 6, 1, 1, 3, 3, 5, 5, 7, 7],
    [8, 8, 10, 10, 12, 12, 14, 14, 9, 9, 11, 11, 13, 13, 15, 15],
];

/// `sum_j scale_j * sum((q - 32) * x)` of a Q6_K block, spread over 8 i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q6_k_block(a: &BlockQ6K, b: &BlockQ8K) -> __m256i {
    let low4 = splat_u8(0x0F);
    let bits45 = splat_u8(0x30);
    let scale_bytes = load_i8x16(&a.scales);
    // The -32 offset: sum_j scale_j * 32 * bsums[j], subtracted at the end.
    let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(
        _mm256_cvtepi8_epi16(scale_bytes),
        load_i16x16(&b.bsums),
    ));

    let mut sumi = _mm256_setzero_si256();
    let (ql, _) = a.ql.as_chunks::<32>();
    let (ql, _) = ql.as_chunks::<2>();
    let (qh, _) = a.qh.as_chunks::<32>();
    let (q8, _) = b.qs.as_chunks::<128>();
    // Each half block: 128 values, sub-blocks 8h..8h + 8. Value vector k covers sub-block
    // 8h + 2k in its low 128-bit lane and 8h + 2k + 1 in its high lane.
    for ((([l0, l1], qh), x), order) in ql.iter().zip(qh).zip(q8).zip(&Q6K_SCALE_ORDER) {
        let (l0, l1) = (load_u8x32(l0), load_u8x32(l1));
        let h = load_u8x32(qh);
        // Values 0..63: element l of each quarter is its ql nibble plus two qh bits.
        let q = [
            _mm256_or_si256(
                _mm256_and_si256(l0, low4),
                _mm256_and_si256(_mm256_slli_epi16::<4>(h), bits45),
            ),
            _mm256_or_si256(
                _mm256_and_si256(l1, low4),
                _mm256_and_si256(_mm256_slli_epi16::<2>(h), bits45),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(l0), low4),
                _mm256_and_si256(h, bits45),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(l1), low4),
                _mm256_and_si256(_mm256_srli_epi16::<2>(h), bits45),
            ),
        ];
        let mut p = [_mm256_setzero_si256(); 4];
        for ((p, q), x) in p.iter_mut().zip(q).zip(x.as_chunks::<32>().0) {
            // At most 2 * 63 * 128 = 16128 in magnitude.
            *p = _mm256_maddubs_epi16(q, load_i8x32(x));
        }
        // Scale dwords: [s0, s2, s4, s6] low lane, [s1, s3, s5, s7] high lane.
        let scales = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scale_bytes, load_i8x16(order)));
        // Sums of two lanes (within +-32256, still i16) of vectors 0 and 1 as dwords
        // [0, 1, 0, 1]: sub-blocks (0, 2, 0, 2) low, (1, 3, 1, 3) high; likewise vectors 2
        // and 3 with sub-blocks 4..8. One `vpmaddwd` applies four scales.
        let [p0, p1, p2, p3] = p;
        sumi = _mm256_add_epi32(
            sumi,
            _mm256_add_epi32(
                _mm256_madd_epi16(zip_add_epi16(p0, p1), _mm256_shuffle_epi32::<0x44>(scales)),
                _mm256_madd_epi16(zip_add_epi16(p2, p3), _mm256_shuffle_epi32::<0xEE>(scales)),
            ),
        );
    }
    _mm256_sub_epi32(sumi, offset)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `w.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q6_k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    let (w4, w_rest) = w.as_chunks::<4>();
    let (x4, x_rest) = x.as_chunks::<4>();
    let mut acc = _mm_setzero_ps();
    for (a, b) in w4.iter().zip(x4) {
        prefetch_ahead(a, size_of::<[BlockQ6K; 4]>());
        let ([a0, a1, a2, a3], [b0, b1, b2, b3]) = (a, b);
        let sums = transpose_sum4([
            q6_k_block(a0, b0),
            q6_k_block(a1, b1),
            q6_k_block(a2, b2),
            q6_k_block(a3, b3),
        ]);
        // Lane i: f32(d) * d_x of block i.
        let d = _mm_cvtph_ps(_mm_cvtsi64_si128(
            pack_f16x4([a0.d, a1.d, a2.d, a3.d]) as i64
        ));
        let d = _mm_mul_ps(d, _mm_setr_ps(b0.d, b1.d, b2.d, b3.d));
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(sums), d, acc);
    }
    let mut tail = 0.0f32;
    for (a, b) in w_rest.iter().zip(x_rest) {
        tail += f16_to_f32(a.d) * b.d * hsum_epi32(q6_k_block(a, b)) as f32;
    }
    let acc = _mm_add_ps(acc, _mm_movehl_ps(acc, acc));
    _mm_cvtss_f32(_mm_add_ss(acc, _mm_movehdup_ps(acc))) + tail
}

// ------------------------------------------------------------------ activation quantizers

/// Four vectors of 8 i32 (each in -128..=127) as 32 bytes in lane order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pack_i32x32_to_i8(q: [__m256i; 4]) -> __m256i {
    let [q0, q1, q2, q3] = q;
    // The packs work per 128-bit lane, leaving 4-byte groups in the order
    // q0[0..4] q1[0..4] q2[0..4] q3[0..4] | q0[4..8] q1[4..8] q2[4..8] q3[4..8];
    // the permutation restores element order. Values are in range: no saturation.
    let p = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
    _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `v.round() as i8` per lane, as i32: round half away from zero, saturate to -128..=127,
/// NaN to 0 (Rust's float-to-int `as` semantics).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn round_away_to_i8(v: __m256) -> __m256i {
    let sign_bit = _mm256_set1_ps(-0.0);
    let sign = _mm256_and_ps(v, sign_bit);
    let a = _mm256_andnot_ps(sign_bit, v);
    // |v| - trunc(|v|) is exact, so comparing it with 0.5 decides ties correctly (unlike
    // adding 0.5 and truncating, which rounds 0.49999997 up).
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(a);
    let up = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_sub_ps(a, t), _mm256_set1_ps(0.5));
    let r = _mm256_or_ps(
        _mm256_add_ps(t, _mm256_and_ps(up, _mm256_set1_ps(1.0))),
        sign,
    );
    let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
    let r = _mm256_min_ps(
        _mm256_max_ps(r, _mm256_set1_ps(-128.0)),
        _mm256_set1_ps(127.0),
    );
    _mm256_cvttps_epi32(r)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `x.len() == 32 * y.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    for (b, x) in y.iter_mut().zip(x.as_chunks::<32>().0) {
        let (x8, _) = x.as_chunks::<8>();
        let mut v = [_mm256_setzero_ps(); 4];
        let mut amax = _mm256_setzero_ps();
        for (v, x) in v.iter_mut().zip(x8) {
            *v = load_f32x8(x);
            // `maxps` returns its second operand when either is NaN: NaN inputs are skipped,
            // like the reference's `f32::max`.
            amax = _mm256_max_ps(_mm256_and_ps(*v, abs_mask), amax);
        }
        // The reference's arithmetic, in the same order.
        let amax = hmax_ps(amax);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        let id = _mm256_set1_ps(id);
        let [v0, v1, v2, v3] = v;
        let q = [
            round_away_to_i8(_mm256_mul_ps(v0, id)),
            round_away_to_i8(_mm256_mul_ps(v1, id)),
            round_away_to_i8(_mm256_mul_ps(v2, id)),
            round_away_to_i8(_mm256_mul_ps(v3, id)),
        ];
        store_i8x32(&mut b.qs, pack_i32x32_to_i8(q));
    }
}

/// `nearest_int(v).min(127) as i8` per lane, as i32: GGML's magic-number rounding
/// (exactly the reference's bit manipulation), then the low byte sign-extended.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn nearest_int_to_i8(v: __m256) -> __m256i {
    let t = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12_582_912.0)));
    let n = _mm256_sub_epi32(
        _mm256_and_si256(t, _mm256_set1_epi32(0x007F_FFFF)),
        _mm256_set1_epi32(0x0040_0000),
    );
    let n = _mm256_min_epi32(n, _mm256_set1_epi32(127));
    _mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(n))
}

/// The sums of four groups of 16 values given as pairs of 8-lane vectors.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn group_sums(q: &[__m256i; 8]) -> __m128i {
    let [q0, q1, q2, q3, q4, q5, q6, q7] = *q;
    transpose_sum4([
        _mm256_add_epi32(q0, q1),
        _mm256_add_epi32(q2, q3),
        _mm256_add_epi32(q4, q5),
        _mm256_add_epi32(q6, q7),
    ])
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `x.len() == 256 * y.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    for (b, x) in y.iter_mut().zip(x.as_chunks::<QK_K>().0) {
        let (x8, _) = x.as_chunks::<8>();
        let mut amax = _mm256_setzero_ps();
        for x in x8 {
            // NaN inputs are skipped, like the reference's `>` comparison (see Q8_0).
            amax = _mm256_max_ps(_mm256_and_ps(load_f32x8(x), abs_mask), amax);
        }
        let amax = hmax_ps(amax);
        if amax == 0.0 {
            b.d = 0.0;
            b.qs = [0; QK_K];
            b.bsums = [0; QK_K / 16];
            continue;
        }
        // The scale's sign is that of the first value of largest magnitude.
        let target = _mm256_set1_ps(amax);
        let mut max = amax;
        for x in x8 {
            let v = load_f32x8(x);
            let hits = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
                _mm256_and_ps(v, abs_mask),
                target,
            ));
            if hits != 0 {
                let first = hits & hits.wrapping_neg();
                if _mm256_movemask_ps(v) & first != 0 {
                    max = -amax;
                }
                break;
            }
        }
        let iscale = -127.0 / max;
        let scale = _mm256_set1_ps(iscale);

        // 64 values at a time: 8 vectors of quants (two 32-byte stores) and 4 bsums.
        let mut sums = [_mm_setzero_si128(); 4];
        let (out64, _) = b.qs.as_chunks_mut::<64>();
        let (x64, _) = x.as_chunks::<64>();
        for ((out, x), sums) in out64.iter_mut().zip(x64).zip(&mut sums) {
            let (x8, _) = x.as_chunks::<8>();
            let mut q = [_mm256_setzero_si256(); 8];
            for (q, x) in q.iter_mut().zip(x8) {
                *q = nearest_int_to_i8(_mm256_mul_ps(load_f32x8(x), scale));
            }
            *sums = group_sums(&q);
            let [q0, q1, q2, q3, q4, q5, q6, q7] = q;
            let (out32, _) = out.as_chunks_mut::<32>();
            for (out, q) in out32.iter_mut().zip([[q0, q1, q2, q3], [q4, q5, q6, q7]]) {
                store_i8x32(out, pack_i32x32_to_i8(q));
            }
        }
        let (bsums8, _) = b.bsums.as_chunks_mut::<8>();
        let [s0, s1, s2, s3] = sums;
        for (out, (lo, hi)) in bsums8.iter_mut().zip([(s0, s1), (s2, s3)]) {
            store_i16x8(out, _mm_packs_epi32(lo, hi));
        }
        b.d = 1.0 / iscale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::scalar;

    fn have_avx2() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    #[test]
    fn k4_scale_unpacking_matches_scale_min_k4() {
        if !have_avx2() {
            return;
        }
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..1000 {
            let mut packed = [0u8; K_SCALE_SIZE];
            for b in &mut packed {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            // SAFETY: the CPU has the features (checked above).
            let [lo, hi, mins] = unsafe { k4_scales_mins_to_arrays(&packed) };
            for j in 0..8 {
                let (sc, mn) = scale_min_k4(j, &packed);
                let scales = if j < 4 { &lo } else { &hi };
                for lane in [0, 8] {
                    assert_eq!(scales[lane + 2 * (j % 4)], i16::from(sc), "scale {j}");
                    assert_eq!(scales[lane + 2 * (j % 4) + 1], i16::from(sc), "scale {j}");
                }
                assert_eq!(mins[2 * j], i16::from(mn));
                assert_eq!(mins[2 * j + 1], i16::from(mn));
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn k4_scales_mins_to_arrays(packed: &[u8; K_SCALE_SIZE]) -> [[i16; 16]; 3] {
        let (lo, hi, mins) = k4_scales_mins(packed);
        // SAFETY: a 256-bit vector is 16 i16, and every bit pattern is a valid i16.
        [lo, hi, mins].map(|v| unsafe { core::mem::transmute::<__m256i, [i16; 16]>(v) })
    }

    /// One block among zero blocks, with the largest scales and lanes whose partial sums
    /// are large and cancel: the result must be the reference's product exactly, which it
    /// only is if the block sum is reduced exactly before it is scaled.
    #[test]
    fn block_sums_are_exact_before_scaling() {
        if !have_avx2() {
            return;
        }
        let big = f16::from_f32(65504.0);
        let zero8 = BlockQ8_0 {
            d: f16::ZERO,
            qs: [0; 32],
        };
        let mut x = [zero8; 8];
        x[3].d = big;
        for (i, q) in x[3].qs.iter_mut().enumerate() {
            *q = match i {
                0 => 126,
                1..8 => 127,
                8..16 => -127,
                _ => 0,
            };
        }
        let mut w8 = [zero8; 8];
        w8[3] = BlockQ8_0 {
            d: big,
            qs: [127; 32],
        };
        // Nibble 8 is the value 0; block 3 is all 15 (value 7).
        let mut w4 = [BlockQ4_0 {
            d: f16::ZERO,
            qs: [0x88; 16],
        }; 8];
        w4[3] = BlockQ4_0 {
            d: big,
            qs: [0xFF; 16],
        };
        // 8 blocks go through the grouped path, 4 through the one-at-a-time tail.
        for n in [8, 4] {
            // SAFETY: the CPU has the features (checked above); equal lengths.
            let got = unsafe { dot_q8_0(&w8[..n], &x[..n]) };
            assert_eq!(got, scalar::dot_q8_0(&w8[..n], &x[..n]), "Q8_0, {n} blocks");
            // SAFETY: as above.
            let got = unsafe { dot_q4_0(&w4[..n], &x[..n]) };
            assert_eq!(got, scalar::dot_q4_0(&w4[..n], &x[..n]), "Q4_0, {n} blocks");
        }
    }

    #[test]
    fn q8_0_rounding_matches_std_round_as_i8() {
        if !have_avx2() {
            return;
        }
        let special = [
            0.5f32,
            1.5,
            2.5,
            -0.5,
            -2.5,
            0.499_999_97,
            -0.499_999_97,
            126.5,
            127.49,
            127.5,
            -128.5,
            -127.5,
            1e10,
            -1e10,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -0.0,
            8_388_607.5,
            1e-45,
        ];
        for v in special {
            // SAFETY: the CPU has the features (checked above).
            let got = unsafe { round_lane0(v) };
            assert_eq!(got, i32::from(v.round() as i8), "{v}");
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn round_lane0(v: f32) -> i32 {
        _mm256_cvtsi256_si32(round_away_to_i8(_mm256_set1_ps(v)))
    }

    /// Inputs where the scalar quantizers' edge cases show: ties in magnitude between a
    /// positive and a negative value (the first decides the sign of the Q8_K scale),
    /// values so small that the inverse scale overflows, exact halves.
    #[test]
    fn quantizers_match_reference_bit_for_bit_on_edge_cases() {
        if !have_avx2() {
            return;
        }
        let mut rows: Vec<Vec<f32>> = Vec::new();
        let mut tie = vec![0.25f32; 256];
        tie[3] = -2.0;
        tie[200] = 2.0;
        rows.push(tie.clone());
        tie[3] = 2.0;
        tie[200] = -2.0;
        rows.push(tie);
        rows.push((0..256).map(|i| (i as f32 - 128.0) * 1e-39).collect());
        rows.push(
            (0..256)
                .map(|i| if i == 77 { -1e-45 } else { 0.0 })
                .collect(),
        );
        rows.push((0..256).map(|i| (i as f32 - 127.0) * 0.5).collect());
        // Non-finite inputs: NaN is skipped by the scale search and quantizes to 0;
        // infinities make the scales infinite or zero.
        let mut odd: Vec<f32> = (0..256).map(|i| (i as f32).sin()).collect();
        odd[5] = f32::NAN;
        odd[31] = f32::NAN;
        rows.push(odd.clone());
        odd[100] = f32::NEG_INFINITY;
        rows.push(odd);
        rows.push(vec![0.0; 256]);
        for x in rows {
            let mut a = [BlockQ8_0 {
                d: f16::ZERO,
                qs: [0; 32],
            }; 8];
            let mut b = a;
            // SAFETY: the CPU has the features (checked above); 256 = 32 * 8.
            unsafe { quantize_q8_0(&x, &mut a) };
            scalar::quantize_q8_0(&x, &mut b);
            assert_eq!(a, b, "Q8_0 of {x:?}");
            let mut a: [BlockQ8K; 1] = [bytemuck::Zeroable::zeroed()];
            let mut b = a;
            // SAFETY: the CPU has the features (checked above); 256 = 256 * 1.
            unsafe { quantize_q8_k(&x, &mut a) };
            scalar::quantize_q8_k(&x, &mut b);
            assert_eq!(a[0].d.to_bits(), b[0].d.to_bits(), "Q8_K d of {x:?}");
            assert_eq!(a[0].qs, b[0].qs, "Q8_K qs of {x:?}");
            assert_eq!(a[0].bsums, b[0].bsums, "Q8_K bsums of {x:?}");
        }
    }
}
