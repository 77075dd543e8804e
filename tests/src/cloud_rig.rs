//! The rig of the end-to-end tests in which `spillway serve` spills to the cloud
//! (`tests/serve_routing.rs`, `tests/chaos_secrets.rs`): a fake board and the fake HTTPS
//! router with its CA and a token file ([`CloudRig`], and [`CloudRig::serve_args`], the
//! flags that point the daemon at them), and the daemon configuration both use
//! ([`config`]). Each test keeps its own MQTT client, daemon handle and checks.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::fake_fs::FakeFs;
use crate::fake_router::FakeRouter;
use crate::{Mosquitto, TempDir, tiny_tekken_model};

/// A fake `/sys` + `/proc` tree for `--fs-root` (read as `--board generic`: soft limit
/// 70/65 °C, hard 80/75 °C enter/exit) and the fake router, whose CA and the cloud token
/// (mode 0600, as the daemon requires of a token file) are written in the test's directory.
#[derive(Debug)]
pub struct CloudRig {
    pub fs: FakeFs,
    pub router: FakeRouter,
    /// The router's CA certificate, for `[cloud] ca_file`.
    pub ca_file: PathBuf,
    /// The file holding the token, for `--cloud-token-file`.
    pub token_file: PathBuf,
}

impl CloudRig {
    /// Starts the fake board and router; writes the router's CA and `token` into `dir`.
    pub fn start(dir: &TempDir, token: &str) -> CloudRig {
        let fs = FakeFs::new();
        let router = FakeRouter::start();
        let ca_file = dir.path().join("router-ca.pem");
        std::fs::write(&ca_file, router.ca_pem()).unwrap();
        let token_file = dir.path().join("hf-token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        CloudRig {
            fs,
            router,
            ca_file,
            token_file,
        }
    }

    /// The `spillway serve` flags that read the board from the fake tree and send the
    /// cloud's requests, with the token from the file, to the fake router.
    pub fn serve_args(&self) -> [&str; 8] {
        [
            "--fs-root",
            self.fs.root().to_str().unwrap(),
            "--board",
            "generic",
            "--cloud-base-url",
            self.router.base_url(),
            "--cloud-token-file",
            self.token_file.to_str().unwrap(),
        ]
    }
}

/// The daemon's configuration as `device` on `broker`: the tiny Tekken model, one engine
/// thread, telemetry every second, the board sampled every 100 ms, a generous
/// generation-rate prior (the tiny model is fast, and wait estimates should not get in the
/// way), and a cloud client trusting `ca_file` with short timeouts and quick backoff that
/// reads its token from the file only. `router_extra` and `cloud_extra` are more lines for
/// the `[router]` and `[cloud]` tables (each test's retries, cooldowns and idle timeout).
pub fn config(
    device: &str,
    broker: &Mosquitto,
    ca_file: &Path,
    router_extra: &str,
    cloud_extra: &str,
) -> String {
    format!(
        r#"[model]
path = {model:?}
[engine]
threads = 1
context = 1024
[mqtt]
broker = {broker:?}
device = "{device}"
keep_alive_secs = 5
[service]
telemetry_secs = 1
[router]
sample_ms = 100
rate_prior = 200.0
{router_extra}
[cloud]
ca_file = {ca:?}
token_credential = ""
token_env = ""
connect_timeout_ms = 2000
first_token_timeout_ms = 3000
backoff_initial_ms = 50
backoff_max_ms = 200
{cloud_extra}
"#,
        model = tiny_tekken_model().display().to_string(),
        broker = broker.url(),
        ca = ca_file.display().to_string(),
    )
}
