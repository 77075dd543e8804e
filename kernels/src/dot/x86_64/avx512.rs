//! Dot products for x86_64 CPUs with AVX-512 F, BW, VL and VNNI (Intel Ice Lake and later,
//! AMD Zen 4 and later): the single-token (decode) side of the `avx512` path. The
//! multi-token side is [`super::avx512_gemm`].
//!
//! # What is computed
//!
//! Exactly what [`crate::dot::scalar`] defines: every block's (or sub-block's) integer sum
//! is exact, converted to f32 once and multiplied by the reference's scale product; only
//! the order of the f32 additions differs.
//!
//! # How
//!
//! Decode streams every weight byte from memory once per token, so these kernels are
//! bound by memory bandwidth, not arithmetic. They use 256-bit registers (AVX-512VL
//! encodings), where one `vpdpbusd` multiplies 32 unsigned weight bytes by 32 signed
//! activation bytes and adds each group of four products to an i32 lane without
//! saturating, replacing AVX2's `vpmaddubsw` + `vpmaddwd` + `vpaddd`.
//!
//! - **Q4_0 · Q8_0**: the 16 packed bytes are broadcast to both 128-bit halves and the
//!   upper half shifted right by 4 (`vpsrlvw`), so one mask leaves the 32 nibbles in
//!   element order. `vpdpbusd` takes them as unsigned 0..15; the `-8` offset is a second
//!   `vpdpbusd` of the activations against the constant 8, subtracted.
//! - **Q8_0 · Q8_0**: both operands are signed and may be -128. The weights are flipped to
//!   `w + 128` (one `vpxor`), which is unsigned and exact, and `128 * sum(x)` (a second
//!   `vpdpbusd` against the constant 128) is subtracted.
//! - For both, eight blocks go together: their eight vectors of partial sums are reduced
//!   by a transposing tree of in-lane unpacks and adds into one vector holding one exact
//!   block sum per lane, converted once and multiplied by the eight scale products with one
//!   FMA.
//! - **Q4_K / Q5_K · Q8_K**: each 32-byte slice of `qs` gives two sub-blocks (low and high
//!   nibbles); Q5_K's fifth bit is added with a byte mask (`vptestmb`) and a masked byte
//!   add. The eight sub-block sums come out of the same transposing tree, one per lane, and
//!   one `vpmulld` applies the eight 6-bit scales. The mins never touch the values:
//!   `sum_j min_j * (bsums[2j] + bsums[2j+1])` is one `vpmaddwd` of the `bsums` against
//!   the mins repeated twice.
//! - **Q6_K · Q8_K**: the low four and high two bits are combined into unsigned 0..63,
//!   32 values (two 16-value sub-blocks) per vector. `vpmaddubsw` forms pairs (at most
//!   `2 * 63 * 128 = 16128`, no saturation) and `vpdpwssd` multiplies them by the signed
//!   scales (one per 16-bit lane, arranged by `vpermw`) and accumulates, so scaling costs
//!   no extra instruction. The `-32` offset is `32 * sum_j(scale_j * bsums[j])`, one
//!   `vpmaddwd`.
//!
//! Every loop prefetches the weights [`PREFETCH_AHEAD`] bytes ahead, as the AVX2 path does:
//! with two threads streaming, the hardware prefetchers alone leave bandwidth unused.
//!
//! # Overflow
//!
//! `vpdpbusd` and `vpdpwssd` add into i32 lanes without intermediate saturation. The
//! largest i32 sums are Q6_K's (`|scale * q * x|` summed over 256 values, plus the offset
//! term), below `2^29`; Q8_0's `(w + 128) * x` over a block is below `2^21`.

use core::arch::x86_64::*;
use core::array::from_fn;

use crate::formats::*;

/// How far ahead the weights are prefetched, in bytes (see the module docs).
const PREFETCH_AHEAD: usize = 8192;

