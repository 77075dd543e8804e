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

use crate::block_format::BlockFormat;
pub use crate::block_format::{ActFormat, Activations};
use crate::dispatch::Kernels;
use crate::formats::*;
use crate::pool::{SharedMut, ThreadPool};

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

/// Tokens up to which a product through the matrix–matrix kernels is a decode step (the
/// narrow kernels' widest tile): its chunks of rows are sized like a matrix–vector
/// product's, larger than [`GEMM_TILE_ROWS`], within the same tile buffer.
const NARROW_TILE_TOKENS: usize = 4;

/// Rows per chunk of a single-token product: enough chunks to balance the threads (and
/// the big and little cores), few enough that claiming them costs nothing.
fn matvec_chunk_rows(rows: usize, threads: usize) -> usize {
    (rows / (threads * 8)).clamp(16, 4096)
}

/// The row loop. Activation rows `..tiled` go through the matrix–matrix kernel: for each
/// chunk of [`GEMM_TILE_ROWS`] weight rows and group of up to [`GEMM_TILE_TOKENS`] of them,
/// one kernel call fills a tile, scattered to `y[t * rows + r]`. Rows `tiled..` go through
/// the dot kernel, `y[t * rows + r] = dot(W[r], x[t])`, each weight row read from memory
/// once and reused from cache for every one of them. With one row and nothing tiled, the
/// chunks are sized for a single token.
#[allow(clippy::too_many_arguments)]
fn product<W: Sync, A: Sync>(
    pool: &ThreadPool,
    w: &[W],
    bpr: usize,
    rows: usize,
    x: &[A],
    tokens: usize,
    tiled: usize,
    y: &mut [f32],
    dot: impl Fn(&[W], &[A]) -> f32 + Sync,
    gemm: impl Fn(&[W], &[A], usize, &mut [f32]) + Sync,
) {
    assert_eq!(
        y.len(),
        rows * tokens,
        "output must hold tokens x rows values"
    );
    assert!(tiled <= tokens, "{tiled} tiled rows of {tokens}");
    let chunk = if tiled == 0 && tokens == 1 {
        matvec_chunk_rows(rows, pool.threads())
    } else if (1..=NARROW_TILE_TOKENS).contains(&tiled) {
        // A decode product through the matrix–matrix kernels: as many rows per chunk as a
        // matrix–vector product (whole tiles of rows), so a kernel call starts cold, its
        // first rows' blocks all missing at once, as rarely as the balance allows.
        matvec_chunk_rows(rows, pool.threads())
            .next_multiple_of(GEMM_TILE_ROWS)
            .min(GEMM_TILE_ROWS * GEMM_TILE_TOKENS / NARROW_TILE_TOKENS)
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
            let nr = r1 - r0;
            for t0 in (0..tiled).step_by(GEMM_TILE_TOKENS) {
                let nt = GEMM_TILE_TOKENS.min(tiled - t0);
                let tile = &mut tile[..nr * nt];
                gemm(wc, &x[t0 * bpr..(t0 + nt) * bpr], bpr, tile);
                for t in 0..nt {
                    let at = (t0 + t) * rows;
                    // SAFETY: chunk `c` was claimed by this thread alone (fetch_add), and
                    // outputs `t * rows + r0..t * rows + r1` belong to no other chunk.
                    let y_t = unsafe { out.range_mut(at + r0..at + r1) };
                    for (r, o) in y_t.iter_mut().enumerate() {
                        *o = tile[r * nt + t];
                    }
                }
            }
            for (r, wr) in (r0..r1).zip(wc.chunks_exact(bpr)) {
                for t in tiled..tokens {
                    // SAFETY: as above: output `t * rows + r` belongs to chunk `c` only.
                    let o = unsafe { out.range_mut(t * rows + r..t * rows + r + 1) };
                    o[0] = dot(wr, &x[t * bpr..(t + 1) * bpr]);
                }
            }
        }
    });
}

/// `y = W x` for the rows of `x` (one for decode, several for prefill): `y` holds
/// `x.len()` rows of `w.rows()` values. One row goes through the dot kernel, several
/// through the matrix–matrix kernel ([`matmul_rows`] with all of them tiled).
pub fn matmul(
    pool: &ThreadPool,
    kernels: &Kernels,
    w: &Matrix<'_>,
    x: &Activations,
    y: &mut [f32],
) {
    let tiled = if x.len() == 1 { 0 } else { x.len() };
    matmul_rows(pool, kernels, w, x, tiled, y)
}

/// `y = W x` where rows `..tiled` of `x` go through the matrix–matrix kernel and the rest
/// through the dot kernel, in one pass over the weights. On paths that decode with their
/// matrix–matrix kernels ([`Kernels::decode_by_gemm`]) every row goes through them, the
/// few-token tiles of a decode step through the narrow ones.
///
/// Either way a row's result depends on that row alone, never on the other rows of the
/// call or on the thread count: a tiled row equals the matrix–matrix kernel's value for
/// it in any tile, a dot row equals [`matvec`] of it. The engine relies on this to batch
/// several sequences (prompt rows tiled, decoded tokens as dots) and still produce, token
/// for token, what each sequence produces alone.
pub fn matmul_rows(
    pool: &ThreadPool,
    kernels: &Kernels,
    w: &Matrix<'_>,
    x: &Activations,
    tiled: usize,
    y: &mut [f32],
) {
    assert_eq!(
        x.format(),
        w.act_format(),
        "activations are {:?}, {} weights need {:?}",
        x.format(),
        w.weights.ggml_type(),
        w.act_format()
    );
    assert_eq!(
        x.cols(),
        w.cols,
        "activation rows must be as long as weight rows"
    );
    let tiled = if kernels.decode_by_gemm() {
        x.len()
    } else {
        tiled
    };
    with_weights!(w.weights, |ws, _wrap| product_of(
        pool, kernels, ws, w, x, tiled, y
    ))
}

/// [`product`] for weights of type `W`, with its activation rows, dot and gemm.
fn product_of<W: BlockFormat>(
    pool: &ThreadPool,
    k: &Kernels,
    ws: &[W],
    w: &Matrix<'_>,
    x: &Activations,
    tiled: usize,
    y: &mut [f32],
) {
    let bpr = w.cols / W::ELEMS;
    product(
        pool,
        ws,
        bpr,
        w.rows,
        x.rows::<W::Act>(),
        x.len(),
        tiled,
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
    assert_eq!(x.len(), 1, "matvec takes exactly one activation row");
    matmul(pool, kernels, w, x, y)
}
