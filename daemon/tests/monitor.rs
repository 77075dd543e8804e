//! The resource monitor against fake `/sys` + `/proc` trees: a Raspberry Pi 5, an RK3588
//! board, an unknown board, broken files, cgroup limits, and a board that heats up, cools
//! down and runs short of memory while a `Monitor` samples it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use spillway::board::BoardProfile;
use spillway::monitor::{Limit, Monitor, Sampler, Snapshot};

/// A fake root directory, removed on drop.
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new(name: &str) -> Tree {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "spillway-monitor-test-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Tree { root }
    }

    fn path(&self) -> &Path {
        &self.root
    }

    /// Writes `contents` to `rel`, atomically (rename), so a sampler never reads half.
    fn write(&self, rel: &str, contents: impl AsRef<[u8]>) {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension("tmp-write");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    fn remove(&self, rel: &str) {
        std::fs::remove_file(self.root.join(rel)).unwrap();
    }

    fn zone(&self, n: u32, zone_type: &str, milli_c: i64) {
        self.write(
            &format!("sys/class/thermal/thermal_zone{n}/type"),
            format!("{zone_type}\n"),
        );
        self.set_temp(n, milli_c);
    }

    fn set_temp(&self, n: u32, milli_c: i64) {
        self.write(
            &format!("sys/class/thermal/thermal_zone{n}/temp"),
            format!("{milli_c}\n"),
        );
    }

    fn meminfo(&self, total_kb: u64, available_kb: u64) {
        self.write(
            "proc/meminfo",
            format!(
                "MemTotal:       {total_kb} kB\nMemFree:          100000 kB\n\
                 MemAvailable:   {available_kb} kB\nBuffers:           20000 kB\n"
            ),
        );
    }

    fn cgroup(&self, path: &str, current: &str, max: &str) {
        self.write("proc/self/cgroup", format!("0::{path}\n"));
        let dir = format!("sys/fs/cgroup{path}");
        self.write(&format!("{dir}/memory.current"), format!("{current}\n"));
        self.write(&format!("{dir}/memory.max"), format!("{max}\n"));
    }

    fn cpufreq(&self, policy: u32, scaling_khz: &str, hardware_khz: &str) {
        let dir = format!("sys/devices/system/cpu/cpufreq/policy{policy}");
        self.write(
            &format!("{dir}/scaling_max_freq"),
            format!("{scaling_khz}\n"),
        );
        self.write(
            &format!("{dir}/cpuinfo_max_freq"),
            format!("{hardware_khz}\n"),
        );
    }

    fn sample(&self) -> Snapshot {
        Sampler::new(self.path(), BoardProfile::detect(self.path()).thermal.zones).sample()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

const PSI_MEMORY: &str = "some avg10=2.50 avg60=1.25 avg300=0.40 total=9876543\n\
                          full avg10=0.50 avg60=0.10 avg300=0.00 total=12345\n";
const PSI_CPU: &str = "some avg10=35.00 avg60=20.00 avg300=5.00 total=555\n";

fn pi5() -> Tree {
    let t = Tree::new("pi5");
    t.write("proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\0");
    t.write(
        "proc/device-tree/compatible",
        "raspberrypi,5-model-b\0brcm,bcm2712\0",
    );
    t.zone(0, "cpu-thermal", 61_250);
    // The RP1 I/O chip's sensor: hotter, and not the SoC.
    t.zone(1, "rp1_adc", 88_000);
    t.write(
        "sys/devices/platform/soc@107c000000/soc@107c000000:firmware/get_throttled",
        "0\n",
    );
    t.meminfo(8_245_000, 6_000_000);
    t.write("proc/pressure/memory", PSI_MEMORY);
    t.write("proc/pressure/cpu", PSI_CPU);
    t.cgroup("/system.slice/spillway.service", "1073741824", "3221225472");
    t
}

#[test]
fn raspberry_pi_5() {
    let t = pi5();
    let profile = BoardProfile::detect(t.path());
    assert_eq!(profile.family, "raspberry-pi-5");
    let s = Sampler::new(t.path(), profile.thermal.zones.clone()).sample();
    // The named zone wins over the hotter unrelated one.
    assert_eq!(s.temperature_c, Some(61.25));
    assert_eq!(s.thermal_zone.as_deref(), Some("cpu-thermal"));
    // The Pi 5's firmware node is not at the Pi 4's path; it is still found.
    assert_eq!(s.throttling.firmware.map(|f| f.0), Some(0));
    assert_eq!(s.throttled(), Some(false));
    assert_eq!(s.mem_total, Some(8_245_000 * 1024));
    assert_eq!(s.mem_available, Some(6_000_000 * 1024));
    let mp = s.memory_pressure.unwrap();
    assert_eq!((mp.some.avg10, mp.some.avg60), (2.5, 1.25));
    assert_eq!(mp.full.unwrap().avg10, 0.5);
    let cp = s.cpu_pressure.unwrap();
    assert_eq!((cp.some.avg10, cp.full), (35.0, None));
    let cg = s.cgroup.as_ref().unwrap();
    assert_eq!(cg.path, "/system.slice/spillway.service");
    assert_eq!(cg.current, Some(1 << 30));
    assert_eq!(cg.max, Some(Limit::Bytes(3 << 30)));
    assert_eq!(cg.high, None);
    // 2 GiB left in the cgroup, ~5.7 GiB available system-wide: the cgroup binds.
    assert_eq!(s.memory_headroom_bytes(), Some(2 << 30));

    // Under-voltage and throttling now, as the firmware reports them.
    t.write(
        "sys/devices/platform/soc@107c000000/soc@107c000000:firmware/get_throttled",
        "50005\n",
    );
    let s = t.sample();
    let fw = s.throttling.firmware.unwrap();
    assert!(fw.under_voltage() && fw.throttled() && fw.throttled_occurred());
    assert_eq!(s.throttled(), Some(true));

    // Without the profile's zones the sampler takes the hottest zone of all: the RP1's.
    let s = Sampler::new(t.path(), Vec::new()).sample();
    assert_eq!(s.temperature_c, Some(88.0));
    assert_eq!(s.thermal_zone.as_deref(), Some("rp1_adc"));
    assert_eq!(s.mem_available, Some(6_000_000 * 1024));
}

#[test]
fn raspberry_pi_4_firmware_path() {
    let t = Tree::new("pi4");
    t.write("proc/device-tree/model", "Raspberry Pi 4 Model B Rev 1.4\0");
    t.zone(0, "cpu-thermal", 79_500);
    t.write(
        "sys/devices/platform/soc/soc:firmware/get_throttled",
        "80008\n",
    );
    let s = t.sample();
    assert_eq!(BoardProfile::detect(t.path()).family, "raspberry-pi-4");
    assert_eq!(s.temperature_c, Some(79.5));
    let fw = s.throttling.firmware.unwrap();
    assert!(fw.soft_temp_limit() && !fw.throttled());
    assert_eq!(s.throttled(), Some(true));
}

#[test]
fn rk3588() {
    let t = Tree::new("rk3588");
    // Model strings vary by vendor; the compatible list identifies the SoC.
    t.write("proc/device-tree/model", "Radxa ROCK 5 Model B\0");
    t.write(
        "proc/device-tree/compatible",
        "radxa,rock-5b\0rockchip,rk3588\0",
    );
    t.zone(0, "soc-thermal", 58_000);
    t.zone(1, "bigcore0-thermal", 64_000);
    t.zone(2, "bigcore1-thermal", 63_000);
    t.zone(3, "littlecore-thermal", 55_000);
    t.zone(4, "center-thermal", 56_000);
    t.zone(5, "gpu-thermal", 91_000);
    t.zone(6, "npu-thermal", 90_000);
    // The A55 cluster runs free, the first A76 pair is capped by its thermal zone.
    t.cpufreq(0, "1800000", "1800000");
    t.cpufreq(4, "1800000", "2400000");
    t.cpufreq(6, "2400000", "2400000");
    t.meminfo(16_000_000, 12_000_000);

    let profile = BoardProfile::detect(t.path());
    assert_eq!(profile.family, "rk3588");
    assert_eq!(profile.cpu.big_cores, [4, 5, 6, 7]);
    let s = Sampler::new(t.path(), profile.thermal.zones.clone()).sample();
    // The hottest zone the profile names (a big-core pair), not the GPU or NPU.
    assert_eq!(s.temperature_c, Some(64.0));
    assert_eq!(s.thermal_zone.as_deref(), Some("bigcore0-thermal"));
    let cap = s.throttling.cpufreq.unwrap();
    assert_eq!((cap.policies, cap.capped, cap.lowest_ratio), (3, 1, 0.75));
    assert_eq!(s.throttling.firmware, None);
    assert_eq!(s.throttled(), Some(true));
    // No cgroup file, no pressure files: absent, not errors.
    assert_eq!(s.cgroup, None);
    assert_eq!(s.memory_pressure, None);
    assert_eq!(s.memory_headroom_bytes(), Some(12_000_000 * 1024));

    t.cpufreq(4, "2400000", "2400000");
    assert_eq!(t.sample().throttled(), Some(false));
}

#[test]
fn unknown_board_uses_the_hottest_zone() {
    let t = Tree::new("unknown");
    t.write("proc/device-tree/model", "Acme Widget Board v3\0");
    t.zone(0, "acpitz", 41_000);
    t.zone(1, "x86_pkg_temp", 67_000);
    t.zone(2, "iwlwifi_1", 52_000);
    // Garbage in a hotter zone does not count.
    t.write("sys/class/thermal/thermal_zone3/type", "broken\n");
    t.write("sys/class/thermal/thermal_zone3/temp", "hot\n");
    // Nor does an implausible reading (a disconnected sensor).
    t.zone(4, "disconnected", 2_147_483_647);
    let profile = BoardProfile::detect(t.path());
    assert!(profile.family.starts_with("generic-"));
    let s = Sampler::new(t.path(), profile.thermal.zones.clone()).sample();
    assert_eq!(s.temperature_c, Some(67.0));
    assert_eq!(s.thermal_zone.as_deref(), Some("x86_pkg_temp"));
    assert_eq!(s.throttled(), None);
}

#[test]
fn a_named_zone_that_is_missing_falls_back_but_a_broken_one_does_not() {
    // A Pi 5 whose kernel calls the SoC zone something else: the hottest zone stands in.
    let t = Tree::new("renamed");
    t.write("proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.1\0");
    t.zone(0, "soc-temp", 70_000);
    t.zone(1, "other", 50_000);
    assert_eq!(t.sample().temperature_c, Some(70.0));
    // The named zone exists but reads garbage: no temperature, rather than the wrong one.
    t.zone(2, "cpu-thermal", 0);
    t.write("sys/class/thermal/thermal_zone2/temp", "EIO\n");
    let s = t.sample();
    assert_eq!((s.temperature_c, s.thermal_zone), (None, None));
}

#[test]
fn garbage_huge_and_missing_files_give_none() {
    let t = Tree::new("garbage");
    t.write("proc/device-tree/model", [0xff, 0xfe, 0x00]);
    t.zone(0, "cpu-thermal", 50_000);
    // Larger than any attribute file: refused, not truncated into a different number.
    t.write(
        "sys/class/thermal/thermal_zone0/temp",
        format!("{}\n", "5".repeat(100_000)),
    );
    t.write("proc/meminfo", vec![b'M'; 1 << 20]);
    t.write("proc/pressure/memory", "some avg10=lots\n");
    t.write("proc/pressure/cpu", [0u8, 159, 146, 150]);
    t.write("proc/self/cgroup", "0::/../../../etc\n");
    t.write("sys/fs/cgroup/etc/memory.current", "1\n");
    t.write(
        "sys/devices/platform/soc/soc:firmware/get_throttled",
        "zzz\n",
    );
    t.cpufreq(0, "-5", "0");
    let s = t.sample();
    assert_eq!(
        Snapshot {
            taken: None,
            ..s.clone()
        },
        Snapshot::default(),
        "{s:#?}"
    );
    assert_eq!(s.memory_headroom_bytes(), None);
    assert_eq!(s.throttled(), None);

    // Nothing at all.
    let empty = Tree::new("empty");
    let s = empty.sample();
    assert_eq!(Snapshot { taken: None, ..s }, Snapshot::default());
    let s = Sampler::new(empty.path().join("does-not-exist"), Vec::new()).sample();
    assert_eq!(Snapshot { taken: None, ..s }, Snapshot::default());
}

#[test]
fn cgroup_limits_against_numbers() {
    let t = Tree::new("cgroup");
    t.meminfo(8_000_000, 4_194_304); // 4 GiB available
    let path = "/system.slice/spillway.service";

    t.cgroup(path, "1073741824", "max");
    let s = t.sample();
    assert_eq!(s.cgroup.as_ref().unwrap().max, Some(Limit::Unlimited));
    assert_eq!(s.memory_headroom_bytes(), Some(4 << 30));

    t.cgroup(path, "1073741824", "1610612736");
    assert_eq!(t.sample().memory_headroom_bytes(), Some(512 << 20));

    // memory.high below memory.max binds.
    t.write(&format!("sys/fs/cgroup{path}/memory.high"), "1342177280\n");
    assert_eq!(t.sample().memory_headroom_bytes(), Some(256 << 20));
    t.remove(&format!("sys/fs/cgroup{path}/memory.high"));

    // Inactive page cache does not count as used.
    t.write(
        &format!("sys/fs/cgroup{path}/memory.stat"),
        "anon 900000000\nfile 200000000\ninactive_file 268435456\nactive_file 1\n",
    );
    let s = t.sample();
    assert_eq!(s.cgroup.as_ref().unwrap().inactive_file, Some(256 << 20));
    assert_eq!(s.memory_headroom_bytes(), Some(768 << 20));
    t.remove(&format!("sys/fs/cgroup{path}/memory.stat"));

    // Over the limit: zero, not a wrapped-around huge number.
    t.cgroup(path, "2147483648", "1610612736");
    assert_eq!(t.sample().memory_headroom_bytes(), Some(0));

    // A cgroup limit far above what the machine has: MemAvailable binds.
    t.cgroup(path, "1073741824", "68719476736");
    assert_eq!(t.sample().memory_headroom_bytes(), Some(4 << 30));

    // Garbage limit: the cgroup's figure is unknown, MemAvailable still counts.
    t.cgroup(path, "1073741824", "unlimited");
    let s = t.sample();
    assert_eq!(s.cgroup.as_ref().unwrap().max, None);
    assert_eq!(s.memory_headroom_bytes(), Some(4 << 30));

    // The root cgroup (no memory files): no cgroup reading.
    t.write("proc/self/cgroup", "0::/\n");
    assert_eq!(t.sample().cgroup, None);

    // cgroup v1 only: no cgroup reading.
    t.write(
        "proc/self/cgroup",
        "4:memory:/user.slice\n1:name=systemd:/user.slice\n",
    );
    assert_eq!(t.sample().cgroup, None);
}

/// Waits until the monitor has published a snapshot that satisfies `want`.
async fn observe(
    rx: &mut tokio::sync::watch::Receiver<Snapshot>,
    what: &str,
    want: impl FnMut(&Snapshot) -> bool,
) -> Snapshot {
    let outcome = match tokio::time::timeout(Duration::from_secs(20), rx.wait_for(want)).await {
        Ok(Ok(s)) => Ok(s.clone()),
        Ok(Err(_)) => Err("the monitor stopped"),
        Err(_) => Err("timed out"),
    };
    outcome.unwrap_or_else(|why| panic!("waiting for {what}: {why}; last: {:#?}", *rx.borrow()))
}

#[tokio::test]
async fn monitor_follows_a_board_that_heats_up_and_cools_down() {
    let t = pi5();
    let profile = BoardProfile::detect(t.path());
    assert_eq!(profile.family, "raspberry-pi-5");
    let limits = profile.thermal.clone();
    let sampler = Sampler::new(t.path(), profile.thermal.zones);
    assert_eq!(sampler.zones(), ["cpu-thermal"]);
    let monitor = Monitor::start(sampler, Duration::from_millis(10)).unwrap();
    // The first sample is taken before start returns.
    assert_eq!(monitor.latest().temperature_c, Some(61.25));
    let mut rx = monitor.subscribe();

    // Heat up through the soft and hard limits, then cool down through their exits; each
    // step must show up in a later sample. The unrelated zone keeps changing too and must
    // never leak in.
    let steps = [
        limits.soft.enter_c + 1.0,
        limits.hard.enter_c + 1.0,
        limits.hard.exit_c - 1.0,
        limits.soft.exit_c - 1.0,
    ];
    for (i, c) in steps.into_iter().enumerate() {
        t.set_temp(1, 95_000 + i as i64);
        t.set_temp(0, (c * 1000.0) as i64);
        let s = observe(&mut rx, &format!("{c} °C"), |s| s.temperature_c == Some(c)).await;
        assert_eq!(s.thermal_zone.as_deref(), Some("cpu-thermal"));
    }

    // Memory tightens: MemAvailable falls below the cgroup headroom, then the cgroup fills.
    t.meminfo(8_245_000, 1_048_576);
    observe(&mut rx, "1 GiB available", |s| {
        s.memory_headroom_bytes() == Some(1 << 30)
    })
    .await;
    t.cgroup("/system.slice/spillway.service", "3170893824", "3221225472");
    observe(&mut rx, "a nearly full cgroup", |s| {
        s.memory_headroom_bytes() == Some(48 << 20)
    })
    .await;

    // The sensor disappears (driver unloaded): the reading goes away rather than sticking.
    t.remove("sys/class/thermal/thermal_zone0/temp");
    let s = observe(&mut rx, "no temperature", |s| s.temperature_c.is_none()).await;
    assert_eq!(s.thermal_zone, None);

    // Dropping the monitor stops its thread and closes the channel.
    drop(monitor);
    tokio::time::timeout(Duration::from_secs(20), async {
        while rx.changed().await.is_ok() {}
    })
    .await
    .expect("the channel closes when the monitor is dropped");
}

#[tokio::test]
async fn refresh_samples_without_waiting_for_the_interval() {
    let t = pi5();
    // An interval the test would never outlast: only refresh can bring new readings.
    let monitor = Monitor::start(
        Sampler::new(t.path(), BoardProfile::detect(t.path()).thermal.zones),
        Duration::from_secs(3600),
    )
    .unwrap();
    let mut rx = monitor.subscribe();
    rx.mark_unchanged();
    t.set_temp(0, 84_000);
    monitor.refresh();
    let s = observe(&mut rx, "84 °C after refresh", |s| {
        s.temperature_c == Some(84.0)
    })
    .await;
    assert!(s.age().unwrap() < Duration::from_secs(600));
    assert_eq!(monitor.latest().temperature_c, Some(84.0));
}
