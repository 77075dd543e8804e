//! Reference quantizers: faithful ports of GGML's `quantize_row_*_ref`.
//!
//! These produce the same bytes as `llama-quantize` without an importance matrix (which calls
//! exactly these functions), so `spillway synth` writes files indistinguishable from
//! llama.cpp's. The arithmetic is kept in GGML's order, in f32, with GGML's rounding helper
//! [`nearest_int`]; do not "simplify" expressions here, it changes bits.
//!
//! [`quantize_row_q8_0`] and [`quantize_row_q8_k`] also quantize activations before dot
//! products (the dispatch table may substitute faster equivalents).

use half::f16;

use super::blocks::*;

/// GGML's `GROUP_MAX_EPS`: groups whose largest magnitude is below it quantize to zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest (ties to even) via the float-magic trick GGML uses; exact for
/// `|x| <= 4194303`, which every caller guarantees by construction of its scale.
#[inline(always)]
pub fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

fn check(blocks: usize, per_block: usize, x: &[f32]) {
    assert_eq!(
        blocks * per_block,
        x.len(),
        "quantize: {} values do not fill {blocks} blocks of {per_block}",
        x.len()
    );
}

/// `quantize_row_q8_0_ref`.
pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    check(y.len(), QK, x);
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        for (q, &v) in b.qs.iter_mut().zip(x) {
            // C's `roundf` (half away from zero), then the implicit float->int8 conversion.
            *q = (v * id).round() as i8;
        }
    }
}