// ------------------------------------------------------------------ loads

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(super) fn load_u8x16(a: &[u8; 16]) -> __m128i {
    // SAFETY: `a` is 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn load_u8x32(a: &[u8; 32]) -> __m256i {
    // SAFETY: `a` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(super) fn load_i8x32(a: &[i8; 32]) -> __m256i {
    // SAFETY: `a` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn load_i16x16(a: &[i16; 16]) -> __m256i {
    // SAFETY: `a` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

/// Eight 16-bit values (f16 bit patterns).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(super) fn load_u16x8(a: &[u16; 8]) -> __m128i {
    // SAFETY: `a` is 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(a.as_ptr().cast()) }
}

/// Eight bytes into the low half of a vector.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn load_u8x8(a: &[u8; 8]) -> __m128i {
    _mm_cvtsi64_si128(i64::from_le_bytes(*a))
}

/// Hints that the cache line `PREFETCH_AHEAD` bytes after `start` and the following ones
/// up to `bytes` will be read soon.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn prefetch<T>(start: &T, bytes: usize) {
    let p = (start as *const T)
        .cast::<i8>()
        .wrapping_add(PREFETCH_AHEAD);
    let mut off = 0;
    while off < bytes {
        // A prefetch never faults, so the address need not be valid.
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off));
        off += 64;
    }
}

// ------------------------------------------------------------------ reductions

/// Lane `i` of the result is the exact sum of the eight i32 lanes of `v[i]`: a transposing
/// tree (unpack and add within 128-bit lanes, then across the halves), 21 instructions for
/// eight vectors instead of eight horizontal sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(super) fn transpose_sums8(v: [__m256i; 8]) -> __m256i {
    // Per 128-bit half: [a0 + a2, b0 + b2, a1 + a3, b1 + b3].
    let pair = |a: __m256i, b: __m256i| {
        _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b))
    };
    // Per 128-bit half: the four inputs' sums over that half.
    let quad = |ab: __m256i, cd: __m256i| {
        _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd))
    };
    let lo = quad(pair(v[0], v[1]), pair(v[2], v[3]));
    let hi = quad(pair(v[4], v[5]), pair(v[6], v[7]));
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(lo, hi),
        _mm256_permute2x128_si256::<0x31>(lo, hi),
    )
}

/// Sum of the eight i32 lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// `[sum a, sum b]` over the eight i32 lanes of each.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn hsum2_epi32(a: __m256i, b: __m256i) -> (i32, i32) {
    // [a01, a23, b01, b23 | a45, a67, b45, b67]
    let h = _mm256_hadd_epi32(a, b);
    let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
    let s = _mm_hadd_epi32(s, s);
    (_mm_cvtsi128_si32(s), _mm_extract_epi32::<1>(s))
}

/// Sum of the eight f32 lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// One f16 as f32 (F16C).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn f16_to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits()))))
}

/// `_mm256_set1_epi8` for a byte written as `u8`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn splat8(v: u8) -> __m256i {
    _mm256_set1_epi8(v as i8)
}

// ------------------------------------------------------------------ Q8_0 and Q4_0

/// Partial sums (eight i32 lanes) of `sum(w * x)` over a Q8_0 block pair.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn q8_0_lanes(a: &BlockQ8_0, b: &BlockQ8_0) -> __m256i {
    let x = load_i8x32(&b.qs);
    let w = _mm256_xor_si256(load_i8x32(&a.qs), splat8(0x80));
    let z = _mm256_setzero_si256();
    let biased = _mm256_dpbusd_epi32(z, w, x);
    _mm256_sub_epi32(biased, _mm256_dpbusd_epi32(z, splat8(128), x))
}

/// Partial sums (eight i32 lanes) of `sum((q - 8) * x)` over a Q4_0 block pair.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn q4_0_lanes(a: &BlockQ4_0, b: &BlockQ8_0) -> __m256i {
    let x = load_i8x32(&b.qs);
    let both = _mm256_broadcastsi128_si256(load_u8x16(&a.qs));
    let shift = _mm256_setr_epi64x(0, 0, 0x0004_0004_0004_0004, 0x0004_0004_0004_0004);
    let q = _mm256_and_si256(_mm256_srlv_epi16(both, shift), splat8(0x0F));
    let z = _mm256_setzero_si256();
    let raw = _mm256_dpbusd_epi32(z, q, x);
    _mm256_sub_epi32(raw, _mm256_dpbusd_epi32(z, splat8(8), x))
}

