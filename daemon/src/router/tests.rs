//! The routing policy's tests: the decision table row by row, the thermal hysteresis, the
//! estimates, and property tests of the invariants no input may break (local-only never
//! leaves the device, `route: cloud` never runs on the board).

use std::time::Duration;

use super::rules::thousands;
use super::*;
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

const LIMITS: ThermalLimits = ThermalLimits {
    soft_enter_c: 75.0,
    soft_exit_c: 70.0,
    hard_enter_c: 82.0,
    hard_exit_c: 78.0,
};

/// A Pi 5-like board: 4 threads (2 when hot), 64 KiB of KV per token, 5 tokens/s until
/// measured.
fn config() -> PolicyConfig {
    PolicyConfig {
        thermal: LIMITS,
        local_context: 4096,
        kv_bytes_per_token: 64 << 10,
        memory_margin: 64 * MIB,
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
fn spills_name_their_cause() {
    let label = |name: &str| {
        let row = ROWS.iter().find(|r| r.name == name).expect(name);
        run(row).spill_label()
    };
    for (row, want) in [
        ("auto hard spills", Some("thermal_hard")),
        ("auto hard band hysteresis", Some("thermal_hard")),
        ("auto soft spills", Some("thermal_soft")),
        ("auto soft band hysteresis", Some("thermal_soft")),
        ("auto context spills", Some("context_too_long")),
        // The first cause in the documented order, as in the reason.
        (
            "auto context is the first cause even when hot",
            Some("context_too_long"),
        ),
        ("auto headroom short spills", Some("memory_short")),
        ("auto queue full spills", Some("queue_full")),
        ("auto slow spills", Some("deadline_unmet")),
        ("auto https down uses mqtt", Some("thermal_soft")),
        ("cloud normal", Some("route_cloud")),
        ("cloud https down uses mqtt", Some("route_cloud")),
        // Not a spill: no label, and no cause.
        ("auto soft cloud down runs on fewer threads", None),
        ("auto hard cloud down waits", None),
        ("cloud all down", None),
        ("private soft", None),
    ] {
        assert_eq!(label(row), want, "{row}");
    }
    for row in ROWS {
        let d = run(row);
        assert_eq!(
            d.spill_cause.is_some(),
            d.rule == Rule::Spill,
            "{}",
            row.name
        );
    }
}

#[test]
fn rule_numbers_match_the_table() {
    assert_eq!(Rule::Expired.number(), 1);
    assert_eq!(Rule::Spill.number(), 5);
    assert_eq!(Rule::HardWait.number(), 9);
    assert_eq!(Rule::Local.number(), 12);
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
    let r = Ewma::new(f64::NAN, 0.5);
    assert!(
        matches!(
            r,
            Err(PolicyError::InvalidConfig {
                field: "rate_prior",
                ..
            })
        ),
        "{r:?}"
    );
    let r = Ewma::new(5.0, 0.0);
    assert!(
        matches!(
            r,
            Err(PolicyError::InvalidConfig {
                field: "rate_alpha",
                ..
            })
        ),
        "{r:?}"
    );
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
        let r = policy.restore_rate(bad);
        assert!(
            matches!(r, Err(PolicyError::InvalidRate(v)) if v.to_bits() == bad.to_bits()),
            "{bad}: {r:?}"
        );
    }
    let r = policy.restore_completion(0.5);
    assert!(
        matches!(r, Err(PolicyError::InvalidCompletion(v)) if v == 0.5),
        "{r:?}"
    );
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
        0usize..12,
        prop_oneof![0u64..20_000, any::<u64>()],
        health(),
        health(),
    )
        .prop_map(
            |(t, headroom, queued, queued_tokens, https, mqtt)| Conditions {
                temperature_c: t,
                mem_headroom: headroom,
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
        .prop_map(|(threads, hot, cap, kv, context, routes)| PolicyConfig {
            threads,
            hot_threads: hot.min(threads),
            queue_capacity: cap,
            kv_bytes_per_token: kv,
            local_context: context,
            cloud_routes: routes,
            ..config()
        })
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
