//! The routing policy: a pure state machine that decides, for each request, whether it runs
//! on the board ([`Route::Local`](crate::router::Route::Local)), waits for local capacity ([`Route::Queue`](crate::router::Route::Queue)), is
//! forwarded ([`Route::CloudHttps`](crate::router::Route::CloudHttps), [`Route::CloudMqtt`](crate::router::Route::CloudMqtt)) or is refused
//! ([`Route::Reject`](crate::router::Route::Reject)), and records a reason for the reply's `reason` field and telemetry.
//!
//! Nothing here reads a file, a socket or a clock: readings, health and the time left
//! before a request's deadline are inputs, so every decision is reproducible in a test.
//!
//! The decision table is in [`super::rules`], the thermal hysteresis in [`super::thermal`].
//!
//! # Queue and re-decision
//!
//! [`Route::Queue`](crate::router::Route::Queue) holds the request in the local queue without starting it. The caller
//! calls [`Policy::decide`](crate::router::Policy::decide) again when something changes (a job finishes, a new reading,
//! memory is freed, a cloud route recovers), passing the *remaining* time before the
//! deadline; the request then runs, is forwarded (`auto` only) or is refused.
//!
//! # Estimates
//!
//! The local wait is `(tokens queued ahead + tokens expected for this request) / rate`:
//!
//! - the rate is an [`Ewma`] of measured generation tokens per second of finished local
//!   requests ([`Policy::observe_rate`](crate::router::Policy::observe_rate)); before the first measurement it is the configured
//!   prior [`PolicyConfig::rate_prior`](crate::router::PolicyConfig::rate_prior);
//! - a request is expected to generate `min(max_tokens, E)` tokens, where `E` is an
//!   [`Ewma`] of the completion tokens finished requests actually generated
//!   ([`Policy::observe_completion`](crate::router::Policy::observe_completion)), starting at [`PolicyConfig::completion_prior`](crate::router::PolicyConfig::completion_prior)
//!   ([`COMPLETION_PRIOR_TOKENS`](crate::router::COMPLETION_PRIOR_TOKENS) by default). `max_tokens` is a cap, not a length: most
//!   answers end at a stop token long before it, and taking the cap as the length refused
//!   a `max_tokens: 2000` request on an idle board that would have taken a fraction of a
//!   second;
//! - the tokens queued ahead are the expected generation of every request admitted to
//!   the engine and not finished, counted the same way by the caller
//!   ([`Policy::expected_completion`](crate::router::Policy::expected_completion)).
//!
//! Prompt tokens are not counted: prompt processing runs batched, an order of magnitude
//! faster than generation, and at the generation rate they would dominate the estimate.
//!
//! **Only a measured rate may refuse or spill on the deadline** (rule 8 and its spill
//! cause): the prior is a guess for an unknown board, and a guess must not turn requests
//! away from an idle daemon. With the prior only, the deadline is not checked (in `Hard`
//! the cool-down estimate alone still is). Both averages can be restored across restarts
//! ([`Policy::restore_rate`](crate::router::Policy::restore_rate), [`Policy::restore_completion`](crate::router::Policy::restore_completion)); a restored value counts as
//! measured. The reason says what the number is made of, e.g. `estimated wait 412 s
//! (1,930 tokens queued ahead + ~180 expected for this one at 5.1 t/s measured) exceeds
//! the deadline of 300 s`.

use std::fmt::Write as _;
use std::time::Duration;

use super::error::{PolicyError, invalid};
use super::inputs::{CloudHealth, CloudRoute, Conditions, Privacy, RequestFacts, RouteHealth};
use super::rate::Ewma;
use super::rules::{CloudPick, Decision, Findings, Rule, seconds, thousands, walk};
use super::thermal::{Thermal, ThermalLimits, ThermalState};
use crate::units::human_bytes;

