//! Helpers for Spillway's end-to-end tests: build the real `spillway` binary once and run
//! it as a user would. Later issues add real brokers and servers here (mosquitto on a free
//! loopback port, a local HTTPS server speaking the router's protocol, a fake /sys tree).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// `../shared/fixtures` (or `SPILLWAY_FIXTURES`).
pub fn fixtures() -> PathBuf {
    [
        std::env::var_os("SPILLWAY_FIXTURES").map(PathBuf::from),
        Some(workspace_root().join("../shared/fixtures")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.join("README.md").exists())
    .expect("fixtures not found: set SPILLWAY_FIXTURES or put shared/ beside the checkout")
}

/// Path of the `spillway` binary, built (once per test process) with the same cargo and
/// profile-independent release settings the README uses.
pub fn spillway_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "--release", "-p", "spillway", "--bin", "spillway"])
            .args(["--message-format=json-render-diagnostics"])
            .output()
            .expect("running cargo build");
        assert!(
            out.status.success(),
            "building spillway failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "spillway")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported the spillway executable")
    })
}

/// Runs `spillway ARGS` with extra environment variables, capturing its output.
pub fn run_spillway(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(spillway_bin());
    cmd.args(args).env_remove("SPILLWAY_KERNELS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("spawning spillway")
}

/// Runs `spillway ARGS` with `input` on its standard input, capturing its output.
pub fn run_spillway_with_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(spillway_bin())
        .args(args)
        .env_remove("SPILLWAY_KERNELS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning spillway");
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Feed stdin from a thread so that a large output cannot deadlock against it.
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        // The process may exit early (an error) and close its end: not ours to report.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("waiting for spillway");
    let _ = feeder.join();
    out
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
