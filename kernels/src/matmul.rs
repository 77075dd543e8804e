//! Matrix–vector (decode) and matrix–matrix (prefill) products over weight rows, split
//! across a [`ThreadPool`].
//!
//! `y[t][r] = dot(W[r], x[t])` for weight rows `r` and tokens `t`. Rows are handed out in
//! chunks from a shared counter, so faster cores take more chunks (big.LITTLE) and no thread
//! waits on a fixed share. In a product with several tokens, each chunk of rows is small
//! enough to stay in cache while every token passes over it: the weights, the expensive
//! part, stream from memory once per call whatever the number of tokens.
//!
//! Activations are quantized once per call into an [`Activations`] buffer sized up front,
//! so nothing here allocates.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::block_format::{ActBlock, BlockFormat};
use crate::dispatch::Kernels;
use crate::formats::*;
use crate::pool::{SharedMut, ThreadPool};

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

/// A weight matrix: `rows` rows of `cols` values, row-major, in a supported format.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    weights: Weights<'a>,
    rows: usize,
    cols: usize,
}

impl<'a> Matrix<'a> {
    /// Checks that `weights` holds exactly `rows` rows of `cols` values, whole blocks each.
    pub fn new(weights: Weights<'a>, rows: usize, cols: usize) -> Result<Self, FormatError> {
        let ty = weights.ggml_type();
        let block = ty.block_elems();
        if cols == 0 || !cols.is_multiple_of(block) {
            return Err(FormatError::RowLength { ty, cols, block });
        }
        let want = rows.checked_mul(cols / block);
        if want != Some(weights.n_blocks()) {
            return Err(FormatError::Shape {
                ty,
                blocks: weights.n_blocks(),
                have: weights.n_elements(),
                rows,
                cols,
            });
        }
        Ok(Matrix {
            weights,
            rows,
            cols,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn weights(&self) -> Weights<'a> {
        self.weights
    }

    /// The activation format this matrix multiplies.
    pub fn act_format(&self) -> ActFormat {
        ActFormat::for_weights(self.weights.ggml_type()).expect("Weights are always supported")
    }

    /// Dequantizes row `r` into `out` (`cols` values): the embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        self.row(r).weights.dequantize(out)
    }

    /// Row `r` alone, as a one-row matrix.
    pub fn row(&self, r: usize) -> Matrix<'a> {
        let bpr = self.cols / self.weights.ggml_type().block_elems();
        Matrix {
            weights: self.weights.slice_blocks(r * bpr, (r + 1) * bpr),
            rows: 1,
            cols: self.cols,
        }
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
    fn set_rows<A: ActBlock>(&mut self, kernels: &Kernels, x: &[f32]) {
        let blocks = x.len() / self.format.block_elems();
        A::quantize(kernels, x, &mut A::storage_mut(self)[..blocks]);
    }

    /// The rows held, as blocks of `A` (empty if `A` is not this buffer's format).
    fn rows<A: ActBlock>(&self) -> &[A] {
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

/// Rows per chunk of a multi-token product: each chunk of weights stays in cache while
/// every token passes over it. Large enough that a kernel's per-call work on the
/// activations (the x86 kernels sum each activation block once per call) is shared by
/// many rows; small enough that the 3B model's smallest matrices (1024 rows) still make
/// 16 chunks to balance the threads.
pub const GEMM_TILE_ROWS: usize = 64;
/// Tokens per call of a matrix–matrix kernel (its output tile, 32 KiB, lives on the
/// stack). Large enough that a kernel's per-call work on the weights (unpacking each
/// block into a register-friendly layout) is shared by a whole prefill batch of 128.
pub const GEMM_TILE_TOKENS: usize = 128;

/// Rows per chunk of a single-token product: enough chunks to balance the threads (and
/// the big and little cores), few enough that claiming them costs nothing.
fn matvec_chunk_rows(rows: usize, threads: usize) -> usize {
    (rows / (threads * 8)).clamp(16, 4096)
}

/// The row loop. One token: `y[r] = dot(W[r], x)` over chunks of rows. Several tokens:
/// for each chunk of [`GEMM_TILE_ROWS`] rows and group of up to [`GEMM_TILE_TOKENS`]
/// tokens, one matrix–matrix kernel call fills a tile, scattered to `y[t * rows + r]`.
#[allow(clippy::too_many_arguments)]
fn product<W: Sync, A: Sync>(
    pool: &ThreadPool,
    w: &[W],
    bpr: usize,
    rows: usize,
    x: &[A],
    tokens: usize,
    y: &mut [f32],
    dot: impl Fn(&[W], &[A]) -> f32 + Sync,
    gemm: impl Fn(&[W], &[A], usize, &mut [f32]) + Sync,
) {
    assert_eq!(
        y.len(),
        rows * tokens,
        "output must hold tokens x rows values"
    );
    let chunk = if tokens == 1 {
        matvec_chunk_rows(rows, pool.threads())
    } else {
        GEMM_TILE_ROWS
    };
    let n_chunks = rows.div_ceil(chunk);
    let next = AtomicUsize::new(0);
    let out = SharedMut::new(y);
    pool.run(|_, _| {
        let mut tile = [0f32; GEMM_TILE_ROWS * GEMM_TILE_TOKENS];
        loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= n_chunks {
                break;
            }
            let (r0, r1) = (c * chunk, ((c + 1) * chunk).min(rows));
            let wc = &w[r0 * bpr..r1 * bpr];
            if tokens == 1 {
                // SAFETY: chunk `c` was claimed by this thread alone (fetch_add), and outputs
                // `r0..r1` belong to no other chunk.
                let yc = unsafe { out.range_mut(r0..r1) };
                for (o, wr) in yc.iter_mut().zip(wc.chunks_exact(bpr)) {
                    *o = dot(wr, &x[..bpr]);
                }
                continue;
            }
            let nr = r1 - r0;
            for t0 in (0..tokens).step_by(GEMM_TILE_TOKENS) {
                let nt = GEMM_TILE_TOKENS.min(tokens - t0);
                let tile = &mut tile[..nr * nt];
                gemm(wc, &x[t0 * bpr..(t0 + nt) * bpr], bpr, tile);
                for t in 0..nt {
                    let at = (t0 + t) * rows;
                    // SAFETY: as above: outputs `t * rows + r0..t * rows + r1` belong to
                    // chunk `c` only.
                    let y_t = unsafe { out.range_mut(at + r0..at + r1) };
                    for (r, o) in y_t.iter_mut().enumerate() {
                        *o = tile[r * nt + t];
                    }
                }
            }
        }
    });
}

/// `y = W x` for the rows of `x` (one for decode, several for prefill): `y` holds
/// `x.len()` rows of `w.rows()` values.
pub fn matmul(
    pool: &ThreadPool,
    kernels: &Kernels,
    w: &Matrix<'_>,
    x: &Activations,
    y: &mut [f32],
) {
    assert_eq!(
        x.format,
        w.act_format(),
        "activations are {:?}, {} weights need {:?}",
        x.format,
        w.weights.ggml_type(),
        w.act_format()
    );
    assert_eq!(
        x.cols, w.cols,
        "activation rows must be as long as weight rows"
    );
    with_weights!(w.weights, |ws, _wrap| product_of(
        pool, kernels, ws, w, x, y
    ))
}

/// [`product`] for weights of type `W`, with its activation rows, dot and gemm.
fn product_of<W: BlockFormat>(
    pool: &ThreadPool,
    k: &Kernels,
    ws: &[W],
    w: &Matrix<'_>,
    x: &Activations,
    y: &mut [f32],
) {
    let bpr = w.cols / W::ELEMS;
    product(
        pool,
        ws,
        bpr,
        w.rows,
        x.rows::<W::Act>(),
        x.len,
        y,
        |a, b| W::dot(k, a, b),
        |a, b, p, o| W::gemm(k, a, b, p, o),
    )
}

/// `y = W x` for a single activation row (decode): [`matmul`] with one token.
pub fn matvec(
    pool: &ThreadPool,
    kernels: &Kernels,
    w: &Matrix<'_>,
    x: &Activations,
    y: &mut [f32],
) {
    assert_eq!(x.len, 1, "matvec takes exactly one activation row");
    matmul(pool, kernels, w, x, y)
}
