//! Board profiles as data: one profile file parsed and validated into a [`Family`] (a
//! board family with a [`MemoryProfile`] per RAM size), and a family resolved to the
//! [`BoardProfile`] of one variant — its thermal zones and limits, big cores, expected CPU
//! features and the engine's defaults. Nothing here reads a file or the machine: the
//! [`Catalog`](super::Catalog) finds the files and [`HostInfo`] says what the machine is.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::HostInfo;
use crate::model::KvType;
use crate::router::ThermalLimits;
use crate::units::{human_bytes, parse_bytes};

/// A variant applies when `MemTotal` reaches this share of its nominal size: boards are
/// sold by the GB, and the kernel sees less (firmware, the GPU's CMA area, the kernel
/// image). Measured: a 4 GB Pi 4 shows 3.66 GiB (91%), an 8 GB Orin Nano 7.44 GiB (93%).
pub(super) const RAM_MATCH_SHARE: f64 = 0.85;

/// Limits on the lists in a profile, so a custom file cannot ask for absurd amounts.
const MAX_LIST: usize = 64;
/// The highest CPU number a profile may name (`CPU_SETSIZE`).
const MAX_CPU: usize = 1023;
/// The plausible range of a temperature limit, in °C.
const LIMIT_RANGE_C: std::ops::RangeInclusive<f32> = 20.0..=130.0;
/// A temperature limit with hysteresis: the condition starts when the temperature reaches
/// `enter_c` and ends only once it has fallen to `exit_c` (below `enter_c`), so a
/// temperature hovering at the limit does not flap between routes.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub enter_c: f32,
    pub exit_c: f32,
}

/// How to recognise the board.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoardMatch {
    /// Case-insensitive substrings of the board's model string (`/proc/device-tree/model`,
    /// or the Raspberry Pi kernel's `Model` line in `/proc/cpuinfo`).
    pub model: Vec<String>,
    /// Exact entries of `/proc/device-tree/compatible` (a NUL-separated list), for boards
    /// whose model strings vary by vendor (RK3588 boards all list `rockchip,rk3588` or
    /// `rockchip,rk3588s`).
    pub compatible: Vec<String>,
}

/// Thermal settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThermalProfile {
    /// The `type` of the thermal zones that speak for the SoC; the hottest of them is used.
    /// Empty: the hottest of all zones.
    #[serde(default)]
    pub zones: Vec<String>,
    /// Above this, requests that may leave spill to the cloud when a route is up, and
    /// local generation runs on fewer threads to shed heat.
    pub soft: Threshold,
    /// Above this, nothing new starts on the board: requests spill or wait.
    pub hard: Threshold,
}

impl ThermalProfile {
    /// The limits in the form the routing policy takes.
    pub fn limits(&self) -> ThermalLimits {
        ThermalLimits {
            soft_enter_c: self.soft.enter_c,
            soft_exit_c: self.soft.exit_c,
            hard_enter_c: self.hard.enter_c,
            hard_exit_c: self.hard.exit_c,
        }
    }
}

/// CPU settings.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuProfile {
    /// The big cores of a big.LITTLE SoC, to pin compute threads to. Empty: all cores are
    /// alike (or, on a generic profile, whatever the kernel's `cpu_capacity` says).
    pub big_cores: Vec<usize>,
    /// Default compute threads; 0 means one per big core, or one per CPU when all are alike.
    pub threads: usize,
    /// `/proc/cpuinfo` features the board's cores have and the fast kernels need
    /// (`asimddp` for `dotprod`; `avx2`, `fma`, `f16c` for `avx2`).
    pub features: Vec<String>,
}

/// The memory plan's limit: a share of `MemTotal`, or bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RamBudget {
    /// Percent of `MemTotal`.
    Share(f64),
    Bytes(u64),
}

impl RamBudget {
    /// `"75%"` or a byte count (`"2.5GiB"`).
    pub fn parse(text: &str) -> Result<RamBudget, String> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            let share: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{text:?} is not a percentage"))?;
            if !(1.0..=100.0).contains(&share) {
                return Err(format!("{text:?} must be between 1% and 100%"));
            }
            return Ok(RamBudget::Share(share));
        }
        let bytes = parse_bytes(t)?;
        if bytes < 1 << 20 {
            return Err(format!("{text:?} is less than 1 MiB"));
        }
        Ok(RamBudget::Bytes(bytes))
    }

    /// The budget in bytes on a machine with `mem_total` bytes of RAM (`None` when it is a
    /// share and the total is unknown).
    pub fn bytes(self, mem_total: Option<u64>) -> Option<u64> {
        match self {
            RamBudget::Bytes(b) => Some(b),
            RamBudget::Share(p) => mem_total.map(|t| (t as f64 * p / 100.0) as u64),
        }
    }
}

impl fmt::Display for RamBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RamBudget::Share(p) => write!(f, "{p}% of RAM"),
            RamBudget::Bytes(b) => f.write_str(&human_bytes(*b)),
        }
    }
}

/// The engine's defaults for one RAM size, as written in a profile file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryToml {
    ram_gb: u32,
    ram_budget: String,
    context: usize,
    kv_type: String,
    sessions: usize,
}

