//! [`CloudClient`]: the retry loop over the ordered endpoints, and the request and outcome
//! types.
//!
//! For each endpoint in order (skipping those cooling down or behind an open circuit):
//! attempt; on a transient failure (429, 5xx, connection failure, timeout, broken stream)
//! wait — `Retry-After` if the server gave one, else exponential backoff with jitter — and
//! try again, up to `retries` times, then move on; on a failure that is the endpoint's
//! (404, TLS, malformed stream) move on at once; on 401/403/402 open the circuit for that
//! base URL and move on; on a refusal of the request itself (400, 413, 422) stop.
//!
//! Every reason and message handed out (errors, [`CloudClient::availability`],
//! [`CloudClient::endpoint_status`], logs) is made by the transport's redactor from the
//! server's text, so none can hold the API token.
//!
//! The one rule above all: once a delta has been handed to the caller, nothing is retried
//! and the error says `partial`, because the caller has already forwarded that text and a
//! second attempt would send the answer's beginning twice.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::config::{CloudConfig, CloudConfigError, EndpointConfig};
use super::error::{CloudError, CloudErrorKind, MAX_SUMMARY_CHARS};
use super::health::{EndpointState, Health, HealthPolicy};
use super::https::{Then, Transport};
use super::openai;
use super::redact::{Excerpt, Redactor};
use super::secrets::ApiToken;
use super::target::Target;
use super::types::{CloudRequest, Usage};
use crate::rng::SplitMix64;
use crate::tokenizer::{AssistantReply, ReplyPiece};

/// Longest availability reason handed out (it lists every endpoint's).
const MAX_REASON_CHARS: usize = 4000;

/// A completed cloud request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudOutcome {
    /// The whole answer: its text, reasoning and tool calls (the pieces handed out,
    /// concatenated).
    pub reply: AssistantReply,
    /// `stop`, `length`, ... as the server said; `None` if it did not.
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// The router's `x-inference-provider` header: which provider ran it.
    pub provider: Option<String>,
    /// The endpoint that served it.
    pub endpoint: EndpointConfig,
    /// HTTP attempts made, over all endpoints (1 when the first one served).
    pub attempts: u32,
}

/// One endpoint and why it is being skipped, if it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointStatus {
    pub endpoint: EndpointConfig,
    pub state: EndpointState,
    pub blocked: Option<String>,
}

/// The cloud forwarder. Cheap to share (`Arc`); requests may run concurrently.
#[derive(Debug)]
pub struct CloudClient {
    targets: Vec<Target>,
    transport: Transport,
    health: Mutex<Health>,
    retries: u32,
    backoff_initial: Duration,
    backoff_max: Duration,
    retry_after_max: Duration,
}

// The client is shared by every spill task: a compile-time check that it can be, rather
// than a test that could never fail at run time.
const _: () = {
    const fn shareable<T: Send + Sync + 'static>() {}
    shareable::<CloudClient>();
};

impl CloudClient {
    /// Validates the configuration and prepares TLS (CA file or system roots). `token` is
    /// sent as `Authorization: Bearer`; `None` sends no credentials (a LAN server that
    /// needs none).
    pub fn new(
        config: CloudConfig,
        token: Option<ApiToken>,
    ) -> Result<CloudClient, CloudConfigError> {
        let targets = config.targets()?;
        let transport = Transport::new(&config, &targets, token)?;
        for t in targets.iter().filter(|t| !t.is_tls()) {
            if transport.has_token() {
                tracing::warn!(
                    endpoint = %t.base_url,
                    "plain http:// cloud endpoint: prompts, answers and the API token travel \
                     unencrypted; use it only for a router on a trusted LAN"
                );
            } else {
                tracing::warn!(
                    endpoint = %t.base_url,
                    "plain http:// cloud endpoint: prompts and answers travel unencrypted; \
                     use it only for a router on a trusted LAN"
                );
            }
        }
        let labels: Vec<(String, String)> = targets
            .iter()
            .map(|t| (t.label.clone(), t.base_url.clone()))
            .collect();
        let health = Health::new(
            HealthPolicy {
                failures_to_cool: config.failures_to_cool,
                window: Duration::from_secs(config.failure_window_secs),
                cooldown: Duration::from_secs(config.cooldown_secs),
            },
            &labels,
        );
        Ok(CloudClient {
            targets,
            transport,
            health: Mutex::new(health),
            retries: config.retries,
            backoff_initial: Duration::from_millis(config.backoff_initial_ms),
            backoff_max: Duration::from_millis(config.backoff_max_ms),
            retry_after_max: Duration::from_secs(config.retry_after_max_secs),
        })
    }

