//! Board profiles: how to recognise a supported board, which thermal zone speaks for its
//! SoC and where its soft and hard temperature limits lie (with hysteresis), its big cores,
//! default thread count and expected CPU features, and the engine's defaults for each
//! amount of RAM it is sold with (RAM budget, context, KV cache type, sessions).
//!
//! A profile file describes one board family (`raspberry-pi-5`) with a `[[memory]]` entry
//! per RAM size; resolving it against a machine's `MemTotal` gives one [`BoardProfile`]
//! named after the variant (`raspberry-pi-5-8gb`). The built-in files are the repository's
//! `boards/*.toml`, compiled into the binary; a [`Catalog`] adds files from an override
//! directory (`/etc/spillway/boards/` on a board), which replace built-in families of the
//! same name and are tried first. `boards/README.md` documents the format.
//!
//! Detection ([`Catalog::detect`]) reads what the machine says about itself
//! ([`HostInfo`]: device tree, `/proc/cpuinfo`, `MemTotal`) under a root directory, so
//! tests run it on files captured from each board.

mod host;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use host::{CpuInfo, DeviceTree, HostInfo};

use crate::model::KvType;
use crate::router::ThermalLimits;
use crate::sysfs;
use crate::units::{human_bytes, parse_bytes};

/// The built-in profile files, in detection order. The `generic-*` families match nothing
/// and are the fallback for their architecture.
const BUILTIN: [(&str, &str); 6] = [
    (
        "raspberry-pi-5",
        include_str!("../../../boards/raspberry-pi-5.toml"),
    ),
    (
        "raspberry-pi-4",
        include_str!("../../../boards/raspberry-pi-4.toml"),
    ),
    ("rk3588", include_str!("../../../boards/rk3588.toml")),
    (
        "jetson-orin",
        include_str!("../../../boards/jetson-orin.toml"),
    ),
    (
        "generic-aarch64",
        include_str!("../../../boards/generic-aarch64.toml"),
    ),
    (
        "generic-x86_64",
        include_str!("../../../boards/generic-x86_64.toml"),
    ),
];

/// `generic` names the generic family of the machine's architecture.
pub const GENERIC: &str = "generic";

/// A variant applies when `MemTotal` reaches this share of its nominal size: boards are
/// sold by the GB, and the kernel sees less (firmware, the GPU's CMA area, the kernel
/// image). Measured: a 4 GB Pi 4 shows 3.66 GiB (91%), an 8 GB Orin Nano 7.44 GiB (93%).
const RAM_MATCH_SHARE: f64 = 0.85;

/// Limits on the lists in a profile, so a custom file cannot ask for absurd amounts.
const MAX_LIST: usize = 64;
/// The most profile files read from an override directory.
const MAX_OVERRIDE_FILES: usize = 64;
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

    fn is_fallback(&self) -> bool {
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
    /// The built-in profile called `name` (a variant such as `raspberry-pi-5-8gb`, or a
    /// family, resolved to its smallest variant).
    pub fn by_name(name: &str) -> Result<BoardProfile, BoardError> {
        Catalog::builtin().profile(name, &HostInfo::default())
    }

    /// Recognises the machine under `root` among the built-in profiles (see
    /// [`Catalog::detect`]).
    pub fn detect(root: &Path) -> BoardProfile {
        Catalog::builtin().detect(&HostInfo::read(root)).profile
    }

    /// The generic profile of this build's architecture, smallest variant.
    pub fn generic() -> BoardProfile {
        Catalog::builtin().generic(&HostInfo::default())
    }

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

/// A profile chosen for a machine, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub profile: BoardProfile,
    /// How the family was chosen (`model "Raspberry Pi 5 Model B Rev 1.0"`, `named in the
    /// configuration`, `no profile matches`).
    pub family_reason: String,
    /// How the memory variant was chosen.
    pub variant_reason: String,
}

/// The profiles available: overrides first, then the built-in families they do not replace.
#[derive(Clone, Debug)]
pub struct Catalog {
    families: Vec<Family>,
}

