//! Every kernel path this CPU supports, held to the scalar reference.
//!
//! Property tests draw random sizes (single blocks, odd counts, tails of the float dots),
//! random bit patterns for the packed quants, and scales from subnormal to the f16 maximum.
//! Fixed cases cover the 3B model's row lengths. The integer parts of the quantized dots are
//! exact, so the budgets only cover f32 summation order:
//!
//! | kernel | budget: abs(path - scalar) <= |
//! |---|---|
//! | F32/F16/BF16 · F32 | 2e-5 x sum(abs(w_i x_i)) (scalar sums in f64, SIMD in f32 lanes) |
//! | Q8_0/Q4_0 · Q8_0 | 1e-5 x sum over blocks of abs(d_w d_x sumi) |
//! | Q4_K/Q5_K · Q8_K | 1e-5 x sum over blocks of (abs(d d_x sumi) + abs(dmin d_x summins)) |
//! | Q6_K · Q8_K | 1e-5 x sum over blocks of abs(d d_x sumi) |
//! | activation quantizers | scales within 1 ulp of f16/f32, each quant within 1 |
//! | matrix–matrix kernels | each (row, token) output: its format's dot budget above |
//! | rmsnorm, softmax, silu_mul | see `ops` below |
//!
//! Set `SPILLWAY_EXPECT_PATH` to assert which path the dispatcher picks (the qemu runs use
//! it: cortex-a53 must pick `neon`, cortex-a76 `dotprod`).
//!
//! A CPU (or emulator) with no SIMD path would leave these tests nothing to compare and
//! they would pass vacuously, so every test here fails instead, unless
//! `SPILLWAY_ALLOW_SCALAR_ONLY=1` says that a scalar-only run is intended.

mod support;

use proptest::prelude::*;
use spillway_kernels::dispatch::{self, DispatchError, KernelPath, Kernels};
use spillway_kernels::formats::*;
use support::Rng;

/// Environment variable that lets these tests pass with no SIMD path to test.
const ENV_ALLOW_SCALAR_ONLY: &str = "SPILLWAY_ALLOW_SCALAR_ONLY";

/// The SIMD paths this CPU supports. Panics if there are none, unless
/// `SPILLWAY_ALLOW_SCALAR_ONLY=1`: a run that tests nothing must not look like a pass.
fn simd_paths() -> Vec<Kernels> {
    let paths: Vec<Kernels> = KernelPath::supported()
        .into_iter()
        .filter(|&p| p != KernelPath::Scalar)
        .map(|p| Kernels::new(p).unwrap())
        .collect();
    assert!(
        !paths.is_empty() || std::env::var(ENV_ALLOW_SCALAR_ONLY).is_ok_and(|v| v.trim() == "1"),
        "no SIMD kernel path on this CPU ({}), so nothing would be held to the scalar \
         reference; set {ENV_ALLOW_SCALAR_ONLY}=1 if a scalar-only run is intended",
        dispatch::cpu_summary()
    );
    paths
}

