//! Matrix–matrix (GEMM) micro-kernels for NEON with the dot-product extension (placeholder).

use core::arch::aarch64::*;

use super::dotprod::sdot;
use super::neon_gemm::{
    ROWS_K, ROWS_Q8_0, drive, gemm_tiles, q4_0_weights, q4_k_sub, q5_k_sub, q8_0_weights,
};
use crate::formats::*;

gemm_tiles!("neon,dotprod");

/// `Σ a_i b_i` over 32 lanes as an i32x4 of partial sums: two chained `SDOT`s.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn dot32(a0: int8x16_t, a1: int8x16_t, b0: int8x16_t, b1: int8x16_t) -> int32x4_t {
    sdot(sdot(vdupq_n_s32(0), a0, b0), a1, b1)
}

/// Q8_0 weights · Q8_0 activations, every (row, token) pair.
///
/// # Safety
/// The CPU must support NEON and the dot-product extension. Shapes need no precondition
/// for memory safety; `dispatch::Kernels::gemm_q8_0` checks that `w` and `x` are whole
/// rows of `bpr` blocks and that `out` holds one value per pair.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn gemm_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0], bpr: usize, out: &mut [f32]) {
    let weights = |b: &BlockQ8_0| q8_0_weights(b);
    let dot = |a0, a1, b0, b1| dot32(a0, a1, b0, b1);
    drive::<_, _, ROWS_Q8_0>(
        w,
        x,
        bpr,
        out,
        |r, t| tile_q8_0(r, t, weights, dot),
        |r, t| tile_q8_0(r, t, weights, dot),
    );
}

/// Q4_0 weights · Q8_0 activations, every (row, token) pair.
///
/// # Safety
/// As [`gemm_q8_0`].
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn gemm_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0], bpr: usize, out: &mut [f32]) {
    let weights = |b: &BlockQ4_0| q4_0_weights(b);
    let dot = |a0, a1, b0, b1| dot32(a0, a1, b0, b1);
    drive::<_, _, ROWS_Q8_0>(
        w,
        x,
        bpr,
        out,
        |r, t| tile_q8_0(r, t, weights, dot),
        |r, t| tile_q8_0(r, t, weights, dot),
    );
}

/// Q4_K weights · Q8_K activations, every (row, token) pair.
///
/// # Safety
/// As [`gemm_q8_0`].
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn gemm_q4_k(w: &[BlockQ4K], x: &[BlockQ8K], bpr: usize, out: &mut [f32]) {
    let values = |b: &BlockQ4K, j| q4_k_sub(b, j);
    let dot = |acc, a0, a1, b0, b1| sdot(sdot(acc, a0, b0), a1, b1);
    drive::<_, _, ROWS_K>(
        w,
        x,
        bpr,
        out,
        |r, t| tile_k4::<_, _, true>(r, t, values, dot),
        |r, t| tile_k4::<_, _, true>(r, t, values, dot),
    );
}

/// Q5_K weights · Q8_K activations, every (row, token) pair.
///
/// # Safety
/// As [`gemm_q8_0`].
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn gemm_q5_k(w: &[BlockQ5K], x: &[BlockQ8K], bpr: usize, out: &mut [f32]) {
    let values = |b: &BlockQ5K, j| q5_k_sub(b, j);
    let dot = |acc, a0, a1, b0, b1| sdot(sdot(acc, a0, b0), a1, b1);
    drive::<_, _, ROWS_K>(
        w,
        x,
        bpr,
        out,
        |r, t| tile_k4::<_, _, true>(r, t, values, dot),
        |r, t| tile_k4::<_, _, true>(r, t, values, dot),
    );
}

/// Q6_K weights · Q8_K activations, every (row, token) pair.
///
/// # Safety
/// As [`gemm_q8_0`].
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn gemm_q6_k(w: &[BlockQ6K], x: &[BlockQ8K], bpr: usize, out: &mut [f32]) {
    let dot = |acc, a, b| sdot(acc, a, b);
    drive::<_, _, ROWS_K>(
        w,
        x,
        bpr,
        out,
        |r, t| tile_q6_k::<_, true>(r, t, dot),
        |r, t| tile_q6_k::<_, true>(r, t, dot),
    );
}
