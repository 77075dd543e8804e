//! The daemon's configuration: a TOML file whose every setting has a default, overridden by
//! `SPILLWAY_*` environment variables and then by command-line flags. Validated once at
//! start; errors name the field and say what is allowed.
//!
//! Environment variables: `SPILLWAY_<SECTION>_<KEY>` for every setting (for example
//! `SPILLWAY_MQTT_BROKER`, `SPILLWAY_ENGINE_CONTEXT`), plus the short forms
//! `SPILLWAY_MODEL`, `SPILLWAY_BROKER`, `SPILLWAY_DEVICE`, `SPILLWAY_THREADS`,
//! `SPILLWAY_RAM_BUDGET` and `SPILLWAY_QUEUE`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::EngineConfig;
use crate::model::KvType;
use crate::units::{human_bytes, parse_bytes};

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
    /// The file this was read from (not a setting): board profile overrides are looked for
    /// beside it.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// The cloud MQTT broker requests spill to (the `mqtt` cloud route): a fleet of bigger
/// Spillway workers (`service.role = "worker"`) serves its request topic through a shared
/// subscription.
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// The GGUF model file.
    pub path: PathBuf,
    /// Lock the weights in RAM (needs LimitMEMLOCK at least the file's size).
    pub mlock: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Compute threads; 0 means the board profile's (one per big core, or per CPU).
    pub threads: usize,
    /// CPUs to pin compute threads to (empty: the board profile's big cores, if any).
    pub cpus: Vec<usize>,
    /// Context per session, in tokens; 0 means the board profile's for its RAM size.
    pub context: usize,
    /// KV cache element type: "f16", "q8_0", or "auto" (the board profile's).
    pub kv_type: String,
    /// Sessions whose KV cache is kept for follow-up turns; 0 means the board profile's.
    pub sessions: usize,
    /// Prompt tokens evaluated per pass.
    pub batch: usize,
    /// Largest memory plan allowed to load: "auto" (the board profile's share of RAM),
    /// bytes such as "3GiB", or "none".
    pub ram_budget: String,
}

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
    /// Where the request journal lives (empty: see [`Config::state_dir`]).
    pub state_dir: PathBuf,
    /// Successful final replies kept to answer a resent request again (its idempotency
    /// key: id, reply address, correlation data). `dedup_window` is its old name.
    #[serde(alias = "dedup_window")]
    pub reply_cache: usize,
    /// Requests on their way to a cloud route at once, at most; beyond it they are served
    /// here or answered `busy`.
    pub max_cloud_inflight: usize,
    /// "edge" (a board: serves its own topic, spills when it must) or "worker" (a bigger
    /// machine serving a fleet's spill-over from the cloud broker's shared request topic;
    /// `mqtt.shared_group` defaults to "workers").
    pub role: String,
}

/// Overflow routing: when a request runs here, waits, or spills to the cloud.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSection {
    /// Board profile: "auto" (detected from the device tree) or a built-in name
    /// (raspberry-pi-4, raspberry-pi-5, rk3588, jetson-orin, generic).
    pub board: String,
    /// Directory of board profile files that replace or add to the built-in ones ("": the
    /// `boards` directory beside the configuration file, or /etc/spillway/boards).
    pub boards_dir: PathBuf,
    /// Directory under which `/sys` and `/proc` are read ("/" on a board).
    pub fs_root: PathBuf,
    /// Milliseconds between resource samples.
    pub sample_ms: u64,
    /// Cloud routes requests may spill to, most preferred first: "https" (the `[cloud]`
    /// section). Empty: everything runs here.
    pub cloud_routes: Vec<String>,
    /// Deadline of requests whose MQTT message carries no expiry, in seconds.
    pub default_deadline_secs: u64,
    /// Memory kept free beyond a request's KV cache, e.g. "256MiB".
    pub memory_margin: String,
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
            board: "auto".into(),
            boards_dir: PathBuf::new(),
            fs_root: PathBuf::from("/"),
            sample_ms: 1000,
            cloud_routes: Vec::new(),
            default_deadline_secs: 300,
            memory_margin: "128MiB".into(),
            rate_prior: 5.0,
            hard_cooldown_secs: 60,
            soft_enter_c: 0.0,
            soft_exit_c: 0.0,
            hard_enter_c: 0.0,
            hard_exit_c: 0.0,
        }
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            path: PathBuf::from("/var/lib/spillway/models/model.gguf"),
            mlock: false,
        }
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            threads: 0,
            cpus: Vec::new(),
            context: 0,
            kv_type: "auto".into(),
            sessions: 0,
            batch: 64,
            ram_budget: "auto".into(),
        }
    }
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
            role: "edge".into(),
        }
    }
}

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
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

