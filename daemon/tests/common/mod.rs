//! Models the daemon's tests synthesize (the fixtures' random logits are too peaked to
//! sample from: their top two tokens are ~168 apart; `synth` scales weights to keep logits
//! near unit spread, and can embed the real Tekken vocabulary).

#![allow(dead_code)]

use std::path::PathBuf;

use spillway::synth::{self, Quant, Shape, SynthSpec};
use spillway::tokenizer::Tokenizer;

/// A tiny synthesized model, with or without the Tekken vocabulary, kept in cargo's
/// temporary directory for integration tests and named after this test binary's build (the
/// synthesizer is compiled into it): made once per build, shared by its runs, never left
/// in /tmp.
pub(crate) fn synth_model(quant: Quant, seed: u64, tekken: bool) -> PathBuf {
    let built = std::env::current_exe()
        .and_then(std::fs::metadata)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "spillway-test-{}-{seed}-{tekken}-{built}.gguf",
        quant.name()
    ));
    if path.exists() {
        return path;
    }
    let tokenizer = tekken.then(|| {
        let tok = Tokenizer::from_tekken_json(spillway_e2e::fixtures().join("tekken_240911.json"))
            .unwrap();
        synth::Tokenizer {
            metadata: tok.gguf_metadata().unwrap(),
            n_vocab: tok.n_vocab() as u64,
        }
    });
    let spec = SynthSpec {
        shape: Shape::Tiny,
        quant,
        seed,
        tokenizer,
    };
    // Tests of one binary run on several threads: each writes its own copy and the first
    // rename wins (a rename over the same content is harmless).
    static WRITER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = WRITER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = path.with_extension(format!("partial-{}-{n}", std::process::id()));
    let f = std::fs::File::create(&partial).unwrap();
    synth::write(&spec, std::io::BufWriter::new(f), 2, |_| {}).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    path
}
