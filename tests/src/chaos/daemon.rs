//! `spillway serve` for the chaos tests: one daemon with its own configuration, state
//! directory (the request journal) and canary cloud token, stopped with SIGTERM or SIGKILL
//! and started again with the same state directory, its log kept across all its lives.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{TempDir, spillway_bin};

/// The daemon's settings that the chaos cases vary.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub model: PathBuf,
    pub broker_port: u16,
    pub device: String,
    /// `[service] queue`.
    pub queue: usize,
    /// `[service] shutdown_deadline_secs`.
    pub shutdown_deadline_secs: u64,
    /// `[engine] context`.
    pub context: usize,
    /// `[engine] sessions`: requests generated at once (0: the board profile's).
    pub sessions: usize,
    /// More TOML, appended (it may open sections of its own).
    pub extra: String,
}

impl DaemonConfig {
    pub fn new(model: &Path, broker_port: u16, device: &str) -> DaemonConfig {
        DaemonConfig {
            model: model.to_path_buf(),
            broker_port,
            device: device.to_string(),
            queue: 8,
            shutdown_deadline_secs: 2,
            context: 4096,
            sessions: 0,
            extra: String::new(),
        }
    }

    /// The configuration file: one engine thread, telemetry every second, a generous
    /// generation-rate prior (the tiny model is fast, and wait estimates should not refuse
    /// work), the cloud token read from the file only, and short cloud timeouts.
    pub fn to_toml(&self) -> String {
        format!(
            r#"[model]
path = {model:?}
[engine]
threads = 1
context = {context}
sessions = {sessions}
[mqtt]
broker = "mqtt://127.0.0.1:{port}"
device = "{device}"
keep_alive_secs = 5
[service]
telemetry_secs = 1
queue = {queue}
shutdown_deadline_secs = {deadline}
[router]
rate_prior = 200.0
[cloud]
token_credential = ""
token_env = ""
connect_timeout_ms = 1000
first_token_timeout_ms = 5000
retries = 0
{extra}
"#,
            model = self.model.display().to_string(),
            context = self.context,
            sessions = self.sessions,
            port = self.broker_port,
            device = self.device,
            queue = self.queue,
            deadline = self.shutdown_deadline_secs,
            extra = self.extra,
        )
    }
}

/// A unique cloud token in a 0600 file: it must never appear in a log line or an MQTT
/// message.
#[derive(Debug)]
pub struct Canary {
    pub token: String,
    pub file: PathBuf,
}

impl Canary {
    fn create(dir: &Path) -> Result<Canary, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let token = format!("hf_ChaosCanary{:x}x{nanos:x}", std::process::id());
        let file = dir.join("hf-token");
        std::fs::write(&file, format!("{token}\n"))
            .map_err(|e| format!("writing the token file: {e}"))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod 600 the token file: {e}"))?;
        Ok(Canary { token, file })
    }

    /// Where `text` shows the token, or a 12-character piece of its secret part.
    pub fn leaks_in(&self, text: &str) -> bool {
        let secret = &self.token[3..];
        text.contains(&self.token)
            || (0..=secret.len().saturating_sub(12)).any(|i| text.contains(&secret[i..i + 12]))
    }
}

/// How a SIGTERM ended.
#[derive(Debug)]
pub struct Stopped {
    /// None: it had not exited within the allowed time and was killed.
    pub status: Option<ExitStatus>,
    pub took: Duration,
}

/// A `spillway serve` that can die and come back; killed on drop.
#[derive(Debug)]
pub struct Daemon {
    dir: TempDir,
    state_dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    lives: u32,
    pub canary: Canary,
}

impl Daemon {
    /// Writes `config` and the canary token file, then starts the daemon with
    /// `--state-dir`, `--cloud-base-url cloud_url` (the token file with it) and `args`.
    pub fn start(config: &DaemonConfig, cloud_url: &str, args: &[&str]) -> Result<Daemon, String> {
        let dir = TempDir::new("chaos-serve");
        let state_dir = dir.path().join("state");
        std::fs::create_dir_all(&state_dir).map_err(|e| format!("creating the state dir: {e}"))?;
        let conf = dir.path().join("spillway.toml");
        std::fs::write(&conf, config.to_toml()).map_err(|e| format!("writing the config: {e}"))?;
        let canary = Canary::create(dir.path())?;
        let mut all = vec![
            "serve".to_string(),
            "--config".into(),
            conf.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--cloud-base-url".into(),
            cloud_url.to_string(),
            "--cloud-token-file".into(),
            canary.file.display().to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let mut d = Daemon {
            log: dir.path().join("serve.log"),
            dir,
            state_dir,
            args: all,
            child: None,
            lives: 0,
            canary,
        };
        d.start_again()?;
        Ok(d)
    }

    /// Starts the daemon again with the same configuration and state directory.
    pub fn start_again(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err("the daemon is still running".into());
        }
        self.lives += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("opening {}: {e}", self.log.display()))?;
        let _ = writeln!(
            log,
            "==== chaos rig: life {} of this daemon ====",
            self.lives
        );
        let child = Command::new(spillway_bin())
            .args(&self.args)
            .current_dir(self.dir.path())
            .env_remove("SPILLWAY_KERNELS")
            .env_remove("HF_TOKEN")
            .env("SPILLWAY_LOG", "spillway=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning spillway serve: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How many times it was started.
    pub fn lives(&self) -> u32 {
        self.lives
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Whether the process is alive (reaps it if it exited by itself).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// SIGTERM, then waits up to `allowed` for the exit; past that, SIGKILL.
    pub fn sigterm(&mut self, allowed: Duration) -> Stopped {
        let start = Instant::now();
        let Some(mut child) = self.child.take() else {
            return Stopped {
                status: None,
                took: Duration::ZERO,
            };
        };
        send_signal(child.id(), "TERM");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Stopped {
                    status: Some(status),
                    took: start.elapsed(),
                };
            }
            if start.elapsed() > allowed {
                let _ = child.kill();
                let _ = child.wait();
                return Stopped {
                    status: None,
                    took: start.elapsed(),
                };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: no shutdown at all, as an OOM kill or a crash.
    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The resident set (VmRSS) in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// The daemon's log, all lives.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log of the current (last) life only.
    pub fn last_life_log(&self) -> String {
        let all = self.log_text();
        let marker = format!("==== chaos rig: life {} ", self.lives);
        all.find(&marker)
            .map(|i| all[i..].to_string())
            .unwrap_or(all)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Sends `signal` (a name: TERM, KILL) with the `kill` command (this crate has no `unsafe`).
fn send_signal(pid: u32, signal: &str) {
    // A process that already exited makes `kill` fail: the caller's wait sees the exit.
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status();
}