/// Settings of the policy; see the module documentation for how each is used.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    pub thermal: ThermalLimits,
    /// Tokens of local context: prompt + `max_tokens` beyond it cannot run locally.
    pub local_context: usize,
    /// KV cache bytes per token of the loaded model.
    pub kv_bytes_per_token: u64,
    /// Kept free of the measured memory headroom, which is noisy.
    pub memory_margin: u64,
    /// Requests the local queue holds; at this many it is full. At least 1.
    pub queue_capacity: usize,
    /// Deadline of requests whose message carries no expiry.
    pub default_deadline: Duration,
    /// A guess at how long the SoC takes to cool below the hard exit threshold, added to
    /// the local wait in `Hard` to judge whether waiting can meet the deadline.
    pub hard_cooldown: Duration,
    /// Compute threads in `Normal`. At least 1.
    pub threads: usize,
    /// Compute threads in `Soft` and `Hard`, to shed heat; 1 to `threads`
    /// ([`PolicyConfig::half_threads`](crate::router::PolicyConfig::half_threads) is a good default).
    pub hot_threads: usize,
    /// Configured cloud routes, most preferred first; empty when there is no cloud.
    pub cloud_routes: Vec<CloudRoute>,
    /// Generation rate (tokens/s) assumed before any measurement.
    pub rate_prior: f64,
    /// Weight of each new rate measurement in the [`Ewma`], in (0, 1].
    pub rate_alpha: f64,
    /// Completion tokens a request is expected to generate before any has finished
    /// (usually [`COMPLETION_PRIOR_TOKENS`](crate::router::COMPLETION_PRIOR_TOKENS)).
    pub completion_prior: f64,
    /// Weight of each finished request's completion length in its [`Ewma`], in (0, 1].
    pub completion_alpha: f64,
}

impl PolicyConfig {
    /// Half of `threads`, at least 1: the usual thread count when hot.
    pub fn half_threads(threads: usize) -> usize {
        (threads / 2).max(1)
    }

    pub fn validate(&self) -> Result<(), PolicyError> {
        self.thermal.validate()?;
        if self.local_context == 0 {
            return Err(invalid("local_context", "must be at least 1 token"));
        }
        if self.kv_bytes_per_token == 0 {
            return Err(invalid("kv_bytes_per_token", "must be at least 1"));
        }
        if self.queue_capacity == 0 {
            return Err(invalid("queue_capacity", "must be at least 1"));
        }
        if self.default_deadline.is_zero() {
            return Err(invalid("default_deadline", "must be positive"));
        }
        if self.threads == 0 {
            return Err(invalid("threads", "must be at least 1"));
        }
        if self.hot_threads == 0 || self.hot_threads > self.threads {
            return Err(invalid(
                "hot_threads",
                format!(
                    "{} must be between 1 and threads ({})",
                    self.hot_threads, self.threads
                ),
            ));
        }
        for (i, r) in self.cloud_routes.iter().enumerate() {
            if self.cloud_routes[..i].contains(r) {
                return Err(invalid(
                    "cloud_routes",
                    format!("{} is listed twice", r.as_str()),
                ));
            }
        }
        Ewma::new(self.rate_prior, self.rate_alpha)?;
        if !(self.completion_prior.is_finite() && self.completion_prior >= 1.0) {
            return Err(invalid(
                "completion_prior",
                format!(
                    "{} tokens must be a finite number, at least 1",
                    self.completion_prior
                ),
            ));
        }
        if !(self.completion_alpha > 0.0 && self.completion_alpha <= 1.0) {
            return Err(invalid(
                "completion_alpha",
                format!("{} must be in (0, 1]", self.completion_alpha),
            ));
        }
        Ok(())
    }
}

/// The routing state machine: configuration, thermal state, generation rate and
/// completion length.
#[derive(Clone, Debug)]
pub struct Policy {
    config: PolicyConfig,
    thermal: Thermal,
    rate: Ewma,
    /// Completion tokens per finished request.
    completion: Ewma,
}

