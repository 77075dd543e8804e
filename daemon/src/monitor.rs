//! Readings of the board's state for telemetry: SoC temperature and available memory, read
//! from `/sys` and `/proc` under a root directory (so tests can use a fake tree). The
//! overflow router's full monitor (pressure stall information, cgroup limits, throttling)
//! builds on this.

use std::path::Path;

/// One reading.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The hottest thermal zone, in °C.
    pub temperature_c: Option<f32>,
    /// `MemAvailable` from `/proc/meminfo`, in bytes.
    pub mem_available: Option<u64>,
}

/// Reads a snapshot from `root` (`/` on a real system).
pub fn read(root: &Path) -> Snapshot {
    Snapshot {
        temperature_c: hottest_zone(root),
        mem_available: mem_available(root),
    }
}

fn hottest_zone(root: &Path) -> Option<f32> {
    let dir = std::fs::read_dir(root.join("sys/class/thermal")).ok()?;
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("temp")).ok())
        .filter_map(|t| t.trim().parse::<i64>().ok())
        // Millidegrees; ignore sensors reporting nonsense.
        .filter(|&m| (-40_000..=150_000).contains(&m))
        .map(|m| m as f32 / 1000.0)
        .reduce(f32::max)
}

fn mem_available(root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(root.join("proc/meminfo")).ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fake_tree() {
        let root = std::env::temp_dir().join(format!("spillway-monitor-{}", std::process::id()));
        for (zone, t) in [
            ("thermal_zone0", "45000"),
            ("thermal_zone1", "71500"),
            ("thermal_zone2", "garbage"),
        ] {
            let d = root.join("sys/class/thermal").join(zone);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("temp"), t).unwrap();
        }
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(
            root.join("proc/meminfo"),
            "MemTotal: 8000 kB\nMemAvailable:    2048 kB\n",
        )
        .unwrap();
        assert_eq!(
            read(&root),
            Snapshot {
                temperature_c: Some(71.5),
                mem_available: Some(2048 * 1024)
            }
        );
        assert_eq!(read(&root.join("nowhere")), Snapshot::default());
    }
}