/// `quantize_row_q4_0_ref`.
pub fn quantize_row_q4_0(x: &[f32], y: &mut [BlockQ4_0]) {
    check(y.len(), QK, x);
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        for j in 0..QK / 2 {
            let x0 = x[j] * id;
            let x1 = x[QK / 2 + j] * id;
            // `MIN(15, (int8_t)(x + 8.5f))`: truncation toward zero, then clamp.
            let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
            b.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// `make_qx_quants` with `rmse_type == 1` and no importance weights (the only form the
/// reference quantizers use).
fn make_qx_quants(x: &[f32], nmax: i32, l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &xi in x {
            let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
            let w = xi * xi;
            sumlx += w * xi * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_qkx2_quants`: asymmetric (scale, min) fit of one sub-block, searching `nstep + 1`
/// candidate scales. Returns the scale and writes `-min` to `the_min`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    the_min: &mut f32,
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> f32 {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        *the_min = -min;
        return 0.0;
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let diff = scale * f32::from(l_out[i]) + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    if nstep < 1 {
        *the_min = -min;
        return scale;
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    scale
}

/// Packs eight 6-bit (scale, min) pairs the way Q4_K and Q5_K store them.
fn pack_scales_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut s = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// The shared first half of `quantize_row_q4_K_ref` and `quantize_row_q5_K_ref`: fit each
/// sub-block, quantize the scales and mins to 6 bits, then requantize the values against
/// the stored (rounded) scales. Returns the per-value levels in `l`.
#[allow(clippy::too_many_arguments)]
fn quantize_k4_superblock(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    d_out: &mut f16,
    dmin_out: &mut f16,
    scales_out: &mut [u8; K_SCALE_SIZE],
    l: &mut [u8; QK_K],
) {
    let mut mins = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    let mut weights = [0.0f32; 32];
    let mut laux = [0u8; 32];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        scales[j] = make_qkx2_quants(
            xs,
            &weights,
            nmax,
            &mut l[32 * j..32 * j + 32],
            &mut mins[j],
            &mut laux,
            rmin,
            rdelta,
            nstep,
        );
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // `uint8_t ls = nearest_int(...)` truncates to 8 bits before the MIN.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    *scales_out = pack_scales_k4(&ls, &lm);
    *d_out = f16::from_f32(max_scale / 63.0);
    *dmin_out = f16::from_f32(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales_out);
        let d = d_out.to_f32() * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let dm = dmin_out.to_f32() * f32::from(m);
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / d);
            l[32 * j + ii] = q.clamp(0, nmax) as u8;
        }
    }
}

/// `quantize_row_q4_K_ref`.
pub fn quantize_row_q4_k(x: &[f32], y: &mut [BlockQ4K]) {
    check(y.len(), QK_K, x);
    let mut l = [0u8; QK_K];
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        quantize_k4_superblock(
            x,
            15,
            -1.0,
            0.1,
            20,
            &mut b.d,
            &mut b.dmin,
            &mut b.scales,
            &mut l,
        );
        for (q, lj) in b.qs.chunks_exact_mut(32).zip(l.chunks_exact(64)) {
            for i in 0..32 {
                q[i] = lj[i] | (lj[i + 32] << 4);
            }
        }
    }
}

/// `quantize_row_q5_K_ref`.
pub fn quantize_row_q5_k(x: &[f32], y: &mut [BlockQ5K]) {
    check(y.len(), QK_K, x);
    let mut l = [0u8; QK_K];
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        quantize_k4_superblock(
            x,
            31,
            -0.5,
            0.1,
            15,
            &mut b.d,
            &mut b.dmin,
            &mut b.scales,
            &mut l,
        );
        b.qh = [0; QK_K / 8];
        let (mut m1, mut m2) = (1u8, 2u8);
        for (ql, lj) in b.qs.chunks_exact_mut(32).zip(l.chunks_exact(64)) {
            for j in 0..32 {
                let mut l1 = lj[j];
                if l1 > 15 {
                    l1 -= 16;
                    b.qh[j] |= m1;
                }
                let mut l2 = lj[j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    b.qh[j] |= m2;
                }
                ql[j] = l1 | (l2 << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }
}

/// `quantize_row_q6_K_ref`.
pub fn quantize_row_q6_k(x: &[f32], y: &mut [BlockQ6K]) {
    check(y.len(), QK_K, x);
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for ib in 0..QK_K / 16 {
            let scale = make_qx_quants(&x[16 * ib..16 * ib + 16], 32, &mut l[16 * ib..]);
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *b = BlockQ6K::zeroed_block();
            continue;
        }
        let iscale = -128.0 / max_scale;
        b.d = f16::from_f32(1.0 / iscale);
        for (s, &scale) in b.scales.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * scale).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            let d = b.d.to_f32() * f32::from(b.scales[j]);
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        for half_ in 0..2 {
            let ql = &mut b.ql[64 * half_..64 * half_ + 64];
            let lj = &l[128 * half_..128 * half_ + 128];
            let l_at = |i: usize| lj[i] as u8;
            for i in 0..32 {
                let q1 = l_at(i) & 0xF;
                let q2 = l_at(i + 32) & 0xF;
                let q3 = l_at(i + 64) & 0xF;
                let q4 = l_at(i + 96) & 0xF;
                ql[i] = q1 | (q3 << 4);
                ql[i + 32] = q2 | (q4 << 4);
                b.qh[32 * half_ + i] = (l_at(i) >> 4)
                    | ((l_at(i + 32) >> 4) << 2)
                    | ((l_at(i + 64) >> 4) << 4)
                    | ((l_at(i + 96) >> 4) << 6);
            }
        }
    }
}

/// `quantize_row_q8_K_ref`, except that an all-zero block also gets zero `bsums`
/// (GGML leaves them unwritten).
pub fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    check(y.len(), QK_K, x);
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            b.d = 0.0;
            b.qs = [0; QK_K];
            b.bsums = [0; QK_K / 16];
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| i16::from(q)).sum();
        }
        b.d = 1.0 / iscale;
    }
}

impl BlockQ6K {
    fn zeroed_block() -> Self {
        bytemuck::Zeroable::zeroed()
    }
}

/// f32 to f16 with round-to-nearest-even (`GGML_FP32_TO_FP16`).
pub fn quantize_row_f16(x: &[f32], y: &mut [f16]) {
    assert_eq!(x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = f16::from_f32(v);
    }
}

/// f32 to bf16 with round-to-nearest-even (`GGML_FP32_TO_BF16`).
pub fn quantize_row_bf16(x: &[f32], y: &mut [half::bf16]) {
    assert_eq!(x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = half::bf16::from_f32(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(2.4999), 2);
        assert_eq!(nearest_int(-127.0), -127);
    }

    #[test]
    fn zero_input_quantizes_to_zero() {
        let x = [0.0f32; QK_K];
        let mut q6 = [BlockQ6K::zeroed_block()];
        quantize_row_q6_k(&x, &mut q6);
        assert_eq!(q6[0].d.to_f32(), 0.0);
        let mut q8 = [bytemuck::Zeroable::zeroed()];
        quantize_row_q8_k(&x, &mut q8);
        let q8: BlockQ8K = q8[0];
        assert_eq!(q8.d, 0.0);
        assert!(q8.bsums.iter().all(|&s| s == 0));
    }
}
