//! Counters the telemetry reports: requests by route and outcome, queue depth, generation
//! speed (an exponentially weighted moving average over requests).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Shared between the MQTT side, the engine thread and the telemetry task.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests accepted and waiting for the engine.
    pub queued: AtomicUsize,
    /// Requests the engine is running (0 or 1).
    pub running: AtomicUsize,
    /// Resends answered with their recorded final (`"replayed": true`).
    replays: AtomicU64,
    /// Deliveries of a request already in flight, or redeliveries of an answered one:
    /// attached, not run again.
    duplicates: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (route, outcome) -> count; outcome is "ok" or an error code.
    counts: BTreeMap<(&'static str, &'static str), u64>,
    tokens_per_s: Option<f64>,
    tokens_generated: u64,
}

/// Weight of the newest request in the moving average.
const EWMA_ALPHA: f64 = 0.3;

impl Stats {
    pub fn count(&self, route: &'static str, outcome: &'static str) {
        let mut i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *i.counts.entry((route, outcome)).or_default() += 1;
    }

    /// A resend answered with its recorded final.
    pub fn replay(&self) {
        self.replays.fetch_add(1, Ordering::Relaxed);
    }

    /// A duplicate delivery attached to its request.
    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a generation speed (tokens/s over `tokens` tokens).
    pub fn generation(&self, tokens: usize, tokens_per_s: f64) {
        let mut i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        i.tokens_generated += tokens as u64;
        if tokens > 1 && tokens_per_s.is_finite() {
            i.tokens_per_s = Some(match i.tokens_per_s {
                None => tokens_per_s,
                Some(old) => old + EWMA_ALPHA * (tokens_per_s - old),
            });
        }
    }

    /// The moving average of generation speed, if any request has finished.
    pub fn tokens_per_s(&self) -> Option<f64> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tokens_per_s
    }

    /// A JSON view of the counters.
    pub fn json(&self) -> serde_json::Value {
        let i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_route = serde_json::Map::new();
        for ((route, outcome), n) in &i.counts {
            let entry = by_route
                .entry(route.to_string())
                .or_insert_with(|| serde_json::json!({}));
            entry[*outcome] = serde_json::json!(n);
        }
        serde_json::json!({
            "queue_depth": self.queued.load(Ordering::Relaxed),
            "running": self.running.load(Ordering::Relaxed),
            "tokens_per_s": i.tokens_per_s,
            "tokens_generated": i.tokens_generated,
            "requests": by_route,
            "replayed": self.replays.load(Ordering::Relaxed),
            "duplicates": self.duplicates.load(Ordering::Relaxed),
        })
    }
}
