//! Helpers for Spillway's end-to-end tests: build the real `spillway` binary once and run
//! it as a user would. Later issues add real brokers and servers here (mosquitto on a free
//! loopback port, a local HTTPS server speaking the router's protocol, a fake /sys tree).
//!
//! - [`fake_router`]: an HTTPS server speaking the cloud router's protocol from a script.
//! - [`cloud_rig`]: a fake board, the fake router and a token file for `spillway serve`, and
//!   the configuration of the tests that spill to the cloud.
//! - [`fake_fs`]: a fake `/sys` + `/proc` tree for `spillway serve --fs-root`.
//! - [`pki`]: a test CA with server and client certificates, made with `openssl`.
//! - [`chaos`]: brokers and daemons to kill and restart, and the exactly-once checks.
//! - [`mqtt5`]: a small MQTT 5 client that knows which publishes the broker acknowledged.

pub mod chaos;
pub mod cloud_rig;
pub mod fake_fs;
pub mod fake_router;
pub mod mqtt5;
pub mod pki;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// `../shared/fixtures` (or `SPILLWAY_FIXTURES`).
pub fn fixtures() -> PathBuf {
    [
        std::env::var_os("SPILLWAY_FIXTURES").map(PathBuf::from),
        Some(workspace_root().join("../shared/fixtures")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.join("README.md").exists())
    .expect("fixtures not found: set SPILLWAY_FIXTURES or put shared/ beside the checkout")
}

/// The Python interpreter that has gguf-py and numpy: `$SPILLWAY_PYTHON` (./test.sh sets it
/// to the virtual environment of scripts/python-env.sh), else `python3`.
pub fn python() -> std::ffi::OsString {
    std::env::var_os("SPILLWAY_PYTHON").unwrap_or_else(|| "python3".into())
}

/// Path of the `spillway` binary, built (once per test process) with the same cargo and the
/// `test` profile: optimised, with debug assertions and overflow checks on, and built from
/// the dependencies `cargo test` has just compiled (a `release` build would compile them
/// all again and end in a fat-LTO link: minutes on a 2-core machine).
pub fn spillway_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "--profile", "test"])
            .args(["-p", "spillway", "--bin", "spillway"])
            .args(["--message-format=json-render-diagnostics"])
            .output()
            .expect("running cargo build");
        assert!(
            out.status.success(),
            "building spillway failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "spillway")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported the spillway executable")
    })
}

/// Runs `spillway ARGS` with extra environment variables, capturing its output.
pub fn run_spillway(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(spillway_bin());
    cmd.args(args).env_remove("SPILLWAY_KERNELS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("spawning spillway")
}

/// Runs `spillway ARGS` with `input` on its standard input, capturing its output.
pub fn run_spillway_with_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(spillway_bin())
        .args(args)
        .env_remove("SPILLWAY_KERNELS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning spillway");
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Feed stdin from a thread so that a large output cannot deadlock against it.
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        // The process may exit early (an error) and close its end: not ours to report.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("waiting for spillway");
    let _ = feeder.join();
    out
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("spillway-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating a temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Debian's mosquitto on a free loopback port, with on-disk persistence (so sessions and
/// queued messages survive a restart), killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    pub port: u16,
    dir: TempDir,
    child: Option<std::process::Child>,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_with("")
    }

    /// Like [`Mosquitto::start`], with `extra` configuration lines after the listener's:
    /// TLS files, `require_certificate true`, `allow_anonymous false`, `password_file ...`
    /// (a later line overrides an earlier one). Under root, mosquitto stays root
    /// (`user root`) so that it can read the test's own files (keys, password file, its
    /// persistence directory).
    pub fn start_with(extra: &str) -> Mosquitto {
        let dir = TempDir::new("mosquitto");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 10000\nlog_dest file {}/mosquitto.log\n{extra}\n",
                dir.path().display(),
                dir.path().display()
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && start.elapsed().as_secs() < 10,
                "mosquitto did not open port {} (exit: {exited:?}); its log:\n{}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Waits (up to `timeout`) until the broker has saved its persistence file (sessions,
    /// subscriptions, queued messages) after `since`: it autosaves about every second or
    /// two, and a kill before that loses what changed since the last save. True once saved.
    pub fn wait_for_autosave(
        &self,
        since: std::time::SystemTime,
        timeout: std::time::Duration,
    ) -> bool {
        let file = self.dir.path().join("mosquitto.db");
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            let saved = std::fs::metadata(&file).and_then(|m| m.modified());
            if saved.is_ok_and(|t| t > since) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }

    /// Kills the broker abruptly (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same persistence file.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tiny Ministral-3-shaped model with the real Tekken vocabulary (random weights),
/// synthesized once per build of `spillway`.
pub fn tiny_tekken_model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| synth_tiny("tekken_240911.json", "tiny-tekken"))
}

