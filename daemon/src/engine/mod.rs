//! The inference engine: loads a model under a memory plan, keeps session slots with their
//! KV caches, and generates. It knows nothing of MQTT: a request is a prompt (token ids),
//! sampling parameters and limits; the answer streams through a callback, one token and its
//! text at a time, and ends with a [`Completion`].
//!
//! # Several requests at once (continuous batching)
//!
//! Every session slot can run a generation. [`Engine::start`] puts a request in a free slot;
//! each [`Engine::step`] is one forward pass over all of them together: the last sampled
//! token of every decoding sequence (dot kernels), and a chunk of prompt from sequences
//! still reading theirs (matrix–matrix kernels). Decoding is bound by memory bandwidth, so
//! one pass over the weights serves N sequences for little more than the price of one.
//!
//! The policy for prompts: the oldest started sequence's prompt goes first, up to
//! [`EngineConfig::batch`] tokens per pass when nothing is decoding and
//! [`PREFILL_CHUNK_WHILE_DECODING`] when something is, so running streams keep flowing
//! (a token per pass) while a long prompt is read, and every prompt is read in its turn.
//! A sequence's results depend only on its own rows of each pass ([`crate::model::forward`]),
//! so batching changes throughput, never tokens. [`Engine::generate`] runs one request
//! alone on the same machinery.
//!
//! Memory is decided before it is used: [`Engine::load`] maps the model, computes the
//! [`MemoryPlan`] (weights, KV cache for every slot, scratch), refuses a plan over the RAM
//! budget, and only then allocates. The per-token loop allocates nothing.

pub mod plan;
pub mod sampler;
mod sequence;
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
    Compute, Forward, ForwardError, KvCache, KvType, LoadError, MemoryEstimate, ModelWeights,
    RowKind, SeqChunk,
};
use crate::tokenizer::{Detokenizer, Tokenizer, TokenizerError};
use sequence::{Sampled, Sequence, Start};

pub use plan::{MemoryPlan, PlanError};
pub use sampler::{Sampler, SamplingError, SamplingParams};
use session::Slot;
pub use stop::{StopError, StopMatcher, StopStatus};

/// Most session slots an engine keeps (and sequences it runs at once).
pub const MAX_SESSIONS: usize = 64;

/// Prompt tokens per pass while other sequences decode: small enough that their streams
/// keep flowing (a 16-token chunk of the 3B model costs a few decode steps), large enough
/// that the matrix–matrix kernels stay efficient.
pub const PREFILL_CHUNK_WHILE_DECODING: usize = 16;

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
    #[error("no free session slot: {0} generations are running")]
    Busy(usize),
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
        scratch: Forward::estimate_bytes(
            weights,
            context,
            pass_rows(cfg),
            cfg.sessions,
            false,
            cfg.threads,
        ) as u64,
        tokenizer: plan::tokenizer_estimate(file.data_offset(), vocab_len),
        runtime: plan::RUNTIME_ALLOWANCE,
        budget: cfg.ram_budget,
        kv_per_token_alt: (alt, estimate.kv_bytes_per_token(alt)),
    }
}

