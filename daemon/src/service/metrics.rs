//! Prometheus metrics: the daemon's counters, gauges and latency histograms in the
//! OpenMetrics text format, for an HTTP front end to serve at `GET /metrics`
//! ([`Metrics::encode`], [`CONTENT_TYPE`]). Built on the Prometheus project's own client
//! (`prometheus-client`).
//!
//! Nothing is counted twice: the request, token, replay and duplicate counters are
//! [`Stats`]'s (what MQTT telemetry reports), the spill counter is the routing's
//! ([`Routing::spill_decisions`]), both read at scrape time by a collector; the latency
//! histograms live in [`Stats`] too ([`Latency`], fed by [`Stats::observe_answer`] where a
//! request is answered: the engine thread for local work, the spill task for the cloud).
//! Gauges (queue, temperature, thermal state, memory, cloud health) are read at scrape
//! time from [`Stats`] and a [`Source`] (the [`Routing`] in the daemon).
//!
//! Every name has the `spillway_` prefix:
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `spillway_requests_total` | counter | `route` (`local`, `cloud-https`, `cloud-mqtt`, `none`), `outcome` (`ok`, an error code, `no_reply_address`) | finished requests; `none`: served nowhere (refused) |
//! | `spillway_spills_total` | counter | `reason` (`route_cloud`, `context_too_long`, `thermal_hard`, `thermal_soft`, `memory_short`, `queue_full`, `deadline_unmet`) | routing decisions that sent a request to a cloud route, by the decision table's rule and spill cause (counted at the decision) |
//! | `spillway_tokens_generated_total` | counter | | completion tokens the local engine generated |
//! | `spillway_replayed_total`, `spillway_duplicates_total` | counter | | resends answered from the journal; duplicate deliveries attached to their request |
//! | `spillway_generation_tokens_per_second` | gauge | | the measured local generation rate (absent until measured) |
//! | `spillway_time_to_first_token_seconds` | histogram | `route` | arrival to first token, answered requests |
//! | `spillway_request_duration_seconds` | histogram | `route` | arrival to final, answered requests |
//! | `spillway_queue_depth`, `spillway_running` | gauge | | requests waiting for a session slot; running on the engine (up to `engine.sessions`) |
//! | `spillway_soc_temperature_celsius` | gauge | | SoC temperature (absent when unknown) |
//! | `spillway_thermal_state` | gauge | `state` (`normal`, `soft`, `hard`) | 1 for the routing's current thermal state, 0 for the others |
//! | `spillway_memory_available_bytes` | gauge | | `MemAvailable` (absent when unknown) |
//! | `spillway_resident_memory_bytes` | gauge | | the daemon's RSS (absent when unknown) |
//! | `spillway_cloud_endpoint_state` | gauge | `endpoint`, `model`, `state` (`up`, `cooling_down`, `circuit_open`) | per HTTPS endpoint, 1 for its state (only with the `https` route) |
//! | `spillway_cloud_broker_up` | gauge | | 1 when connected to the cloud broker (only with the `mqtt` route) |
//!
//! Latency buckets (seconds): 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120: a first
//! token on a Pi takes from a fraction of a second (short prompt, idle) to tens of seconds
//! (a long prompt, a queue); an answer up to minutes.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;

use super::route::Routing;
use super::stats::Stats;
pub use super::stats::{LATENCY_BUCKETS, Latency};
use crate::cloud::EndpointState;
use crate::router::ThermalState;

/// The `Content-Type` of [`Metrics::encode`]'s text (OpenMetrics 1.0, which Prometheus
/// scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const THERMAL_STATES: [ThermalState; 3] =
    [ThermalState::Normal, ThermalState::Soft, ThermalState::Hard];

/// The board's and the routing's state at one scrape (see [`Source`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// The measured local generation rate, `None` while only the prior is known.
    pub generation_tokens_per_s: Option<f64>,
    /// The SoC temperature, `None` when unknown.
    pub temperature_c: Option<f32>,
    /// The routing's thermal state (with hysteresis).
    pub thermal_state: ThermalState,
    /// `MemAvailable`, in bytes.
    pub memory_available_bytes: Option<u64>,
    /// The daemon's resident set size, in bytes.
    pub resident_bytes: Option<u64>,
    /// Cloud routing decisions so far, by [`crate::router::Decision::spill_label`].
    pub spills: Vec<(&'static str, u64)>,
    /// Each HTTPS endpoint (base URL, model) and its state; empty without the `https`
    /// route.
    pub cloud_endpoints: Vec<(String, String, EndpointState)>,
    /// Whether the cloud broker is connected; `None` without the `mqtt` route.
    pub cloud_broker_up: Option<bool>,
}

