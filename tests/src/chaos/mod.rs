//! The chaos rig: real processes to break on purpose and the checks that every request got
//! exactly one final reply. Used by `tests/chaos.rs` and the soak (`bin/soak.rs`).
//!
//! - [`Broker`]: mosquitto on a free port, persistence on or off, kill -9 and start again on
//!   the same port.
//! - [`Daemon`]: `spillway serve` with its own state directory and a canary cloud token,
//!   SIGTERM / SIGKILL / start again with the same state directory.
//! - [`Collector`] and [`Requester`]: MQTT 5 clients (see [`crate::mqtt5`]) that keep every
//!   message and know which requests the broker acknowledged; [`Replies`] sorts what came
//!   back for one request and checks it.

mod broker;
mod daemon;
mod traffic;

pub use broker::{Broker, Persistence};
pub use daemon::{Canary, Daemon, DaemonConfig, Stopped};
pub use traffic::{Collector, Replies, Request, Requester, Sent, canary_in_messages, error_code};

/// The request topic of `device`.
pub fn request_topic(device: &str) -> String {
    format!("spillway/{device}/request")
}

/// A reply topic of `device` for `client`, under `spillway/#` as in the README.
pub fn reply_topic(device: &str, client: &str) -> String {
    format!("spillway/{device}/reply/{client}")
}

/// A cloud base URL nothing listens on (port 9 on loopback is discard, closed here): the
/// daemon has a cloud route and token, and a request that tried it would fail fast.
pub const UNREACHABLE_CLOUD: &str = "https://127.0.0.1:9/v1";
