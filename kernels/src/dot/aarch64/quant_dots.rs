//! The quantized single-row dots of both aarch64 paths (Q8_0, Q4_0 · Q8_0; Q4_K, Q5_K,
//! Q6_K · Q8_K), written once in [`quant_dots`] and instantiated by [`super::neon`] with
//! the widening `SMULL`/`SMLAL`/`SADALP` products and by [`super::dotprod`] with `SDOT`.
//! Only the integer product differs between the two; the unpacking ([`super::common`]),
//! the block structure and the float steps are these.
//!
//! # Applying the scales
//!
//! Q8_0/Q4_0 take two blocks per iteration: each block's exact i32 sum is reduced with one
//! `ADDP` tree (`sumi` of both blocks land in one `int32x2_t`), converted to f32 and
//! multiplied by the block's `d_w * d_x` in the same order as the scalar reference; the
//! per-block results are summed in f32 lanes and reduced at the end.
//!
//! The k-quants keep one i32x4 of partial sums per sub-block; `sum4` (an `ADDP` tree)
//! turns four of them into one vector of four sub-block sums, which is multiplied by the
//! vector of the four sub-block scales (`MLA`, exact in i32). So there is one horizontal
//! `ADDV` per 256-value super-block, not one per sub-block. The Q4_K/Q5_K mins never touch
//! the values: `Σ_j min_j · Σ_{i∈j} x_i` uses the activation `bsums` (widened pairwise to
//! the 32-value sub-blocks), exactly like the scalar reference. The final float expression
//! per super-block is the scalar one, accumulated in block order, so the k-quant results
//! are bit-identical to [`crate::dot::scalar`].