impl Catalog {
    /// The built-in profiles. They are validated by the tests; one that failed to parse in
    /// an untested build is logged and left out rather than taking the daemon down.
    pub fn builtin() -> Catalog {
        let families = BUILTIN
            .iter()
            .filter_map(|(name, text)| match Family::from_toml(text, "built-in") {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::error!("built-in board profile {name}: {e}");
                    None
                }
            })
            .collect();
        Catalog { families }
    }

    /// The built-in profiles plus the `*.toml` files in `dir` (when it exists): a file whose
    /// family name is a built-in one replaces it; the others are added. Override files are
    /// tried first in detection, in file-name order.
    pub fn with_overrides(dir: &Path) -> Result<Catalog, BoardError> {
        let mut catalog = Catalog::builtin();
        let fail = |message: String| BoardError::Directory {
            dir: dir.to_owned(),
            message,
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(catalog),
            Err(e) => return Err(fail(e.to_string())),
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .take(MAX_OVERRIDE_FILES + 1)
            .collect();
        if files.len() > MAX_OVERRIDE_FILES {
            return Err(fail(format!(
                "more than {MAX_OVERRIDE_FILES} profile files"
            )));
        }
        files.sort();
        let mut overrides: Vec<Family> = Vec::new();
        for path in files {
            let shown = path.display().to_string();
            let text = sysfs::read_text(&path)
                .ok_or_else(|| fail(format!("{shown}: unreadable, not UTF-8 or over 64 KiB")))?;
            let family = Family::from_toml(&text, &shown)?;
            if overrides.iter().any(|f| f.name == family.name) {
                return Err(fail(format!(
                    "two files define the family {:?}",
                    family.name
                )));
            }
            tracing::debug!("board profile {} from {shown}", family.name);
            overrides.push(family);
        }
        catalog
            .families
            .retain(|b| !overrides.iter().any(|o| o.name == b.name));
        overrides.append(&mut catalog.families);
        catalog.families = overrides;
        Ok(catalog)
    }

    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// Every name [`profile`](Self::profile) takes: families and their variants.
    pub fn names(&self) -> Vec<String> {
        self.families
            .iter()
            .flat_map(|f| {
                std::iter::once(f.name.clone())
                    .chain(f.memory.iter().map(|m| f.variant_name(m.ram_gb)))
            })
            .collect()
    }

    /// The profile called `name`: a variant (`raspberry-pi-5-8gb`), or a family
    /// (`raspberry-pi-5`, or `generic` for this machine's architecture) resolved to the
    /// variant for `host`'s RAM.
    pub fn profile(&self, name: &str, host: &HostInfo) -> Result<BoardProfile, BoardError> {
        Ok(self.select(name, host)?.profile)
    }

    /// [`profile`](Self::profile), or detection when `choice` is `auto` (or empty), with
    /// the reasons.
    pub fn select(&self, choice: &str, host: &HostInfo) -> Result<Selection, BoardError> {
        if choice.is_empty() || choice == "auto" {
            return Ok(self.detect(host));
        }
        let family_name = if choice == GENERIC {
            self.generic_family(&host.arch).map(|f| f.name.as_str())
        } else {
            Some(choice)
        };
        if let Some(f) = family_name.and_then(|n| self.families.iter().find(|f| f.name == n)) {
            return Ok(self.for_ram(f, host, format!("named {choice:?}")));
        }
        for f in &self.families {
            if let Some(m) = f.memory.iter().find(|m| f.variant_name(m.ram_gb) == choice) {
                return Ok(Selection {
                    profile: f.resolve(m),
                    family_reason: format!("named {choice:?}"),
                    variant_reason: format!("named {choice:?}"),
                });
            }
        }
        Err(BoardError::Unknown {
            name: choice.into(),
            known: self.names().join(", "),
        })
    }

    /// Recognises the machine: the first family (overrides, then the built-in order) whose
    /// model substrings or compatible entries match, else the generic family of its
    /// architecture; then the variant for its RAM.
    pub fn detect(&self, host: &HostInfo) -> Selection {
        for f in self.families.iter().filter(|f| !f.is_fallback()) {
            if let Some(why) = f.matches(host) {
                return self.for_ram(f, host, why);
            }
        }
        let why = match host.model() {
            Some(model) => format!("no profile matches model {model:?} ({})", host.arch),
            None => format!("no device tree; {} machine", host.arch),
        };
        match self.generic_family(&host.arch) {
            Some(f) => self.for_ram(f, host, why),
            None => Selection {
                profile: self.generic(host),
                family_reason: why,
                variant_reason: String::new(),
            },
        }
    }

    /// The generic profile for `host`'s architecture, with the variant for its RAM (or the
    /// smallest). Never fails: when no generic family exists (a broken override set), a
    /// built-in-code fallback with conservative limits stands in.
    fn generic(&self, host: &HostInfo) -> BoardProfile {
        if let Some(f) = self.generic_family(&host.arch) {
            return f.resolve(f.variant_for(host.mem_total));
        }
        tracing::error!("no generic board profile; using built-in conservative limits");
        BoardProfile {
            name: format!("{GENERIC}-fallback"),
            family: GENERIC.into(),
            description: "Unrecognised machine".into(),
            source: "built-in code".into(),
            matches: BoardMatch::default(),
            thermal: ThermalProfile {
                zones: Vec::new(),
                soft: Threshold {
                    enter_c: 70.0,
                    exit_c: 65.0,
                },
                hard: Threshold {
                    enter_c: 80.0,
                    exit_c: 75.0,
                },
            },
            cpu: CpuProfile::default(),
            memory: MemoryProfile {
                ram_gb: 4,
                ram_budget: RamBudget::Share(75.0),
                context: 4096,
                kv_type: KvType::Q8_0,
                sessions: 1,
            },
        }
    }

    /// The fallback family for `arch`: `generic-<arch>`, else any family without match
    /// rules.
    fn generic_family(&self, arch: &str) -> Option<&Family> {
        let name = format!("{GENERIC}-{arch}");
        self.families
            .iter()
            .find(|f| f.name == name)
            .or_else(|| self.families.iter().find(|f| f.is_fallback()))
    }

    fn for_ram(&self, f: &Family, host: &HostInfo, family_reason: String) -> Selection {
        let m = f.variant_for(host.mem_total);
        let variant_reason = match host.mem_total {
            None => "MemTotal unknown: the smallest variant".to_string(),
            Some(t) if t as f64 >= f64::from(m.ram_gb) * (1u64 << 30) as f64 * RAM_MATCH_SHARE => {
                format!("MemTotal {}", human_bytes(t))
            }
            Some(t) => format!(
                "MemTotal {} is below every variant; the smallest ({} GB)",
                human_bytes(t),
                m.ram_gb
            ),
        };
        Selection {
            profile: f.resolve(m),
            family_reason,
            variant_reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(model: &str, compatible: &[&str], mem_gib: f64) -> HostInfo {
        HostInfo {
            device_tree: DeviceTree {
                model: Some(model.into()),
                compatible: compatible.iter().map(|s| s.to_string()).collect(),
            },
            mem_total: Some((mem_gib * (1u64 << 30) as f64) as u64),
            arch: "aarch64".into(),
            ..HostInfo::default()
        }
    }

    #[test]
    fn every_builtin_profile_is_valid_and_named_like_its_file() {
        let catalog = Catalog::builtin();
        assert_eq!(
            catalog.families().len(),
            BUILTIN.len(),
            "a built-in failed to parse"
        );
        for (f, (name, _)) in catalog.families().iter().zip(BUILTIN) {
            assert_eq!(f.name, name);
            assert!(!f.description.is_empty());
            assert_eq!(f.source, "built-in");
            // Every profile's limits are acceptable to the routing policy as they stand.
            f.thermal
                .limits()
                .validate()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(f.arch.is_some(), "{name} names its architecture");
            assert!(!f.cpu.features.is_empty(), "{name} lists expected features");
        }
        assert!(BoardProfile::generic().family.starts_with("generic-"));
    }

    #[test]
    fn the_boards_and_ram_sizes_the_product_supports() {
        let names = Catalog::builtin().names();
        for want in [
            "raspberry-pi-4-4gb",
            "raspberry-pi-4-8gb",
            "raspberry-pi-5-4gb",
            "raspberry-pi-5-8gb",
            "raspberry-pi-5-16gb",
            "jetson-orin-8gb",
            "rk3588-8gb",
            "rk3588-16gb",
            "generic-aarch64-4gb",
            "generic-x86_64-8gb",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
    }

    #[test]
    fn the_numbers_the_router_and_engine_rely_on() {
        let pi5 = BoardProfile::by_name("raspberry-pi-5-8gb").unwrap();
        assert_eq!(pi5.family, "raspberry-pi-5");
        assert_eq!(pi5.thermal.zones, ["cpu-thermal"]);
        assert_eq!(
            (pi5.thermal.soft, pi5.thermal.hard),
            (
                Threshold {
                    enter_c: 75.0,
                    exit_c: 70.0
                },
                Threshold {
                    enter_c: 82.0,
                    exit_c: 78.0
                }
            )
        );
        assert_eq!(pi5.memory.kv_type, KvType::F16);
        assert_eq!(pi5.cpu.features, ["asimd", "asimddp"]);
        let rk = BoardProfile::by_name("rk3588").unwrap();
        assert_eq!(rk.cpu.big_cores, [4, 5, 6, 7]);
        assert_eq!(rk.default_threads(8), 4);
        let orin = BoardProfile::by_name("jetson-orin").unwrap();
        assert!(orin.cpu.big_cores.is_empty());
        assert_eq!(orin.default_threads(12), 12);
        // A family name alone resolves to its smallest variant without a host.
        let pi4 = BoardProfile::by_name("raspberry-pi-4").unwrap();
        assert_eq!(pi4.name, "raspberry-pi-4-4gb");
        assert_eq!(pi4.memory.kv_type, KvType::Q8_0);
    }

    #[test]
    fn the_variant_follows_memtotal() {
        let catalog = Catalog::builtin();
        let pi5 = |gib: f64| {
            catalog
                .detect(&host("Raspberry Pi 5 Model B Rev 1.0", &[], gib))
                .profile
                .name
        };
        // MemTotal sits below the RAM on the box.
        assert_eq!(pi5(3.66), "raspberry-pi-5-4gb");
        assert_eq!(pi5(7.86), "raspberry-pi-5-8gb");
        assert_eq!(pi5(15.8), "raspberry-pi-5-16gb");
        // A 2 GB board: below every variant, the smallest, said so.
        let small = catalog.detect(&host("Raspberry Pi 5 Model B Rev 1.0", &[], 1.9));
        assert_eq!(small.profile.name, "raspberry-pi-5-4gb");
        assert!(
            small.variant_reason.contains("below every variant"),
            "{small:?}"
        );
        // Unknown RAM: the smallest.
        let mut unknown = host("Raspberry Pi 5 Model B Rev 1.0", &[], 8.0);
        unknown.mem_total = None;
        assert_eq!(catalog.detect(&unknown).profile.name, "raspberry-pi-5-4gb");
        // A named variant wins over the RAM; a named family follows it.
        let h = host("whatever", &[], 7.9);
        assert_eq!(
            catalog.profile("raspberry-pi-4-4gb", &h).unwrap().name,
            "raspberry-pi-4-4gb"
        );
        assert_eq!(
            catalog.profile("raspberry-pi-4", &h).unwrap().name,
            "raspberry-pi-4-8gb"
        );
        assert_eq!(
            catalog.profile("generic", &h).unwrap().name,
            "generic-aarch64-8gb"
        );
    }

    #[test]
    fn budgets_parse_and_resolve() {
        assert_eq!(RamBudget::parse("75%"), Ok(RamBudget::Share(75.0)));
        assert_eq!(RamBudget::parse(" 2.5GiB "), Ok(RamBudget::Bytes(5 << 29)));
        for bad in ["0%", "101%", "x%", "lots", "12"] {
            assert!(RamBudget::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(RamBudget::Share(75.0).bytes(Some(4 << 30)), Some(3 << 30));
        assert_eq!(RamBudget::Share(75.0).bytes(None), None);
        assert_eq!(RamBudget::Bytes(7).bytes(None), Some(7));
    }

    #[test]
    fn each_board_is_recognised_by_its_own_profile_only() {
        let cases = [
            (
                "Raspberry Pi 5 Model B Rev 1.0",
                &["raspberrypi,5-model-b", "brcm,bcm2712"][..],
                "raspberry-pi-5",
            ),
            (
                "Raspberry Pi Compute Module 5 Rev 1.0",
                &["brcm,bcm2712"],
                "raspberry-pi-5",
            ),
            (
                "Raspberry Pi 4 Model B Rev 1.5",
                &["raspberrypi,4-model-b", "brcm,bcm2711"],
                "raspberry-pi-4",
            ),
            ("Raspberry Pi 400 Rev 1.0", &[], "raspberry-pi-4"),
            (
                "Radxa ROCK 5B",
                &["radxa,rock-5b", "rockchip,rk3588"],
                "rk3588",
            ),
            // Orange Pi 5 is an RK3588S board: "Pi 5" must not make it a Raspberry Pi.
            (
                "Orange Pi 5",
                &["xunlong,orangepi-5", "rockchip,rk3588s"],
                "rk3588",
            ),
            (
                "NVIDIA Jetson Orin Nano Developer Kit",
                &["nvidia,p3768-0000+p3767-0005", "nvidia,tegra234"],
                "jetson-orin",
            ),
            ("NVIDIA Jetson AGX Orin Developer Kit", &[], "jetson-orin"),
            (
                "Pine64 RockPro64 v2.1",
                &["pine64,rockpro64", "rockchip,rk3399"],
                "generic-aarch64",
            ),
            (
                "Raspberry Pi 3 Model B Plus Rev 1.3",
                &["brcm,bcm2837"],
                "generic-aarch64",
            ),
            // Case does not matter for model strings.
            ("raspberry pi 5 model b", &[], "raspberry-pi-5"),
        ];
        let catalog = Catalog::builtin();
        for (model, compatible, want) in cases {
            let h = host(model, compatible, 8.0);
            let found = catalog.detect(&h);
            assert_eq!(found.profile.family, want, "{model}");
            for f in catalog.families() {
                assert_eq!(
                    f.matches(&h).is_some(),
                    // The generic profiles are the fallback and match nothing themselves.
                    f.name == want && !want.starts_with("generic"),
                    "{model} vs {}",
                    f.name
                );
            }
        }
        let x86 = HostInfo {
            arch: "x86_64".into(),
            ..HostInfo::default()
        };
        assert_eq!(catalog.detect(&x86).profile.family, "generic-x86_64");
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let e = BoardProfile::by_name("raspberry-pi-6").unwrap_err();
        assert!(matches!(e, BoardError::Unknown { .. }));
        let text = e.to_string();
        assert!(
            text.contains("raspberry-pi-6")
                && text.contains("rk3588-16gb, rk3588-32gb, jetson-orin"),
            "{text}"
        );
    }

    const BASE: &str = r#"
        name = "test-board"
        description = "A test"
        arch = "aarch64"
        [match]
        model = ["Test"]
        [thermal]
        zones = ["cpu-thermal"]
        soft = { enter_c = 70.0, exit_c = 65.0 }
        hard = { enter_c = 80.0, exit_c = 75.0 }
        [cpu]
        big_cores = [2, 3]
        threads = 2
        features = ["asimd"]
        [[memory]]
        ram_gb = 8
        ram_budget = "6GiB"
        context = 8192
        kv_type = "f16"
        sessions = 2
        [[memory]]
        ram_gb = 4
        ram_budget = "70%"
        context = 4096
        kv_type = "q8_0"
        sessions = 1
    "#;

    #[test]
    fn refuses_invalid_profiles() {
        let f = Family::from_toml(BASE, "test").unwrap();
        assert_eq!(f.cpu.big_cores, [2, 3]);
        // Variants are sorted by RAM.
        assert_eq!(
            f.memory.iter().map(|m| m.ram_gb).collect::<Vec<_>>(),
            [4, 8]
        );
        // The soft enter may equal the hard exit.
        let edge = BASE.replacen("exit_c = 75.0", "exit_c = 70.0", 1);
        assert!(Family::from_toml(&edge, "test").is_ok());
        let broken = [
            ("exit_c = 65.0 }", "exit_c = 70.0 }", "hysteresis"),
            ("exit_c = 75.0 }", "exit_c = 85.0 }", "hysteresis"),
            (
                "enter_c = 80.0, exit_c = 75.0",
                "enter_c = 80.0, exit_c = 69.0",
                "must not be above thermal.hard.exit_c",
            ),
            ("enter_c = 80.0", "enter_c = 200.0", "within"),
            ("enter_c = 70.0", "enter_c = nan", "within"),
            ("[2, 3]", "[2, 2]", "twice"),
            ("[2, 3]", "[2, 4096]", "CPU numbers"),
            ("\"test-board\"", "\"Test Board\"", "lowercase"),
            ("[\"cpu-thermal\"]", "[\"../x\"]", "'/'"),
            ("threads = 2", "threads = 2\nturbo = true", "unknown field"),
            ("threads = 2", "threads = -1", "invalid value"),
            ("ram_gb = 4", "ram_gb = 8", "same ram_gb"),
            ("ram_gb = 4", "ram_gb = 0", "ram_gb must be"),
            ("\"70%\"", "\"170%\"", "ram_budget"),
            ("\"q8_0\"", "\"q4_0\"", "kv_type"),
            ("context = 4096", "context = 8", "context must be"),
            ("sessions = 1", "sessions = 0", "sessions must be"),
            ("arch = \"aarch64\"", "arch = \"ARM 64\"", "arch must be"),
        ];
        for (from, to, why) in broken {
            let text = BASE.replacen(from, to, 1);
            assert_ne!(text, BASE, "{from} not in the base profile");
            let e = Family::from_toml(&text, "test").unwrap_err().to_string();
            assert!(e.contains(why), "{to}: {e}");
        }
        let no_memory = BASE.split("[[memory]]").next().unwrap();
        assert!(
            Family::from_toml(no_memory, "test")
                .unwrap_err()
                .to_string()
                .contains("[[memory]]")
        );
    }

    #[test]
    fn override_files_replace_and_add_families() {
        let dir = std::env::temp_dir().join(format!("spillway-boards-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A replacement Raspberry Pi 5 with other limits, and a new board.
        let pi5 = Catalog::builtin()
            .families()
            .iter()
            .find(|f| f.name == "raspberry-pi-5")
            .cloned()
            .unwrap();
        let replaced = BOARD_PI5_OVERRIDE;
        std::fs::write(dir.join("pi5.toml"), replaced).unwrap();
        std::fs::write(dir.join("test.toml"), BASE).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a profile").unwrap();
        let catalog = Catalog::with_overrides(&dir).unwrap();
        let mine = catalog
            .families()
            .iter()
            .find(|f| f.name == "raspberry-pi-5")
            .unwrap();
        assert_ne!(mine.thermal, pi5.thermal);
        assert!(mine.source.ends_with("pi5.toml"), "{}", mine.source);
        assert_eq!(
            catalog
                .families()
                .iter()
                .filter(|f| f.name == "raspberry-pi-5")
                .count(),
            1
        );
        let h = host("Test board rev 2", &[], 8.0);
        let found = catalog.detect(&h);
        assert_eq!(found.profile.name, "test-board-8gb");
        assert_eq!(found.profile.memory.ram_budget, RamBudget::Bytes(6 << 30));
        // A broken file is an error naming it, not a silent fallback.
        std::fs::write(dir.join("zz.toml"), "name = 3").unwrap();
        let e = Catalog::with_overrides(&dir).unwrap_err().to_string();
        assert!(e.contains("zz.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        // No directory: the built-ins.
        assert_eq!(
            Catalog::with_overrides(&dir).unwrap().families().len(),
            BUILTIN.len()
        );
    }

    const BOARD_PI5_OVERRIDE: &str = r#"
        name = "raspberry-pi-5"
        description = "Raspberry Pi 5 in a fanless case"
        arch = "aarch64"
        [match]
        model = ["Raspberry Pi 5"]
        [thermal]
        zones = ["cpu-thermal"]
        soft = { enter_c = 65.0, exit_c = 60.0 }
        hard = { enter_c = 72.0, exit_c = 68.0 }
        [[memory]]
        ram_gb = 8
        ram_budget = "60%"
        context = 4096
        kv_type = "q8_0"
        sessions = 1
    "#;
}
