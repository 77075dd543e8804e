//! Board profiles: how to recognise a supported board, which thermal zone speaks for its
//! SoC, its soft and hard temperature limits (each with separate enter and exit thresholds,
//! for hysteresis), its big cores and its default thread count.
//!
//! The profiles are the TOML files in the repository's `boards/` directory, compiled into
//! the binary so a deployed daemon needs nothing beside it. `boards/README.md` documents the
//! format; [`BoardProfile::from_toml`] reads a custom one.

use std::path::Path;

use serde::Deserialize;

use super::fsread;
use crate::router::ThermalLimits;

/// The built-in profiles, in detection order. `generic` matches nothing and is the fallback.
const BUILTIN: [(&str, &str); 5] = [
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
    ("generic", include_str!("../../../boards/generic.toml")),
];

/// The name of the profile used when no other matches.
pub const GENERIC: &str = "generic";

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

/// How to recognise the board from its device tree.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoardMatch {
    /// Case-insensitive substrings of `/proc/device-tree/model`.
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
    /// Above this, local generation sheds heat (fewer threads).
    pub soft: Threshold,
    /// Above this, requests that may leave the board spill to the cloud.
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
    /// alike.
    pub big_cores: Vec<usize>,
    /// Default compute threads; 0 means one per big core, or one per CPU when all are alike.
    pub threads: usize,
}

/// One board profile.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    /// Short name (`raspberry-pi-5`), as `--board` will take it.
    pub name: String,
    /// One line for people.
    pub description: String,
    #[serde(rename = "match", default)]
    pub matches: BoardMatch,
    pub thermal: ThermalProfile,
    #[serde(default)]
    pub cpu: CpuProfile,
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
}

/// What the device tree says about the board: its model and compatible strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceTree {
    /// `/proc/device-tree/model`, without the trailing NUL.
    pub model: Option<String>,
    /// `/proc/device-tree/compatible`, split at NULs.
    pub compatible: Vec<String>,
}

