//! The `[cloud]` settings: endpoints in order of preference, where the token comes from,
//! TLS trust, timeouts, retry and cooldown policy, and the limits on what the server may
//! send. Every field has a default; [`CloudConfig::validate`] names the field at fault.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::secrets::TokenSources;
use super::target::Target;

/// The Hugging Face router's OpenAI-compatible base URL.
pub const DEFAULT_BASE_URL: &str = "https://router.huggingface.co/v1";
/// The same model family as the local one, so a spilled request reads the same; the
/// router's `:fastest` suffix lets it pick the provider with the best throughput.
pub const DEFAULT_MODEL: &str = "mistralai/Ministral-3-3B-Instruct-2512:fastest";

/// Longest model name accepted (router ids with a provider suffix are far shorter).
const MAX_MODEL_LEN: usize = 256;

/// One place a request can be sent: a base URL and the model name to ask it for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `https://host[:port]/path` (or `http://` for a router on the LAN); the client
    /// appends `/chat/completions`.
    pub base_url: String,
    /// Model name as the router expects it, suffixes included (`:fastest`, `:cheapest`,
    /// `:preferred`, `:<provider>`); passed through untouched.
    pub model: String,
}

/// The cloud forwarder's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// Endpoints in order of preference; the next is tried when one fails or cools down.
    pub endpoints: Vec<EndpointConfig>,
    /// systemd credential holding the token (`LoadCredential=<name>:...`), looked up under
    /// `$CREDENTIALS_DIRECTORY`; empty: not used.
    pub token_credential: String,
    /// File holding the token; must not be accessible to group or others. Empty: not used.
    pub token_file: PathBuf,
    /// Environment variable holding the token, the last resort (a warning is logged).
    /// Empty: not used.
    pub token_env: String,
    /// CA certificates (PEM) to trust instead of the system's; empty: the system's.
    pub ca_file: PathBuf,
    /// DNS, TCP and TLS handshake, per attempt.
    pub connect_timeout_ms: u64,
    /// From sending the request to the first text delta (the provider's queue and prompt
    /// processing).
    pub first_token_timeout_ms: u64,
    /// Longest silence between body chunks once text flows.
    pub idle_timeout_ms: u64,
    /// Retries on the same endpoint after a 429, 5xx, connection failure or timeout
    /// (only while no text was forwarded).
    pub retries: u32,
    /// First backoff; doubles per retry, with jitter.
    pub backoff_initial_ms: u64,
    /// Backoff ceiling.
    pub backoff_max_ms: u64,
    /// Longest `Retry-After` waited for; a longer one cools the endpoint for that long and
    /// the next endpoint is tried instead.
    pub retry_after_max_secs: u64,
    /// Failures of one endpoint within `failure_window_secs` that cool it down.
    pub failures_to_cool: u32,
    pub failure_window_secs: u64,
    /// How long a failing endpoint is skipped.
    pub cooldown_secs: u64,
    /// How long the circuit stays open after 401/403 (token refused).
    pub auth_cooldown_secs: u64,
    /// How long the circuit stays open after 402 (credits exhausted).
    pub credits_cooldown_secs: u64,
    /// Longest line in the event stream.
    pub max_line_bytes: usize,
    /// Largest event (all its `data:` lines together).
    pub max_event_bytes: usize,
    /// Largest response body, streamed or not.
    pub max_body_bytes: usize,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            endpoints: vec![EndpointConfig {
                base_url: DEFAULT_BASE_URL.into(),
                model: DEFAULT_MODEL.into(),
            }],
            token_credential: "hf-token".into(),
            token_file: PathBuf::new(),
            token_env: "HF_TOKEN".into(),
            ca_file: PathBuf::new(),
            connect_timeout_ms: 5_000,
            first_token_timeout_ms: 30_000,
            idle_timeout_ms: 20_000,
            retries: 2,
            backoff_initial_ms: 500,
            backoff_max_ms: 8_000,
            retry_after_max_secs: 20,
            failures_to_cool: 3,
            failure_window_secs: 60,
            cooldown_secs: 120,
            auth_cooldown_secs: 600,
            credits_cooldown_secs: 3_600,
            max_line_bytes: 64 << 10,
            max_event_bytes: 256 << 10,
            max_body_bytes: 8 << 20,
        }
    }
}

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum CloudConfigError {
    #[error("cloud.{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("cloud.ca_file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("cloud TLS setup: {0}")]
    Tls(String),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> CloudConfigError {
    CloudConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl CloudConfig {
    /// Where the token may come from, in the order [`super::secrets::load_token`] tries.
    pub fn token_sources(&self) -> TokenSources {
        TokenSources {
            credential: self.token_credential.clone(),
            file: self.token_file.clone(),
            env: self.token_env.clone(),
        }
    }

    /// Replaces the first endpoint's base URL and/or model (the `--cloud-base-url` and
    /// `--cloud-model` flags); adds an endpoint if the list is empty.
    pub fn override_primary(&mut self, base_url: Option<String>, model: Option<String>) {
        if base_url.is_none() && model.is_none() {
            return;
        }
        if self.endpoints.is_empty() {
            self.endpoints.push(EndpointConfig {
                base_url: DEFAULT_BASE_URL.into(),
                model: DEFAULT_MODEL.into(),
            });
        }
        let first = &mut self.endpoints[0];
        if let Some(b) = base_url {
            first.base_url = b;
        }
        if let Some(m) = model {
            first.model = m;
        }
    }

    /// Checks every field; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), CloudConfigError> {
        self.targets().map(|_| ())
    }

    /// The endpoints parsed into connection targets (validating everything else too).
    pub(crate) fn targets(&self) -> Result<Vec<Target>, CloudConfigError> {
        if self.endpoints.is_empty() {
            return Err(invalid("endpoints", "at least one endpoint is needed"));
        }
        let mut targets = Vec::with_capacity(self.endpoints.len());
        for (i, e) in self.endpoints.iter().enumerate() {
            validate_model(&e.model).map_err(|m| invalid(format!("endpoints[{i}].model"), m))?;
            let t = Target::parse(&e.base_url, &e.model)
                .map_err(|m| invalid(format!("endpoints[{i}].base_url"), m))?;
            targets.push(t);
        }
        let positive = [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("first_token_timeout_ms", self.first_token_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("failures_to_cool", u64::from(self.failures_to_cool)),
            ("failure_window_secs", self.failure_window_secs),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(invalid(field, "must be greater than 0"));
            }
        }
        // Far-future durations would overflow `Instant` arithmetic; a day is plenty.
        let day_ms = 86_400_000;
        for (field, ms) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("first_token_timeout_ms", self.first_token_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("backoff_max_ms", self.backoff_max_ms),
            (
                "retry_after_max_secs",
                self.retry_after_max_secs.saturating_mul(1000),
            ),
            (
                "failure_window_secs",
                self.failure_window_secs.saturating_mul(1000),
            ),
            ("cooldown_secs", self.cooldown_secs.saturating_mul(1000)),
            (
                "auth_cooldown_secs",
                self.auth_cooldown_secs.saturating_mul(1000),
            ),
            (
                "credits_cooldown_secs",
                self.credits_cooldown_secs.saturating_mul(1000),
            ),
        ] {
            if ms > day_ms {
                return Err(invalid(field, "must be at most one day"));
            }
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(invalid(
                "backoff_max_ms",
                "must be at least backoff_initial_ms",
            ));
        }
        if self.retries > 10 {
            return Err(invalid("retries", "at most 10"));
        }
        if self.failures_to_cool > 1000 {
            return Err(invalid("failures_to_cool", "at most 1000"));
        }
        if !(256..=16 << 20).contains(&self.max_line_bytes) {
            return Err(invalid("max_line_bytes", "between 256 bytes and 16 MiB"));
        }
        if self.max_event_bytes < self.max_line_bytes || self.max_event_bytes > 64 << 20 {
            return Err(invalid(
                "max_event_bytes",
                "at least max_line_bytes and at most 64 MiB",
            ));
        }
        if self.max_body_bytes < self.max_event_bytes || self.max_body_bytes > 1 << 30 {
            return Err(invalid(
                "max_body_bytes",
                "at least max_event_bytes and at most 1 GiB",
            ));
        }
        if self.token_credential.contains('/')
            || self.token_credential == "."
            || self.token_credential == ".."
        {
            return Err(invalid("token_credential", "a credential name, not a path"));
        }
        Ok(targets)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub(crate) fn first_token_timeout(&self) -> Duration {
        Duration::from_millis(self.first_token_timeout_ms)
    }
    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

fn validate_model(model: &str) -> Result<(), String> {
    if model.is_empty() {
        return Err("empty".into());
    }
    if model.len() > MAX_MODEL_LEN {
        return Err(format!("longer than {MAX_MODEL_LEN} bytes"));
    }
    if model.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("contains whitespace or a control character".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_point_at_the_router() {
        let c = CloudConfig::default();
        c.validate().unwrap();
        assert_eq!(c.endpoints[0].base_url, "https://router.huggingface.co/v1");
        assert!(c.endpoints[0].model.ends_with(":fastest"));
    }

    #[test]
    fn toml_round_trip_and_partial_tables() {
        let c: CloudConfig = toml::from_str(
            r#"
            idle_timeout_ms = 1500
            [[endpoints]]
            base_url = "http://litellm.lan:4000/v1"
            model = "ministral:cheapest"
            [[endpoints]]
            base_url = "https://router.huggingface.co/v1/"
            model = "mistralai/Ministral-3-3B-Instruct-2512:novita"
            "#,
        )
        .unwrap();
        assert_eq!(c.idle_timeout_ms, 1500);
        assert_eq!(c.retries, CloudConfig::default().retries);
        assert_eq!(c.endpoints.len(), 2);
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        let back: CloudConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        let err = toml::from_str::<CloudConfig>("idle_timeout = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `idle_timeout`"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let bad = |f: &dyn Fn(&mut CloudConfig)| {
            let mut c = CloudConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(&|c| c.endpoints.clear()).starts_with("cloud.endpoints:"));
        assert!(
            bad(&|c| c.endpoints[0].base_url = "ftp://x/v1".into())
                .starts_with("cloud.endpoints[0].base_url:")
        );
        assert!(
            bad(&|c| c.endpoints[0].model = "a model".into())
                .starts_with("cloud.endpoints[0].model:")
        );
        assert!(bad(&|c| c.idle_timeout_ms = 0).starts_with("cloud.idle_timeout_ms:"));
        assert!(bad(&|c| c.backoff_max_ms = 1).starts_with("cloud.backoff_max_ms:"));
        assert!(bad(&|c| c.max_event_bytes = 300).starts_with("cloud.max_event_bytes:"));
        assert!(bad(&|c| c.cooldown_secs = u64::MAX).starts_with("cloud.cooldown_secs:"));
        assert!(
            bad(&|c| c.token_credential = "../etc/x".into()).starts_with("cloud.token_credential:")
        );
    }

    #[test]
    fn flags_override_the_first_endpoint() {
        let mut c = CloudConfig::default();
        c.override_primary(None, Some("m:cheapest".into()));
        assert_eq!(c.endpoints[0].model, "m:cheapest");
        assert_eq!(c.endpoints[0].base_url, DEFAULT_BASE_URL);
        c.endpoints.clear();
        c.override_primary(Some("http://10.0.0.2:8080/v1".into()), None);
        assert_eq!(c.endpoints.len(), 1);
        assert_eq!(c.endpoints[0].base_url, "http://10.0.0.2:8080/v1");
        assert_eq!(c.endpoints[0].model, DEFAULT_MODEL);
    }
}
