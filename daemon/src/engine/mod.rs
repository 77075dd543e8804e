//! The inference engine: loads a model under a memory plan, keeps session slots with their
//! KV caches, and generates. It knows nothing of MQTT: a request is a prompt (token ids),
//! sampling parameters and limits; the answer streams through a callback, one token and its
//! text at a time, and ends with a [`Completion`].
//!
//! Memory is decided before it is used: [`Engine::load`] maps the model, computes the
//! [`MemoryPlan`] (weights, KV cache for every slot, scratch), refuses a plan over the RAM
//! budget, and only then allocates. The per-token loop allocates nothing.

pub mod plan;
pub mod sampler;
pub mod session;
pub mod stop;

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use spillway_gguf::{Advice, GgufError, GgufFile};
use spillway_kernels::dispatch::{self, DispatchError};
use spillway_kernels::{PoolConfig, ThreadPool};

use crate::constrain::{Constraint, ConstraintError};
use crate::model::{
    Compute, Forward, ForwardError, KvCache, KvType, LoadError, LogitsFor, MemoryEstimate,
    ModelWeights,
};
use crate::tokenizer::{Tokenizer, TokenizerError};

pub use plan::{MemoryPlan, PlanError};
pub use sampler::{Sampler, SamplingError, SamplingParams};
use session::Slot;
pub use stop::{StopError, StopMatcher, StopStatus};

/// How to build an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub model: PathBuf,
    /// Compute threads (the caller's included).
    pub threads: usize,
    /// CPUs to pin compute threads to (the big cores of a big.LITTLE SoC).
    pub cpus: Option<Vec<usize>>,
    /// Context of each session slot, in tokens (at most the model's).
    pub context: usize,
    pub kv_type: KvType,
    /// Session slots (KV caches) kept in memory.
    pub sessions: usize,
    /// Prompt tokens evaluated per pass.
    pub batch: usize,
    /// Refuse to load if the plan exceeds this many bytes.
    pub ram_budget: Option<u64>,
    /// Lock the weights in RAM (`mlock`), so they are never paged out.
    pub mlock: bool,
}

