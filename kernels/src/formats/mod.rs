//! GGML block formats: the type table, `#[repr(C)]` block structs, dequantization to f32
//! and GGML's reference quantizers.
//!
//! [`Weights`] is the typed, zero-copy view of one tensor's bytes that the rest of the
//! crate computes on; it is built from raw bytes (e.g. a GGUF mapping) with
//! [`Weights::from_bytes`], which checks length and alignment instead of trusting them.

mod blocks;
mod dequant;
mod quant;
mod types;

pub use blocks::*;
pub use dequant::*;
pub use half::{bf16, f16};
pub use quant::*;
pub use types::GgmlType;

/// Why bytes could not be viewed as, or converted to, a given format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error(
        "type {0} has no kernels in Spillway (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K)"
    )]
    Unsupported(GgmlType),
    #[error("{ty}: {len} bytes is not a whole number of {block}-byte blocks")]
    Length {
        ty: GgmlType,
        len: usize,
        block: usize,
    },
    #[error("{ty}: data is not aligned to {align} bytes")]
    Alignment { ty: GgmlType, align: usize },
    #[error("{ty}: row length {cols} is not a multiple of the block size {block}")]
    RowLength {
        ty: GgmlType,
        cols: usize,
        block: usize,
    },
    #[error("{ty}: {blocks} blocks hold {have} values, not {rows} rows x {cols}")]
    Shape {
        ty: GgmlType,
        blocks: usize,
        have: usize,
        rows: usize,
        cols: usize,
    },
}

