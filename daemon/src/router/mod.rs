//! Overflow routing: deciding, for each request, whether it runs on the board, waits for
//! local capacity, goes to a cloud route (HTTPS router or cloud MQTT broker) or is refused,
//! and saying why. Pure: nothing here reads a file, a socket or a clock.
//!
//! - [`policy`]: the [`Policy`] state machine and its configuration; it owns the thermal
//!   state, the generation-rate and completion-length estimates, and decides.
//! - [`rules`]: the decision table (findings, then ordered rules) and its outcomes
//!   ([`Route`], [`Rule`], [`RejectCode`], [`Decision`], [`SpillCause`]).
//! - [`thermal`]: the thermal state with hysteresis.
//! - [`rate`]: the [`Ewma`] behind the wait estimate. The policy's generation rate is the
//!   only one the daemon keeps: routing and telemetry both read it.
//! - [`inputs`]: what a decision is made from: the request's facts, with the message
//!   schema's [`RouteHint`] and [`Privacy`], and the board's and cloud's [`Conditions`].
//! - [`error`][]: [`PolicyError`].
//!
//! The monitor (readings) and the cloud forwarders (health) feed it; the service acts on
//! its [`Decision`]s.

pub mod error;
pub mod inputs;
pub mod policy;
pub mod rate;
pub mod rules;
pub mod thermal;

#[cfg(test)]
mod tests;

pub use error::PolicyError;
pub use inputs::{
    CloudHealth, CloudRoute, Conditions, Privacy, RequestFacts, RouteHealth, RouteHint,
};
pub use policy::{Policy, PolicyConfig};
pub use rate::{COMPLETION_PRIOR_TOKENS, Ewma};
pub use rules::{Decision, RejectCode, Route, Rule, SpillCause};
pub use thermal::{Thermal, ThermalLimits, ThermalState};
