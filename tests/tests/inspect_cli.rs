//! `spillway inspect`: its JSON reading of every fixture model equals gguf-py's (llama.cpp's
//! reference reader), every malformed file is refused with one line and exit code 1, and the
//! report shows the model, tokenizer, tensors and memory.

use std::path::{Path, PathBuf};
use std::process::Command;

use spillway_e2e::{fixtures, python, run_spillway, stderr, stdout, workspace_root};

fn gguf_py_reading(file: &Path) -> serde_json::Value {
    let script = workspace_root().join("tests/scripts/gguf_py_dump.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(file)
        .output()
        .expect("python runs (SPILLWAY_PYTHON, else python3)");
    assert!(
        out.status.success(),
        "gguf-py could not read {} (./test.sh sets SPILLWAY_PYTHON to a venv with gguf-py: scripts/python-env.sh):\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures().join("models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.push(fixtures().join("malformed/VALID-base.gguf"));
    v.sort();
    v
}

#[test]
fn json_agrees_with_gguf_py_on_every_fixture() {
    let files = models();
    assert_eq!(files.len(), 9);
    for file in files {
        let out = run_spillway(&["inspect", "--json", file.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}: {}", file.display(), stderr(&out));
        let ours: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{}: not one JSON object: {e}", file.display()));
        let theirs = gguf_py_reading(&file);
        for part in ["version", "alignment", "tensors"] {
            assert_eq!(ours[part], theirs[part], "{}: {part}", file.display());
        }
        let (a, b) = (
            ours["metadata"].as_object().unwrap(),
            theirs["metadata"].as_object().unwrap(),
        );
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{}: keys and their order",
            file.display()
        );
        for (k, v) in a {
            assert_eq!(v, &b[k], "{}: {k}", file.display());
        }
    }
}

#[test]
fn every_malformed_file_is_refused_with_one_line() {
    let dir = fixtures().join("malformed");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("VALID")
        {
            continue;
        }
        for json in [false, true] {
            let mut args = vec!["inspect", path.to_str().unwrap()];
            if json {
                args.push("--json");
            }
            let out = run_spillway(&args, &[]);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{}: {}",
                path.display(),
                stderr(&out)
            );
            let err = stderr(&out);
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.starts_with("spillway: error: "), "{err}");
            assert!(
                stdout(&out).is_empty(),
                "nothing on stdout for a refused file"
            );
        }
        n += 1;
    }
    assert!(n >= 10);
}

#[test]
fn the_report_shows_model_tokenizer_tensors_and_memory() {
    let f = fixtures().join("models/tiny-tekken-q4_k_m.gguf");
    let out = run_spillway(&["inspect", f.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "architecture: mistral3",
        "2 layers, embedding 256, feed-forward 768, heads 8 (kv 2)",
        "YaRN x16 over 64",
        "attention temperature 0.1",
        "tokenizer: gpt2 (pre-tokenizer tekken), 131072 tokens, 269443 merges",
        "token_embd.weight",
        "Q6_K",
        "totals by type:",
        // 2 layers x (K + V) x 2 kv heads x 64 x 2 bytes = 1 KiB per token in f16.
        "KV cache f16: 1.00 KiB per token",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    // --json carries the same memory figures, in bytes.
    let out = run_spillway(&["inspect", "--json", f.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let mem = &doc["memory"];
    assert_eq!(mem["kv_cache"]["f16"]["bytes_per_token"], 1024, "{mem}");
    assert_eq!(
        mem["kv_cache"]["f16"]["bytes_at_4096_tokens"],
        1024 * 4096,
        "{mem}"
    );
    let weights = std::fs::metadata(&f).unwrap().len();
    let mapped = mem["weights_bytes"].as_u64().unwrap();
    assert!(
        mapped > 0 && mapped < weights,
        "{mapped} of a {weights}-byte file"
    );
}

#[test]
fn a_missing_file_is_one_line() {
    let out = run_spillway(&["inspect", "/nonexistent/model.gguf"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot open /nonexistent/model.gguf"));
}