impl DeviceTree {
    /// Reads `proc/device-tree/{model,compatible}` under `root`, or the same files under
    /// `sys/firmware/devicetree/base` (which `/proc/device-tree` links to). Boards without a
    /// device tree (x86, ACPI) give an empty result.
    pub fn read(root: &Path) -> DeviceTree {
        let read = |name: &str| {
            ["proc/device-tree", "sys/firmware/devicetree/base"]
                .iter()
                .find_map(|dir| fsread::read_bytes(&root.join(dir).join(name)))
        };
        let strings = |bytes: Vec<u8>| -> Vec<String> {
            bytes
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .take(MAX_LIST)
                .map(|s| String::from_utf8_lossy(s).trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        DeviceTree {
            model: read("model").and_then(|b| strings(b).into_iter().next()),
            compatible: read("compatible").map(strings).unwrap_or_default(),
        }
    }
}

impl BoardProfile {
    /// Parses and validates a profile.
    pub fn from_toml(text: &str) -> Result<BoardProfile, BoardError> {
        let profile: BoardProfile = toml::from_str(text).map_err(|e| BoardError::Parse {
            name: "(custom)".into(),
            source: Box::new(e),
        })?;
        profile.validate()?;
        Ok(profile)
    }

    /// The built-in profile called `name`.
    pub fn by_name(name: &str) -> Result<BoardProfile, BoardError> {
        let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name) else {
            return Err(BoardError::Unknown {
                name: name.into(),
                known: Self::builtin_names().join(", "),
            });
        };
        Self::from_toml(text).map_err(|e| match e {
            BoardError::Parse { source, .. } => BoardError::Parse {
                name: name.into(),
                source,
            },
            other => other,
        })
    }

    /// The names of the built-in profiles, in detection order (`generic` last).
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// The generic profile: hottest zone, conservative limits.
    pub fn generic() -> BoardProfile {
        // The built-in profiles are validated by the tests; this cannot fail in a tested
        // build, but a default built in code keeps it infallible regardless.
        Self::by_name(GENERIC).unwrap_or_else(|e| {
            tracing::error!("{e}; using built-in generic limits");
            BoardProfile {
                name: GENERIC.into(),
                description: "Any Linux board".into(),
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
            }
        })
    }

    /// Recognises the board under `root` from its device tree; the generic profile when no
    /// built-in profile matches.
    pub fn detect(root: &Path) -> BoardProfile {
        let dt = DeviceTree::read(root);
        Self::detect_from(&dt)
    }

    /// [`detect`](Self::detect) for device-tree strings already read.
    pub fn detect_from(dt: &DeviceTree) -> BoardProfile {
        for name in Self::builtin_names() {
            match Self::by_name(name) {
                Ok(p) if p.matches(dt) => {
                    tracing::debug!("monitor: board {:?} is {}", dt.model, p.name);
                    return p;
                }
                Ok(_) => {}
                Err(e) => tracing::error!("{e}"),
            }
        }
        tracing::debug!(
            "monitor: board {:?} ({:?}) has no profile; using {GENERIC}",
            dt.model,
            dt.compatible
        );
        Self::generic()
    }

    /// Whether this profile describes the board with these device-tree strings.
    pub fn matches(&self, dt: &DeviceTree) -> bool {
        let model_hit = dt.model.as_deref().is_some_and(|model| {
            let model = model.to_lowercase();
            self.matches
                .model
                .iter()
                .any(|m| model.contains(&m.to_lowercase()))
        });
        let compatible_hit = self
            .matches
            .compatible
            .iter()
            .any(|c| dt.compatible.iter().any(|d| d == c));
        model_hit || compatible_hit
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

    fn validate(&self) -> Result<(), BoardError> {
        let fail = |message: String| {
            Err(BoardError::Invalid {
                name: self.name.clone(),
                message,
            })
        };
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return fail("name must be lowercase letters, digits and '-'".into());
        }
        let lists = [
            ("match.model", &self.matches.model),
            ("match.compatible", &self.matches.compatible),
            ("thermal.zones", &self.thermal.zones),
        ];
        for (field, list) in lists {
            if list.len() > MAX_LIST {
                return fail(format!("{field} has more than {MAX_LIST} entries"));
            }
            if list.iter().any(|s| s.trim().is_empty() || s.contains('/')) {
                return fail(format!("{field} has an empty entry or one with '/'"));
            }
        }
        for (which, t) in [("soft", self.thermal.soft), ("hard", self.thermal.hard)] {
            if !LIMIT_RANGE_C.contains(&t.enter_c) || !LIMIT_RANGE_C.contains(&t.exit_c) {
                return fail(format!(
                    "thermal.{which} temperatures must be within {}..={} °C",
                    LIMIT_RANGE_C.start(),
                    LIMIT_RANGE_C.end()
                ));
            }
            if t.exit_c >= t.enter_c {
                return fail(format!(
                    "thermal.{which}.exit_c ({}) must be below enter_c ({}) for hysteresis",
                    t.exit_c, t.enter_c
                ));
            }
        }
        // The routing policy's ordering (`router::ThermalLimits::validate`): cooling below
        // the hard exit must land in the soft band, not straight back to full speed.
        let (soft, hard) = (self.thermal.soft, self.thermal.hard);
        if soft.enter_c > hard.exit_c {
            return fail(format!(
                "thermal.soft.enter_c ({}) must not be above thermal.hard.exit_c ({})",
                soft.enter_c, hard.exit_c
            ));
        }
        let cores = &self.cpu.big_cores;
        if cores.len() > MAX_CPU + 1 || cores.iter().any(|&c| c > MAX_CPU) {
            return fail(format!("cpu.big_cores must be CPU numbers up to {MAX_CPU}"));
        }
        let mut sorted = cores.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != cores.len() {
            return fail("cpu.big_cores lists a CPU twice".into());
        }
        if self.cpu.threads > MAX_CPU + 1 {
            return fail(format!("cpu.threads must be at most {}", MAX_CPU + 1));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(model: &str, compatible: &[&str]) -> DeviceTree {
        DeviceTree {
            model: Some(model.into()),
            compatible: compatible.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn every_builtin_profile_is_valid_and_named_like_its_file() {
        for name in BoardProfile::builtin_names() {
            let p = BoardProfile::by_name(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.name, name);
            assert!(!p.description.is_empty());
            // Every profile's limits are acceptable to the routing policy as they stand.
            p.thermal
                .limits()
                .validate()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(BoardProfile::builtin_names().last(), Some(&GENERIC));
        assert_eq!(BoardProfile::generic().name, GENERIC);
    }

    #[test]
    fn the_numbers_the_router_relies_on() {
        let pi5 = BoardProfile::by_name("raspberry-pi-5").unwrap();
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
        let rk = BoardProfile::by_name("rk3588").unwrap();
        assert_eq!(rk.cpu.big_cores, [4, 5, 6, 7]);
        assert_eq!(rk.default_threads(8), 4);
        let orin = BoardProfile::by_name("jetson-orin").unwrap();
        assert!(orin.cpu.big_cores.is_empty());
        assert_eq!(orin.default_threads(12), 12);
        assert!(orin.thermal.zones.iter().any(|z| z == "cpu-thermal"));
        let generic = BoardProfile::generic();
        assert!(generic.thermal.zones.is_empty());
        assert_eq!(generic.default_threads(0), 1);
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let e = BoardProfile::by_name("raspberry-pi-6").unwrap_err();
        assert!(matches!(e, BoardError::Unknown { .. }));
        let text = e.to_string();
        assert!(
            text.contains("raspberry-pi-6") && text.contains("rk3588, jetson-orin, generic"),
            "{text}"
        );
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
                GENERIC,
            ),
            (
                "Raspberry Pi 3 Model B Plus Rev 1.3",
                &["brcm,bcm2837"],
                GENERIC,
            ),
        ];
        for (model, compatible, want) in cases {
            let found = BoardProfile::detect_from(&dt(model, compatible));
            assert_eq!(found.name, want, "{model}");
            for name in BoardProfile::builtin_names() {
                let p = BoardProfile::by_name(name).unwrap();
                assert_eq!(
                    p.matches(&dt(model, compatible)),
                    // The generic profile is the fallback and matches nothing itself.
                    name == want && want != GENERIC,
                    "{model} vs {name}"
                );
            }
        }
        assert_eq!(
            BoardProfile::detect_from(&DeviceTree::default()).name,
            GENERIC
        );
        // Case does not matter for model strings.
        assert_eq!(
            BoardProfile::detect_from(&dt("raspberry pi 5 model b", &[])).name,
            "raspberry-pi-5"
        );
    }

    #[test]
    fn refuses_invalid_profiles() {
        let base = r#"
            name = "test-board"
            description = "A test"
            [match]
            model = ["Test"]
            [thermal]
            zones = ["cpu-thermal"]
            soft = { enter_c = 70.0, exit_c = 65.0 }
            hard = { enter_c = 80.0, exit_c = 75.0 }
            [cpu]
            big_cores = [2, 3]
            threads = 2
        "#;
        let p = BoardProfile::from_toml(base).unwrap();
        assert_eq!(p.cpu.big_cores, [2, 3]);
        // The soft enter may equal the hard exit.
        let edge = base.replacen("exit_c = 75.0", "exit_c = 70.0", 1);
        assert!(BoardProfile::from_toml(&edge).is_ok());
        let broken = [
            ("exit_c = 65.0 }", "exit_c = 70.0 }", "hysteresis"),
            ("exit_c = 75.0 }", "exit_c = 85.0 }", "hysteresis"),
            (
                "enter_c = 80.0, exit_c = 75.0",
                "enter_c = 80.0, exit_c = 69.0",
                "must not be above thermal.hard.exit_c",
            ),
            (
                "enter_c = 80.0, exit_c = 75.0",
                "enter_c = 70.0, exit_c = 66.0",
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
        ];
        for (from, to, why) in broken {
            let text = base.replacen(from, to, 1);
            assert_ne!(text, base, "{from} not in the base profile");
            let e = BoardProfile::from_toml(&text).unwrap_err().to_string();
            assert!(e.contains(why), "{to}: {e}");
        }
    }
}
