//! The routing policy: a pure state machine that decides, for each request, whether it runs
//! on the board ([`Route::Local`]), waits for local capacity ([`Route::Queue`]), is
//! forwarded ([`Route::CloudHttps`], [`Route::CloudMqtt`]) or is refused
//! ([`Route::Reject`]), and records a reason for the reply's `reason` field and telemetry.
//!
//! Nothing here reads a file, a socket or a clock: readings, health and the time left
//! before a request's deadline are inputs, so every decision is reproducible in a test.
//!
//! # Thermal state (hysteresis)
//!
//! [`Thermal`] keeps a [`ThermalState`] that moves *up* as soon as a reading reaches an
//! enter threshold and *down* only once a reading falls below the matching exit threshold,
//! so a SoC hovering around a limit does not flap between local and cloud:
//!
//! | from \ reading `t`  | `t ≥ hard_enter` | `hard_exit ≤ t < hard_enter` | `soft_enter ≤ t < hard_exit`  | `soft_exit ≤ t < soft_enter` | `t < soft_exit` |
//! |---------------------|------------------|------------------------------|-------------------------------|------------------------------|-----------------|
//! | `Normal`            | `Hard`           | `Soft`                       | `Soft`                        | `Normal`                     | `Normal`        |
//! | `Soft`              | `Hard`           | `Soft`                       | `Soft`                        | `Soft`                       | `Normal`        |
//! | `Hard`              | `Hard`           | `Hard`                       | `Soft`                        | `Soft`                       | `Normal`        |
//!
//! The thresholds are ordered `soft_exit < soft_enter ≤ hard_exit < hard_enter`
//! ([`ThermalLimits::validate`]), so the columns cover every reading once. A missing (or
//! non-finite) reading keeps the state: a sensor hiccup must neither cool nor heat the
//! board on paper. Before the first reading the state is `Normal`. In `Soft` and `Hard`,
//! local generation runs on [`PolicyConfig::hot_threads`] instead of
//! [`PolicyConfig::threads`] to shed heat; in `Hard` nothing new starts locally.
//!
//! # Decision order
//!
//! [`Policy::decide`] first gathers findings (numbers and their explanations), then walks
//! one ordered list of rules; the first that applies decides. The list ends with a
//! catch-all, so every combination of inputs has exactly one defined outcome.
//!
//! | #  | [`Rule`]                 | applies when                                                                     | decision                              | reject code           |
//! |----|--------------------------|----------------------------------------------------------------------------------|---------------------------------------|-----------------------|
//! | 1  | `Expired`                | the time left before the deadline is zero                                        | reject                                | `expired`             |
//! | 2  | `PrivacyConflict`        | `privacy: local-only` together with `route: cloud`                               | reject                                | `invalid_request`     |
//! | 3  | `CloudForced`            | `route: cloud` and a configured cloud route is up                                | first such route, in preference order | —                     |
//! | 4  | `CloudForcedUnavailable` | `route: cloud` and no configured cloud route is up                               | reject                                | `cloud_unavailable`   |
//! | 5  | `Spill`                  | `route: auto`, not local-only, a *spill cause* holds, a cloud route is up        | first up route, in preference order   | —                     |
//! | 6  | `ContextTooLong`         | prompt + `max_tokens` exceeds the local context                                  | reject                                | `context_length`      |
//! | 7  | `NeverFits`              | the request's KV cache cannot fit the RAM budget even on an idle engine          | reject                                | `insufficient_memory` |
//! | 8  | `QueueFull`              | the local queue is full                                                          | reject                                | `busy`                |
//! | 9  | `DeadlineUnmet`          | the *measured* local wait (+ the cool-down estimate when `Hard`) exceeds the deadline | reject                           | `deadline_exceeded`   |
//! | 10 | `HardWait`               | thermal state `Hard`                                                             | queue                                 | —                     |
//! | 11 | `MemoryWait`             | the KV cache does not fit now (memory headroom − margin, or budget left)         | queue                                 | —                     |
//! | 12 | `LocalHot`               | thermal state `Soft`                                                             | local on `hot_threads`                | —                     |
//! | 13 | `Local`                  | otherwise                                                                        | local on `threads`                    | —                     |
//!
//! The *spill causes* of rule 5 are the conditions of rules 6 to 12, and the first that
//! holds, in this order, becomes the reason: context too long, never fits the budget,
//! thermal `Hard`, thermal `Soft`, memory short now, queue full, wait beyond the deadline.
//! So by route hint:
//!
//! - `auto`: rule 1; then the cloud whenever the board is not `Normal` or the request does
//!   not fit locally (rule 5); when every cloud route is down or none is configured, rules
//!   6–13 apply as for `local` and the reason says why the cloud was not used (for example
//!   `Soft` then runs locally on fewer threads, `Hard` waits).
//! - `local`: rules 1, 6–13. It forces the board: it waits or is refused, never forwarded.
//! - `cloud`: rules 1, 3, 4. An explicit `cloud` never runs locally: the client asked for
//!   the cloud (a bigger model, a latency budget the board cannot meet), so with no cloud
//!   route up it is refused `cloud_unavailable` rather than silently answered by the
//!   board, and not queued either since local capacity cannot serve it.
//! - `privacy: local-only` is **never forwarded**: with `auto` or `local` it follows rules
//!   1, 6–13 (it waits for local capacity, or is refused when it can never fit or cannot
//!   meet its deadline); with `route: cloud` it is contradictory and refused (rule 2).
//!
//! # Queue and re-decision
//!
//! [`Route::Queue`] holds the request in the local queue without starting it. The caller
//! calls [`Policy::decide`] again when something changes (a job finishes, a new reading,
//! memory is freed, a cloud route recovers), passing the *remaining* time before the
//! deadline; the request then runs, is forwarded (`auto` only) or is refused.
//!
//! # Estimates
//!
//! The local wait is `(tokens queued ahead + tokens expected for this request) / rate`:
//!
//! - the rate is an [`Ewma`] of measured generation tokens per second of finished local
//!   requests ([`Policy::observe_rate`]); before the first measurement it is the configured
//!   prior [`PolicyConfig::rate_prior`];
//! - a request is expected to generate `min(max_tokens, E)` tokens, where `E` is an
//!   [`Ewma`] of the completion tokens finished requests actually generated
//!   ([`Policy::observe_completion`]), starting at [`PolicyConfig::completion_prior`]
//!   ([`COMPLETION_PRIOR_TOKENS`] by default). `max_tokens` is a cap, not a length: most
//!   answers end at a stop token long before it, and taking the cap as the length refused
//!   a `max_tokens: 2000` request on an idle board that would have taken a fraction of a
//!   second;
//! - the tokens queued ahead are the expected generation of every request admitted to
//!   the engine and not finished, counted the same way by the caller
//!   ([`Policy::expected_completion`]).
//!
//! Prompt tokens are not counted: prompt processing runs batched, an order of magnitude
//! faster than generation, and at the generation rate they would dominate the estimate.
//!
//! **Only a measured rate may refuse or spill on the deadline** (rule 9 and its spill
//! cause): the prior is a guess for an unknown board, and a guess must not turn requests
//! away from an idle daemon. With the prior only, the deadline is not checked (in `Hard`
//! the cool-down estimate alone still is). Both averages can be restored across restarts
//! ([`Policy::restore_rate`], [`Policy::restore_completion`]); a restored value counts as
//! measured. The reason says what the number is made of, e.g. `estimated wait 412 s
//! (1,930 tokens queued ahead + ~180 expected for this one at 5.1 t/s measured) exceeds
//! the deadline of 300 s`.
//!
//! Memory: the request's KV cache needs `(prompt + max_tokens) × kv_bytes_per_token`; it
//! must fit within the system's memory headroom less a safety margin (the headroom is
//! measured, so noisy) and within what is left of the RAM budget (our own exact
//! accounting, so no margin).

use std::fmt::Write as _;
use std::time::Duration;

use crate::service::schema::{Privacy, RouteHint};
use crate::units::human_bytes;

/// A refused configuration or measurement.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// A configuration value is out of range or inconsistent with another.
    #[error("routing policy: {field}: {message}")]
    InvalidConfig {
        field: &'static str,
        message: String,
    },
    /// A generation-rate measurement that is not a positive finite number.
    #[error("routing policy: generation rate {0} tokens/s is not a positive finite number")]
    InvalidRate(f64),
    /// A completion-length measurement that is not a positive finite number of tokens.
    #[error("routing policy: completion length {0} tokens is not a positive finite number")]
    InvalidCompletion(f64),
}

