//! Shared by the tokenizer tests: the fixtures, the two loaded vocabularies (tekken.json and
//! the GGUF, loaded once per test binary, with their load times printed) and the golden
//! cases.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use spillway::tokenizer::Tokenizer;
use spillway_gguf::GgufFile;

/// `../shared/fixtures` beside the workspace (or `SPILLWAY_FIXTURES`).
pub(crate) fn fixtures() -> PathBuf {
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

pub(crate) fn tekken_json_path() -> PathBuf {
    fixtures().join("tekken_240911.json")
}

pub(crate) fn tekken_gguf_path() -> PathBuf {
    fixtures().join("models/tiny-tekken-q4_k_m.gguf")
}

/// The vocabulary of `tekken_240911.json`.
pub(crate) fn tekken() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let t = Instant::now();
        let tok = Tokenizer::from_tekken_json(tekken_json_path()).expect("tekken.json loads");
        eprintln!(
            "tekken.json loaded in {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        tok
    })
}

/// The vocabulary embedded in `tiny-tekken-q4_k_m.gguf`.
pub(crate) fn gguf() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let t = Instant::now();
        let file = GgufFile::open(tekken_gguf_path()).expect("GGUF opens");
        let tok = Tokenizer::from_gguf(&file).expect("GGUF vocabulary loads");
        eprintln!(
            "GGUF vocabulary loaded in {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        tok
    })
}

/// Both vocabularies, with a label for messages.
pub(crate) fn both() -> [(&'static str, &'static Tokenizer); 2] {
    [("tekken.json", tekken()), ("GGUF", gguf())]
}

/// One line of `tokenizer-golden.jsonl` (mistral-common's output).
#[derive(Debug)]
pub(crate) struct Golden {
    pub(crate) text: String,
    pub(crate) ids: Vec<u32>,
    pub(crate) decoded: String,
}

pub(crate) fn golden() -> Vec<Golden> {
    let text = std::fs::read_to_string(fixtures().join("tokenizer-golden.jsonl")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Golden {
                text: v["text"].as_str().unwrap().to_owned(),
                ids: v["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect(),
                decoded: v["decoded"].as_str().unwrap().to_owned(),
            }
        })
        .collect()
}
