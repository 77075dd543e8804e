//! One running generation: its prompt and how much of it is evaluated, its sampler, stop
//! strings, constraint and detokenizer, and what it has produced. The engine steps every
//! running sequence together ([`super::Engine::step`]); this module owns what happens to one
//! of them between passes: which tokens it feeds next, and what it does with its logits
//! (mask, sample, decode, match stop strings, decide whether it is finished).
//!
//! Nothing here depends on the other sequences: a sequence's tokens are a function of its
//! own request and its own logits, which are a function of its own rows of the pass.

use std::ops::ControlFlow;
use std::time::Instant;

use super::sampler::Sampler;
use super::stop::{StopMatcher, StopStatus};
use super::{Completion, EngineError, FinishReason, Timings, TokenEvent};
use crate::constrain::Constraint;
use crate::tokenizer::Detokenizer;

/// Where a sequence is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Prompt tokens `..fed` are in the cache; the rest are still to be evaluated.
    Prefill { fed: usize },
    /// The last sampled token (`Sequence::next`) is to be evaluated.
    Decode,
}

/// A generation in progress, in one of the engine's session slots.
#[derive(Debug)]
pub(super) struct Sequence {
    /// When it started: orders prefill (oldest first) and times the prompt.
    pub(super) order: u64,
    started: Instant,
    prompt: Vec<u32>,
    /// Prompt tokens whose keys and values came from the slot's cache.
    cached: usize,
    phase: Phase,
    /// The token sampled last, fed in the next pass (a one-element array: the pass borrows
    /// it as a slice).
    next: [u32; 1],
    max_tokens: usize,
    produced: usize,
    sampler: Sampler,
    stop: StopMatcher,
    constraint: Option<Constraint>,
    detok: Option<Detokenizer<'static>>,
    eos: u32,
    timings: Timings,
    first_token: Option<Instant>,
}

/// What a sequence did with its logits.
#[derive(Debug)]
pub(super) enum Sampled {
    /// It goes on: its token is fed in the next pass.
    Continue,
    /// It is finished.
    Done(Result<Completion, EngineError>),
}

/// What a sequence starts from (the request, checked, with its slot's reusable prefix).
#[derive(Debug)]
pub(super) struct Start {
    pub(super) order: u64,
    pub(super) prompt: Vec<u32>,
    pub(super) cached: usize,
    pub(super) max_tokens: usize,
    pub(super) sampler: Sampler,
    pub(super) stop: StopMatcher,
    pub(super) constraint: Option<Constraint>,
    pub(super) detok: Option<Detokenizer<'static>>,
    pub(super) eos: u32,
}

impl Sequence {
    pub(super) fn new(s: Start) -> Sequence {
        Sequence {
            order: s.order,
            started: Instant::now(),
            phase: Phase::Prefill { fed: s.cached },
            prompt: s.prompt,
            cached: s.cached,
            next: [0],
            max_tokens: s.max_tokens,
            produced: 0,
            sampler: s.sampler,
            stop: s.stop,
            constraint: s.constraint,
            detok: s.detok,
            eos: s.eos,
            timings: Timings::default(),
            first_token: None,
        }
    }

    /// Prompt tokens still to evaluate (0 once decoding).
    pub(super) fn prompt_left(&self) -> usize {
        match self.phase {
            Phase::Prefill { fed } => self.prompt.len() - fed,
            Phase::Decode => 0,
        }
    }

    /// The next `budget` (at least 1) tokens it feeds: a prompt chunk, or its last sampled
    /// token; and whether they end its prompt (then the pass computes its logits).
    pub(super) fn feed(&self, budget: usize) -> (&[u32], bool) {
        match self.phase {
            Phase::Prefill { fed } => {
                let end = (fed + budget.max(1)).min(self.prompt.len());
                (&self.prompt[fed..end], end == self.prompt.len())
            }
            Phase::Decode => (&self.next, true),
        }
    }

    /// Whether it is decoding (one generated token per pass).
    pub(super) fn decoding(&self) -> bool {
        self.phase == Phase::Decode
    }