/// The eight scale products `f32(d_w) * f32(d_x)` of a group, as the reference rounds them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn scales8(dw: [f16; 8], dx: [f16; 8]) -> __m256 {
    let w = _mm256_cvtph_ps(load_u16x8(&dw.map(f16::to_bits)));
    let x = _mm256_cvtph_ps(load_u16x8(&dx.map(f16::to_bits)));
    _mm256_mul_ps(w, x)
}

/// The loop shared by Q4_0 and Q8_0 weights (32-value blocks, one f16 scale, Q8_0
/// activations): groups of eight blocks, then the rest one by one.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn dot_32<W: Copy>(
    w: &[W],
    x: &[BlockQ8_0],
    lanes: impl Fn(&W, &BlockQ8_0) -> __m256i,
    scale: impl Fn(&W) -> f16,
) -> f32 {
    let (wg, wt) = w.as_chunks::<8>();
    let (xg, xt) = x.as_chunks::<8>();
    let mut acc = _mm256_setzero_ps();
    for (a, b) in wg.iter().zip(xg) {
        prefetch(a, size_of::<[W; 8]>());
        let s = transpose_sums8(from_fn(|i| lanes(&a[i], &b[i])));
        let d = scales8(from_fn(|i| scale(&a[i])), b.map(|y| y.d));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc);
    }
    let mut sum = hsum_ps(acc);
    for (a, b) in wt.iter().zip(xt) {
        let d = f16_to_f32(scale(a)) * f16_to_f32(b.d);
        sum += hsum_epi32(lanes(a, b)) as f32 * d;
    }
    sum
}

/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C, and
/// `w.len() == x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    dot_32(w, x, |a, b| q8_0_lanes(a, b), |a| a.d)
}

/// # Safety
/// As for [`dot_q8_0`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    dot_32(w, x, |a, b| q4_0_lanes(a, b), |a| a.d)
}

// ------------------------------------------------------------------ k-quants

/// The eight 6-bit scales and mins of a Q4_K/Q5_K block as i32 lanes (scales) and as
/// i16 lanes with each min repeated twice (one per `bsums` entry it covers).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn k4_scales(packed: &[u8; K_SCALE_SIZE]) -> (__m256i, __m256i) {
    let (sc, mn) = scales_mins_k4(packed);
    let sc = _mm256_cvtepu8_epi32(load_u8x8(&sc));
    let mn = load_u8x8(&mn);
    let mn = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn, mn));
    (sc, mn)
}

/// `d * dx * sumi - dmin * dx * summ` of one Q4_K/Q5_K block, from its eight sub-block
/// vectors of partial sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn k4_block(
    sub: [__m256i; 8],
    d: f16,
    dmin: f16,
    scales: &[u8; K_SCALE_SIZE],
    b: &BlockQ8K,
) -> f32 {
    let (sc, mn) = k4_scales(scales);
    let sumi = _mm256_mullo_epi32(transpose_sums8(sub), sc);
    let summ = _mm256_madd_epi16(load_i16x16(&b.bsums), mn);
    let (sumi, summ) = hsum2_epi32(sumi, summ);
    f16_to_f32(d) * b.d * sumi as f32 - f16_to_f32(dmin) * b.d * summ as f32
}

/// The 32-byte slices of a Q8_K block's values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn q8k_slices(b: &BlockQ8K) -> [__m256i; 8] {
    let (s, _) = b.qs.as_chunks::<32>();
    from_fn(|i| load_i8x32(&s[i]))
}

/// # Safety
/// As for [`dot_q8_0`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn dot_q4_k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    let z = _mm256_setzero_si256();
    for (a, b) in w.iter().zip(x) {
        prefetch(a, size_of::<BlockQ4K>());
        let xs = q8k_slices(b);
        let (qs, _) = a.qs.as_chunks::<32>();
        let mut sub = [z; 8];
        for p in 0..4 {
            let v = load_u8x32(&qs[p]);
            let lo = _mm256_and_si256(v, splat8(0x0F));
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), splat8(0x0F));
            sub[2 * p] = _mm256_dpbusd_epi32(z, lo, xs[2 * p]);
            sub[2 * p + 1] = _mm256_dpbusd_epi32(z, hi, xs[2 * p + 1]);
        }
        sum += k4_block(sub, a.d, a.dmin, &a.scales, b);
    }
    sum
}

