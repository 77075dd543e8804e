//! Matrix products over the thread pool: whatever the thread count and chunking, a
//! one-token product equals the one-row products bit for bit (the dot products, or on
//! paths that decode with their matrix–matrix kernels the one-token kernel), and a
//! multi-token product equals the matrix–matrix kernel applied to each of its tiles; and
//! all products agree with an f64 evaluation of the dequantized operands. A mixed product
//! (some rows tiled, the rest as dots) gives every row what it gets alone, whatever the
//! number of rows: what batching sequences together in the engine relies on.

mod support;

use spillway_kernels::dispatch::{KernelPath, Kernels};
use spillway_kernels::formats::*;
use spillway_kernels::matmul::{
    ActFormat, Activations, GEMM_TILE_ROWS, GEMM_TILE_TOKENS, Matrix, matmul, matmul_rows, matvec,
};
use spillway_kernels::pool::{PoolConfig, ThreadPool};
use support::Rng;

const TYPES: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// The value a multi-token product must hold at (row r, token t): the matrix–matrix kernel
/// applied to the tile containing it, exactly as the product tiles rows and tokens.
fn tile_value(k: &Kernels, w: &Matrix<'_>, r: usize, t: usize, xf: &[f32], tokens: usize) -> f32 {
    let cols = w.cols();
    let (r0, t0) = (
        r / GEMM_TILE_ROWS * GEMM_TILE_ROWS,
        t / GEMM_TILE_TOKENS * GEMM_TILE_TOKENS,
    );
    let nr = GEMM_TILE_ROWS.min(w.rows() - r0);
    let nt = GEMM_TILE_TOKENS.min(tokens - t0);
    let mut x = Activations::new(w.act_format(), cols, nt);
    x.set(k, &xf[t0 * cols..(t0 + nt) * cols]);
    let mut y = vec![0.0; nr * nt];
    let rows: Vec<Matrix<'_>> = (r0..r0 + nr).map(|i| w.row(i)).collect();
    // Reassemble the tile's rows as one matrix and multiply with a one-thread pool: the
    // product then makes exactly one kernel call for the tile.
    let bytes: Vec<u8> = rows
        .iter()
        .flat_map(|m| m.weights().as_bytes().to_vec())
        .collect();
    let aligned = spillway_kernels::probe::AlignedBytes::copy_of(&bytes);
    let tile = Matrix::new(
        Weights::from_bytes(w.weights().ggml_type(), aligned.bytes()).unwrap(),
        nr,
        cols,
    )
    .unwrap();
    let single = ThreadPool::new(PoolConfig::with_threads(1)).unwrap();
    matmul(&single, k, &tile, &x, &mut y);
    y[(t - t0) * nr + (r - r0)]
}

/// One row's dot product through the kernels' single-row entry points.
fn row_dot(k: &Kernels, w: &Matrix<'_>, r: usize, x: &Activations, t: usize, xf: &[f32]) -> f32 {
    let row = w.row(r).weights();
    let cols = w.cols();
    // Re-quantize token t alone: quantization is per block, so this equals its slice.
    let mut one = Activations::new(x.format(), cols, 1);
    one.set(k, &xf[t * cols..(t + 1) * cols]);
    let mut y = [0.0f32];
    let single = ThreadPool::new(PoolConfig::with_threads(1)).unwrap();
    let m = Matrix::new(row, 1, cols).unwrap();
    matvec(&single, k, &m, &one, &mut y);
    y[0]
}

#[test]
fn products_equal_row_dots_for_any_threads_and_tokens() {
    let mut rng = Rng(42);
    for k in KernelPath::supported()
        .into_iter()
        .map(|p| Kernels::new(p).unwrap())
    {
        for ty in TYPES {
            let cols = 512;
            for (rows, tokens, threads) in
                [(1, 1, 1), (37, 1, 2), (100, 3, 3), (65, 7, 2), (300, 1, 4)]
            {
                let wf = rng.vec(rows * cols);
                let bytes = quantize_to_bytes(ty, &wf).unwrap();
                let w = Matrix::new(Weights::from_bytes(ty, &bytes).unwrap(), rows, cols).unwrap();
                let xf = rng.vec(tokens * cols);
                let mut x = Activations::new(w.act_format(), cols, tokens);
                x.set(&k, &xf);
                let pool = ThreadPool::new(PoolConfig::with_threads(threads)).unwrap();
                let mut y = vec![f32::NAN; rows * tokens];
                matmul(&pool, &k, &w, &x, &mut y);
                for t in 0..tokens {
                    for r in [0, rows / 2, rows - 1] {
                        let want = if tokens == 1 {
                            row_dot(&k, &w, r, &x, t, &xf)
                        } else {
                            tile_value(&k, &w, r, t, &xf, tokens)
                        };
                        assert_eq!(
                            y[t * rows + r].to_bits(),
                            want.to_bits(),
                            "{} {ty} rows={rows} tokens={tokens} threads={threads} t={t} r={r}",
                            k.path()
                        );
                    }
                }
                assert!(y.iter().all(|v| v.is_finite()), "every output was written");
            }
        }
    }
}