fn invalid(field: &'static str, message: impl Into<String>) -> PolicyError {
    PolicyError::InvalidConfig {
        field,
        message: message.into(),
    }
}

/// How hot the board is, as far as routing is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThermalState {
    /// Below the soft limit (or not yet cooled below its exit threshold from above).
    #[default]
    Normal,
    /// At or above the soft limit: prefer the cloud, run locally on fewer threads.
    Soft,
    /// At or above the hard limit: start nothing new locally.
    Hard,
}

impl ThermalState {
    /// The name used in telemetry: `normal`, `soft`, `hard`.
    pub fn as_str(self) -> &'static str {
        match self {
            ThermalState::Normal => "normal",
            ThermalState::Soft => "soft",
            ThermalState::Hard => "hard",
        }
    }
}

/// Temperature thresholds in °C. A state is entered at `*_enter_c` and left only below
/// `*_exit_c`; the gap between them is the hysteresis band.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThermalLimits {
    pub soft_enter_c: f32,
    pub soft_exit_c: f32,
    pub hard_enter_c: f32,
    pub hard_exit_c: f32,
}

impl ThermalLimits {
    /// Checks that the thresholds are finite and ordered
    /// `soft_exit < soft_enter ≤ hard_exit < hard_enter`.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let all = [
            self.soft_enter_c,
            self.soft_exit_c,
            self.hard_enter_c,
            self.hard_exit_c,
        ];
        if all.iter().any(|t| !t.is_finite()) {
            return Err(invalid("thermal", "thresholds must be finite numbers"));
        }
        if self.soft_exit_c >= self.soft_enter_c {
            return Err(invalid(
                "thermal.soft_exit_c",
                format!(
                    "{} °C must be below soft_enter_c {} °C",
                    self.soft_exit_c, self.soft_enter_c
                ),
            ));
        }
        if self.hard_exit_c >= self.hard_enter_c {
            return Err(invalid(
                "thermal.hard_exit_c",
                format!(
                    "{} °C must be below hard_enter_c {} °C",
                    self.hard_exit_c, self.hard_enter_c
                ),
            ));
        }
        // Leaving Hard must land in (or above) the Soft band: a board that cooled just
        // below the hard exit is still too warm for full-speed local generation.
        if self.soft_enter_c > self.hard_exit_c {
            return Err(invalid(
                "thermal.soft_enter_c",
                format!(
                    "{} °C must not be above hard_exit_c {} °C",
                    self.soft_enter_c, self.hard_exit_c
                ),
            ));
        }
        Ok(())
    }
}

/// The thermal state machine: the state, and the last reading that explains it.
#[derive(Clone, Debug, PartialEq)]
pub struct Thermal {
    limits: ThermalLimits,
    state: ThermalState,
    last_c: Option<f32>,
    /// The latest update carried no usable reading, so `last_c` is older than it looks.
    stale: bool,
}

impl Thermal {
    /// Starts in [`ThermalState::Normal`] with no reading.
    pub fn new(limits: ThermalLimits) -> Result<Thermal, PolicyError> {
        limits.validate()?;
        Ok(Thermal {
            limits,
            state: ThermalState::Normal,
            last_c: None,
            stale: false,
        })
    }

    /// Applies a reading (see the transition table in the module documentation) and
    /// returns the new state. `None` or a non-finite value keeps the state.
    pub fn update(&mut self, reading_c: Option<f32>) -> ThermalState {
        let Some(t) = reading_c.filter(|t| t.is_finite()) else {
            self.stale = true;
            return self.state;
        };
        let l = &self.limits;
        self.state = if t >= l.hard_enter_c
            || (self.state == ThermalState::Hard && t >= l.hard_exit_c)
        {
            ThermalState::Hard
        } else if t >= l.soft_enter_c || (self.state >= ThermalState::Soft && t >= l.soft_exit_c) {
            ThermalState::Soft
        } else {
            ThermalState::Normal
        };
        self.last_c = Some(t);
        self.stale = false;
        self.state
    }

    pub fn state(&self) -> ThermalState {
        self.state
    }

    /// The last usable reading, in °C.
    pub fn last_reading_c(&self) -> Option<f32> {
        self.last_c
    }

    pub fn limits(&self) -> &ThermalLimits {
        &self.limits
    }

    /// Why the board is not `Normal`, e.g. `soc 83.1 °C above hard limit 82 °C`; `None`
    /// when it is.
    pub fn reason(&self) -> Option<String> {
        let l = &self.limits;
        let (name, enter, exit) = match self.state {
            ThermalState::Normal => return None,
            ThermalState::Soft => ("soft", l.soft_enter_c, l.soft_exit_c),
            ThermalState::Hard => ("hard", l.hard_enter_c, l.hard_exit_c),
        };
        let when = if self.stale { " (last reading)" } else { "" };
        Some(match self.last_c {
            Some(t) if t >= enter => format!(
                "soc {t:.1} °C{when} above {name} limit {} °C",
                degrees(enter)
            ),
            Some(t) => format!(
                "soc {t:.1} °C{when} not yet below {name} exit {} °C (limit {} °C)",
                degrees(exit),
                degrees(enter)
            ),
            // States above Normal are only entered from a reading; kept for totality.
            None => format!("soc thermal state {name}"),
        })
    }
}

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
/// questions in 100–300 tokens). Only a starting point: [`Policy::observe_completion`]
/// replaces it with what requests here actually generate.
pub const COMPLETION_PRIOR_TOKENS: f64 = 256.0;

/// A way to the cloud.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloudRoute {
    /// The OpenAI-compatible HTTPS router.
    Https,
    /// A cloud MQTT broker with a worker behind it.
    Mqtt,
}

impl CloudRoute {
    pub fn as_str(self) -> &'static str {
        match self {
            CloudRoute::Https => "https",
            CloudRoute::Mqtt => "mqtt",
        }
    }

    /// The decision that sends a request this way.
    pub fn route(self) -> Route {
        match self {
            CloudRoute::Https => Route::CloudHttps,
            CloudRoute::Mqtt => Route::CloudMqtt,
        }
    }
}

/// Whether a cloud route can take a request now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RouteHealth {
    /// A circuit breaker starts closed: a configured route is assumed up until it fails.
    #[default]
    Up,
    /// Down, with why (e.g. `circuit open`, `credits exhausted`).
    Down(String),
}

/// Health of each cloud route, as reported by the forwarders. Routes that are not
/// configured are ignored whatever their health says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloudHealth {
    pub https: RouteHealth,
    pub mqtt: RouteHealth,
}

impl CloudHealth {
    pub fn get(&self, route: CloudRoute) -> &RouteHealth {
        match route {
            CloudRoute::Https => &self.https,
            CloudRoute::Mqtt => &self.mqtt,
        }
    }
}

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
    /// The RAM budget, if one is set.
    pub ram_budget: Option<u64>,
    /// Bytes of the budget in use on an idle engine (weights, scratch, runtime): a KV
    /// cache that does not fit beside them never will.
    pub budget_baseline: u64,
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
    /// ([`PolicyConfig::half_threads`] is a good default).
    pub hot_threads: usize,
    /// Configured cloud routes, most preferred first; empty when there is no cloud.
    pub cloud_routes: Vec<CloudRoute>,
    /// Generation rate (tokens/s) assumed before any measurement.
    pub rate_prior: f64,
    /// Weight of each new rate measurement in the [`Ewma`], in (0, 1].
    pub rate_alpha: f64,
    /// Completion tokens a request is expected to generate before any has finished
    /// (usually [`COMPLETION_PRIOR_TOKENS`]).
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

/// The board and the service at the moment of a decision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conditions {
    /// The latest SoC temperature in °C; `None` when there is no fresh reading (the
    /// thermal state is then kept).
    pub temperature_c: Option<f32>,
    /// Bytes the system can still give (the smaller of `MemAvailable` and the cgroup's
    /// `memory.max − memory.current`); `None` when unknown, and then not checked.
    pub mem_headroom: Option<u64>,
    /// Bytes of the RAM budget committed now (the baseline plus KV of admitted work).
    pub budget_committed: u64,
    /// Requests in the local queue, not counting this one.
    pub queued_requests: usize,
    /// Tokens the work ahead of this request, running or queued, is expected to generate
    /// (each admitted request counted by [`Policy::expected_completion`]).
    pub queued_tokens: u64,
    pub cloud: CloudHealth,
}

