//! The AVX2 activation quantizers, Q8_0 and Q8_K, bit-exact with the scalar reference.

use super::*;

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
pub(super) fn round_away_to_i8(v: __m256) -> __m256i {
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
