//! The board profiles' tests: every built-in profile, the variants by RAM, detection on
//! each board, names, refused profiles and override files.

use super::catalog::*;
use super::profile::*;
use super::*;
use crate::model::KvType;

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
    for (bad, want) in [
        ("0%", "must be between 1% and 100%"),
        ("101%", "must be between 1% and 100%"),
        ("x%", "is not a percentage"),
        ("lots", "is not a byte count"),
        ("12", "is less than 1 MiB"),
    ] {
        let err = RamBudget::parse(bad).unwrap_err();
        assert!(err.contains(want), "{bad}: {err}");
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
        text.contains("raspberry-pi-6") && text.contains("rk3588-16gb, rk3588-32gb, jetson-orin"),
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