    /// `n` prompt tokens were evaluated without logits.
    pub(super) fn fed(&mut self, n: usize) {
        if let Phase::Prefill { fed } = &mut self.phase {
            *fed += n;
        }
    }

    /// The pass evaluated what it fed (the end of its prompt, or its last token) and gave
    /// these logits: choose the next token and hand out its text through `on_token`.
    pub(super) fn sample(
        &mut self,
        logits: &mut [f32],
        mut on_token: impl FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Sampled {
        if let Phase::Prefill { .. } = self.phase {
            self.phase = Phase::Decode;
            let now = Instant::now();
            self.timings.prompt_evaluated = self.prompt.len() - self.cached;
            self.timings.prompt = now - self.started;
            self.timings.time_to_first_token = self.timings.prompt;
            self.first_token = Some(now);
        }
        if let Some(c) = self.constraint.as_mut()
            && let Err(e) = c.mask(logits)
        {
            return Sampled::Done(Err(e.into()));
        }
        let next = self.sampler.sample(logits);
        self.next = [next];
        self.produced += 1;
        self.sampler.accept(next);
        if let Some(c) = self.constraint.as_mut()
            && let Err(e) = c.accept(next)
        {
            return Sampled::Done(Err(e.into()));
        }
        if next == self.eos {
            return Sampled::Done(Ok(self.finish(FinishReason::Stop, true, &mut on_token)));
        }
        let text = match self.detok.as_mut().map(|d| d.push(next)) {
            Some(Ok(t)) => t,
            Some(Err(e)) => return Sampled::Done(Err(e.into())),
            None => "",
        };
        let (shown, stopped) = match self.stop.push(text) {
            StopStatus::Continue(t) => (t, false),
            StopStatus::Stop(t) => (t, true),
        };
        if on_token(TokenEvent {
            id: Some(next),
            text: shown,
        })
        .is_break()
        {
            return Sampled::Done(Ok(self.finish(
                FinishReason::Cancelled,
                false,
                &mut on_token,
            )));
        }
        if stopped {
            return Sampled::Done(Ok(self.finish(FinishReason::Stop, false, &mut on_token)));
        }
        if self.produced >= self.max_tokens {
            return Sampled::Done(Ok(self.finish(FinishReason::Length, true, &mut on_token)));
        }
        Sampled::Continue
    }

    /// Ends it (cancelled between passes).
    pub(super) fn cancel(&mut self) -> Completion {
        self.finish(FinishReason::Cancelled, false, &mut |_| {
            ControlFlow::Continue(())
        })
    }

    /// Its completion. At a natural end (`release`: end-of-sequence or `max_tokens`) text
    /// held back (a partial character, a possible stop-string start) is handed out first; a
    /// found stop string or a cancellation shows nothing more.
    fn finish(
        &mut self,
        finish: FinishReason,
        release: bool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Completion {
        if release {
            let tail = self.detok.as_mut().map_or("", |d| d.finish());
            let stopped = match self.stop.push(tail) {
                StopStatus::Continue(t) | StopStatus::Stop(t) if t.is_empty() => false,
                StopStatus::Continue(t) => on_token(TokenEvent { id: None, text: t }).is_break(),
                StopStatus::Stop(t) => {
                    let _ = on_token(TokenEvent { id: None, text: t });
                    true
                }
            };
            if !stopped {
                let rest = self.stop.finish();
                if !rest.is_empty() {
                    let _ = on_token(TokenEvent {
                        id: None,
                        text: rest,
                    });
                }
            }
        }
        let mut timings = self.timings;
        match self.first_token {
            Some(t) => timings.generation = t.elapsed(),
            None => {
                // Cancelled before its first token: everything so far was prompt.
                timings.prompt = self.started.elapsed();
                timings.time_to_first_token = timings.prompt;
            }
        }
        Completion {
            finish_reason: finish,
            prompt_tokens: self.prompt.len(),
            cached_tokens: self.cached,
            completion_tokens: self.produced,
            timings,
        }
    }
}
