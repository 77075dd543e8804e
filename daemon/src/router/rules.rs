//! The decision table: the findings [`Policy::decide`](super::Policy::decide) gathers about
//! a request, and the ordered rules that turn them into a [`Decision`].
//!
//! [`Policy::decide`](super::Policy::decide) first gathers findings (numbers and their explanations), then walks
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
//! | 7  | `QueueFull`              | the local queue is full                                                          | reject                                | `busy`                |
//! | 8  | `DeadlineUnmet`          | the *measured* local wait (+ the cool-down estimate when `Hard`) exceeds the deadline | reject                           | `deadline_exceeded`   |
//! | 9  | `HardWait`               | thermal state `Hard`                                                             | queue                                 | —                     |
//! | 10 | `MemoryWait`             | the KV cache does not fit the memory headroom − margin now                       | queue                                 | —                     |
//! | 11 | `LocalHot`               | thermal state `Soft`                                                             | local on `hot_threads`                | —                     |
//! | 12 | `Local`                  | otherwise                                                                        | local on `threads`                    | —                     |
//!
//! The *spill causes* of rule 5 are the conditions of rules 6 to 11, and the first that
//! holds, in this order, becomes the reason: context too long,
//! thermal `Hard`, thermal `Soft`, memory short now, queue full, wait beyond the deadline
//! ([`Decision::spill_cause`] names it, for counters: [`SpillCause`]).
//! So by route hint:
//!
//! - `auto`: rule 1; then the cloud whenever the board is not `Normal` or the request does
//!   not fit locally (rule 5); when every cloud route is down or none is configured, rules
//!   6–12 apply as for `local` and the reason says why the cloud was not used (for example
//!   `Soft` then runs locally on fewer threads, `Hard` waits).
//! - `local`: rules 1, 6–12. It forces the board: it waits or is refused, never forwarded.
//! - `cloud`: rules 1, 3, 4. An explicit `cloud` never runs locally: the client asked for
//!   the cloud (a bigger model, a latency budget the board cannot meet), so with no cloud
//!   route up it is refused `cloud_unavailable` rather than silently answered by the
//!   board, and not queued either since local capacity cannot serve it.
//! - `privacy: local-only` is **never forwarded**: with `auto` or `local` it follows rules
//!   1, 6–12 (it waits for local capacity, or is refused when it can never fit the context
//!   or cannot meet its deadline); with `route: cloud` it is contradictory and refused (rule 2).
//!
//! Memory: the request's KV cache needs `(prompt + max_tokens) × kv_bytes_per_token`; it
//! must fit within the system's memory headroom less a safety margin (the headroom is
//! measured, so noisy). There is no rule about the RAM budget: the engine allocates every
//! KV slot at load, and loading refuses a memory plan over the budget, so a request that
//! fits the context (rule 6) always fits the budget.

use std::time::Duration;

use super::inputs::{CloudRoute, RouteHint};
use super::thermal::ThermalState;

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

impl CloudRoute {
    /// The decision that sends a request this way.
    pub fn route(self) -> Route {
        match self {
            CloudRoute::Https => Route::CloudHttps,
            CloudRoute::Mqtt => Route::CloudMqtt,
        }
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

/// Which *spill cause* of rule 5 held first (module documentation): the stable name of a
/// spill's reason, for counters, where [`Decision::reason`] is prose with numbers in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpillCause {
    /// Prompt + `max_tokens` exceed the local context.
    ContextTooLong,
    /// Thermal state `Hard`.
    ThermalHard,
    /// Thermal state `Soft`.
    ThermalSoft,
    /// The KV cache does not fit the memory headroom less the margin.
    MemoryShort,
    /// The local queue is full.
    QueueFull,
    /// The measured local wait exceeds the deadline.
    DeadlineUnmet,
}

impl SpillCause {
    /// `context_too_long`, `thermal_hard`, `thermal_soft`, `memory_short`, `queue_full`,
    /// `deadline_unmet`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpillCause::ContextTooLong => "context_too_long",
            SpillCause::ThermalHard => "thermal_hard",
            SpillCause::ThermalSoft => "thermal_soft",
            SpillCause::MemoryShort => "memory_short",
            SpillCause::QueueFull => "queue_full",
            SpillCause::DeadlineUnmet => "deadline_unmet",
        }
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
    /// For rule 5 (`Spill`), the cause that made it spill; `None` for every other rule.
    pub spill_cause: Option<SpillCause>,
    /// The thermal state after this decision's reading.
    pub thermal: ThermalState,
    /// Threads local generation should use now (meaningful for `Local`; also what running
    /// work should drop to, see [`Policy::local_threads`](crate::router::Policy::local_threads)).
    pub local_threads: usize,
    /// The estimated local queue wait: the work ahead plus this request's expected
    /// generation, at the rate estimate (in `Hard` the deadline check adds
    /// [`PolicyConfig::hard_cooldown`](crate::router::PolicyConfig::hard_cooldown) to it).
    pub local_wait: Duration,
    /// Whether `local_wait` rests on a measured rate (only then may it refuse or spill).
    pub rate_measured: bool,
}

