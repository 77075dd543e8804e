//! Scalar reference dot products: the definition of what every SIMD path must compute.
//!
//! Integer parts are exact; float parts follow GGML's generic kernels (block scale products
//! applied per block). Float-weight dots accumulate in f64 so the reference is as close to
//! the exact value as a sum of f32 products can be; SIMD paths accumulate in f32 lanes and
//! are checked against this within a stated error budget.
//!
//! Callers (the dispatch table) guarantee `w.len() == x.len()`.

use crate::formats::*;

pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = 0.0f64;
    for (&a, &b) in w.iter().zip(x) {
        acc += f64::from(a) * f64::from(b);
    }
    acc as f32
}

pub fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    let mut acc = 0.0f64;
    for (&a, &b) in w.iter().zip(x) {
        acc += f64::from(a.to_f32()) * f64::from(b);
    }
    acc as f32
}

pub fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    let mut acc = 0.0f64;
    for (&a, &b) in w.iter().zip(x) {
        acc += f64::from(a.to_f32()) * f64::from(b);
    }
    acc as f32
}

pub fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let sumi: i32 =
            a.qs.iter()
                .zip(&b.qs)
                .map(|(&p, &q)| i32::from(p) * i32::from(q))
                .sum();
        sumf += sumi as f32 * (a.d.to_f32() * b.d.to_f32());
    }
    sumf
}

pub fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let v0 = i32::from(a.qs[j] & 0x0F) - 8;
            let v1 = i32::from(a.qs[j] >> 4) - 8;
            sumi += v0 * i32::from(b.qs[j]) + v1 * i32::from(b.qs[j + QK / 2]);
        }
        sumf += sumi as f32 * (a.d.to_f32() * b.d.to_f32());
    }
    sumf
}

/// Sum over the 16 Q8_K `bsums` weighted by the k4 mins (each min covers two bsums).
#[inline(always)]
fn mins_dot_bsums(mins: &[u8; 8], bsums: &[i16; 16]) -> i32 {
    bsums
        .iter()
        .enumerate()
        .map(|(j, &s)| i32::from(s) * i32::from(mins[j / 2]))
        .sum()
}

pub fn dot_q4_k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let (sc, mn) = scales_mins_k4(&a.scales);
        let mut sumi = 0i32;
        for (pair, q4) in a.qs.chunks_exact(32).enumerate() {
            let q8 = &b.qs[64 * pair..64 * pair + 64];
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                lo += i32::from(q4[l] & 0xF) * i32::from(q8[l]);
                hi += i32::from(q4[l] >> 4) * i32::from(q8[l + 32]);
            }
            sumi += i32::from(sc[2 * pair]) * lo + i32::from(sc[2 * pair + 1]) * hi;
        }
        let summ = mins_dot_bsums(&mn, &b.bsums);
        sumf += a.d.to_f32() * b.d * sumi as f32 - a.dmin.to_f32() * b.d * summ as f32;
    }
    sumf
}

pub fn dot_q5_k(w: &[BlockQ5K], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let (sc, mn) = scales_mins_k4(&a.scales);
        let mut sumi = 0i32;
        for (pair, ql) in a.qs.chunks_exact(32).enumerate() {
            let q8 = &b.qs[64 * pair..64 * pair + 64];
            let (u1, u2) = (1u8 << (2 * pair), 2u8 << (2 * pair));
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                let h1 = if a.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if a.qh[l] & u2 != 0 { 16 } else { 0 };
                lo += i32::from((ql[l] & 0xF) + h1) * i32::from(q8[l]);
                hi += i32::from((ql[l] >> 4) + h2) * i32::from(q8[l + 32]);
            }
            sumi += i32::from(sc[2 * pair]) * lo + i32::from(sc[2 * pair + 1]) * hi;
        }
        let summ = mins_dot_bsums(&mn, &b.bsums);
        sumf += a.d.to_f32() * b.d * sumi as f32 - a.dmin.to_f32() * b.d * summ as f32;
    }
    sumf
}

/// The 256 signed 6-bit values of a Q6_K block, in element order.
#[inline(always)]
pub(crate) fn unpack_q6_k(a: &BlockQ6K) -> [i8; QK_K] {
    let mut v = [0i8; QK_K];
    for half_ in 0..2 {
        let ql = &a.ql[64 * half_..];
        let qh = &a.qh[32 * half_..];
        let out = &mut v[128 * half_..];
        for l in 0..32 {
            out[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            out[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            out[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            out[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    v
}

pub fn dot_q6_k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let v = unpack_q6_k(a);
        let mut sumi = 0i32;
        for (j, (vs, qs)) in v.chunks_exact(16).zip(b.qs.chunks_exact(16)).enumerate() {
            let s: i32 = vs
                .iter()
                .zip(qs)
                .map(|(&p, &q)| i32::from(p) * i32::from(q))
                .sum();
            sumi += i32::from(a.scales[j]) * s;
        }
        sumf += a.d.to_f32() * b.d * sumi as f32;
    }
    sumf
}

/// `y += a * x` for an f16 row (attention's weighted sum over V rows).
pub fn axpy_f16(a: f32, x: &[f16], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += a * v.to_f32();
    }
}

/// `y += a * x` for a Q8_0 row.
pub fn axpy_q8_0(a: f32, x: &[BlockQ8_0], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let s = a * b.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o += s * f32::from(q);
        }
    }
}

/// Activation quantizers of the scalar path: GGML's reference ones.
pub fn quantize_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    quantize_row_q8_0(x, y)
}

pub fn quantize_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    quantize_row_q8_k(x, y)
}
