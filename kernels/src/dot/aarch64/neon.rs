//! Baseline AArch64 Advanced SIMD (NEON) kernels: every ARMv8-A core, in particular the
//! Cortex-A53/A72 of the Raspberry Pi 3/4, which lack the dot-product instructions.
//!
//! This module holds the path's integer products and instantiates the quantized dots of
//! [`super::quant_dots`] with them; the float dots ([`super::float`]) and activation
//! quantizers ([`super::quantize`]) are shared with the `dotprod` path, as are the loads
//! and the weight unpacking ([`super::common`]).
//!
//! # Integer dots without SDOT
//!
//! The quantized dots multiply i8 by i8 with `SMULL`/`SMLAL` (8 products widened to i16) and
//! fold the i16 lanes pairwise into i32 with `SADALP`/`SADDLP`. How many products may share
//! an i16 lane before folding is bounded by the format's value range, so every sum is exact:
//!
//! | weights | value range | max abs product (vs. i8 down to -128) | products per i16 lane |
//! |---|---|---|---|
//! | Q8_0 | -128..=127 | 16384 | 1 (two could reach 32768) |
//! | Q4_0 | -8..=7 | 1024 | 4 |
//! | Q4_K | 0..=15 | 1920 | 4 |
//! | Q5_K | 0..=31 | 3968 | 4 |
//! | Q6_K | -32..=31 | 4096 | 2 |
//!
//! # Why this streams at memory speed
//!
//! Decode reads every weight once per token, so a kernel only has to keep up with DRAM.
//! Compiled, the loop bodies are 41 instructions per two Q4_0 blocks (36 bytes), 41 per two
//! Q8_0 blocks (68 bytes), 130 per Q4_K super-block (144 bytes), 161 per Q5_K (176) and 165
//! per Q6_K (210): 10 to 18 instructions per 16 weight bytes, with no calls, no spills and
//! no scalar work besides the per-block scales. A Cortex-A72 sustains about 3 of these per
//! cycle, and its single multiply pipe needs 32 cycles for the 32 `SMULL`/`SMLAL` of a
//! k-quant super-block, so one core consumes roughly 2.5-5 bytes per cycle, 4-9 GB/s at
//! 1.8 GHz, while a Pi 4's LPDDR4 delivers about 4-5 GB/s to all four cores together. The
//! latency chains are short and independent (two blocks, or eight to sixteen sub-blocks,
//! per iteration; four FMA accumulators for the float dots), horizontal reductions happen
//! once per block (per 256 values for the k-quants), loads are unaligned `LD1`s straight
//! from the GGML blocks, and the constants are materialised outside the loops.

use core::arch::aarch64::*;

use super::common;
use super::quant_dots::quant_dots;
use crate::formats::*;

quant_dots! {
    features: "neon",
    needs: "NEON (every AArch64 CPU does)",
    wide: dot32_wide,
    narrow: dot32_narrow,
    dot16: dot16_narrow,
}

/// `Σ a_i b_i` over 32 lanes for any i8 values: every product (up to 16384) gets its own
/// i16 lane before `SADDLP`/`SADALP` folds it into i32.
#[target_feature(enable = "neon")]
#[inline]
fn dot32_wide(a0: int8x16_t, a1: int8x16_t, b0: int8x16_t, b1: int8x16_t) -> int32x4_t {
    let s0 = vpaddlq_s16(vmull_s8(vget_low_s8(a0), vget_low_s8(b0)));
    let s1 = vpaddlq_s16(vmull_high_s8(a0, b0));
    let s0 = vpadalq_s16(s0, vmull_s8(vget_low_s8(a1), vget_low_s8(b1)));
    let s1 = vpadalq_s16(s1, vmull_high_s8(a1, b1));
    vaddq_s32(s0, s1)
}

/// `Σ a_i b_i` over 32 lanes when every `|a_i b_i| <= 8191`: four products share an i16
/// lane (`SMULL` + three `SMLAL`) before one `SADDLP`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn dot32_narrow(
    a0: int8x16_t,
    a1: int8x16_t,
    b0: int8x16_t,
    b1: int8x16_t,
) -> int32x4_t {
    let p = vmull_s8(vget_low_s8(a0), vget_low_s8(b0));
    let p = vmlal_high_s8(p, a0, b0);
    let p = vmlal_s8(p, vget_low_s8(a1), vget_low_s8(b1));
    vpaddlq_s16(vmlal_high_s8(p, a1, b1))
}

/// `Σ a_i b_i` over 16 lanes when every `|a_i b_i| <= 16383`: two products per i16 lane.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn dot16_narrow(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    vpaddlq_s16(vmlal_high_s8(p, a, b))
}
