//! What the two x86_64 GEMM paths share per weight format, written once in
//! [`gemm_repack`] over the register width: the k-quant repacking steps that are the same
//! arithmetic at 256 and 512 bits (the nibble split of Q4_K/Q5_K, the transposed high bits
//! of Q5_K, the 6-bit values, scales and `bsums` factors of Q6_K); and in
//! [`gemm_entry_points`] the five `unsafe fn gemm_*` entry points that the dispatch table
//! holds, each one pass loop of [`super::gemm_common::gemm_passes`] with the path's
//! repacking and micro-kernel. A path expands the entry points once per register group of
//! tokens it offers (see [`super::avx512_gemm`]).
//!
//! The width enters as the names of the intrinsics (`_mm256_and_si256` or
//! `_mm512_and_si512`, ...) and of the path's own transpose (8 or 16 rows × 4 dwords); the
//! rest of the paths, the micro-kernels and what differs in substance (Q5_K's bit merge,
//! the scale conversions), stays in [`super::avx2_gemm`] and [`super::avx512_gemm`].

/// Defines, in the expanding module, compiled with the target features `$feat`:
///
/// - `k4_nibbles(qs, q)`: the nibbles of `ROWS` Q4_K/Q5_K blocks' `qs`, sub-block `s`,
///   values `4j..4j + 4` in `q[8s + j]` (low nibbles of `qs[32p..32p + 32]` are
///   sub-block `2p`, high ones `2p + 1`);
/// - `q5_k_high_bits(blocks)`: the transposed `qh` of `ROWS` Q5_K blocks (`h[j]`, byte `l`
///   bit `s`: the fifth bit of value `4j + l % 4` of sub-block `s`);
/// - `q6_k_values(blocks, q)`: the 6-bit values (0..=63, the offset 32 is applied through
///   the `bsums`) of `ROWS` Q6_K blocks, value `128h + 32q + 4m..` in `q[32h + 8q + m]`;
/// - `q6_k_scales(blocks)`: their 16 scales sign-extended to i32 lanes, and
///   `q6_k_pairs(sc)`: per `bsums` pair `j`, the i16 factors `-32 * scale_2j`,
///   `-32 * scale_2j+1`.
///
/// The expanding module must import `core::arch::x86_64::*`, `crate::formats::*` and
/// `super::gemm_common::piece`, and define `ROWS`.
macro_rules! gemm_repack {
    (
        features: $feat:literal,
        vector: $v:ty,
        transpose: $tr:ident,
        splat8: $splat8:ident,
        zero: $zero:ident,
        set1_32: $set1_32:ident,
        and: $and:ident,
        or: $or:ident,
        sub32: $sub32:ident,
        srli16: $srli16:ident,
        slli16: $slli16:ident,
        srai32: $srai32:ident,
        slli32: $slli32:ident,
    ) => {
        #[target_feature(enable = $feat)]
        #[inline]
        fn k4_nibbles(qs: [&[u8; 128]; ROWS], q: &mut [$v; 64]) {
            let m = $splat8(0x0F);
            for g in 0..8 {
                let cols = $tr(qs.map(|b| piece(b, g)));
                for (i, c) in cols.into_iter().enumerate() {
                    // Dword `k` of `qs`: pair `k / 8`, values `4 * (k % 8)..`.
                    let k = 4 * g + i;
                    let (p, j) = (k / 8, k % 8);
                    q[8 * (2 * p) + j] = $and(c, m);
                    q[8 * (2 * p + 1) + j] = $and($srli16::<4>(c), m);
                }
            }
        }

        #[target_feature(enable = $feat)]
        #[inline]
        fn q5_k_high_bits(blocks: &[&BlockQ5K; ROWS]) -> [$v; 8] {
            let mut h = [$zero(); 8];
            for half in 0..2 {
                let cols = $tr(blocks.map(|b| piece(&b.qh, half)));
                h[4 * half..4 * half + 4].copy_from_slice(&cols);
            }
            h
        }

        #[target_feature(enable = $feat)]
        #[inline]
        fn q6_k_values(blocks: &[&BlockQ6K; ROWS], out: &mut [$v; 64]) {
            let mut ql = [$zero(); 32];
            for g in 0..8 {
                let cols = $tr(blocks.map(|b| piece(&b.ql, g)));
                ql[4 * g..4 * g + 4].copy_from_slice(&cols);
            }
            let mut qh = [$zero(); 16];
            for g in 0..4 {
                let cols = $tr(blocks.map(|b| piece(&b.qh, g)));
                qh[4 * g..4 * g + 4].copy_from_slice(&cols);
            }
            let (low4, high2) = ($splat8(0x0F), $splat8(0x30));
            // Value 128h + 32q + l: low bits from ql[64h + 32(q & 1) + l] (low nibble for
            // q < 2), high bits from qh[32h + l] bits 2q, 2q + 1.
            for h in 0..2 {
                for q in 0..4 {
                    for m in 0..8 {
                        let lo = ql[16 * h + 8 * (q & 1) + m];
                        let lo = if q < 2 { lo } else { $srli16::<4>(lo) };
                        let hb = qh[8 * h + m];
                        let hi = match q {
                            0 => $slli16::<4>(hb),
                            1 => $slli16::<2>(hb),
                            2 => hb,
                            _ => $srli16::<2>(hb),
                        };
                        out[32 * h + 8 * q + m] = $or($and(lo, low4), $and(hi, high2));
                    }
                }
            }
        }

        /// Scale `4c + k` is byte `k` of dword `c`: sign-extended by shifting it to the top.
        #[target_feature(enable = $feat)]
        #[inline]
        fn q6_k_scales(blocks: &[&BlockQ6K; ROWS]) -> [$v; 16] {
            let cols = $tr(blocks.map(|b| bytemuck::cast_ref::<_, [u8; 16]>(&b.scales)));
            let mut sc = [$zero(); 16];
            for (c, &v) in cols.iter().enumerate() {
                sc[4 * c] = $srai32::<24>($slli32::<24>(v));
                sc[4 * c + 1] = $srai32::<24>($slli32::<16>(v));
                sc[4 * c + 2] = $srai32::<24>($slli32::<8>(v));
                sc[4 * c + 3] = $srai32::<24>(v);
            }
            sc
        }

        #[target_feature(enable = $feat)]
        #[inline]
        fn q6_k_pairs(sc: &[$v; 16]) -> [$v; 8] {
            let low16 = $set1_32(0xFFFF);
            let z = $zero();
            core::array::from_fn(|j| {
                let a = $sub32(z, $slli32::<5>(sc[2 * j]));
                let b = $sub32(z, $slli32::<5>(sc[2 * j + 1]));
                $or($and(a, low16), $slli32::<16>(b))
            })
        }
    };
}
pub(super) use gemm_repack;

