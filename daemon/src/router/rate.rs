//! The policy's running estimates: an exponentially weighted moving average ([`Ewma`]),
//! used for the generation rate (tokens/s of finished local requests) and for the
//! completion length (tokens finished requests generated), and the completion prior.

use super::error::{PolicyError, invalid};

/// An exponentially weighted moving average of measured generation rates (tokens/s).
///
/// Before any measurement it reports the configured prior. The first measurement replaces
/// the prior outright rather than being blended with it: the prior is a guess for an
/// unknown board, and one real number is better evidence than it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ewma {
    alpha: f64,
    value: f64,
    samples: u64,
}

impl Ewma {
    /// `prior` (tokens/s) must be positive and finite; `alpha`, the weight of each new
    /// measurement, in (0, 1].
    pub fn new(prior: f64, alpha: f64) -> Result<Ewma, PolicyError> {
        if !(prior.is_finite() && prior > 0.0) {
            return Err(invalid(
                "rate_prior",
                format!("{prior} tokens/s must be a positive finite number"),
            ));
        }
        if !(alpha > 0.0 && alpha <= 1.0) {
            return Err(invalid("rate_alpha", format!("{alpha} must be in (0, 1]")));
        }
        Ok(Ewma {
            alpha,
            value: prior,
            samples: 0,
        })
    }

    /// Folds in one measured rate and returns the new average. A zero, negative or
    /// non-finite rate (a job that generated nothing, a clock glitch) is refused and
    /// leaves the average unchanged: it would make every wait estimate infinite.
    pub fn observe(&mut self, tokens_per_s: f64) -> Result<f64, PolicyError> {
        if !(tokens_per_s.is_finite() && tokens_per_s > 0.0) {
            return Err(PolicyError::InvalidRate(tokens_per_s));
        }
        self.value = if self.samples == 0 {
            tokens_per_s
        } else {
            self.alpha * tokens_per_s + (1.0 - self.alpha) * self.value
        };
        self.samples = self.samples.saturating_add(1);
        Ok(self.value)
    }

    /// The current estimate in tokens/s (the prior before any measurement).
    pub fn value(&self) -> f64 {
        self.value
    }

    /// How many measurements were folded in.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The average of the measurements; `None` while it is only the prior.
    pub fn measured(&self) -> Option<f64> {
        (self.samples > 0).then_some(self.value)
    }

    /// Sets the average to a value measured earlier (by a previous run), which then counts
    /// as one measurement: the next one is blended with it rather than replacing it. The
    /// same values as [`Ewma::observe`] are refused.
    pub fn restore(&mut self, value: f64) -> Result<f64, PolicyError> {
        if !(value.is_finite() && value > 0.0) {
            return Err(PolicyError::InvalidRate(value));
        }
        self.value = value;
        self.samples = self.samples.max(1);
        Ok(value)
    }
}

/// Completion tokens a request is expected to generate before any has finished: a
/// typical chat answer of a few paragraphs (Mistral-style instruct models answer short
/// questions in 100–300 tokens). Only a starting point: [`Policy::observe_completion`](super::Policy::observe_completion)
/// replaces it with what requests here actually generate.
pub const COMPLETION_PRIOR_TOKENS: f64 = 256.0;