/// What the policy needs to know about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestFacts {
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    pub route: RouteHint,
    pub privacy: Option<Privacy>,
    /// Time left before the request's deadline (its MQTT message expiry), measured by the
    /// caller now; `None` uses [`PolicyConfig::default_deadline`].
    pub deadline: Option<Duration>,
}

/// Why a request was refused; [`RejectCode::as_str`] is the `error.code` of the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectCode {
    /// The deadline passed before the request could be routed.
    Expired,
    /// The request contradicts itself (`privacy: local-only` with `route: cloud`).
    InvalidRequest,
    /// `route: cloud`, and no cloud route is configured or up.
    CloudUnavailable,
    /// Prompt + `max_tokens` exceed the local context and the cloud cannot take it.
    ContextLength,
    /// The KV cache can never fit the RAM budget and the cloud cannot take it.
    InsufficientMemory,
    /// The local queue is full and the cloud cannot take it.
    Busy,
    /// Waiting locally cannot finish before the deadline and the cloud cannot take it.
    DeadlineExceeded,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::Expired => "expired",
            RejectCode::InvalidRequest => "invalid_request",
            RejectCode::CloudUnavailable => "cloud_unavailable",
            RejectCode::ContextLength => "context_length",
            RejectCode::InsufficientMemory => "insufficient_memory",
            RejectCode::Busy => "busy",
            RejectCode::DeadlineExceeded => "deadline_exceeded",
        }
    }
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// Run on the board (admit to the local queue now).
    Local,
    /// Forward to the HTTPS router.
    CloudHttps,
    /// Forward through the cloud MQTT broker.
    CloudMqtt,
    /// Hold for local capacity and decide again later.
    Queue,
    /// Refuse.
    Reject(RejectCode),
}

impl Route {
    /// The reply's `route` field: `local`, `cloud-https`, `cloud-mqtt`, `queue`, `reject`.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Local => "local",
            Route::CloudHttps => "cloud-https",
            Route::CloudMqtt => "cloud-mqtt",
            Route::Queue => "queue",
            Route::Reject(_) => "reject",
        }
    }

    /// Whether the request leaves the device.
    pub fn is_cloud(self) -> bool {
        matches!(self, Route::CloudHttps | Route::CloudMqtt)
    }
}

/// The row of the decision table that decided (see the module documentation). Declared
/// in table order: [`Rule::number`] relies on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    Expired,
    PrivacyConflict,
    CloudForced,
    CloudForcedUnavailable,
    Spill,
    ContextTooLong,
    NeverFits,
    QueueFull,
    DeadlineUnmet,
    HardWait,
    MemoryWait,
    LocalHot,
    Local,
}

impl Rule {
    /// The row number in the module documentation's table.
    pub fn number(self) -> u8 {
        self as u8 + 1
    }
}

/// One decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub route: Route,
    /// Why, for the reply's `reason` and telemetry, e.g.
    /// `soc 83.1 °C above hard limit 82 °C`.
    pub reason: String,
    pub rule: Rule,
    /// The thermal state after this decision's reading.
    pub thermal: ThermalState,
    /// Threads local generation should use now (meaningful for `Local`; also what running
    /// work should drop to, see [`Policy::local_threads`]).
    pub local_threads: usize,
    /// The estimated local queue wait: the work ahead plus this request's expected
    /// generation, at the rate estimate (in `Hard` the deadline check adds
    /// [`PolicyConfig::hard_cooldown`] to it).
    pub local_wait: Duration,
    /// Whether `local_wait` rests on a measured rate (only then may it refuse or spill).
    pub rate_measured: bool,
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

/// The outcome of looking for a cloud route that is up.
enum CloudPick {
    /// This route; `note` names preferred routes skipped because they were down.
    Up { route: CloudRoute, note: String },
    /// None is; why (which are down, or that none is configured).
    Down(String),
}

