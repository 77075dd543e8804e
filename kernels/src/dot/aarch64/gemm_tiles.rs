//! The micro-tiles of the aarch64 matrix–matrix (prefill) kernels, written once for both
//! paths: `out[r * nt + t] = dot(w row r, x row t)` for Q8_0, Q4_0, Q4_K, Q5_K and Q6_K weights, each weight block unpacked once
//! for four tokens and each activation block loaded once for all the rows of a tile.
//!
//! The micro-tiles are written once, in the [`gemm_tiles`] macro, generic over the integer
//! dot product: [`super::neon_gemm`] instantiates them with the baseline `SMULL`/`SADALP`
//! products, [`super::dotprod_gemm`] with `SDOT`. The driver ([`drive`](super::gemm_common::drive)) and the weight unpacking
//! are shared the same way.
//!
//! # What is computed
//!
//! Every output is the dot product [`crate::dot::scalar`] defines for its (row, token)
//! pair: per block (super-block for the k-quants) the same integer sum `sumi`, and for
//! Q4_K/Q5_K the same mins sum `summ`, exact and equal to the reference's; converted to f32
//! by `SCVTF` (round to nearest, as `as f32`); multiplied by the same scale products
//! `d_w · d_x` (and `dmin_w · d_x`), rounded as the reference rounds them; and accumulated
//! into one f32 per pair, starting from zero, in block order. Only the f32 steps differ:
//!
//! - each term is added with a fused multiply-add (`FMLA`, or `FMLS` for a subtracted
//!   term): `acc + f32(sumi) · (d_w · d_x)` is rounded once, where the reference rounds the
//!   product and then the sum;
//! - Q4_K/Q5_K subtract the mins term `f32(summ) · (dmin_w · d_x)` from the accumulator
//!   first and add the scales term after it, where the reference adds the difference of
//!   the two rounded products.
//!
//! So an output can differ from the reference by a few roundings per block, not by any
//! integer; the tests hold it to the dot products' error budgets.
//!
//! # Micro-tiles: `R` rows × four tokens
//!
//! A tile covers `R` weight rows and [`LANES`](super::gemm_common::LANES) = 4 tokens over their whole length (all
//! `bpr` blocks) and returns `R` `float32x4_t` accumulators: lane `t` of vector `r` is
//! the output of row `r` and token `t`. `R` is [`ROWS_Q8_0`](super::gemm_common::ROWS_Q8_0) = 4 for Q8_0/Q4_0
//! (`tile_q8_0`) and [`ROWS_K`](super::gemm_common::ROWS_K) = 2 for the k-quants (`tile_k4` for Q4_K/Q5_K,
//! `tile_q6_k`). Per block, the tile loads the four tokens' values (for the k-quants one
//! sub-block at a time) and their scales as one vector of four lanes ([`f16x4`](super::gemm_common::f16x4) widens the
//! f16 scales of Q8_0 with one `FCVTL`); then, per row, it unpacks the weights once and
//! multiplies them by the four tokens', one i32x4 of partial sums per (row, token). The
//! four i32x4 of a row are reduced with one `ADDP` tree ([`sum4`](super::common::sum4)) to
//! one vector whose lane `t` is token `t`'s sum, so every scale is applied to four tokens
//! at once: the float scales `d_w · d_x` (four lanes) with one `SCVTF` and one FMA per row
//! and block, and for the k-quants each sub-block's integer scale with one `MLA` by element
//! (the four token sums times the scale, in i32).
//!
//! # Formats
//!
//! - **Q8_0**: the 32 weights as they are ([`q8_0_weights`](super::gemm_common::q8_0_weights)).
//! - **Q4_0**: `AND 0x0F` and `USHR #4` give elements 0..16 and 16..32, minus 8: -8..=7
//!   ([`q4_0_weights`](super::gemm_common::q4_0_weights)).
//! - **Q4_K**: sub-block `j` (32 values) is the low (`j` even) or high nibbles of the 32
//!   bytes of group `j / 2`: 0..=15 ([`q4_k_sub`](super::gemm_common::q4_k_sub)).
//! - **Q5_K**: as Q4_K, with bit `j` of `qh[l]` as the fifth bit, moved by `USHL` and merged
//!   by `SLI #4` (low nibble) or `SRI #4` (high nibble): 0..=31 ([`q5_k_sub`](super::gemm_common::q5_k_sub)).
//! - **Q6_K**: one 16-value sub-block at a time: four bits of `ql` and a bit pair of `qh`
//!   masked into bits 4..5, merged with `ORR`/`SRI`, minus 32: -32..=31
//!   ([`q6_k_sub_block`](super::gemm_common::q6_k_sub_block)).
//!
//! The k-quant scales come from [`k4_scales_mins`](super::common::k4_scales_mins) and
//! [`q6_k_scales`](super::common::q6_k_scales) as i32x4 of four sub-blocks each. The Q4_K/Q5_K
//! mins never touch the values: per super-block each token's 16 `bsums` are widened
//! pairwise (`SADDLP`) to the eight 32-value sub-blocks, multiplied by the row's mins
//! (`MUL`, `MLA`) and reduced over the four tokens with one `ADDP` tree into `summ`.
//!
//! The NEON products widen i8 × i8 to i16 (`SMULL`/`SMLAL` and their `2` forms) and fold
//! the i16 lanes pairwise into i32 (`SADDLP`/`SADALP`), with as many products per i16 lane
//! as the value ranges allow (activations are any i8, `|x| <= 128`):
//!
//! | weights | max abs product | products per i16 lane | function |
//! |---|---|---|---|
//! | Q8_0 | 16384 | 1 | `dot32_wide` |
//! | Q4_0 | 1024 | 4 | [`dot32_narrow`](super::neon::dot32_narrow) |
//! | Q4_K, Q5_K | 1920, 3968 | 4 (at most 15872) | `dot32_i16`, then `SADALP` |
//! | Q6_K | 4096 | 2 | `SMULL` + `SMLAL2`, then `SADALP` |
//!
//! Here every sub-block's sum starts from zero and the scales multiply the sub-block sums
//! directly (the tiles' `RUNNING = false`); the dotprod path uses running sums instead
//! (see [`super::dotprod_gemm`]).
//!
//! # Overflow
//!
//! The i32 sums are far from overflowing: a Q8_0 block sums to at most `32 · 16384 = 2^19`
//! in magnitude, a Q4_0 block to `32 · 1024 = 2^15`; Q4_K/Q5_K's `sumi` to
//! `8 · 63 · 32 · 3968 < 2^26` (6-bit scales) and `summ` to `8 · 63 · 2 · 32768 < 2^25`
//! (even for arbitrary i16 `bsums`); Q6_K's `sumi` to `16 · 128 · 16 · 4096 = 2^27` (i8
//! scales). So each is exactly the reference's integer.
//!
//! # Shapes
//!
//! [`drive`](super::gemm_common::drive) runs the tiles over any `nr, nt >= 1`: rows in groups of `R`, the remaining
//! `nr % R` rows one at a time (the same tile with `R = 1`), and tokens in groups of four,
//! the last group filling its missing lanes with its final token, whose extra results are
//! computed and never stored. An empty product writes nothing. Rows, tokens and outputs are
//! taken with `chunks_exact`/`get`, so nothing is read or written outside `w`, `x` and
//! `out`, and nothing panics. Nothing allocates: the tiles' state is a few arrays of
//! vectors on the stack.