    fn redactor(&self) -> &Redactor {
        self.transport.redactor()
    }

    /// A reason fit to hand out (made of excerpts already; this is the last word).
    fn reason(&self, text: &str) -> Excerpt {
        self.redactor().excerpt(text, MAX_REASON_CHARS)
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        // The state stays consistent even if a holder panicked: every update is one step.
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request sent now could be attempted: some endpoint is neither cooling
    /// down nor behind an open circuit.
    pub fn is_available(&self) -> bool {
        self.availability().is_ok()
    }

    /// [`Self::is_available`] with the reason when not (for the routing decision's record).
    pub fn availability(&self) -> Result<(), String> {
        self.health()
            .availability(Instant::now())
            .map_err(|why| self.reason(&why).into_string())
    }

    /// Every endpoint and why it is skipped, if it is (for status and telemetry).
    pub fn endpoint_status(&self) -> Vec<EndpointStatus> {
        let blocked = self.health().status(Instant::now());
        self.targets
            .iter()
            .zip(blocked)
            .map(|(t, (state, blocked))| EndpointStatus {
                endpoint: endpoint_config(t),
                state,
                blocked: blocked.map(|why| self.reason(&why).into_string()),
            })
            .collect()
    }

    /// Runs `req` on the first endpoint that can serve it, calling `on_piece` with each
    /// piece of the answer (text, reasoning, a call's start, a piece of its arguments) as
    /// it arrives. Dropping the future aborts the request.
    pub async fn complete(
        &self,
        req: &CloudRequest,
        mut on_piece: impl FnMut(ReplyPiece<'_>),
    ) -> Result<CloudOutcome, CloudError> {
        req.validate().map_err(|m| {
            let m = self.redactor().excerpt(&m, MAX_SUMMARY_CHARS);
            CloudError::new(CloudErrorKind::InvalidRequest(m), 0, false)
        })?;
        // Ids for calls the server gives none: from the request's seed, so that a rerun of
        // the request gets the same ones, as a local rerun does.
        let call_ids = SplitMix64::new(req.seed.unwrap_or_else(random_u64) ^ CALL_ID_STREAM);
        let mut attempts = 0u32;
        let mut last: Option<CloudErrorKind> = None;
        let mut skipped: Vec<Excerpt> = Vec::new();
        'endpoints: for (i, target) in self.targets.iter().enumerate() {
            let body = Bytes::from(openai::request_body(&target.model, req));
            let mut retry = 0u32;
            loop {
                let blocked = self.health().blocked(i, Instant::now());
                if let Some(why) = blocked {
                    let why = self.reason(&why);
                    tracing::debug!(endpoint = %target.label, reason = %why, "cloud endpoint skipped");
                    skipped.push(why);
                    continue 'endpoints;
                }
                attempts += 1;
                let failure = match self
                    .transport
                    .attempt(target, body.clone(), call_ids.clone(), &mut on_piece)
                    .await
                {
                    Ok(answer) => {
                        self.health().record_success(i);
                        tracing::debug!(
                            endpoint = %target.label,
                            provider = answer.provider.as_deref().unwrap_or("-"),
                            attempts,
                            "cloud request served"
                        );
                        return Ok(CloudOutcome {
                            reply: answer.reply,
                            finish_reason: answer.finish_reason,
                            usage: answer.usage,
                            provider: answer.provider,
                            endpoint: endpoint_config(target),
                            attempts,
                        });
                    }
                    Err(f) => f,
                };
                let now = Instant::now();
                let summary = failure.kind.summary(self.redactor());
                if failure.emitted {
                    self.health().record_failure(i, now, &summary);
                    tracing::warn!(
                        error = %failure.kind,
                        "cloud stream failed after text was forwarded; not retrying"
                    );
                    return Err(CloudError::new(failure.kind, attempts, true));
                }
                match failure.next {
                    Then::Stop => {
                        return Err(CloudError::new(failure.kind, attempts, false));
                    }
                    Then::OpenCircuit { cooldown } => {
                        tracing::warn!(
                            error = %failure.kind,
                            cooldown_secs = cooldown.as_secs(),
                            "cloud circuit opened for {}",
                            target.base_url
                        );
                        self.health().open_circuit(i, now, cooldown, &summary);
                        last = Some(failure.kind);
                        continue 'endpoints;
                    }
                    Then::NextEndpoint => {
                        tracing::warn!(error = %failure.kind, "cloud endpoint failed; trying the next");
                        self.health().record_failure(i, now, &summary);
                        last = Some(failure.kind);
                        continue 'endpoints;
                    }
                    Then::Retry { after } => {
                        let cooled = self.health().record_failure(i, now, &summary);
                        if cooled || retry >= self.retries {
                            tracing::warn!(
                                error = %failure.kind,
                                cooled,
                                "cloud endpoint failed; trying the next"
                            );
                            last = Some(failure.kind);
                            continue 'endpoints;
                        }
                        let wait = match after {
                            Some(d) if d > self.retry_after_max => {
                                // Waiting that long would hold the request hostage; skip
                                // the endpoint for as long as it asked instead.
                                let why = self.reason(&format!("Retry-After {} s", d.as_secs()));
                                self.health().cool_for(i, now, d, &why);
                                last = Some(failure.kind);
                                continue 'endpoints;
                            }
                            // A little jitter keeps a fleet told the same Retry-After from
                            // coming back in lockstep.
                            Some(d) => d + (d / 10).min(Duration::from_secs(1)).mul_f64(jitter()),
                            None => self.backoff(retry),
                        };
                        retry += 1;
                        tracing::info!(
                            error = %failure.kind,
                            wait_ms = wait.as_millis() as u64,
                            retry,
                            "cloud attempt failed; retrying"
                        );
                        last = Some(failure.kind);
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        match last {
            Some(kind) => Err(CloudError::new(kind, attempts, false)),
            None => Err(CloudError::new(
                CloudErrorKind::Unavailable {
                    reason: self.reason(
                        &skipped
                            .iter()
                            .map(Excerpt::as_str)
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                },
                0,
                false,
            )),
        }
    }

    /// Exponential backoff with "equal jitter": half fixed, half random, so retries spread
    /// out but never collapse to zero.
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        let exp = self
            .backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max);
        exp / 2 + (exp / 2).mul_f64(jitter())
    }
}

fn endpoint_config(t: &Target) -> EndpointConfig {
    EndpointConfig {
        base_url: t.base_url.clone(),
        model: t.model.clone(),
    }
}

/// Set apart the stream of made-up call ids from other uses of a request's seed (the
/// sampler's, the local engine's call ids).
const CALL_ID_STREAM: u64 = 0x636c_6f75_645f_6964;

/// 64 random bits from std's randomly keyed hasher: jitter and made-up call ids need no
/// more than that, and it spares a dependency on a random-number crate.
fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

/// A uniform number in [0, 1).
fn jitter() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(initial_ms: u64, max_ms: u64) -> CloudClient {
        let cfg = CloudConfig {
            endpoints: vec![EndpointConfig {
                base_url: "http://127.0.0.1:9/v1".into(),
                model: "m".into(),
            }],
            backoff_initial_ms: initial_ms,
            backoff_max_ms: max_ms,
            ..CloudConfig::default()
        };
        CloudClient::new(cfg, None).unwrap()
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let c = client(100, 1000);
        for _ in 0..50 {
            for (retry, lo, hi) in [(0, 50, 100), (1, 100, 200), (2, 200, 400), (3, 400, 800)] {
                let d = c.backoff(retry).as_millis() as u64;
                assert!((lo..=hi).contains(&d), "retry {retry}: {d} ms");
            }
            let d = c.backoff(40).as_millis() as u64;
            assert!((500..=1000).contains(&d), "capped: {d} ms");
        }
        // Jitter actually varies.
        let samples: std::collections::HashSet<u128> =
            (0..20).map(|_| c.backoff(3).as_micros()).collect();
        assert!(samples.len() > 5, "{samples:?}");
    }

    #[tokio::test]
    async fn an_invalid_request_is_refused_without_an_attempt() {
        let c = client(10, 100);
        let err = c
            .complete(&CloudRequest::default(), |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), crate::cloud::CloudErrorCode::InvalidRequest);
        assert_eq!(err.attempts, 0);
    }
}
