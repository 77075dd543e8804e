//! Matrix–matrix (prefill) kernels of the `dotprod` path (NEON with the ARMv8.2
//! dot-product extension): `out[r * nt + t] = dot(w row r, x row t)` for Q8_0, Q4_0, Q4_K,
//! Q5_K and Q6_K weights.
//!
//! These are the micro-tiles of [`super::gemm_tiles`], instantiated from its [`gemm_tiles`]
//! macro with the features `neon,dotprod` and `SDOT` ([`sdot`]) as the integer dot
//! product. Everything else is that module's, and documented there: the result (the
//! [`crate::dot::scalar`] dot of every pair, with exact integer sums and the f32 steps
//! fused and, for Q4_K/Q5_K, reordered as listed there), the tiles of [`ROWS_Q8_0`] = 4
//! (Q8_0, Q4_0) or [`ROWS_K`] = 2 (k-quants) rows × four tokens with one `ADDP` tree per
//! row reducing four tokens' sums into one vector, the weight unpacking ([`q8_0_weights`],
//! [`q4_0_weights`], [`q4_k_sub`], [`q5_k_sub`] and
//! [`q6_k_sub_block`](super::gemm_common::q6_k_sub_block)), the Q4_K/Q5_K mins through the
//! activation `bsums`, and the partial tiles of [`drive`](super::gemm_common::drive)
//! (remaining rows one at a time, the last token group padded with its final token and only
//! real tokens stored). Nothing allocates.
//!
//! # Integer products
//!
//! `SDOT` adds four i8 × i8 products into each i32 lane, 16 per instruction, with no i16
//! intermediate, so every format, Q8_0 included, is exact with plain chained `SDOT`s:
//!
//! - **Q8_0, Q4_0**: [`dot32`], two chained `SDOT`s from zero per block, row and token.
//! - **Q4_K, Q5_K**: two chained `SDOT`s per 32-value sub-block, row and token.
//! - **Q6_K**: one `SDOT` per 16-value sub-block, row and token.
//!
//! # Running sums
//!
//! The k-quant tiles run with `RUNNING = true`: the `SDOT`s of every sub-block add into one
//! i32x4 per (row, token) that is never reset, neither per sub-block nor per super-block,
//! so no zeroing is needed. After sub-block `j` the four tokens' running sums are reduced
//! to `S_j` (one lane per token), and sub-block `j`'s own sum is `S_j - S_{j-1}`, where
//! `S_-1` is the reduction after the previous super-block (zero before the first). With
//! the sub-block scales `s_j` and `s_n = 0` past the last one,
//!
//! `Σ_j s_j (S_j - S_{j-1}) = -(s_0 S_-1 + Σ_j S_j (s_{j+1} - s_j))`,
//!
//! so the tile starts each super-block's integer sum at `s_0 S_-1` and adds one `MLA` by
//! element of `S_j` and the scale step `s_{j+1} - s_j` per sub-block, the steps computed
//! once per super-block and row (`EXT` + `SUB`). The result is `-sumi`, and the tile
//! subtracts `f32(-sumi) · (d_w · d_x)` with `FMLS`, which is the same as adding
//! `f32(sumi) · (d_w · d_x)` (the conversion is symmetric in sign).
//!
//! # Overflow
//!
//! `SDOT`, `ADDP`, `MUL` and `MLA` all wrap in i32 (modulo `2^32`, no saturation). The
//! running sums grow over the whole row and may wrap on very long rows, but only their
//! differences enter the result, through wrapping arithmetic whose true value, `-sumi`,
//! fits in i32 (below `2^26` for Q4_K/Q5_K and at most `2^27` for Q6_K, as in
//! [`super::gemm_tiles`]), so it is exact. Q8_0/Q4_0 block sums start from zero and stay
//! below `2^19`; the mins sum `summ` is computed as in the NEON path.

use core::arch::aarch64::*;

use super::dotprod::{dot32, sdot};
use super::gemm_common::{
    ROWS_K, ROWS_Q8_0, drive_tiles, q4_0_weights, q4_k_sub, q5_k_sub, q8_0_weights,
};
use super::gemm_tiles::gemm_tiles;
use crate::formats::*;

gemm_tiles!("neon,dotprod");

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
    drive_tiles!(w, x, bpr, out; ROWS_Q8_0, |r, t| tile_q8_0(r, t, weights, dot));
}

/// Q4_0 weights · Q8_0 activations, every (row, token) pair.
///
/// # Safety
/// As [`gemm_q8_0`].
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn gemm_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0], bpr: usize, out: &mut [f32]) {
    let weights = |b: &BlockQ4_0| q4_0_weights(b);
    let dot = |a0, a1, b0, b1| dot32(a0, a1, b0, b1);
    drive_tiles!(w, x, bpr, out; ROWS_Q8_0, |r, t| tile_q8_0(r, t, weights, dot));
}

/// Q4_K weights · Q8_K activations, every (row, token) pair.
///
/// # Safety
/// As [`gemm_q8_0`].
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn gemm_q4_k(w: &[BlockQ4K], x: &[BlockQ8K], bpr: usize, out: &mut [f32]) {
    let values = |b: &BlockQ4K, j| q4_k_sub(b, j);
    let dot = |acc, a0, a1, b0, b1| sdot(sdot(acc, a0, b0), a1, b1);
    drive_tiles!(w, x, bpr, out; ROWS_K, |r, t| tile_k4::<_, _, true>(r, t, values, dot));
}

/// Q5_K weights · Q8_K activations, every (row, token) pair.
///
/// # Safety
/// As [`gemm_q8_0`].
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn gemm_q5_k(w: &[BlockQ5K], x: &[BlockQ8K], bpr: usize, out: &mut [f32]) {
    let values = |b: &BlockQ5K, j| q5_k_sub(b, j);
    let dot = |acc, a0, a1, b0, b1| sdot(sdot(acc, a0, b0), a1, b1);
    drive_tiles!(w, x, bpr, out; ROWS_K, |r, t| tile_k4::<_, _, true>(r, t, values, dot));
}

/// Q6_K weights · Q8_K activations, every (row, token) pair.
///
/// # Safety
/// As [`gemm_q8_0`].
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn gemm_q6_k(w: &[BlockQ6K], x: &[BlockQ8K], bpr: usize, out: &mut [f32]) {
    let dot = |acc, a, b| sdot(acc, a, b);
    drive_tiles!(w, x, bpr, out; ROWS_K, |r, t| tile_q6_k::<_, true>(r, t, dot));
}
