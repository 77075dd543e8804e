//! Board detection on files captured from real boards (`tests/boards/*`, provenance in
//! `tests/boards/SOURCES.md`): each directory is a root with the board's `/proc/cpuinfo`,
//! `/proc/meminfo` and device tree, read exactly as the daemon reads `/`.

use std::path::{Path, PathBuf};

use spillway::board::{Catalog, HostInfo};
use spillway::model::KvType;

fn captured(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/boards")
        .join(name)
}

struct Expect {
    dir: &'static str,
    profile: &'static str,
    processors: usize,
    arch: &'static str,
    cores: &'static str,
    /// Features the profile expects that this CPU lacks.
    missing: &'static [&'static str],
}

const BOARDS: [Expect; 7] = [
    Expect {
        dir: "raspberry-pi-5-8gb",
        profile: "raspberry-pi-5-8gb",
        processors: 4,
        arch: "aarch64",
        cores: "4x Cortex-A76",
        missing: &[],
    },
    Expect {
        dir: "raspberry-pi-4-4gb",
        profile: "raspberry-pi-4-4gb",
        processors: 4,
        arch: "aarch64",
        cores: "4x Cortex-A72",
        missing: &[],
    },
    Expect {
        dir: "raspberry-pi-4-8gb",
        profile: "raspberry-pi-4-8gb",
        processors: 4,
        arch: "aarch64",
        cores: "4x Cortex-A72",
        missing: &[],
    },
    Expect {
        dir: "jetson-orin-nano-8gb",
        profile: "jetson-orin-8gb",
        processors: 6,
        arch: "aarch64",
        cores: "6x Cortex-A78AE",
        missing: &[],
    },
    Expect {
        // No meminfo was captured: the RAM is unknown, so the smallest variant.
        dir: "rk3588-orange-pi-5",
        profile: "rk3588-4gb",
        processors: 8,
        arch: "aarch64",
        cores: "4x Cortex-A76 + 4x Cortex-A55",
        missing: &[],
    },
    Expect {
        // A 7 GB cloud VM: below the 8 GB variant's threshold.
        dir: "generic-x86_64",
        profile: "generic-x86_64-4gb",
        processors: 2,
        arch: "x86_64",
        cores: "2x Intel(R) Xeon(R) CPU E5-2673 v4 @ 2.30GHz",
        missing: &[],
    },
    Expect {
        // Cortex-A53 (ARMv8.0): the generic aarch64 profile expects only NEON.
        dir: "generic-aarch64-le-potato",
        profile: "generic-aarch64-4gb",
        processors: 4,
        arch: "aarch64",
        cores: "4x Cortex-A53",
        missing: &[],
    },
];

#[test]
fn every_captured_board_gets_its_profile() {
    let catalog = Catalog::builtin();
    for want in &BOARDS {
        let host = HostInfo::read(&captured(want.dir));
        assert_eq!(host.arch, want.arch, "{}", want.dir);
        assert_eq!(host.cpuinfo.processors, want.processors, "{}", want.dir);
        assert_eq!(
            host.cpuinfo.cores().as_deref(),
            Some(want.cores),
            "{}",
            want.dir
        );
        let found = catalog.detect(&host);
        assert_eq!(found.profile.name, want.profile, "{}: {found:?}", want.dir);
        assert_eq!(
            found.profile.missing_features(&host),
            want.missing,
            "{}",
            want.dir
        );
    }
}

#[test]
fn the_pi_model_line_identifies_a_pi_without_a_device_tree() {
    // Containers often hide /proc/device-tree; the Raspberry Pi kernel's cpuinfo still says.
    let dir = std::env::temp_dir().join(format!("spillway-pi5-nodt-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("proc")).unwrap();
    for f in ["cpuinfo", "meminfo"] {
        std::fs::copy(
            captured("raspberry-pi-5-8gb").join("proc").join(f),
            dir.join("proc").join(f),
        )
        .unwrap();
    }
    let host = HostInfo::read(&dir);
    assert_eq!(host.device_tree.model, None);
    let found = Catalog::builtin().detect(&host);
    assert_eq!(found.profile.name, "raspberry-pi-5-8gb");
    assert!(
        found.family_reason.contains("Raspberry Pi 5 Model B"),
        "{found:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_pi_4_lacks_the_dot_product_a_pi_5_profile_expects() {
    // Forcing the Pi 5 profile onto a Pi 4 is reported: its cores have no asimddp.
    let host = HostInfo::read(&captured("raspberry-pi-4-4gb"));
    let pi5 = Catalog::builtin().profile("raspberry-pi-5", &host).unwrap();
    assert_eq!(pi5.name, "raspberry-pi-5-4gb");
    assert_eq!(pi5.missing_features(&host), ["asimddp"]);
}

#[test]
fn the_engine_defaults_follow_the_ram() {
    let catalog = Catalog::builtin();
    let pi4_4 = catalog.detect(&HostInfo::read(&captured("raspberry-pi-4-4gb")));
    let pi4_8 = catalog.detect(&HostInfo::read(&captured("raspberry-pi-4-8gb")));
    assert_eq!(pi4_4.profile.memory.kv_type, KvType::Q8_0);
    assert_eq!(pi4_8.profile.memory.kv_type, KvType::F16);
    assert!(pi4_8.profile.memory.context > pi4_4.profile.memory.context);
    // 75% of the 4 GB Pi's MemTotal (3833280 kB): about 2.74 GiB.
    let host = HostInfo::read(&captured("raspberry-pi-4-4gb"));
    let budget = pi4_4
        .profile
        .memory
        .ram_budget
        .bytes(host.mem_total)
        .unwrap();
    assert_eq!(budget, 3_833_280 * 1024 * 3 / 4);
}
