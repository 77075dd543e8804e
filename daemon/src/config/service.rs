//! The `[service]` section: queue and request limits, telemetry, shutdown, the journal's
//! directory, the reply cache, the cloud in-flight cap and the daemon's role.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// `service.role`: what this daemon serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A board: serves its own request topic, spills when it must.
    #[default]
    Edge,
    /// A bigger machine serving a fleet's spill-over from the cloud broker's shared
    /// request topic (`mqtt.shared_group` defaults to `workers`).
    Worker,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSection {
    /// Requests waiting for the engine, beyond the one running.
    pub queue: usize,
    /// Largest request payload, in bytes.
    pub max_request_bytes: usize,
    /// `max_tokens` when a request does not say.
    pub default_max_tokens: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_limit: usize,
    /// Seconds between telemetry messages (0: none).
    pub telemetry_secs: u64,
    /// Seconds SIGTERM waits for running work before cancelling it.
    pub shutdown_deadline_secs: u64,
    /// Where the request journal lives (empty: see [`super::Config::state_dir`]).
    pub state_dir: PathBuf,
    /// Successful final replies kept to answer a resent request again (its idempotency
    /// key: id, reply address, correlation data). `dedup_window` is its old name.
    #[serde(alias = "dedup_window")]
    pub reply_cache: usize,
    /// Requests on their way to a cloud route at once, at most; beyond it they are served
    /// here or answered `busy`.
    pub max_cloud_inflight: usize,
    pub role: Role,
}

impl Default for ServiceSection {
    fn default() -> Self {
        ServiceSection {
            queue: 8,
            max_request_bytes: 256 << 10,
            default_max_tokens: 512,
            max_tokens_limit: 4096,
            telemetry_secs: 30,
            shutdown_deadline_secs: 20,
            state_dir: PathBuf::new(),
            reply_cache: 1024,
            max_cloud_inflight: 32,
            role: Role::Edge,
        }
    }
}

impl ServiceSection {
    /// Checks every field; a request must also fit in one MQTT packet
    /// (`mqtt.max_packet_bytes`).
    pub fn validate(&self, max_packet_bytes: u32) -> Result<(), ConfigError> {
        if !(1..=4096).contains(&self.queue) {
            return Err(invalid("service.queue", "must be between 1 and 4096"));
        }
        if !(256..=64 << 20).contains(&self.max_request_bytes) {
            return Err(invalid(
                "service.max_request_bytes",
                "must be between 256 and 67108864",
            ));
        }
        if self.max_request_bytes > max_packet_bytes as usize {
            return Err(invalid(
                "service.max_request_bytes",
                "must not exceed mqtt.max_packet_bytes",
            ));
        }
        if self.default_max_tokens == 0 || self.default_max_tokens > self.max_tokens_limit {
            return Err(invalid(
                "service.default_max_tokens",
                "must be at least 1 and at most service.max_tokens_limit",
            ));
        }
        if !(16..=1 << 20).contains(&self.reply_cache) {
            return Err(invalid(
                "service.reply_cache",
                "must be between 16 and 1048576",
            ));
        }
        if !(1..=4096).contains(&self.max_cloud_inflight) {
            return Err(invalid(
                "service.max_cloud_inflight",
                "must be between 1 and 4096",
            ));
        }
        if self.shutdown_deadline_secs > 3600 {
            return Err(invalid(
                "service.shutdown_deadline_secs",
                "must be at most 3600",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let bad = |f: fn(&mut ServiceSection)| {
            let mut s = ServiceSection::default();
            f(&mut s);
            s.validate(1 << 20).unwrap_err().to_string()
        };
        assert!(bad(|s| s.queue = 0).starts_with("service.queue:"));
        assert!(bad(|s| s.max_request_bytes = 2 << 20).contains("mqtt.max_packet_bytes"));
        assert!(bad(|s| s.default_max_tokens = 5000).starts_with("service.default_max_tokens:"));
        assert!(bad(|s| s.reply_cache = 1).starts_with("service.reply_cache:"));
        assert!(bad(|s| s.max_cloud_inflight = 0).starts_with("service.max_cloud_inflight:"));
        assert!(
            bad(|s| s.shutdown_deadline_secs = 7200).starts_with("service.shutdown_deadline_secs:")
        );
        ServiceSection::default().validate(1 << 20).unwrap();
    }

    #[test]
    fn roles_are_named_as_in_the_file() {
        let s: ServiceSection = toml::from_str("role = \"worker\"").unwrap();
        assert_eq!(s.role, Role::Worker);
        let err = toml::from_str::<ServiceSection>("role = \"boss\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("boss") && err.contains("worker"), "{err}");
    }
}
