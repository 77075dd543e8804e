//! `spillway bench --concurrency 1,2,4,8`: what continuous batching gives, in the style of
//! llama.cpp's `llama-batched-bench`. For each N, N requests start at once (random prompts
//! of `-p` tokens, `-n` tokens each, sampled at temperature 1 with their own seeds) on an
//! engine with N session slots, and the engine steps them together as the service does.
//! Reported per N: the aggregate decode rate while all N decode together (tokens of every
//! stream per second), the rate each stream sees, the prompt rate, and the time to the
//! first token (mean and worst). A benchmark, not a test: the figures go in the notes.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use spillway_kernels::dispatch::KernelPath;

use crate::cli::bench_input::{random_ids, stats};
use crate::engine::{Engine, EngineConfig, GenerateRequest, SamplingParams, StepEvent};
use crate::model::KvType;

/// One concurrency level's figures (means over the repetitions).
#[derive(Clone, Debug)]
pub(crate) struct Level {
    pub streams: usize,
    /// Aggregate decode tokens/s of each repetition, all streams decoding.
    pub aggregate: Vec<f64>,
    /// Prompt tokens/s: every stream's prompt over the time to the last first token.
    pub prompt: Vec<f64>,
    /// Mean and worst time to first token, in ms, of each repetition.
    pub ttft_ms: Vec<(f64, f64)>,
}

/// What to run.
pub(crate) struct Spec<'a> {
    pub model: &'a Path,
    pub threads: usize,
    pub kv: KvType,
    pub batch: usize,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub reps: usize,
    pub levels: &'a [usize],
}

/// Runs every level `reps` times after a warm-up; returns them and the kernel path used.
pub(crate) fn measure(s: &Spec<'_>) -> anyhow::Result<(Vec<Level>, KernelPath)> {
    let most = s.levels.iter().copied().max().unwrap_or(1);
    anyhow::ensure!(
        (1..=crate::engine::MAX_SESSIONS).contains(&most) && !s.levels.contains(&0),
        "--concurrency takes stream counts from 1 to {}",
        crate::engine::MAX_SESSIONS
    );
    anyhow::ensure!(s.n_gen >= 2, "-n must be at least 2 to measure decoding");
    let mut cfg = EngineConfig::new(s.model);
    cfg.threads = s.threads;
    cfg.sessions = most;
    cfg.batch = s.batch;
    cfg.kv_type = s.kv;
    cfg.context = s.n_prompt.max(1) + s.n_gen + 1;
    let mut engine = Engine::load(&cfg)?;
    let mut next_id = random_ids(engine.weights().config.n_vocab);
    let mut requests: Vec<GenerateRequest> = (0..most)
        .map(|i| GenerateRequest {
            prompt: (0..s.n_prompt.max(1)).map(|_| next_id()).collect(),
            max_tokens: Some(s.n_gen),
            sampling: SamplingParams {
                temperature: 1.0,
                seed: i as u64,
                ..SamplingParams::default()
            },
            ..GenerateRequest::default()
        })
        .collect();
    let mut levels = Vec::new();
    for &n in s.levels {
        let mut level = Level {
            streams: n,
            aggregate: Vec::new(),
            prompt: Vec::new(),
            ttft_ms: Vec::new(),
        };
        for rep in 0..=s.reps {
            for (i, r) in requests.iter_mut().enumerate() {
                r.sampling.seed = (rep * most + i) as u64;
            }
            let run = run_level(&mut engine, &requests[..n])?;
            if rep > 0 {
                level.aggregate.push(run.aggregate);
                level.prompt.push(run.prompt);
                level.ttft_ms.push(run.ttft_ms);
            }
        }
        levels.push(level);
    }
    Ok((levels, engine.compute().kernels.path()))
}

struct Run {
    aggregate: f64,
    prompt: f64,
    ttft_ms: (f64, f64),
}

