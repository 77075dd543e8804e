//! Vectorizable versions of the [`super::reference`] operations: independent f32 lanes
//! and a branch-free polynomial `exp`, so loops compile to SIMD (NEON on aarch64, AVX2
//! through `super::avx2`).
//!
//! Error budgets against the reference: `exp_fast` is within 2 ulp over its whole range;
//! rmsnorm, softmax and silu_mul within 1e-5 relative (checked in `tests/ops.rs`).

use crate::formats::{BlockQ8_0, QK, f16};

const LANES: usize = 16;

/// `e^x` for f32, branch-free (Cephes' range reduction and minimax polynomial).
/// Inputs below -87.33 give 0; inputs above 88 are clamped to `e^88`.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer and leaves that integer in the low bits.
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(-87.336_54, 88.0);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * (r * r) + r + 1.0;
    let n_int = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    let scale = f32::from_bits(((n_int + 127) << 23) as u32);
    if x < -87.336_54 { 0.0 } else { y * scale }
}

#[inline(always)]
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i] * c[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for &v in tail {
        sum += v * v;
    }
    let mean = sum / x.len().max(1) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * scale) * w;
    }
}

#[inline(always)]
pub fn softmax(x: &mut [f32]) {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            mx[i] = mx[i].max(c[i]);
        }
    }
    let max = tail
        .iter()
        .chain(&mx)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        x.fill(0.0);
        return;
    }
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp_fast(c[i] - max);
            acc[i] += c[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_fast(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[inline(always)]
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_fast(-*g)) * u;
    }
}

/// `y += a * x` for an f16 row. The conversion is written as bit manipulation so it
/// vectorizes everywhere (half's `to_f32` is a call on targets without native f16).
#[inline(always)]
pub fn axpy_f16(a: f32, x: &[f16], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += a * f16_to_f32(v.to_bits());
    }
}

/// `y += a * x` for a Q8_0 row.
#[inline(always)]
pub fn axpy_q8_0(a: f32, x: &[BlockQ8_0], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let s = a * b.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o += s * f32::from(q);
        }
    }
}

/// IEEE binary16 to binary32, branch-free: normals and zeros by re-biasing, subnormals by
/// an exact float multiply, inf/NaN by forcing the exponent. Exact for every input.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1f;
    let mant = h & 0x3ff;
    // Normal: rebias the exponent (15 -> 127) and widen the mantissa.
    let normal = f32::from_bits(((exp + 112) << 23) | (mant << 13));
    // Subnormal (and zero): mant * 2^-24 is exact in f32.
    let sub = mant as f32 * (1.0 / 16_777_216.0);
    let inf_nan = f32::from_bits(0x7f80_0000 | (mant << 13));
    let mag = if exp == 0 {
        sub
    } else if exp == 31 {
        inf_nan
    } else {
        normal
    };
    f32::from_bits(mag.to_bits() | sign)
}
