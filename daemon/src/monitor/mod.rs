//! The resource monitor: what the overflow router knows about the board's state. It owns
//! sampling the SoC temperature, throttling, memory, pressure stall information and the
//! service's cgroup memory limits from `/sys` and `/proc`, publishing the latest
//! [`Snapshot`] through a `tokio::sync::watch` channel. Which thermal zones speak for the SoC
//! is handed to the [`Sampler`] (the board profile names them); the monitor knows nothing
//! else of boards. The bounded file readers it uses are [`crate::sysfs`]'s.
//!
//! Every path is read relative to a root directory (`/` on a real system), so tests drive
//! the monitor with a fake `/sys` and `/proc` tree. What those files contain is outside
//! input: every read is bounded and non-blocking, every value validated, and a
//! reading that is absent is `None`, one that is garbage `None` plus a debug log; nothing
//! here panics or fails because of what a file says. (The root itself is trusted as a
//! layout: a real `/proc/device-tree` is an absolute symlink, followed as such.)
//!
//! The `sysinfo` crate is not used: it reads fixed `/proc` and `/sys` paths with no way to
//! point it at another root, does not read pressure stall information, the cgroup v2 files
//! or the Raspberry Pi firmware's throttling word, and picks temperatures from hwmon
//! sensors rather than the thermal zone a board profile names. What is left for it to do
//! is a few lines of parsing, done here.
//!
//! The sampler runs on a plain thread, not a tokio task: sysfs reads block (a sensor behind
//! I2C or a firmware mailbox can take milliseconds), and the thread keeps them off the
//! runtime's workers.

mod psi;
mod thermal;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::sysfs::memory;
pub use crate::sysfs::memory::{CgroupMemory, Limit};
pub use psi::{Pressure, PsiLine};
pub use thermal::{FreqCap, PiThrottled};

/// Whether the CPU runs below its rated speed, from whichever sources the board has.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Throttling {
    /// The Raspberry Pi firmware's throttling word, on boards that have it.
    pub firmware: Option<PiThrottled>,
    /// cpufreq policies held below their hardware maximum (thermal cooling devices act
    /// through these on RK3588, Jetson and most other boards).
    pub cpufreq: Option<FreqCap>,
}

impl Throttling {
    /// `Some(true)` when a source says the CPU is limited now, `Some(false)` when the sources
    /// available say it is not, `None` when the board exposes no source.
    pub fn now(&self) -> Option<bool> {
        let firmware = self.firmware.map(PiThrottled::limiting_now);
        let cpufreq = self.cpufreq.as_ref().map(FreqCap::is_capped);
        match (firmware, cpufreq) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(false) || b.unwrap_or(false)),
        }
    }
}

/// One reading of the board's state. Every field is optional: boards, kernels and
/// containers differ in what they expose.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// When it was taken (`None` only for [`Snapshot::default`]).
    pub taken: Option<Instant>,
    /// The SoC temperature in °C: the hottest zone the board profile names, or the hottest
    /// zone of all when it names none (or none of its zones exists).
    pub temperature_c: Option<f32>,
    /// The `type` of the thermal zone `temperature_c` came from.
    pub thermal_zone: Option<String>,
    /// Throttling state.
    pub throttling: Throttling,
    /// `MemTotal` from `/proc/meminfo`, in bytes.
    pub mem_total: Option<u64>,
    /// `MemAvailable` from `/proc/meminfo`, in bytes.
    pub mem_available: Option<u64>,
    /// `/proc/pressure/memory`.
    pub memory_pressure: Option<Pressure>,
    /// `/proc/pressure/cpu`.
    pub cpu_pressure: Option<Pressure>,
    /// The process's cgroup v2 memory accounting (present under systemd).
    pub cgroup: Option<CgroupMemory>,
}

impl Snapshot {
    /// Bytes this process can still allocate without pushing the system into reclaim or its
    /// cgroup past a limit: the least of `MemAvailable` and the cgroup's headroom below
    /// `memory.max` and `memory.high` (see [`CgroupMemory::headroom`]); `None` when neither is
    /// known.
    pub fn memory_headroom_bytes(&self) -> Option<u64> {
        let cgroup = self.cgroup.as_ref().and_then(CgroupMemory::headroom);
        [self.mem_available, cgroup].into_iter().flatten().min()
    }

