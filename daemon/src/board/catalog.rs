//! The board profiles available and choosing one: the built-in profile files (the
//! repository's `boards/*.toml`, compiled in), the override directory's files read and
//! validated (bounded in count and size), detection of the machine from its [`HostInfo`]
//! and selection by name, with the reasons for the choice.

use std::path::{Path, PathBuf};

use super::HostInfo;
use super::profile::{
    BoardError, BoardMatch, BoardProfile, CpuProfile, Family, MemoryProfile, RAM_MATCH_SHARE,
    RamBudget, ThermalProfile, Threshold,
};
use crate::model::KvType;
use crate::sysfs;
use crate::units::human_bytes;

/// The built-in profile files, in detection order. The `generic-*` families match nothing
/// and are the fallback for their architecture.
pub(super) const BUILTIN: [(&str, &str); 6] = [
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
/// The most profile files read from an override directory.
const MAX_OVERRIDE_FILES: usize = 64;
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
