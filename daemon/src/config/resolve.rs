//! The step after validation: reading what the settings point at and deriving the
//! [`Validated`] settings the service runs with. This is the configuration's only I/O
//! besides the file itself: the machine under `router.fs_root` (device tree,
//! `/proc/cpuinfo`, `MemTotal`, the cgroup's memory limit), the board profile files, the
//! hostname and the password files. Reading ([`Inputs::read`]) is kept apart from
//! deriving ([`Config::derive`]), which only combines the settings with what was read.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

use super::mqtt::{BrokerAddr, Topics, check_device, parse_broker};
use super::{CloudRouteName, Config, ConfigError, RamBudgetSetting, Role, invalid};
use crate::board::{Catalog, HostInfo, Selection};
use crate::engine::EngineConfig;
use crate::router::{CloudRoute, ThermalLimits};
use crate::units::human_bytes;

/// The longest password file read (a password is its first line).
const MAX_PASSWORD_FILE_BYTES: u64 = 64 << 10;

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
    pub password: Option<SecretString>,
    /// The board profile in use (its thresholds before the `router.*_c` overrides, which
    /// are in `thermal`), and why it was chosen.
    pub board: Selection,
    /// What the machine said about itself (under `router.fs_root`).
    pub host: HostInfo,
    /// Where `engine.ram_budget` came from, for people (`5.90 GiB: 75% of RAM, board …`).
    pub budget_source: String,
    /// Temperature thresholds (the profile's, or the overrides).
    pub thermal: ThermalLimits,
    /// Cloud routes in order of preference.
    pub cloud_routes: Vec<CloudRoute>,
    /// `router.memory_margin` in bytes.
    pub memory_margin: u64,
    /// The cloud broker, when the `mqtt` cloud route is configured.
    pub upstream: Option<BrokerAddr>,
    /// Its password, from `upstream.password_file`.
    pub upstream_password: Option<SecretString>,
    /// Where the request journal lives ([`Config::state_dir`]).
    pub state_dir: PathBuf,
}

impl Validated {
    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_secs(self.config.service.shutdown_deadline_secs)
    }

    /// What is wrong but does not stop the configuration from being valid, for
    /// `spillway config --check`: the model file is missing or not a file (serving would
    /// fail to load it).
    pub fn warnings(&self) -> Vec<String> {
        let path = &self.config.model.path;
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => Vec::new(),
            Ok(_) => vec![format!("model.path: {} is not a file", path.display())],
            Err(e) => vec![format!("model.path: {}: {e}", path.display())],
        }
    }
}

/// What the settings point at, read from the machine and the file system.
pub(super) struct Inputs {
    /// The device id: `mqtt.device`, else the hostname.
    device: String,
    host: HostInfo,
    catalog: Catalog,
    password: Option<SecretString>,
    upstream_password: Option<SecretString>,
}

impl Inputs {
    /// Reads the hostname (when `mqtt.device` is empty), the machine under
    /// `router.fs_root`, the board profile files and the password files.
    pub(super) fn read(c: &Config) -> Result<Inputs, ConfigError> {
        let device = if c.mqtt.device.is_empty() {
            hostname()
        } else {
            c.mqtt.device.clone()
        };
        let host = HostInfo::read(&c.router.fs_root);
        let catalog = Catalog::with_overrides(&c.boards_dir())
            .map_err(|e| invalid("router.boards_dir", e.to_string()))?;
        let password = if !c.mqtt.password_file.as_os_str().is_empty() {
            Some(read_password_file(
                "mqtt.password_file",
                &c.mqtt.password_file,
            )?)
        } else if !c.mqtt.password.is_empty() {
            Some(SecretString::from(c.mqtt.password.clone()))
        } else {
            None
        };
        let upstream_password = if c.router.has_route(CloudRouteName::Mqtt)
            && !c.upstream.password_file.as_os_str().is_empty()
        {
            Some(read_password_file(
                "upstream.password_file",
                &c.upstream.password_file,
            )?)
        } else {
            None
        };
        Ok(Inputs {
            device,
            host,
            catalog,
            password,
            upstream_password,
        })
    }
}

impl Config {
    /// [`validate`](Self::validate)s, reads what the settings point at and derives the
    /// settings the service runs with.
    pub fn resolve(self) -> Result<Validated, ConfigError> {
        self.validate()?;
        let inputs = Inputs::read(&self)?;
        self.derive(inputs)
    }