/// Rows of one pass: a full prompt chunk next to every other slot's decoded token.
fn pass_rows(cfg: &EngineConfig) -> usize {
    cfg.batch + cfg.sessions.saturating_sub(1)
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

/// A running generation: the session slot it runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqId(usize);

impl SeqId {
    /// The generation in slot `slot` (`0..sessions`), if one runs there.
    pub fn from_slot(slot: usize) -> SeqId {
        SeqId(slot)
    }

    /// The slot's index (`0..sessions`).
    pub fn slot(self) -> usize {
        self.0
    }
}

/// What a step tells of one running generation.
#[derive(Debug)]
pub enum StepEvent<'a> {
    /// A generated token (or text released at the end).
    Token(TokenEvent<'a>),
    /// It is finished; its slot is free.
    Done(Result<Completion, EngineError>),
}

/// A loaded model, ready to generate.
#[derive(Debug)]
pub struct Engine {
    weights: ModelWeights,
    tokenizer: Option<Arc<Tokenizer>>,
    compute: Compute,
    forward: Forward,
    slots: Vec<Slot>,
    /// The generation running in each slot.
    running: Vec<Option<Sequence>>,
    batch: usize,
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
        if cfg.sessions > MAX_SESSIONS {
            return Err(EngineError::Config(format!(
                "at most {MAX_SESSIONS} sessions (got {})",
                cfg.sessions
            )));
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
        let forward = Forward::for_sequences(
            &weights,
            context,
            pass_rows(cfg),
            cfg.sessions,
            false,
            cfg.threads,
        );

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
            running: (0..slots.len()).map(|_| None).collect(),
            slots,
            batch: cfg.batch,
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

    /// Session slots: how many generations can run at once.
    pub fn sessions(&self) -> usize {
        self.slots.len()
    }

    /// Generations running now.
    pub fn active(&self) -> usize {
        self.running.iter().flatten().count()
    }

    /// Whether [`Engine::start`] would find a slot for a request with this session key: a
    /// free slot, and not its session's own slot busy with another of its requests (a
    /// session's turns run one after another, each reusing the last).
    pub fn can_start(&self, session: Option<&str>) -> bool {
        if let Some(k) = session
            && let Some(i) = self.slots.iter().position(|s| s.key.as_deref() == Some(k))
        {
            return self.running[i].is_none();
        }
        self.running.iter().any(Option::is_none)
    }

    /// Checks `req` and starts it in a free slot (reusing the slot's cached prefix where
    /// the session rules allow); its prompt is read and its tokens generated by the
    /// following [`Engine::step`]s.
    pub fn start(&mut self, req: &GenerateRequest) -> Result<SeqId, EngineError> {
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
        // Here, not in the pass: a bad id must fail this request, not the pass it joins.
        self.forward.check_ids(prompt)?;
        req.sampling.validate()?;
        let stop = StopMatcher::new(&req.stop, self.max_token_bytes.max(64))?;
        let mut sampler = Sampler::new(req.sampling.clone(), self.weights.config.n_vocab);

        // Reuse the session's cached prefix; evaluate at least the last prompt token.
        self.clock += 1;
        let choice = session::choose(
            &self.slots,
            |i| self.running[i].is_some(),
            req.session.as_deref(),
            req.owner.as_deref(),
            prompt,
        )
        .ok_or(EngineError::Busy(self.active()))?;
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
        self.running[choice.slot] = Some(Sequence::new(Start {
            order: self.clock,
            prompt: prompt.clone(),
            cached,
            max_tokens,
            sampler,
            stop,
            // The request's copy is left as compiled, so a rerun starts from the same state.
            constraint: req.constraint.clone(),
            detok: self.tokenizer.clone().map(Detokenizer::shared),
            eos: self.eos,
        }));
        Ok(SeqId(choice.slot))
    }

    /// Ends a running generation between passes; its completion says `cancelled`.
    pub fn cancel(&mut self, id: SeqId) -> Option<Completion> {
        let mut seq = self.running.get_mut(id.0)?.take()?;
        Some(seq.cancel())
    }

    /// One forward pass over every running generation (see the module documentation):
    /// `on_event` hears each generated token (return `Break` to cancel that generation) and
    /// each end. Returns the number still running. Allocates nothing.
    pub fn step(
        &mut self,
        mut on_event: impl FnMut(SeqId, StepEvent<'_>) -> ControlFlow<()>,
    ) -> usize {
        // Prompt chunks first, the oldest sequence's first, within this pass's prompt budget;
        // then one row for every decoding sequence (the pass wants prompt rows before
        // decoded ones).
        let decoding = self
            .running
            .iter()
            .flatten()
            .filter(|s| s.decoding())
            .count();
        let mut budget = if decoding == 0 {
            self.batch
        } else {
            self.batch.min(PREFILL_CHUNK_WHILE_DECODING)
        };
        let empty = SeqChunk {
            cache: 0,
            tokens: &[],
            kind: RowKind::Decode,
            logits: false,
        };
        let mut chunks = [empty; MAX_SESSIONS];
        let mut n = 0;
        let mut last_order = 0;
        while budget > 0 {
            // The oldest sequence still reading its prompt and not yet in this pass.
            let Some((i, seq)) = self
                .running
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
                .filter(|(_, s)| s.prompt_left() > 0 && s.order > last_order)
                .min_by_key(|(_, s)| s.order)
            else {
                break;
            };
            last_order = seq.order;
            let (tokens, ends) = seq.feed(budget);
            budget -= tokens.len();
            chunks[n] = SeqChunk {
                cache: i,
                tokens,
                kind: RowKind::Prompt,
                logits: ends,
            };
            n += 1;
        }
        for (i, seq) in self.running.iter().enumerate() {
            if let Some(seq) = seq.as_ref().filter(|s| s.decoding()) {
                chunks[n] = SeqChunk {
                    cache: i,
                    tokens: seq.feed(1).0,
                    kind: RowKind::Decode,
                    logits: true,
                };
                n += 1;
            }
        }
        let chunks = &chunks[..n];
        if chunks.is_empty() {
            return 0;
        }
        // Which slot fed how many tokens, and with logits: kept apart from the chunks, which
        // borrow the sequences that sampling changes.
        let mut fed = [(0usize, 0usize, false); MAX_SESSIONS];
        for (f, ch) in fed.iter_mut().zip(chunks) {
            *f = (ch.cache, ch.tokens.len(), ch.logits);
        }
        let result = self
            .forward
            .step(&self.weights, &mut self.slots, chunks, &self.compute);
        let logits = match result {
            Ok(logits) => {
                // Record what each slot's cache now holds.
                for ch in chunks {
                    self.slots[ch.cache].tokens.extend_from_slice(ch.tokens);
                }
                logits
            }
            Err(e) => {
                // Nothing of the pass is kept (the caches' lengths are unchanged): every
                // sequence in it fails.
                for &(slot, _, _) in &fed[..n] {
                    self.running[slot] = None;
                    let _ = on_event(
                        SeqId(slot),
                        StepEvent::Done(Err(EngineError::Forward(e.clone()))),
                    );
                }
                return self.active();
            }
        };
        let n_vocab = self.weights.config.n_vocab;
        let mut row = 0;
        for &(slot, len, with_logits) in &fed[..n] {
            let Some(seq) = self.running[slot].as_mut() else {
                continue;
            };
            if !with_logits {
                seq.fed(len);
                continue;
            }
            let rows = &mut logits[row * n_vocab..(row + 1) * n_vocab];
            row += 1;
            let id = SeqId(slot);
            match seq.sample(rows, |ev| on_event(id, StepEvent::Token(ev))) {
                Sampled::Continue => {}
                Sampled::Done(result) => {
                    self.running[slot] = None;
                    let _ = on_event(id, StepEvent::Done(result));
                }
            }
        }
        self.active()
    }

    /// Generates from `req` alone, calling `on_token` for every token (return
    /// `ControlFlow::Break` to stop) and checking `cancel` between tokens. Nothing else
    /// may be running.
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        cancel: &AtomicBool,
        mut on_token: impl FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<Completion, EngineError> {
        if self.active() > 0 {
            return Err(EngineError::Busy(self.active()));
        }
        let id = self.start(req)?;
        let mut done = None;
        loop {
            self.step(|_, ev| match ev {
                StepEvent::Token(t) => on_token(t),
                StepEvent::Done(r) => {
                    done = Some(r);
                    ControlFlow::Continue(())
                }
            });
            if let Some(r) = done.take() {
                return r;
            }
            if cancel.load(Ordering::Relaxed)
                && let Some(c) = self.cancel(id)
            {
                return Ok(c);
            }
        }
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
