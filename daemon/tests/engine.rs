//! The engine's generation loop on the fixture models: greedy generation reproduces
//! llama.cpp's continuations, a session's cached prefix gives the same tokens as a fresh
//! evaluation, limits are errors (never silent truncation), cancellation stops between
//! tokens, seeded sampling is reproducible, an over-budget plan is refused, and a cached
//! prefix serves only its own session or client.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use spillway::engine::{
    Engine, EngineConfig, EngineError, FinishReason, GenerateRequest, SamplingError, SamplingParams,
};
use spillway::model::KvType;
use spillway_e2e::fixtures;
use spillway_gguf::GgufError;

mod common;
use common::synth_model;
use spillway::synth::Quant;

fn model(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

fn ids(name: &str) -> Vec<u32> {
    std::fs::read_to_string(fixtures().join("golden").join(name))
        .unwrap()
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect()
}

fn engine(name: &str, sessions: usize) -> Engine {
    engine_at(model(name), sessions)
}

fn engine_at(path: PathBuf, sessions: usize) -> Engine {
    let mut cfg = EngineConfig::new(path);
    cfg.threads = 2;
    cfg.context = 256;
    cfg.sessions = sessions;
    cfg.batch = 16;
    Engine::load(&cfg).unwrap()
}

fn greedy(max_tokens: usize) -> SamplingParams {
    let _ = max_tokens;
    SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

/// Generates and collects the token ids.
fn run(e: &mut Engine, req: &GenerateRequest) -> (Vec<u32>, spillway::engine::Completion) {
    let mut out = Vec::new();
    let done = e
        .generate(req, &AtomicBool::new(false), |ev| {
            out.extend(ev.id);
            ControlFlow::Continue(())
        })
        .unwrap();
    (out, done)
}

#[test]
fn greedy_generation_reproduces_llama_cpp() {
    for variant in ["q4_0", "q4_k_m", "f16"] {
        let mut e = engine(&format!("tiny-{variant}.gguf"), 1);
        let golden = ids(&format!("tiny-{variant}.greedy32.txt"));
        let req = GenerateRequest {
            prompt: ids("tiny.ids.txt"),
            max_tokens: Some(golden.len()),
            sampling: greedy(32),
            ..GenerateRequest::default()
        };
        let (got, done) = run(&mut e, &req);
        // Generation stops early only at EOS, which must then be the golden's next token.
        assert_eq!(&got[..], &golden[..got.len()], "{variant}");
        assert!(
            got.len() == golden.len() || golden[got.len() - 1] == 2,
            "{variant}"
        );
        assert_eq!(done.prompt_tokens, 96);
        assert_eq!(done.cached_tokens, 0);
    }
}

#[test]
fn a_cached_prefix_gives_the_same_tokens_as_a_fresh_evaluation() {
    let prompt = ids("tiny.ids.txt");
    let first = GenerateRequest {
        prompt: prompt[..60].to_vec(),
        session: Some("conversation-1".into()),
        max_tokens: Some(8),
        sampling: greedy(8),
        ..GenerateRequest::default()
    };
    // A follow-up turn: the first prompt, then 36 more tokens.
    let follow_up = GenerateRequest {
        prompt: prompt.clone(),
        max_tokens: Some(12),
        ..first.clone()
    };

    let mut warm = engine("tiny-q4_k_m.gguf", 2);
    run(&mut warm, &first);
    let (warm_tokens, done) = run(&mut warm, &follow_up);
    assert_eq!(done.cached_tokens, 60, "the first turn's prompt was reused");
    assert_eq!(done.timings.prompt_evaluated, 36);

    let mut cold = engine("tiny-q4_k_m.gguf", 1);
    let (cold_tokens, done) = run(&mut cold, &follow_up);
    assert_eq!(done.cached_tokens, 0);
    assert_eq!(
        warm_tokens, cold_tokens,
        "reusing the cache changes nothing"
    );

    // The same prompt again reuses all but its last token.
    let (again, done) = run(&mut warm, &follow_up);
    assert_eq!(done.cached_tokens, prompt.len() - 1);
    assert_eq!(again, cold_tokens);
}

/// Another client's prompt must not show through `cached_tokens`: the cache serves only
/// the same session key or the same owner, and reusing it or not changes no output.
#[test]
fn a_cached_prefix_serves_only_its_own_client_or_session() {
    let prompt = ids("tiny.ids.txt")[..60].to_vec();
    let asked_by = |owner: Option<&str>, session: Option<&str>| GenerateRequest {
        prompt: prompt.clone(),
        owner: owner.map(str::to_string),
        session: session.map(str::to_string),
        max_tokens: Some(8),
        sampling: greedy(8),
        ..GenerateRequest::default()
    };
    // One slot: every request lands in the cache the previous one filled.
    let mut e = engine("tiny-q4_0.gguf", 1);
    let (first, done) = run(&mut e, &asked_by(Some("client/a"), None));
    assert_eq!(done.cached_tokens, 0);

    let (other, done) = run(&mut e, &asked_by(Some("client/b"), None));
    assert_eq!(done.cached_tokens, 0, "another client's prompt was reused");
    assert_eq!(done.timings.prompt_evaluated, prompt.len());
    assert_eq!(other, first);

    let (same, done) = run(&mut e, &asked_by(Some("client/b"), None));
    assert!(done.cached_tokens > 0, "the same client reuses its prompt");
    assert_eq!(same, first);

    // Unknown owners never share, not even with each other.
    run(&mut e, &asked_by(None, None));
    let (_, done) = run(&mut e, &asked_by(None, None));
    assert_eq!(done.cached_tokens, 0, "two unknown clients shared a cache");

    // A session key reuses its own session, whoever asks, and only it.
    run(&mut e, &asked_by(Some("client/a"), Some("conversation-1")));
    let (keyed, done) = run(&mut e, &asked_by(None, Some("conversation-1")));
    assert!(done.cached_tokens > 0, "the session's cache was not reused");
    assert_eq!(keyed, first);
    let (_, done) = run(&mut e, &asked_by(Some("client/a"), Some("conversation-2")));
    assert_eq!(done.cached_tokens, 0, "another session's cache was reused");
    let (_, done) = run(&mut e, &asked_by(Some("client/b"), None));
    assert_eq!(
        done.cached_tokens, 0,
        "another client read a session's cache"
    );
}

#[test]
fn a_model_without_a_tokenizer_is_recognised_from_its_header() {
    assert!(spillway::engine::has_tokenizer(&model("tiny-tekken-q4_k_m.gguf")).unwrap());
    let bare = synth_model(Quant::Q8_0, 5, false);
    assert!(!spillway::engine::has_tokenizer(&bare).unwrap());
    // The same answer the loaded engine gives.
    assert!(engine_at(bare, 1).tokenizer().is_none());
    let missing = std::env::temp_dir().join("spillway-test-no-such-model.gguf");
    let r = spillway::engine::has_tokenizer(&missing);
    let cannot_open =
        matches!(&r, Err(EngineError::Gguf(GgufError::Open { path, .. })) if *path == missing);
    assert!(cannot_open, "{r:?}");
}

#[test]
fn context_limits_are_errors() {
    let mut e = engine("tiny-q4_0.gguf", 1);
    let too_long = GenerateRequest {
        prompt: vec![5; 256],
        ..GenerateRequest::default()
    };
    let err = e
        .generate(&too_long, &AtomicBool::new(false), |_| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
    assert!(matches!(err, EngineError::ContextLength(_)), "{err}");
    let too_many = GenerateRequest {
        prompt: vec![5; 200],
        max_tokens: Some(100),
        ..GenerateRequest::default()
    };
    let err = e
        .generate(&too_many, &AtomicBool::new(false), |_| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("exceed the context of 256 tokens"),
        "{err}"
    );
    let bad = GenerateRequest {
        prompt: vec![5, 6],
        sampling: SamplingParams {
            temperature: 9.0,
            ..SamplingParams::default()
        },
        ..GenerateRequest::default()
    };
    let r = e.generate(&bad, &AtomicBool::new(false), |_| ControlFlow::Continue(()));
    assert!(
        matches!(
            &r,
            Err(EngineError::Sampling(SamplingError::OutOfRange {
                name: "temperature",
                ..
            }))
        ),
        "{r:?}"
    );
}

#[test]
fn generation_stops_when_cancelled() {
    let mut e = engine("tiny-q4_0.gguf", 1);
    let req = GenerateRequest {
        prompt: ids("tiny.ids.txt"),
        max_tokens: Some(50),
        sampling: SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        },
        ..GenerateRequest::default()
    };
    let mut n = 0;
    let done = e
        .generate(&req, &AtomicBool::new(false), |_| {
            n += 1;
            if n == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(done.finish_reason, FinishReason::Cancelled);
    assert_eq!(done.completion_tokens, 3);

    let cancel = AtomicBool::new(false);
    let mut n = 0;
    let done = e
        .generate(&req, &cancel, |_| {
            n += 1;
            if n == 5 {
                cancel.store(true, Ordering::Relaxed);
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(done.finish_reason, FinishReason::Cancelled);
    assert_eq!(done.completion_tokens, 5);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let mut e = engine_at(synth_model(Quant::Q8_0, 5, false), 1);
    let req = |seed| GenerateRequest {
        prompt: ids("tiny.ids.txt")[..40].to_vec(),
        max_tokens: Some(24),
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.95,
            seed,
            ..SamplingParams::default()
        },
        ..GenerateRequest::default()
    };
    let (a, _) = run(&mut e, &req(42));
    let (b, _) = run(&mut e, &req(42));
    let (c, _) = run(&mut e, &req(43));
    assert_eq!(a, b);
    assert_ne!(a, c);
    let (d, done) = run(&mut e, &req(42));
    assert_eq!(d, a);
    assert_eq!(done.finish_reason, FinishReason::Length);
    assert_eq!(done.completion_tokens, 24);
}

#[test]
fn an_over_budget_plan_is_refused_with_what_would_fit() {
    let mut cfg = EngineConfig::new(model("tiny-tekken-q4_k_m.gguf"));
    cfg.threads = 1;
    cfg.context = 4096;
    cfg.sessions = 4;
    let plan_total = {
        let e = Engine::load(&cfg).unwrap();
        e.plan().total()
    };
    // 4 sessions x 4096 tokens: a q8_0 cache saves 7.5 MiB here.
    cfg.ram_budget = Some(plan_total - 4 * 1024 * 1024);
    let err = Engine::load(&cfg).unwrap_err().to_string();
    assert!(err.contains("does not fit the RAM budget"), "{err}");
    assert!(err.contains("what would fit"), "{err}");
    assert!(err.contains("KV cache (4 x 4096 tokens, f16"), "{err}");
    cfg.kv_type = KvType::Q8_0;
    assert!(
        Engine::load(&cfg).is_ok(),
        "a q8_0 cache fits, as the error suggested"
    );
}
