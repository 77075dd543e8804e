//! Unit tests of the AVX2 helpers against the scalar definitions.

use super::kquants::k4_scales_mins;
use super::quantize::round_away_to_i8;
use super::*;
use crate::dot::scalar;

fn have_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[test]
fn k4_scale_unpacking_matches_scale_min_k4() {
    if !have_avx2() {
        return;
    }
    let mut state = 0x1234_5678_9abc_def0u64;
    for _ in 0..1000 {
        let mut packed = [0u8; K_SCALE_SIZE];
        for b in &mut packed {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        // SAFETY: the CPU has the features (checked above).
        let [lo, hi, mins] = unsafe { k4_scales_mins_to_arrays(&packed) };
        for j in 0..8 {
            let (sc, mn) = scale_min_k4(j, &packed);
            let scales = if j < 4 { &lo } else { &hi };
            for lane in [0, 8] {
                assert_eq!(scales[lane + 2 * (j % 4)], i16::from(sc), "scale {j}");
                assert_eq!(scales[lane + 2 * (j % 4) + 1], i16::from(sc), "scale {j}");
            }
            assert_eq!(mins[2 * j], i16::from(mn));
            assert_eq!(mins[2 * j + 1], i16::from(mn));
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn k4_scales_mins_to_arrays(packed: &[u8; K_SCALE_SIZE]) -> [[i16; 16]; 3] {
    let (lo, hi, mins) = k4_scales_mins(packed);
    // SAFETY: a 256-bit vector is 16 i16, and every bit pattern is a valid i16.
    [lo, hi, mins].map(|v| unsafe { core::mem::transmute::<__m256i, [i16; 16]>(v) })
}

/// One block among zero blocks, with the largest scales and lanes whose partial sums
/// are large and cancel: the result must be the reference's product exactly, which it
/// only is if the block sum is reduced exactly before it is scaled.
#[test]
fn block_sums_are_exact_before_scaling() {
    if !have_avx2() {
        return;
    }
    let big = f16::from_f32(65504.0);
    let zero8 = BlockQ8_0 {
        d: f16::ZERO,
        qs: [0; 32],
    };
    let mut x = [zero8; 8];
    x[3].d = big;
    for (i, q) in x[3].qs.iter_mut().enumerate() {
        *q = match i {
            0 => 126,
            1..8 => 127,
            8..16 => -127,
            _ => 0,
        };
    }
    let mut w8 = [zero8; 8];
    w8[3] = BlockQ8_0 {
        d: big,
        qs: [127; 32],
    };
    // Nibble 8 is the value 0; block 3 is all 15 (value 7).
    let mut w4 = [BlockQ4_0 {
        d: f16::ZERO,
        qs: [0x88; 16],
    }; 8];
    w4[3] = BlockQ4_0 {
        d: big,
        qs: [0xFF; 16],
    };
    // 8 blocks go through the grouped path, 4 through the one-at-a-time tail.
    for n in [8, 4] {
        // SAFETY: the CPU has the features (checked above); equal lengths.
        let got = unsafe { dot_q8_0(&w8[..n], &x[..n]) };
        assert_eq!(got, scalar::dot_q8_0(&w8[..n], &x[..n]), "Q8_0, {n} blocks");
        // SAFETY: as above.
        let got = unsafe { dot_q4_0(&w4[..n], &x[..n]) };
        assert_eq!(got, scalar::dot_q4_0(&w4[..n], &x[..n]), "Q4_0, {n} blocks");
    }
}

#[test]
fn q8_0_rounding_matches_std_round_as_i8() {
    if !have_avx2() {
        return;
    }
    let special = [
        0.5f32,
        1.5,
        2.5,
        -0.5,
        -2.5,
        0.499_999_97,
        -0.499_999_97,
        126.5,
        127.49,
        127.5,
        -128.5,
        -127.5,
        1e10,
        -1e10,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -0.0,
        8_388_607.5,
        1e-45,
    ];
    for v in special {
        // SAFETY: the CPU has the features (checked above).
        let got = unsafe { round_lane0(v) };
        assert_eq!(got, i32::from(v.round() as i8), "{v}");
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn round_lane0(v: f32) -> i32 {
    _mm256_cvtsi256_si32(round_away_to_i8(_mm256_set1_ps(v)))
}

/// Inputs where the scalar quantizers' edge cases show: ties in magnitude between a
/// positive and a negative value (the first decides the sign of the Q8_K scale),
/// values so small that the inverse scale overflows, exact halves.
#[test]
fn quantizers_match_reference_bit_for_bit_on_edge_cases() {
    if !have_avx2() {
        return;
    }
    let mut rows: Vec<Vec<f32>> = Vec::new();
    let mut tie = vec![0.25f32; 256];
    tie[3] = -2.0;
    tie[200] = 2.0;
    rows.push(tie.clone());
    tie[3] = 2.0;
    tie[200] = -2.0;
    rows.push(tie);
    rows.push((0..256).map(|i| (i as f32 - 128.0) * 1e-39).collect());
    rows.push(
        (0..256)
            .map(|i| if i == 77 { -1e-45 } else { 0.0 })
            .collect(),
    );
    rows.push((0..256).map(|i| (i as f32 - 127.0) * 0.5).collect());
    // Non-finite inputs: NaN is skipped by the scale search and quantizes to 0;
    // infinities make the scales infinite or zero.
    let mut odd: Vec<f32> = (0..256).map(|i| (i as f32).sin()).collect();
    odd[5] = f32::NAN;
    odd[31] = f32::NAN;
    rows.push(odd.clone());
    odd[100] = f32::NEG_INFINITY;
    rows.push(odd);
    rows.push(vec![0.0; 256]);
    for x in rows {
        let mut a = [BlockQ8_0 {
            d: f16::ZERO,
            qs: [0; 32],
        }; 8];
        let mut b = a;
        // SAFETY: the CPU has the features (checked above); 256 = 32 * 8.
        unsafe { quantize_q8_0(&x, &mut a) };
        scalar::quantize_q8_0(&x, &mut b);
        assert_eq!(a, b, "Q8_0 of {x:?}");
        let mut a: [BlockQ8K; 1] = [bytemuck::Zeroable::zeroed()];
        let mut b = a;
        // SAFETY: the CPU has the features (checked above); 256 = 256 * 1.
        unsafe { quantize_q8_k(&x, &mut a) };
        scalar::quantize_q8_k(&x, &mut b);
        assert_eq!(a[0].d.to_bits(), b[0].d.to_bits(), "Q8_K d of {x:?}");
        assert_eq!(a[0].qs, b[0].qs, "Q8_K qs of {x:?}");
        assert_eq!(a[0].bsums, b[0].bsums, "Q8_K bsums of {x:?}");
    }
}