/// Where the gauges that are not [`Stats`]'s come from at scrape time: the [`Routing`]
/// (monitor snapshot, policy, cloud health) in the daemon, a fixed [`Sample`] in tests.
pub trait Source: Send + Sync + 'static {
    fn sample(&self) -> Sample;
}

impl Source for Routing {
    fn sample(&self) -> Sample {
        let snap = self.snapshot();
        Sample {
            generation_tokens_per_s: self.generation_rate(),
            temperature_c: snap.temperature_c,
            thermal_state: self.thermal_state(),
            memory_available_bytes: snap.mem_available,
            resident_bytes: crate::engine::resident_bytes(),
            spills: self.spill_decisions(),
            cloud_endpoints: self.cloud().map_or_else(Vec::new, |c| {
                c.endpoint_status()
                    .into_iter()
                    .map(|s| (s.endpoint.base_url, s.endpoint.model, s.state))
                    .collect()
            }),
            cloud_broker_up: self.upstream().map(|u| u.availability().is_ok()),
        }
    }
}

/// The daemon's metrics registry; see the module documentation.
pub struct Metrics {
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The registry over the daemon's `stats` and `source` (its [`Routing`]): build it
    /// once, at start, and share it (`Arc<Metrics>`).
    pub fn new(stats: Arc<Stats>, source: Arc<dyn Source>) -> Metrics {
        let mut registry = Registry::with_prefix("spillway");
        let latency = stats.latency();
        registry.register_with_unit(
            "time_to_first_token",
            "Time from a request's arrival to the first token of its answer, answered requests",
            Unit::Seconds,
            latency.first_token().clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its final reply, answered requests",
            Unit::Seconds,
            latency.duration().clone(),
        );
        registry.register_collector(Box::new(Live { stats, source }));
        Metrics { registry }
    }

    /// The whole exposition in the OpenMetrics text format (ending `# EOF`), gauges read
    /// now; serve it with [`CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        // Writing to a String cannot fail; the encoder's own errors are formatting ones.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("metrics: encoding failed: {e}");
        }
        out
    }
}

/// What is read at scrape time.
#[derive(Debug)]
struct Live {
    stats: Arc<Stats>,
    source: Arc<dyn Source>,
}

impl std::fmt::Debug for dyn Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Source")
    }
}

/// A metric's name, help and unit.
struct Desc {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
}

const fn desc(name: &'static str, help: &'static str) -> Desc {
    Desc {
        name,
        help,
        unit: None,
    }
}

/// One unlabelled value.
fn single(
    encoder: &mut DescriptorEncoder<'_>,
    d: &Desc,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let m = encoder.encode_descriptor(d.name, d.help, d.unit.as_ref(), metric.metric_type())?;
    metric.encode(m)
}