/// The engine's defaults for one RAM size.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryProfile {
    /// The nominal RAM of the boards this applies to, in GB.
    pub ram_gb: u32,
    pub ram_budget: RamBudget,
    /// Context per session, in tokens.
    pub context: usize,
    pub kv_type: KvType,
    /// Session slots (KV caches kept for follow-up turns).
    pub sessions: usize,
}

/// One profile file, as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FamilyToml {
    name: String,
    description: String,
    #[serde(default)]
    arch: Option<String>,
    #[serde(rename = "match", default)]
    matches: BoardMatch,
    thermal: ThermalProfile,
    #[serde(default)]
    cpu: CpuProfile,
    #[serde(default)]
    memory: Vec<MemoryToml>,
}

/// A board family: one profile file, validated, with its memory variants.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    /// `raspberry-pi-5`.
    pub name: String,
    pub description: String,
    /// The architecture the family's boards run (`aarch64`, `x86_64`); a `generic-*`
    /// family is the fallback for its architecture.
    pub arch: Option<String>,
    pub matches: BoardMatch,
    pub thermal: ThermalProfile,
    pub cpu: CpuProfile,
    /// By increasing `ram_gb`.
    pub memory: Vec<MemoryProfile>,
    /// `built-in`, or the file it was read from.
    pub source: String,
}

/// One board profile: a family resolved to the variant for its RAM.
#[derive(Clone, Debug, PartialEq)]
pub struct BoardProfile {
    /// `raspberry-pi-5-8gb`: the family and the variant's RAM size.
    pub name: String,
    /// `raspberry-pi-5`.
    pub family: String,
    pub description: String,
    /// `built-in`, or the override file it came from.
    pub source: String,
    pub matches: BoardMatch,
    pub thermal: ThermalProfile,
    pub cpu: CpuProfile,
    pub memory: MemoryProfile,
}

/// Why a profile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("unknown board profile {name:?} (known: {known})")]
    Unknown { name: String, known: String },
    #[error("board profile {name}: {source}")]
    Parse {
        name: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("board profile {name}: {message}")]
    Invalid { name: String, message: String },
    #[error("board profiles in {dir}: {message}")]
    Directory { dir: PathBuf, message: String },
}

