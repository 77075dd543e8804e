//! The daemon's configuration: a TOML file whose every setting has a default, overridden by
//! `SPILLWAY_*` environment variables and then by command-line flags.
//!
//! Three steps, each with its own failures:
//!
//! 1. [`Config::load`] reads the file and the environment (`env.rs`) into typed settings:
//!    one struct per section, enums and sizes where the file has words (`kv_type`,
//!    `ram_budget`, `role`, `cloud_routes`, `board`, `memory_margin`), so a value of the
//!    wrong kind is refused with the file's line and column. [`Config::apply`] adds flags.
//! 2. [`Config::validate`] checks the values against each other and their bounds, section
//!    by section, reading nothing: errors name the key (`service.queue: must be ...`).
//! 3. [`Config::resolve`] (`resolve.rs`) reads what the settings point at — the machine
//!    under `router.fs_root`, the board profile files, the hostname, the password files —
//!    and derives the [`Validated`] settings the service runs with.
//!
//! Environment variables: `SPILLWAY_<SECTION>_<KEY>` for every setting (for example
//! `SPILLWAY_MQTT_BROKER`, `SPILLWAY_ENGINE_CONTEXT`), plus the short forms
//! `SPILLWAY_MODEL`, `SPILLWAY_BROKER`, `SPILLWAY_DEVICE`, `SPILLWAY_THREADS`,
//! `SPILLWAY_RAM_BUDGET` and `SPILLWAY_QUEUE`.

mod engine;
mod env;
mod homeassistant;
mod http;
mod mqtt;
mod resolve;
mod router;
mod service;
mod upstream;
mod values;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use engine::{EngineSection, KvTypeSetting, ModelSection};
pub use homeassistant::HomeAssistantSection;
pub use http::{HttpSection, parse_listen};
pub use mqtt::{BrokerAddr, MqttSection, Topics, parse_broker};
pub use resolve::{Validated, hostname};
pub use router::{BoardChoice, CloudRouteName, RouterSection};
pub use service::{Role, ServiceSection};
pub use upstream::UpstreamSection;
pub use values::{ByteSize, RamBudgetSetting};

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelSection,
    pub engine: EngineSection,
    pub mqtt: MqttSection,
    pub service: ServiceSection,
    pub router: RouterSection,
    pub cloud: crate::cloud::CloudConfig,
    pub upstream: UpstreamSection,
    pub http: HttpSection,
    pub homeassistant: HomeAssistantSection,
    /// The file this was read from (not a setting): board profile overrides are looked for
    /// beside it.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// A configuration problem, naming the file, the variable or the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `message` is the TOML parser's, lines and all (it quotes the line at fault).
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// The largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Command-line overrides for the common settings.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub model: Option<PathBuf>,
    pub broker: Option<String>,
    pub device: Option<String>,
    pub threads: Option<usize>,
    pub ram_budget: Option<RamBudgetSetting>,
    pub queue: Option<usize>,
    pub state_dir: Option<PathBuf>,
    pub fs_root: Option<PathBuf>,
    pub board: Option<BoardChoice>,
    pub cloud_base_url: Option<String>,
    pub cloud_model: Option<String>,
    pub cloud_token_file: Option<PathBuf>,
    /// `--http`: the HTTP front end's address (`http.listen`).
    pub http: Option<String>,
}