impl EngineConfig {
    /// Defaults for `model`: every CPU, a 4096-token context, f16 KV cache, one session,
    /// 64-token prefill passes, no budget, no mlock.
    pub fn new(model: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            model: model.into(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpus: None,
            context: 4096,
            kv_type: KvType::F16,
            sessions: 1,
            batch: 64,
            ram_budget: None,
            mlock: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Kernels(#[from] DispatchError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Stop(#[from] StopError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot start compute threads: {0}")]
    Threads(#[source] std::io::Error),
    #[error("context length exceeded: {0}")]
    ContextLength(String),
    #[error("this model has no tokenizer (tokenizer.ggml.model = no_vocab): give token ids")]
    NoTokenizer,
    #[error(transparent)]
    Constraint(#[from] ConstraintError),
}

/// The memory plan of `cfg` for the model at `cfg.model`, without loading it: the file is
/// mapped and validated, nothing else is allocated. `spillway board` shows it; [`Engine::load`]
/// checks it against the budget before allocating.
pub fn plan(cfg: &EngineConfig) -> Result<MemoryPlan, EngineError> {
    let file = Arc::new(GgufFile::open(&cfg.model)?);
    let weights = ModelWeights::new(Arc::clone(&file))?;
    Ok(plan_for(cfg, &file, &weights))
}

fn plan_for(cfg: &EngineConfig, file: &GgufFile, weights: &ModelWeights) -> MemoryPlan {
    let mc = &weights.config;
    let context = cfg.context.min(mc.context_length as usize);
    let estimate = MemoryEstimate::new(mc, weights.bytes());
    let alt = match cfg.kv_type {
        KvType::F16 => KvType::Q8_0,
        KvType::Q8_0 => KvType::F16,
    };
    let vocab_len = file
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map_or(0, |a| a.len());
    MemoryPlan {
        weights: weights.bytes(),
        kv_type: cfg.kv_type,
        context,
        kv_per_token: estimate.kv_bytes_per_token(cfg.kv_type),
        sessions: cfg.sessions,
        scratch: Forward::estimate_bytes(weights, context, cfg.batch, false, cfg.threads) as u64,
        tokenizer: plan::tokenizer_estimate(file.data_offset(), vocab_len),
        runtime: plan::RUNTIME_ALLOWANCE,
        budget: cfg.ram_budget,
        kv_per_token_alt: (alt, estimate.kv_bytes_per_token(alt)),
    }
}

/// Whether the GGUF's metadata names a tokenizer (`tokenizer.ggml.model` present and not
/// `no_vocab`). Such a model can only be given token ids.
fn names_tokenizer(file: &GgufFile) -> bool {
    !matches!(
        file.get("tokenizer.ggml.model").and_then(|v| v.as_str()),
        None | Some("no_vocab")
    )
}

/// Whether the model at `model` carries a tokenizer, read from its header without loading
/// it: a service that takes text checks this before committing memory to the model.
pub fn has_tokenizer(model: &std::path::Path) -> Result<bool, EngineError> {
    Ok(names_tokenizer(&GgufFile::open(model)?))
}

/// How loading went.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub seconds: f64,
    /// Resident set size of the process after loading (Linux), in bytes.
    pub resident_bytes: Option<u64>,
}

/// One generation request.
#[derive(Clone, Debug, Default)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    /// Reuse (and keep) this session's KV cache.
    pub session: Option<String>,
    /// Who is asking (an MQTT reply topic, an API key's id): without a session key, only a
    /// cache filled by the same owner is reused. `None` never shares (see [`session`]).
    pub owner: Option<String>,
    /// At most this many tokens (default: the rest of the context).
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// What may be generated (a grammar, banned control tokens); `None`: anything.
    pub constraint: Option<Constraint>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Cancelled by the caller.
    Cancelled,
}

impl FinishReason {
    /// OpenAI's `finish_reason` value.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// Timings of one generation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// Tokens of the prompt actually evaluated (not reused from the cache).
    pub prompt_evaluated: usize,
    pub prompt: Duration,
    pub generation: Duration,
    /// From the call to the first generated token.
    pub time_to_first_token: Duration,
}

impl Timings {
    pub fn prompt_tokens_per_s(&self) -> f64 {
        self.prompt_evaluated as f64 / self.prompt.as_secs_f64().max(1e-9)
    }
}

/// The end of a generation.
#[derive(Clone, Debug)]
pub struct Completion {
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the session cache.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub timings: Timings,
}

impl Completion {
    pub fn generation_tokens_per_s(&self) -> f64 {
        // The first token comes from the prompt pass; the rest from decode steps.
        self.completion_tokens.saturating_sub(1) as f64
            / self.timings.generation.as_secs_f64().max(1e-9)
    }
}

/// A piece of the answer, as streamed.
#[derive(Clone, Copy, Debug)]
pub struct TokenEvent<'a> {
    /// The generated token; `None` for the final release of text held back.
    pub id: Option<u32>,
    /// Text released now: what this token completes, less anything held back because it
    /// could be a partial character or the start of a stop string.
    pub text: &'a str,
}

/// A loaded model, ready to generate.
#[derive(Debug)]
pub struct Engine {
    weights: ModelWeights,
    tokenizer: Option<Arc<Tokenizer>>,
    compute: Compute,
    forward: Forward,
    slots: Vec<Slot>,
    plan: MemoryPlan,
    eos: u32,
    clock: u64,
    /// Longest text one token can decode to (for stop-string buffers).
    max_token_bytes: usize,
    load: LoadReport,
}

impl Engine {
    /// Maps the model, plans memory against the budget, then allocates and prefetches.
    pub fn load(cfg: &EngineConfig) -> Result<Engine, EngineError> {
        let started = Instant::now();
        if cfg.threads == 0 || cfg.sessions == 0 || cfg.batch == 0 || cfg.context == 0 {
            return Err(EngineError::Config(
                "threads, sessions, batch and context must all be at least 1".into(),
            ));
        }
        let file = Arc::new(GgufFile::open(&cfg.model)?);
        let weights = ModelWeights::new(Arc::clone(&file))?;
        let mc = &weights.config;
        let context = cfg.context.min(mc.context_length as usize);
        let plan = plan_for(cfg, &file, &weights);
        plan.check()?;

        // Within budget: now allocate.
        let kernels = dispatch::select()?;
        let pool = ThreadPool::new(PoolConfig {
            threads: cfg.threads,
            cpus: cfg.cpus.clone(),
            ..PoolConfig::with_threads(cfg.threads)
        })
        .map_err(EngineError::Threads)?;
        let tokenizer = if names_tokenizer(&file) {
            Some(Arc::new(Tokenizer::from_gguf(&file)?))
        } else {
            None
        };
        let eos = match &tokenizer {
            Some(t) => t.eos_id(),
            None => file
                .get("tokenizer.ggml.eos_token_id")
                .and_then(|v| v.as_u64())
                .map_or(2, |v| v as u32),
        };
        let max_token_bytes = tokenizer.as_ref().map_or(0, |t| t.vocab().max_token_len());
        let slots = (0..cfg.sessions)
            .map(|_| KvCache::new(mc, cfg.kv_type, context).map(Slot::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Config(e.to_string()))?;
        let forward = Forward::new(&weights, context, cfg.batch, false, cfg.threads);

        // Weights: read ahead now, then tell the kernel the access is per layer.
        let _ = file.advise(Advice::WillNeed);
        if cfg.mlock {
            file.lock().map_err(|e| {
                EngineError::Config(format!(
                    "cannot lock the weights in RAM (raise LimitMEMLOCK / RLIMIT_MEMLOCK to at least {}): {e}",
                    crate::units::human_bytes(plan.weights)
                ))
            })?;
        }
        let load = LoadReport {
            seconds: started.elapsed().as_secs_f64(),
            resident_bytes: resident_bytes(),
        };
        Ok(Engine {
            weights,
            tokenizer,
            compute: Compute::new(pool, kernels),
            forward,
            slots,
            plan,
            eos,
            clock: 0,
            max_token_bytes,
            load,
        })
    }

    pub fn plan(&self) -> &MemoryPlan {
        &self.plan
    }

    pub fn load_report(&self) -> &LoadReport {
        &self.load
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_deref()
    }

    /// The tokenizer, to share with the threads that count prompt tokens before a request
    /// reaches the engine.
    pub fn shared_tokenizer(&self) -> Option<Arc<Tokenizer>> {
        self.tokenizer.clone()
    }

    pub fn weights(&self) -> &ModelWeights {
        &self.weights
    }

    pub fn compute(&self) -> &Compute {
        &self.compute
    }

    /// Context of each session, in tokens.
    pub fn context(&self) -> usize {
        self.plan.context
    }

    /// Generates from `req`, calling `on_token` for every token (return
    /// `ControlFlow::Break` to stop) and checking `cancel` between tokens.
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        cancel: &AtomicBool,
        mut on_token: impl FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<Completion, EngineError> {
        let started = Instant::now();
        let n_ctx = self.plan.context;
        let prompt = &req.prompt;
        if prompt.is_empty() {
            return Err(EngineError::ContextLength("the prompt is empty".into()));
        }
        if prompt.len() >= n_ctx {
            return Err(EngineError::ContextLength(format!(
                "the prompt is {} tokens; the context holds {n_ctx}, with room for at least one generated token",
                prompt.len()
            )));
        }
        let max_tokens = req.max_tokens.unwrap_or(n_ctx - prompt.len());
        if max_tokens == 0 || prompt.len() + max_tokens > n_ctx {
            return Err(EngineError::ContextLength(format!(
                "{} prompt tokens + max_tokens {max_tokens} exceed the context of {n_ctx} tokens",
                prompt.len()
            )));
        }
        req.sampling.validate()?;
        let mut stop = StopMatcher::new(&req.stop, self.max_token_bytes.max(64))?;
        let mut sampler = Sampler::new(req.sampling.clone(), self.weights.config.n_vocab);
        // The request's copy is left as compiled, so a rerun starts from the same state.
        let mut constraint = req.constraint.clone();

        // Reuse the session's cached prefix; evaluate at least the last prompt token.
        self.clock += 1;
        let choice = session::choose(
            &self.slots,
            req.session.as_deref(),
            req.owner.as_deref(),
            prompt,
        );
        let slot = &mut self.slots[choice.slot];
        if !choice.reuse {
            // Another client's (or session's) cache: nothing of it may show.
            slot.truncate(0);
        }
        if slot.key.as_deref() != req.session.as_deref() {
            slot.key = req.session.clone();
        }
        if slot.owner.as_deref() != req.owner.as_deref() {
            slot.owner = req.owner.clone();
        }
        slot.last_used = self.clock;
        let cached = session::common_prefix(&slot.tokens, prompt).min(prompt.len() - 1);
        slot.truncate(cached);

        for &id in &prompt[prompt.len().saturating_sub(sampler.params().repeat_last_n)..] {
            sampler.accept(id);
        }
        let logits = self.forward.eval(
            &self.weights,
            &mut slot.kv,
            &prompt[cached..],
            LogitsFor::Last,
            &self.compute,
        )?;
        slot.tokens.extend_from_slice(&prompt[cached..]);
        if let Some(c) = constraint.as_mut() {
            c.mask(logits)?;
        }
        let mut next = sampler.sample(logits);
        let prompt_time = started.elapsed();
        let mut timings = Timings {
            prompt_evaluated: prompt.len() - cached,
            prompt: prompt_time,
            time_to_first_token: prompt_time,
            ..Timings::default()
        };

        let mut detok = self.tokenizer.as_ref().map(|t| t.detokenizer());
        let gen_started = Instant::now();
        let mut produced = 0;
        let finish = loop {
            produced += 1;
            sampler.accept(next);
            if let Some(c) = constraint.as_mut() {
                c.accept(next)?;
            }
            if next == self.eos {
                break FinishReason::Stop;
            }
            let text = match detok.as_mut() {
                Some(d) => d.push(next)?,
                None => "",
            };
            let (shown, stopped) = match stop.push(text) {
                StopStatus::Continue(t) => (t, false),
                StopStatus::Stop(t) => (t, true),
            };
            if on_token(TokenEvent {
                id: Some(next),
                text: shown,
            })
            .is_break()
            {
                break FinishReason::Cancelled;
            }
            if stopped {
                break FinishReason::Stop;
            }
            if produced >= max_tokens {
                break FinishReason::Length;
            }
            if cancel.load(Ordering::Relaxed) {
                break FinishReason::Cancelled;
            }
            let logits = self.forward.eval(
                &self.weights,
                &mut slot.kv,
                &[next],
                LogitsFor::Last,
                &self.compute,
            )?;
            slot.tokens.push(next);
            if let Some(c) = constraint.as_mut() {
                c.mask(logits)?;
            }
            next = sampler.sample(logits);
        };
        // At the natural end (EOS or max_tokens) text held back (a partial character, a
        // possible stop-string start) is released; a found stop string or a cancellation
        // shows nothing more.
        if finish == FinishReason::Length || (finish == FinishReason::Stop && next == self.eos) {
            let tail = detok.as_mut().map_or("", |d| d.finish());
            let stopped = match stop.push(tail) {
                StopStatus::Continue(t) | StopStatus::Stop(t) if t.is_empty() => false,
                StopStatus::Continue(t) => on_token(TokenEvent { id: None, text: t }).is_break(),
                StopStatus::Stop(t) => {
                    let _ = on_token(TokenEvent { id: None, text: t });
                    true
                }
            };
            if !stopped {
                let rest = stop.finish();
                if !rest.is_empty() {
                    let _ = on_token(TokenEvent {
                        id: None,
                        text: rest,
                    });
                }
            }
        }
        timings.generation = gen_started.elapsed();
        Ok(Completion {
            finish_reason: finish,
            prompt_tokens: prompt.len(),
            cached_tokens: cached,
            completion_tokens: produced,
            timings,
        })
    }
}

/// The process's resident set size (Linux), from `/proc/self/statm`.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
