//! `spillway bench --tools FILE`: what constrained decoding costs. The same generation
//! (the chat prompt with FILE's tools, the real sampler at temperature 1, `-n` tokens at
//! most) runs through the engine twice per repetition: free (only `[TOOL_CALLS]` banned, as
//! a request without a constraint runs) and with `tool_choice: required` (llguidance's mask
//! every token). Reported: generation tokens/s of each, their ratio, and the grammar's
//! compile time. A benchmark, not a test: the figures go in the notes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use serde_json::{Value, json};

use crate::constrain::{Constraint, Grammars, OutputRules, parse_tools};
use crate::engine::{Engine, EngineConfig, GenerateRequest, SamplingParams};
use crate::tokenizer::{ChatPrompt, Tokenizer};
use spillway_gguf::GgufFile;

/// The measurement of one mode.
#[derive(Clone, Debug)]
pub(crate) struct ModeResult {
    pub name: &'static str,
    /// Generation tokens/s of each repetition.
    pub runs: Vec<f64>,
    pub tokens: Vec<usize>,
}

/// Runs both modes `reps` times (after a warm-up of each); returns them and the grammar's
/// compile time in milliseconds.
pub(crate) fn measure(
    model: &Path,
    tools_file: &Path,
    threads: usize,
    n_gen: usize,
    reps: usize,
) -> anyhow::Result<(Vec<ModeResult>, f64)> {
    let text = std::fs::read_to_string(tools_file)
        .with_context(|| format!("reading {}", tools_file.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", tools_file.display()))?;
    // A bare array of tools, or a chat-completions request that has some.
    let tools_json = if v.is_array() { v } else { v["tools"].clone() };
    let tools = parse_tools(Some(&tools_json)).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        !tools.is_empty(),
        "{} declares no tools",
        tools_file.display()
    );

    let chat = ChatPrompt::new()
        .system("You control a house. Call the tools to do what the user asks.")
        .user("It is dark in the kitchen and cold in the living room.")
        .tools(tools.clone());
    anyhow::ensure!(
        crate::engine::has_tokenizer(model)?,
        "the model has no vocabulary: synthesize it with --tekken"
    );
    let tok = Arc::new(Tokenizer::from_gguf(&GgufFile::open(model)?)?);
    let prompt = chat.encode(&tok)?;
    let mut cfg = EngineConfig::new(model);
    cfg.threads = threads;
    cfg.context = prompt.len() + n_gen + 1;
    let mut engine = Engine::load(&cfg)?;

    let grammars = Grammars::new(Arc::clone(&tok))?;
    let compile_started = Instant::now();
    let required = OutputRules::parse(&tools, Some(&json!("required")), None, None)
        .map_err(anyhow::Error::msg)?;
    let constrained = grammars.compile(&tools, &required)?;
    let compile_ms = compile_started.elapsed().as_secs_f64() * 1e3;
    let free = grammars.compile(&[], &OutputRules::default())?;

    let cancel = AtomicBool::new(false);
    let mut run = |constraint: &Constraint, seed: u64| -> anyhow::Result<(f64, usize)> {
        let req = GenerateRequest {
            prompt: prompt.clone(),
            max_tokens: Some(n_gen),
            sampling: SamplingParams {
                temperature: 1.0,
                seed,
                ..SamplingParams::default()
            },
            constraint: Some(constraint.clone()),
            ..GenerateRequest::default()
        };
        let done = engine.generate(&req, &cancel, |_| std::ops::ControlFlow::Continue(()))?;
        Ok((done.generation_tokens_per_s(), done.completion_tokens))
    };
    let mut results = vec![
        ModeResult {
            name: "tg (free)",
            runs: Vec::new(),
            tokens: Vec::new(),
        },
        ModeResult {
            name: "tg (tools, required)",
            runs: Vec::new(),
            tokens: Vec::new(),
        },
    ];
    // Warm-up, then the modes alternate so that drift (heat, other load) hits both alike.
    run(&free, 0)?;
    run(&constrained, 0)?;
    for rep in 0..reps {
        for (i, c) in [&free, &constrained].into_iter().enumerate() {
            let (tps, n) = run(c, rep as u64 + 1)?;
            results[i].runs.push(tps);
            results[i].tokens.push(n);
        }
    }
    Ok((results, compile_ms))
}
