//! Matrix–matrix (prefill) kernels of the `neon` path: the micro-tiles of
//! [`super::gemm_tiles`] instantiated with the features `neon` and the baseline widening
//! products, which the tiles' design (and [`super::dotprod_gemm`], the same tiles with
//! `SDOT`) is documented with.
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

use core::arch::aarch64::*;

use super::gemm_common::{
    ROWS_K, ROWS_Q8_0, drive_tiles, q4_0_weights, q4_k_sub, q5_k_sub, q8_0_weights,
};
use super::gemm_tiles::gemm_tiles;
use super::neon::dot32_narrow;
use crate::formats::*;

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
