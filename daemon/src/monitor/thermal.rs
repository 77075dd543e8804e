//! SoC temperature from the kernel's thermal zones, and whether the CPU is being throttled:
//! the Raspberry Pi firmware's `get_throttled` bits where they exist, and cpufreq policies
//! whose `scaling_max_freq` is held below `cpuinfo_max_freq` everywhere else.

use std::path::{Path, PathBuf};

use crate::sysfs::{self, read_value};

/// The most thermal zones considered (real boards have 1–30).
const MAX_ZONES: usize = 256;
/// The most cpufreq policies considered (one per cluster; a few on real boards).
const MAX_POLICIES: usize = 256;

/// Readings outside this range (millidegrees Celsius) are sensor faults or garbage: the
/// kernel reports disconnected or not-yet-calibrated sensors as e.g. -273000 or 0x7fffffff.
const VALID_MILLI_C: std::ops::RangeInclusive<i64> = -40_000..=150_000;

/// The temperature to act on, and the zone it came from.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ZoneReading {
    pub(crate) celsius: f32,
    /// The zone's `type` (e.g. `cpu-thermal`), or its directory name when it has none.
    pub(crate) zone: String,
}

/// Reads `sys/class/thermal/thermal_zone*/` under `root`.
///
/// When `preferred` names zone types, the result is the hottest valid zone of those types,
/// and other zones are ignored even when hotter (a PMIC or Wi-Fi sensor says nothing about
/// the SoC; Jetson's `PMIC-Die` zone reads a constant 100 °C). Only when no zone of a
/// preferred type exists at all does it fall back to the hottest zone: kernels rename zones
/// (RK3588's vendor kernel says `soc-thermal`, mainline `package-thermal`), and an unknown
/// name should not blind the monitor. A preferred zone that exists but reads garbage gives
/// `None` rather than a reading from some unrelated sensor.
pub(crate) fn soc_temperature(root: &Path, preferred: &[String]) -> Option<ZoneReading> {
    let zones = sysfs::numbered_entries(&root.join("sys/class/thermal"), "thermal_zone", MAX_ZONES);
    let mut named: Vec<(String, PathBuf)> = Vec::with_capacity(zones.len());
    for (_, dir) in zones {
        let zone_type = sysfs::read_text(&dir.join("type"))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| {
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        named.push((zone_type, dir));
    }
    let is_preferred = |t: &str| preferred.iter().any(|p| p == t);
    let any_preferred = named.iter().any(|(t, _)| is_preferred(t));
    if !preferred.is_empty() && !any_preferred {
        tracing::debug!(
            "monitor: no thermal zone of type {preferred:?}; using the hottest zone instead"
        );
    }
    named
        .into_iter()
        .filter(|(t, _)| !any_preferred || is_preferred(t))
        .filter_map(|(zone, dir)| {
            let celsius = zone_temperature(&dir.join("temp"))?;
            Some(ZoneReading { celsius, zone })
        })
        // Ties keep the lowest-numbered zone, so the reported name is stable.
        .reduce(|a, b| if b.celsius > a.celsius { b } else { a })
}

/// One zone's `temp` file, in °C.
fn zone_temperature(path: &Path) -> Option<f32> {
    read_value(path, |t| {
        t.parse::<i64>()
            .ok()
            .filter(|m| VALID_MILLI_C.contains(m))
            // Exact: |m| ≤ 150000 fits f32's 24-bit mantissa.
            .map(|m| m as f32 / 1000.0)
    })
}

/// The Raspberry Pi firmware's throttling word (`vcgencmd get_throttled`), as the kernel's
/// `raspberrypi-firmware` driver exposes it in sysfs (hexadecimal, no `0x`).
///
/// Bits 0–3 describe now, bits 16–19 the same conditions since boot (or since the word was
/// last read by `vcgencmd`, which clears them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PiThrottled(pub u32);

impl PiThrottled {
    /// The supply is below ~4.63 V now.
    pub fn under_voltage(self) -> bool {
        self.0 & (1 << 0) != 0
    }
    /// The ARM frequency is capped now.
    pub fn freq_capped(self) -> bool {
        self.0 & (1 << 1) != 0
    }
    /// The firmware is throttling now (temperature or supply).
    pub fn throttled(self) -> bool {
        self.0 & (1 << 2) != 0
    }
    /// The soft temperature limit is active now.
    pub fn soft_temp_limit(self) -> bool {
        self.0 & (1 << 3) != 0
    }
    /// Under-voltage has occurred.
    pub fn under_voltage_occurred(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Frequency capping has occurred.
    pub fn freq_capped_occurred(self) -> bool {
        self.0 & (1 << 17) != 0
    }
    /// Throttling has occurred.
    pub fn throttled_occurred(self) -> bool {
        self.0 & (1 << 18) != 0
    }
    /// The soft temperature limit has been active.
    pub fn soft_temp_limit_occurred(self) -> bool {
        self.0 & (1 << 19) != 0
    }
    /// Any of the "now" conditions: the CPU is running below its rated speed. Under-voltage
    /// counts because the firmware caps the clock while it lasts.
    pub fn limiting_now(self) -> bool {
        self.0 & 0xf != 0
    }
}

/// Parses the sysfs `get_throttled` contents: hex, `0x` optional (vcgencmd prints one).
pub(crate) fn parse_pi_throttled(text: &str) -> Option<PiThrottled> {
    let hex = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if hex.is_empty() || hex.len() > 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok().map(PiThrottled)
}

/// The usual place of the firmware's `get_throttled` (Raspberry Pi 4 and earlier).
const PI_THROTTLED: &str = "sys/devices/platform/soc/soc:firmware/get_throttled";

/// Finds `get_throttled` under `root`: the usual path, or any `*:firmware` device directly
/// under a `sys/devices/platform/*` bus (the Pi 5's SoC node has a different name).
pub(crate) fn find_pi_throttled(root: &Path) -> Option<PathBuf> {
    let usual = root.join(PI_THROTTLED);
    if usual.is_file() {
        return Some(usual);
    }
    let platform = root.join("sys/devices/platform");
    let buses = std::fs::read_dir(&platform).ok()?;
    for bus in buses.take(sysfs::MAX_DIR_ENTRIES).filter_map(Result::ok) {
        let Ok(devices) = std::fs::read_dir(bus.path()) else {
            continue;
        };
        for dev in devices.take(sysfs::MAX_DIR_ENTRIES).filter_map(Result::ok) {
            if dev.file_name().to_string_lossy().ends_with(":firmware") {
                let candidate = dev.path().join("get_throttled");
                if candidate.is_file() {
                    return Some(candidate);
                }
            }
        }
    }
    None
}

/// Reads the firmware's throttling word from `path`.
pub(crate) fn pi_throttled(path: &Path) -> Option<PiThrottled> {
    read_value(path, parse_pi_throttled)
}

/// How far the kernel holds the CPU clocks below their rated maximum, over all cpufreq
/// policies (one per cluster).
///
/// The thermal framework's cpufreq cooling devices lower a policy's maximum through a
/// frequency QoS request, which `scaling_max_freq` reports. A cap can also be an
/// administrator's choice (a lowered `scaling_max_freq`); either way the cores run below
/// their rated speed, which is what the router cares about.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FreqCap {
    /// Policies read successfully.
    pub policies: u32,
    /// Of those, the ones capped below their hardware maximum.
    pub capped: u32,
    /// The lowest `scaling_max_freq / cpuinfo_max_freq` over the policies read (1.0: none
    /// capped).
    pub lowest_ratio: f32,
}

impl FreqCap {
    /// Some policy is capped.
    pub fn is_capped(&self) -> bool {
        self.capped > 0
    }
}

/// Reads `sys/devices/system/cpu/cpufreq/policy*/{scaling,cpuinfo}_max_freq` under `root`.
/// `None` when no policy could be read (no cpufreq driver, as on many VMs).
pub(crate) fn freq_cap(root: &Path) -> Option<FreqCap> {
    let policies = sysfs::numbered_entries(
        &root.join("sys/devices/system/cpu/cpufreq"),
        "policy",
        MAX_POLICIES,
    );
    let mut cap = FreqCap {
        policies: 0,
        capped: 0,
        lowest_ratio: 1.0,
    };
    for (_, dir) in policies {
        let khz = |name: &str| {
            read_value(&dir.join(name), |t| {
                t.parse::<u64>().ok().filter(|&f| f > 0 && f < 1 << 32)
            })
        };
        let (Some(scaling), Some(hardware)) = (khz("scaling_max_freq"), khz("cpuinfo_max_freq"))
        else {
            continue;
        };
        cap.policies += 1;
        if scaling < hardware {
            cap.capped += 1;
            // Both below 2^32, so the f64 quotient is exact enough and in (0, 1).
            let ratio = (scaling as f64 / hardware as f64) as f32;
            cap.lowest_ratio = cap.lowest_ratio.min(ratio);
        }
    }
    (cap.policies > 0).then_some(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_firmware_word() {
        assert_eq!(parse_pi_throttled("0"), Some(PiThrottled(0)));
        assert_eq!(parse_pi_throttled("50005"), Some(PiThrottled(0x50005)));
        assert_eq!(parse_pi_throttled("0x80008"), Some(PiThrottled(0x80008)));
        assert_eq!(parse_pi_throttled("ffffffff"), Some(PiThrottled(u32::MAX)));
        for garbage in ["", "0x", "-1", "1ffffffff", "throttled=0x0", "5 0"] {
            assert_eq!(parse_pi_throttled(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn names_the_firmware_bits() {
        // Under-voltage and throttling now, and both have occurred.
        let t = PiThrottled(0x50005);
        assert!(t.under_voltage() && t.throttled() && t.limiting_now());
        assert!(!t.freq_capped() && !t.soft_temp_limit());
        assert!(t.under_voltage_occurred() && t.throttled_occurred());
        assert!(!t.freq_capped_occurred() && !t.soft_temp_limit_occurred());
        // Soft limit now and in the past.
        let t = PiThrottled(0x80008);
        assert!(t.soft_temp_limit() && t.soft_temp_limit_occurred() && t.limiting_now());
        // Only history: nothing limits the clock now.
        let t = PiThrottled(0xf0000);
        assert!(!t.limiting_now());
        assert!(t.freq_capped_occurred());
        assert!(PiThrottled(0x2).freq_capped());
    }
}