/// The first line of a password file.
fn read_password_file(
    field: &'static str,
    path: &Path,
) -> Result<secrecy::SecretString, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
    Ok(secrecy::SecretString::from(
        text.lines().next().unwrap_or("").to_string(),
    ))
}

/// A client certificate needs its key and the other way round.
fn check_cert_pair(field: &'static str, cert: &Path, key: &Path) -> Result<(), ConfigError> {
    if cert.as_os_str().is_empty() != key.as_os_str().is_empty() {
        return Err(invalid(field, "client_cert and client_key go together"));
    }
    Ok(())
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
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

/// A validated configuration, with the derived values the service needs.
#[derive(Clone, Debug)]
pub struct Validated {
    pub config: Config,
    pub broker: BrokerAddr,
    pub device: String,
    pub client_id: String,
    pub topics: Topics,
    pub engine: EngineConfig,
    /// The MQTT password, from the config, its file or the environment.
    pub password: Option<secrecy::SecretString>,
    /// The board profile in use (its thresholds before the `router.*_c` overrides, which
    /// are in `thermal`), and why it was chosen.
    pub board: crate::board::Selection,
    /// What the machine said about itself (under `router.fs_root`).
    pub host: crate::board::HostInfo,
    /// Where `engine.ram_budget` came from, for people (`5.90 GiB: 75% of RAM, board …`).
    pub budget_source: String,
    /// Temperature thresholds (the profile's, or the overrides).
    pub thermal: crate::router::ThermalLimits,
    /// Cloud routes in order of preference.
    pub cloud_routes: Vec<crate::router::CloudRoute>,
    /// `router.memory_margin` in bytes.
    pub memory_margin: u64,
    /// The cloud broker, when the `mqtt` cloud route is configured.
    pub upstream: Option<BrokerAddr>,
    /// Its password, from `upstream.password_file`.
    pub upstream_password: Option<secrecy::SecretString>,
    /// Where the request journal lives ([`Config::state_dir`]).
    pub state_dir: PathBuf,
}

/// Command-line overrides for the common settings.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub model: Option<PathBuf>,
    pub broker: Option<String>,
    pub device: Option<String>,
    pub threads: Option<usize>,
    pub ram_budget: Option<String>,
    pub queue: Option<usize>,
    pub state_dir: Option<PathBuf>,
    pub fs_root: Option<PathBuf>,
    pub board: Option<String>,
    pub cloud_base_url: Option<String>,
    pub cloud_model: Option<String>,
    pub cloud_token_file: Option<PathBuf>,
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
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.to_owned(),
                    message: e.to_string().trim().replace('\n', " "),
                })?;
                config.source = Some(p.to_owned());
                config
            }
        };
        config.apply_env(env)?;
        Ok(config)
    }

    /// Applies `SPILLWAY_*` variables (see the module docs). Unrecognised `SPILLWAY_*`
    /// names are left alone (other parts of Spillway read some, e.g. `SPILLWAY_KERNELS`).
    pub fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let mut table = toml::Table::try_from(&*self).expect("the config serializes");
        let short = [
            ("SPILLWAY_MODEL", ("model", "path")),
            ("SPILLWAY_BROKER", ("mqtt", "broker")),
            ("SPILLWAY_DEVICE", ("mqtt", "device")),
            ("SPILLWAY_THREADS", ("engine", "threads")),
            ("SPILLWAY_RAM_BUDGET", ("engine", "ram_budget")),
            ("SPILLWAY_QUEUE", ("service", "queue")),
        ];
        let mut changed = false;
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("SPILLWAY_") else {
                continue;
            };
            let target = short
                .iter()
                .find(|(n, _)| *n == var)
                .map(|(_, t)| (t.0.to_string(), t.1.to_string()))
                .or_else(|| {
                    let lower = rest.to_ascii_lowercase();
                    let (section, key) = lower.split_once('_')?;
                    let known = table.get(section)?.as_table()?.contains_key(key);
                    known.then(|| (section.to_string(), key.to_string()))
                });
            let Some((section, key)) = target else {
                continue;
            };
            let slot = table
                .get_mut(&section)
                .and_then(|s| s.as_table_mut())
                .and_then(|s| s.get_mut(&key))
                .expect("targets come from the table");
            *slot = env_value(slot, &value).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
            changed = true;
        }
        if changed {
            let source = self.source.take();
            *self = table
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Env {
                    var: "SPILLWAY_*".into(),
                    message: e.to_string(),
                })?;
            self.source = source;
        }
        Ok(())
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
        if let Some(v) = &o.ram_budget {
            self.engine.ram_budget = v.clone();
        }
        if let Some(v) = o.queue {
            self.service.queue = v;
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
        if cloud_flag && !self.router.cloud_routes.iter().any(|r| r == "https") {
            self.router.cloud_routes.insert(0, "https".into());
        }
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

    /// Checks every field and derives the values the service runs with.
    pub fn validate(self) -> Result<Validated, ConfigError> {
        let c = &self;
        let broker = parse_broker(&c.mqtt.broker).map_err(|m| invalid("mqtt.broker", m))?;
        let device = if c.mqtt.device.is_empty() {
            hostname()
        } else {
            c.mqtt.device.clone()
        };
        let topic_safe =
            |s: &str| !s.is_empty() && !s.contains(['/', '+', '#', '\0']) && s.len() <= 128;
        if !topic_safe(&device) {
            return Err(invalid(
                "mqtt.device",
                format!("{device:?} must be 1-128 characters without '/', '+', '#'"),
            ));
        }
        if c.mqtt.topic_prefix.is_empty()
            || c.mqtt.topic_prefix.contains(['+', '#', '\0'])
            || c.mqtt.topic_prefix.starts_with('$')
            || c.mqtt.topic_prefix.len() > 256
        {
            return Err(invalid(
                "mqtt.topic_prefix",
                "must be a non-empty topic level without wildcards, not starting with '$'",
            ));
        }
        if !c.mqtt.shared_group.is_empty() && !topic_safe(&c.mqtt.shared_group) {
            return Err(invalid(
                "mqtt.shared_group",
                "must be 1-128 characters without '/', '+', '#'",
            ));
        }
        if !(5..=3600).contains(&c.mqtt.keep_alive_secs) {
            return Err(invalid(
                "mqtt.keep_alive_secs",
                "must be between 5 and 3600",
            ));
        }
        if !(4096..=256 << 20).contains(&c.mqtt.max_packet_bytes) {
            return Err(invalid(
                "mqtt.max_packet_bytes",
                "must be between 4096 and 268435456",
            ));
        }
        check_cert_pair("mqtt.client_cert", &c.mqtt.client_cert, &c.mqtt.client_key)?;
        if !broker.tls
            && (!c.mqtt.ca_file.as_os_str().is_empty()
                || !c.mqtt.client_cert.as_os_str().is_empty())
        {
            return Err(invalid(
                "mqtt.broker",
                "certificates are set but the broker URL is not mqtts://",
            ));
        }
        let client_id = if c.mqtt.client_id.is_empty() {
            format!("spillway-{device}")
        } else {
            c.mqtt.client_id.clone()
        };
        if client_id.len() > 128 {
            return Err(invalid("mqtt.client_id", "must be at most 128 characters"));
        }
        let password = if !c.mqtt.password_file.as_os_str().is_empty() {
            Some(read_password_file(
                "mqtt.password_file",
                &c.mqtt.password_file,
            )?)
        } else if !c.mqtt.password.is_empty() {
            Some(secrecy::SecretString::from(c.mqtt.password.clone()))
        } else {
            None
        };
        if password.is_some() && c.mqtt.username.is_empty() {
            return Err(invalid(
                "mqtt.username",
                "a password is set but no username",
            ));
        }

        // The board: what it is decides the engine's defaults and the thermal limits.
        let r = &c.router;
        let host = crate::board::HostInfo::read(&r.fs_root);
        let boards_dir = self.boards_dir();
        let catalog = crate::board::Catalog::with_overrides(&boards_dir)
            .map_err(|e| invalid("router.boards_dir", e.to_string()))?;
        let selection = catalog
            .select(&r.board, &host)
            .map_err(|e| invalid("router.board", e.to_string()))?;
        let board = &selection.profile;

        let kv_type = match c.engine.kv_type.as_str() {
            "" | "auto" => board.memory.kv_type,
            name => KvType::from_name(name).ok_or_else(|| {
                invalid(
                    "engine.kv_type",
                    format!("{name:?} is not f16, q8_0 or auto"),
                )
            })?,
        };
        let context = match c.engine.context {
            0 => board.memory.context,
            n if (16..=1 << 20).contains(&n) => n,
            _ => {
                return Err(invalid(
                    "engine.context",
                    "must be between 16 and 1048576 tokens (0: the board's)",
                ));
            }
        };
        let sessions = match c.engine.sessions {
            0 => board.memory.sessions,
            n if n <= 64 => n,
            _ => {
                return Err(invalid(
                    "engine.sessions",
                    "must be between 1 and 64 (0: the board's)",
                ));
            }
        };
        if !(1..=4096).contains(&c.engine.batch) {
            return Err(invalid("engine.batch", "must be between 1 and 4096"));
        }
        if c.engine.threads > 1024 {
            return Err(invalid(
                "engine.threads",
                "must be at most 1024 (0 means one per CPU)",
            ));
        }
        let (mut ram_budget, mut budget_source) = match c.engine.ram_budget.trim() {
            "" | "auto" => match board.memory.ram_budget.bytes(host.mem_total) {
                Some(b) => (
                    Some(b),
                    format!(
                        "{}: {} (board {})",
                        human_bytes(b),
                        board.memory.ram_budget,
                        board.name
                    ),
                ),
                None => (
                    None,
                    "none: MemTotal is unknown, so the board's share of RAM cannot be computed"
                        .to_string(),
                ),
            },
            "none" => (None, "none (engine.ram_budget = \"none\")".to_string()),
            s => {
                let b = parse_bytes(s).map_err(|m| invalid("engine.ram_budget", m))?;
                (Some(b), format!("{} (engine.ram_budget)", human_bytes(b)))
            }
        };
        // The service's cgroup limit (systemd's MemoryHigh=/MemoryMax=) caps any budget: past
        // it the kernel reclaims the weights' pages under the generating thread, or kills.
        if let Some(limit) = host.cgroup_limit
            && ram_budget.is_none_or(|b| b > limit)
        {
            budget_source = format!(
                "{}: the cgroup's memory limit (MemoryHigh=/MemoryMax=), below the {budget_source}",
                human_bytes(limit)
            );
            ram_budget = Some(limit);
        }
        if !(1..=4096).contains(&c.service.queue) {
            return Err(invalid("service.queue", "must be between 1 and 4096"));
        }
        if !(256..=64 << 20).contains(&c.service.max_request_bytes) {
            return Err(invalid(
                "service.max_request_bytes",
                "must be between 256 and 67108864",
            ));
        }
        if c.service.max_request_bytes > c.mqtt.max_packet_bytes as usize {
            return Err(invalid(
                "service.max_request_bytes",
                "must not exceed mqtt.max_packet_bytes",
            ));
        }
        if c.service.default_max_tokens == 0
            || c.service.default_max_tokens > c.service.max_tokens_limit
        {
            return Err(invalid(
                "service.default_max_tokens",
                "must be at least 1 and at most service.max_tokens_limit",
            ));
        }
        if !(16..=1 << 20).contains(&c.service.reply_cache) {
            return Err(invalid(
                "service.reply_cache",
                "must be between 16 and 1048576",
            ));
        }
        if !(1..=4096).contains(&c.service.max_cloud_inflight) {
            return Err(invalid(
                "service.max_cloud_inflight",
                "must be between 1 and 4096",
            ));
        }
        if c.service.shutdown_deadline_secs > 3600 {
            return Err(invalid(
                "service.shutdown_deadline_secs",
                "must be at most 3600",
            ));
        }

        let prefix = c.mqtt.topic_prefix.trim_end_matches('/');
        let topics = Topics {
            request: format!("{prefix}/{device}/request"),
            shared_request: match (c.mqtt.shared_group.as_str(), c.service.role.as_str()) {
                ("", "worker") => Some(format!("$share/workers/{prefix}/request")),
                ("", _) => None,
                (group, _) => Some(format!("$share/{group}/{prefix}/request")),
            },
            status: format!("{prefix}/{device}/status"),
            telemetry: format!("{prefix}/{device}/telemetry"),
        };
        let mut engine = EngineConfig::new(&c.model.path);
        // Big cores: the profile's, else (generic profiles) the kernel's cpu_capacity.
        let big_cores = if board.cpu.big_cores.is_empty() {
            host.big_cores()
        } else {
            board.cpu.big_cores.clone()
        };
        engine.threads = match c.engine.threads {
            0 if board.cpu.threads == 0 && !big_cores.is_empty() => big_cores.len(),
            0 => board.default_threads(engine.threads),
            n => n,
        };
        engine.cpus = if !c.engine.cpus.is_empty() {
            Some(c.engine.cpus.clone())
        } else {
            (!big_cores.is_empty()).then_some(big_cores)
        };
        engine.context = context;
        engine.kv_type = kv_type;
        engine.sessions = sessions;
        engine.batch = c.engine.batch;
        engine.ram_budget = ram_budget;
        engine.mlock = c.model.mlock;
        let mut thermal = board.thermal.limits();
        for (value, slot) in [
            (r.soft_enter_c, &mut thermal.soft_enter_c),
            (r.soft_exit_c, &mut thermal.soft_exit_c),
            (r.hard_enter_c, &mut thermal.hard_enter_c),
            (r.hard_exit_c, &mut thermal.hard_exit_c),
        ] {
            if value != 0.0 {
                *slot = value;
            }
        }
        thermal
            .validate()
            .map_err(|e| invalid("router.soft_enter_c", e.to_string()))?;
        if !(50..=3_600_000).contains(&r.sample_ms) {
            return Err(invalid(
                "router.sample_ms",
                "must be between 50 and 3600000",
            ));
        }
        if !(1..=86_400).contains(&r.default_deadline_secs) {
            return Err(invalid(
                "router.default_deadline_secs",
                "must be between 1 and 86400",
            ));
        }
        if !(r.rate_prior.is_finite() && r.rate_prior > 0.0) {
            return Err(invalid("router.rate_prior", "must be a positive number"));
        }
        let memory_margin =
            parse_bytes(&r.memory_margin).map_err(|m| invalid("router.memory_margin", m))?;
        let mut cloud_routes = Vec::new();
        for name in &r.cloud_routes {
            let route = match name.as_str() {
                "https" => crate::router::CloudRoute::Https,
                "mqtt" => crate::router::CloudRoute::Mqtt,
                other => {
                    return Err(invalid(
                        "router.cloud_routes",
                        format!("{other:?} is not a cloud route (\"https\" or \"mqtt\")"),
                    ));
                }
            };
            if cloud_routes.contains(&route) {
                return Err(invalid("router.cloud_routes", format!("{name:?} twice")));
            }
            cloud_routes.push(route);
        }
        let upstream = if cloud_routes.contains(&crate::router::CloudRoute::Mqtt) {
            let u = &c.upstream;
            let addr = parse_broker(&u.broker).map_err(|m| invalid("upstream.broker", m))?;
            if u.topic.is_empty() || u.topic.contains(['+', '#', '\0']) {
                return Err(invalid(
                    "upstream.topic",
                    "must be a non-empty topic without wildcards",
                ));
            }
            check_cert_pair("upstream.client_cert", &u.client_cert, &u.client_key)?;
            if !(1..=86_400).contains(&u.timeout_secs) {
                return Err(invalid(
                    "upstream.timeout_secs",
                    "must be between 1 and 86400",
                ));
            }
            let password = if u.password_file.as_os_str().is_empty() {
                None
            } else {
                Some(read_password_file(
                    "upstream.password_file",
                    &u.password_file,
                )?)
            };
            Some((addr, password))
        } else {
            None
        };
        let (upstream, upstream_password) = upstream.unzip();
        let upstream_password = upstream_password.flatten();
        if !matches!(c.service.role.as_str(), "edge" | "worker") {
            return Err(invalid(
                "service.role",
                format!("{:?} is not \"edge\" or \"worker\"", c.service.role),
            ));
        }
        if cloud_routes.contains(&crate::router::CloudRoute::Https) {
            c.cloud
                .validate()
                .map_err(|e| invalid("cloud", e.to_string()))?;
        }

        Ok(Validated {
            broker,
            device,
            client_id,
            topics,
            engine,
            password,
            board: selection,
            host,
            budget_source,
            thermal,
            cloud_routes,
            memory_margin,
            upstream,
            upstream_password,
            state_dir: self.state_dir(),
            config: self,
        })
    }
}