#[test]
fn some_simd_path_is_tested() {
    let paths = simd_paths();
    eprintln!(
        "SIMD paths under test: {:?}",
        paths.iter().map(|k| k.path().name()).collect::<Vec<_>>()
    );
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

// ---------------------------------------------------------------- generators

/// A finite f16 scale: mostly ordinary magnitudes, sometimes extreme (subnormal, maximum),
/// sometimes zero or negative.
fn scale_f16() -> impl Strategy<Value = f16> {
    prop_oneof![
        8 => (1e-4f32..1.0).prop_map(f16::from_f32),
        1 => (-1.0f32..-1e-4).prop_map(f16::from_f32),
        1 => Just(f16::from_f32(65504.0)),
        1 => Just(f16::from_bits(1)), // smallest subnormal
        1 => Just(f16::ZERO),
    ]
}

fn bytes<const N: usize>() -> impl Strategy<Value = [u8; N]> {
    proptest::collection::vec(any::<u8>(), N).prop_map(|v| v.try_into().unwrap())
}

fn q4_0_block() -> impl Strategy<Value = BlockQ4_0> {
    (scale_f16(), bytes::<16>()).prop_map(|(d, qs)| BlockQ4_0 { d, qs })
}

fn q8_0_block() -> impl Strategy<Value = BlockQ8_0> {
    (scale_f16(), bytes::<32>()).prop_map(|(d, qs)| BlockQ8_0 {
        d,
        qs: qs.map(|b| b as i8),
    })
}

fn q4_k_block() -> impl Strategy<Value = BlockQ4K> {
    (scale_f16(), scale_f16(), bytes::<12>(), bytes::<128>()).prop_map(|(d, dmin, scales, qs)| {
        BlockQ4K {
            d,
            dmin,
            scales,
            qs,
        }
    })
}

fn q5_k_block() -> impl Strategy<Value = BlockQ5K> {
    (
        scale_f16(),
        scale_f16(),
        bytes::<12>(),
        bytes::<32>(),
        bytes::<128>(),
    )
        .prop_map(|(d, dmin, scales, qh, qs)| BlockQ5K {
            d,
            dmin,
            scales,
            qh,
            qs,
        })
}

fn q6_k_block() -> impl Strategy<Value = BlockQ6K> {
    (scale_f16(), bytes::<128>(), bytes::<64>(), bytes::<16>()).prop_map(|(d, ql, qh, sc)| {
        BlockQ6K {
            ql,
            qh,
            scales: sc.map(|b| b as i8),
            d,
        }
    })
}

/// Q8_K activations as the quantizer makes them: values in [-127, 127] with consistent
/// `bsums`, any scale.
fn q8_k_block() -> impl Strategy<Value = BlockQ8K> {
    (
        prop_oneof![4 => 1e-4f32..10.0, 1 => Just(1e-30f32), 1 => Just(1e6f32)],
        proptest::collection::vec(-127i8..=127, 256),
    )
        .prop_map(|(d, qs)| {
            let qs: [i8; 256] = qs.try_into().unwrap();
            let mut bsums = [0i16; 16];
            for (s, c) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
                *s = c.iter().map(|&q| i16::from(q)).sum();
            }
            BlockQ8K { d, qs, bsums }
        })
}

/// Blocks of a weight format paired with activation blocks, `1..=max` of each.
fn pairs<W: std::fmt::Debug, A: std::fmt::Debug>(
    w: impl Strategy<Value = W>,
    a: impl Strategy<Value = A>,
    max: usize,
) -> impl Strategy<Value = Vec<(W, A)>> {
    proptest::collection::vec((w, a), 1..=max)
}

/// Float vectors of any length 1..=`max` (tails of every SIMD width), NaN-free, with
/// magnitudes from tiny to large.
fn floats(max: usize) -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
    (1..=max).prop_flat_map(|n| {
        let v = || {
            proptest::collection::vec(
                prop_oneof![
                    6 => -2.0f32..2.0,
                    1 => -1e15f32..1e15,
                    1 => -1e-20f32..1e-20,
                    1 => Just(0.0f32),
                ],
                n,
            )
        };
        (v(), v())
    })
}

// ---------------------------------------------------------------- budgets

fn close(path: KernelPath, what: &str, got: f32, want: f32, magnitude: f64, rel: f64) {
    let err = (f64::from(got) - f64::from(want)).abs();
    let budget = rel * magnitude + 1e-30;
    assert!(
        err <= budget,
        "{path} {what}: got {got}, scalar {want}, error {err:e} > budget {budget:e} (magnitude {magnitude:e})"
    );
}

fn mag_q8_0_like(w: &[(f32, i32)]) -> f64 {
    // (d_w * d_x, integer sum) per block
    w.iter()
        .map(|&(d, s)| (f64::from(d) * f64::from(s)).abs())
        .sum()
}

