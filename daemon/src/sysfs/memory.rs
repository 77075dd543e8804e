//! Memory readings: `MemTotal`/`MemAvailable` from `/proc/meminfo`, and the cgroup v2 memory
//! accounting of the process's own cgroup (systemd's `MemoryMax=`/`MemoryHigh=` land there).

use std::path::{Component, Path};

use super::read_value;

/// `MemTotal` and `MemAvailable` from `/proc/meminfo`, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemInfo {
    pub(crate) total: Option<u64>,
    pub(crate) available: Option<u64>,
}

/// Parses `/proc/meminfo` (`Key:   1234 kB` lines). A key that is missing, or whose value is
/// not a kB count that fits in bytes, is `None`.
pub(crate) fn parse_meminfo(text: &str) -> MemInfo {
    let field = |key: &str| -> Option<u64> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(':')))?;
        let value = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            [n, "kB"] => n.parse::<u64>().ok().and_then(|kb| kb.checked_mul(1024)),
            _ => None,
        };
        if value.is_none() {
            tracing::debug!(
                "sysfs: unexpected /proc/meminfo {key} line {:?}; ignored",
                super::shorten(line.trim())
            );
        }
        value
    };
    let total = field("MemTotal");
    let available = field("MemAvailable").filter(|&a| {
        // More available than installed is a corrupt file, not a reading.
        let sane = total.is_none_or(|t| a <= t);
        if !sane {
            tracing::debug!("sysfs: MemAvailable {a} exceeds MemTotal; ignored");
        }
        sane
    });
    MemInfo { total, available }
}

/// Reads `proc/meminfo` under `root`.
pub(crate) fn meminfo(root: &Path) -> MemInfo {
    super::read_text(&root.join("proc/meminfo"))
        .map(|t| parse_meminfo(&t))
        .unwrap_or_default()
}

/// A cgroup v2 memory limit (`memory.max`, `memory.high`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `max`: no limit.
    Unlimited,
    /// A limit in bytes.
    Bytes(u64),
}

impl Limit {
    /// The limit in bytes, `None` when unlimited.
    pub fn bytes(self) -> Option<u64> {
        match self {
            Limit::Unlimited => None,
            Limit::Bytes(b) => Some(b),
        }
    }
}

/// The memory accounting of the cgroup this process runs in (cgroup v2 only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMemory {
    /// The cgroup's path, from `/proc/self/cgroup` (e.g. `/system.slice/spillway.service`).
    pub path: String,
    /// `memory.current`: everything charged to the cgroup, page cache included.
    pub current: Option<u64>,
    /// `memory.max`: the hard limit (the OOM killer acts beyond it).
    pub max: Option<Limit>,
    /// `memory.high`: the throttling limit (past it the kernel reclaims hard and stalls the
    /// cgroup's allocations).
    pub high: Option<Limit>,
    /// `inactive_file` from `memory.stat`: page cache not used lately, which the kernel
    /// reclaims before anything else.
    pub inactive_file: Option<u64>,
}

impl CgroupMemory {
    /// What the cgroup uses that it cannot give back cheaply: `memory.current` less the
    /// inactive page cache (the "working set" of cAdvisor and `docker stats`). The model's
    /// weights are memory-mapped file pages in active use, so they stay in it, as they
    /// should: evicting them would make every token reread them from storage.
    pub fn working_set(&self) -> Option<u64> {
        let current = self.current?;
        Some(current.saturating_sub(self.inactive_file.unwrap_or(0)))
    }

    /// Bytes the cgroup may still grow by before reaching `memory.high` or `memory.max`,
    /// whichever is lower; `None` when neither limits it or its usage is unknown.
    pub fn headroom(&self) -> Option<u64> {
        let used = self.working_set()?;
        let limit = [self.max, self.high]
            .into_iter()
            .flatten()
            .filter_map(Limit::bytes)
            .min()?;
        Some(limit.saturating_sub(used))
    }
}

/// Parses a `memory.max`/`memory.high` value.
pub(crate) fn parse_limit(text: &str) -> Option<Limit> {
    if text == "max" {
        Some(Limit::Unlimited)
    } else {
        text.parse::<u64>().ok().map(Limit::Bytes)
    }
}

/// The cgroup v2 path of this process from `/proc/self/cgroup` contents: the `0::/path`
/// line (v1 hierarchies have other lines; hybrid systems have both). Paths that could leave
/// the cgroup filesystem (`..`, `.`, relative, NUL) are refused: the file is outside input.
pub(crate) fn parse_self_cgroup(text: &str) -> Option<String> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    // A cgroup removed under us is shown with this suffix; its files are gone anyway.
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let valid = path.starts_with('/')
        && !path.contains('\0')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !path.split('/').any(|part| part == "." || part == "..");
    if !valid {
        tracing::debug!(
            "sysfs: unusable cgroup path {:?} in /proc/self/cgroup; ignored",
            super::shorten(path)
        );
        return None;
    }
    Some(path.to_owned())
}

