//! The AVX2 dots of the 32-value formats: Q8_0 and Q4_0 weights · Q8_0 activations, in
//! groups of 8 blocks reduced with the transposing sums of the parent module.

use super::*;

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