/// Defines, in the expanding module, compiled with the target features `$feat`, the
/// entry points `gemm_q4_0`, `gemm_q8_0`, `gemm_q4_k`, `gemm_q5_k` and `gemm_q6_k`, each
/// the pass loop of [`super::gemm_common::gemm_passes`] with the path's repacking and the
/// micro-kernels given (`$m4_0` .. `$m6`, called as functions).
///
/// The expanding module must expand `gemm_passes!` (for `gemm32`, `gemm_k`) and see
/// `ROWS`, `GROUP`, `Packed32`, `PackedK`, `repack_q4_0`, `repack_q8_0`, `repack_q4_k`,
/// `repack_q5_k` and `repack_q6_k`.
macro_rules! gemm_entry_points {
    (
        features: $feat:literal,
        needs: $needs:literal,
        micro: {
            q4_0: $m4_0:expr,
            q8_0: $m8_0:expr,
            q4_k: $m4:expr,
            q5_k: $m5:expr,
            q6_k: $m6:expr $(,)?
        } $(,)?
    ) => {
        /// # Safety
        #[doc = concat!("The CPU must support ", $needs, "; `bpr > 0`, `w.len() == nr * bpr`,")]
        /// `x.len() == nt * bpr` and `out.len() == nr * nt`.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn gemm_q4_0(
            w: &[BlockQ4_0],
            x: &[BlockQ8_0],
            bpr: usize,
            out: &mut [f32],
        ) {
            let repack =
                |r: &[&[_]; ROWS], b: usize, n: usize, p: &mut Packed32| repack_q4_0(r, b, n, p);
            let micro = |p: &_, s: &_, d: &_, t: &[&[_]; GROUP], b0, nb, f: &mut _| {
                $m4_0(p, s, d, t, b0, nb, f)
            };
            // SAFETY: forwarded from this function's contract.
            unsafe { gemm32::<_, 3>(w, x, bpr, out, repack, micro) }
        }

        /// # Safety
        /// As for [`gemm_q4_0`].
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn gemm_q8_0(
            w: &[BlockQ8_0],
            x: &[BlockQ8_0],
            bpr: usize,
            out: &mut [f32],
        ) {
            let repack =
                |r: &[&[_]; ROWS], b: usize, n: usize, p: &mut Packed32| repack_q8_0(r, b, n, p);
            let micro = |p: &_, s: &_, d: &_, t: &[&[_]; GROUP], b0, nb, f: &mut _| {
                $m8_0(p, s, d, t, b0, nb, f)
            };
            // SAFETY: forwarded from this function's contract.
            unsafe { gemm32::<_, 7>(w, x, bpr, out, repack, micro) }
        }

        /// # Safety
        /// As for [`gemm_q4_0`].
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn gemm_q4_k(
            w: &[BlockQ4K],
            x: &[BlockQ8K],
            bpr: usize,
            out: &mut [f32],
        ) {
            let repack = |b: &[&_; ROWS], p: &mut PackedK| repack_q4_k(b, p);
            let micro = |p: &PackedK, xb: &[&BlockQ8K; GROUP], f: &mut [_; GROUP]| $m4(p, xb, f);
            // SAFETY: forwarded from this function's contract.
            unsafe { gemm_k(w, x, bpr, out, repack, micro) }
        }

        /// # Safety
        /// As for [`gemm_q4_0`].
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn gemm_q5_k(
            w: &[BlockQ5K],
            x: &[BlockQ8K],
            bpr: usize,
            out: &mut [f32],
        ) {
            let repack = |b: &[&_; ROWS], p: &mut PackedK| repack_q5_k(b, p);
            let micro = |p: &PackedK, xb: &[&BlockQ8K; GROUP], f: &mut [_; GROUP]| $m5(p, xb, f);
            // SAFETY: forwarded from this function's contract.
            unsafe { gemm_k(w, x, bpr, out, repack, micro) }
        }

        /// # Safety
        /// As for [`gemm_q4_0`].
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn gemm_q6_k(
            w: &[BlockQ6K],
            x: &[BlockQ8K],
            bpr: usize,
            out: &mut [f32],
        ) {
            let repack = |b: &[&_; ROWS], p: &mut PackedK| repack_q6_k(b, p);
            let micro = |p: &PackedK, xb: &[&BlockQ8K; GROUP], f: &mut [_; GROUP]| $m6(p, xb, f);
            // SAFETY: forwarded from this function's contract.
            unsafe { gemm_k(w, x, bpr, out, repack, micro) }
        }
    };
}
pub(super) use gemm_entry_points;
