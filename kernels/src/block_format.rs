//! The block-format traits, in the spirit of candle's `GgmlType`: what generic code
//! ([`crate::matmul`](mod@crate::matmul)) needs to know of a weight storage type (its activation type, its dot
//! product and its matrix–matrix product) and of an activation type (its format and its
//! quantizer).
//!
//! It also holds what those activation types fill: [`ActFormat`] and the [`Activations`]
//! buffer, allocated once and quantized into by the format's quantizer.
//!
//! The methods take the [`Kernels`] of the path chosen at run time and call its table, so
//! [`crate::dispatch`] stays the only door to the SIMD code; these traits only turn "which
//! format" from a `match` into a type parameter.

use crate::dispatch::Kernels;
use crate::formats::*;

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

/// The activation format a weight format is multiplied with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActFormat {
    /// Float weights (F32, F16, BF16) take f32 activations.
    F32,
    /// Q4_0 and Q8_0 weights take Q8_0 activations.
    Q8_0,
    /// The k-quants take Q8_K activations.
    Q8K,
}

impl ActFormat {
    /// The activation format for weights of type `ty` (`None` if `ty` is unsupported).
    pub fn for_weights(ty: GgmlType) -> Option<ActFormat> {
        Some(match ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => ActFormat::F32,
            GgmlType::Q8_0 | GgmlType::Q4_0 => ActFormat::Q8_0,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => ActFormat::Q8K,
            _ => return None,
        })
    }

    /// Values per block.
    pub fn block_elems(self) -> usize {
        match self {
            ActFormat::F32 => 1,
            ActFormat::Q8_0 => QK,
            ActFormat::Q8K => QK_K,
        }
    }

    /// Bytes per row of `cols` values.
    pub fn row_bytes(self, cols: usize) -> usize {
        let block = match self {
            ActFormat::F32 => size_of::<f32>(),
            ActFormat::Q8_0 => size_of::<BlockQ8_0>(),
            ActFormat::Q8K => size_of::<BlockQ8K>(),
        };
        cols / self.block_elems() * block
    }
}

/// Activation rows in the format some weights need, in a buffer allocated once for up to
/// `capacity` rows of `cols` values.
#[derive(Clone, Debug)]
pub struct Activations {
    format: ActFormat,
    cols: usize,
    capacity: usize,
    len: usize,
    // One of these holds the rows, the one of `format` ([`ActBlock::storage`]).
    pub(crate) f32s: Vec<f32>,
    pub(crate) q8_0: Vec<BlockQ8_0>,
    pub(crate) q8k: Vec<BlockQ8K>,
}

impl Activations {
    /// A buffer for up to `capacity` rows of `cols` values in `format`.
    /// Panics if `cols` is not a multiple of the format's block size.
    pub fn new(format: ActFormat, cols: usize, capacity: usize) -> Activations {
        assert!(
            cols.is_multiple_of(format.block_elems()),
            "{cols} values are not whole {format:?} blocks"
        );
        let blocks = cols / format.block_elems() * capacity;
        let zero8 = BlockQ8_0 {
            d: f16::ZERO,
            qs: [0; QK],
        };
        Activations {
            format,
            cols,
            capacity,
            len: 0,
            f32s: if format == ActFormat::F32 {
                vec![0.0; blocks]
            } else {
                Vec::new()
            },
            q8_0: if format == ActFormat::Q8_0 {
                vec![zero8; blocks]
            } else {
                Vec::new()
            },
            q8k: if format == ActFormat::Q8K {
                vec![bytemuck::Zeroable::zeroed(); blocks]
            } else {
                Vec::new()
            },
        }
    }

    pub fn format(&self) -> ActFormat {
        self.format
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Rows currently held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the buffer occupies (for memory plans).
    pub fn footprint(&self) -> usize {
        self.format.row_bytes(self.cols) * self.capacity
    }

    /// Quantizes `x` into the first rows of the storage of `A` (the format's).
    pub(crate) fn set_rows<A: ActBlock>(&mut self, kernels: &Kernels, x: &[f32]) {
        let blocks = x.len() / self.format.block_elems();
        A::quantize(kernels, x, &mut A::storage_mut(self)[..blocks]);
    }

    /// The rows held, as blocks of `A` (empty if `A` is not this buffer's format).
    pub(crate) fn rows<A: ActBlock>(&self) -> &[A] {
        let blocks = self.len * self.cols / self.format.block_elems();
        if A::FORMAT == self.format {
            &A::storage(self)[..blocks]
        } else {
            &[]
        }
    }

    /// Replaces the contents with the rows of `x` (`n * cols` values), quantized with the
    /// kernels' activation quantizer.
    pub fn set(&mut self, kernels: &Kernels, x: &[f32]) {
        assert!(
            x.len().is_multiple_of(self.cols) && x.len() / self.cols <= self.capacity,
            "{} values are not at most {} rows of {}",
            x.len(),
            self.capacity,
            self.cols
        );
        let n = x.len() / self.cols;
        match self.format {
            ActFormat::F32 => self.set_rows::<f32>(kernels, x),
            ActFormat::Q8_0 => self.set_rows::<BlockQ8_0>(kernels, x),
            ActFormat::Q8K => self.set_rows::<BlockQ8K>(kernels, x),
        }
        self.len = n;
    }
}
