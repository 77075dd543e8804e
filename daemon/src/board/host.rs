//! What the machine says about itself: the device tree's model and compatible strings,
//! `/proc/cpuinfo` (cores, features, the Raspberry Pi's `Model` line), `MemTotal`, the
//! service cgroup's memory limit and the cores' relative capacity. Everything is read under
//! a root directory (`/` on a board; a captured tree in tests), through the bounded readers
//! of [`crate::sysfs`]: these files are outside input like any other.

use std::path::Path;

use crate::sysfs;
use crate::sysfs::memory;

/// The most processors and list entries taken from any of these files.
const MAX_LIST: usize = 1024;
/// `/proc/cpuinfo` grows with the core count (~1.3 KiB per x86 core); 1 MiB covers the
/// largest servers while keeping the read bounded.
const MAX_CPUINFO_BYTES: u64 = 1 << 20;

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
    /// `sys/firmware/devicetree/base` (which `/proc/device-tree` links to). Machines without
    /// a device tree (x86, ACPI) give an empty result.
    pub fn read(root: &Path) -> DeviceTree {
        let read = |name: &str| {
            ["proc/device-tree", "sys/firmware/devicetree/base"]
                .iter()
                .find_map(|dir| sysfs::read_bytes(&root.join(dir).join(name)))
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

/// The parts of `/proc/cpuinfo` that identify a board and its cores.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// `processor` entries.
    pub processors: usize,
    /// Features every processor lists (`Features` on ARM, `flags` on x86).
    pub features: Vec<String>,
    /// The architecture the file describes: `aarch64` (ARMv8 `CPU architecture: 8`), `arm`
    /// (ARMv7), `x86_64` (a `vendor_id`), or `None` when it does not say.
    pub arch: Option<&'static str>,
    /// The Raspberry Pi kernel's `Model` line (the same string as the device tree's).
    pub model: Option<String>,
    /// x86's `model name` of the first processor.
    pub model_name: Option<String>,
    /// ARM's `CPU part` of each processor, in order (`0xd0b` is a Cortex-A76).
    pub parts: Vec<String>,
}

impl CpuInfo {
    /// Parses `/proc/cpuinfo`. Lines are `key<TAB or spaces>: value`; keys are matched
    /// exactly, so x86's lowercase `model` is not the Pi's `Model`.
    pub fn parse(text: &str) -> CpuInfo {
        let mut info = CpuInfo::default();
        let mut common: Option<Vec<String>> = None;
        let mut cpu_architecture = None;
        let mut vendor = false;
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            match key {
                "processor" => info.processors += 1,
                "Features" | "flags" => {
                    let these: Vec<String> = value
                        .split_whitespace()
                        .take(MAX_LIST)
                        .map(str::to_owned)
                        .collect();
                    common = Some(match common {
                        None => these,
                        Some(mut all) => {
                            all.retain(|f| these.contains(f));
                            all
                        }
                    });
                }
                "CPU architecture" => cpu_architecture = Some(value.to_owned()),
                "vendor_id" => vendor = true,
                "Model" if !value.is_empty() => info.model = Some(value.to_owned()),
                "model name" if info.model_name.is_none() => {
                    info.model_name = Some(value.to_owned())
                }
                "CPU part" if info.parts.len() < MAX_LIST => info.parts.push(value.to_owned()),
                _ => {}
            }
        }
        info.processors = info.processors.min(MAX_LIST);
        info.features = common.unwrap_or_default();
        info.arch = match cpu_architecture.as_deref() {
            Some("8") | Some("AArch64") => Some("aarch64"),
            Some(v) if v.starts_with('7') => Some("arm"),
            _ if vendor => Some("x86_64"),
            _ => None,
        };
        info
    }

    /// The cores in words, e.g. `4x Cortex-A76 + 4x Cortex-A55`, from the `CPU part`s.
    pub fn cores(&self) -> Option<String> {
        if self.parts.is_empty() {
            return self
                .model_name
                .as_ref()
                .map(|m| format!("{}x {m}", self.processors));
        }
        let mut groups: Vec<(&str, usize)> = Vec::new();
        for part in &self.parts {
            let name = arm_core_name(part);
            match groups.iter_mut().find(|(n, _)| *n == name) {
                Some((_, count)) => *count += 1,
                None => groups.push((name, 1)),
            }
        }
        // Big cores first: they are listed last on most big.LITTLE SoCs.
        groups.reverse();
        Some(
            groups
                .iter()
                .map(|(name, n)| format!("{n}x {name}"))
                .collect::<Vec<_>>()
                .join(" + "),
        )
    }
}

/// Arm's names for the `CPU part` numbers of the cores found on supported boards.
fn arm_core_name(part: &str) -> &'static str {
    match part.to_ascii_lowercase().as_str() {
        "0xd03" => "Cortex-A53",
        "0xd04" => "Cortex-A35",
        "0xd05" => "Cortex-A55",
        "0xd07" => "Cortex-A57",
        "0xd08" => "Cortex-A72",
        "0xd09" => "Cortex-A73",
        "0xd0a" => "Cortex-A75",
        "0xd0b" => "Cortex-A76",
        "0xd0c" => "Neoverse-N1",
        "0xd0d" => "Cortex-A77",
        "0xd41" => "Cortex-A78",
        "0xd42" => "Cortex-A78AE",
        "0xd44" => "Cortex-X1",
        "0xd46" => "Cortex-A510",
        "0xd47" => "Cortex-A710",
        "0xd48" => "Cortex-X2",
        "0xd4b" => "Cortex-A78C",
        "0xd80" => "Cortex-A520",
        "0xd81" => "Cortex-A720",
        _ => "unknown core",
    }
}