fn isum(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

// ---------------------------------------------------------------- dot products

fn check_q4_0(k: &Kernels, blocks: &[(BlockQ4_0, BlockQ8_0)]) {
    let (w, x): (Vec<_>, Vec<_>) = blocks.iter().copied().unzip();
    verify_q4_0(k.path(), &w, &x, k.dot_q4_0(&w, &x));
}

/// Holds `got`, a path's value for the pair of rows `w`, `x`, to the scalar dot.
fn verify_q4_0(path: KernelPath, w: &[BlockQ4_0], x: &[BlockQ8_0], got: f32) {
    let blocks: Vec<(BlockQ4_0, BlockQ8_0)> = w.iter().copied().zip(x.iter().copied()).collect();
    let want = Kernels::scalar().dot_q4_0(w, x);
    let mag = mag_q8_0_like(
        &blocks
            .iter()
            .map(|(a, b)| {
                let vals: Vec<i8> = (0..32)
                    .map(|j| {
                        let q = if j < 16 {
                            a.qs[j] & 0xF
                        } else {
                            a.qs[j - 16] >> 4
                        };
                        q as i8 - 8
                    })
                    .collect();
                (a.d.to_f32() * b.d.to_f32(), isum(&vals, &b.qs))
            })
            .collect::<Vec<_>>(),
    );
    close(path, "Q4_0·Q8_0", got, want, mag, 1e-5);
}

fn check_q8_0(k: &Kernels, blocks: &[(BlockQ8_0, BlockQ8_0)]) {
    let (w, x): (Vec<_>, Vec<_>) = blocks.iter().copied().unzip();
    verify_q8_0(k.path(), &w, &x, k.dot_q8_0(&w, &x));
}

/// Holds `got`, a path's value for the pair of rows `w`, `x`, to the scalar dot.
fn verify_q8_0(path: KernelPath, w: &[BlockQ8_0], x: &[BlockQ8_0], got: f32) {
    let blocks: Vec<(BlockQ8_0, BlockQ8_0)> = w.iter().copied().zip(x.iter().copied()).collect();
    let want = Kernels::scalar().dot_q8_0(w, x);
    let mag = mag_q8_0_like(
        &blocks
            .iter()
            .map(|(a, b)| (a.d.to_f32() * b.d.to_f32(), isum(&a.qs, &b.qs)))
            .collect::<Vec<_>>(),
    );
    close(path, "Q8_0·Q8_0", got, want, mag, 1e-5);
}

/// Magnitude of the two halves of a k4 (Q4_K/Q5_K) dot: values `v` (0..31) per element.
fn mag_k4(d: f16, dmin: f16, scales: &[u8; 12], v: &[i8; 256], b: &BlockQ8K) -> f64 {
    let (sc, mn) = scales_mins_k4(scales);
    let mut sumi = 0i64;
    for j in 0..8 {
        sumi += i64::from(sc[j])
            * i64::from(isum(&v[32 * j..32 * j + 32], &b.qs[32 * j..32 * j + 32])).abs();
    }
    let summ: i64 = (0..16)
        .map(|j| (i64::from(b.bsums[j]) * i64::from(mn[j / 2])).abs())
        .sum();
    (f64::from(d.to_f32()) * f64::from(b.d) * sumi as f64).abs()
        + (f64::from(dmin.to_f32()) * f64::from(b.d) * summ as f64).abs()
}

fn check_q4_k(k: &Kernels, blocks: &[(BlockQ4K, BlockQ8K)]) {
    let (w, x): (Vec<_>, Vec<_>) = blocks.iter().copied().unzip();
    verify_q4_k(k.path(), &w, &x, k.dot_q4_k(&w, &x));
}

/// Holds `got`, a path's value for the pair of rows `w`, `x`, to the scalar dot.
fn verify_q4_k(path: KernelPath, w: &[BlockQ4K], x: &[BlockQ8K], got: f32) {
    let blocks: Vec<(BlockQ4K, BlockQ8K)> = w.iter().copied().zip(x.iter().copied()).collect();
    let want = Kernels::scalar().dot_q4_k(w, x);
    let mag: f64 = blocks
        .iter()
        .map(|(a, b)| {
            let mut v = [0i8; 256];
            for (p, q) in a.qs.chunks_exact(32).enumerate() {
                for l in 0..32 {
                    v[64 * p + l] = (q[l] & 0xF) as i8;
                    v[64 * p + 32 + l] = (q[l] >> 4) as i8;
                }
            }
            mag_k4(a.d, a.dmin, &a.scales, &v, b)
        })
        .sum();
    close(path, "Q4_K·Q8_K", got, want, mag, 1e-5);
}

fn check_q5_k(k: &Kernels, blocks: &[(BlockQ5K, BlockQ8K)]) {
    let (w, x): (Vec<_>, Vec<_>) = blocks.iter().copied().unzip();
    verify_q5_k(k.path(), &w, &x, k.dot_q5_k(&w, &x));
}

/// Holds `got`, a path's value for the pair of rows `w`, `x`, to the scalar dot.
fn verify_q5_k(path: KernelPath, w: &[BlockQ5K], x: &[BlockQ8K], got: f32) {
    let blocks: Vec<(BlockQ5K, BlockQ8K)> = w.iter().copied().zip(x.iter().copied()).collect();
    let want = Kernels::scalar().dot_q5_k(w, x);
    let mag: f64 = blocks
        .iter()
        .map(|(a, b)| {
            let mut f = vec![0.0f32; 256];
            dequantize_q5_k(std::slice::from_ref(a), &mut f);
            let mut v = [0i8; 256];
            for (p, q) in a.qs.chunks_exact(32).enumerate() {
                for l in 0..32 {
                    let h1 = (a.qh[l] >> (2 * p)) & 1;
                    let h2 = (a.qh[l] >> (2 * p + 1)) & 1;
                    v[64 * p + l] = ((q[l] & 0xF) | (h1 << 4)) as i8;
                    v[64 * p + 32 + l] = ((q[l] >> 4) | (h2 << 4)) as i8;
                }
            }
            mag_k4(a.d, a.dmin, &a.scales, &v, b)
        })
        .sum();
    close(path, "Q5_K·Q8_K", got, want, mag, 1e-5);
}

fn check_q6_k(k: &Kernels, blocks: &[(BlockQ6K, BlockQ8K)]) {
    let (w, x): (Vec<_>, Vec<_>) = blocks.iter().copied().unzip();
    verify_q6_k(k.path(), &w, &x, k.dot_q6_k(&w, &x));
}

/// Holds `got`, a path's value for the pair of rows `w`, `x`, to the scalar dot.
fn verify_q6_k(path: KernelPath, w: &[BlockQ6K], x: &[BlockQ8K], got: f32) {
    let blocks: Vec<(BlockQ6K, BlockQ8K)> = w.iter().copied().zip(x.iter().copied()).collect();
    let want = Kernels::scalar().dot_q6_k(w, x);
    let mag: f64 = blocks
        .iter()
        .map(|(a, b)| {
            // Dequantized with d = 1 gives scale * (q - 32) per element.
            let mut unit = *a;
            unit.d = f16::ONE;
            let mut f = vec![0.0f32; 256];
            dequantize_q6_k(std::slice::from_ref(&unit), &mut f);
            let s: f64 = f
                .iter()
                .zip(&b.qs)
                .map(|(&v, &q)| (f64::from(v) * f64::from(q)).abs())
                .sum();
            (f64::from(a.d.to_f32()) * f64::from(b.d)).abs() * s
        })
        .sum();
    close(path, "Q6_K·Q8_K", got, want, mag, 1e-5);
}

fn float_mag(w: &[f32], x: &[f32]) -> f64 {
    w.iter()
        .zip(x)
        .map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs())
        .sum()
}

