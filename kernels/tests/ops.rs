//! The f32 operations of every path against the reference (`ops::reference`, f64 sums and
//! libm `exp`). Budgets, per element:
//!
//! | op | budget |
//! |---|---|
//! | `exp_fast` | 4 ulp (relative 5e-7) over [-87, 88] |
//! | rmsnorm | 1e-5 relative |
//! | softmax | 1e-5 relative + 1e-12 absolute |
//! | silu_mul | 1e-5 relative + 1e-12 absolute |
//! | axpy (f16, Q8_0 rows) | 1e-6 relative + 1e-6 absolute |
//! | branch-free f16 -> f32 | exact, all 65536 values |

use proptest::prelude::*;
use spillway_kernels::dispatch::{KernelPath, Kernels};
use spillway_kernels::formats::{BlockQ8_0, f16, quantize_row_q8_0};
use spillway_kernels::ops::{self, fast, reference};

fn all_paths() -> Vec<Kernels> {
    KernelPath::supported()
        .into_iter()
        .map(|p| Kernels::new(p).unwrap())
        .collect()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn assert_close(what: &str, path: KernelPath, got: &[f32], want: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= rel * w.abs() + abs,
            "{path} {what}[{i}] of {}: got {g}, reference {w}",
            got.len()
        );
    }
}

#[test]
fn exp_fast_is_within_4_ulp() {
    let mut worst = 0.0f64;
    let mut x = -87.0f32;
    while x <= 88.0 {
        let got = f64::from(fast::exp_fast(x));
        let want = f64::from(x).exp();
        worst = worst.max((got - want).abs() / want);
        x += 0.001_37;
    }
    assert!(worst <= 5e-7, "worst relative error {worst:e}");
    assert_eq!(fast::exp_fast(f32::NEG_INFINITY), 0.0);
    assert_eq!(fast::exp_fast(-1000.0), 0.0);
    assert!(fast::exp_fast(1000.0).is_finite());
    assert_eq!(fast::exp_fast(0.0), 1.0);
}

fn vec_of(
    n: std::ops::RangeInclusive<usize>,
    v: impl Strategy<Value = f32> + Clone,
) -> impl Strategy<Value = Vec<f32>> {
    n.prop_flat_map(move |n| proptest::collection::vec(v.clone(), n))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn rmsnorm(x in vec_of(1..=3100, -4.0f32..4.0), scale in prop_oneof![Just(1.0f32), Just(1e-12f32), Just(1e12f32)]) {
        let x: Vec<f32> = x.iter().map(|v| v * scale).collect();
        let w: Vec<f32> = (0..x.len()).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        let mut want = vec![0.0; x.len()];
        reference::rmsnorm(&x, &w, 1e-5, &mut want);
        for k in all_paths() {
            let mut got = vec![0.0; x.len()];
            k.rmsnorm(&x, &w, 1e-5, &mut got);
            assert_close("rmsnorm", k.path(), &got, &want, 1e-5, 0.0);
        }
    }

    #[test]
    fn softmax(x in vec_of(1..=3100, prop_oneof![8 => -30.0f32..30.0, 1 => Just(f32::NEG_INFINITY), 1 => -1e4f32..1e4])) {
        let mut x = x;
        x[0] = x[0].max(-1e4); // at least one live entry; the all-masked row is tested below
        let mut want = x.clone();
        reference::softmax(&mut want);
        for k in all_paths() {
            let mut got = x.clone();
            k.softmax(&mut got);
            assert_close("softmax", k.path(), &got, &want, 1e-5, 1e-12);
            let total: f32 = got.iter().sum();
            prop_assert!((total - 1.0).abs() < 1e-4, "{} softmax sums to {total}", k.path());
        }
    }

    #[test]
    fn silu_mul(g in vec_of(1..=3100, prop_oneof![8 => -12.0f32..12.0, 1 => -200.0f32..200.0])) {
        let up: Vec<f32> = g.iter().enumerate().map(|(i, v)| v * 0.3 + (i % 5) as f32 - 2.0).collect();
        let mut want = g.clone();
        reference::silu_mul(&mut want, &up);
        for k in all_paths() {
            let mut got = g.clone();
            k.silu_mul(&mut got, &up);
            assert_close("silu_mul", k.path(), &got, &want, 1e-5, 1e-12);
        }
    }
}

#[test]
fn f16_to_f32_is_exact_for_every_value() {
    for bits in 0..=u16::MAX {
        let want = f16::from_bits(bits).to_f32();
        let got = fast::f16_to_f32(bits);
        if want.is_nan() {
            assert!(got.is_nan(), "{bits:#06x}");
        } else {
            assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Attention's weighted sum over V rows: y += a * x, f16 and Q8_0 rows.
    #[test]
    fn axpy(x in vec_of(1..=40, -4.0f32..4.0), a in -2.0f32..2.0) {
        let n = x.len() * 32;
        let xs: Vec<f32> = (0..n).map(|i| x[i % x.len()] * ((i % 7) as f32 - 3.0)).collect();
        let h: Vec<f16> = xs.iter().map(|&v| f16::from_f32(v)).collect();
        let mut q8 = vec![BlockQ8_0 { d: f16::ZERO, qs: [0; 32] }; x.len()];
        quantize_row_q8_0(&xs, &mut q8);
        let y0: Vec<f32> = (0..n).map(|i| (i % 5) as f32 * 0.25).collect();
        let s = Kernels::scalar();
        let (mut want_h, mut want_q) = (y0.clone(), y0.clone());
        s.axpy_f16(a, &h, &mut want_h);
        s.axpy_q8_0(a, &q8, &mut want_q);
        for k in all_paths() {
            let (mut got_h, mut got_q) = (y0.clone(), y0.clone());
            k.axpy_f16(a, &h, &mut got_h);
            k.axpy_q8_0(a, &q8, &mut got_q);
            assert_close("axpy_f16", k.path(), &got_h, &want_h, 1e-6, 1e-6);
            assert_close("axpy_q8_0", k.path(), &got_q, &want_q, 1e-6, 1e-6);
        }
    }
}

#[test]
fn softmax_edge_rows() {
    for k in all_paths() {
        let mut masked = vec![f32::NEG_INFINITY; 5];
        k.softmax(&mut masked);
        assert_eq!(
            masked,
            vec![0.0; 5],
            "{}: an all-masked row is zeros",
            k.path()
        );
        let mut one = vec![3.0];
        k.softmax(&mut one);
        assert_eq!(one, vec![1.0]);
        let mut empty: Vec<f32> = vec![];
        k.softmax(&mut empty);
        let mut partly = vec![0.0, f32::NEG_INFINITY, 0.0];
        k.softmax(&mut partly);
        assert_eq!(partly, vec![0.5, 0.0, 0.5]);
    }
}

#[test]
fn residual_add_and_scale() {
    let mut x = vec![1.0, 2.0, 3.0];
    ops::add_assign(&mut x, &[0.5, -2.0, 1.0]);
    assert_eq!(x, vec![1.5, 0.0, 4.0]);
    ops::scale(&mut x, 2.0);
    assert_eq!(x, vec![3.0, 0.0, 8.0]);
}
