//! `spillway kernels` as a user runs it on a board: path report, self-check, bench table,
//! and the `SPILLWAY_KERNELS` override.

use spillway_e2e::{run_spillway, stderr, stdout};

#[test]
fn reports_the_selected_path_and_passes_the_self_check() {
    let out = run_spillway(&["kernels"], &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("selected: "), "{text}");
    assert!(text.contains("self-check scalar: ok"), "{text}");
    assert!(!text.contains("FAILED"), "{text}");
    #[cfg(target_arch = "x86_64")]
    {
        let has = |f: &[bool]| f.iter().all(|&b| b);
        use std::arch::is_x86_feature_detected as x86;
        let avx2 = has(&[x86!("avx2"), x86!("fma"), x86!("f16c")]);
        let avx512 = avx2
            && has(&[
                x86!("avx512f"),
                x86!("avx512bw"),
                x86!("avx512vl"),
                x86!("avx512vnni"),
            ]);
        // The fastest path the CPU has is selected, and every supported path is checked.
        if avx512 {
            assert!(text.contains("selected: avx512"), "{text}");
            assert!(text.contains("self-check avx512: ok"), "{text}");
        } else if avx2 {
            assert!(text.contains("selected: avx2"), "{text}");
        }
        if avx2 {
            assert!(text.contains("self-check avx2: ok"), "{text}");
        }
    }
}

#[test]
fn the_environment_forces_a_path() {
    let out = run_spillway(&["kernels"], &[("SPILLWAY_KERNELS", "scalar")]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("selected: scalar (forced by SPILLWAY_KERNELS=scalar)"));
}

#[test]
fn an_unknown_or_foreign_path_is_refused_with_one_line() {
    for bad in [
        "sse9",
        if cfg!(target_arch = "x86_64") {
            "dotprod"
        } else {
            "avx2"
        },
    ] {
        let out = run_spillway(&["kernels"], &[("SPILLWAY_KERNELS", bad)]);
        assert_eq!(out.status.code(), Some(1), "SPILLWAY_KERNELS={bad}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("spillway: error: "), "{err}");
    }
}

#[test]
fn bench_prints_a_table_against_the_roofline() {
    let out = run_spillway(
        &[
            "kernels",
            "--bench",
            "--threads",
            "1",
            "--seconds",
            "0.01",
            "--working-set-mib",
            "4",
        ],
        &[],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("read roofline"), "{text}");
    assert!(text.contains("3072 -> 4096"), "{text}");
    assert!(text.contains("Q4_K"), "{text}");
}
