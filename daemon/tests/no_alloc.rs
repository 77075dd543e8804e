//! The per-token loop allocates nothing: a counting global allocator sees no allocation
//! between the second generated token and the last, with every feature of the loop in
//! play (Tekken detokenizer, stop strings, penalties, top-k/top-p/min-p sampling, the
//! thread pool, a q8_0 KV cache), alone and with several sequences stepped together. One
//! test in this binary, so nothing else allocates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use spillway::engine::{Engine, EngineConfig, GenerateRequest, SamplingParams, StepEvent};
use spillway::model::KvType;
use spillway::synth::Quant;

mod common;

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn the_token_loop_does_not_allocate() {
    for kv in [KvType::F16, KvType::Q8_0] {
        let mut cfg = EngineConfig::new(common::synth_model(Quant::Q4KM, 11, true));
        cfg.threads = 2;
        cfg.context = 512;
        cfg.kv_type = kv;
        cfg.sessions = 3;
        let mut engine = Engine::load(&cfg).unwrap();
        let tok = engine.tokenizer().unwrap();
        let prompt = spillway::tokenizer::ChatPrompt::new()
            .user("Write a long story about a lighthouse keeper.")
            .encode(tok)
            .unwrap();
        let req = GenerateRequest {
            prompt,
            max_tokens: Some(200),
            sampling: SamplingParams {
                temperature: 0.9,
                top_k: 100,
                top_p: 0.95,
                min_p: 0.01,
                repeat_penalty: 1.1,
                presence_penalty: 0.2,
                frequency_penalty: 0.1,
                seed: 9,
                ..SamplingParams::default()
            },
            stop: vec!["a stop string that never comes".into(), "\u{1F600}".into()],
            ..GenerateRequest::default()
        };
        let mut counts = Vec::with_capacity(256);
        let mut text_bytes = 0;
        let done = engine
            .generate(&req, &AtomicBool::new(false), |ev| {
                counts.push(ALLOCS.load(Ordering::Relaxed));
                text_bytes += ev.text.len();
                ControlFlow::Continue(())
            })
            .unwrap();
        assert!(
            done.completion_tokens >= 100,
            "{kv:?}: generated {}",
            done.completion_tokens
        );
        assert!(
            text_bytes > 100,
            "{kv:?}: the model produced text ({text_bytes} bytes)"
        );
        // Token 1 comes after the prompt pass, which may allocate (warm-up of reused
        // buffers); from token 2 on, nothing may.
        let steady = &counts[1..];
        assert_eq!(
            steady.first(),
            steady.last(),
            "{kv:?}: {} allocations during {} tokens",
            steady.last().unwrap() - steady.first().unwrap(),
            steady.len()
        );

        // Three sequences stepped together: once all three decode, no step allocates.
        let ids: Vec<_> = (0..3)
            .map(|i| {
                let mut r = req.clone();
                r.sampling.seed = i;
                r.max_tokens = Some(60 + 10 * i as usize);
                engine.start(&r).unwrap()
            })
            .collect();
        let mut tokens = [0usize; 3];
        let mut steady_from = None;
        let mut steps = 0;
        while engine.active() > 0 {
            engine.step(|id, ev| {
                if let StepEvent::Token(t) = ev
                    && t.id.is_some()
                {
                    tokens[ids.iter().position(|&i| i == id).unwrap()] += 1;
                }
                ControlFlow::Continue(())
            });
            if steady_from.is_none() && tokens.iter().all(|&n| n >= 2) {
                steady_from = Some(ALLOCS.load(Ordering::Relaxed));
            }
            steps += 1;
        }
        let from = steady_from.expect("all three decoded together");
        assert_eq!(
            ALLOCS.load(Ordering::Relaxed),
            from,
            "{kv:?}: allocations while stepping three sequences ({steps} steps, {tokens:?} tokens)"
        );
    }
}