impl Decision {
    /// Why the request goes to a cloud route, as a short stable label: `route_cloud` (rule
    /// 3: the client asked), or the [`SpillCause`] of rule 5; `None` when it stays here or
    /// is refused.
    pub fn spill_label(&self) -> Option<&'static str> {
        match self.rule {
            Rule::CloudForced => Some("route_cloud"),
            Rule::Spill => Some(self.spill_cause.map_or("spill", SpillCause::as_str)),
            _ => None,
        }
    }
}

/// The outcome of looking for a cloud route that is up.
pub(super) enum CloudPick {
    /// This route; `note` names preferred routes skipped because they were down.
    Up { route: CloudRoute, note: String },
    /// None is; why (which are down, or that none is configured).
    Down(String),
}

/// Everything [`Policy::decide`](crate::router::Policy::decide) found out before walking the rules: each blocker is
/// `Some(explanation)` when it holds.
pub(super) struct Findings {
    pub(super) hint: RouteHint,
    pub(super) local_only: bool,
    pub(super) thermal: ThermalState,
    pub(super) thermal_reason: Option<String>,
    pub(super) deadline: Duration,
    pub(super) context_too_long: Option<String>,
    pub(super) memory_short: Option<String>,
    pub(super) queue_full: Option<String>,
    pub(super) wait_s: f64,
    pub(super) rate_measured: bool,
    pub(super) too_slow: Option<String>,
    pub(super) cloud: CloudPick,
}

impl Findings {
    /// The first reason the board should not take an `auto` request, in the order of the
    /// module documentation.
    fn spill_cause(&self) -> Option<&str> {
        self.spill_causes()
            .into_iter()
            .find_map(|(_, why)| why.as_deref())
    }

    /// The kind of [`Findings::spill_cause`].
    pub(super) fn spill_cause_kind(&self) -> Option<SpillCause> {
        self.spill_causes()
            .into_iter()
            .find_map(|(kind, why)| why.as_ref().map(|_| kind))
    }

    /// The spill causes in order, each with its explanation when it holds.
    fn spill_causes(&self) -> [(SpillCause, &Option<String>); 5] {
        let thermal = if self.thermal == ThermalState::Hard {
            SpillCause::ThermalHard
        } else {
            SpillCause::ThermalSoft
        };
        [
            (SpillCause::ContextTooLong, &self.context_too_long),
            (thermal, &self.thermal_reason),
            (SpillCause::MemoryShort, &self.memory_short),
            (SpillCause::QueueFull, &self.queue_full),
            (SpillCause::DeadlineUnmet, &self.too_slow),
        ]
    }
}

/// The decision table, in order: the first rule that applies decides. Returns the route,
/// the rule and the reason.
pub(super) fn walk(
    f: &Findings,
    local_threads: usize,
    all_threads: usize,
) -> (Route, Rule, String) {
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

    // 6. Cannot ever run here.
    if let Some(why) = &f.context_too_long {
        return reject(C::ContextLength, Rule::ContextTooLong, say(why));
    }
    // 7. No room to wait.
    if let Some(why) = &f.queue_full {
        return reject(C::Busy, Rule::QueueFull, say(why));
    }
    // 8. Waiting would miss the deadline anyway.
    if let Some(why) = &f.too_slow {
        return reject(C::DeadlineExceeded, Rule::DeadlineUnmet, say(why));
    }
    // 9. Too hot to start anything: wait for the SoC to cool below the hard exit.
    if let Some(why) = f
        .thermal_reason
        .as_deref()
        .filter(|_| f.thermal == ThermalState::Hard)
    {
        return (Route::Queue, Rule::HardWait, waiting(why));
    }
    // 10. Memory frees as the work ahead finishes.
    if let Some(why) = &f.memory_short {
        return (Route::Queue, Rule::MemoryWait, waiting(why));
    }
    // 11. Warm: run, on fewer threads.
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
    // 12. Everything fits.
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

/// `1,930`: token counts in reasons are read by people.
pub(super) fn thousands(n: u64) -> String {
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
pub(super) fn seconds(s: f64) -> String {
    if s >= 9.95 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}
