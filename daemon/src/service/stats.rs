//! Counters the telemetry reports: requests by route and outcome, queue depth, tokens
//! generated, the last route. The generation rate is not kept here: telemetry reports the
//! routing policy's (see [`super::route::Routing::generation_rate`]), the one average the
//! daemon keeps.
//!
//! These are the only copy of these counts: the Prometheus exposition (the `metrics`
//! module) reads them at scrape time, and the latency histograms it exposes live here too
//! ([`Latency`], fed by [`Stats::observe_answer`]), so that every place that finishes a
//! request records it in one call on the one `Stats` it already holds.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use super::schema::{ErrorCode, ServedRoute};

/// Upper bounds of the latency histograms' buckets, in seconds (`+Inf` is added).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

/// The routes an answer can come from, as the `route` label names them.
const ROUTES: [ServedRoute; 3] = [
    ServedRoute::Local,
    ServedRoute::CloudHttps,
    ServedRoute::CloudMqtt,
];

/// A `route` label.
pub type RouteLabel = [(&'static str, &'static str); 1];
/// Histograms by `route` label.
pub type LatencyFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Time to first token and request duration of answered requests, by route, as
/// Prometheus histograms (the metrics registry registers clones: clones share the
/// histograms). [`Stats`] owns the one the daemon records into.
#[derive(Clone, Debug)]
pub struct Latency {
    first_token: LatencyFamily,
    duration: LatencyFamily,
}

impl Default for Latency {
    fn default() -> Self {
        let l = Latency {
            first_token: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        };
        // Every route from the start, at zero: a dashboard sees the series before the
        // first answer on it.
        for route in ROUTES {
            let labels = [("route", route.as_str())];
            drop(l.first_token.get_or_create(&labels));
            drop(l.duration.get_or_create(&labels));
        }
        l
    }
}

impl Latency {
    /// The time-to-first-token histograms.
    pub fn first_token(&self) -> &LatencyFamily {
        &self.first_token
    }

    /// The request-duration histograms.
    pub fn duration(&self) -> &LatencyFamily {
        &self.duration
    }

    /// Records one answered request (see [`Stats::observe_answer`]).
    pub fn observe(&self, route: ServedRoute, first_token: Option<Duration>, total: Duration) {
        let labels = [("route", route.as_str())];
        if let Some(t) = first_token {
            self.first_token
                .get_or_create(&labels)
                .observe(t.as_secs_f64());
        }
        self.duration
            .get_or_create(&labels)
            .observe(total.as_secs_f64());
    }
}

/// How a request ended, as the counters name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered (`ok`).
    Ok,
    /// Answered with this error (its code).
    Failed(ErrorCode),
    /// Dropped: it named nowhere to send a reply (`no_reply_address`).
    NoReplyAddress,
}

impl Outcome {
    /// The telemetry key: `ok`, an error code, or `no_reply_address`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(code) => code.as_str(),
            Outcome::NoReplyAddress => "no_reply_address",
        }
    }
}

/// Shared between the MQTT side, the engine thread and the telemetry task.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests accepted and waiting for the engine.
    pub queued: AtomicUsize,
    /// Requests the engine is running (up to its session slots).
    pub running: AtomicUsize,
    /// Resends answered with their recorded final (`"replayed": true`).
    replays: AtomicU64,
    /// Deliveries of a request already in flight, or redeliveries of an answered one:
    /// attached, not run again.
    duplicates: AtomicU64,
    /// Completion tokens the engine generated.
    tokens_generated: AtomicU64,
    /// (route, outcome) -> count; the route is `None` for a request served nowhere
    /// (refused before routing, or after the route it was given could not take it).
    counts: Mutex<BTreeMap<(Option<ServedRoute>, &'static str), u64>>,
    /// The route of the request counted last (`none` for one served nowhere).
    last_route: Mutex<Option<&'static str>>,
    /// Time to first token and duration of answered requests, by route.
    latency: Latency,
}

/// The name of a route in counters and telemetry: `local`, `cloud-https`, `cloud-mqtt`,
/// or `none` for a request served nowhere.
pub fn route_name(route: Option<ServedRoute>) -> &'static str {
    route.map_or("none", ServedRoute::as_str)
}