    /// Whether the CPU is throttled now (see [`Throttling::now`]).
    pub fn throttled(&self) -> Option<bool> {
        self.throttling.now()
    }

    /// How long ago the snapshot was taken.
    pub fn age(&self) -> Option<Duration> {
        self.taken.map(|t| t.elapsed())
    }
}

/// Takes snapshots under one root, reading the SoC temperature from the named thermal zones.
#[derive(Debug)]
pub struct Sampler {
    root: PathBuf,
    /// The `type`s of the thermal zones that speak for the SoC (a board profile's
    /// `thermal.zones`); empty: the hottest zone of all.
    zones: Vec<String>,
    /// Where the Pi firmware's `get_throttled` lives, found on the first sample: the driver
    /// registers it at boot, long before the daemon starts, so a search every sample would
    /// only cost. `None` inside: looked, not there.
    pi_throttled: Mutex<Option<Option<PathBuf>>>,
}

impl Sampler {
    /// A sampler reading under `root` (`/` on a real system), taking the SoC temperature
    /// from the hottest of `zones` (thermal zone `type`s; empty, or none of them present:
    /// the hottest zone of all).
    pub fn new(root: impl Into<PathBuf>, zones: Vec<String>) -> Sampler {
        Sampler {
            root: root.into(),
            zones,
            pi_throttled: Mutex::new(None),
        }
    }

    /// The thermal zones the temperature is taken from.
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// The root directory read under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads everything now.
    pub fn sample(&self) -> Snapshot {
        let root = self.root.as_path();
        let zone = thermal::soc_temperature(root, &self.zones);
        let mem = memory::meminfo(root);
        Snapshot {
            taken: Some(Instant::now()),
            temperature_c: zone.as_ref().map(|z| z.celsius),
            thermal_zone: zone.map(|z| z.zone),
            throttling: Throttling {
                firmware: self
                    .pi_throttled_path()
                    .and_then(|p| thermal::pi_throttled(&p)),
                cpufreq: thermal::freq_cap(root),
            },
            mem_total: mem.total,
            mem_available: mem.available,
            memory_pressure: psi::pressure(root, "memory"),
            cpu_pressure: psi::pressure(root, "cpu"),
            cgroup: memory::cgroup_memory(root),
        }
    }

    fn pi_throttled_path(&self) -> Option<PathBuf> {
        // A poisoned lock only means another sample panicked mid-search; the cached value
        // is still a plain Option, so use it.
        let mut cached = self
            .pi_throttled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cached
            .get_or_insert_with(|| thermal::find_pi_throttled(&self.root))
            .clone()
    }
}

/// Why the monitor could not start.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("the monitor's sampling interval must be longer than zero")]
    ZeroInterval,
    #[error("cannot start the monitor thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Messages to the sampling thread.
enum Control {
    /// Sample now instead of waiting for the interval.
    Refresh,
}

/// Samples on an interval on its own thread and publishes each [`Snapshot`] through a
/// `watch` channel: the router reads the latest per request with [`Monitor::latest`] or
/// a receiver from [`Monitor::subscribe`]. Dropping the monitor stops the thread (receivers
/// then see the channel closed).
#[derive(Debug)]
pub struct Monitor {
    rx: watch::Receiver<Snapshot>,
    control: Option<mpsc::Sender<Control>>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Takes a first snapshot (so [`latest`](Self::latest) is meaningful at once), then
    /// starts sampling every `interval`.
    pub fn start(sampler: Sampler, interval: Duration) -> Result<Monitor, MonitorError> {
        if interval.is_zero() {
            return Err(MonitorError::ZeroInterval);
        }
        let (tx, rx) = watch::channel(sampler.sample());
        let (control, commands) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("spillway-monitor".into())
            .spawn(move || run(&sampler, &tx, &commands, interval))
            .map_err(MonitorError::Spawn)?;
        Ok(Monitor {
            rx,
            control: Some(control),
            thread: Some(thread),
        })
    }