/// A tiny random-weight model with Ministral 3's own vocabulary (`tekken_v13.json`: the
/// control tokens of its tool-call format, `[ARGS]` and `[THINK]` among them), made once
/// per build of `spillway`.
pub fn tiny_tekken_v13_model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| synth_tiny("tekken_v13.json", "tiny-tekken-v13"))
}

/// Where `synth_tiny` keeps `name`: beside the `spillway` binary that made it, named after
/// that binary's modification time, so every test process of a build shares one copy (none
/// is left behind in /tmp) and a rebuilt synthesizer makes a fresh one.
fn cached_model_path(name: &str) -> PathBuf {
    let bin = spillway_bin();
    let built = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let dir = bin
        .parent()
        .expect("the binary is in a directory")
        .join("e2e-models");
    std::fs::create_dir_all(&dir).expect("creating the models' directory");
    dir.join(format!("{name}-{built}.gguf"))
}

fn synth_tiny(vocab: &str, name: &str) -> PathBuf {
    let path = cached_model_path(name);
    if path.exists() {
        return path;
    }
    // Written aside and renamed: a concurrent test process never reads a partial file.
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    let out = run_spillway(
        &[
            "synth",
            "--shape",
            "tiny",
            "--quant",
            "q4_k_m",
            "--tekken",
            fixtures().join(vocab).to_str().unwrap(),
            "--seed",
            "3",
            "--out",
            partial.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "synth failed: {}", stderr(&out));
    std::fs::rename(&partial, &path).expect("renaming the synthesized model");
    path
}

/// A running `spillway serve`, stopped (SIGKILL) on drop unless stopped before.
#[derive(Debug)]
pub struct Serve {
    child: Option<std::process::Child>,
    _dir: TempDir,
    pub log: PathBuf,
}

impl Serve {
    /// Starts `spillway serve` with `config` (TOML text) written to a file.
    pub fn start(config: &str) -> Serve {
        Serve::start_with_args(config, &[])
    }

    /// Like [`Serve::start`], with more `spillway serve` flags after `--config FILE`.
    pub fn start_with_args(config: &str, args: &[&str]) -> Serve {
        Serve::start_with_env(config, args, &[])
    }

    /// Like [`Serve::start_with_args`], with extra environment variables. Unless `args`
    /// name a `--state-dir`, the request journal goes in the daemon's own temp dir.
    pub fn start_with_env(config: &str, args: &[&str], env: &[(&str, &str)]) -> Serve {
        let dir = TempDir::new("serve");
        let conf = dir.path().join("spillway.toml");
        std::fs::write(&conf, config).unwrap();
        let log = dir.path().join("serve.log");
        let state = dir.path().join("state");
        let state_args: Vec<&str> = if args.contains(&"--state-dir") || config.contains("state_dir")
        {
            Vec::new()
        } else {
            vec!["--state-dir", state.to_str().unwrap()]
        };
        let child = Command::new(spillway_bin())
            .args(["serve", "--config", conf.to_str().unwrap()])
            .args(state_args)
            .args(args)
            .env_remove("SPILLWAY_KERNELS")
            .env("SPILLWAY_LOG", "spillway=debug")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning spillway serve");
        Serve {
            child: Some(child),
            _dir: dir,
            log,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and returns at once ([`Serve::wait`] for the exit).
    pub fn request_stop(&self) {
        send_signal(self.pid(), 15);
    }

    /// Waits for the daemon to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        child.wait().expect("waiting for spillway serve")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        send_signal(child.id(), 15);
        child.wait().expect("waiting for spillway serve")
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the daemon's log contains `needle`; false if `timeout` passes first.
    pub fn wait_for_log(&self, needle: &str, timeout: std::time::Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if std::time::Instant::now() >= end {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends `signal` to `pid` with the `kill` command (keeps this crate free of `unsafe`).
fn send_signal(pid: u32, signal: i32) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}
