//! After loading and generating, the process's resident memory grew by no more than the
//! memory plan said it would (weights, KV cache for every slot, scratch, tokenizer, runtime
//! allowance). One test in this binary, so nothing else moves the RSS.

use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;

use spillway::engine::{Engine, EngineConfig, GenerateRequest, SamplingParams, resident_bytes};
use spillway::units::human_bytes;

#[test]
fn resident_memory_stays_within_the_plan() {
    let before = resident_bytes().expect("Linux /proc/self/statm");
    let mut cfg =
        EngineConfig::new(spillway_e2e::fixtures().join("models/tiny-tekken-q4_k_m.gguf"));
    cfg.threads = 2;
    cfg.context = 2048;
    cfg.sessions = 2;
    let mut engine = Engine::load(&cfg).unwrap();
    let plan = engine.plan().clone();
    // Fill both slots' caches over most of their context, touching every page we own.
    for session in ["a", "b"] {
        let req = GenerateRequest {
            prompt: (0..1500).map(|i| 1000 + (i * 7919) % 100_000).collect(),
            session: Some(session.into()),
            max_tokens: Some(64),
            sampling: SamplingParams {
                temperature: 1.0,
                ..SamplingParams::default()
            },
            ..GenerateRequest::default()
        };
        engine
            .generate(&req, &AtomicBool::new(false), |_| ControlFlow::Continue(()))
            .unwrap();
    }
    let after = resident_bytes().unwrap();
    let grown = after.saturating_sub(before);
    eprintln!(
        "{plan}\nRSS grew by {} ({} -> {})",
        human_bytes(grown),
        human_bytes(before),
        human_bytes(after)
    );
    assert!(
        grown <= plan.total(),
        "resident memory grew by {} but the plan allows {}",
        human_bytes(grown),
        human_bytes(plan.total())
    );
    // And the plan is not wildly loose: the weights and caches really are resident.
    assert!(
        grown >= plan.weights / 2 + plan.kv_total() / 2,
        "grew by only {}",
        human_bytes(grown)
    );
}