/// Everything [`Policy::decide`] found out before walking the rules: each blocker is
/// `Some(explanation)` when it holds.
struct Findings {
    hint: RouteHint,
    local_only: bool,
    thermal: ThermalState,
    thermal_reason: Option<String>,
    deadline: Duration,
    context_too_long: Option<String>,
    never_fits: Option<String>,
    memory_short: Option<String>,
    queue_full: Option<String>,
    wait_s: f64,
    rate_measured: bool,
    too_slow: Option<String>,
    cloud: CloudPick,
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
    /// [`Policy::local_threads`] follows the board even when no request arrives.
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
        let never_fits = c.ram_budget.and_then(|budget| {
            (c.budget_baseline.saturating_add(kv) > budget).then(|| {
                format!(
                    "KV cache {} for {tokens} tokens never fits RAM budget {} ({} in use when idle)",
                    human_bytes(kv),
                    human_bytes(budget),
                    human_bytes(c.budget_baseline)
                )
            })
        });
        let over_budget = c.ram_budget.and_then(|budget| {
            (now.budget_committed.saturating_add(kv) > budget).then(|| {
                format!(
                    "KV cache {} exceeds RAM budget left {} of {}",
                    human_bytes(kv),
                    human_bytes(budget.saturating_sub(now.budget_committed)),
                    human_bytes(budget)
                )
            })
        });
        let over_headroom = now.mem_headroom.and_then(|headroom| {
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
            never_fits,
            memory_short: over_budget.or(over_headroom),
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

impl Findings {
    /// The first reason the board should not take an `auto` request, in the order of the
    /// module documentation.
    fn spill_cause(&self) -> Option<&str> {
        [
            &self.context_too_long,
            &self.never_fits,
            &self.thermal_reason,
            &self.memory_short,
            &self.queue_full,
            &self.too_slow,
        ]
        .into_iter()
        .find_map(Option::as_deref)
    }
}

/// The decision table, in order: the first rule that applies decides. Returns the route,
/// the rule and the reason.
fn walk(f: &Findings, local_threads: usize, all_threads: usize) -> (Route, Rule, String) {
    use RejectCode as C;
    let reject = |code, rule, reason: String| (Route::Reject(code), rule, reason);

    // 1. Nothing can be done in no time.
    if f.deadline.is_zero() {
        return reject(
            C::Expired,
            Rule::Expired,
            "deadline passed before routing".into(),
        );
    }
    // 2. Privacy wins over the hint, and a client that asked for both is told so.
    if f.local_only && f.hint == RouteHint::Cloud {
        return reject(
            C::InvalidRequest,
            Rule::PrivacyConflict,
            "privacy local-only forbids route cloud".into(),
        );
    }
    // 3, 4. An explicit cloud request never runs on the board.
    if f.hint == RouteHint::Cloud {
        return match &f.cloud {
            CloudPick::Up { route, note } => (
                route.route(),
                Rule::CloudForced,
                format!("route cloud{note}"),
            ),
            CloudPick::Down(why) => reject(
                C::CloudUnavailable,
                Rule::CloudForcedUnavailable,
                format!("route cloud: {why}"),
            ),
        };
    }
    // 5. Auto spills whenever the board is not the right place and the cloud is up.
    let auto = f.hint == RouteHint::Auto && !f.local_only;
    let spill = if auto { f.spill_cause() } else { None };
    if let (Some(cause), CloudPick::Up { route, note }) = (spill, &f.cloud) {
        return (route.route(), Rule::Spill, format!("{cause}{note}"));
    }

    // From here the request stays on the board. Local-bound requests say what bound them;
    // auto requests that wanted to spill say why the cloud could not take them.
    let say = |what: &str| -> String {
        if f.local_only {
            format!("privacy local-only: {what}")
        } else if f.hint == RouteHint::Local {
            format!("route local: {what}")
        } else if let (Some(_), CloudPick::Down(why)) = (spill, &f.cloud) {
            format!("{what}; {why}")
        } else {
            what.to_string()
        }
    };
    let waiting = |why: &str| say(&format!("waiting for local capacity ({why})"));

    // 6, 7. Cannot ever run here.
    if let Some(why) = &f.context_too_long {
        return reject(C::ContextLength, Rule::ContextTooLong, say(why));
    }
    if let Some(why) = &f.never_fits {
        return reject(C::InsufficientMemory, Rule::NeverFits, say(why));
    }
    // 8. No room to wait.
    if let Some(why) = &f.queue_full {
        return reject(C::Busy, Rule::QueueFull, say(why));
    }
    // 9. Waiting would miss the deadline anyway.
    if let Some(why) = &f.too_slow {
        return reject(C::DeadlineExceeded, Rule::DeadlineUnmet, say(why));
    }
    // 10. Too hot to start anything: wait for the SoC to cool below the hard exit.
    if let Some(why) = f
        .thermal_reason
        .as_deref()
        .filter(|_| f.thermal == ThermalState::Hard)
    {
        return (Route::Queue, Rule::HardWait, waiting(why));
    }
    // 11. Memory frees as the work ahead finishes.
    if let Some(why) = &f.memory_short {
        return (Route::Queue, Rule::MemoryWait, waiting(why));
    }
    // 12. Warm: run, on fewer threads.
    if let Some(why) = f
        .thermal_reason
        .as_deref()
        .filter(|_| f.thermal == ThermalState::Soft)
    {
        return (
            Route::Local,
            Rule::LocalHot,
            say(&format!(
                "{why}: local on {local_threads} of {all_threads} threads"
            )),
        );
    }
    // 13. Everything fits.
    (
        Route::Local,
        Rule::Local,
        say(&format!(
            "fits locally (estimated wait {}{}, deadline {})",
            seconds(f.wait_s),
            if f.rate_measured {
                ""
            } else {
                " at the assumed rate"
            },
            seconds(f.deadline.as_secs_f64())
        )),
    )
}

/// `82` or `82.5`: limits are usually whole degrees.
fn degrees(c: f32) -> String {
    if c.fract() == 0.0 {
        format!("{c:.0}")
    } else {
        format!("{c:.1}")
    }
}

/// `1,930`: token counts in reasons are read by people.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// `41 s`, `3.5 s`: tenths only where they matter.
fn seconds(s: f64) -> String {
    if s >= 9.95 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    const LIMITS: ThermalLimits = ThermalLimits {
        soft_enter_c: 75.0,
        soft_exit_c: 70.0,
        hard_enter_c: 82.0,
        hard_exit_c: 78.0,
    };

    /// A Pi 5-like board: 4 threads (2 when hot), 2 GiB budget of which 1.5 GiB is the
    /// idle engine, 64 KiB of KV per token, 5 tokens/s until measured.
    fn config() -> PolicyConfig {
        PolicyConfig {
            thermal: LIMITS,
            local_context: 4096,
            kv_bytes_per_token: 64 << 10,
            memory_margin: 64 * MIB,
            ram_budget: Some(2048 * MIB),
            budget_baseline: 1536 * MIB,
            queue_capacity: 4,
            default_deadline: Duration::from_secs(300),
            hard_cooldown: Duration::from_secs(60),
            threads: 4,
            hot_threads: PolicyConfig::half_threads(4),
            cloud_routes: vec![CloudRoute::Https, CloudRoute::Mqtt],
            rate_prior: 5.0,
            rate_alpha: 0.25,
            completion_prior: COMPLETION_PRIOR_TOKENS,
            completion_alpha: 0.25,
        }
    }

    fn request(route: RouteHint, local_only: bool) -> RequestFacts {
        RequestFacts {
            prompt_tokens: 100,
            max_tokens: 200,
            route,
            privacy: local_only.then_some(Privacy::LocalOnly),
            deadline: None,
        }
    }

    /// Cloud route health in a table row; `Off` is not configured at all.
    #[derive(Clone, Copy, Debug)]
    enum H {
        Up,
        Down(&'static str),
        Off,
    }

    #[derive(Clone, Copy, Debug)]
    struct Row {
        name: &'static str,
        /// Readings in order; the last goes with the decision, earlier ones set up the
        /// hysteresis state.
        temps: &'static [Option<f32>],
        route: RouteHint,
        local_only: bool,
        prompt: usize,
        max_tokens: usize,
        deadline_s: Option<u64>,
        headroom_mib: Option<u64>,
        committed_mib: u64,
        baseline_mib: u64,
        queued: usize,
        queued_tokens: u64,
        https: H,
        mqtt: H,
        mqtt_first: bool,
        /// A measured generation rate (tokens/s) fed before deciding; `None`: the prior.
        rate: Option<f64>,
        /// A measured completion length fed before deciding; `None`: the prior.
        completion: Option<usize>,
        want: Route,
        rule: Rule,
        reason: &'static str,
    }

    const BASE: Row = Row {
        name: "",
        temps: &[Some(60.0)],
        route: RouteHint::Auto,
        local_only: false,
        prompt: 100,
        max_tokens: 200,
        deadline_s: None,
        headroom_mib: Some(1024),
        committed_mib: 1536,
        baseline_mib: 1536,
        queued: 0,
        queued_tokens: 0,
        https: H::Up,
        mqtt: H::Up,
        mqtt_first: false,
        rate: None,
        completion: None,
        want: Route::Local,
        rule: Rule::Local,
        reason: "",
    };

    const HOT: &[Option<f32>] = &[Some(83.1)];
    const WARM: &[Option<f32>] = &[Some(76.0)];
    const DOWN: H = H::Down("circuit open");
    const MQTT_DOWN: H = H::Down("broker unreachable");

    use RejectCode as C;
    use RouteHint::{Auto, Cloud, Local as LocalHint};

    #[rustfmt::skip]
    const ROWS: &[Row] = &[
        // --- auto: local when Normal and it fits.
        Row { name: "auto normal fits", reason: "fits locally (estimated wait 40 s at the assumed rate, deadline 300 s)", ..BASE },
        Row { name: "auto no reading yet", temps: &[], reason: "fits locally", ..BASE },
        Row { name: "auto memory headroom unknown", headroom_mib: None, reason: "fits locally", ..BASE },
        Row { name: "auto queue one short of full", queued: 3, reason: "fits locally", ..BASE },
        Row { name: "auto wait exactly the deadline", rate: Some(5.0), queued_tokens: 1300, reason: "fits locally (estimated wait 300 s, deadline 300 s)", ..BASE },
        // --- admission: max_tokens is a cap, and only a measured rate turns work away.
        Row { name: "auto idle prior only huge max_tokens", max_tokens: 2000, reason: "fits locally (estimated wait 51 s at the assumed rate, deadline 300 s)", ..BASE },
        Row { name: "auto prior only short deadline", max_tokens: 2000, deadline_s: Some(5), reason: "fits locally (estimated wait 51 s at the assumed rate, deadline 5.0 s)", ..BASE },
        Row { name: "private prior only work ahead", local_only: true, max_tokens: 2000, queued_tokens: 5000, reason: "privacy local-only: fits locally", ..BASE },
        Row { name: "auto measured fast huge max_tokens", rate: Some(20.0), max_tokens: 2000, reason: "fits locally (estimated wait 13 s, deadline 300 s)", ..BASE },
        Row { name: "auto measured short answers", rate: Some(5.0), completion: Some(20), max_tokens: 2000, deadline_s: Some(10), reason: "fits locally (estimated wait 4.0 s, deadline 10 s)", ..BASE },
        Row { name: "auto measured slow spills", rate: Some(5.1), completion: Some(180), max_tokens: 2000, queued_tokens: 1930, want: Route::CloudHttps, rule: Rule::Spill, reason: "estimated wait 414 s (1,930 tokens queued ahead + ~180 expected for this one at 5.1 t/s measured) exceeds the deadline of 300 s", ..BASE },
        Row { name: "auto measured slow cloud down refuses", rate: Some(5.1), completion: Some(180), max_tokens: 2000, queued_tokens: 1930, https: DOWN, mqtt: MQTT_DOWN, want: Route::Reject(C::DeadlineExceeded), rule: Rule::DeadlineUnmet, reason: "estimated wait 414 s (1,930 tokens queued ahead + ~180 expected for this one at 5.1 t/s measured) exceeds the deadline of 300 s; cloud unavailable", ..BASE },
        Row { name: "auto queue ahead counted", rate: Some(5.0), queued_tokens: 1400, https: DOWN, mqtt: MQTT_DOWN, want: Route::Reject(C::DeadlineExceeded), rule: Rule::DeadlineUnmet, reason: "estimated wait 320 s (1,400 tokens queued ahead + ~200 expected", ..BASE },
        Row { name: "auto hard prior only cool-down alone", temps: HOT, deadline_s: Some(50), https: DOWN, mqtt: MQTT_DOWN, want: Route::Reject(C::DeadlineExceeded), rule: Rule::DeadlineUnmet, reason: "soc 83.1 °C above hard limit 82 °C: cool-down ~60 s exceeds the deadline of 50 s", ..BASE },
        // --- auto: spill causes with the cloud up.
        Row { name: "auto hard spills", temps: HOT, want: Route::CloudHttps, rule: Rule::Spill, reason: "soc 83.1 °C above hard limit 82 °C", ..BASE },
        Row { name: "auto soft spills", temps: WARM, want: Route::CloudHttps, rule: Rule::Spill, reason: "soc 76.0 °C above soft limit 75 °C", ..BASE },
        Row { name: "auto hard band hysteresis", temps: &[Some(83.0), Some(79.0)], want: Route::CloudHttps, rule: Rule::Spill, reason: "soc 79.0 °C not yet below hard exit 78 °C (limit 82 °C)", ..BASE },
        Row { name: "auto soft band hysteresis", temps: &[Some(76.0), Some(72.0)], want: Route::CloudHttps, rule: Rule::Spill, reason: "soc 72.0 °C not yet below soft exit 70 °C", ..BASE },
        Row { name: "auto soft band from below stays normal", temps: &[Some(60.0), Some(72.0)], reason: "fits locally", ..BASE },
        Row { name: "auto missing reading keeps hard", temps: &[Some(83.1), None], want: Route::CloudHttps, rule: Rule::Spill, reason: "soc 83.1 °C (last reading) above hard limit 82 °C", ..BASE },
        Row { name: "auto NaN reading keeps hard", temps: &[Some(83.1), Some(f32::NAN)], want: Route::CloudHttps, rule: Rule::Spill, reason: "(last reading)", ..BASE },
        Row { name: "auto context spills", prompt: 8000, max_tokens: 1000, want: Route::CloudHttps, rule: Rule::Spill, reason: "prompt+max_tokens 9000 exceeds local context 4096", ..BASE },
        Row { name: "auto context is the first cause even when hot", temps: HOT, prompt: 8000, max_tokens: 1000, want: Route::CloudHttps, rule: Rule::Spill, reason: "prompt+max_tokens 9000 exceeds local context 4096", ..BASE },
        Row { name: "auto headroom short spills", headroom_mib: Some(50), want: Route::CloudHttps, rule: Rule::Spill, reason: "KV cache 18.75 MiB + margin 64.00 MiB exceeds memory headroom 50.00 MiB", ..BASE },
        Row { name: "auto budget short spills", committed_mib: 1900, prompt: 2800, deadline_s: Some(1000), want: Route::CloudHttps, rule: Rule::Spill, reason: "KV cache 187.50 MiB exceeds RAM budget left 148.00 MiB of 2.00 GiB", ..BASE },
        Row { name: "auto never fits spills", baseline_mib: 1900, committed_mib: 1900, prompt: 3800, deadline_s: Some(1000), want: Route::CloudHttps, rule: Rule::Spill, reason: "never fits RAM budget 2.00 GiB", ..BASE },
        Row { name: "auto queue full spills", queued: 4, want: Route::CloudHttps, rule: Rule::Spill, reason: "local queue full (4 of 4)", ..BASE },
        Row { name: "auto slow spills", rate: Some(5.0), deadline_s: Some(30), want: Route::CloudHttps, rule: Rule::Spill, reason: "estimated wait 40 s (0 tokens queued ahead + ~200 expected for this one at 5.0 t/s measured) exceeds the deadline of 30 s", ..BASE },
        Row { name: "auto wait a little past the deadline spills", rate: Some(5.0), queued_tokens: 1305, want: Route::CloudHttps, rule: Rule::Spill, reason: "estimated wait 301 s (1,305 tokens queued ahead + ~200 expected for this one at 5.0 t/s measured) exceeds the deadline of 300 s", ..BASE },
        // --- auto: preference order and health.
        Row { name: "auto https down uses mqtt", temps: WARM, https: DOWN, want: Route::CloudMqtt, rule: Rule::Spill, reason: "soc 76.0 °C above soft limit 75 °C (skipped https: circuit open)", ..BASE },
        Row { name: "auto mqtt preferred", temps: HOT, mqtt_first: true, want: Route::CloudMqtt, rule: Rule::Spill, reason: "above hard limit", ..BASE },
        Row { name: "auto mqtt preferred but not configured", temps: HOT, mqtt_first: true, mqtt: H::Off, want: Route::CloudHttps, rule: Rule::Spill, reason: "above hard limit", ..BASE },
        Row { name: "auto only mqtt configured and down", temps: HOT, https: H::Off, mqtt: MQTT_DOWN, want: Route::Queue, rule: Rule::HardWait, reason: "cloud unavailable (mqtt: broker unreachable)", ..BASE },
        // --- auto: the cloud is down, the board does what it can.
        Row { name: "auto soft cloud down runs on fewer threads", temps: WARM, https: DOWN, mqtt: MQTT_DOWN, want: Route::Local, rule: Rule::LocalHot, reason: "soc 76.0 °C above soft limit 75 °C: local on 2 of 4 threads; cloud unavailable (https: circuit open; mqtt: broker unreachable)", ..BASE },
        Row { name: "auto soft no cloud configured", temps: WARM, https: H::Off, mqtt: H::Off, want: Route::Local, rule: Rule::LocalHot, reason: "local on 2 of 4 threads; no cloud route configured", ..BASE },
        Row { name: "auto hard cloud down waits", temps: HOT, https: DOWN, mqtt: MQTT_DOWN, want: Route::Queue, rule: Rule::HardWait, reason: "waiting for local capacity (soc 83.1 °C above hard limit 82 °C); cloud unavailable", ..BASE },
        Row { name: "auto hard cloud down misses deadline", temps: HOT, rate: Some(5.0), deadline_s: Some(90), https: DOWN, mqtt: MQTT_DOWN, want: Route::Reject(C::DeadlineExceeded), rule: Rule::DeadlineUnmet, reason: "soc 83.1 °C above hard limit 82 °C: cool-down ~60 s + estimated wait 40 s (0 tokens queued ahead + ~200 expected for this one at 5.0 t/s measured) exceeds the deadline of 90 s", ..BASE },
        Row { name: "auto hard and memory short waits for heat first", temps: HOT, headroom_mib: Some(50), https: DOWN, mqtt: MQTT_DOWN, want: Route::Queue, rule: Rule::HardWait, reason: "(soc 83.1", ..BASE },
        Row { name: "auto context cloud down", prompt: 8000, max_tokens: 1000, https: H::Down("credits exhausted"), mqtt: H::Off, want: Route::Reject(C::ContextLength), rule: Rule::ContextTooLong, reason: "prompt+max_tokens 9000 exceeds local context 4096; cloud unavailable (https: credits exhausted)", ..BASE },
        Row { name: "auto headroom short cloud down waits", headroom_mib: Some(50), https: DOWN, mqtt: MQTT_DOWN, want: Route::Queue, rule: Rule::MemoryWait, reason: "waiting for local capacity (KV cache 18.75 MiB + margin", ..BASE },
        Row { name: "auto budget short cloud down waits", committed_mib: 1900, prompt: 2800, deadline_s: Some(1000), https: DOWN, mqtt: MQTT_DOWN, want: Route::Queue, rule: Rule::MemoryWait, reason: "exceeds RAM budget left", ..BASE },
        Row { name: "auto never fits cloud down", baseline_mib: 1900, committed_mib: 1900, prompt: 3800, https: DOWN, mqtt: MQTT_DOWN, want: Route::Reject(C::InsufficientMemory), rule: Rule::NeverFits, reason: "KV cache 250.00 MiB for 4000 tokens never fits RAM budget 2.00 GiB (1.86 GiB in use when idle)", ..BASE },
        Row { name: "auto queue full cloud down", queued: 4, https: DOWN, mqtt: MQTT_DOWN, want: Route::Reject(C::Busy), rule: Rule::QueueFull, reason: "local queue full (4 of 4); cloud unavailable", ..BASE },
        Row { name: "auto soft queue full cloud down is busy", temps: WARM, queued: 4, https: DOWN, mqtt: MQTT_DOWN, want: Route::Reject(C::Busy), rule: Rule::QueueFull, reason: "local queue full (4 of 4)", ..BASE },
        Row { name: "auto slow cloud down", rate: Some(5.0), deadline_s: Some(30), https: DOWN, mqtt: MQTT_DOWN, want: Route::Reject(C::DeadlineExceeded), rule: Rule::DeadlineUnmet, reason: "estimated wait 40 s (0 tokens queued ahead + ~200 expected for this one at 5.0 t/s measured) exceeds the deadline of 30 s; cloud unavailable", ..BASE },
        Row { name: "auto expired", deadline_s: Some(0), want: Route::Reject(C::Expired), rule: Rule::Expired, reason: "deadline passed", ..BASE },
        // --- route=local forces the board.
        Row { name: "local normal", route: LocalHint, reason: "route local: fits locally", ..BASE },
        Row { name: "local soft fewer threads", route: LocalHint, temps: WARM, want: Route::Local, rule: Rule::LocalHot, reason: "route local: soc 76.0 °C above soft limit 75 °C: local on 2 of 4 threads", ..BASE },
        Row { name: "local hard waits though cloud is up", route: LocalHint, temps: HOT, want: Route::Queue, rule: Rule::HardWait, reason: "route local: waiting for local capacity (soc 83.1 °C above hard limit 82 °C)", ..BASE },
        Row { name: "local context", route: LocalHint, prompt: 8000, max_tokens: 1000, want: Route::Reject(C::ContextLength), rule: Rule::ContextTooLong, reason: "route local: prompt+max_tokens 9000 exceeds local context 4096", ..BASE },
        Row { name: "local queue full", route: LocalHint, queued: 4, want: Route::Reject(C::Busy), rule: Rule::QueueFull, reason: "route local: local queue full", ..BASE },
        Row { name: "local memory short waits", route: LocalHint, headroom_mib: Some(50), want: Route::Queue, rule: Rule::MemoryWait, reason: "route local: waiting for local capacity (KV cache", ..BASE },
        Row { name: "local slow", route: LocalHint, rate: Some(5.0), deadline_s: Some(30), want: Route::Reject(C::DeadlineExceeded), rule: Rule::DeadlineUnmet, reason: "route local: estimated wait 40 s (0 tokens queued ahead + ~200 expected for this one at 5.0 t/s measured) exceeds the deadline of 30 s", ..BASE },
        Row { name: "local prior only never refused on deadline", route: LocalHint, deadline_s: Some(30), reason: "route local: fits locally (estimated wait 40 s at the assumed rate, deadline 30 s)", ..BASE },
        // --- route=cloud never runs on the board.
        Row { name: "cloud normal", route: Cloud, want: Route::CloudHttps, rule: Rule::CloudForced, reason: "route cloud", ..BASE },
        Row { name: "cloud hot and long still cloud", route: Cloud, temps: HOT, prompt: 8000, max_tokens: 1000, want: Route::CloudHttps, rule: Rule::CloudForced, reason: "route cloud", ..BASE },
        Row { name: "cloud https down uses mqtt", route: Cloud, https: DOWN, want: Route::CloudMqtt, rule: Rule::CloudForced, reason: "route cloud (skipped https: circuit open)", ..BASE },
        Row { name: "cloud all down", route: Cloud, https: DOWN, mqtt: MQTT_DOWN, want: Route::Reject(C::CloudUnavailable), rule: Rule::CloudForcedUnavailable, reason: "route cloud: cloud unavailable (https: circuit open; mqtt: broker unreachable)", ..BASE },
        Row { name: "cloud none configured", route: Cloud, https: H::Off, mqtt: H::Off, want: Route::Reject(C::CloudUnavailable), rule: Rule::CloudForcedUnavailable, reason: "route cloud: no cloud route configured", ..BASE },
        Row { name: "cloud expired", route: Cloud, deadline_s: Some(0), want: Route::Reject(C::Expired), rule: Rule::Expired, reason: "deadline passed", ..BASE },
        // --- privacy local-only never leaves.
        Row { name: "private normal", local_only: true, reason: "privacy local-only: fits locally", ..BASE },
        Row { name: "private soft", local_only: true, temps: WARM, want: Route::Local, rule: Rule::LocalHot, reason: "privacy local-only: soc 76.0 °C above soft limit 75 °C: local on 2 of 4 threads", ..BASE },
        Row { name: "private hard waits", local_only: true, temps: HOT, want: Route::Queue, rule: Rule::HardWait, reason: "privacy local-only: waiting for local capacity (soc 83.1 °C above hard limit 82 °C)", ..BASE },
        Row { name: "private hard misses deadline", local_only: true, temps: HOT, rate: Some(5.0), deadline_s: Some(90), want: Route::Reject(C::DeadlineExceeded), rule: Rule::DeadlineUnmet, reason: "privacy local-only: soc 83.1 °C above hard limit 82 °C: cool-down ~60 s + estimated wait 40 s (0 tokens queued ahead + ~200 expected for this one at 5.0 t/s measured) exceeds the deadline of 90 s", ..BASE },
        Row { name: "private context", local_only: true, prompt: 8000, max_tokens: 1000, want: Route::Reject(C::ContextLength), rule: Rule::ContextTooLong, reason: "privacy local-only: prompt+max_tokens 9000 exceeds local context 4096", ..BASE },
        Row { name: "private never fits", local_only: true, baseline_mib: 1900, committed_mib: 1900, prompt: 3800, want: Route::Reject(C::InsufficientMemory), rule: Rule::NeverFits, reason: "privacy local-only: KV cache 250.00 MiB", ..BASE },
        Row { name: "private memory short waits", local_only: true, headroom_mib: Some(50), want: Route::Queue, rule: Rule::MemoryWait, reason: "privacy local-only: waiting for local capacity (KV cache", ..BASE },
        Row { name: "private queue full", local_only: true, queued: 4, want: Route::Reject(C::Busy), rule: Rule::QueueFull, reason: "privacy local-only: local queue full (4 of 4)", ..BASE },
        Row { name: "private slow", local_only: true, rate: Some(5.0), deadline_s: Some(30), want: Route::Reject(C::DeadlineExceeded), rule: Rule::DeadlineUnmet, reason: "privacy local-only: estimated wait 40 s (0 tokens queued ahead + ~200 expected for this one at 5.0 t/s measured) exceeds the deadline of 30 s", ..BASE },
        Row { name: "private with route local", local_only: true, route: LocalHint, temps: HOT, want: Route::Queue, rule: Rule::HardWait, reason: "privacy local-only: waiting for local capacity", ..BASE },
        Row { name: "private cloud down changes nothing", local_only: true, https: DOWN, mqtt: MQTT_DOWN, reason: "privacy local-only: fits locally", ..BASE },
        Row { name: "private with route cloud", local_only: true, route: Cloud, want: Route::Reject(C::InvalidRequest), rule: Rule::PrivacyConflict, reason: "privacy local-only forbids route cloud", ..BASE },
        Row { name: "private expired", local_only: true, deadline_s: Some(0), want: Route::Reject(C::Expired), rule: Rule::Expired, reason: "deadline passed", ..BASE },
    ];

    fn run(row: &Row) -> Decision {
        let mut cfg = config();
        cfg.budget_baseline = row.baseline_mib * MIB;
        let mut order = [(CloudRoute::Https, row.https), (CloudRoute::Mqtt, row.mqtt)];
        if row.mqtt_first {
            order.reverse();
        }
        cfg.cloud_routes = order
            .iter()
            .filter(|(_, h)| !matches!(h, H::Off))
            .map(|&(r, _)| r)
            .collect();
        let health = |h: H| match h {
            H::Down(why) => RouteHealth::Down(why.into()),
            H::Up | H::Off => RouteHealth::Up,
        };
        let mut policy = Policy::new(cfg).unwrap();
        if let Some(rate) = row.rate {
            policy.observe_rate(rate).unwrap();
        }
        if let Some(tokens) = row.completion {
            policy.observe_completion(tokens);
        }
        let (last, earlier) = row
            .temps
            .split_last()
            .map_or((None, &[][..]), |(l, e)| (*l, e));
        for &t in earlier {
            policy.observe_temperature(t);
        }
        let now = Conditions {
            temperature_c: last,
            mem_headroom: row.headroom_mib.map(|m| m * MIB),
            budget_committed: row.committed_mib * MIB,
            queued_requests: row.queued,
            queued_tokens: row.queued_tokens,
            cloud: CloudHealth {
                https: health(row.https),
                mqtt: health(row.mqtt),
            },
        };
        let req = RequestFacts {
            prompt_tokens: row.prompt,
            max_tokens: row.max_tokens,
            route: row.route,
            privacy: row.local_only.then_some(Privacy::LocalOnly),
            deadline: row.deadline_s.map(Duration::from_secs),
        };
        policy.decide(&now, &req)
    }

    #[test]
    fn decision_table() {
        let mut failures = Vec::new();
        for row in ROWS {
            let d = run(row);
            let threads = if d.thermal == ThermalState::Normal {
                4
            } else {
                2
            };
            if d.route != row.want
                || d.rule != row.rule
                || !d.reason.contains(row.reason)
                || d.local_threads != threads
            {
                failures.push(format!(
                    "{}: got {:?} by rule {} ({:?}) on {} threads, {:?}; want {:?} by {:?}, reason containing {:?}",
                    row.name,
                    d.route,
                    d.rule.number(),
                    d.rule,
                    d.local_threads,
                    d.reason,
                    row.want,
                    row.rule,
                    row.reason
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // Every rule of the table is exercised by some row.
        for rule in [
            Rule::Expired,
            Rule::PrivacyConflict,
            Rule::CloudForced,
            Rule::CloudForcedUnavailable,
            Rule::Spill,
            Rule::ContextTooLong,
            Rule::NeverFits,
            Rule::QueueFull,
            Rule::DeadlineUnmet,
            Rule::HardWait,
            Rule::MemoryWait,
            Rule::LocalHot,
            Rule::Local,
        ] {
            assert!(ROWS.iter().any(|r| r.rule == rule), "no row for {rule:?}");
        }
    }

    #[test]
    fn rule_numbers_match_the_table() {
        assert_eq!(Rule::Expired.number(), 1);
        assert_eq!(Rule::Spill.number(), 5);
        assert_eq!(Rule::HardWait.number(), 10);
        assert_eq!(Rule::Local.number(), 13);
    }

    #[test]
    fn hysteresis_heating_and_cooling() {
        let mut policy = Policy::new(config()).unwrap();
        use ThermalState::{Hard, Normal, Soft};
        let steps = [
            (70.0, Normal, 4, Route::Local),
            (76.0, Soft, 2, Route::CloudHttps),
            (83.0, Hard, 2, Route::CloudHttps),
            (79.0, Hard, 2, Route::CloudHttps),
            (77.0, Soft, 2, Route::CloudHttps),
            (69.0, Normal, 4, Route::Local),
        ];
        for (t, state, threads, route) in steps {
            let now = Conditions {
                temperature_c: Some(t),
                ..Conditions::default()
            };
            let d = policy.decide(&now, &request(Auto, false));
            assert_eq!(
                (d.thermal, d.local_threads, d.route),
                (state, threads, route),
                "at {t} °C: {}",
                d.reason
            );
            assert_eq!(policy.thermal().state(), state);
            assert_eq!(policy.local_threads(), threads);
            assert_eq!(policy.thermal().last_reading_c(), Some(t));
        }
    }

    #[test]
    fn hysteresis_edges() {
        use ThermalState::{Hard, Normal, Soft};
        let check = |readings: &[Option<f32>], want: &[ThermalState]| {
            let mut th = Thermal::new(LIMITS).unwrap();
            let got: Vec<_> = readings.iter().map(|&r| th.update(r)).collect();
            assert_eq!(got, want, "readings {readings:?}");
        };
        // Up exactly at enter thresholds, down only strictly below exit thresholds.
        check(&[Some(75.0), Some(82.0)], &[Soft, Hard]);
        check(&[Some(82.0), Some(78.0), Some(77.9)], &[Hard, Hard, Soft]);
        check(&[Some(76.0), Some(70.0), Some(69.9)], &[Soft, Soft, Normal]);
        // The band between exit and enter keeps whatever state the board came from.
        check(&[Some(72.0), Some(74.9)], &[Normal, Normal]);
        check(&[Some(80.0), Some(81.9)], &[Soft, Soft]);
        // Cooling from hard straight past both exits.
        check(&[Some(90.0), Some(65.0)], &[Hard, Normal]);
        check(&[Some(90.0), Some(72.0)], &[Hard, Soft]);
        // Missing or garbage readings keep the state, whichever it is.
        check(
            &[
                None,
                Some(83.0),
                None,
                Some(f32::NAN),
                Some(f32::INFINITY),
                Some(60.0),
            ],
            &[Normal, Hard, Hard, Hard, Hard, Normal],
        );
        check(&[Some(76.0), Some(f32::NEG_INFINITY)], &[Soft, Soft]);
    }

    #[test]
    fn thermal_reasons() {
        let mut th = Thermal::new(LIMITS).unwrap();
        assert_eq!(th.reason(), None);
        th.update(Some(83.14));
        assert_eq!(
            th.reason().as_deref(),
            Some("soc 83.1 °C above hard limit 82 °C")
        );
        th.update(None);
        assert_eq!(
            th.reason().as_deref(),
            Some("soc 83.1 °C (last reading) above hard limit 82 °C")
        );
        th.update(Some(71.0));
        assert_eq!(
            th.reason().as_deref(),
            Some("soc 71.0 °C not yet below soft exit 70 °C (limit 75 °C)")
        );
        let mut th = Thermal::new(ThermalLimits {
            soft_enter_c: 72.5,
            ..LIMITS
        })
        .unwrap();
        th.update(Some(73.0));
        assert_eq!(
            th.reason().as_deref(),
            Some("soc 73.0 °C above soft limit 72.5 °C")
        );
    }

    #[test]
    fn invalid_limits_are_refused() {
        let bad = [
            ThermalLimits {
                soft_exit_c: 75.0,
                ..LIMITS
            },
            ThermalLimits {
                hard_exit_c: 83.0,
                ..LIMITS
            },
            ThermalLimits {
                soft_enter_c: 85.0,
                ..LIMITS
            },
            ThermalLimits {
                soft_exit_c: 79.0,
                soft_enter_c: 80.0,
                ..LIMITS
            },
            ThermalLimits {
                hard_enter_c: f32::NAN,
                ..LIMITS
            },
            // Leaving Hard at 74 °C would skip the Soft band entered at 75 °C.
            ThermalLimits {
                hard_exit_c: 74.0,
                ..LIMITS
            },
        ];
        for l in bad {
            assert!(
                matches!(Thermal::new(l), Err(PolicyError::InvalidConfig { .. })),
                "{l:?} accepted"
            );
        }
        assert!(LIMITS.validate().is_ok());
    }

    #[test]
    fn invalid_configs_are_refused() {
        type Edit = fn(&mut PolicyConfig);
        let edits: [(&str, Edit); 11] = [
            ("local_context", |c| c.local_context = 0),
            ("kv_bytes_per_token", |c| c.kv_bytes_per_token = 0),
            ("queue_capacity", |c| c.queue_capacity = 0),
            ("default_deadline", |c| c.default_deadline = Duration::ZERO),
            ("threads", |c| c.threads = 0),
            ("hot_threads", |c| c.hot_threads = 5),
            ("cloud_routes", |c| {
                c.cloud_routes = vec![CloudRoute::Mqtt, CloudRoute::Mqtt]
            }),
            ("rate_prior", |c| c.rate_prior = 0.0),
            ("rate_alpha", |c| c.rate_alpha = 1.5),
            ("completion_prior", |c| c.completion_prior = f64::NAN),
            ("completion_alpha", |c| c.completion_alpha = 0.0),
        ];
        for (field, edit) in edits {
            let mut c = config();
            edit(&mut c);
            let err = Policy::new(c).unwrap_err();
            assert!(
                matches!(&err, PolicyError::InvalidConfig { field: f, .. } if *f == field),
                "{field}: {err}"
            );
        }
        assert_eq!(PolicyConfig::half_threads(1), 1);
        assert_eq!(PolicyConfig::half_threads(8), 4);
        assert_eq!(PolicyConfig::half_threads(5), 2);
    }

    #[test]
    fn ewma_prior_first_sample_and_blending() {
        let mut e = Ewma::new(5.0, 0.25).unwrap();
        assert_eq!((e.value(), e.samples()), (5.0, 0));
        // The first measurement replaces the prior.
        assert_eq!(e.observe(10.0), Ok(10.0));
        // Then each one moves the average by alpha of the difference.
        assert_eq!(e.observe(2.0), Ok(8.0));
        assert_eq!(e.observe(8.0), Ok(8.0));
        assert_eq!(e.samples(), 3);
        // Garbage is refused and changes nothing.
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(e.observe(bad), Err(PolicyError::InvalidRate(_))));
        }
        assert_eq!((e.value(), e.samples()), (8.0, 3));
        // A steady rate is converged on.
        for _ in 0..100 {
            e.observe(3.0).unwrap();
        }
        assert!((e.value() - 3.0).abs() < 1e-9, "{}", e.value());
        // alpha = 1 follows the last measurement.
        let mut last = Ewma::new(5.0, 1.0).unwrap();
        last.observe(4.0).unwrap();
        assert_eq!(last.observe(7.0), Ok(7.0));
        assert!(Ewma::new(f64::NAN, 0.5).is_err());
        assert!(Ewma::new(5.0, 0.0).is_err());
    }

    #[test]
    fn measured_rate_drives_the_wait_estimate() {
        let mut policy = Policy::new(config()).unwrap();
        let now = Conditions::default();
        let req = RequestFacts {
            max_tokens: 2000,
            deadline: Some(Duration::from_secs(30)),
            ..request(Auto, false)
        };
        // The 256-token prior at the 5 tokens/s prior: ~51 s, past the deadline, but a
        // guess: it neither spills nor refuses.
        assert!(policy.rate().measured().is_none());
        let d = policy.decide(&now, &req);
        assert_eq!(
            (d.route, d.rate_measured),
            (Route::Local, false),
            "{}",
            d.reason
        );
        assert_eq!(d.local_wait, Duration::from_secs_f64(51.2));
        // Measured at 10 tokens/s with 100-token answers: ~10 s, in time.
        policy.observe_rate(10.0).unwrap();
        assert_eq!(policy.observe_completion(100), 100.0);
        assert_eq!(policy.expected_completion(2000), 100);
        assert_eq!(policy.expected_completion(30), 30, "capped by max_tokens");
        let d = policy.decide(&now, &req);
        assert_eq!(
            (d.route, d.rate_measured),
            (Route::Local, true),
            "{}",
            d.reason
        );
        assert!(
            d.reason.contains("estimated wait 10 s, deadline 30 s"),
            "{}",
            d.reason
        );
        // Work queued ahead counts too.
        let busy = Conditions {
            queued_tokens: 250,
            ..Conditions::default()
        };
        let d = policy.decide(&busy, &req);
        assert_eq!(d.route, Route::CloudHttps);
        assert_eq!(
            d.reason,
            "estimated wait 35 s (250 tokens queued ahead + ~100 expected for this one at \
             10.0 t/s measured) exceeds the deadline of 30 s"
        );
    }

    #[test]
    fn averages_restore_across_restarts() {
        let mut policy = Policy::new(config()).unwrap();
        assert_eq!(policy.completion().measured(), None);
        assert_eq!(policy.restore_rate(7.5), Ok(7.5));
        assert_eq!(policy.rate().measured(), Some(7.5));
        // A restored value is evidence: the next measurement is blended, not a restart.
        assert_eq!(policy.observe_rate(3.5), Ok(6.5));
        assert_eq!(policy.restore_completion(120.0), Ok(120.0));
        assert_eq!(policy.completion().measured(), Some(120.0));
        assert_eq!(policy.observe_completion(40), 100.0);
        assert_eq!(policy.observe_completion(0), 75.25, "0 counts as 1");
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(policy.restore_rate(bad).is_err(), "{bad}");
        }
        assert!(policy.restore_completion(0.5).is_err());
        assert_eq!(policy.rate().value(), 6.5);
        assert_eq!(policy.expected_completion(0), 1);
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1930), "1,930");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }

    #[test]
    fn huge_inputs_saturate_instead_of_overflowing() {
        let mut cfg = config();
        cfg.kv_bytes_per_token = u64::MAX;
        let mut policy = Policy::new(cfg).unwrap();
        let now = Conditions {
            mem_headroom: Some(u64::MAX),
            budget_committed: u64::MAX,
            queued_requests: usize::MAX,
            queued_tokens: u64::MAX,
            ..Conditions::default()
        };
        let req = RequestFacts {
            prompt_tokens: usize::MAX,
            max_tokens: usize::MAX,
            deadline: Some(Duration::MAX),
            ..request(LocalHint, true)
        };
        let d = policy.decide(&now, &req);
        assert_eq!(d.route, Route::Reject(RejectCode::ContextLength));
    }

    #[test]
    fn names_for_replies_and_telemetry() {
        assert_eq!(Route::CloudHttps.as_str(), "cloud-https");
        assert_eq!(Route::CloudMqtt.as_str(), "cloud-mqtt");
        assert_eq!(Route::Queue.as_str(), "queue");
        assert_eq!(Route::Reject(RejectCode::Busy).as_str(), "reject");
        assert_eq!(RejectCode::CloudUnavailable.as_str(), "cloud_unavailable");
        assert_eq!(RejectCode::DeadlineExceeded.as_str(), "deadline_exceeded");
        assert_eq!(ThermalState::Soft.as_str(), "soft");
        assert!(Route::CloudMqtt.is_cloud() && !Route::Queue.is_cloud());
    }

    fn temperature() -> impl Strategy<Value = Option<f32>> {
        prop_oneof![
            3 => (40.0f32..95.0).prop_map(Some),
            1 => any::<f32>().prop_map(Some),
            1 => Just(None),
        ]
    }

    fn health() -> impl Strategy<Value = RouteHealth> {
        prop_oneof![
            Just(RouteHealth::Up),
            Just(RouteHealth::Down("circuit open".into())),
        ]
    }

    fn conditions() -> impl Strategy<Value = Conditions> {
        (
            temperature(),
            prop::option::of(prop_oneof![0..4096 * MIB, any::<u64>()]),
            prop_oneof![0..4096 * MIB, any::<u64>()],
            0usize..12,
            prop_oneof![0u64..20_000, any::<u64>()],
            health(),
            health(),
        )
            .prop_map(
                |(t, headroom, committed, queued, queued_tokens, https, mqtt)| Conditions {
                    temperature_c: t,
                    mem_headroom: headroom,
                    budget_committed: committed,
                    queued_requests: queued,
                    queued_tokens,
                    cloud: CloudHealth { https, mqtt },
                },
            )
    }

    fn requests() -> impl Strategy<Value = RequestFacts> {
        (
            prop_oneof![0usize..10_000, any::<usize>()],
            prop_oneof![1usize..5_000, any::<usize>()],
            prop_oneof![Just(Auto), Just(LocalHint), Just(Cloud)],
            any::<bool>(),
            prop::option::of(prop_oneof![0u64..1_000_000, any::<u64>()]),
        )
            .prop_map(
                |(prompt, max, route, local_only, deadline_ms)| RequestFacts {
                    prompt_tokens: prompt,
                    max_tokens: max,
                    route,
                    privacy: local_only.then_some(Privacy::LocalOnly),
                    deadline: deadline_ms.map(Duration::from_millis),
                },
            )
    }

    fn configs() -> impl Strategy<Value = PolicyConfig> {
        (
            1usize..16,
            1usize..16,
            1usize..8,
            prop::option::of(1024 * MIB..8192 * MIB),
            0..2048 * MIB,
            1u64..(1 << 20),
            1usize..40_000,
            prop_oneof![
                Just(vec![]),
                Just(vec![CloudRoute::Https]),
                Just(vec![CloudRoute::Mqtt]),
                Just(vec![CloudRoute::Https, CloudRoute::Mqtt]),
                Just(vec![CloudRoute::Mqtt, CloudRoute::Https]),
            ],
        )
            .prop_map(
                |(threads, hot, cap, budget, baseline, kv, context, routes)| PolicyConfig {
                    threads,
                    hot_threads: hot.min(threads),
                    queue_capacity: cap,
                    ram_budget: budget,
                    budget_baseline: baseline,
                    kv_bytes_per_token: kv,
                    local_context: context,
                    cloud_routes: routes,
                    ..config()
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Over arbitrary configurations, rates and sequences of conditions and requests:
        /// local-only never leaves the device, `route: cloud` never runs (or waits) on the
        /// board, nothing new starts locally while Hard, and every decision says why.
        #[test]
        fn privacy_and_route_invariants(
            cfg in configs(),
            rates in prop::collection::vec(prop_oneof![0.1f64..50.0, any::<f64>()], 0..4),
            steps in prop::collection::vec((conditions(), requests()), 1..12),
        ) {
            let threads = cfg.threads;
            let hot = cfg.hot_threads;
            let mut policy = Policy::new(cfg).unwrap();
            for r in rates {
                let _ = policy.observe_rate(r);
            }
            for (now, req) in &steps {
                let d = policy.decide(now, req);
                if req.privacy == Some(Privacy::LocalOnly) {
                    prop_assert!(!d.route.is_cloud(), "local-only forwarded: {:?}", d);
                    prop_assert_ne!(d.route, Route::Reject(RejectCode::CloudUnavailable));
                }
                if req.route == RouteHint::Cloud {
                    prop_assert_ne!(d.route, Route::Local, "{:?}", d);
                    prop_assert_ne!(d.route, Route::Queue, "{:?}", d);
                }
                if d.route == Route::Local {
                    prop_assert_ne!(d.thermal, ThermalState::Hard, "{:?}", d);
                }
                prop_assert!(!d.reason.is_empty());
                let want_threads = if d.thermal == ThermalState::Normal { threads } else { hot };
                prop_assert_eq!(d.local_threads, want_threads);
                prop_assert_eq!(d.thermal, policy.thermal().state());
            }
        }
    }
}