    /// The latest snapshot.
    pub fn latest(&self) -> Snapshot {
        self.rx.borrow().clone()
    }

    /// A receiver of every new snapshot (for tasks that wait for changes).
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.rx.clone()
    }

    /// Asks for a sample now rather than at the next tick; it is published like any other.
    pub fn refresh(&self) {
        if let Some(control) = &self.control {
            // A send fails only when the thread has gone, and then there is nobody to ask.
            let _ = control.send(Control::Refresh);
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // Closing the control channel wakes the thread from its wait and ends it.
        self.control.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    sampler: &Sampler,
    tx: &watch::Sender<Snapshot>,
    commands: &mpsc::Receiver<Control>,
    interval: Duration,
) {
    loop {
        match commands.recv_timeout(interval) {
            Ok(Control::Refresh) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // send_replace, not send: publish even while no receiver is subscribed.
        tx.send_replace(sampler.sample());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fake_tree_like_the_telemetry_does() {
        let root = std::env::temp_dir().join(format!("spillway-monitor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
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
        let snap = Sampler::new(&root, Vec::new()).sample();
        assert_eq!(snap.temperature_c, Some(71.5));
        assert_eq!(snap.thermal_zone.as_deref(), Some("thermal_zone1"));
        assert_eq!(snap.mem_available, Some(2048 * 1024));
        assert_eq!(snap.mem_total, Some(8000 * 1024));
        assert_eq!(snap.memory_headroom_bytes(), Some(2048 * 1024));
        assert!(snap.taken.is_some());

        let nothing = Sampler::new(root.join("nowhere"), Vec::new()).sample();
        assert_eq!(
            Snapshot {
                taken: None,
                ..nothing
            },
            Snapshot::default()
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn throttling_combines_its_sources() {
        let capped = FreqCap {
            policies: 2,
            capped: 1,
            lowest_ratio: 0.75,
        };
        let uncapped = FreqCap {
            policies: 2,
            capped: 0,
            lowest_ratio: 1.0,
        };
        let t = |firmware, cpufreq| Throttling { firmware, cpufreq }.now();
        assert_eq!(t(None, None), None);
        assert_eq!(t(Some(PiThrottled(0x50000)), None), Some(false));
        assert_eq!(t(Some(PiThrottled(0x4)), None), Some(true));
        assert_eq!(t(None, Some(capped)), Some(true));
        assert_eq!(t(None, Some(uncapped)), Some(false));
        assert_eq!(t(Some(PiThrottled(0)), Some(capped)), Some(true));
        assert_eq!(t(Some(PiThrottled(0x2)), Some(uncapped)), Some(true));
    }

    #[test]
    fn headroom_is_the_tighter_of_the_system_and_the_cgroup() {
        let cgroup = |current, max| CgroupMemory {
            path: "/spillway.service".into(),
            current: Some(current),
            max: Some(max),
            high: None,
            inactive_file: None,
        };
        let mut s = Snapshot {
            mem_available: Some(2 << 30),
            ..Snapshot::default()
        };
        assert_eq!(s.memory_headroom_bytes(), Some(2 << 30));
        s.cgroup = Some(cgroup(600 << 20, Limit::Bytes(1 << 30)));
        assert_eq!(s.memory_headroom_bytes(), Some(424 << 20));
        s.cgroup = Some(cgroup(600 << 20, Limit::Unlimited));
        assert_eq!(s.memory_headroom_bytes(), Some(2 << 30));
        // A cgroup limit looser than the machine: MemAvailable binds.
        s.cgroup = Some(cgroup(1 << 30, Limit::Bytes(8 << 30)));
        assert_eq!(s.memory_headroom_bytes(), Some(2 << 30));
        s.mem_available = None;
        assert_eq!(s.memory_headroom_bytes(), Some(7 << 30));
        s.cgroup = None;
        assert_eq!(s.memory_headroom_bytes(), None);
    }

    #[test]
    fn a_zero_interval_is_refused() {
        let sampler = Sampler::new("/nonexistent-spillway-root", Vec::new());
        assert!(matches!(
            Monitor::start(sampler, Duration::ZERO),
            Err(MonitorError::ZeroInterval)
        ));
    }
}