impl Family {
    /// Parses and validates one profile file; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Family, BoardError> {
        let raw: FamilyToml = toml::from_str(text).map_err(|e| BoardError::Parse {
            name: source.into(),
            source: Box::new(e),
        })?;
        let fail = |message: String| BoardError::Invalid {
            name: format!("{} ({source})", raw.name),
            message,
        };
        let mut memory = Vec::with_capacity(raw.memory.len());
        if raw.memory.is_empty() || raw.memory.len() > MAX_LIST {
            return Err(fail(format!(
                "needs 1 to {MAX_LIST} [[memory]] entries, one per RAM size"
            )));
        }
        for m in &raw.memory {
            let at = |message: String| fail(format!("[[memory]] ram_gb = {}: {message}", m.ram_gb));
            if !(1..=4096).contains(&m.ram_gb) {
                return Err(at("ram_gb must be between 1 and 4096".into()));
            }
            let ram_budget =
                RamBudget::parse(&m.ram_budget).map_err(|e| at(format!("ram_budget: {e}")))?;
            let kv_type = KvType::from_name(&m.kv_type)
                .ok_or_else(|| at(format!("kv_type {:?} is not f16 or q8_0", m.kv_type)))?;
            if !(16..=1 << 20).contains(&m.context) {
                return Err(at("context must be between 16 and 1048576 tokens".into()));
            }
            if !(1..=64).contains(&m.sessions) {
                return Err(at("sessions must be between 1 and 64".into()));
            }
            memory.push(MemoryProfile {
                ram_gb: m.ram_gb,
                ram_budget,
                context: m.context,
                kv_type,
                sessions: m.sessions,
            });
        }
        memory.sort_by_key(|m| m.ram_gb);
        if memory.windows(2).any(|w| w[0].ram_gb == w[1].ram_gb) {
            return Err(fail("two [[memory]] entries for the same ram_gb".into()));
        }
        let family = Family {
            name: raw.name,
            description: raw.description,
            arch: raw.arch,
            matches: raw.matches,
            thermal: raw.thermal,
            cpu: raw.cpu,
            memory,
            source: source.into(),
        };
        family.validate().map_err(|message| BoardError::Invalid {
            name: format!("{} ({source})", family.name),
            message,
        })?;
        Ok(family)
    }

    /// The name of the variant for `ram_gb`.
    pub fn variant_name(&self, ram_gb: u32) -> String {
        format!("{}-{ram_gb}gb", self.name)
    }

    /// The variant for a machine with `mem_total` bytes: the largest one whose nominal size
    /// `MemTotal` reaches (at 85% of it: the kernel sees less than the RAM on the box); the
    /// smallest when the RAM is unknown or below every variant (the memory plan then says
    /// whether the model fits).
    pub fn variant_for(&self, mem_total: Option<u64>) -> &MemoryProfile {
        let smallest = &self.memory[0];
        let Some(total) = mem_total else {
            return smallest;
        };
        self.memory
            .iter()
            .rev()
            .find(|m| total as f64 >= f64::from(m.ram_gb) * (1u64 << 30) as f64 * RAM_MATCH_SHARE)
            .unwrap_or(smallest)
    }

    /// This family resolved to one of its variants.
    pub fn resolve(&self, memory: &MemoryProfile) -> BoardProfile {
        BoardProfile {
            name: self.variant_name(memory.ram_gb),
            family: self.name.clone(),
            description: self.description.clone(),
            source: self.source.clone(),
            matches: self.matches.clone(),
            thermal: self.thermal.clone(),
            cpu: self.cpu.clone(),
            memory: memory.clone(),
        }
    }

    /// What about `host` says it is one of this family's boards, if anything.
    pub fn matches(&self, host: &HostInfo) -> Option<String> {
        if let Some(model) = host.model() {
            let lower = model.to_lowercase();
            if self
                .matches
                .model
                .iter()
                .any(|m| lower.contains(&m.to_lowercase()))
            {
                return Some(format!("model {model:?}"));
            }
        }
        self.matches
            .compatible
            .iter()
            .find(|c| host.device_tree.compatible.iter().any(|d| d == *c))
            .map(|c| format!("device-tree compatible {c:?}"))
    }

    pub(super) fn is_fallback(&self) -> bool {
        self.matches.model.is_empty() && self.matches.compatible.is_empty()
    }

    fn validate(&self) -> Result<(), String> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        };
        if !name_ok(&self.name) {
            return Err("name must be 1-64 lowercase letters, digits, '-' and '_'".into());
        }
        if self.arch.as_deref().is_some_and(|a| !name_ok(a)) {
            return Err("arch must be an architecture name such as aarch64 or x86_64".into());
        }
        let lists = [
            ("match.model", &self.matches.model),
            ("match.compatible", &self.matches.compatible),
            ("thermal.zones", &self.thermal.zones),
            ("cpu.features", &self.cpu.features),
        ];
        for (field, list) in lists {
            if list.len() > MAX_LIST {
                return Err(format!("{field} has more than {MAX_LIST} entries"));
            }
            if list
                .iter()
                .any(|s| s.trim().is_empty() || s.len() > 256 || s.contains('/'))
            {
                return Err(format!(
                    "{field} has an empty entry, one with '/' or one over 256 bytes"
                ));
            }
        }
        for (which, t) in [("soft", self.thermal.soft), ("hard", self.thermal.hard)] {
            if !LIMIT_RANGE_C.contains(&t.enter_c) || !LIMIT_RANGE_C.contains(&t.exit_c) {
                return Err(format!(
                    "thermal.{which} temperatures must be within {}..={} °C",
                    LIMIT_RANGE_C.start(),
                    LIMIT_RANGE_C.end()
                ));
            }
            if t.exit_c >= t.enter_c {
                return Err(format!(
                    "thermal.{which}.exit_c ({}) must be below enter_c ({}) for hysteresis",
                    t.exit_c, t.enter_c
                ));
            }
        }
        // The routing policy's ordering (`router::ThermalLimits::validate`): cooling below
        // the hard exit must land in the soft band, not straight back to full speed.
        let (soft, hard) = (self.thermal.soft, self.thermal.hard);
        if soft.enter_c > hard.exit_c {
            return Err(format!(
                "thermal.soft.enter_c ({}) must not be above thermal.hard.exit_c ({})",
                soft.enter_c, hard.exit_c
            ));
        }
        let cores = &self.cpu.big_cores;
        if cores.len() > MAX_CPU + 1 || cores.iter().any(|&c| c > MAX_CPU) {
            return Err(format!("cpu.big_cores must be CPU numbers up to {MAX_CPU}"));
        }
        let mut sorted = cores.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != cores.len() {
            return Err("cpu.big_cores lists a CPU twice".into());
        }
        if self.cpu.threads > MAX_CPU + 1 {
            return Err(format!("cpu.threads must be at most {}", MAX_CPU + 1));
        }
        Ok(())
    }
}
impl BoardProfile {
    /// Compute threads to use by default on a machine with `online_cpus` CPUs: the profile's
    /// figure, else one per big core, else one per CPU.
    pub fn default_threads(&self, online_cpus: usize) -> usize {
        if self.cpu.threads > 0 {
            self.cpu.threads
        } else if !self.cpu.big_cores.is_empty() {
            self.cpu.big_cores.len()
        } else {
            online_cpus.max(1)
        }
    }

    /// The features of [`CpuProfile::features`] that `host`'s `/proc/cpuinfo` does not list
    /// (none when it lists no features at all: nothing to compare).
    pub fn missing_features(&self, host: &HostInfo) -> Vec<String> {
        if host.cpuinfo.features.is_empty() {
            return Vec::new();
        }
        self.cpu
            .features
            .iter()
            .filter(|f| !host.cpuinfo.features.contains(f))
            .cloned()
            .collect()
    }
}