/// # Safety
/// As for [`dot_q8_0`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn dot_q5_k(w: &[BlockQ5K], x: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    let z = _mm256_setzero_si256();
    let sixteen = splat8(16);
    for (a, b) in w.iter().zip(x) {
        prefetch(a, size_of::<BlockQ5K>());
        let xs = q8k_slices(b);
        let qh = load_u8x32(&a.qh);
        let (qs, _) = a.qs.as_chunks::<32>();
        let mut sub = [z; 8];
        for p in 0..4 {
            let v = load_u8x32(&qs[p]);
            let lo = _mm256_and_si256(v, splat8(0x0F));
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), splat8(0x0F));
            let klo = _mm256_test_epi8_mask(qh, splat8(1 << (2 * p)));
            let khi = _mm256_test_epi8_mask(qh, splat8(2 << (2 * p)));
            let lo = _mm256_mask_add_epi8(lo, klo, lo, sixteen);
            let hi = _mm256_mask_add_epi8(hi, khi, hi, sixteen);
            sub[2 * p] = _mm256_dpbusd_epi32(z, lo, xs[2 * p]);
            sub[2 * p + 1] = _mm256_dpbusd_epi32(z, hi, xs[2 * p + 1]);
        }
        sum += k4_block(sub, a.d, a.dmin, &a.scales, b);
    }
    sum
}

/// # Safety
/// As for [`dot_q8_0`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn dot_q6_k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    let low4 = splat8(0x0F);
    let high2 = splat8(0x30);
    for (a, b) in w.iter().zip(x) {
        prefetch(a, size_of::<BlockQ6K>());
        let xs = q8k_slices(b);
        // The sixteen signed scales as i16 lanes.
        let sc16 = _mm256_cvtepi8_epi16(load_u8x16(&a.scales.map(|s| s as u8)));
        let (ql, _) = a.ql.as_chunks::<32>();
        let (qh, _) = a.qh.as_chunks::<32>();
        let mut acc = _mm256_setzero_si256();
        for h in 0..2 {
            let l0 = load_u8x32(&ql[2 * h]);
            let l1 = load_u8x32(&ql[2 * h + 1]);
            let hb = load_u8x32(&qh[h]);
            let vals = [
                _mm256_or_si256(
                    _mm256_and_si256(l0, low4),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(hb), high2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(l1, low4),
                    _mm256_and_si256(_mm256_slli_epi16::<2>(hb), high2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l0), low4),
                    _mm256_and_si256(hb, high2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l1), low4),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(hb), high2),
                ),
            ];
            for (q, v) in vals.into_iter().enumerate() {
                // Sub-blocks 2k and 2k + 1 (k = 4h + q): their scales on the low and high
                // eight 16-bit lanes.
                let k = (4 * h + q) as i16;
                let idx = _mm256_setr_epi16(
                    2 * k,
                    2 * k,
                    2 * k,
                    2 * k,
                    2 * k,
                    2 * k,
                    2 * k,
                    2 * k,
                    2 * k + 1,
                    2 * k + 1,
                    2 * k + 1,
                    2 * k + 1,
                    2 * k + 1,
                    2 * k + 1,
                    2 * k + 1,
                    2 * k + 1,
                );
                let scales = _mm256_permutexvar_epi16(idx, sc16);
                let pairs = _mm256_maddubs_epi16(v, xs[4 * h + q]);
                acc = _mm256_dpwssd_epi32(acc, pairs, scales);
            }
        }
        // The -32 offset: 32 * sum_j(scale_j * bsums_j).
        let offset = _mm256_madd_epi16(load_i16x16(&b.bsums), sc16);
        let acc = _mm256_sub_epi32(acc, _mm256_slli_epi32::<5>(offset));
        sum += f16_to_f32(a.d) * b.d * hsum_epi32(acc) as f32;
    }
    sum
}