use super::gemm_common::LANES;

// ---------------------------------------------------------------- the micro-tiles

// Inside the tiles, closures are only called directly, never through `array::map` and the
// like: a closure in a dotprod function has that feature, and LLVM cannot inline it into a
// library function compiled without it, which would leave a call in the hot loop.
const _: () = assert!(LANES == 4, "the tiles spell out their four token lanes");

/// Sub-block `$j` of `tile_k4` (see [`gemm_tiles`]), whose scale step is lane `$lane` of
/// `$steps[r][$half]`: a macro so that the lane is a literal.
macro_rules! k4_step {
    ($j:literal, $half:literal, $lane:literal;
     $q8:ident, $wb:ident, $run:ident, $last:ident, $steps:ident, $isum:ident,
     $values:ident, $dot:ident) => {{
        let y = [
            ld_i8x16x2(&$q8[0][$j]),
            ld_i8x16x2(&$q8[1][$j]),
            ld_i8x16x2(&$q8[2][$j]),
            ld_i8x16x2(&$q8[3][$j]),
        ];
        for r in 0..R {
            let (v0, v1) = $values($wb[r], $j);
            for t in 0..4 {
                let start = if RUNNING { $run[r][t] } else { vdupq_n_s32(0) };
                $run[r][t] = $dot(start, v0, v1, y[t].0, y[t].1);
            }
            $last[r] = sum4($run[r][0], $run[r][1], $run[r][2], $run[r][3]);
            $isum[r] = mla_lane::<$lane>($isum[r], $last[r], $steps[r][$half]);
        }
    }};
}
pub(super) use k4_step;

