//! Quantized dots for AArch64 cores with the ARMv8.2 dot-product extension (Cortex-A55,
//! A76, A78: Raspberry Pi 5, RK3588, Jetson Orin). The float dots and the quantizers gain
//! nothing from it; the dispatch table takes those from [`super::neon`].
//!
//! `SDOT Vd.4S, Vn.16B, Vm.16B` adds four 4-way i8 products into each i32 lane, so 16
//! products cost one instruction instead of the `SMULL`/`SMLAL`/`SADALP` sequence of the
//! baseline path, and no intermediate i16 lane can overflow: every format, Q8_0 included,
//! is exact with plain chained `SDOT`s. The intrinsic (`vdotq_s32`) is unstable in Rust, so
//! [`sdot`] issues the instruction with `asm!`. It is a `#[target_feature(enable =
//! "dotprod")]` function, which lets LLVM's assembler accept the mnemonic (no
//! `.arch_extension` directive needed) and lets it inline into the kernels below, which are
//! compiled with the same features.
//!
//! Everything else is shared with the NEON path: the quantized dots are the ones of
//! [`super::quant_dots`], instantiated here with [`sdot`] as the integer product (two
//! chained `SDOT`s per 32 values, one per 16), and the float dots and quantizers are
//! [`super::float`]'s and [`super::quantize`]'s.
//!
//! Compiled, the loop bodies are 37 instructions per two Q4_0 blocks (36 weight bytes), 31
//! per two Q8_0 blocks (68), 114 per Q4_K super-block (144), 145 per Q5_K (176) and 149 per
//! Q6_K (210). A Cortex-A76 decodes 4 instructions per cycle and runs `SDOT` on both of its
//! SIMD pipes, so one core consumes roughly 4-9 bytes per cycle, 9-21 GB/s at 2.4 GHz:
//! two cores already match what the LPDDR4X of a Pi 5 or RK3588 delivers, so
//! matrix-vector products are bound by memory bandwidth, as decode should be.

use core::arch::aarch64::*;
use core::arch::asm;

use super::common;
use super::quant_dots::quant_dots;
use crate::formats::*;

quant_dots! {
    features: "neon,dotprod",
    needs: "NEON and the dot-product extension",
    wide: dot32,
    narrow: dot32,
    dot16: dot16,
}

/// `acc + [Σ_{k<4} a[4i+k] · b[4i+k] for each lane i]` with `SDOT`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: this function is only callable where the dot-product extension is enabled
    // (its `target_feature`), so SDOT exists; it reads and writes only the named
    // registers.
    unsafe {
        asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
             acc = inout(vreg) acc, a = in(vreg) a, b = in(vreg) b,
             options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// `Σ a_i b_i` over 32 lanes as an i32x4 of partial sums (two chained `SDOT`s).
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn dot32(a0: int8x16_t, a1: int8x16_t, b0: int8x16_t, b1: int8x16_t) -> int32x4_t {
    sdot(sdot(vdupq_n_s32(0), a0, b0), a1, b1)
}

/// `Σ a_i b_i` over 16 lanes as an i32x4 of partial sums: one `SDOT`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn dot16(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    sdot(vdupq_n_s32(0), a, b)
}
