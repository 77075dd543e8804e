//! The f32 operations of every path against the reference (`ops::reference`, f64 sums and
//! libm `exp`). Budgets, per element:
//!
//! | op | budget |
//! |---|---|
//! | `exp_fast` | 4 ulp (relative 5e-7) over [-87, 88] |
//! | rmsnorm | 1e-5 relative |
//! | softmax | 1e-5 relative + 1e-12 absolute |
//! | silu_mul | 1e-5 relative + 1e-12 absolute |

use proptest::prelude::*;
use spillway_kernels::dispatch::{KernelPath, Kernels};
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