/// Sub-block `$j` of `tile_q6_k` (see [`gemm_tiles`]), whose scale step is lane `$lane` of
/// `$steps[r][$quarter]`.
macro_rules! q6_k_step {
    ($j:literal, $quarter:literal, $lane:literal;
     $q8:ident, $wb:ident, $run:ident, $last:ident, $steps:ident, $isum:ident, $dot:ident) => {{
        let y = [
            ld_i8x16(&$q8[0][$j]),
            ld_i8x16(&$q8[1][$j]),
            ld_i8x16(&$q8[2][$j]),
            ld_i8x16(&$q8[3][$j]),
        ];
        for r in 0..R {
            let v = q6_k_sub_block($wb[r], $j);
            for t in 0..4 {
                let start = if RUNNING { $run[r][t] } else { vdupq_n_s32(0) };
                $run[r][t] = $dot(start, v, y[t]);
            }
            $last[r] = sum4($run[r][0], $run[r][1], $run[r][2], $run[r][3]);
            $isum[r] = mla_lane::<$lane>($isum[r], $last[r], $steps[r][$quarter]);
        }
    }};
}
pub(super) use q6_k_step;

/// Defines the micro-tiles `tile_q8_0`, `tile_k4` and `tile_q6_k`, compiled with the target
/// features `$feat`. They are generic over the integer dot product (`SMULL`/`SADALP` for
/// NEON, `SDOT` for dotprod), passed as a closure; a macro rather than one generic
/// function because a closure is only inlined into a function compiled with its features,
/// and the tiles are the hot loops.
macro_rules! gemm_tiles {
    ($feat:literal) => {
        /// `R` rows × four tokens of a format with one scale per 32 values against Q8_0:
        /// per block, each row is unpacked once and multiplied by the four tokens'
        /// values (`dot` starts from zero); the four per-token i32x4 are reduced into one
        /// vector of four token sums (`ADDP` tree), converted and multiplied by
        /// `d_w · d_x` (four lanes) into the row's accumulator.
        #[target_feature(enable = $feat)]
        #[inline]
        fn tile_q8_0<W, const R: usize>(
            rows: [&[W]; R],
            toks: [&[BlockQ8_0]; 4],
            weights: impl Fn(&W) -> (f32, int8x16_t, int8x16_t),
            dot: impl Fn(int8x16_t, int8x16_t, int8x16_t, int8x16_t) -> int32x4_t,
        ) -> [float32x4_t; R] {
            use $crate::dot::aarch64::common::{ld_i8x16x2, sum4};
            use $crate::dot::aarch64::gemm_common::{common_len, exact, f16x4};
            let mut acc = [vdupq_n_f32(0.0); R];
            let n = common_len(&rows, &toks);
            let (Some(rows), Some(toks)) = (exact(rows, n), exact(toks, n)) else {
                return acc;
            };
            for b in 0..n {
                let xb = [&toks[0][b], &toks[1][b], &toks[2][b], &toks[3][b]];
                let dx = f16x4([xb[0].d, xb[1].d, xb[2].d, xb[3].d]);
                let y = [
                    ld_i8x16x2(&xb[0].qs),
                    ld_i8x16x2(&xb[1].qs),
                    ld_i8x16x2(&xb[2].qs),
                    ld_i8x16x2(&xb[3].qs),
                ];
                for r in 0..R {
                    let (dw, w0, w1) = weights(&rows[r][b]);
                    let s = sum4(
                        dot(w0, w1, y[0].0, y[0].1),
                        dot(w0, w1, y[1].0, y[1].1),
                        dot(w0, w1, y[2].0, y[2].1),
                        dot(w0, w1, y[3].0, y[3].1),
                    );
                    acc[r] = vfmaq_f32(acc[r], vcvtq_f32_s32(s), vmulq_n_f32(dx, dw));
                }
            }
            acc
        }

        /// `R` rows × four tokens of Q4_K or Q5_K against Q8_K.
        ///
        /// Per super-block the mins go through the activations' `bsums` (one i32x4 per
        /// pair, reduced over the four tokens), and the float scales `d_w · d_x` and
        /// `dmin_w · d_x` are applied once. The values use running sums: `dot` adds each
        /// sub-block's products into one i32x4 per (row, token) that is never reset (no
        /// zeroing per sub-block), and after sub-block `j` the four tokens' running sums
        /// are reduced (`ADDP` tree) to `S_j`, one lane per token. With `S_-1` the
        /// reduction after the previous super-block and scales `s_0..s_7`,
        /// `Σ_j s_j (S_j - S_{j-1}) = -(s_0 S_-1 + Σ_j S_j (s_{j+1} - s_j))` (`s_8 = 0`):
        /// one `MLA` by element per sub-block, with the scale steps computed once per
        /// super-block, accumulates the negated sum. All of it is wrapping i32 arithmetic
        /// whose true result fits in i32, so it is exact.
        #[target_feature(enable = $feat)]
        #[inline]
        fn tile_k4<W: $crate::dot::aarch64::gemm_common::K4Block, const R: usize, const RUNNING: bool>(
            rows: [&[W]; R],
            toks: [&[BlockQ8K]; 4],
            values: impl Fn(&W, usize) -> (int8x16_t, int8x16_t),
            dot: impl Fn(int32x4_t, int8x16_t, int8x16_t, int8x16_t, int8x16_t) -> int32x4_t,
        ) -> [float32x4_t; R] {
            use $crate::dot::aarch64::common::{
                as_arrays, f16_to_f32, k4_scales_mins, ld_f32x4, ld_i16x8x2, ld_i8x16x2, sum4,
            };
            use $crate::dot::aarch64::gemm_common::{
                common_len, exact, mla_lane, scale_steps,
            };
            let zero = vdupq_n_s32(0);
            let mut acc = [vdupq_n_f32(0.0); R];
            let n = common_len(&rows, &toks);
            let (Some(rows), Some(toks)) = (exact(rows, n), exact(toks, n)) else {
                return acc;
            };
            let mut run = [[zero; 4]; R];
            let mut last = [zero; R];
            for b in 0..n {
                let xb = [&toks[0][b], &toks[1][b], &toks[2][b], &toks[3][b]];
                let dx = ld_f32x4(&[xb[0].d, xb[1].d, xb[2].d, xb[3].d]);
                // Pairwise sums of the 16 bsums: the eight 32-value sub-blocks per token.
                let mut bs = [(zero, zero); 4];
                for t in 0..4 {
                    let v = ld_i16x8x2(&xb[t].bsums);
                    bs[t] = (vpaddlq_s16(v.0), vpaddlq_s16(v.1));
                }
                let mut wb = [&rows[0][b]; R];
                let mut steps = [[zero; 2]; R];
                let mut isum = [zero; R];
                for r in 0..R {
                    wb[r] = &rows[r][b];
                    let (lo, hi, mins) = k4_scales_mins(wb[r].scales());
                    if RUNNING {
                        steps[r] = [scale_steps(lo, hi), scale_steps(hi, zero)];
                        isum[r] = vmulq_laneq_s32::<0>(last[r], lo);
                    } else {
                        steps[r] = [lo, hi];
                    }
                    let mut m = [zero; 4];
                    for t in 0..4 {
                        m[t] = vmlaq_s32(vmulq_s32(mins.0, bs[t].0), mins.1, bs[t].1);
                    }
                    let summ = sum4(m[0], m[1], m[2], m[3]);
                    let dm = vmulq_n_f32(dx, f16_to_f32(wb[r].dmin()));
                    acc[r] = vfmsq_f32(acc[r], vcvtq_f32_s32(summ), dm);
                }
                let q8: [&[[i8; 32]; 8]; 4] = [
                    as_arrays(&xb[0].qs),
                    as_arrays(&xb[1].qs),
                    as_arrays(&xb[2].qs),
                    as_arrays(&xb[3].qs),
                ];
                $crate::dot::aarch64::gemm_tiles::k4_step!(0, 0, 0;
                    q8, wb, run, last, steps, isum, values, dot);
                $crate::dot::aarch64::gemm_tiles::k4_step!(1, 0, 1;
                    q8, wb, run, last, steps, isum, values, dot);
                $crate::dot::aarch64::gemm_tiles::k4_step!(2, 0, 2;
                    q8, wb, run, last, steps, isum, values, dot);
                $crate::dot::aarch64::gemm_tiles::k4_step!(3, 0, 3;
                    q8, wb, run, last, steps, isum, values, dot);
                $crate::dot::aarch64::gemm_tiles::k4_step!(4, 1, 0;
                    q8, wb, run, last, steps, isum, values, dot);
                $crate::dot::aarch64::gemm_tiles::k4_step!(5, 1, 1;
                    q8, wb, run, last, steps, isum, values, dot);
                $crate::dot::aarch64::gemm_tiles::k4_step!(6, 1, 2;
                    q8, wb, run, last, steps, isum, values, dot);
                $crate::dot::aarch64::gemm_tiles::k4_step!(7, 1, 3;
                    q8, wb, run, last, steps, isum, values, dot);
                // With running sums `isum` holds minus the scaled integer sum.
                for r in 0..R {
                    let dd = vmulq_n_f32(dx, f16_to_f32(wb[r].d()));
                    let s = vcvtq_f32_s32(isum[r]);
                    acc[r] = if RUNNING { vfmsq_f32(acc[r], s, dd) } else { vfmaq_f32(acc[r], s, dd) };
                }
            }
            acc
        }

        /// `R` rows × four tokens of Q6_K against Q8_K: as `tile_k4` (running sums and
        /// scale steps) with sixteen 16-value sub-blocks, signed scales and no mins.
        #[target_feature(enable = $feat)]
        #[inline]
        fn tile_q6_k<const R: usize, const RUNNING: bool>(
            rows: [&[BlockQ6K]; R],
            toks: [&[BlockQ8K]; 4],
            dot: impl Fn(int32x4_t, int8x16_t, int8x16_t) -> int32x4_t,
        ) -> [float32x4_t; R] {
            use $crate::dot::aarch64::common::{
                as_arrays, f16_to_f32, ld_f32x4, ld_i8x16, q6_k_scales, sum4,
            };
            use $crate::dot::aarch64::gemm_common::{
                common_len, exact, mla_lane, q6_k_sub_block, scale_steps,
            };
            let zero = vdupq_n_s32(0);
            let mut acc = [vdupq_n_f32(0.0); R];
            let n = common_len(&rows, &toks);
            let (Some(rows), Some(toks)) = (exact(rows, n), exact(toks, n)) else {
                return acc;
            };
            let mut run = [[zero; 4]; R];
            let mut last = [zero; R];
            for b in 0..n {
                let xb = [&toks[0][b], &toks[1][b], &toks[2][b], &toks[3][b]];
                let dx = ld_f32x4(&[xb[0].d, xb[1].d, xb[2].d, xb[3].d]);
                let mut wb = [&rows[0][b]; R];
                let mut steps = [[zero; 4]; R];
                let mut isum = [zero; R];
                for r in 0..R {
                    wb[r] = &rows[r][b];
                    let sc = q6_k_scales(&wb[r].scales);
                    if RUNNING {
                        steps[r] = [
                            scale_steps(sc[0], sc[1]),
                            scale_steps(sc[1], sc[2]),
                            scale_steps(sc[2], sc[3]),
                            scale_steps(sc[3], zero),
                        ];
                        isum[r] = vmulq_laneq_s32::<0>(last[r], sc[0]);
                    } else {
                        steps[r] = sc;
                    }
                }
                let q8: [&[[i8; 16]; 16]; 4] = [
                    as_arrays(&xb[0].qs),
                    as_arrays(&xb[1].qs),
                    as_arrays(&xb[2].qs),
                    as_arrays(&xb[3].qs),
                ];
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(0, 0, 0;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(1, 0, 1;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(2, 0, 2;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(3, 0, 3;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(4, 1, 0;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(5, 1, 1;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(6, 1, 2;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(7, 1, 3;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(8, 2, 0;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(9, 2, 1;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(10, 2, 2;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(11, 2, 3;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(12, 3, 0;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(13, 3, 1;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(14, 3, 2;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::gemm_tiles::q6_k_step!(15, 3, 3;
                    q8, wb, run, last, steps, isum, dot);
                // With running sums `isum` holds minus the scaled integer sum.
                for r in 0..R {
                    let dd = vmulq_n_f32(dx, f16_to_f32(wb[r].d));
                    let s = vcvtq_f32_s32(isum[r]);
                    acc[r] = if RUNNING { vfmsq_f32(acc[r], s, dd) } else { vfmaq_f32(acc[r], s, dd) };
                }
            }
            acc
        }
    };
}
pub(super) use gemm_tiles;