#[test]
fn a_rows_result_does_not_depend_on_the_other_rows_of_the_product() {
    let mut rng = Rng(3);
    for k in KernelPath::supported()
        .into_iter()
        .map(|p| Kernels::new(p).unwrap())
    {
        for ty in TYPES {
            let (rows, cols, threads) = (GEMM_TILE_ROWS + 9, 512, 2);
            let wf = rng.vec(rows * cols);
            let bytes = quantize_to_bytes(ty, &wf).unwrap();
            let w = Matrix::new(Weights::from_bytes(ty, &bytes).unwrap(), rows, cols).unwrap();
            let pool = ThreadPool::new(PoolConfig::with_threads(threads)).unwrap();
            let run = |xf: &[f32], tiled: usize| {
                let n = xf.len() / cols;
                let mut x = Activations::new(w.act_format(), cols, n);
                x.set(&k, xf);
                let mut y = vec![f32::NAN; rows * n];
                matmul_rows(&pool, &k, &w, &x, tiled, &mut y);
                y
            };
            // 5 tiled rows then 3 dot rows, against each row alone (tiled alone: a tile of
            // one; dot alone: matvec) and against another mix of the same rows. Nothing is
            // promised between a tiled and a dot row of the same input, except on paths
            // that multiply decode rows with their matrix–matrix kernels too
            // (`decode_by_gemm`): the other SIMD kernels of quantized weights accumulate in
            // another order.
            let xf = rng.vec(8 * cols);
            let mixed = run(&xf, 5);
            let other = run(&xf[cols..7 * cols], 3);
            // Tiles of two, three and four rows (narrow kernels where the path has them).
            for n in 2..=4 {
                let few = run(&xf[..n * cols], n);
                for (i, (a, b)) in few.iter().zip(&mixed).enumerate() {
                    let (t, r) = (i / rows, i % rows);
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{} {ty} t={t} r={r}: {n} rows vs 8",
                        k.path()
                    );
                }
            }
            for t in 0..8 {
                let alone = run(&xf[t * cols..(t + 1) * cols], usize::from(t < 5));
                if t > 0 {
                    assert_eq!(
                        alone,
                        run(&xf[t * cols..(t + 1) * cols], usize::from(t < 5)),
                        "deterministic"
                    );
                }
                for r in 0..rows {
                    let got = mixed[t * rows + r].to_bits();
                    let what = format!("{} {ty} t={t} r={r}", k.path());
                    assert_eq!(got, alone[r].to_bits(), "{what}: mixed vs alone");
                    if (1..4).contains(&t) || (5..7).contains(&t) {
                        // In `other`, rows 1..4 are tiled and 4..7 are dots, as in `mixed`.
                        assert_eq!(
                            got,
                            other[(t - 1) * rows + r].to_bits(),
                            "{what}: another mix"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn products_match_dequantized_f64_evaluation() {
    let mut rng = Rng(7);
    let k = Kernels::best();
    let pool = ThreadPool::new(PoolConfig::with_threads(2)).unwrap();
    let (rows, cols, tokens) = (48, 768, 2);
    for ty in TYPES {
        let wf = rng.vec(rows * cols);
        let bytes = quantize_to_bytes(ty, &wf).unwrap();
        let weights = Weights::from_bytes(ty, &bytes).unwrap();
        let w = Matrix::new(weights, rows, cols).unwrap();
        let mut wd = vec![0.0f32; rows * cols];
        weights.dequantize(&mut wd);
        let xf = rng.vec(tokens * cols);
        let mut x = Activations::new(w.act_format(), cols, tokens);
        x.set(&k, &xf);
        let mut y = vec![0.0; rows * tokens];
        matmul(&pool, &k, &w, &x, &mut y);
        // Activation quantization (8-bit) bounds the error: ~0.4% of the magnitude.
        let rel = if w.act_format() == ActFormat::F32 {
            1e-5
        } else {
            1e-2
        };
        for t in 0..tokens {
            for r in 0..rows {
                let (mut exact, mut mag) = (0.0f64, 0.0f64);
                for c in 0..cols {
                    let p = f64::from(wd[r * cols + c]) * f64::from(xf[t * cols + c]);
                    exact += p;
                    mag += p.abs();
                }
                let got = f64::from(y[t * rows + r]);
                assert!(
                    (got - exact).abs() <= rel * mag,
                    "{ty} t={t} r={r}: {got} vs {exact} (magnitude {mag})"
                );
            }
        }
    }
}

#[test]
fn shapes_are_validated() {
    let data = vec![0.0f32; 12];
    let w = Weights::F32(&data);
    assert!(Matrix::new(w, 3, 4).is_ok());
    assert_eq!(
        Matrix::new(w, 4, 4).unwrap_err(),
        FormatError::Shape {
            ty: GgmlType::F32,
            blocks: 12,
            have: 12,
            rows: 4,
            cols: 4
        }
    );
    assert_eq!(
        Matrix::new(w, 3, 0).unwrap_err(),
        FormatError::RowLength {
            ty: GgmlType::F32,
            cols: 0,
            block: 1
        }
    );
    let q = vec![0u8; 18 * 2];
    let wq = Weights::from_bytes(GgmlType::Q4_0, &q).unwrap();
    assert!(Matrix::new(wq, 1, 64).is_ok());
    // 48 is not a whole number of 32-blocks.
    assert_eq!(
        Matrix::new(wq, 2, 48).unwrap_err(),
        FormatError::RowLength {
            ty: GgmlType::Q4_0,
            cols: 48,
            block: 32
        }
    );
    assert_eq!(
        Weights::from_bytes(GgmlType::Q4_0, &q[..35]).unwrap_err(),
        FormatError::Length {
            ty: GgmlType::Q4_0,
            len: 35,
            block: 18
        }
    );
    assert_eq!(
        Weights::from_bytes(GgmlType::IQ2_XXS, &q).unwrap_err(),
        FormatError::Unsupported(GgmlType::IQ2_XXS)
    );
    let f = [0.0f32; 3];
    let misaligned = &bytemuck::cast_slice::<f32, u8>(&f)[1..9];
    assert!(matches!(
        Weights::from_bytes(GgmlType::F32, misaligned),
        Err(FormatError::Alignment { .. })
    ));
}