fn check_floats(k: &Kernels, w: &[f32], x: &[f32]) {
    let s = Kernels::scalar();
    close(
        k.path(),
        "F32·F32",
        k.dot_f32(w, x),
        s.dot_f32(w, x),
        float_mag(w, x),
        2e-5,
    );
    let h: Vec<f16> = w
        .iter()
        .map(|&v| f16::from_f32(v.clamp(-65504.0, 65504.0)))
        .collect();
    let hw: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
    close(
        k.path(),
        "F16·F32",
        k.dot_f16(&h, x),
        s.dot_f16(&h, x),
        float_mag(&hw, x),
        2e-5,
    );
    let b: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    let bw: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
    close(
        k.path(),
        "BF16·F32",
        k.dot_bf16(&b, x),
        s.dot_bf16(&b, x),
        float_mag(&bw, x),
        2e-5,
    );
}

/// A matrix–matrix product of `nr` weight rows by `nt` activation rows of `bpr` blocks
/// each, drawn from `pool` (a pool of (weight, activation) blocks), checked pair by pair
/// against the scalar dot with the dot products' budgets, and bit for bit against the same
/// pairs in a wider tile.
macro_rules! check_gemm {
    ($k:expr, $pool:expr, $nr:expr, $nt:expr, $bpr:expr, $gemm:ident, $verify:ident) => {{
        let (w, x): (Vec<_>, Vec<_>) = $pool.iter().copied().unzip();
        let w: Vec<_> = w.iter().cycle().take($nr * $bpr).copied().collect();
        let x: Vec<_> = x.iter().cycle().skip(1).take($nt * $bpr).copied().collect();
        let mut out = vec![f32::NAN; $nr * $nt];
        $k.$gemm(&w, &x, $bpr, &mut out);
        // The same tokens followed by five more: a tile of at least six tokens, which every
        // path multiplies with its wide kernel. A (row, token) must not depend on the tile's
        // other tokens, whichever kernel the tile's size selects.
        let wider = $nt + 5;
        let x2: Vec<_> = x
            .iter()
            .chain(x.iter().rev())
            .cycle()
            .take(wider * $bpr)
            .copied()
            .collect();
        let mut out2 = vec![f32::NAN; $nr * wider];
        $k.$gemm(&w, &x2, $bpr, &mut out2);
        for r in 0..$nr {
            for t in 0..$nt {
                $verify(
                    $k.path(),
                    &w[r * $bpr..(r + 1) * $bpr],
                    &x[t * $bpr..(t + 1) * $bpr],
                    out[r * $nt + t],
                );
                assert_eq!(
                    out[r * $nt + t].to_bits(),
                    out2[r * wider + t].to_bits(),
                    "{} {}: row {} token {} of {} vs the same in a tile of {}",
                    $k.path(),
                    stringify!($gemm),
                    r,
                    t,
                    $nt,
                    wider
                );
            }
        }
    }};
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Matrix–matrix kernels of every path (and the dot fallback of paths without one),
    /// for odd row and token counts around any micro-tile size: up to 35 rows (the x86
    /// kernels' passes are 16 rows), up to 70 tokens (passes of 64 tokens in groups of 4
    /// or 8), and for the 32-value formats up to 19 blocks per row (chunks of 8 blocks).
    #[test]
    fn gemm(
        p0 in pairs(q4_0_block(), q8_0_block(), 8),
        p8 in pairs(q8_0_block(), q8_0_block(), 8),
        pk4 in pairs(q4_k_block(), q8_k_block(), 4),
        pk5 in pairs(q5_k_block(), q8_k_block(), 4),
        pk6 in pairs(q6_k_block(), q8_k_block(), 4),
        nr in prop_oneof![3 => 1usize..=9, 1 => 10usize..=35],
        nt in prop_oneof![3 => 1usize..=9, 1 => 10usize..=70],
        bpr in 1usize..=3,
        bpr32 in prop_oneof![1 => 1usize..=3, 1 => 4usize..=19],
    ) {
        for k in KernelPath::supported().into_iter().map(|p| Kernels::new(p).unwrap()) {
            check_gemm!(k, p0, nr, nt, bpr32, gemm_q4_0, verify_q4_0);
            check_gemm!(k, p8, nr, nt, bpr32, gemm_q8_0, verify_q8_0);
            check_gemm!(k, pk4, nr, nt, bpr, gemm_q4_k, verify_q4_k);
            check_gemm!(k, pk5, nr, nt, bpr, gemm_q5_k, verify_q5_k);
            check_gemm!(k, pk6, nr, nt, bpr, gemm_q6_k, verify_q6_k);
        }
    }

    #[test]
    fn q4_0(blocks in pairs(q4_0_block(), q8_0_block(), 40)) {
        for k in simd_paths() { check_q4_0(&k, &blocks) }
    }

    #[test]
    fn q8_0(blocks in pairs(q8_0_block(), q8_0_block(), 40)) {
        for k in simd_paths() { check_q8_0(&k, &blocks) }
    }

    #[test]
    fn q4_k(blocks in pairs(q4_k_block(), q8_k_block(), 14)) {
        for k in simd_paths() { check_q4_k(&k, &blocks) }
    }

    #[test]
    fn q5_k(blocks in pairs(q5_k_block(), q8_k_block(), 14)) {
        for k in simd_paths() { check_q5_k(&k, &blocks) }
    }

    #[test]
    fn q6_k(blocks in pairs(q6_k_block(), q8_k_block(), 14)) {
        for k in simd_paths() { check_q6_k(&k, &blocks) }
    }

    #[test]
    fn float_dots((w, x) in floats(600)) {
        for k in simd_paths() { check_floats(&k, &w, &x) }
    }

    #[test]
    fn activation_quantizers(x in (1usize..=12).prop_flat_map(|n| proptest::collection::vec(
        prop_oneof![8 => -3.0f32..3.0, 1 => -1e6f32..1e6, 1 => Just(0.0f32)], n * 256))) {
        for k in simd_paths() { check_quantizers(&k, &x) }
    }
}