/// Everything board detection and the engine's defaults look at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostInfo {
    pub device_tree: DeviceTree,
    pub cpuinfo: CpuInfo,
    /// `MemTotal` from `/proc/meminfo`, in bytes.
    pub mem_total: Option<u64>,
    /// The lower of this process's cgroup `memory.high` and `memory.max` (systemd's
    /// `MemoryHigh=`/`MemoryMax=`), when one is set.
    pub cgroup_limit: Option<u64>,
    /// `cpu_capacity` of each CPU (`/sys/devices/system/cpu/cpuN/cpu_capacity`, on ARM
    /// kernels): big.LITTLE cores differ.
    pub cpu_capacity: Vec<(usize, u32)>,
    /// The architecture: what `/proc/cpuinfo` describes, else this build's.
    pub arch: String,
}

impl HostInfo {
    /// Reads the machine under `root`.
    pub fn read(root: &Path) -> HostInfo {
        let cpuinfo = sysfs::read_bytes_max(&root.join("proc/cpuinfo"), MAX_CPUINFO_BYTES)
            .map(|b| CpuInfo::parse(&String::from_utf8_lossy(&b)))
            .unwrap_or_default();
        let cgroup_limit = memory::cgroup_memory(root).and_then(|c| {
            [c.max, c.high]
                .into_iter()
                .flatten()
                .filter_map(memory::Limit::bytes)
                .min()
        });
        let cpu_capacity =
            sysfs::numbered_entries(&root.join("sys/devices/system/cpu"), "cpu", MAX_LIST)
                .into_iter()
                .filter_map(|(n, dir)| {
                    let cap =
                        sysfs::read_value(&dir.join("cpu_capacity"), |t| t.parse::<u32>().ok())?;
                    Some((n as usize, cap))
                })
                .collect();
        HostInfo {
            arch: cpuinfo.arch.unwrap_or(std::env::consts::ARCH).to_owned(),
            device_tree: DeviceTree::read(root),
            cpuinfo,
            mem_total: memory::meminfo(root).total,
            cgroup_limit,
            cpu_capacity,
        }
    }

    /// The board's model string: the device tree's, else the Raspberry Pi kernel's
    /// `/proc/cpuinfo` `Model` line.
    pub fn model(&self) -> Option<&str> {
        self.device_tree
            .model
            .as_deref()
            .or(self.cpuinfo.model.as_deref())
    }

    /// The fastest cores when the kernel reports cores of different capacity (big.LITTLE),
    /// else none.
    pub fn big_cores(&self) -> Vec<usize> {
        let Some(max) = self.cpu_capacity.iter().map(|&(_, c)| c).max() else {
            return Vec::new();
        };
        if self.cpu_capacity.iter().all(|&(_, c)| c == max) {
            return Vec::new();
        }
        self.cpu_capacity
            .iter()
            .filter(|&&(_, c)| c == max)
            .map(|&(cpu, _)| cpu)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_arm_cpuinfo_with_tabs_or_spaces() {
        let text = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm asimddp\n\
                    CPU architecture: 8\nCPU part\t: 0xd05\n\n\
                    processor       : 1\nFeatures        : fp asimd asimddp\n\
                    CPU architecture: 8\nCPU part        : 0xd0b\n\n\
                    Model\t\t: Raspberry Pi 5 Model B Rev 1.0\n";
        let info = CpuInfo::parse(text);
        assert_eq!(info.processors, 2);
        assert_eq!(info.features, ["fp", "asimd", "asimddp"]);
        assert_eq!(info.arch, Some("aarch64"));
        assert_eq!(
            info.model.as_deref(),
            Some("Raspberry Pi 5 Model B Rev 1.0")
        );
        assert_eq!(
            info.cores().as_deref(),
            Some("1x Cortex-A76 + 1x Cortex-A55")
        );
    }

    #[test]
    fn parses_an_x86_cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 79\n\
                    model name\t: Intel(R) Xeon(R) CPU\nflags\t\t: fpu avx2 fma f16c\n\n\
                    processor\t: 1\nvendor_id\t: GenuineIntel\nmodel\t\t: 79\n\
                    model name\t: Intel(R) Xeon(R) CPU\nflags\t\t: fpu avx2 fma\n";
        let info = CpuInfo::parse(text);
        assert_eq!(info.processors, 2);
        assert_eq!(info.features, ["fpu", "avx2", "fma"]);
        assert_eq!(info.arch, Some("x86_64"));
        assert_eq!(info.model, None);
        assert_eq!(info.cores().as_deref(), Some("2x Intel(R) Xeon(R) CPU"));
    }

    #[test]
    fn garbage_gives_nothing() {
        assert_eq!(CpuInfo::parse(""), CpuInfo::default());
        assert_eq!(CpuInfo::parse("\0\0:::\n: :\nprocessor").processors, 0);
    }

    #[test]
    fn big_cores_come_from_differing_capacities() {
        let mut host = HostInfo::default();
        assert!(host.big_cores().is_empty());
        host.cpu_capacity = (0..4).map(|c| (c, 1024)).collect();
        assert!(host.big_cores().is_empty());
        host.cpu_capacity = vec![(0, 414), (1, 414), (2, 1024), (3, 1024)];
        assert_eq!(host.big_cores(), [2, 3]);
    }
}
