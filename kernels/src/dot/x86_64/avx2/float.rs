//! The AVX2 float dots: F32, F16 (`vcvtph2ps`) and BF16 (a shift) weights · F32 activations.

use super::*;

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
