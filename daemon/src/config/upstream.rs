//! The `[upstream]` section: the cloud MQTT broker requests spill to (the `mqtt` cloud
//! route), where a fleet of bigger Spillway workers (`service.role = "worker"`) serves its
//! request topic through a shared subscription. Checked only when that route is on; the
//! password file is read by [`super::resolve`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::mqtt::{BrokerAddr, check_cert_pair, parse_broker};
use super::{ConfigError, invalid};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    /// `mqtt://host:port` or `mqtts://host:port`; empty: no MQTT cloud route.
    pub broker: String,
    pub username: String,
    /// File holding the password (first line).
    pub password_file: PathBuf,
    /// CA certificates (PEM) for `mqtts://`; empty: the system's.
    pub ca_file: PathBuf,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Where requests are published (the workers' `<topic_prefix>/request`).
    pub topic: String,
    /// Longest wait for a forwarded request's final reply, in seconds.
    pub timeout_secs: u64,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        UpstreamSection {
            broker: String::new(),
            username: String::new(),
            password_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            client_cert: PathBuf::new(),
            client_key: PathBuf::new(),
            topic: "spillway/request".into(),
            timeout_secs: 300,
        }
    }
}

impl UpstreamSection {
    /// Checks every field and gives the broker's address.
    pub fn validate(&self) -> Result<BrokerAddr, ConfigError> {
        let addr = parse_broker(&self.broker).map_err(|m| invalid("upstream.broker", m))?;
        if self.topic.is_empty() || self.topic.contains(['+', '#', '\0']) || self.topic.len() > 256
        {
            return Err(invalid(
                "upstream.topic",
                "must be a non-empty topic without wildcards",
            ));
        }
        check_cert_pair("upstream.client_cert", &self.client_cert, &self.client_key)?;
        if !(1..=86_400).contains(&self.timeout_secs) {
            return Err(invalid(
                "upstream.timeout_secs",
                "must be between 1 and 86400",
            ));
        }
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let good = UpstreamSection {
            broker: "mqtts://cloud.example".into(),
            ..UpstreamSection::default()
        };
        assert_eq!(good.validate().unwrap().port, 8883);
        let bad = |f: fn(&mut UpstreamSection)| {
            let mut u = good.clone();
            f(&mut u);
            u.validate().unwrap_err().to_string()
        };
        assert!(bad(|u| u.broker = String::new()).starts_with("upstream.broker:"));
        assert!(bad(|u| u.topic = "a/#".into()).starts_with("upstream.topic:"));
        assert!(bad(|u| u.client_cert = "c.pem".into()).starts_with("upstream.client_cert:"));
        assert!(bad(|u| u.timeout_secs = 0).starts_with("upstream.timeout_secs:"));
    }
}
