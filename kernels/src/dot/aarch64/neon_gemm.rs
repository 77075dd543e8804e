//! Matrix–matrix (prefill) kernels of the `neon` path: `out[r * nt + t] = dot(w row r,
//! x row t)` for Q8_0, Q4_0, Q4_K, Q5_K and Q6_K weights, each weight block unpacked once
//! for four tokens and each activation block loaded once for all the rows of a tile.
//!
//! The micro-tiles are written once, in the [`gemm_tiles`] macro, generic over the integer
//! dot product: this module instantiates them with the baseline `SMULL`/`SADALP` products,
//! [`super::dotprod_gemm`] with `SDOT`. The driver ([`drive`]) and the weight unpacking
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
//! A tile covers `R` weight rows and [`LANES`] = 4 tokens over their whole length (all
//! `bpr` blocks) and returns `R` `float32x4_t` accumulators: lane `t` of vector `r` is
//! the output of row `r` and token `t`. `R` is [`ROWS_Q8_0`] = 4 for Q8_0/Q4_0
//! ([`tile_q8_0`]) and [`ROWS_K`] = 2 for the k-quants ([`tile_k4`] for Q4_K/Q5_K,
//! [`tile_q6_k`]). Per block, the tile loads the four tokens' values (for the k-quants one
//! sub-block at a time) and their scales as one vector of four lanes ([`f16x4`] widens the
//! f16 scales of Q8_0 with one `FCVTL`); then, per row, it unpacks the weights once and
//! multiplies them by the four tokens', one i32x4 of partial sums per (row, token). The
//! four i32x4 of a row are reduced with one `ADDP` tree ([`sum4`](super::neon::sum4)) to
//! one vector whose lane `t` is token `t`'s sum, so every scale is applied to four tokens
//! at once: the float scales `d_w · d_x` (four lanes) with one `SCVTF` and one FMA per row
//! and block, and for the k-quants each sub-block's integer scale with one `MLA` by element
//! (the four token sums times the scale, in i32).
//!
//! # Formats
//!
//! - **Q8_0**: the 32 weights as they are ([`q8_0_weights`]).
//! - **Q4_0**: `AND 0x0F` and `USHR #4` give elements 0..16 and 16..32, minus 8: -8..=7
//!   ([`q4_0_weights`]).
//! - **Q4_K**: sub-block `j` (32 values) is the low (`j` even) or high nibbles of the 32
//!   bytes of group `j / 2`: 0..=15 ([`q4_k_sub`]).
//! - **Q5_K**: as Q4_K, with bit `j` of `qh[l]` as the fifth bit, moved by `USHL` and merged
//!   by `SLI #4` (low nibble) or `SRI #4` (high nibble): 0..=31 ([`q5_k_sub`]).
//! - **Q6_K**: one 16-value sub-block at a time: four bits of `ql` and a bit pair of `qh`
//!   masked into bits 4..5, merged with `ORR`/`SRI`, minus 32: -32..=31
//!   ([`q6_k_sub_block`]).
//!
//! The k-quant scales come from [`k4_scales_mins`](super::neon::k4_scales_mins) and
//! [`q6_k_scales`](super::neon::q6_k_scales) as i32x4 of four sub-blocks each. The Q4_K/Q5_K
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
//! | Q4_0 | 1024 | 4 | [`dot32_narrow`] |
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
//! [`drive`] runs the tiles over any `nr, nt >= 1`: rows in groups of `R`, the remaining
//! `nr % R` rows one at a time (the same tile with `R = 1`), and tokens in groups of four,
//! the last group filling its missing lanes with its final token, whose extra results are
//! computed and never stored. An empty product writes nothing. Rows, tokens and outputs are
//! taken with `chunks_exact`/`get`, so nothing is read or written outside `w`, `x` and
//! `out`, and nothing panics. Nothing allocates: the tiles' state is a few arrays of
//! vectors on the stack.

use core::arch::aarch64::*;