/// Defines `dot_q8_0`, `dot_q4_0`, `dot_q4_k`, `dot_q5_k` and `dot_q6_k` in the invoking
/// module, compiled with the target features `$feat` (whose requirement the `# Safety`
/// sections state as `$needs`), over three integer products of i8 vectors, each returning
/// an i32x4 of partial sums:
///
/// - `$wide(a0, a1, b0, b1)`: `Σ a_i b_i` over 32 lanes for any i8 values (Q8_0);
/// - `$narrow(a0, a1, b0, b1)`: the same when every `|a_i b_i| <= 8191` (Q4_0, Q4_K, Q5_K);
/// - `$dot16(a, b)`: `Σ a_i b_i` over 16 lanes when every `|a_i b_i| <= 16383` (Q6_K).
///
/// A macro rather than a generic function: the products must inline into the loops, and a
/// function only inlines into callers compiled with its target features. The invoking
/// module must have `core::arch::aarch64::*`, `crate::formats::*` and `super::common` in
/// scope.
macro_rules! quant_dots {
    (
        features: $feat:literal,
        needs: $needs:literal,
        wide: $wide:path,
        narrow: $narrow:path,
        dot16: $dot16:path $(,)?
    ) => {
        /// The Q8_0/Q4_0 loop: two blocks per iteration, `block` giving a block pair's
        /// partial sums.
        #[target_feature(enable = $feat)]
        #[inline]
        fn dot_32<W>(
            w: &[W],
            x: &[BlockQ8_0],
            d: impl Fn(&W) -> f16,
            block: impl Fn(&W, &BlockQ8_0) -> int32x4_t,
        ) -> f32 {
            let mut acc = vdup_n_f32(0.0);
            let (w2, x2) = (w.chunks_exact(2), x.chunks_exact(2));
            let (wr, xr) = (w2.remainder(), x2.remainder());
            for (wp, xp) in w2.zip(x2) {
                let ([w0, w1], [x0, x1]) = (wp, xp) else {
                    continue;
                };
                let sumi = common::sum2(block(w0, x0), block(w1, x1));
                let scales = common::scale_products(d(w0), d(w1), x0.d, x1.d);
                acc = common::add_scaled2(acc, sumi, scales);
            }
            let mut sumf = vaddv_f32(acc);
            if let ([a], [b]) = (wr, xr) {
                let sumi = vaddvq_s32(block(a, b));
                sumf += sumi as f32 * (common::f16_to_f32(d(a)) * common::f16_to_f32(b.d));
            }
            sumf
        }

        /// Q8_0 weights · Q8_0 activations.
        ///
        /// # Safety
        #[doc = concat!("The CPU must support ", $needs, "; `w.len() == x.len()`.")]
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
            let block = |a: &BlockQ8_0, b: &BlockQ8_0| {
                let (p, q) = (common::ld_i8x16x2(&a.qs), common::ld_i8x16x2(&b.qs));
                $wide(p.0, p.1, q.0, q.1)
            };
            dot_32(w, x, |b| b.d, block)
        }

        /// Q4_0 weights · Q8_0 activations.
        ///
        /// # Safety
        #[doc = concat!("The CPU must support ", $needs, "; `w.len() == x.len()`.")]
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
            let block = |a: &BlockQ4_0, b: &BlockQ8_0| {
                let (lo, hi) = common::unpack_q4_0(&a.qs);
                let y = common::ld_i8x16x2(&b.qs);
                $narrow(lo, hi, y.0, y.1)
            };
            dot_32(w, x, |b| b.d, block)
        }

        /// The Q4_K/Q5_K loop: per super-block, `values(a, half, hbits)` unpacks half `half`
        /// (sub-blocks `4 * half..4 * half + 4`) into two groups of four vectors.
        #[target_feature(enable = $feat)]
        #[inline]
        fn dot_k4<W>(
            w: &[W],
            x: &[BlockQ8K],
            meta: impl Fn(&W) -> (f16, f16, &[u8; K_SCALE_SIZE]),
            values: impl Fn(&W, usize) -> [[int8x16_t; 4]; 2],
        ) -> f32 {
            let mut sumf = 0.0f32;
            for (a, b) in w.iter().zip(x) {
                let (d, dmin, scales) = meta(a);
                let (sc_lo, sc_hi, mins) = common::k4_scales_mins(scales);
                let summ = common::k4_mins_dot(mins, &b.bsums);
                let q8: &[[i8; 128]; 2] = common::as_arrays(&b.qs);
                let mut isum = vdupq_n_s32(0);
                // Each half: two 32-byte groups = sub-blocks 4h..4h+4, against 128
                // activations.
                for (h, (q8, sc)) in q8.iter().zip([sc_lo, sc_hi]).enumerate() {
                    let [v0, v1] = values(a, h);
                    let q8: &[[i8; 64]; 2] = common::as_arrays(q8);
                    let (y0, y1) = (common::ld_i8x16x4(&q8[0]), common::ld_i8x16x4(&q8[1]));
                    let s = common::sum4(
                        $narrow(v0[0], v0[1], y0.0, y0.1),
                        $narrow(v0[2], v0[3], y0.2, y0.3),
                        $narrow(v1[0], v1[1], y1.0, y1.1),
                        $narrow(v1[2], v1[3], y1.2, y1.3),
                    );
                    isum = vmlaq_s32(isum, s, sc);
                }
                let sumi = vaddvq_s32(isum);
                let bd = b.d;
                sumf += common::f16_to_f32(d) * bd * sumi as f32
                    - common::f16_to_f32(dmin) * bd * summ as f32;
            }
            sumf
        }

        /// Q4_K weights · Q8_K activations.
        ///
        /// # Safety
        #[doc = concat!("The CPU must support ", $needs, "; `w.len() == x.len()`.")]
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn dot_q4_k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
            let values = |a: &BlockQ4K, h: usize| {
                let q4: &[[u8; 64]; 2] = common::as_arrays(&a.qs);
                let q = common::ld_u8x16x4(&q4[h & 1]);
                [common::unpack_q4_k(q.0, q.1), common::unpack_q4_k(q.2, q.3)]
            };
            dot_k4(w, x, |a| (a.d, a.dmin, &a.scales), values)
        }

        /// Q5_K weights · Q8_K activations.
        ///
        /// # Safety
        #[doc = concat!("The CPU must support ", $needs, "; `w.len() == x.len()`.")]
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn dot_q5_k(w: &[BlockQ5K], x: &[BlockQ8K]) -> f32 {
            let values = |a: &BlockQ5K, h: usize| {
                let q5: &[[u8; 64]; 2] = common::as_arrays(&a.qs);
                let q = common::ld_u8x16x4(&q5[h & 1]);
                let qh = common::ld_u8x16x2(&a.qh);
                // Half `h` takes the bits of `qh` shifted right by 4h (first group) and
                // 4h + 2 (second).
                let (h0, h1) = if h == 0 {
                    (qh.0, qh.1)
                } else {
                    (vshrq_n_u8::<4>(qh.0), vshrq_n_u8::<4>(qh.1))
                };
                let v0 = common::unpack_q5_k(q.0, q.1, h0, h1);
                let (h0, h1) = (vshrq_n_u8::<2>(h0), vshrq_n_u8::<2>(h1));
                [v0, common::unpack_q5_k(q.2, q.3, h0, h1)]
            };
            dot_k4(w, x, |a| (a.d, a.dmin, &a.scales), values)
        }

        /// Q6_K weights · Q8_K activations.
        ///
        /// # Safety
        #[doc = concat!("The CPU must support ", $needs, "; `w.len() == x.len()`.")]
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn dot_q6_k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
            let mut sumf = 0.0f32;
            for (a, b) in w.iter().zip(x) {
                let sc = common::q6_k_scales(&a.scales);
                let ql: &[[u8; 64]; 2] = common::as_arrays(&a.ql);
                let qh: &[[u8; 32]; 2] = common::as_arrays(&a.qh);
                let q8: &[[i8; 128]; 2] = common::as_arrays(&b.qs);
                let sc: &[[int32x4_t; 2]; 2] = common::as_arrays(&sc);
                let mut isum = vdupq_n_s32(0);
                for (((ql, qh), q8), sc) in ql.iter().zip(qh).zip(q8).zip(sc) {
                    let v = common::unpack_q6_k_half(ql, qh);
                    let q8: &[[i8; 64]; 2] = common::as_arrays(q8);
                    let (y0, y1) = (common::ld_i8x16x4(&q8[0]), common::ld_i8x16x4(&q8[1]));
                    // One product per 16-value sub-block, each with its own scale.
                    let s0 = common::sum4(
                        $dot16(v[0], y0.0),
                        $dot16(v[1], y0.1),
                        $dot16(v[2], y0.2),
                        $dot16(v[3], y0.3),
                    );
                    let s1 = common::sum4(
                        $dot16(v[4], y1.0),
                        $dot16(v[5], y1.1),
                        $dot16(v[6], y1.2),
                        $dot16(v[7], y1.3),
                    );
                    isum = vmlaq_s32(vmlaq_s32(isum, s0, sc[0]), s1, sc[1]);
                }
                let sumi = vaddvq_s32(isum);
                sumf += common::f16_to_f32(a.d) * b.d * sumi as f32;
            }
            sumf
        }
    };
}
pub(super) use quant_dots;