/// A family of values, one per label set (possibly none: then only the descriptor).
fn family<'l, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    d: &Desc,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'static str, &'l str)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(d.name, d.help, d.unit.as_ref(), metric_type)?;
    for (labels, value) in samples {
        value.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A 0/1 gauge for each of `states`, 1 for `current`.
fn one_hot(current: bool) -> ConstGauge<i64> {
    ConstGauge::new(i64::from(current))
}

impl Collector for Live {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering;
        let stats = &self.stats;
        let sample = self.source.sample();

        family(
            &mut e,
            &desc(
                "requests",
                "Finished requests by route (none: served nowhere) and outcome (ok or the \
                 error code)",
            ),
            MetricType::Counter,
            stats
                .request_counts()
                .into_iter()
                .map(|(route, outcome, n)| {
                    (
                        vec![("route", route), ("outcome", outcome)],
                        ConstCounter::new(n),
                    )
                }),
        )?;
        family(
            &mut e,
            &desc(
                "spills",
                "Routing decisions that sent a request to a cloud route, by reason (route_cloud: \
                 the client asked; else the spill cause); counted at the decision",
            ),
            MetricType::Counter,
            sample
                .spills
                .iter()
                .map(|&(reason, n)| (vec![("reason", reason)], ConstCounter::new(n))),
        )?;
        single(
            &mut e,
            &desc(
                "tokens_generated",
                "Completion tokens the local engine generated",
            ),
            &ConstCounter::new(stats.tokens_generated()),
        )?;
        single(
            &mut e,
            &desc(
                "replayed",
                "Resent requests answered with their recorded final",
            ),
            &ConstCounter::new(stats.replays()),
        )?;
        single(
            &mut e,
            &desc(
                "duplicates",
                "Duplicate deliveries attached to their request in flight",
            ),
            &ConstCounter::new(stats.duplicates()),
        )?;
        if let Some(rate) = sample.generation_tokens_per_s {
            single(
                &mut e,
                &desc(
                    "generation_tokens_per_second",
                    "Measured local generation rate (tokens/s, moving average)",
                ),
                &ConstGauge::new(rate),
            )?;
        }
        single(
            &mut e,
            &desc("queue_depth", "Requests waiting for the engine"),
            &ConstGauge::new(i64::try_from(stats.queued.load(Ordering::Relaxed)).unwrap_or(0)),
        )?;
        single(
            &mut e,
            &desc(
                "running",
                "Requests the engine is running (up to its session slots)",
            ),
            &ConstGauge::new(i64::try_from(stats.running.load(Ordering::Relaxed)).unwrap_or(0)),
        )?;
        if let Some(t) = sample.temperature_c.filter(|t| t.is_finite()) {
            single(
                &mut e,
                &Desc {
                    name: "soc_temperature",
                    help: "SoC temperature",
                    unit: Some(Unit::Celsius),
                },
                &ConstGauge::new(f64::from(t)),
            )?;
        }
        family(
            &mut e,
            &desc(
                "thermal_state",
                "The routing's thermal state: 1 for the current one (normal, soft: spill and \
                 fewer threads, hard: nothing new starts locally), 0 for the others",
            ),
            MetricType::Gauge,
            THERMAL_STATES.map(|s| {
                (
                    vec![("state", s.as_str())],
                    one_hot(s == sample.thermal_state),
                )
            }),
        )?;
        if let Some(b) = sample.memory_available_bytes {
            single(
                &mut e,
                &Desc {
                    name: "memory_available",
                    help: "MemAvailable of the system",
                    unit: Some(Unit::Bytes),
                },
                &ConstGauge::new(i64::try_from(b).unwrap_or(i64::MAX)),
            )?;
        }
        if let Some(b) = sample.resident_bytes {
            single(
                &mut e,
                &Desc {
                    name: "resident_memory",
                    help: "Resident set size of the daemon",
                    unit: Some(Unit::Bytes),
                },
                &ConstGauge::new(i64::try_from(b).unwrap_or(i64::MAX)),
            )?;
        }
        if !sample.cloud_endpoints.is_empty() {
            family(
                &mut e,
                &desc(
                    "cloud_endpoint_state",
                    "Each HTTPS cloud endpoint: 1 for its state (up, cooling_down: failed too \
                     often, circuit_open: token refused or credits exhausted at its base URL)",
                ),
                MetricType::Gauge,
                sample
                    .cloud_endpoints
                    .iter()
                    .flat_map(|(endpoint, model, current)| {
                        EndpointState::ALL.into_iter().map(move |s| {
                            (
                                vec![
                                    ("endpoint", endpoint.as_str()),
                                    ("model", model.as_str()),
                                    ("state", s.as_str()),
                                ],
                                one_hot(s == *current),
                            )
                        })
                    }),
            )?;
        }
        if let Some(up) = sample.cloud_broker_up {
            single(
                &mut e,
                &desc(
                    "cloud_broker_up",
                    "1 when connected to the cloud broker (the mqtt cloud route)",
                ),
                &one_hot(up),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::schema::{ErrorCode, ServedRoute};
    use crate::service::stats::Outcome;
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    /// A settable [`Source`].
    #[derive(Default)]
    struct Fixed(Mutex<Sample>);

    impl Source for Fixed {
        fn sample(&self) -> Sample {
            self.0.lock().unwrap().clone()
        }
    }

    /// One parsed exposition: `# TYPE` per family, `# UNIT` per family, and every sample
    /// line as (name, labels, value).
    #[derive(Debug, Default)]
    struct Parsed {
        types: BTreeMap<String, String>,
        units: BTreeMap<String, String>,
        helps: BTreeMap<String, String>,
        samples: Vec<(String, BTreeMap<String, String>, f64)>,
        eof: bool,
    }

    /// Parses the OpenMetrics text strictly enough to catch a malformed line: every line
    /// is a `# HELP/TYPE/UNIT`, `# EOF` (last), or `name{k="v",...} value`.
    fn parse(text: &str) -> Parsed {
        let mut p = Parsed::default();
        for line in text.lines() {
            assert!(!p.eof, "a line after # EOF: {line:?}");
            if line == "# EOF" {
                p.eof = true;
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let (kind, rest) = rest.split_once(' ').expect(line);
                let (name, value) = rest.split_once(' ').expect(line);
                let map = match kind {
                    "TYPE" => &mut p.types,
                    "UNIT" => &mut p.units,
                    "HELP" => &mut p.helps,
                    _ => panic!("unknown comment {line:?}"),
                };
                assert!(
                    map.insert(name.to_string(), value.to_string()).is_none(),
                    "{kind} twice for {name}"
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect(line);
                    let labels = body
                        .split(',')
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect(line);
                            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                            (k.to_string(), v.expect(line).to_string())
                        })
                        .collect();
                    (name, labels)
                }
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name {name:?}"
            );
            p.samples.push((name.to_string(), labels, value));
        }
        assert!(p.eof, "no # EOF");
        p
    }

    impl Parsed {
        /// The value of the one sample named `name` whose labels include `labels`.
        fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let found: Vec<f64> = self
                .samples
                .iter()
                .filter(|(n, l, _)| {
                    n == name
                        && labels
                            .iter()
                            .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
                })
                .map(|s| s.2)
                .collect();
            assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
            found.first().copied()
        }

        fn has_family(&self, name: &str) -> bool {
            self.types.contains_key(name)
        }
    }

    fn metrics() -> (Arc<Stats>, Arc<Fixed>, Metrics) {
        let stats = Arc::new(Stats::default());
        let source = Arc::new(Fixed::default());
        let m = Metrics::new(Arc::clone(&stats), source.clone());
        (stats, source, m)
    }

    #[test]
    fn counters_come_from_stats_with_their_labels() {
        let (stats, _, m) = metrics();
        let before = parse(&m.encode());
        assert_eq!(before.types["spillway_requests"], "counter");
        assert_eq!(before.value("spillway_requests_total", &[]), None);
        assert_eq!(
            before.value("spillway_tokens_generated_total", &[]),
            Some(0.0)
        );

        stats.count(Some(ServedRoute::Local), Outcome::Ok);
        stats.count(Some(ServedRoute::Local), Outcome::Ok);
        stats.count(
            Some(ServedRoute::CloudHttps),
            Outcome::Failed(ErrorCode::Timeout),
        );
        stats.count(None, Outcome::Failed(ErrorCode::Busy));
        stats.generated(7);
        stats.generated(5);
        stats.replay();
        stats.duplicate();
        stats.duplicate();
        let p = parse(&m.encode());
        let req = |route, outcome| {
            p.value(
                "spillway_requests_total",
                &[("route", route), ("outcome", outcome)],
            )
        };
        assert_eq!(req("local", "ok"), Some(2.0));
        assert_eq!(req("cloud-https", "timeout"), Some(1.0));
        assert_eq!(req("none", "busy"), Some(1.0));
        assert_eq!(req("cloud-mqtt", "ok"), None);
        assert_eq!(
            p.samples
                .iter()
                .filter(|s| s.0 == "spillway_requests_total")
                .count(),
            3
        );
        assert_eq!(p.value("spillway_tokens_generated_total", &[]), Some(12.0));
        assert_eq!(p.value("spillway_replayed_total", &[]), Some(1.0));
        assert_eq!(p.value("spillway_duplicates_total", &[]), Some(2.0));
        for c in [
            "spillway_tokens_generated",
            "spillway_replayed",
            "spillway_duplicates",
        ] {
            assert_eq!(p.types[c], "counter", "{c}");
            assert!(!p.helps[c].is_empty(), "{c}");
        }
        // The same numbers as telemetry: one source.
        let j = stats.json(None);
        assert_eq!(j["requests"]["local"]["ok"], 2);
        assert_eq!(j["tokens_generated"], 12);
    }

    #[test]
    fn latency_histograms_by_route() {
        let (stats, _, m) = metrics();
        let p = parse(&m.encode());
        for name in [
            "spillway_time_to_first_token_seconds",
            "spillway_request_duration_seconds",
        ] {
            assert_eq!(p.types[name], "histogram");
            assert_eq!(p.units[name], "seconds");
            // Every route is there from the start, empty.
            for route in ["local", "cloud-https", "cloud-mqtt"] {
                let count = format!("{name}_count");
                assert_eq!(
                    p.value(&count, &[("route", route)]),
                    Some(0.0),
                    "{name} {route}"
                );
            }
        }
        let ms = Duration::from_millis;
        stats.observe_answer(ServedRoute::Local, Some(ms(300)), ms(4_000));
        stats.observe_answer(ServedRoute::Local, Some(ms(700)), ms(150_000));
        stats.observe_answer(ServedRoute::CloudMqtt, None, ms(2_000));
        let p = parse(&m.encode());
        let ttft = "spillway_time_to_first_token_seconds";
        let dur = "spillway_request_duration_seconds";
        let local = ("route", "local");
        assert_eq!(p.value(&format!("{ttft}_count"), &[local]), Some(2.0));
        assert_eq!(p.value(&format!("{ttft}_sum"), &[local]), Some(1.0));
        let bucket = |name: &str, route: &str, le: &str| {
            p.value(&format!("{name}_bucket"), &[("route", route), ("le", le)])
        };
        assert_eq!(bucket(ttft, "local", "0.25"), Some(0.0));
        assert_eq!(bucket(ttft, "local", "0.5"), Some(1.0));
        assert_eq!(bucket(ttft, "local", "1.0"), Some(2.0));
        assert_eq!(bucket(dur, "local", "5.0"), Some(1.0));
        assert_eq!(bucket(dur, "local", "120.0"), Some(1.0));
        assert_eq!(bucket(dur, "local", "+Inf"), Some(2.0));
        assert_eq!(bucket(dur, "local", "0.05"), Some(0.0));
        // No first token seen: the duration only.
        assert_eq!(
            p.value(&format!("{ttft}_count"), &[("route", "cloud-mqtt")]),
            Some(0.0)
        );
        assert_eq!(
            p.value(&format!("{dur}_count"), &[("route", "cloud-mqtt")]),
            Some(1.0)
        );
        assert_eq!(bucket(dur, "cloud-mqtt", "2.5"), Some(1.0));
        // Exactly the documented buckets, and +Inf.
        let les: Vec<&str> = p
            .samples
            .iter()
            .filter(|s| s.0 == format!("{dur}_bucket") && s.1["route"] == "local")
            .map(|s| s.1["le"].as_str())
            .collect();
        assert_eq!(les.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(les.last(), Some(&"+Inf"));
    }

    #[test]
    fn gauges_are_read_at_scrape_time_and_absent_when_unknown() {
        let (stats, source, m) = metrics();
        let p = parse(&m.encode());
        for absent in [
            "spillway_soc_temperature_celsius",
            "spillway_generation_tokens_per_second",
            "spillway_memory_available_bytes",
            "spillway_resident_memory_bytes",
            "spillway_cloud_endpoint_state",
            "spillway_cloud_broker_up",
        ] {
            assert!(!p.has_family(absent), "{absent} present while unknown");
            assert!(p.samples.iter().all(|s| s.0 != absent), "{absent}");
        }
        assert_eq!(p.value("spillway_queue_depth", &[]), Some(0.0));
        assert_eq!(
            p.value("spillway_thermal_state", &[("state", "normal")]),
            Some(1.0)
        );

        stats.queued.store(3, Ordering::SeqCst);
        stats.running.store(1, Ordering::SeqCst);
        *source.0.lock().unwrap() = Sample {
            generation_tokens_per_s: Some(6.5),
            temperature_c: Some(71.25),
            thermal_state: ThermalState::Soft,
            memory_available_bytes: Some(3 << 30),
            resident_bytes: Some(2_500_000_000),
            spills: vec![("queue_full", 2), ("thermal_soft", 5)],
            cloud_endpoints: vec![
                ("https://r/v1".into(), "m:fastest".into(), EndpointState::Up),
                (
                    "http://lan:8080/v1".into(),
                    "local".into(),
                    EndpointState::CircuitOpen,
                ),
            ],
            cloud_broker_up: Some(false),
        };
        let p = parse(&m.encode());
        assert_eq!(p.value("spillway_queue_depth", &[]), Some(3.0));
        assert_eq!(p.value("spillway_running", &[]), Some(1.0));
        assert_eq!(p.types["spillway_queue_depth"], "gauge");
        assert_eq!(
            p.value("spillway_generation_tokens_per_second", &[]),
            Some(6.5)
        );
        assert_eq!(p.types["spillway_soc_temperature_celsius"], "gauge");
        assert_eq!(p.units["spillway_soc_temperature_celsius"], "celsius");
        assert_eq!(
            p.value("spillway_soc_temperature_celsius", &[]),
            Some(71.25)
        );
        for (state, v) in [("normal", 0.0), ("soft", 1.0), ("hard", 0.0)] {
            assert_eq!(
                p.value("spillway_thermal_state", &[("state", state)]),
                Some(v),
                "{state}"
            );
        }
        assert_eq!(
            p.value("spillway_memory_available_bytes", &[]),
            Some(f64::from(3u32 << 30))
        );
        assert_eq!(p.units["spillway_memory_available_bytes"], "bytes");
        assert_eq!(p.value("spillway_resident_memory_bytes", &[]), Some(2.5e9));
        assert_eq!(p.types["spillway_spills"], "counter");
        assert_eq!(
            p.value("spillway_spills_total", &[("reason", "thermal_soft")]),
            Some(5.0)
        );
        assert_eq!(
            p.value("spillway_spills_total", &[("reason", "queue_full")]),
            Some(2.0)
        );
        let endpoint = |e: &str, state: &str| {
            p.value(
                "spillway_cloud_endpoint_state",
                &[("endpoint", e), ("state", state)],
            )
        };
        assert_eq!(endpoint("https://r/v1", "up"), Some(1.0));
        assert_eq!(endpoint("https://r/v1", "circuit_open"), Some(0.0));
        assert_eq!(endpoint("http://lan:8080/v1", "circuit_open"), Some(1.0));
        assert_eq!(endpoint("http://lan:8080/v1", "cooling_down"), Some(0.0));
        assert_eq!(
            p.value(
                "spillway_cloud_endpoint_state",
                &[
                    ("endpoint", "https://r/v1"),
                    ("state", "up"),
                    ("model", "m:fastest")
                ]
            ),
            Some(1.0)
        );
        assert_eq!(p.value("spillway_cloud_broker_up", &[]), Some(0.0));

        // A reading that goes away takes its gauge with it.
        source.0.lock().unwrap().temperature_c = None;
        let p = parse(&m.encode());
        assert!(!p.has_family("spillway_soc_temperature_celsius"));
    }

    #[test]
    fn every_family_has_the_prefix_help_and_a_type() {
        let (stats, source, m) = metrics();
        source.0.lock().unwrap().temperature_c = Some(50.0);
        stats.count(Some(ServedRoute::Local), Outcome::Ok);
        let text = m.encode();
        if std::env::var_os("SPILLWAY_SHOW_METRICS").is_some() {
            println!("{text}");
        }
        let p = parse(&text);
        assert!(text.ends_with("# EOF\n"));
        for (name, t) in &p.types {
            assert!(name.starts_with("spillway_"), "{name}");
            assert!(
                ["counter", "gauge", "histogram"].contains(&t.as_str()),
                "{name}: {t}"
            );
            assert!(p.helps.contains_key(name), "{name} has no HELP");
        }
        for (name, _, _) in &p.samples {
            let family = p
                .types
                .keys()
                .filter(|f| name.starts_with(f.as_str()))
                .max_by_key(|f| f.len());
            assert!(family.is_some(), "sample {name} outside any family");
        }
    }
}
