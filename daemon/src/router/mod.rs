//! Overflow routing: deciding, for each request, whether it runs on the board, waits for
//! local capacity, goes to a cloud route (HTTPS router or cloud MQTT broker) or is refused,
//! and saying why.
//!
//! - [`policy`]: the pure decision state machine (thermal hysteresis, memory, queue wait,
//!   context, route hint, privacy, cloud health), and the [`Ewma`]s of the generation rate
//!   and of the completion length that make its wait estimate. This policy's rate is the
//!   one that routes; the service's statistics keep their own for telemetry only.
//!
//! The monitor (readings) and the cloud forwarders (health) feed it; the service acts on
//! its [`Decision`]s.

pub mod policy;

pub use policy::{
    COMPLETION_PRIOR_TOKENS, CloudHealth, CloudRoute, Conditions, Decision, Ewma, Policy,
    PolicyConfig, PolicyError, RejectCode, RequestFacts, Route, RouteHealth, Rule, Thermal,
    ThermalLimits, ThermalState,
};