use super::neon::{
    as_arrays, dot32_narrow, f16_to_f32, f16x4_to_f32, ld_i8x16x2, ld_u8x16, ld_u8x16x2,
    unpack_q4_0,
};
use crate::formats::*;

/// Tokens per micro-tile: the four lanes of one vector.
pub(super) const LANES: usize = 4;

/// Rows per micro-tile of the Q8_0-activation formats (Q8_0, Q4_0).
pub(super) const ROWS_Q8_0: usize = 4;
/// Rows per micro-tile of the k-quants.
pub(super) const ROWS_K: usize = 2;

// ---------------------------------------------------------------- small helpers

/// Four floats as a vector (`LD1`).
#[inline(always)]
pub(super) fn ld_f32x4(a: &[f32; 4]) -> float32x4_t {
    // SAFETY: `a` is 4 readable floats; LD1 needs only the element alignment `a` has.
    unsafe { vld1q_f32(a.as_ptr()) }
}

/// A vector as four floats (`ST1`).
#[inline(always)]
fn st_f32x4(v: float32x4_t) -> [f32; 4] {
    let mut a = [0.0f32; 4];
    // SAFETY: `a` is 4 writable floats; ST1 needs only the element alignment `a` has.
    unsafe { vst1q_f32(a.as_mut_ptr(), v) };
    a
}

/// Four f16 scales as f32 lanes: the packed bits moved to a vector, one `FCVTL`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn f16x4(d: [f16; 4]) -> float32x4_t {
    let bits = d
        .iter()
        .rev()
        .fold(0u64, |acc, h| (acc << 16) | u64::from(h.to_bits()));
    f16x4_to_f32(vcreate_u16(bits))
}

/// The number of blocks every row and token of a tile has (all are `bpr` long; taking the
/// minimum lets the compiler drop the bounds checks of the block loop).
#[inline(always)]
pub(super) fn common_len<W, A, const R: usize>(rows: &[&[W]; R], toks: &[&[A]; LANES]) -> usize {
    let r = rows.iter().map(|r| r.len()).min().unwrap_or(0);
    let t = toks.iter().map(|t| t.len()).min().unwrap_or(0);
    r.min(t)
}

/// `acc + s · sc[LANE]` in i32 lanes (`MLA` by element).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn mla_lane<const LANE: i32>(acc: int32x4_t, s: int32x4_t, sc: int32x4_t) -> int32x4_t {
    vmlaq_laneq_s32::<LANE>(acc, s, sc)
}

// ---------------------------------------------------------------- the driver

/// Runs micro-tiles over a whole product: groups of `R` weight rows (single rows for the
/// remainder) times groups of four tokens; the last token group repeats its final token to
/// fill the lanes, and only real tokens are stored. `out[r * nt + t]` as in
/// [`crate::dispatch`]'s `GemmFn`. Nothing is read outside `w` and `x` and nothing can
/// panic: rows and tokens come from `chunks_exact`/`get`, outputs from `chunks_exact_mut`.
#[inline(always)]
pub(super) fn drive<W, A, const R: usize>(
    w: &[W],
    x: &[A],
    bpr: usize,
    out: &mut [f32],
    tile: impl Fn([&[W]; R], [&[A]; LANES]) -> [float32x4_t; R],
    tile1: impl Fn([&[W]; 1], [&[A]; LANES]) -> [float32x4_t; 1],
) {
    let Some(nt) = x.len().checked_div(bpr) else {
        return;
    };
    let Some(last) = nt.checked_sub(1) else {
        return;
    };
    let token = |t: usize| -> &[A] {
        let t = t.min(last);
        x.get(t * bpr..(t + 1) * bpr).unwrap_or(&[])
    };
    let tokens = |g: usize| -> [&[A]; LANES] { core::array::from_fn(|i| token(g * LANES + i)) };
    let groups = nt.div_ceil(LANES);
    let store = |o: &mut [f32], g: usize, v: float32x4_t| {
        if let Some(o) = o.get_mut(g * LANES..) {
            for (o, v) in o.iter_mut().zip(st_f32x4(v)) {
                *o = v;
            }
        }
    };
    let mut rows = w.chunks_exact(bpr);
    let mut outs = out.chunks_exact_mut(nt);
    for _ in 0..rows.len() / R {
        let wr: [&[W]; R] = core::array::from_fn(|_| rows.next().unwrap_or(&[]));
        let mut or: [&mut [f32]; R] = core::array::from_fn(|_| outs.next().unwrap_or(&mut []));
        for g in 0..groups {
            let acc = tile(wr, tokens(g));
            for (o, v) in or.iter_mut().zip(acc) {
                store(o, g, v);
            }
        }
    }
    for (wr, o) in rows.zip(outs) {
        for g in 0..groups {
            let [v] = tile1([wr], tokens(g));
            store(o, g, v);
        }
    }
}