fn check_quantizers(k: &Kernels, x: &[f32]) {
    let s = Kernels::scalar();
    let n0 = x.len() / QK;
    let zero0 = BlockQ8_0 {
        d: f16::ZERO,
        qs: [0; 32],
    };
    let (mut a, mut b) = (vec![zero0; n0], vec![zero0; n0]);
    k.quantize_q8_0(x, &mut a);
    s.quantize_q8_0(x, &mut b);
    for (i, (p, q)) in a.iter().zip(&b).enumerate() {
        let ulp = (i32::from(p.d.to_bits() as i16) - i32::from(q.d.to_bits() as i16)).abs();
        assert!(
            ulp <= 1,
            "{} Q8_0 block {i}: d {} vs {}",
            k.path(),
            p.d,
            q.d
        );
        for (u, v) in p.qs.iter().zip(&q.qs) {
            assert!(
                (i16::from(*u) - i16::from(*v)).abs() <= 1,
                "{} Q8_0 block {i}: {:?} vs {:?}",
                k.path(),
                p.qs,
                q.qs
            );
        }
    }
    let nk = x.len() / QK_K;
    let zk: BlockQ8K = bytemuck::Zeroable::zeroed();
    let (mut a, mut b) = (vec![zk; nk], vec![zk; nk]);
    k.quantize_q8_k(x, &mut a);
    s.quantize_q8_k(x, &mut b);
    for (i, (p, q)) in a.iter().zip(&b).enumerate() {
        let ulp = (i64::from(p.d.to_bits() as i32) - i64::from(q.d.to_bits() as i32)).abs();
        assert!(
            ulp <= 1,
            "{} Q8_K block {i}: d {} vs {}",
            k.path(),
            p.d,
            q.d
        );
        for (u, v) in p.qs.iter().zip(&q.qs) {
            assert!(
                (i16::from(*u) - i16::from(*v)).abs() <= 1,
                "{} Q8_K block {i}",
                k.path()
            );
        }
        // bsums must describe this path's own quants exactly.
        for (j, c) in p.qs.chunks_exact(16).enumerate() {
            let sum: i16 = c.iter().map(|&q| i16::from(q)).sum();
            assert_eq!(p.bsums[j], sum, "{} Q8_K block {i} bsum {j}", k.path());
        }
    }
}

