//! The `[router]` section: which board profile to use and where its files and `/sys` are,
//! sampling, the cloud routes in order of preference, deadlines, the memory margin and
//! the temperature overrides. Which board `auto` is, and whether a named board exists,
//! needs the machine and the board files: [`super::resolve`] decides it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::values::{ByteSize, string_serde};
use super::{ConfigError, invalid};
use crate::router::CloudRoute;

/// `router.board`: detect the board, or use the profile of this name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BoardChoice {
    #[default]
    Auto,
    /// A family (`raspberry-pi-5`, `generic`) or a variant (`raspberry-pi-5-8gb`).
    Named(String),
}

impl BoardChoice {
    /// As the board catalog takes it (`auto` for detection).
    pub fn as_str(&self) -> &str {
        match self {
            BoardChoice::Auto => "auto",
            BoardChoice::Named(n) => n,
        }
    }
}

impl FromStr for BoardChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<BoardChoice, String> {
        match s.trim() {
            "" | "auto" => Ok(BoardChoice::Auto),
            name if name.len() <= 128
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                }) =>
            {
                Ok(BoardChoice::Named(name.to_string()))
            }
            _ => Err(format!(
                "{s:?} is not \"auto\" or a board profile name (lowercase letters, digits, '-')"
            )),
        }
    }
}

impl fmt::Display for BoardChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

string_serde!(BoardChoice, "\"auto\" or a board profile name");

/// A name in `router.cloud_routes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudRouteName {
    /// The OpenAI-compatible HTTPS router of `[cloud]`.
    Https,
    /// The cloud MQTT broker of `[upstream]`.
    Mqtt,
}

impl From<CloudRouteName> for CloudRoute {
    fn from(name: CloudRouteName) -> CloudRoute {
        match name {
            CloudRouteName::Https => CloudRoute::Https,
            CloudRouteName::Mqtt => CloudRoute::Mqtt,
        }
    }
}

/// Overflow routing: when a request runs here, waits, or spills to the cloud.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSection {
    /// Board profile: `auto` (detected from the device tree) or a built-in name
    /// (raspberry-pi-4, raspberry-pi-5, rk3588, jetson-orin, generic).
    pub board: BoardChoice,
    /// Directory of board profile files that replace or add to the built-in ones ("": the
    /// `boards` directory beside the configuration file, or /etc/spillway/boards).
    pub boards_dir: PathBuf,
    /// Directory under which `/sys` and `/proc` are read ("/" on a board).
    pub fs_root: PathBuf,
    /// Milliseconds between resource samples.
    pub sample_ms: u64,
    /// Cloud routes requests may spill to, most preferred first. Empty: everything runs
    /// here.
    pub cloud_routes: Vec<CloudRouteName>,
    /// Deadline of requests whose MQTT message carries no expiry, in seconds.
    pub default_deadline_secs: u64,
    /// Memory kept free beyond a request's KV cache, e.g. `256MiB`.
    pub memory_margin: ByteSize,
    /// Generation tokens/s assumed before the first measurement.
    pub rate_prior: f64,
    /// Seconds the SoC is assumed to need to cool below the hard limit's exit threshold.
    pub hard_cooldown_secs: u64,
    /// Temperature thresholds in °C overriding the board profile's (0: the profile's).
    pub soft_enter_c: f32,
    pub soft_exit_c: f32,
    pub hard_enter_c: f32,
    pub hard_exit_c: f32,
}

impl Default for RouterSection {
    fn default() -> Self {
        RouterSection {
            board: BoardChoice::Auto,
            boards_dir: PathBuf::new(),
            fs_root: PathBuf::from("/"),
            sample_ms: 1000,
            cloud_routes: Vec::new(),
            default_deadline_secs: 300,
            memory_margin: ByteSize(128 << 20),
            rate_prior: 5.0,
            hard_cooldown_secs: 60,
            soft_enter_c: 0.0,
            soft_exit_c: 0.0,
            hard_enter_c: 0.0,
            hard_exit_c: 0.0,
        }
    }
}

