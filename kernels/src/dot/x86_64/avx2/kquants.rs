//! The AVX2 k-quant dots: Q4_K, Q5_K and Q6_K weights · Q8_K activations, with the
//! scales applied by `vpmaddwd` on i16 pairs (see the parent module).

use super::*;

// ------------------------------------------------------------------ k-quants

/// Scales and mins of a Q4_K/Q5_K block as i16, each scale repeated twice so that a
/// dword holds one sub-block's scale in both halves: `scales_lo` is
/// `[s0, s0, s1, s1, s2, s2, s3, s3]` in both 128-bit lanes, `scales_hi` the same for
/// scales 4..8, and `mins` is `[m0, m0, m1, m1, .., m7, m7]` (pairing with the sixteen
/// `bsums`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn k4_scales_mins(packed: &[u8; K_SCALE_SIZE]) -> (__m256i, __m256i, __m256i) {
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