impl Config {
    /// Reads `path` (or starts from the defaults when `None`), then applies the environment.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = match path {
            None => Config::default(),
            Some(p) => {
                let text = read_config_file(p)?;
                let mut config = Config::parse(&text).map_err(|message| ConfigError::Parse {
                    path: p.to_owned(),
                    message,
                })?;
                config.source = Some(p.to_owned());
                config
            }
        };
        env::apply_env(&mut config, env)?;
        Ok(config)
    }

    /// Parses a configuration file's text; the error is the parser's, with its line breaks.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| e.to_string().trim_end().to_string())
    }

    /// Applies command-line flags (highest precedence).
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.model {
            self.model.path = v.clone();
        }
        if let Some(v) = &o.broker {
            self.mqtt.broker = v.clone();
        }
        if let Some(v) = &o.device {
            self.mqtt.device = v.clone();
        }
        if let Some(v) = o.threads {
            self.engine.threads = v;
        }
        if let Some(v) = o.ram_budget {
            self.engine.ram_budget = v;
        }
        if let Some(v) = o.queue {
            self.service.queue = v;
        }
        if let Some(v) = &o.http {
            self.http.listen = v.clone();
        }
        if let Some(v) = &o.state_dir {
            self.service.state_dir = v.clone();
        }
        if let Some(v) = &o.fs_root {
            self.router.fs_root = v.clone();
        }
        if let Some(v) = &o.board {
            self.router.board = v.clone();
        }
        // Naming a cloud endpoint or token on the command line means: spill over HTTPS.
        let cloud_flag =
            o.cloud_base_url.is_some() || o.cloud_model.is_some() || o.cloud_token_file.is_some();
        self.cloud
            .override_primary(o.cloud_base_url.clone(), o.cloud_model.clone());
        if let Some(v) = &o.cloud_token_file {
            self.cloud.token_file = v.clone();
        }
        if cloud_flag && !self.router.has_route(CloudRouteName::Https) {
            self.router.cloud_routes.insert(0, CloudRouteName::Https);
        }
    }

    /// Checks every setting, section by section, without reading anything: the values'
    /// bounds and how they fit together. [`resolve`](Self::resolve) runs it first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.mqtt.validate()?;
        self.engine.validate()?;
        self.service.validate(self.mqtt.max_packet_bytes)?;
        self.router.validate()?;
        self.http.validate()?;
        self.homeassistant.validate(self.service.telemetry_secs)?;
        if self.router.has_route(CloudRouteName::Mqtt) {
            self.upstream.validate()?;
        }
        if self.router.has_route(CloudRouteName::Https) {
            self.cloud
                .validate()
                .map_err(|e| invalid("cloud", e.to_string()))?;
        }
        Ok(())
    }

    /// Where the request journal lives: `service.state_dir`; else systemd's
    /// `$STATE_DIRECTORY` (the unit's `StateDirectory=spillway`); else `/var/lib/spillway`
    /// for root; else `$XDG_STATE_HOME/spillway` or `~/.local/state/spillway`.
    pub fn state_dir(&self) -> PathBuf {
        if !self.service.state_dir.as_os_str().is_empty() {
            return self.service.state_dir.clone();
        }
        // systemd passes one path per StateDirectory= entry, separated by colons.
        if let Some(dir) = std::env::var_os("STATE_DIRECTORY")
            .and_then(|d| {
                d.to_str()
                    .and_then(|d| d.split(':').next())
                    .map(PathBuf::from)
            })
            .filter(|d| !d.as_os_str().is_empty())
        {
            return dir;
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return PathBuf::from("/var/lib/spillway");
        }
        match (std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME")) {
            (Some(x), _) if !x.is_empty() => PathBuf::from(x).join("spillway"),
            (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".local/state/spillway"),
            _ => PathBuf::from("/var/lib/spillway"),
        }
    }

    /// Where board profile overrides are read from: `router.boards_dir`, else `boards/`
    /// beside the configuration file, else `/etc/spillway/boards`.
    pub fn boards_dir(&self) -> PathBuf {
        if !self.router.boards_dir.as_os_str().is_empty() {
            return self.router.boards_dir.clone();
        }
        match self.source.as_deref().and_then(Path::parent) {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join("boards"),
            Some(_) => PathBuf::from("boards"),
            None => PathBuf::from("/etc/spillway/boards"),
        }
    }
}

/// Reads the configuration file, bounded: it is outside input like any other.
fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::Parse {
            path: path.to_owned(),
            message: format!("larger than {MAX_CONFIG_BYTES} bytes"),
        });
    }
    String::from_utf8(bytes).map_err(|_| ConfigError::Parse {
        path: path.to_owned(),
        message: "not UTF-8 text".into(),
    })
}

