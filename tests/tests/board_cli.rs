//! `spillway board` on files captured from real boards (`daemon/tests/boards`): the profile
//! it detects, the engine settings that follow, the memory plan of a model, and a refusal
//! (exit 1) when the model cannot fit the board's budget.

use std::path::PathBuf;

use spillway_e2e::{TempDir, fixtures, run_spillway, stderr, stdout, workspace_root};

fn captured(board: &str) -> PathBuf {
    workspace_root().join("daemon/tests/boards").join(board)
}

fn board(root: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let model = fixtures().join("models/tiny-q4_0.gguf");
    let mut args = vec![
        "board",
        "--fs-root",
        root.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    // No override directory: only the built-in profiles.
    run_spillway(&args, &[("SPILLWAY_ROUTER_BOARDS_DIR", "/nonexistent")])
}

#[test]
fn a_pi_5_gets_its_profile_and_the_model_fits() {
    let out = board(&captured("raspberry-pi-5-8gb"), &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for want in [
        "board      raspberry-pi-5-8gb: Raspberry Pi 5",
        "model \"Raspberry Pi 5 Model B Rev 1.0\"",
        "4x Cortex-A76",
        "has the expected asimd asimddp",
        "4 threads (board)",
        "context 8192 (board), KV cache f16 (board), 2 sessions (board)",
        "75% of RAM (board raspberry-pi-5-8gb)",
        "soft 75/70 °C, hard 82/78 °C",
        "memory plan:",
        "fits: ",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn the_rk3588_pins_its_big_cores_and_a_wrong_profile_is_flagged() {
    let out = board(&captured("rk3588-orange-pi-5"), &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("pinned to CPUs 4,5,6,7"), "{text}");
    assert!(text.contains("4x Cortex-A76 + 4x Cortex-A55"), "{text}");
    // The Pi 5 profile on a Pi 4: its Cortex-A72 has no dot product.
    let out = board(
        &captured("raspberry-pi-4-4gb"),
        &["--board", "raspberry-pi-5"],
    );
    let text = stdout(&out);
    assert!(text.contains("raspberry-pi-5-4gb"), "{text}");
    assert!(text.contains("WARNING: lacks asimddp"), "{text}");
}

#[test]
fn a_model_that_does_not_fit_is_refused() {
    // The Pi 5's files, but only 16 MiB of RAM: 75% of it cannot hold even the tiny model
    // and the runtime.
    let root = TempDir::new("board-small");
    let src = captured("raspberry-pi-5-8gb");
    std::fs::create_dir_all(root.path().join("proc/device-tree")).unwrap();
    for f in [
        "proc/cpuinfo",
        "proc/device-tree/model",
        "proc/device-tree/compatible",
    ] {
        std::fs::copy(src.join(f), root.path().join(f)).unwrap();
    }
    std::fs::write(
        root.path().join("proc/meminfo"),
        "MemTotal:          16384 kB\n",
    )
    .unwrap();
    let out = board(root.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("board raspberry-pi-5-4gb cannot run this model")
            && err.contains("does not fit the RAM budget"),
        "{err}"
    );
    // The plan itself is still shown.
    assert!(stdout(&out).contains("memory plan:"));
    // An explicit, larger budget makes it fit.
    let out = board(root.path(), &["--ram-budget", "1GiB"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_missing_model_is_one_line_and_list_shows_every_profile() {
    let out = run_spillway(
        &["board", "--model", "/nonexistent/model.gguf"],
        &[("SPILLWAY_ROUTER_BOARDS_DIR", "/nonexistent")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
    let out = run_spillway(
        &["board", "--list"],
        &[("SPILLWAY_ROUTER_BOARDS_DIR", "/nonexistent")],
    );
    assert!(out.status.success());
    let text = stdout(&out);
    for name in [
        "raspberry-pi-4-4gb",
        "raspberry-pi-4-8gb",
        "raspberry-pi-5-4gb",
        "raspberry-pi-5-8gb",
        "raspberry-pi-5-16gb",
        "jetson-orin-8gb",
        "rk3588-8gb",
        "rk3588-16gb",
        "generic-aarch64-8gb",
        "generic-x86_64-8gb",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
}
