//! `spillway synth`: tiny models in every mix are valid Spillway models, read identically by
//! gguf-py, laid out like llama-quantize's files (per-tensor types and hyperparameters of the
//! fixtures), and deterministic in their seed.

use std::path::{Path, PathBuf};
use std::process::Command;

use spillway_e2e::{fixtures, python, run_spillway, stderr, stdout, workspace_root};

const MIXES: [&str; 6] = ["f32", "f16", "q8_0", "q4_0", "q4_k_m", "q5_k_m"];

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spillway-synth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn synth(quant: &str, seed: &str, out: &Path) {
    let o = run_spillway(
        &[
            "synth",
            "--shape",
            "tiny",
            "--quant",
            quant,
            "--seed",
            seed,
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "synth {quant}: {}", stderr(&o));
    assert!(stdout(&o).contains("wrote "), "{}", stdout(&o));
}

/// `inspect --json` without its `memory` figures (ours alone; gguf-py has no such thing):
/// the file's structure, as gguf-py reads it.
fn inspect_json(file: &Path) -> serde_json::Value {
    let o = run_spillway(&["inspect", "--json", file.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}: {}", file.display(), stderr(&o));
    let mut doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let memory = doc.as_object_mut().unwrap().remove("memory");
    assert!(memory.is_some(), "{}: no memory figures", file.display());
    doc
}

fn gguf_py(file: &Path) -> serde_json::Value {
    let o = Command::new(python())
        .arg(workspace_root().join("tests/scripts/gguf_py_dump.py"))
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn tiny_models_match_the_fixtures_layout_and_read_back_in_gguf_py() {
    for quant in MIXES {
        let out = tmp(&format!("tiny-{quant}.gguf"));
        synth(quant, "1", &out);
        assert!(!out.with_extension("gguf.partial").exists());
        let ours = inspect_json(&out);
        assert_eq!(
            ours,
            gguf_py(&out),
            "{quant}: gguf-py reads the file the same way"
        );

        let fixture = inspect_json(&fixtures().join(format!("models/tiny-{quant}.gguf")));
        let types = |v: &serde_json::Value| -> Vec<(String, String, String)> {
            let mut t: Vec<_> = v["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["name"].to_string(),
                        t["type"].to_string(),
                        t["shape"].to_string(),
                    )
                })
                .collect();
            t.sort();
            t
        };
        assert_eq!(
            types(&ours),
            types(&fixture),
            "{quant}: tensor names, types and shapes"
        );
        // Same hyperparameters as the fixtures (everything under mistral3.*).
        for (k, v) in fixture["metadata"].as_object().unwrap() {
            if k.starts_with("mistral3.") || k == "general.architecture" || k == "general.file_type"
            {
                assert_eq!(&ours["metadata"][k], v, "{quant}: {k}");
            }
        }
        // And it is a valid model for `inspect`'s report.
        let o = run_spillway(&["inspect", out.to_str().unwrap()], &[]);
        assert!(
            stdout(&o).contains("architecture: mistral3"),
            "{}",
            stdout(&o)
        );
    }
}

#[test]
fn output_depends_only_on_the_seed() {
    let (a, b, c) = (tmp("a.gguf"), tmp("b.gguf"), tmp("c.gguf"));
    synth("q4_k_m", "7", &a);
    let o = run_spillway(
        &[
            "synth",
            "--shape",
            "tiny",
            "--quant",
            "q4_k_m",
            "--seed",
            "7",
            "--threads",
            "1",
            "--out",
            b.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success());
    synth("q4_k_m", "8", &c);
    let (a, b, c) = (
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        std::fs::read(c).unwrap(),
    );
    assert!(a == b, "same seed, any thread count: identical files");
    assert!(a != c, "another seed: other weights");
    assert_eq!(a.len(), c.len());
}

#[test]
fn bad_arguments_are_refused() {
    let o = run_spillway(
        &[
            "synth",
            "--shape",
            "7b",
            "--quant",
            "q4_0",
            "--out",
            "/tmp/x.gguf",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "clap's usage error");
    let o = run_spillway(
        &[
            "synth",
            "--shape",
            "tiny",
            "--quant",
            "q4_0",
            "--out",
            "/nonexistent-dir/x.gguf",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot create"), "{}", stderr(&o));
}