/// The commented default configuration file.
pub const DEFAULT_CONFIG: &str = include_str!("../config.default.toml");

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Environment pairs as `env::apply_env` takes them (shared by the section tests).
    pub(crate) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_commented_default_file_is_the_default() {
        let parsed = Config::parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(parsed, Config::default());
        // And what `config --check` prints reads back the same.
        let printed = toml::to_string(&parsed).unwrap();
        assert_eq!(Config::parse(&printed).unwrap(), parsed);
    }

    #[test]
    fn precedence_is_defaults_file_env_flags() {
        let dir = std::env::temp_dir().join(format!("spillway-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "[mqtt]\nbroker = \"mqtt://file:1\"\ndevice = \"from-file\"\n[service]\nqueue = 3\n",
        )
        .unwrap();
        let mut c = Config::load(
            Some(&file),
            env(&[
                ("SPILLWAY_DEVICE", "from-env"),
                ("SPILLWAY_ENGINE_CONTEXT", "2048"),
                ("SPILLWAY_KERNELS", "avx2"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.mqtt.broker, "mqtt://file:1");
        assert_eq!(c.mqtt.device, "from-env");
        assert_eq!(c.engine.context, 2048);
        assert_eq!(c.service.queue, 3);
        assert_eq!(c.source.as_deref(), Some(file.as_path()));
        c.apply(&Overrides {
            queue: Some(9),
            ram_budget: Some(RamBudgetSetting::Unlimited),
            ..Overrides::default()
        });
        assert_eq!(c.service.queue, 9);
        assert_eq!(c.engine.ram_budget, RamBudgetSetting::Unlimited);
        c.router.boards_dir = PathBuf::from("/nonexistent");
        let v = c.resolve().unwrap();
        assert_eq!(v.topics.request, "spillway/from-env/request");
        assert_eq!(v.client_id, "spillway-from-env");
        assert_eq!(
            (v.broker.host.as_str(), v.broker.port, v.broker.tls),
            ("file", 1, false)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cloud_flag_turns_the_https_route_on() {
        let mut c = Config::default();
        c.router.cloud_routes = vec![CloudRouteName::Mqtt];
        c.apply(&Overrides {
            cloud_model: Some("m".into()),
            ..Overrides::default()
        });
        assert_eq!(
            c.router.cloud_routes,
            [CloudRouteName::Https, CloudRouteName::Mqtt]
        );
        assert_eq!(c.cloud.endpoints[0].model, "m");
    }

    #[test]
    fn errors_name_the_field() {
        let bad = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.mqtt.broker = "http://x".into()).starts_with("mqtt.broker:"));
        assert!(bad(|c| c.service.queue = 0).starts_with("service.queue:"));
        assert!(bad(|c| c.mqtt.device = "a/b".into()).starts_with("mqtt.device:"));
        assert!(bad(|c| c.engine.batch = 0).starts_with("engine.batch:"));
        assert!(bad(|c| c.router.sample_ms = 0).starts_with("router.sample_ms:"));
        // Sections of routes that are off are not checked; on, they are.
        Config::default().validate().unwrap();
        assert!(
            bad(|c| c.router.cloud_routes = vec![CloudRouteName::Mqtt])
                .starts_with("upstream.broker:")
        );
        assert!(
            bad(|c| {
                c.router.cloud_routes = vec![CloudRouteName::Https];
                c.cloud.endpoints.clear();
            })
            .starts_with("cloud:")
        );
        let err = Config::parse("[mqtt]\nbrokr = \"x\"").unwrap_err();
        assert!(err.contains("brokr"), "{err}");
        let err = Config::load(None, env(&[("SPILLWAY_THREADS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SPILLWAY_THREADS"), "{err}");
    }

    #[test]
    fn parse_errors_keep_their_lines_and_name_the_key() {
        let dir = std::env::temp_dir().join(format!("spillway-cfgp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[engine]\nbatch = 64\nkv_type = \"q4\"\n").unwrap();
        let e = Config::load(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("config file {}:", file.display())),
            "{e}"
        );
        // The parser's report: where, the line itself, and what is wrong, on their own lines.
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("\n3 | kv_type = \"q4\""), "{e}");
        assert!(e.contains("q8_0"), "{e}");
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        let e = Config::load(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        let e = Config::load(Some(&dir.join("missing.toml")), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read config file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