/// A zero-copy view of tensor data in one of the supported weight formats.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    Q8_0(&'a [BlockQ8_0]),
    Q4_0(&'a [BlockQ4_0]),
    Q4K(&'a [BlockQ4K]),
    Q5K(&'a [BlockQ5K]),
    Q6K(&'a [BlockQ6K]),
}

/// `with_weights!(w, |blocks, wrap| expr)`: `expr` for whichever variant the [`Weights`]
/// value `w` is, with `blocks` bound to its typed slice and `wrap` to the variant's
/// constructor. The one `match` over the formats that format-generic code needs
/// (`expr` is typically a call of a function generic over
/// [`BlockFormat`](crate::block_format::BlockFormat)).
macro_rules! with_weights {
    ($w:expr, |$x:ident, $wrap:ident| $body:expr) => {
        match $w {
            $crate::formats::Weights::F32($x) => {
                let $wrap = $crate::formats::Weights::F32;
                $body
            }
            $crate::formats::Weights::F16($x) => {
                let $wrap = $crate::formats::Weights::F16;
                $body
            }
            $crate::formats::Weights::BF16($x) => {
                let $wrap = $crate::formats::Weights::BF16;
                $body
            }
            $crate::formats::Weights::Q8_0($x) => {
                let $wrap = $crate::formats::Weights::Q8_0;
                $body
            }
            $crate::formats::Weights::Q4_0($x) => {
                let $wrap = $crate::formats::Weights::Q4_0;
                $body
            }
            $crate::formats::Weights::Q4K($x) => {
                let $wrap = $crate::formats::Weights::Q4K;
                $body
            }
            $crate::formats::Weights::Q5K($x) => {
                let $wrap = $crate::formats::Weights::Q5K;
                $body
            }
            $crate::formats::Weights::Q6K($x) => {
                let $wrap = $crate::formats::Weights::Q6K;
                $body
            }
        }
    };
}
pub(crate) use with_weights;

fn cast<T: WeightBlock>(bytes: &[u8]) -> Result<&[T], FormatError> {
    bytemuck::try_cast_slice(bytes).map_err(|e| match e {
        bytemuck::PodCastError::TargetAlignmentGreaterAndInputNotAligned => {
            FormatError::Alignment {
                ty: T::TYPE,
                align: align_of::<T>(),
            }
        }
        _ => FormatError::Length {
            ty: T::TYPE,
            len: bytes.len(),
            block: size_of::<T>(),
        },
    })
}

impl<'a> Weights<'a> {
    /// Views `bytes` as data of type `ty`, refusing unsupported types, partial blocks and
    /// misaligned data.
    pub fn from_bytes(ty: GgmlType, bytes: &'a [u8]) -> Result<Self, FormatError> {
        Ok(match ty {
            GgmlType::F32 => Weights::F32(cast(bytes)?),
            GgmlType::F16 => Weights::F16(cast(bytes)?),
            GgmlType::BF16 => Weights::BF16(cast(bytes)?),
            GgmlType::Q8_0 => Weights::Q8_0(cast(bytes)?),
            GgmlType::Q4_0 => Weights::Q4_0(cast(bytes)?),
            GgmlType::Q4_K => Weights::Q4K(cast(bytes)?),
            GgmlType::Q5_K => Weights::Q5K(cast(bytes)?),
            GgmlType::Q6_K => Weights::Q6K(cast(bytes)?),
            other => return Err(FormatError::Unsupported(other)),
        })
    }

    /// The GGML type of the data.
    pub fn ggml_type(&self) -> GgmlType {
        fn type_of<T: WeightBlock>(_: &[T]) -> GgmlType {
            T::TYPE
        }
        with_weights!(*self, |x, _wrap| type_of(x))
    }

    /// Number of blocks (values, for the plain float types).
    pub fn n_blocks(&self) -> usize {
        with_weights!(*self, |x, _wrap| x.len())
    }

    /// Number of values.
    pub fn n_elements(&self) -> usize {
        self.n_blocks() * self.ggml_type().block_elems()
    }

    /// Size of the data in bytes.
    pub fn n_bytes(&self) -> usize {
        self.n_blocks() * self.ggml_type().block_bytes()
    }

    /// The raw bytes behind the view.
    pub fn as_bytes(&self) -> &'a [u8] {
        with_weights!(*self, |x, _wrap| bytemuck::cast_slice(x))
    }

    /// Dequantizes everything into `out`, which must hold [`Self::n_elements`] values.
    pub fn dequantize(&self, out: &mut [f32]) {
        match *self {
            Weights::F32(x) => out.copy_from_slice(x),
            Weights::F16(x) => dequantize_f16(x, out),
            Weights::BF16(x) => dequantize_bf16(x, out),
            Weights::Q8_0(x) => dequantize_q8_0(x, out),
            Weights::Q4_0(x) => dequantize_q4_0(x, out),
            Weights::Q4K(x) => dequantize_q4_k(x, out),
            Weights::Q5K(x) => dequantize_q5_k(x, out),
            Weights::Q6K(x) => dequantize_q6_k(x, out),
        }
    }

    /// Blocks `start..end` of the view (a sub-range of rows, for instance).
    pub fn slice_blocks(&self, start: usize, end: usize) -> Weights<'a> {
        with_weights!(*self, |x, wrap| wrap(&x[start..end]))
    }
}

/// Quantizes `x` into freshly allocated blocks of `ty` with GGML's reference quantizer
/// (`spillway synth`, tests). Returns the bytes exactly as GGML would store them.
pub fn quantize_to_bytes(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>, FormatError> {
    fn run<T: WeightBlock>(x: &[f32], f: fn(&[f32], &mut [T])) -> Result<Vec<u8>, FormatError> {
        if !x.len().is_multiple_of(T::ELEMS) {
            return Err(FormatError::RowLength {
                ty: T::TYPE,
                cols: x.len(),
                block: T::ELEMS,
            });
        }
        let mut blocks = vec![T::zeroed(); x.len() / T::ELEMS];
        f(x, &mut blocks);
        Ok(bytemuck::cast_slice(&blocks).to_vec())
    }
    match ty {
        GgmlType::F32 => Ok(bytemuck::cast_slice(x).to_vec()),
        GgmlType::F16 => run(x, quantize_row_f16),
        GgmlType::BF16 => run(x, quantize_row_bf16),
        GgmlType::Q8_0 => run(x, quantize_row_q8_0),
        GgmlType::Q4_0 => run(x, quantize_row_q4_0),
        GgmlType::Q4_K => run(x, quantize_row_q4_k),
        GgmlType::Q5_K => run(x, quantize_row_q5_k),
        GgmlType::Q6_K => run(x, quantize_row_q6_k),
        other => Err(FormatError::Unsupported(other)),
    }
}