/// The plausible range of a temperature override, in °C (as for board profiles).
const LIMIT_RANGE_C: std::ops::RangeInclusive<f32> = 20.0..=130.0;

impl RouterSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(50..=3_600_000).contains(&self.sample_ms) {
            return Err(invalid(
                "router.sample_ms",
                "must be between 50 and 3600000",
            ));
        }
        if !(1..=86_400).contains(&self.default_deadline_secs) {
            return Err(invalid(
                "router.default_deadline_secs",
                "must be between 1 and 86400",
            ));
        }
        if !(self.rate_prior.is_finite() && self.rate_prior > 0.0) {
            return Err(invalid("router.rate_prior", "must be a positive number"));
        }
        if self.hard_cooldown_secs > 86_400 {
            return Err(invalid(
                "router.hard_cooldown_secs",
                "must be at most 86400",
            ));
        }
        for (i, route) in self.cloud_routes.iter().enumerate() {
            if self.cloud_routes[..i].contains(route) {
                return Err(invalid(
                    "router.cloud_routes",
                    format!("{:?} twice", CloudRoute::from(*route).as_str()),
                ));
            }
        }
        for (field, value) in [
            ("router.soft_enter_c", self.soft_enter_c),
            ("router.soft_exit_c", self.soft_exit_c),
            ("router.hard_enter_c", self.hard_enter_c),
            ("router.hard_exit_c", self.hard_exit_c),
        ] {
            if value != 0.0 && !LIMIT_RANGE_C.contains(&value) {
                return Err(invalid(
                    field,
                    format!(
                        "must be 0 (the board profile's) or within {}..={} °C",
                        LIMIT_RANGE_C.start(),
                        LIMIT_RANGE_C.end()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The cloud routes in order of preference, as the routing policy names them.
    pub fn routes(&self) -> Vec<CloudRoute> {
        self.cloud_routes.iter().map(|&r| r.into()).collect()
    }

    /// Whether `route` is configured.
    pub fn has_route(&self, route: CloudRouteName) -> bool {
        self.cloud_routes.contains(&route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_parse_from_the_file() {
        let r: RouterSection = toml::from_str(
            "board = \"rk3588\"\ncloud_routes = [\"mqtt\", \"https\"]\nmemory_margin = \"1GiB\"",
        )
        .unwrap();
        assert_eq!(r.board, BoardChoice::Named("rk3588".into()));
        assert_eq!(r.routes(), [CloudRoute::Mqtt, CloudRoute::Https]);
        assert_eq!(r.memory_margin.bytes(), 1 << 30);
        for (text, needle) in [
            ("cloud_routes = [\"ftp\"]", "ftp"),
            ("memory_margin = \"lots\"", "lots"),
            ("board = \"Pi 5\"", "Pi 5"),
        ] {
            let err = toml::from_str::<RouterSection>(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        let r: RouterSection = toml::from_str("board = \"\"").unwrap();
        assert_eq!(r.board, BoardChoice::Auto);
    }

    #[test]
    fn errors_name_the_field() {
        let bad = |f: fn(&mut RouterSection)| {
            let mut r = RouterSection::default();
            f(&mut r);
            r.validate().unwrap_err().to_string()
        };
        assert!(bad(|r| r.sample_ms = 1).starts_with("router.sample_ms:"));
        assert!(bad(|r| r.default_deadline_secs = 0).starts_with("router.default_deadline_secs:"));
        assert!(bad(|r| r.rate_prior = f64::NAN).starts_with("router.rate_prior:"));
        assert!(
            bad(|r| r.cloud_routes = vec![CloudRouteName::Https, CloudRouteName::Https])
                .starts_with("router.cloud_routes:")
        );
        assert!(bad(|r| r.hard_enter_c = 500.0).starts_with("router.hard_enter_c:"));
        RouterSection::default().validate().unwrap();
    }
}