/// `drive_tiles!(w, x, bpr, out; R, |r, t| tile)`: [`drive`] with the same micro-tile for
/// the groups of `R` rows and for the remaining single rows. The tile closure is written
/// once and expanded twice, since one closure (one type) cannot serve both row counts.
macro_rules! drive_tiles {
    ($w:expr, $x:expr, $bpr:expr, $out:expr; $rows:ident, |$r:ident, $t:ident| $tile:expr) => {
        $crate::dot::aarch64::neon_gemm::drive::<_, _, $rows>(
            $w,
            $x,
            $bpr,
            $out,
            |$r, $t| $tile,
            |$r, $t| $tile,
        )
    };
}
pub(super) use drive_tiles;

// ---------------------------------------------------------------- weight unpacking

/// The scale and the 32 values of a Q8_0 weight block.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn q8_0_weights(b: &BlockQ8_0) -> (f32, int8x16_t, int8x16_t) {
    let q = ld_i8x16x2(&b.qs);
    (f16_to_f32(b.d), q.0, q.1)
}

/// The scale and the 32 values of a Q4_0 weight block (in -8..=7).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn q4_0_weights(b: &BlockQ4_0) -> (f32, int8x16_t, int8x16_t) {
    let (lo, hi) = unpack_q4_0(&b.qs);
    (f16_to_f32(b.d), lo, hi)
}

/// The scales of a Q4_K or Q5_K block (their values differ: see [`q4_k_sub`] and
/// [`q5_k_sub`]).
pub(super) trait K4Block {
    /// The super-block scale.
    fn d(&self) -> f16;
    /// The super-block scale of the mins.
    fn dmin(&self) -> f16;
    /// The packed 6-bit sub-block scales and mins.
    fn scales(&self) -> &[u8; K_SCALE_SIZE];
}

impl K4Block for BlockQ4K {
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    fn dmin(&self) -> f16 {
        self.dmin
    }
    #[inline(always)]
    fn scales(&self) -> &[u8; K_SCALE_SIZE] {
        &self.scales
    }
}

impl K4Block for BlockQ5K {
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    fn dmin(&self) -> f16 {
        self.dmin
    }
    #[inline(always)]
    fn scales(&self) -> &[u8; K_SCALE_SIZE] {
        &self.scales
    }
}

/// The 32 bytes of `qs` holding sub-blocks `2p` (low nibbles) and `2p + 1` (high).
#[inline(always)]
fn k4_group(qs: &[u8; QK_K / 2], p: usize) -> uint8x16x2_t {
    let groups: &[[u8; 32]; 4] = as_arrays(qs);
    ld_u8x16x2(&groups[p % 4])
}

/// Sub-block `j` (0..8) of a Q4_K block as i8 in 0..=15: the low (`j` even) or high
/// nibbles of the 32 bytes of group `j / 2`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn q4_k_sub(w: &BlockQ4K, j: usize) -> (int8x16_t, int8x16_t) {
    let q = k4_group(&w.qs, j / 2);
    let v = if j.is_multiple_of(2) {
        let m4 = vdupq_n_u8(0x0F);
        (vandq_u8(q.0, m4), vandq_u8(q.1, m4))
    } else {
        (vshrq_n_u8::<4>(q.0), vshrq_n_u8::<4>(q.1))
    };
    (vreinterpretq_s8_u8(v.0), vreinterpretq_s8_u8(v.1))
}