impl Policy {
    pub fn new(config: PolicyConfig) -> Result<Policy, PolicyError> {
        config.validate()?;
        Ok(Policy {
            thermal: Thermal::new(config.thermal)?,
            rate: Ewma::new(config.rate_prior, config.rate_alpha)?,
            completion: Ewma::new(config.completion_prior, config.completion_alpha)?,
            config,
        })
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    pub fn thermal(&self) -> &Thermal {
        &self.thermal
    }

    /// The generation-rate estimate.
    pub fn rate(&self) -> &Ewma {
        &self.rate
    }

    /// Feeds a temperature reading between requests (the monitor's interval), so that
    /// [`Policy::local_threads`](crate::router::Policy::local_threads) follows the board even when no request arrives.
    pub fn observe_temperature(&mut self, reading_c: Option<f32>) -> ThermalState {
        self.thermal.update(reading_c)
    }

    /// Feeds a measured generation rate (tokens/s) of a finished local job.
    pub fn observe_rate(&mut self, tokens_per_s: f64) -> Result<f64, PolicyError> {
        self.rate.observe(tokens_per_s)
    }

    /// Restores a generation rate measured by a previous run; it counts as measured.
    pub fn restore_rate(&mut self, tokens_per_s: f64) -> Result<f64, PolicyError> {
        self.rate.restore(tokens_per_s)
    }

    /// The completion-length estimate (tokens per request).
    pub fn completion(&self) -> &Ewma {
        &self.completion
    }

    /// Feeds the completion tokens a finished local request generated (0 counts as 1:
    /// even an immediate end-of-sequence is a generation step).
    pub fn observe_completion(&mut self, tokens: usize) -> f64 {
        let tokens = tokens.max(1) as f64;
        // Finite and at least 1, so the average accepts it.
        self.completion
            .observe(tokens)
            .unwrap_or(self.completion.value())
    }

    /// Restores a completion-length average measured by a previous run.
    pub fn restore_completion(&mut self, tokens: f64) -> Result<f64, PolicyError> {
        if !(tokens.is_finite() && tokens >= 1.0) {
            return Err(PolicyError::InvalidCompletion(tokens));
        }
        self.completion.restore(tokens)
    }

    /// Tokens a request allowed `max_tokens` is expected to generate: the completion
    /// average, capped by `max_tokens`, at least 1. Rounded up, so the queue-ahead sum
    /// the caller keeps from these never undercounts a request.
    pub fn expected_completion(&self, max_tokens: usize) -> u64 {
        let cap = u64::try_from(max_tokens.max(1)).unwrap_or(u64::MAX);
        // The average is finite and at least 1; `as` saturates.
        (self.completion.value().ceil() as u64).clamp(1, cap)
    }

    /// Threads local generation should use in the current thermal state.
    pub fn local_threads(&self) -> usize {
        match self.thermal.state() {
            ThermalState::Normal => self.config.threads,
            ThermalState::Soft | ThermalState::Hard => self.config.hot_threads,
        }
    }

    /// Decides where `req` goes under `now`: applies `now.temperature_c` to the thermal
    /// state, then walks the decision table (module documentation) in order.
    pub fn decide(&mut self, now: &Conditions, req: &RequestFacts) -> Decision {
        self.thermal.update(now.temperature_c);
        let f = self.findings(now, req);
        let (route, rule, reason) = walk(&f, self.local_threads(), self.config.threads);
        Decision {
            route,
            reason,
            rule,
            spill_cause: (rule == Rule::Spill)
                .then(|| f.spill_cause_kind())
                .flatten(),
            thermal: f.thermal,
            local_threads: self.local_threads(),
            local_wait: Duration::try_from_secs_f64(f.wait_s).unwrap_or(Duration::MAX),
            rate_measured: f.rate_measured,
        }
    }

    /// Measures the request against the board; decides nothing.
    fn findings(&self, now: &Conditions, req: &RequestFacts) -> Findings {
        let c = &self.config;
        let thermal = self.thermal.state();
        let deadline = req.deadline.unwrap_or(c.default_deadline);
        let tokens = req.prompt_tokens.saturating_add(req.max_tokens);
        let tokens64 = u64::try_from(tokens).unwrap_or(u64::MAX);

        let context_too_long = (tokens > c.local_context).then(|| {
            format!(
                "prompt+max_tokens {tokens} exceeds local context {}",
                c.local_context
            )
        });

        let kv = tokens64.saturating_mul(c.kv_bytes_per_token);
        let memory_short = now.mem_headroom.and_then(|headroom| {
            (kv.saturating_add(c.memory_margin) > headroom).then(|| {
                format!(
                    "KV cache {} + margin {} exceeds memory headroom {}",
                    human_bytes(kv),
                    human_bytes(c.memory_margin),
                    human_bytes(headroom)
                )
            })
        });

        let queue_full = (now.queued_requests >= c.queue_capacity).then(|| {
            format!(
                "local queue full ({} of {})",
                now.queued_requests, c.queue_capacity
            )
        });

        // The Ewma keeps its value positive and finite, so this is finite too.
        let rate = self.rate.value();
        let rate_measured = self.rate.measured().is_some();
        let expected = self.expected_completion(req.max_tokens);
        let wait_s = now.queued_tokens.saturating_add(expected) as f64 / rate;
        let wait = format!(
            "estimated wait {} ({} tokens queued ahead + ~{} expected for this one at {:.1} t/s {})",
            seconds(wait_s),
            thousands(now.queued_tokens),
            thousands(expected),
            rate,
            if rate_measured {
                "measured"
            } else {
                "assumed, not yet measured"
            }
        );
        // Only a measured rate may turn a request away on its deadline (module docs).
        let counted_wait_s = if rate_measured { wait_s } else { 0.0 };
        let thermal_reason = self.thermal.reason();
        let deadline_s = deadline.as_secs_f64();
        let too_slow = if thermal == ThermalState::Hard {
            let cooldown = c.hard_cooldown.as_secs_f64();
            (cooldown + counted_wait_s > deadline_s).then(|| {
                let waiting = if rate_measured {
                    format!(" + {wait}")
                } else {
                    String::new()
                };
                format!(
                    "{}: cool-down ~{}{waiting} exceeds the deadline of {}",
                    thermal_reason.as_deref().unwrap_or("soc hot"),
                    seconds(cooldown),
                    seconds(deadline_s)
                )
            })
        } else {
            (rate_measured && wait_s > deadline_s)
                .then(|| format!("{wait} exceeds the deadline of {}", seconds(deadline_s)))
        };

        Findings {
            hint: req.route,
            local_only: req.privacy == Some(Privacy::LocalOnly),
            thermal,
            thermal_reason,
            deadline,
            context_too_long,
            memory_short,
            queue_full,
            wait_s,
            rate_measured,
            too_slow,
            cloud: self.pick_cloud(&now.cloud),
        }
    }

    /// The first configured cloud route that is up, in preference order.
    fn pick_cloud(&self, health: &CloudHealth) -> CloudPick {
        if self.config.cloud_routes.is_empty() {
            return CloudPick::Down("no cloud route configured".into());
        }
        let mut down = String::new();
        for &route in &self.config.cloud_routes {
            match health.get(route) {
                RouteHealth::Up => {
                    let note = if down.is_empty() {
                        String::new()
                    } else {
                        format!(" (skipped {down})")
                    };
                    return CloudPick::Up { route, note };
                }
                RouteHealth::Down(why) => {
                    if !down.is_empty() {
                        down.push_str("; ");
                    }
                    let _ = write!(down, "{}: {why}", route.as_str());
                }
            }
        }
        CloudPick::Down(format!("cloud unavailable ({down})"))
    }
}
