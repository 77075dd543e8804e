//! Continuous batching changes throughput, never results: requests stepped together (started
//! at different times, prompts read in chunks next to running decodes, more requests than
//! slots) produce exactly the tokens, text and finish of each request run alone, greedy and
//! sampled, with stop strings, penalties and a JSON constraint; on f16 and q8_0 KV caches,
//! Q4_K_M and Q4_0 weights. Cancelling one sequence leaves the others untouched, and a
//! session's slot runs one of its turns at a time.

use std::collections::{BTreeMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use spillway::constrain::{Grammars, OutputRules, ResponseFormat};
use spillway::engine::{
    Engine, EngineConfig, EngineError, FinishReason, GenerateRequest, SamplingParams, SeqId,
    StepEvent,
};
use spillway::model::KvType;
use spillway::synth::Quant;
use spillway::tokenizer::{ChatPrompt, Tokenizer};

mod common;

/// What a generation produced: ids, the text streamed, how it ended, its token counts.
#[derive(Clone, Debug, Default, PartialEq)]
struct Outcome {
    ids: Vec<u32>,
    text: String,
    finish: Option<FinishReason>,
    completion_tokens: usize,
    prompt_tokens: usize,
}

fn engine(quant: Quant, kv: KvType, sessions: usize) -> Engine {
    let mut cfg = EngineConfig::new(common::synth_model(quant, 21, true));
    cfg.threads = 2;
    cfg.context = 384;
    cfg.sessions = sessions;
    // Small prefill passes, so long prompts are read over several steps next to decodes.
    cfg.batch = 24;
    cfg.kv_type = kv;
    Engine::load(&cfg).unwrap()
}

/// Requests of every kind: short and long prompts (several chunks), greedy and sampled,
/// penalties, stop strings, a JSON-object constraint, one that ends on `max_tokens` early.
fn requests(tok: &Arc<Tokenizer>) -> Vec<GenerateRequest> {
    let prompt = |text: &str| ChatPrompt::new().user(text).encode(tok).unwrap();
    let long = "Tell me everything about lighthouses, their keepers, the lenses they used, \
                the storms they lived through and the ships they saved, in great detail. "
        .repeat(3);
    let json = Grammars::new(Arc::clone(tok))
        .unwrap()
        .compile(
            &[],
            &OutputRules {
                response_format: ResponseFormat::JsonObject,
                ..OutputRules::default()
            },
        )
        .unwrap();
    let sampled = |seed| SamplingParams {
        temperature: 0.9,
        top_k: 80,
        top_p: 0.95,
        min_p: 0.01,
        seed,
        ..SamplingParams::default()
    };
    vec![
        GenerateRequest {
            prompt: prompt("Hello"),
            max_tokens: Some(40),
            sampling: SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
            ..GenerateRequest::default()
        },
        GenerateRequest {
            prompt: prompt(&long),
            max_tokens: Some(30),
            sampling: sampled(7),
            ..GenerateRequest::default()
        },
        GenerateRequest {
            prompt: prompt("Write a poem about the sea."),
            max_tokens: Some(50),
            sampling: SamplingParams {
                repeat_penalty: 1.2,
                presence_penalty: 0.3,
                frequency_penalty: 0.2,
                ..sampled(8)
            },
            stop: vec!["e".into()],
            ..GenerateRequest::default()
        },
        GenerateRequest {
            prompt: prompt("Give me the weather as JSON."),
            max_tokens: Some(48),
            sampling: sampled(9),
            constraint: Some(json),
            ..GenerateRequest::default()
        },
        GenerateRequest {
            prompt: prompt(&long[..long.len() / 2]),
            max_tokens: Some(3),
            sampling: sampled(10),
            ..GenerateRequest::default()
        },
        GenerateRequest {
            prompt: prompt("Count to twenty."),
            max_tokens: Some(36),
            sampling: sampled(11),
            ..GenerateRequest::default()
        },
    ]
}

fn alone(e: &mut Engine, req: &GenerateRequest) -> Outcome {
    let mut out = Outcome::default();
    let done = e
        .generate(req, &AtomicBool::new(false), |ev| {
            out.ids.extend(ev.id);
            out.text.push_str(ev.text);
            ControlFlow::Continue(())
        })
        .unwrap();
    out.finish = Some(done.finish_reason);
    out.completion_tokens = done.completion_tokens;
    out.prompt_tokens = done.prompt_tokens;
    out
}

/// Runs `reqs` through `e` together: request `i` is started once `i * stagger` steps have
/// passed and a slot is free; `cancel_after` cancels one request after its n-th token.
fn together(
    e: &mut Engine,
    reqs: &[GenerateRequest],
    stagger: usize,
    cancel_after: Option<(usize, usize)>,
) -> Vec<Outcome> {
    let mut out = vec![Outcome::default(); reqs.len()];
    let mut waiting: VecDeque<usize> = (0..reqs.len()).collect();
    let mut running: BTreeMap<SeqId, usize> = BTreeMap::new();
    let mut most = 0;
    let mut step = 0;
    while !waiting.is_empty() || !running.is_empty() {
        while let Some(&i) = waiting.front() {
            if i * stagger > step || !e.can_start(None) {
                break;
            }
            waiting.pop_front();
            running.insert(e.start(&reqs[i]).unwrap(), i);
        }
        most = most.max(running.len());
        let mut finished = Vec::new();
        e.step(|id, ev| {
            let i = running[&id];
            match ev {
                StepEvent::Token(t) => {
                    out[i].ids.extend(t.id);
                    out[i].text.push_str(t.text);
                    if cancel_after.is_some_and(|(c, n)| c == i && out[i].ids.len() == n) {
                        return ControlFlow::Break(());
                    }
                }
                StepEvent::Done(r) => {
                    let done = r.unwrap();
                    out[i].finish = Some(done.finish_reason);
                    out[i].completion_tokens = done.completion_tokens;
                    out[i].prompt_tokens = done.prompt_tokens;
                    finished.push(id);
                }
            }
            ControlFlow::Continue(())
        });
        for id in finished {
            running.remove(&id);
        }
        step += 1;
    }
    assert!(
        most >= 3.min(reqs.len()),
        "requests ran together (at most {most} did)"
    );
    assert_eq!(e.active(), 0);
    out
}

#[test]
fn batched_generations_equal_each_generation_alone() {
    for (quant, kv) in [(Quant::Q4KM, KvType::F16), (Quant::Q4_0, KvType::Q8_0)] {
        let mut e = engine(quant, kv, 4);
        let tok = e.shared_tokenizer().unwrap();
        let reqs = requests(&tok);
        let solo: Vec<Outcome> = reqs.iter().map(|r| alone(&mut e, r)).collect();
        assert!(
            solo.iter().any(|o| o.finish == Some(FinishReason::Stop)),
            "some request ends on a stop string or end of sequence: {solo:?}"
        );
        assert!(
            solo.iter().filter(|o| o.completion_tokens > 20).count() >= 2,
            "long enough generations: {solo:?}"
        );
        assert!(
            serde_json::from_str::<serde_json::Value>(&solo[3].text).is_ok()
                || solo[3].finish == Some(FinishReason::Length),
            "the constrained answer is JSON: {}",
            solo[3].text
        );
        for stagger in [0, 1, 5] {
            let batched = together(&mut e, &reqs, stagger, None);
            for (i, (b, s)) in batched.iter().zip(&solo).enumerate() {
                assert_eq!(
                    b, s,
                    "{quant:?} {kv:?} stagger {stagger}: request {i} batched vs alone"
                );
            }
        }
        // Alone again after batching: the slots hold nothing that changes a result.
        assert_eq!(alone(&mut e, &reqs[1]), solo[1]);
    }
}

#[test]
fn cancelling_one_sequence_leaves_the_others_untouched() {
    let mut e = engine(Quant::Q4KM, KvType::F16, 3);
    let tok = e.shared_tokenizer().unwrap();
    let reqs: Vec<GenerateRequest> = requests(&tok).into_iter().take(3).collect();
    let solo: Vec<Outcome> = reqs.iter().map(|r| alone(&mut e, r)).collect();
    let batched = together(&mut e, &reqs, 0, Some((1, 4)));
    assert_eq!(batched[1].finish, Some(FinishReason::Cancelled));
    assert_eq!(batched[1].ids, solo[1].ids[..4]);
    assert_eq!(batched[0], solo[0]);
    assert_eq!(batched[2], solo[2]);

    // Cancelled between passes (the service's shutdown), the slot is free again.
    let id = e.start(&reqs[0]).unwrap();
    e.step(|_, _| ControlFlow::Continue(()));
    let done = e.cancel(id).unwrap();
    assert_eq!(done.finish_reason, FinishReason::Cancelled);
    assert_eq!(e.active(), 0);
    assert!(e.cancel(id).is_none(), "a sequence ends once");
}

#[test]
fn slots_bound_the_running_generations_and_a_session_runs_one_turn_at_a_time() {
    let mut e = engine(Quant::Q4_0, KvType::F16, 2);
    let tok = e.shared_tokenizer().unwrap();
    let mut reqs = requests(&tok);
    reqs[0].session = Some("kitchen".into());
    reqs[5].session = Some("kitchen".into());
    let a = e.start(&reqs[0]).unwrap();
    assert!(
        !e.can_start(Some("kitchen")),
        "the session's slot is busy: its next turn waits"
    );
    assert!(e.can_start(None));
    assert!(matches!(e.start(&reqs[5]), Err(EngineError::Busy(1))));
    let b = e.start(&reqs[1]).unwrap();
    assert_ne!(a, b);
    assert!(!e.can_start(None), "both slots run");
    assert!(matches!(e.start(&reqs[2]), Err(EngineError::Busy(2))));
    assert!(matches!(
        e.generate(
            &reqs[2],
            &AtomicBool::new(false),
            |_| ControlFlow::Continue(())
        ),
        Err(EngineError::Busy(2))
    ));
    e.cancel(a);
    assert!(e.can_start(Some("kitchen")));
    e.cancel(b);
}
