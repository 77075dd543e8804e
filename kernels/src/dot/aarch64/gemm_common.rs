//! What the micro-tiles of both aarch64 GEMM paths ([`super::gemm_tiles`]) run on: the
//! tile shapes, the driver that covers a whole product with tiles ([`drive`],
//! [`drive_tiles`]), the weight unpacking per format, one sub-block at a time, and the
//! small vector helpers of the tiles. See [`super::gemm_tiles`] for the design.

use core::arch::aarch64::*;

use super::common::{
    as_arrays, f16_to_f32, f16x4_to_f32, ld_i8x16x2, ld_u8x16, ld_u8x16x2, unpack_q4_0,
};
use crate::formats::*;

/// Tokens per micro-tile: the four lanes of one vector.
pub(super) const LANES: usize = 4;

/// Rows per micro-tile of the Q8_0-activation formats (Q8_0, Q4_0).
pub(super) const ROWS_Q8_0: usize = 4;
/// Rows per micro-tile of the k-quants.
pub(super) const ROWS_K: usize = 2;

// ---------------------------------------------------------------- small helpers

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
        $crate::dot::aarch64::gemm_common::drive::<_, _, $rows>(
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