/// Sub-block `j` (0..8) of a Q5_K block as i8 in 0..=31: the nibbles as in [`q4_k_sub`]
/// and bit `j` of `qh[l]` as the fifth bit. A low nibble keeps its place and `SLI #4`
/// inserts the bit above it; a high nibble is inserted with `SRI #4` under the bit moved
/// to position 4. `USHL` by a constant count (negative: right) does the moving.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn q5_k_sub(w: &BlockQ5K, j: usize) -> (int8x16_t, int8x16_t) {
    let q = k4_group(&w.qs, j / 2);
    let h = ld_u8x16x2(&w.qh);
    let j = (j % 8) as i8;
    let v = if j % 2 == 0 {
        let (shift, one) = (vdupq_n_s8(-j), vdupq_n_u8(1));
        let bit = |h| vandq_u8(vshlq_u8(h, shift), one);
        (
            vsliq_n_u8::<4>(q.0, bit(h.0)),
            vsliq_n_u8::<4>(q.1, bit(h.1)),
        )
    } else {
        let (shift, b4) = (vdupq_n_s8(4 - j), vdupq_n_u8(0x10));
        let bit = |h| vandq_u8(vshlq_u8(h, shift), b4);
        (
            vsriq_n_u8::<4>(bit(h.0), q.0),
            vsriq_n_u8::<4>(bit(h.1), q.1),
        )
    };
    (vreinterpretq_s8_u8(v.0), vreinterpretq_s8_u8(v.1))
}

/// The 16 values of Q6_K sub-block `j` (0..16, constant) as i8 in -32..=31; the layout is
/// that of [`super::neon::unpack_q6_k_half`], one vector at a time.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn q6_k_sub_block(w: &BlockQ6K, j: usize) -> int8x16_t {
    let (half, k) = (j / 8, j % 8);
    let ql: &[[u8; 16]; 8] = as_arrays(&w.ql);
    let qh: &[[u8; 16]; 4] = as_arrays(&w.qh);
    let l = ld_u8x16(&ql[(4 * half + k % 4) % 8]);
    let h = ld_u8x16(&qh[(2 * half + k % 2) % 4]);
    let m30 = vdupq_n_u8(0x30);
    // Bit pair k / 2 of qh moved to bits 4..5.
    let top = match k / 2 {
        0 => vandq_u8(vshlq_n_u8::<4>(h), m30),
        1 => vandq_u8(vshlq_n_u8::<2>(h), m30),
        2 => vandq_u8(h, m30),
        _ => vandq_u8(vshrq_n_u8::<2>(h), m30),
    };
    // Sub-blocks 0..4 of a half take the low nibbles of ql, 4..8 the high ones.
    let v = if k < 4 {
        vorrq_u8(vandq_u8(l, vdupq_n_u8(0x0F)), top)
    } else {
        vsriq_n_u8::<4>(top, l)
    };
    vsubq_s8(vreinterpretq_s8_u8(v), vdupq_n_s8(32))
}

/// `[s1 - s0, s2 - s1, s3 - s2, s4 - s3]` for `a = [s0..s3]`, `b = [s4..]`: the scale
/// steps of the running-sum form (see `tile_k4` in [`gemm_tiles`]).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn scale_steps(a: int32x4_t, b: int32x4_t) -> int32x4_t {
    vsubq_s32(vextq_s32::<1>(a, b), a)
}

