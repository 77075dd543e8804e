//! What a decision is made from: the request's facts ([`RequestFacts`], with its route hint
//! and privacy as the message schema names them) and the board's and the cloud's
//! conditions at that moment ([`Conditions`], [`CloudHealth`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a request may be served: the request's `route` field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteHint {
    #[default]
    Auto,
    Local,
    Cloud,
}

/// The request's `privacy` field: `local-only` requests must never leave the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Privacy {
    #[serde(rename = "local-only")]
    LocalOnly,
}

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

/// The board and the service at the moment of a decision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conditions {
    /// The latest SoC temperature in °C; `None` when there is no fresh reading (the
    /// thermal state is then kept).
    pub temperature_c: Option<f32>,
    /// Bytes the system can still give (the smaller of `MemAvailable` and the cgroup's
    /// `memory.max − memory.current`); `None` when unknown, and then not checked.
    pub mem_headroom: Option<u64>,
    /// Requests in the local queue, not counting this one.
    pub queued_requests: usize,
    /// Tokens the work ahead of this request, running or queued, is expected to generate
    /// (each admitted request counted by [`Policy::expected_completion`](crate::router::Policy::expected_completion)).
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
    /// caller now; `None` uses [`PolicyConfig::default_deadline`](crate::router::PolicyConfig::default_deadline).
    pub deadline: Option<Duration>,
}
