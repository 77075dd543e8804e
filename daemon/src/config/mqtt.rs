//! The `[mqtt]` section (the broker requests arrive through) and what the MQTT settings
//! share with `[upstream]`: broker URLs, topic-level rules and certificate pairs. The
//! password file is not read here: [`super::resolve`] reads it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSection {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS).
    pub broker: String,
    /// Client id; empty means `spillway-<device>`.
    pub client_id: String,
    pub username: String,
    /// Password (prefer `password_file`, or the SPILLWAY_MQTT_PASSWORD variable).
    pub password: String,
    /// File holding the password (first line).
    pub password_file: PathBuf,
    /// CA certificates (PEM) to trust for `mqtts://`; empty: the system's.
    pub ca_file: PathBuf,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Topic prefix.
    pub topic_prefix: String,
    /// Device id in topics; empty means the hostname.
    pub device: String,
    /// Also take requests from `$share/<group>/<prefix>/request`, load-balanced over a fleet
    /// (empty: off).
    pub shared_group: String,
    pub keep_alive_secs: u64,
    /// How long the broker keeps our session (and queued requests) while we are away.
    pub session_expiry_secs: u32,
    /// Largest MQTT packet accepted or sent.
    pub max_packet_bytes: u32,
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            broker: "mqtt://localhost:1883".into(),
            client_id: String::new(),
            username: String::new(),
            password: String::new(),
            password_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            client_cert: PathBuf::new(),
            client_key: PathBuf::new(),
            topic_prefix: "spillway".into(),
            device: String::new(),
            shared_group: String::new(),
            keep_alive_secs: 30,
            session_expiry_secs: 3600,
            max_packet_bytes: 1 << 20,
        }
    }
}

impl MqttSection {
    /// Checks every field; the device id only when it is set (else it is the hostname,
    /// checked once read, when the configuration is resolved).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let broker = parse_broker(&self.broker).map_err(|m| invalid("mqtt.broker", m))?;
        if !self.device.is_empty() {
            check_device(&self.device)?;
        }
        if self.topic_prefix.is_empty()
            || self.topic_prefix.contains(['+', '#', '\0'])
            || self.topic_prefix.starts_with('$')
            || self.topic_prefix.len() > 256
        {
            return Err(invalid(
                "mqtt.topic_prefix",
                "must be a non-empty topic level without wildcards, not starting with '$'",
            ));
        }
        if !self.shared_group.is_empty() && !topic_level_ok(&self.shared_group) {
            return Err(invalid(
                "mqtt.shared_group",
                "must be 1-128 characters without '/', '+', '#'",
            ));
        }
        if !(5..=3600).contains(&self.keep_alive_secs) {
            return Err(invalid(
                "mqtt.keep_alive_secs",
                "must be between 5 and 3600",
            ));
        }
        if !(4096..=256 << 20).contains(&self.max_packet_bytes) {
            return Err(invalid(
                "mqtt.max_packet_bytes",
                "must be between 4096 and 268435456",
            ));
        }
        check_cert_pair("mqtt.client_cert", &self.client_cert, &self.client_key)?;
        if !broker.tls
            && (!self.ca_file.as_os_str().is_empty() || !self.client_cert.as_os_str().is_empty())
        {
            return Err(invalid(
                "mqtt.broker",
                "certificates are set but the broker URL is not mqtts://",
            ));
        }
        if self.client_id.len() > 128 {
            return Err(invalid("mqtt.client_id", "must be at most 128 characters"));
        }
        let has_password = !self.password.is_empty() || !self.password_file.as_os_str().is_empty();
        if has_password && self.username.is_empty() {
            return Err(invalid(
                "mqtt.username",
                "a password is set but no username",
            ));
        }
        Ok(())
    }

    /// The client id: `client_id`, else `spillway-<device>`.
    pub fn client_id_for(&self, device: &str) -> Result<String, ConfigError> {
        let id = if self.client_id.is_empty() {
            format!("spillway-{device}")
        } else {
            self.client_id.clone()
        };
        if id.len() > 128 {
            return Err(invalid("mqtt.client_id", "must be at most 128 characters"));
        }
        Ok(id)
    }
}

/// A topic level we build topics from: 1-128 bytes without separators or wildcards.
fn topic_level_ok(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '\0']) && s.len() <= 128
}