/// Reads the memory accounting of this process's cgroup under `root`. `None` outside cgroup
/// v2, or when the cgroup has no memory controller files (the root cgroup has none).
pub(crate) fn cgroup_memory(root: &Path) -> Option<CgroupMemory> {
    let text = super::read_text(&root.join("proc/self/cgroup"))?;
    let path = parse_self_cgroup(&text)?;
    let dir = root
        .join("sys/fs/cgroup")
        .join(path.trim_start_matches('/'));
    let bytes = |t: &str| t.parse::<u64>().ok();
    let current = read_value(&dir.join("memory.current"), bytes);
    let max = read_value(&dir.join("memory.max"), parse_limit);
    let high = read_value(&dir.join("memory.high"), parse_limit);
    if current.is_none() && max.is_none() && high.is_none() {
        return None;
    }
    let inactive_file = super::read_text(&dir.join("memory.stat")).and_then(|stat| {
        let line = stat
            .lines()
            .find_map(|l| l.strip_prefix("inactive_file "))?;
        let value = line.trim().parse::<u64>().ok();
        if value.is_none() {
            tracing::debug!("sysfs: unexpected inactive_file in memory.stat; ignored");
        }
        value
    });
    Some(CgroupMemory {
        path,
        current,
        max,
        high,
        inactive_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo() {
        let text = "MemTotal:        8131128 kB\nMemFree:          123456 kB\n\
                    MemAvailable:    5242880 kB\nBuffers:  1 kB\n";
        assert_eq!(
            parse_meminfo(text),
            MemInfo {
                total: Some(8131128 * 1024),
                available: Some(5242880 * 1024)
            }
        );
        // Missing keys, a prefix that is not the key, garbage, no unit, overflow.
        assert_eq!(parse_meminfo(""), MemInfo::default());
        assert_eq!(
            parse_meminfo("MemAvailableX: 5 kB\nMemTotal: lots kB\n"),
            MemInfo::default()
        );
        assert_eq!(parse_meminfo("MemAvailable: 5\n").available, None);
        assert_eq!(parse_meminfo("MemAvailable: 5 MB\n").available, None);
        assert_eq!(
            parse_meminfo("MemAvailable: 18446744073709551615 kB\n").available,
            None
        );
        assert_eq!(
            parse_meminfo("MemAvailable: 18014398509481983 kB\n").available,
            Some(18014398509481983 * 1024)
        );
        // More available than installed.
        let bad = parse_meminfo("MemTotal: 100 kB\nMemAvailable: 200 kB\n");
        assert_eq!((bad.total, bad.available), (Some(100 * 1024), None));
    }

    #[test]
    fn finds_the_v2_cgroup_path() {
        assert_eq!(
            parse_self_cgroup("0::/system.slice/spillway.service\n").as_deref(),
            Some("/system.slice/spillway.service")
        );
        // Hybrid hierarchy: v1 lines first.
        let hybrid = "12:memory:/system.slice/x\n1:name=systemd:/x\n0::/user.slice/app\n";
        assert_eq!(
            parse_self_cgroup(hybrid).as_deref(),
            Some("/user.slice/app")
        );
        assert_eq!(parse_self_cgroup("0::/\n").as_deref(), Some("/"));
        assert_eq!(
            parse_self_cgroup("0::/gone (deleted)\n").as_deref(),
            Some("/gone")
        );
        for bad in [
            "",
            "12:memory:/only-v1\n",
            "0::/../../etc\n",
            "0::/a/./b\n",
            "0::relative\n",
            "0::/a\0b\n",
        ] {
            assert_eq!(parse_self_cgroup(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parses_limits_and_computes_headroom() {
        assert_eq!(parse_limit("max"), Some(Limit::Unlimited));
        assert_eq!(parse_limit("1073741824"), Some(Limit::Bytes(1 << 30)));
        assert_eq!(parse_limit("-1"), None);
        assert_eq!(parse_limit("1G"), None);

        let mut cg = CgroupMemory {
            path: "/s".into(),
            current: Some(600 << 20),
            max: Some(Limit::Bytes(1 << 30)),
            high: None,
            inactive_file: None,
        };
        assert_eq!(cg.headroom(), Some(424 << 20));
        // Inactive page cache is given back first, so it is not counted as used.
        cg.inactive_file = Some(100 << 20);
        assert_eq!(cg.working_set(), Some(500 << 20));
        assert_eq!(cg.headroom(), Some(524 << 20));
        // memory.high below memory.max is the binding limit.
        cg.high = Some(Limit::Bytes(768 << 20));
        assert_eq!(cg.headroom(), Some(268 << 20));
        // Over the limit (the kernel lets usage overshoot briefly): no headroom, no wrap.
        cg.current = Some(2 << 30);
        assert_eq!(cg.headroom(), Some(0));
        // Unlimited both ways: the cgroup does not constrain.
        cg.max = Some(Limit::Unlimited);
        cg.high = Some(Limit::Unlimited);
        assert_eq!(cg.headroom(), None);
        // Unknown usage: no figure.
        cg.max = Some(Limit::Bytes(1 << 30));
        cg.current = None;
        assert_eq!(cg.headroom(), None);
    }
}
