//! Dequantization of every supported block format to f32, exactly as GGML's
//! `dequantize_row_*` (same operation order, so the results are bit-identical).

use half::{bf16, f16};

use super::blocks::*;

/// Checks the output length for `n` blocks of `per_block` values.
#[inline]
fn check_len(blocks: usize, per_block: usize, out: &[f32]) {
    assert_eq!(
        blocks * per_block,
        out.len(),
        "dequantize: {blocks} blocks of {per_block} need an output of that many values"
    );
}

pub fn dequantize_f16(x: &[f16], y: &mut [f32]) {
    check_len(x.len(), 1, y);
    for (o, v) in y.iter_mut().zip(x) {
        *o = v.to_f32();
    }
}

pub fn dequantize_bf16(x: &[bf16], y: &mut [f32]) {
    check_len(x.len(), 1, y);
    for (o, v) in y.iter_mut().zip(x) {
        *o = v.to_f32();
    }
}

pub fn dequantize_q4_0(x: &[BlockQ4_0], y: &mut [f32]) {
    check_len(x.len(), QK, y);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            let x0 = i32::from(b.qs[j] & 0x0F) - 8;
            let x1 = i32::from(b.qs[j] >> 4) - 8;
            out[j] = x0 as f32 * d;
            out[j + QK / 2] = x1 as f32 * d;
        }
    }
}

pub fn dequantize_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
    check_len(x.len(), QK, y);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = f32::from(q) * d;
        }
    }
}

pub fn dequantize_q4_k(x: &[BlockQ4K], y: &mut [f32]) {
    check_len(x.len(), QK_K, y);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let min = b.dmin.to_f32();
        for (pair, (q, out)) in
            b.qs.chunks_exact(32)
                .zip(out.chunks_exact_mut(64))
                .enumerate()
        {
            let (sc, m) = scale_min_k4(2 * pair, &b.scales);
            let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
            let (sc, m) = scale_min_k4(2 * pair + 1, &b.scales);
            let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
            for l in 0..32 {
                out[l] = d1 * f32::from(q[l] & 0xF) - m1;
                out[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }
}

pub fn dequantize_q5_k(x: &[BlockQ5K], y: &mut [f32]) {
    check_len(x.len(), QK_K, y);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let min = b.dmin.to_f32();
        for (pair, (ql, out)) in
            b.qs.chunks_exact(32)
                .zip(out.chunks_exact_mut(64))
                .enumerate()
        {
            let u1 = 1u8 << (2 * pair);
            let u2 = 2u8 << (2 * pair);
            let (sc, m) = scale_min_k4(2 * pair, &b.scales);
            let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
            let (sc, m) = scale_min_k4(2 * pair + 1, &b.scales);
            let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
            for l in 0..32 {
                let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
                out[l] = d1 * f32::from((ql[l] & 0xF) + h1) - m1;
                out[l + 32] = d2 * f32::from((ql[l] >> 4) + h2) - m2;
            }
        }
    }
}

pub fn dequantize_q6_k(x: &[BlockQ6K], y: &mut [f32]) {
    check_len(x.len(), QK_K, y);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for half_ in 0..2 {
            let ql = &b.ql[64 * half_..];
            let qh = &b.qh[32 * half_..];
            let sc = &b.scales[8 * half_..];
            let out = &mut out[128 * half_..];
            for l in 0..32 {
                let is = l / 16;
                let q1 = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                let q2 = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                // GGML: `d * sc[is] * q`, evaluated left to right in f32.
                out[l] = d * f32::from(sc[is]) * q1 as f32;
                out[l + 32] = d * f32::from(sc[is + 2]) * q2 as f32;
                out[l + 64] = d * f32::from(sc[is + 4]) * q3 as f32;
                out[l + 96] = d * f32::from(sc[is + 6]) * q4 as f32;
            }
        }
    }
}