/// Starts `reqs` together and steps until all are done.
fn run_level(engine: &mut Engine, reqs: &[GenerateRequest]) -> anyhow::Result<Run> {
    let n = reqs.len();
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for r in reqs {
        ids.push(engine.start(r)?);
    }
    let mut first = vec![None::<Instant>; n];
    let mut tokens = vec![0usize; n];
    // The window in which every stream decodes: from the last first token to the first end
    // (a stream may end early on its end-of-sequence token).
    let mut window: Option<(Instant, usize)> = None;
    let mut window_end: Option<(Instant, usize)> = None;
    let mut error = None;
    while engine.active() > 0 {
        let mut ended = false;
        engine.step(|id, ev| {
            let i = ids.iter().position(|&x| x == id).unwrap_or(0);
            match ev {
                StepEvent::Token(t) => {
                    if t.id.is_some() {
                        tokens[i] += 1;
                        first[i].get_or_insert_with(Instant::now);
                    }
                }
                StepEvent::Done(Err(e)) => error = Some(e),
                StepEvent::Done(Ok(_)) => ended = true,
            }
            ControlFlow::Continue(())
        });
        let total: usize = tokens.iter().sum();
        if window.is_none() && first.iter().all(Option::is_some) {
            window = Some((Instant::now(), total));
        }
        if ended && window_end.is_none() {
            window_end = Some((Instant::now(), total));
        }
    }
    if let Some(e) = error {
        return Err(e.into());
    }
    let (Some((t0, k0)), Some((t1, k1))) = (window, window_end) else {
        anyhow::bail!("the streams never decoded together");
    };
    let last_first = first.iter().flatten().max().copied().unwrap_or(started);
    let ttfts: Vec<f64> = first
        .iter()
        .flatten()
        .map(|t| (*t - started).as_secs_f64() * 1e3)
        .collect();
    let prompt_tokens: usize = reqs.iter().map(|r| r.prompt.len()).sum();
    Ok(Run {
        aggregate: (k1 - k0) as f64 / (t1 - t0).as_secs_f64().max(1e-9),
        prompt: prompt_tokens as f64 / (last_first - started).as_secs_f64().max(1e-9),
        ttft_ms: (
            ttfts.iter().sum::<f64>() / ttfts.len().max(1) as f64,
            ttfts.iter().copied().fold(0.0, f64::max),
        ),
    })
}

/// The levels as a table (aggregate, per stream, speed-up over one stream, prompt, TTFT).
pub(crate) fn print_table(levels: &[Level]) {
    println!(
        "\n| streams | aggregate t/s | per stream t/s | × one stream | prompt t/s | TTFT mean / worst ms |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    let one = levels
        .iter()
        .find(|l| l.streams == 1)
        .map(|l| stats(&l.aggregate).0);
    for l in levels {
        let (agg, sd) = stats(&l.aggregate);
        let ratio = one.map_or("-".to_owned(), |o| format!("{:.2}", agg / o));
        let (mean_ttft, worst) = mean_pair(&l.ttft_ms);
        println!(
            "| {} | {agg:.2} ± {sd:.2} | {:.2} | {ratio} | {:.1} | {mean_ttft:.0} / {worst:.0} |",
            l.streams,
            agg / l.streams as f64,
            stats(&l.prompt).0,
        );
    }
}

/// The levels as JSON.
pub(crate) fn to_json(levels: &[Level]) -> Value {
    Value::Array(
        levels
            .iter()
            .map(|l| {
                let (agg, sd) = stats(&l.aggregate);
                let (mean_ttft, worst) = mean_pair(&l.ttft_ms);
                json!({
                    "streams": l.streams,
                    "aggregate_tokens_per_s": agg,
                    "sd": sd,
                    "per_stream_tokens_per_s": agg / l.streams as f64,
                    "prompt_tokens_per_s": stats(&l.prompt).0,
                    "ttft_ms_mean": mean_ttft,
                    "ttft_ms_worst": worst,
                })
            })
            .collect(),
    )
}

fn mean_pair(xs: &[(f64, f64)]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    (
        xs.iter().map(|x| x.0).sum::<f64>() / n,
        xs.iter().map(|x| x.1).sum::<f64>() / n,
    )
}
