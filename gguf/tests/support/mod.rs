#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

/// `../shared/fixtures`, found from the workspace root (or `SPILLWAY_FIXTURES`).
pub fn fixtures() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    [
        std::env::var_os("SPILLWAY_FIXTURES").map(PathBuf::from),
        Some(root.join("../shared/fixtures")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.join("README.md").exists())
    .expect("fixtures not found: set SPILLWAY_FIXTURES or put shared/ beside the checkout")
}
