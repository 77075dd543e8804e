//! The block-format traits, in the spirit of candle's `GgmlType`: what generic code
//! ([`crate::matmul`](mod@crate::matmul)) needs to know of a weight storage type (its activation type, its dot
//! product and its matrix–matrix product) and of an activation type (its format and its
//! quantizer).
//!
//! The methods take the [`Kernels`] of the path chosen at run time and call its table, so
//! [`crate::dispatch`] stays the only door to the SIMD code; these traits only turn "which
//! format" from a `match` into a type parameter.

use crate::dispatch::Kernels;
use crate::formats::*;
use crate::matmul::{ActFormat, Activations};

/// A block type that activation rows are quantized into before a product.
pub trait ActBlock: Copy + Send + Sync + 'static {
    /// The format tag of this activation type.
    const FORMAT: ActFormat;

    /// Quantizes `x` into `out` (`x.len() == out.len() * elements per block`) with the
    /// kernels' activation quantizer.
    fn quantize(k: &Kernels, x: &[f32], out: &mut [Self]);

    /// The storage of `a` for this type (empty if `a` holds another format).
    fn storage(a: &Activations) -> &[Self];

    /// The same, mutable.
    fn storage_mut(a: &mut Activations) -> &mut [Self];
}

/// A weight storage type with kernels: its activation type, dot product and matrix–matrix
/// product, each taken from the dispatch table of `k`.
pub trait BlockFormat: WeightBlock {
    /// What rows of these weights are multiplied with.
    type Act: ActBlock;

    /// `Σ w_i x_i` over one weight row and one activation row of equal block counts.
    fn dot(k: &Kernels, w: &[Self], x: &[Self::Act]) -> f32;

    /// `out[r * nt + t] = dot(w row r, x row t)` over rows of `bpr` blocks.
    fn gemm(k: &Kernels, w: &[Self], x: &[Self::Act], bpr: usize, out: &mut [f32]);
}

macro_rules! act_block {
    ($t:ty, $format:ident, $field:ident, |$k:ident, $x:ident, $out:ident| $quantize:expr) => {
        impl ActBlock for $t {
            const FORMAT: ActFormat = ActFormat::$format;

            #[inline]
            fn quantize($k: &Kernels, $x: &[f32], $out: &mut [Self]) {
                $quantize
            }

            #[inline]
            fn storage(a: &Activations) -> &[Self] {
                &a.$field
            }

            #[inline]
            fn storage_mut(a: &mut Activations) -> &mut [Self] {
                &mut a.$field
            }
        }
    };
}

act_block!(f32, F32, f32s, |_k, x, out| out.copy_from_slice(x));
act_block!(BlockQ8_0, Q8_0, q8_0, |k, x, out| k.quantize_q8_0(x, out));
act_block!(BlockQ8K, Q8K, q8k, |k, x, out| k.quantize_q8_k(x, out));

macro_rules! block_format {
    ($w:ty, $a:ty, $dot:ident, $gemm:ident) => {
        impl BlockFormat for $w {
            type Act = $a;

            #[inline]
            fn dot(k: &Kernels, w: &[Self], x: &[$a]) -> f32 {
                k.$dot(w, x)
            }

            #[inline]
            fn gemm(k: &Kernels, w: &[Self], x: &[$a], bpr: usize, out: &mut [f32]) {
                k.$gemm(w, x, bpr, out)
            }
        }
    };
}

block_format!(f32, f32, dot_f32, gemm_f32);
block_format!(f16, f32, dot_f16, gemm_f16);
block_format!(bf16, f32, dot_bf16, gemm_bf16);
block_format!(BlockQ8_0, BlockQ8_0, dot_q8_0, gemm_q8_0);
block_format!(BlockQ4_0, BlockQ8_0, dot_q4_0, gemm_q4_0);
block_format!(BlockQ4K, BlockQ8K, dot_q4_k, gemm_q4_k);
block_format!(BlockQ5K, BlockQ8K, dot_q5_k, gemm_q5_k);
block_format!(BlockQ6K, BlockQ8K, dot_q6_k, gemm_q6_k);