impl Validated {
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.config.mqtt.keep_alive_secs)
    }

    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_secs(self.config.service.shutdown_deadline_secs)
    }
}

/// Converts an environment value to the type of the setting it replaces.
fn env_value(current: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    Ok(match current {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not an integer"))?,
        ),
        toml::Value::Boolean(_) => match raw.trim() {
            "1" | "true" | "yes" | "on" => toml::Value::Boolean(true),
            "0" | "false" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(format!("{raw:?} is not a boolean (true/false)")),
        },
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.trim()
                        .parse::<i64>()
                        .map(toml::Value::Integer)
                        .map_err(|_| format!("{s:?} is not an integer"))
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err("this setting cannot be set from the environment".into()),
    })
}

/// The host name (Linux `/proc/sys/kernel/hostname`), or "spillway".
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "spillway".into())
}

/// The commented default configuration file.
pub const DEFAULT_CONFIG: &str = include_str!("config.default.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_commented_default_file_is_the_default() {
        let parsed: Config = toml::from_str(DEFAULT_CONFIG).unwrap();
        assert_eq!(parsed, Config::default());
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
        c.apply(&Overrides {
            queue: Some(9),
            ..Overrides::default()
        });
        assert_eq!(c.service.queue, 9);
        let v = c.validate().unwrap();
        assert_eq!(v.topics.request, "spillway/from-env/request");
        assert_eq!(v.client_id, "spillway-from-env");
        assert_eq!(
            (v.broker.host.as_str(), v.broker.port, v.broker.tls),
            ("file", 1, false)
        );
    }

    /// A captured board root (`daemon/tests/boards`).
    fn captured(board: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/boards")
            .join(board)
    }

    #[test]
    fn the_board_profile_fills_in_the_engine_settings() {
        let mut c = Config::default();
        c.router.fs_root = captured("raspberry-pi-4-4gb");
        c.router.boards_dir = PathBuf::from("/nonexistent");
        let v = c.clone().validate().unwrap();
        assert_eq!(v.board.profile.name, "raspberry-pi-4-4gb");
        assert_eq!(v.engine.kv_type, KvType::Q8_0);
        assert_eq!(v.engine.context, 4096);
        assert_eq!(v.engine.sessions, 2);
        assert_eq!(v.engine.threads, 4);
        assert_eq!(v.engine.cpus, None);
        // 75% of MemTotal (3833280 kB).
        assert_eq!(v.engine.ram_budget, Some(3_833_280 * 1024 * 3 / 4));
        assert!(
            v.budget_source.contains("75% of RAM"),
            "{}",
            v.budget_source
        );
        // Explicit settings win over the board's.
        let mut mine = c.clone();
        mine.engine.kv_type = "f16".into();
        mine.engine.context = 1024;
        mine.engine.sessions = 1;
        mine.engine.threads = 3;
        mine.engine.ram_budget = "3GiB".into();
        let v = mine.validate().unwrap();
        assert_eq!(
            (
                v.engine.kv_type,
                v.engine.context,
                v.engine.sessions,
                v.engine.threads
            ),
            (KvType::F16, 1024, 1, 3)
        );
        assert_eq!(v.engine.ram_budget, Some(3 << 30));
        let mut unlimited = c.clone();
        unlimited.engine.ram_budget = "none".into();
        assert_eq!(unlimited.validate().unwrap().engine.ram_budget, None);
        // The RK3588's compute threads go to its big cores.
        let mut rk = c.clone();
        rk.router.fs_root = captured("rk3588-orange-pi-5");
        let v = rk.validate().unwrap();
        assert_eq!(v.board.profile.family, "rk3588");
        assert_eq!(v.engine.cpus, Some(vec![4, 5, 6, 7]));
        assert_eq!(v.engine.threads, 4);
        // Naming a board overrides detection; unknown names are refused.
        let mut named = c.clone();
        named.router.board = "raspberry-pi-4-8gb".into();
        assert_eq!(
            named.clone().validate().unwrap().engine.kv_type,
            KvType::F16
        );
        named.router.board = "raspberry-pi-9".into();
        let e = named.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("router.board:") && e.contains("raspberry-pi-5-8gb"),
            "{e}"
        );
    }

    #[test]
    fn the_cgroup_limit_caps_the_budget() {
        let root = std::env::temp_dir().join(format!("spillway-cg-{}", std::process::id()));
        let cg = root.join("sys/fs/cgroup/system.slice/spillway.service");
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::create_dir_all(root.join("proc/self")).unwrap();
        std::fs::write(
            root.join("proc/self/cgroup"),
            "0::/system.slice/spillway.service\n",
        )
        .unwrap();
        std::fs::write(root.join("proc/meminfo"), "MemTotal: 8000000 kB\n").unwrap();
        std::fs::write(cg.join("memory.max"), "2147483648\n").unwrap();
        std::fs::write(cg.join("memory.high"), "max\n").unwrap();
        let mut c = Config::default();
        c.router.fs_root = root.clone();
        c.router.boards_dir = PathBuf::from("/nonexistent");
        let v = c.clone().validate().unwrap();
        assert_eq!(v.engine.ram_budget, Some(2 << 30));
        assert!(v.budget_source.contains("cgroup"), "{}", v.budget_source);
        // A budget under the limit stands.
        c.engine.ram_budget = "1GiB".into();
        assert_eq!(c.validate().unwrap().engine.ram_budget, Some(1 << 30));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn board_overrides_are_read_beside_the_config_file() {
        let dir = std::env::temp_dir().join(format!("spillway-cfgb-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("boards")).unwrap();
        let file = dir.join("spillway.toml");
        std::fs::write(&file, "[router]\nboard = \"lab-board\"\n").unwrap();
        std::fs::write(
            dir.join("boards/lab.toml"),
            "name = \"lab-board\"\ndescription = \"Lab\"\n[thermal]\n\
             soft = { enter_c = 60.0, exit_c = 55.0 }\nhard = { enter_c = 70.0, exit_c = 65.0 }\n\
             [[memory]]\nram_gb = 1\nram_budget = \"512MiB\"\ncontext = 256\n\
             kv_type = \"q8_0\"\nsessions = 1\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), env(&[("SPILLWAY_QUEUE", "2")])).unwrap();
        assert_eq!(c.boards_dir(), dir.join("boards"));
        let v = c.validate().unwrap();
        assert_eq!(v.board.profile.name, "lab-board-1gb");
        assert_eq!(v.engine.ram_budget, Some(512 << 20));
        assert_eq!(v.thermal.hard_enter_c, 70.0);
        std::fs::write(dir.join("boards/bad.toml"), "name = \"x\"").unwrap();
        let e = Config::load(Some(&file), env(&[]))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("router.boards_dir:") && e.contains("bad.toml"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            Config::default().boards_dir(),
            Path::new("/etc/spillway/boards")
        );
    }

    #[test]
    fn errors_name_the_field() {
        let bad = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.mqtt.broker = "http://x".into()).starts_with("mqtt.broker:"));
        assert!(bad(|c| c.engine.kv_type = "q4".into()).starts_with("engine.kv_type:"));
        assert!(bad(|c| c.engine.ram_budget = "lots".into()).starts_with("engine.ram_budget:"));
        assert!(bad(|c| c.service.queue = 0).starts_with("service.queue:"));
        assert!(bad(|c| c.mqtt.device = "a/b".into()).starts_with("mqtt.device:"));
        let err = toml::from_str::<Config>("[mqtt]\nbrokr = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("brokr"), "{err}");
        let err = Config::load(None, env(&[("SPILLWAY_THREADS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SPILLWAY_THREADS"), "{err}");
    }

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
        assert!(parse_broker("mqtt://h:0").is_err());
        assert!(parse_broker("tcp://h").is_err());
    }
}
