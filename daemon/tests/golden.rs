//! The forward pass against llama.cpp (fixtures' `golden/`): every model's logits at every
//! position, evaluated as one batch (prefill) and one token at a time (decode), within the
//! fixtures' tolerance table, and the greedy continuations token for token.

use std::path::Path;
use std::sync::Arc;

use spillway::model::{Compute, Forward, ForwardError, KvCache, KvType, LogitsFor, ModelWeights};
use spillway_e2e::fixtures;
use spillway_gguf::GgufFile;
use spillway_kernels::{PoolConfig, ThreadPool, dispatch};

/// The fixtures README's bounds: (min cosine per position, argmax agreement,
/// max abs error / max abs logit).
struct Tolerance {
    cosine: f64,
    argmax: f64,
    rel_err: f64,
}

const FLOAT: Tolerance = Tolerance {
    cosine: 0.99999,
    argmax: 1.0,
    rel_err: 1e-3,
};
const QUANTIZED: Tolerance = Tolerance {
    cosine: 0.9995,
    argmax: 0.98,
    rel_err: 1e-2,
};

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn read_ids(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap()
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

fn check(what: &str, got: &[f32], want: &[f32], n_vocab: usize, tol: &Tolerance) {
    assert_eq!(got.len(), want.len(), "{what}: row count");
    let rows = got.len() / n_vocab;
    let max_logit = f64::from(want.iter().fold(0f32, |m, v| m.max(v.abs())));
    let (mut min_cos, mut agree, mut max_err) = (1.0f64, 0usize, 0.0f64);
    for (g, w) in got.chunks_exact(n_vocab).zip(want.chunks_exact(n_vocab)) {
        let (mut dot, mut gg, mut ww) = (0.0f64, 0.0f64, 0.0f64);
        for (&a, &b) in g.iter().zip(w) {
            dot += f64::from(a) * f64::from(b);
            gg += f64::from(a) * f64::from(a);
            ww += f64::from(b) * f64::from(b);
            max_err = max_err.max(f64::from(a - b).abs());
        }
        min_cos = min_cos.min(dot / (gg.sqrt() * ww.sqrt()));
        agree += usize::from(argmax(g) == argmax(w));
    }
    let agreement = agree as f64 / rows as f64;
    let rel = max_err / max_logit;
    eprintln!(
        "{what}: min cosine {min_cos:.7}, argmax {:.1}%, max err / max logit {rel:.2e}",
        agreement * 100.0
    );
    assert!(
        min_cos >= tol.cosine,
        "{what}: min cosine {min_cos} < {}",
        tol.cosine
    );
    assert!(
        agreement >= tol.argmax,
        "{what}: argmax agreement {agreement}"
    );
    assert!(rel <= tol.rel_err, "{what}: max error / max logit {rel:e}");
}

struct Model {
    w: ModelWeights,
    c: Compute,
}

fn load(name: &str) -> Model {
    let file = Arc::new(GgufFile::open(fixtures().join("models").join(name)).unwrap());
    Model {
        w: ModelWeights::new(file).unwrap(),
        c: Compute::new(
            ThreadPool::new(PoolConfig::with_threads(2)).unwrap(),
            dispatch::select().unwrap(),
        ),
    }
}

/// All positions' logits, as one batch or one token at a time.
fn logits(m: &Model, ids: &[u32], kv_type: KvType, batch: bool) -> Vec<f32> {
    let n = ids.len();
    let mut kv = KvCache::new(&m.w.config, kv_type, n).unwrap();
    if batch {
        let mut f = Forward::new(&m.w, n, n, true, 2);
        f.eval(&m.w, &mut kv, ids, LogitsFor::All, &m.c)
            .unwrap()
            .to_vec()
    } else {
        let mut f = Forward::new(&m.w, n, 1, false, 2);
        ids.iter()
            .flat_map(|&id| {
                f.eval(&m.w, &mut kv, &[id], LogitsFor::Last, &m.c)
                    .unwrap()
                    .to_vec()
            })
            .collect()
    }
}

/// Greedy continuation of `prompt` for `n` tokens.
fn greedy(m: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let ctx = prompt.len() + n;
    let mut kv = KvCache::new(&m.w.config, KvType::F16, ctx).unwrap();
    let mut f = Forward::new(&m.w, ctx, 32, false, 2);
    let mut next = argmax(
        f.eval(&m.w, &mut kv, prompt, LogitsFor::Last, &m.c)
            .unwrap(),
    ) as u32;
    let mut out = vec![next];
    while out.len() < n {
        next = argmax(
            f.eval(&m.w, &mut kv, &[next], LogitsFor::Last, &m.c)
                .unwrap(),
        ) as u32;
        out.push(next);
    }
    out
}

#[test]
fn tiny_models_match_llama_cpp() {
    let ids = read_ids(&fixtures().join("golden/tiny.ids.txt"));
    for variant in ["f32", "f16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"] {
        let m = load(&format!("tiny-{variant}.gguf"));
        let want = read_f32(&fixtures().join(format!("golden/tiny-{variant}.prefill.f32")));
        let tol = if matches!(variant, "f32" | "f16") {
            &FLOAT
        } else {
            &QUANTIZED
        };
        let v = m.w.config.n_vocab;
        check(
            &format!("{variant} prefill"),
            &logits(&m, &ids, KvType::F16, true),
            &want,
            v,
            tol,
        );
        check(
            &format!("{variant} decode"),
            &logits(&m, &ids, KvType::F16, false),
            &want,
            v,
            tol,
        );
        // A Q8_0 cache quantizes keys and values: held to the quantized bounds.
        check(
            &format!("{variant} decode, q8_0 KV"),
            &logits(&m, &ids, KvType::Q8_0, false),
            &want,
            v,
            &QUANTIZED,
        );

        let golden = read_ids(&fixtures().join(format!("golden/tiny-{variant}.greedy32.txt")));
        assert_eq!(
            greedy(&m, &ids, golden.len()),
            golden,
            "{variant}: greedy continuation"
        );
    }
}

#[test]
fn the_tekken_model_matches_llama_cpp_on_the_chat_prompt() {
    let ids = read_ids(&fixtures().join("golden/tiny-tekken.chat.ids.txt"));
    let m = load("tiny-tekken-q4_k_m.gguf");
    let want = read_f32(&fixtures().join("golden/tiny-tekken-q4_k_m.prefill.f32"));
    let v = m.w.config.n_vocab;
    assert_eq!(v, 131072);
    check(
        "tekken prefill",
        &logits(&m, &ids, KvType::F16, true),
        &want,
        v,
        &QUANTIZED,
    );
    check(
        "tekken decode",
        &logits(&m, &ids, KvType::F16, false),
        &want,
        v,
        &QUANTIZED,
    );
    let golden = read_ids(&fixtures().join("golden/tiny-tekken-q4_k_m.greedy16.txt"));
    assert_eq!(
        greedy(&m, &ids, golden.len()),
        golden,
        "tekken greedy continuation"
    );
}

#[test]
fn errors_are_reported_not_panicked() {
    let m = load("tiny-q4_0.gguf");
    let mut kv = KvCache::new(&m.w.config, KvType::F16, 4).unwrap();
    let mut f = Forward::new(&m.w, 4, 4, false, 2);
    let err = f
        .eval(&m.w, &mut kv, &[1, 2, 3, 4, 5], LogitsFor::Last, &m.c)
        .unwrap_err();
    assert!(err.to_string().contains("context full"), "{err}");
    let err = f
        .eval(&m.w, &mut kv, &[5000], LogitsFor::Last, &m.c)
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let r = f.eval(&m.w, &mut kv, &[], LogitsFor::Last, &m.c);
    assert!(matches!(r, Err(ForwardError::Empty)), "{r:?}");
    assert_eq!(kv.len(), 0, "refused evaluations leave the cache as it was");
}

/// The memory plan counts the forward pass's buffers before they exist: what
/// `Forward::estimate_bytes` says is exactly what `Forward::new` allocates, for every
/// weight format (their activation formats differ) and batch shape.
#[test]
fn the_planned_scratch_is_what_the_forward_pass_allocates() {
    for name in [
        "tiny-f32.gguf",
        "tiny-q4_0.gguf",
        "tiny-q4_k_m.gguf",
        "tiny-q6_k.gguf",
    ] {
        let m = load(name);
        for (n_ctx, batch, seqs, all_logits, threads) in [
            (64, 1, 1, false, 1),
            (96, 32, 1, false, 2),
            (96, 96, 1, true, 4),
            (96, 35, 4, false, 2),
        ] {
            let f = Forward::for_sequences(&m.w, n_ctx, batch, seqs, all_logits, threads);
            assert_eq!(
                f.scratch_bytes(),
                Forward::estimate_bytes(&m.w, n_ctx, batch, seqs, all_logits, threads),
                "{name}: ctx {n_ctx}, batch {batch}, {seqs} sequences, all_logits {all_logits}, {threads} threads"
            );
        }
    }
}