impl Stats {
    /// Counts one finished request.
    pub fn count(&self, route: Option<ServedRoute>, outcome: Outcome) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry((route, outcome.as_str())).or_default() += 1;
        drop(counts);
        *self.last_route.lock().unwrap_or_else(|e| e.into_inner()) = Some(route_name(route));
    }

    /// Records the times of a request answered on `route` (counted with [`Stats::count`]
    /// as well): `first_token`, from its arrival to the first token of the answer, when
    /// one was seen, and `total`, from its arrival to the final.
    pub fn observe_answer(
        &self,
        route: ServedRoute,
        first_token: Option<Duration>,
        total: Duration,
    ) {
        self.latency.observe(route, first_token, total);
    }

    /// The latency histograms (shared: clones observe the same).
    pub fn latency(&self) -> &Latency {
        &self.latency
    }

    /// Every (route name, outcome, count) so far, in a stable order.
    pub fn request_counts(&self) -> Vec<(&'static str, &'static str, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .map(|((route, outcome), n)| (route_name(*route), *outcome, *n))
            .collect()
    }

    /// Requests answered (`ok`), on every route.
    pub fn served(&self) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .filter(|((_, outcome), _)| *outcome == Outcome::Ok.as_str())
            .map(|(_, n)| n)
            .sum()
    }

    /// Completion tokens the engine generated.
    pub fn tokens_generated(&self) -> u64 {
        self.tokens_generated.load(Ordering::Relaxed)
    }

    /// Resends answered with their recorded final.
    pub fn replays(&self) -> u64 {
        self.replays.load(Ordering::Relaxed)
    }

    /// Duplicate deliveries attached to their request.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// A resend answered with its recorded final.
    pub fn replay(&self) {
        self.replays.fetch_add(1, Ordering::Relaxed);
    }

    /// A duplicate delivery attached to its request.
    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the completion tokens of a finished local request.
    pub fn generated(&self, tokens: usize) {
        self.tokens_generated
            .fetch_add(u64::try_from(tokens).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A JSON view of the counters, with `tokens_per_s` the measured generation rate
    /// (`null` before the first measurement), `requests_served` the requests answered
    /// (`ok`) on every route, and `last_route` the route of the request that finished last
    /// (`null` before the first).
    pub fn json(&self, tokens_per_s: Option<f64>) -> serde_json::Value {
        let mut by_route = serde_json::Map::new();
        for (route, outcome, n) in self.request_counts() {
            let entry = by_route
                .entry(route)
                .or_insert_with(|| serde_json::json!({}));
            entry[outcome] = serde_json::json!(n);
        }
        let last_route = *self.last_route.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "queue_depth": self.queued.load(Ordering::Relaxed),
            "running": self.running.load(Ordering::Relaxed),
            "tokens_per_s": tokens_per_s,
            "tokens_generated": self.tokens_generated(),
            "requests": by_route,
            "requests_served": self.served(),
            "last_route": last_route,
            "replayed": self.replays(),
            "duplicates": self.duplicates(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_keep_their_telemetry_names() {
        let s = Stats::default();
        s.count(Some(ServedRoute::Local), Outcome::Ok);
        s.count(Some(ServedRoute::Local), Outcome::Ok);
        s.count(
            Some(ServedRoute::CloudHttps),
            Outcome::Failed(ErrorCode::Timeout),
        );
        s.count(Some(ServedRoute::CloudMqtt), Outcome::Ok);
        s.count(None, Outcome::Failed(ErrorCode::Busy));
        s.count(None, Outcome::NoReplyAddress);
        s.generated(7);
        s.generated(5);
        let j = s.json(Some(4.5));
        assert_eq!(
            j["requests"],
            serde_json::json!({
                "local": {"ok": 2},
                "cloud-https": {"timeout": 1},
                "cloud-mqtt": {"ok": 1},
                "none": {"busy": 1, "no_reply_address": 1},
            })
        );
        assert_eq!(
            (j["tokens_generated"].as_u64(), j["tokens_per_s"].as_f64()),
            (Some(12), Some(4.5))
        );
        assert!(s.json(None)["tokens_per_s"].is_null());
        // Three answered; the last request counted was served nowhere.
        assert_eq!(j["requests_served"], 3);
        assert_eq!(j["last_route"], "none");
        s.count(Some(ServedRoute::CloudMqtt), Outcome::Ok);
        assert_eq!(s.json(None)["last_route"], "cloud-mqtt");
        assert!(Stats::default().json(None)["last_route"].is_null());
    }
}