/// The slices cut to exactly `n` elements (`None` if one is shorter), so that the
/// compiler sees every index below `n` in bounds and emits no checks in the block loops.
#[inline(always)]
pub(super) fn exact<T, const N: usize>(s: [&[T]; N], n: usize) -> Option<[&[T]; N]> {
    let mut out = s;
    for o in &mut out {
        *o = o.get(..n)?;
    }
    Some(out)
}

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
            use $crate::dot::aarch64::neon::{ld_i8x16x2, sum4};
            use $crate::dot::aarch64::neon_gemm::{common_len, exact, f16x4};
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
        fn tile_k4<W: $crate::dot::aarch64::neon_gemm::K4Block, const R: usize, const RUNNING: bool>(
            rows: [&[W]; R],
            toks: [&[BlockQ8K]; 4],
            values: impl Fn(&W, usize) -> (int8x16_t, int8x16_t),
            dot: impl Fn(int32x4_t, int8x16_t, int8x16_t, int8x16_t, int8x16_t) -> int32x4_t,
        ) -> [float32x4_t; R] {
            use $crate::dot::aarch64::neon::{
                as_arrays, f16_to_f32, k4_scales_mins, ld_i16x8x2, ld_i8x16x2, sum4,
            };
            use $crate::dot::aarch64::neon_gemm::{
                common_len, exact, ld_f32x4, mla_lane, scale_steps,
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
                $crate::dot::aarch64::neon_gemm::k4_step!(0, 0, 0;
                    q8, wb, run, last, steps, isum, values, dot);
                $crate::dot::aarch64::neon_gemm::k4_step!(1, 0, 1;
                    q8, wb, run, last, steps, isum, values, dot);
                $crate::dot::aarch64::neon_gemm::k4_step!(2, 0, 2;
                    q8, wb, run, last, steps, isum, values, dot);
                $crate::dot::aarch64::neon_gemm::k4_step!(3, 0, 3;
                    q8, wb, run, last, steps, isum, values, dot);
                $crate::dot::aarch64::neon_gemm::k4_step!(4, 1, 0;
                    q8, wb, run, last, steps, isum, values, dot);
                $crate::dot::aarch64::neon_gemm::k4_step!(5, 1, 1;
                    q8, wb, run, last, steps, isum, values, dot);
                $crate::dot::aarch64::neon_gemm::k4_step!(6, 1, 2;
                    q8, wb, run, last, steps, isum, values, dot);
                $crate::dot::aarch64::neon_gemm::k4_step!(7, 1, 3;
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
            use $crate::dot::aarch64::neon::{as_arrays, f16_to_f32, ld_i8x16, q6_k_scales, sum4};
            use $crate::dot::aarch64::neon_gemm::{
                common_len, exact, ld_f32x4, mla_lane, q6_k_sub_block, scale_steps,
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
                $crate::dot::aarch64::neon_gemm::q6_k_step!(0, 0, 0;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::neon_gemm::q6_k_step!(1, 0, 1;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::neon_gemm::q6_k_step!(2, 0, 2;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::neon_gemm::q6_k_step!(3, 0, 3;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::neon_gemm::q6_k_step!(4, 1, 0;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::neon_gemm::q6_k_step!(5, 1, 1;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::neon_gemm::q6_k_step!(6, 1, 2;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::neon_gemm::q6_k_step!(7, 1, 3;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::neon_gemm::q6_k_step!(8, 2, 0;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::neon_gemm::q6_k_step!(9, 2, 1;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::neon_gemm::q6_k_step!(10, 2, 2;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::neon_gemm::q6_k_step!(11, 2, 3;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::neon_gemm::q6_k_step!(12, 3, 0;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::neon_gemm::q6_k_step!(13, 3, 1;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::neon_gemm::q6_k_step!(14, 3, 2;
                    q8, wb, run, last, steps, isum, dot);
                $crate::dot::aarch64::neon_gemm::q6_k_step!(15, 3, 3;
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

gemm_tiles!("neon");

// ---------------------------------------------------------------- NEON kernels

/// `Σ a_i b_i` over 32 lanes for any i8 values: every product (up to 16384) gets its own
/// i16 lane, folded into the i32 sums right away (`SMULL` + `SADDLP`/`SADALP`).
#[target_feature(enable = "neon")]
#[inline]
fn dot32_wide(a0: int8x16_t, a1: int8x16_t, b0: int8x16_t, b1: int8x16_t) -> int32x4_t {
    let s = vpaddlq_s16(vmull_s8(vget_low_s8(a0), vget_low_s8(b0)));
    let s = vpadalq_s16(s, vmull_high_s8(a0, b0));
    let s = vpadalq_s16(s, vmull_s8(vget_low_s8(a1), vget_low_s8(b1)));
    vpadalq_s16(s, vmull_high_s8(a1, b1))
}

/// `Σ a_i b_i` over 32 lanes as i16 partial sums, when every `|a_i b_i| <= 8191`: four
/// products share an i16 lane (`SMULL` + three `SMLAL`).
#[target_feature(enable = "neon")]
#[inline]
fn dot32_i16(a0: int8x16_t, a1: int8x16_t, b0: int8x16_t, b1: int8x16_t) -> int16x8_t {
    let p = vmull_s8(vget_low_s8(a0), vget_low_s8(b0));
    let p = vmlal_high_s8(p, a0, b0);
    let p = vmlal_s8(p, vget_low_s8(a1), vget_low_s8(b1));
    vmlal_high_s8(p, a1, b1)
}

/// Q8_0 weights · Q8_0 activations, every (row, token) pair.
///
/// # Safety
/// The CPU must support NEON (every AArch64 CPU does). Shapes need no precondition for
/// memory safety; `dispatch::Kernels::gemm_q8_0` checks that `w` and `x` are whole rows of
/// `bpr` blocks and that `out` holds one value per pair.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn gemm_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0], bpr: usize, out: &mut [f32]) {
    let weights = |b: &BlockQ8_0| q8_0_weights(b);
    let dot = |a0, a1, b0, b1| dot32_wide(a0, a1, b0, b1);
    drive_tiles!(w, x, bpr, out; ROWS_Q8_0, |r, t| tile_q8_0(r, t, weights, dot));
}

/// Q4_0 weights · Q8_0 activations, every (row, token) pair.
///
/// # Safety
/// As [`gemm_q8_0`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn gemm_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0], bpr: usize, out: &mut [f32]) {
    let weights = |b: &BlockQ4_0| q4_0_weights(b);
    let dot = |a0, a1, b0, b1| dot32_narrow(a0, a1, b0, b1);
    drive_tiles!(w, x, bpr, out; ROWS_Q8_0, |r, t| tile_q8_0(r, t, weights, dot));
}

/// Q4_K weights · Q8_K activations, every (row, token) pair.
///
/// # Safety
/// As [`gemm_q8_0`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn gemm_q4_k(w: &[BlockQ4K], x: &[BlockQ8K], bpr: usize, out: &mut [f32]) {
    let values = |b: &BlockQ4K, j| q4_k_sub(b, j);
    let dot = |acc, a0, a1, b0, b1| vpadalq_s16(acc, dot32_i16(a0, a1, b0, b1));
    drive_tiles!(w, x, bpr, out; ROWS_K, |r, t| tile_k4::<_, _, false>(r, t, values, dot));
}

/// Q5_K weights · Q8_K activations, every (row, token) pair.
///
/// # Safety
/// As [`gemm_q8_0`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn gemm_q5_k(w: &[BlockQ5K], x: &[BlockQ8K], bpr: usize, out: &mut [f32]) {
    let values = |b: &BlockQ5K, j| q5_k_sub(b, j);
    let dot = |acc, a0, a1, b0, b1| vpadalq_s16(acc, dot32_i16(a0, a1, b0, b1));
    drive_tiles!(w, x, bpr, out; ROWS_K, |r, t| tile_k4::<_, _, false>(r, t, values, dot));
}

/// Q6_K weights · Q8_K activations, every (row, token) pair.
///
/// # Safety
/// As [`gemm_q8_0`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn gemm_q6_k(w: &[BlockQ6K], x: &[BlockQ8K], bpr: usize, out: &mut [f32]) {
    let dot = |acc, a: int8x16_t, b: int8x16_t| {
        vpadalq_s16(
            acc,
            vmlal_high_s8(vmull_s8(vget_low_s8(a), vget_low_s8(b)), a, b),
        )
    };
    drive_tiles!(w, x, bpr, out; ROWS_K, |r, t| tile_q6_k::<_, false>(r, t, dot));
}