// ---------------------------------------------------------------- fixed cases

/// The pairs `(w[i], x[i])`.
fn zip<W: Copy, X: Copy>(w: &[W], x: &[X]) -> Vec<(W, X)> {
    w.iter().copied().zip(x.iter().copied()).collect()
}

/// Rows as the 3B model has them (3072, 4096 and 9216 wide), quantized the way the model
/// and the activations really are, through the reference quantizers.
#[test]
fn model_row_lengths_realistic_data() {
    let mut rng = Rng(0x5eed);
    for cols in [256, 3072, 4096, 9216] {
        let w = rng.vec(cols);
        let x = rng.vec(cols);
        for k in simd_paths() {
            let s = Kernels::scalar();
            let bq = |ty| quantize_to_bytes(ty, &w).unwrap();
            let mut x8 = vec![
                BlockQ8_0 {
                    d: f16::ZERO,
                    qs: [0; 32]
                };
                cols / 32
            ];
            s.quantize_q8_0(&x, &mut x8);
            let mut xk = vec![bytemuck::Zeroable::zeroed(); cols / 256];
            s.quantize_q8_k(&x, &mut xk);
            let q4_0 = bq(GgmlType::Q4_0);
            let q8_0 = bq(GgmlType::Q8_0);
            let q4_k = bq(GgmlType::Q4_K);
            let q5_k = bq(GgmlType::Q5_K);
            let q6_k = bq(GgmlType::Q6_K);
            let q4_0: &[BlockQ4_0] = bytemuck::cast_slice(&q4_0);
            let q8_0: &[BlockQ8_0] = bytemuck::cast_slice(&q8_0);
            let q4_k: &[BlockQ4K] = bytemuck::cast_slice(&q4_k);
            let q5_k: &[BlockQ5K] = bytemuck::cast_slice(&q5_k);
            let q6_k: &[BlockQ6K] = bytemuck::cast_slice(&q6_k);
            check_q4_0(&k, &zip(q4_0, &x8));
            check_q8_0(&k, &zip(q8_0, &x8));
            check_q4_k(&k, &zip(q4_k, &xk));
            check_q5_k(&k, &zip(q5_k, &xk));
            check_q6_k(&k, &zip(q6_k, &xk));
            check_floats(&k, &w, &x);
            check_quantizers(&k, &x);
        }
    }
}