    /// Combines validated settings with what was read: the board profile fills in the
    /// engine settings left to it, its thresholds those not overridden, and the cgroup's
    /// memory limit caps the RAM budget.
    fn derive(self, inputs: Inputs) -> Result<Validated, ConfigError> {
        let c = &self;
        let Inputs {
            device,
            host,
            catalog,
            password,
            upstream_password,
        } = inputs;
        let broker = parse_broker(&c.mqtt.broker).map_err(|m| invalid("mqtt.broker", m))?;
        check_device(&device)?;
        let client_id = c.mqtt.client_id_for(&device)?;
        let shared_group = match (c.mqtt.shared_group.as_str(), c.service.role) {
            ("", Role::Worker) => Some("workers"),
            ("", Role::Edge) => None,
            (group, _) => Some(group),
        };
        let topics = Topics::new(&c.mqtt.topic_prefix, &device, shared_group);

        // The board: what it is decides the engine's defaults and the thermal limits.
        let selection = catalog
            .select(c.router.board.as_str(), &host)
            .map_err(|e| invalid("router.board", e.to_string()))?;
        let board = &selection.profile;
        let e = &c.engine;
        let mut engine = EngineConfig::new(&c.model.path);
        // Big cores: the profile's, else (generic profiles) the kernel's cpu_capacity.
        let big_cores = if board.cpu.big_cores.is_empty() {
            host.big_cores()
        } else {
            board.cpu.big_cores.clone()
        };
        engine.threads = match e.threads {
            0 if board.cpu.threads == 0 && !big_cores.is_empty() => big_cores.len(),
            0 => board.default_threads(engine.threads),
            n => n,
        };
        engine.cpus = if !e.cpus.is_empty() {
            Some(e.cpus.clone())
        } else {
            (!big_cores.is_empty()).then_some(big_cores)
        };
        engine.context = match e.context {
            0 => board.memory.context,
            n => n,
        };
        engine.kv_type = e.kv_type.kv_type().unwrap_or(board.memory.kv_type);
        engine.sessions = match e.sessions {
            0 => board.memory.sessions,
            n => n,
        };
        engine.batch = e.batch;
        engine.mlock = c.model.mlock;
        let (mut ram_budget, mut budget_source) = match e.ram_budget {
            RamBudgetSetting::Auto => match board.memory.ram_budget.bytes(host.mem_total) {
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
            RamBudgetSetting::Unlimited => {
                (None, "none (engine.ram_budget = \"none\")".to_string())
            }
            RamBudgetSetting::Bytes(b) => (
                Some(b.bytes()),
                format!("{} (engine.ram_budget)", human_bytes(b.bytes())),
            ),
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
        engine.ram_budget = ram_budget;

        let r = &c.router;
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
        let upstream = if r.has_route(CloudRouteName::Mqtt) {
            Some(c.upstream.validate()?)
        } else {
            None
        };

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
            cloud_routes: r.routes(),
            memory_margin: r.memory_margin.bytes(),
            upstream,
            upstream_password,
            state_dir: self.state_dir(),
            config: self,
        })
    }
}