/// The device id (`mqtt.device`, or the hostname) must be one topic level.
pub(crate) fn check_device(device: &str) -> Result<(), ConfigError> {
    if topic_level_ok(device) {
        Ok(())
    } else {
        Err(invalid(
            "mqtt.device",
            format!("{device:?} must be 1-128 characters without '/', '+', '#'"),
        ))
    }
}

/// A client certificate needs its key and the other way round.
pub(crate) fn check_cert_pair(
    field: &'static str,
    cert: &Path,
    key: &Path,
) -> Result<(), ConfigError> {
    if cert.as_os_str().is_empty() != key.as_os_str().is_empty() {
        return Err(invalid(field, "client_cert and client_key go together"));
    }
    Ok(())
}

/// Where the broker is and how to talk to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Parses `mqtt://host[:port]` or `mqtts://host[:port]` (ports default to 1883 / 8883).
pub fn parse_broker(url: &str) -> Result<BrokerAddr, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(format!("{url:?} must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("{url:?}: port {p:?} is not a number 1-65535"))?;
            (h, port)
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(format!("{url:?} has no host or a zero port"));
    }
    Ok(BrokerAddr {
        host: host.to_string(),
        port,
        tls,
    })
}

/// Topics one device uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    pub request: String,
    pub shared_request: Option<String>,
    pub status: String,
    pub telemetry: String,
}

impl Topics {
    /// The topics of `device` under `prefix`; `shared_group` (if any) adds the fleet's
    /// shared request topic.
    pub fn new(prefix: &str, device: &str, shared_group: Option<&str>) -> Topics {
        let prefix = prefix.trim_end_matches('/');
        Topics {
            request: format!("{prefix}/{device}/request"),
            shared_request: shared_group.map(|g| format!("$share/{g}/{prefix}/request")),
            status: format!("{prefix}/{device}/status"),
            telemetry: format!("{prefix}/{device}/telemetry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker("mqtts://h").unwrap(),
            BrokerAddr {
                host: "h".into(),
                port: 8883,
                tls: true
            }
        );
        assert_eq!(parse_broker("mqtt://10.0.0.2:1884/").unwrap().port, 1884);
        assert_eq!(parse_broker("mqtt://[::1]:1883").unwrap().host, "::1");
        let err = parse_broker("mqtt://h:0").unwrap_err();
        assert!(err.contains("has no host or a zero port"), "{err}");
        let err = parse_broker("tcp://h").unwrap_err();
        assert!(err.contains("must start with mqtt:// or mqtts://"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let bad = |f: fn(&mut MqttSection)| {
            let mut m = MqttSection::default();
            f(&mut m);
            m.validate().unwrap_err().to_string()
        };
        assert!(bad(|m| m.broker = "http://x".into()).starts_with("mqtt.broker:"));
        assert!(bad(|m| m.device = "a/b".into()).starts_with("mqtt.device:"));
        assert!(bad(|m| m.topic_prefix = "$SYS".into()).starts_with("mqtt.topic_prefix:"));
        assert!(bad(|m| m.shared_group = "a+".into()).starts_with("mqtt.shared_group:"));
        assert!(bad(|m| m.keep_alive_secs = 1).starts_with("mqtt.keep_alive_secs:"));
        assert!(bad(|m| m.max_packet_bytes = 10).starts_with("mqtt.max_packet_bytes:"));
        assert!(bad(|m| m.client_key = "k.pem".into()).starts_with("mqtt.client_cert:"));
        assert!(bad(|m| m.ca_file = "ca.pem".into()).starts_with("mqtt.broker:"));
        assert!(bad(|m| m.client_id = "x".repeat(129)).starts_with("mqtt.client_id:"));
        assert!(bad(|m| m.password = "p".into()).starts_with("mqtt.username:"));
        assert!(bad(|m| m.password_file = "/run/pw".into()).starts_with("mqtt.username:"));
        MqttSection::default().validate().unwrap();
    }

    #[test]
    fn topics() {
        let t = Topics::new("fleet/", "pi-7", Some("workers"));
        assert_eq!(t.request, "fleet/pi-7/request");
        assert_eq!(t.status, "fleet/pi-7/status");
        assert_eq!(t.telemetry, "fleet/pi-7/telemetry");
        assert_eq!(
            t.shared_request.as_deref(),
            Some("$share/workers/fleet/request")
        );
        assert_eq!(Topics::new("s", "d", None).shared_request, None);
    }
}