/// Saturated values: every nibble 15 / 0, every quant at +-127, the largest scales.
#[test]
fn extremes() {
    for k in simd_paths() {
        for (nib, q) in [(0xFFu8, 127i8), (0x00, -127), (0xF0, 127), (0x0F, -128)] {
            let big = f16::from_f32(65504.0);
            let w = BlockQ4_0 {
                d: big,
                qs: [nib; 16],
            };
            let x = BlockQ8_0 {
                d: big,
                qs: [q; 32],
            };
            check_q4_0(&k, &[(w, x); 3]);
            check_q8_0(
                &k,
                &[(
                    BlockQ8_0 {
                        d: big,
                        qs: [q; 32],
                    },
                    x,
                ); 3],
            );
            let mut bsums = [0i16; 16];
            bsums.fill(16 * i16::from(q));
            let xk = BlockQ8K {
                d: 1e6,
                qs: [q; 256],
                bsums,
            };
            let w4 = BlockQ4K {
                d: big,
                dmin: big,
                scales: [0xFF; 12],
                qs: [nib; 128],
            };
            check_q4_k(&k, &[(w4, xk); 2]);
            let w5 = BlockQ5K {
                d: big,
                dmin: big,
                scales: [0xFF; 12],
                qh: [nib; 32],
                qs: [nib; 128],
            };
            check_q5_k(&k, &[(w5, xk); 2]);
            let w6 = BlockQ6K {
                ql: [nib; 128],
                qh: [nib; 64],
                scales: [q; 16],
                d: big,
            };
            check_q6_k(&k, &[(w6, xk); 2]);
        }
    }
}

#[test]
fn dispatcher_picks_the_expected_path() {
    let best = KernelPath::best();
    if let Ok(want) = std::env::var("SPILLWAY_EXPECT_PATH") {
        assert_eq!(best.name(), want, "cpu: {}", dispatch::cpu_summary());
    }
    // The process-wide choice honours SPILLWAY_KERNELS when set, and is the best otherwise.
    let selected = dispatch::select();
    match std::env::var(dispatch::ENV_KERNELS) {
        Ok(v) if !v.trim().is_empty() => match KernelPath::from_name(&v) {
            Some(p) if p.is_supported() => assert_eq!(selected.unwrap().path(), p),
            Some(p) => {
                let r = selected.map(Kernels::path);
                let refused =
                    matches!(&r, Err(DispatchError::Unsupported { path, .. }) if *path == p);
                assert!(refused, "{r:?}");
            }
            None => {
                let r = selected.map(Kernels::path);
                let refused =
                    matches!(&r, Err(DispatchError::UnknownPath { value }) if value == v.trim());
                assert!(refused, "{r:?}");
            }
        },
        _ => assert_eq!(selected.unwrap().path(), best),
    }
    eprintln!("cpu {} -> {best}", dispatch::cpu_summary());
}