/// The first line of a password file (bounded; a password is short).
fn read_password_file(field: &'static str, path: &Path) -> Result<SecretString, ConfigError> {
    let fail = |message: String| invalid(field, format!("{}: {message}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut bytes = secrecy::zeroize::Zeroizing::new(Vec::new());
    file.take(MAX_PASSWORD_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_PASSWORD_FILE_BYTES {
        return Err(fail(format!(
            "larger than {MAX_PASSWORD_FILE_BYTES} bytes; a password file holds one line"
        )));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| fail("not UTF-8 text".into()))?;
    Ok(SecretString::from(
        text.lines().next().unwrap_or("").to_string(),
    ))
}

/// The host name (Linux `/proc/sys/kernel/hostname`), or "spillway".
pub fn hostname() -> String {
    crate::sysfs::read_text(Path::new("/proc/sys/kernel/hostname"))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "spillway".into())
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::config::{KvTypeSetting, Overrides};
    use crate::model::KvType;

    /// A captured board root (`daemon/tests/boards`).
    fn captured(board: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/boards")
            .join(board)
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_board_profile_fills_in_the_engine_settings() {
        let mut c = Config::default();
        c.router.fs_root = captured("raspberry-pi-4-4gb");
        c.router.boards_dir = PathBuf::from("/nonexistent");
        let v = c.clone().resolve().unwrap();
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
        mine.engine.kv_type = KvTypeSetting::F16;
        mine.engine.context = 1024;
        mine.engine.sessions = 1;
        mine.engine.threads = 3;
        mine.engine.ram_budget = "3GiB".parse().unwrap();
        let v = mine.resolve().unwrap();
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
        unlimited.engine.ram_budget = RamBudgetSetting::Unlimited;
        assert_eq!(unlimited.resolve().unwrap().engine.ram_budget, None);
        // The RK3588's compute threads go to its big cores.
        let mut rk = c.clone();
        rk.router.fs_root = captured("rk3588-orange-pi-5");
        let v = rk.resolve().unwrap();
        assert_eq!(v.board.profile.family, "rk3588");
        assert_eq!(v.engine.cpus, Some(vec![4, 5, 6, 7]));
        assert_eq!(v.engine.threads, 4);
        // Naming a board overrides detection; unknown names are refused.
        let mut named = c.clone();
        named.apply(&Overrides {
            board: Some("raspberry-pi-4-8gb".parse().unwrap()),
            ..Overrides::default()
        });
        assert_eq!(named.clone().resolve().unwrap().engine.kv_type, KvType::F16);
        named.router.board = "raspberry-pi-9".parse().unwrap();
        let e = named.resolve().unwrap_err().to_string();
        assert!(
            e.starts_with("router.board:") && e.contains("raspberry-pi-5-8gb"),
            "{e}"
        );
    }

    #[test]
    fn temperature_overrides_replace_the_profiles_and_must_still_order() {
        let mut c = Config::default();
        c.router.fs_root = captured("raspberry-pi-4-4gb");
        c.router.boards_dir = PathBuf::from("/nonexistent");
        let profile = c.clone().resolve().unwrap().thermal;
        c.router.hard_enter_c = profile.hard_enter_c + 5.0;
        let v = c.clone().resolve().unwrap();
        assert_eq!(v.thermal.hard_enter_c, profile.hard_enter_c + 5.0);
        assert_eq!(v.thermal.soft_enter_c, profile.soft_enter_c);
        // An exit above its enter has no hysteresis.
        c.router.hard_exit_c = c.router.hard_enter_c + 1.0;
        let e = c.resolve().unwrap_err().to_string();
        assert!(e.starts_with("router.soft_enter_c:"), "{e}");
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
        let v = c.clone().resolve().unwrap();
        assert_eq!(v.engine.ram_budget, Some(2 << 30));
        assert!(v.budget_source.contains("cgroup"), "{}", v.budget_source);
        // A budget under the limit stands.
        c.engine.ram_budget = "1GiB".parse().unwrap();
        assert_eq!(c.resolve().unwrap().engine.ram_budget, Some(1 << 30));
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
        let v = c.resolve().unwrap();
        assert_eq!(v.board.profile.name, "lab-board-1gb");
        assert_eq!(v.engine.ram_budget, Some(512 << 20));
        assert_eq!(v.thermal.hard_enter_c, 70.0);
        std::fs::write(dir.join("boards/bad.toml"), "name = \"x\"").unwrap();
        let c = Config::load(Some(&file), env(&[])).unwrap();
        // Validation reads nothing: the broken board file is found by resolve.
        c.validate().unwrap();
        let e = c.resolve().unwrap_err().to_string();
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
    fn password_files_are_read_at_resolve_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("spillway-cfgpw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "s3cret-line\nsecond line\n").unwrap();
        let mut c = Config::default();
        c.router.boards_dir = PathBuf::from("/nonexistent");
        c.mqtt.username = "edge".into();
        c.mqtt.password_file = pw.clone();
        c.router.cloud_routes = vec![CloudRouteName::Mqtt];
        c.upstream.broker = "mqtt://cloud:1883".into();
        c.upstream.password_file = pw.clone();
        let v = c.clone().resolve().unwrap();
        assert_eq!(v.password.unwrap().expose_secret(), "s3cret-line");
        assert_eq!(v.upstream_password.unwrap().expose_secret(), "s3cret-line");
        assert_eq!(v.upstream.unwrap().host, "cloud");
        // A missing file names the key and the path; an oversized one is refused unread.
        let mut missing = c.clone();
        missing.mqtt.password_file = dir.join("nope");
        let e = missing.resolve().unwrap_err().to_string();
        assert!(
            e.starts_with("mqtt.password_file:") && e.contains("nope"),
            "{e}"
        );
        std::fs::write(&pw, format!("s3cret-line{}", "x".repeat(70 << 10))).unwrap();
        let e = c.resolve().unwrap_err().to_string();
        assert!(e.starts_with("mqtt.password_file:"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_model_is_a_warning() {
        let mut c = Config::default();
        c.router.boards_dir = PathBuf::from("/nonexistent");
        c.model.path = PathBuf::from("/nonexistent/model.gguf");
        let v = c.clone().resolve().unwrap();
        let w = v.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("model.path: /nonexistent/model.gguf"),
            "{w:?}"
        );
        c.model.path = std::env::temp_dir();
        assert!(c.clone().resolve().unwrap().warnings()[0].contains("not a file"));
        c.model.path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert_eq!(c.resolve().unwrap().warnings(), Vec::<String>::new());
    }
}
