//! The `[homeassistant]` section: Home Assistant's MQTT discovery. Off by default; on, the
//! daemon publishes (retained) one discovery config per sensor under `prefix` each time it
//! connects and whenever Home Assistant announces itself `online` on `<prefix>/status`
//! (see `service::discovery`). The sensors read the telemetry topic, so discovery needs
//! telemetry on (`service.telemetry_secs` above 0).

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantSection {
    /// Publish the discovery configs.
    pub discovery: bool,
    /// Home Assistant's discovery prefix (its MQTT integration's setting).
    pub prefix: String,
}

impl Default for HomeAssistantSection {
    fn default() -> Self {
        HomeAssistantSection {
            discovery: false,
            prefix: "homeassistant".into(),
        }
    }
}

impl HomeAssistantSection {
    /// Checks the prefix (always: the daemon keeps `<prefix>/status` apart from requests
    /// even with discovery off) and that telemetry, which the sensors read, is on.
    pub fn validate(&self, telemetry_secs: u64) -> Result<(), ConfigError> {
        let p = &self.prefix;
        if p.is_empty()
            || p.len() > 256
            || p.contains(['+', '#', '\0'])
            || p.starts_with(['$', '/'])
            || p.ends_with('/')
            || p.contains("//")
        {
            return Err(invalid(
                "homeassistant.prefix",
                "must be a non-empty topic without wildcards, not starting with '$' or '/', \
                 nor ending with '/'",
            ));
        }
        if self.discovery && telemetry_secs == 0 {
            return Err(invalid(
                "homeassistant.discovery",
                "the sensors read the telemetry topic: set service.telemetry_secs above 0",
            ));
        }
        Ok(())
    }

    /// Where Home Assistant announces itself (`online` when it starts).
    pub fn status_topic(&self) -> String {
        format!("{}/status", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::env;

    #[test]
    fn defaults_off_with_the_usual_prefix() {
        let h = HomeAssistantSection::default();
        assert!(!h.discovery);
        assert_eq!(h.prefix, "homeassistant");
        assert_eq!(h.status_topic(), "homeassistant/status");
        h.validate(0).unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        for prefix in ["", "ha/#", "ha/+/x", "$SYS", "/ha", "ha/", "a//b"] {
            let h = HomeAssistantSection {
                prefix: prefix.into(),
                ..HomeAssistantSection::default()
            };
            let e = h.validate(30).unwrap_err().to_string();
            assert!(e.starts_with("homeassistant.prefix:"), "{prefix:?}: {e}");
        }
        let on = HomeAssistantSection {
            discovery: true,
            ..HomeAssistantSection::default()
        };
        let e = on.validate(0).unwrap_err().to_string();
        assert!(e.starts_with("homeassistant.discovery:"), "{e}");
        // Telemetry off is fine while discovery is.
        HomeAssistantSection::default().validate(0).unwrap();
        // Good ones.
        for prefix in ["homeassistant", "ha/discovery", "home-assistant_2"] {
            let h = HomeAssistantSection {
                discovery: true,
                prefix: prefix.into(),
            };
            h.validate(30).unwrap();
        }
    }

    #[test]
    fn read_from_the_file_and_the_environment() {
        let c = Config::parse("[homeassistant]\ndiscovery = true\nprefix = \"ha\"\n").unwrap();
        assert!(c.homeassistant.discovery);
        assert_eq!(c.homeassistant.prefix, "ha");
        let c = Config::load(
            None,
            env(&[
                ("SPILLWAY_HOMEASSISTANT_DISCOVERY", "on"),
                ("SPILLWAY_HOMEASSISTANT_PREFIX", "hass"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.homeassistant,
            HomeAssistantSection {
                discovery: true,
                prefix: "hass".into()
            }
        );
        let mut c = Config::default();
        c.homeassistant.discovery = true;
        c.service.telemetry_secs = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("homeassistant.discovery:"), "{e}");
        assert!(Config::parse("[homeassistant]\ndiscover = true\n").is_err());
    }
}
