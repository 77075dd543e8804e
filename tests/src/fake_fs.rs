//! A fake `/sys` + `/proc` tree for `spillway serve --fs-root`: one SoC thermal zone, the
//! device-tree model, `/proc/meminfo` and `/proc/pressure/*`, each rewritten atomically
//! (write then rename) so the daemon's sampler never reads half a file. Tests heat the
//! board up, cool it down and tighten its memory by rewriting them.

use std::path::Path;

use crate::TempDir;

/// MemTotal of the fake board.
pub const MEM_TOTAL: u64 = 8 << 30;

/// The fake tree, removed on drop.
#[derive(Debug)]
pub struct FakeFs {
    dir: TempDir,
}

impl FakeFs {
    /// A cool (45 °C), idle board with 8 GiB of which 6 GiB available.
    pub fn new() -> FakeFs {
        let fs = FakeFs {
            dir: TempDir::new("fakefs"),
        };
        fs.write("proc/device-tree/model", "Spillway e2e test board (fake)\0");
        fs.write("proc/device-tree/compatible", "spillway,e2e-fake\0");
        fs.write("sys/class/thermal/thermal_zone0/type", "cpu-thermal\n");
        fs.set_temp_c(45.0);
        fs.set_mem_available(6 << 30);
        for resource in ["cpu", "memory", "io"] {
            fs.set_pressure(resource, 0.0);
        }
        fs
    }

    /// The directory to pass as `--fs-root`.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `rel` under the root, atomically.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) {
        let path = self.root().join(rel);
        std::fs::create_dir_all(path.parent().expect("a relative file path")).unwrap();
        let tmp = path.with_extension("e2e-tmp");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    /// Sets the SoC temperature (`thermal_zone0/temp`, millidegrees).
    pub fn set_temp_c(&self, celsius: f32) {
        let milli = (f64::from(celsius) * 1000.0).round() as i64;
        self.write("sys/class/thermal/thermal_zone0/temp", format!("{milli}\n"));
    }

    /// Sets `MemAvailable` (and a plausible `MemFree`), in bytes.
    pub fn set_mem_available(&self, bytes: u64) {
        let kb = bytes / 1024;
        self.write(
            "proc/meminfo",
            format!(
                "MemTotal:       {} kB\nMemFree:        {} kB\nMemAvailable:   {kb} kB\n\
                 Buffers:           20480 kB\nCached:          {} kB\n",
                MEM_TOTAL / 1024,
                kb / 2,
                kb / 3
            ),
        );
    }

    /// Sets `/proc/pressure/<resource>` with `some avg10` at `avg10` percent.
    pub fn set_pressure(&self, resource: &str, avg10: f64) {
        let full = if resource == "cpu" {
            String::new()
        } else {
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n".to_string()
        };
        self.write(
            &format!("proc/pressure/{resource}"),
            format!(
                "some avg10={avg10:.2} avg60={:.2} avg300=0.00 total=12345\n{full}",
                avg10 / 2.0
            ),
        );
    }
}

impl Default for FakeFs {
    fn default() -> Self {
        FakeFs::new()
    }
}
