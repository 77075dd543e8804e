//! The HTTP front end: OpenAI's API (`openai`), Ollama's (`ollama`), `GET /health`,
//! `GET /ready` and `GET /metrics`, on the same [`Intake`] as MQTT. Nothing here decides
//! anything about a request: a handler translates the client's body into the intake's
//! schema, submits it with a reply address of its own ([`replies::Exchange`]) and
//! translates the chunks and final back. A client that disconnects drops its exchange,
//! which cancels the request (the engine stops within a token).
//!
//! The server (`server`) is hyper's HTTP/1.1 with axum's router, driven by an accept loop
//! of our own for what a board needs: a connection limit (one more connection is answered
//! 503 with `Retry-After` and closed), a time limit on each request's headers and on its body, a
//! header size limit, the body limited to `service.max_request_bytes`; HTTPS when
//! `http.tls_cert` and `http.tls_key` are given. An API key, when
//! configured, is required on every endpoint but `/health` and `/ready`; without one the
//! front end listens on loopback only.

pub mod auth;
pub mod errors;
mod ollama;
mod openai;
pub mod replies;
mod server;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::intake::Intake;
use crate::router::{Privacy, RouteHint};
use auth::ApiKey;
use errors::ApiError;
use replies::{Exchange, HttpSubmission, Waiters};

pub use server::ClientGone;

/// Largest request head (request line and headers).
const MAX_HEAD_BYTES: usize = 16 << 10;

/// Why the HTTP front end cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("http.listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "http.listen {addr} is not a loopback address and no API key is configured: anyone \
         on the network could use the model and the cloud account; set http.api_key_file \
         (mode 0600) or the systemd credential {credential}, or listen on 127.0.0.1"
    )]
    OpenWithoutKey {
        addr: SocketAddr,
        credential: String,
    },
    #[error("the HTTP API key: {0}")]
    Key(#[from] crate::cloud::secrets::SecretError),
    #[error("HTTPS: {0}")]
    Tls(String),
}

/// The models the API offers.
#[derive(Clone, Debug)]
pub struct Models {
    /// The local model's id (`GET /v1/models`; Ollama's name is this with `:latest`).
    pub local: String,
    /// Cloud models requests may name; naming one asks for the cloud route.
    pub cloud: Vec<String>,
    /// When the model file was made (Unix seconds), for `created` and `modified_at`.
    pub created: u64,
    /// Facts for Ollama's `/api/show` and `/api/tags`.
    pub details: ModelDetails,
}

/// What Ollama's endpoints say of the local model.
#[derive(Clone, Debug, Default)]
pub struct ModelDetails {
    pub family: String,
    pub parameter_size: String,
    pub quantization: String,
    pub file_bytes: u64,
    pub context_length: usize,
}

impl Models {
    /// Which model a request names: `Ok(true)` for a cloud one.
    fn resolve(&self, name: &str) -> Result<bool, ApiError> {
        let bare = name.strip_suffix(":latest").unwrap_or(name);
        if bare == self.local {
            return Ok(false);
        }
        if self.cloud.iter().any(|m| m == name) {
            return Ok(true);
        }
        let mut available = vec![self.local.clone()];
        available.extend(self.cloud.iter().cloned());
        Err(ApiError::model_not_found(name, &available))
    }
}

/// What every handler shares.
#[derive(Clone, Debug)]
pub(crate) struct AppState(Arc<Shared>);

#[derive(Debug)]
pub(crate) struct Shared {
    intake: Arc<Intake>,
    waiters: Arc<Waiters>,
    models: Models,
    key: Option<ApiKey>,
    max_body: usize,
    client_timeout: Duration,
    default_deadline: Duration,
    probes: Probes,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What `/ready` and `/metrics` read from the rest of the service.
#[derive(Clone)]
pub struct Probes {
    /// Whether the MQTT front end is connected (when it is configured).
    pub broker_connected: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The metrics in Prometheus' text format.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Probes")
    }
}

/// A chat request in neither API's shape: what both translate into. It serializes as the
/// intake's request schema (see [`crate::service::schema`]) without its id
/// ([`IntakeRequest`] adds it); `model` and `deadline_ms` are the front end's.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Chat {
    #[serde(skip)]
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteHint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privacy: Option<Privacy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(skip)]
    pub deadline_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
}

/// A message in OpenAI's form, as the intake's schema takes it.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// The intake's request: a [`Chat`] with the id the front end gave it.
#[derive(Serialize)]
struct IntakeRequest<'a> {
    id: &'a str,
    #[serde(flatten)]
    chat: &'a Chat,
}

/// Longest deadline a request may ask for.
const MAX_DEADLINE: Duration = Duration::from_secs(3600);

impl Shared {
    /// Submits a chat request: checks its model, gives it an id, and hands it to the
    /// intake with the `Idempotency-Key` header as its key. Returns the exchange and the
    /// model name replies carry.
    async fn submit_chat(
        &self,
        mut chat: Chat,
        headers: &axum::http::HeaderMap,
        gone: ClientGone,
    ) -> Result<(Exchange, String), ApiError> {
        if self.models.resolve(&chat.model)? && chat.route.is_none() {
            chat.route = Some(RouteHint::Cloud);
        }
        let idempotency_key = match headers.get("idempotency-key") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| ApiError::invalid("the Idempotency-Key header is not text"))?
                    .to_string(),
            ),
        };
        let deadline = match chat.deadline_ms {
            None => self.default_deadline,
            Some(0) => return Err(ApiError::invalid_param("deadline_ms", "must be at least 1")),
            Some(ms) => Duration::from_millis(ms).min(MAX_DEADLINE),
        };
        let request_id = random_hex(12);
        let payload = serde_json::to_vec(&IntakeRequest {
            id: &request_id,
            chat: &chat,
        })
        .map_err(|e| ApiError::internal(format!("cannot encode the request: {e}")))?;
        let ex = Exchange::submit(
            &self.intake,
            &self.waiters,
            HttpSubmission {
                request_id,
                payload,
                idempotency_key,
                deadline,
                gone,
            },
        )
        .await?;
        Ok((ex, chat.model))
    }
}

/// Reads a JSON body within the size and time limits.
pub(crate) async fn read_json<T: DeserializeOwned>(st: &Shared, body: Body) -> Result<T, ApiError> {
    // A declared length over the limit is refused before anything is read.
    if axum::body::HttpBody::size_hint(&body).lower() > st.max_body as u64 {
        return Err(ApiError::too_large(st.max_body));
    }
    let bytes = tokio::time::timeout(st.client_timeout, axum::body::to_bytes(body, st.max_body))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "timeout",
                "the request body did not arrive in time",
            )
        })?
        .map_err(|e| {
            // axum reports the length limit as its own error type, somewhere in the chain.
            let text = format!("{e}");
            if text.contains("length limit") {
                ApiError::too_large(st.max_body)
            } else {
                ApiError::invalid(format!("cannot read the request body: {text}"))
            }
        })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("the body is not a valid request: {e}")))
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `bytes` random bytes as hex (std's per-process random keys; ids need uniqueness, not
/// secrecy).
pub(crate) fn random_hex(bytes: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        for b in h.finish().to_le_bytes() {
            if out.len() < bytes * 2 {
                out.push_str(&format!("{b:02x}"));
            }
        }
    }
    out
}

/// Requires the API key, when there is one.
async fn require_key(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match &st.key {
        Some(key) if !key.admits(req.headers()) => {
            let e = ApiError::unauthorized();
            if req.uri().path().starts_with("/api/") {
                return e.ollama().into_response();
            }
            e.into_response()
        }
        _ => next.run(req).await,
    }
}

async fn health() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn ready(State(st): State<AppState>) -> Response {
    // The model is mapped and the journal recovered before the front end starts.
    if (st.probes.broker_connected)() {
        axum::Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "not ready", "reason": "the MQTT broker is not connected"})),
        )
            .into_response()
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::service::metrics::CONTENT_TYPE)],
        (st.probes.metrics)(),
    )
        .into_response()
}

async fn fallback(req: Request) -> Response {
    let e = ApiError::not_found(req.uri().path());
    if req.uri().path().starts_with("/api/") {
        return e.ollama().into_response();
    }
    e.into_response()
}

fn router(st: AppState) -> Router {
    let guarded = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/version", get(ollama::version))
        .route("/metrics", get(metrics))
        .fallback(fallback)
        .route_layer(middleware::from_fn_with_state(st.clone(), require_key));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/", get(|| async { "Spillway is running\n" }))
        .merge(guarded)
        .with_state(st)
}

/// Settings of the HTTP front end.
#[derive(Debug)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    pub section: crate::config::HttpSection,
    pub max_body: usize,
    pub default_deadline: Duration,
}

/// The running HTTP front end.
#[derive(Debug)]
pub struct HttpFront {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl HttpFront {
    /// Binds and starts serving. Refuses a non-loopback address without an API key.
    pub async fn start(
        config: HttpConfig,
        intake: Arc<Intake>,
        waiters: Arc<Waiters>,
        models: Models,
        probes: Probes,
    ) -> Result<HttpFront, HttpSetupError> {
        let key = ApiKey::load(&config.section)?;
        if key.is_none() && !config.addr.ip().is_loopback() {
            return Err(HttpSetupError::OpenWithoutKey {
                addr: config.addr,
                credential: config.section.api_key_credential.clone(),
            });
        }
        let tls = if config.section.tls_cert.as_os_str().is_empty() {
            None
        } else {
            Some(tls::acceptor(
                &config.section.tls_cert,
                &config.section.tls_key,
            )?)
        };
        let listener =
            TcpListener::bind(config.addr)
                .await
                .map_err(|source| HttpSetupError::Bind {
                    addr: config.addr,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| HttpSetupError::Bind {
                addr: config.addr,
                source,
            })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        match &key {
            Some(k) => tracing::info!(
                "HTTP API on {scheme}://{local_addr} (API key from {})",
                k.source
            ),
            None => tracing::info!("HTTP API on {scheme}://{local_addr} (loopback, no API key)"),
        }
        let st = AppState(Arc::new(Shared {
            intake,
            waiters,
            models,
            key,
            max_body: config.max_body,
            client_timeout: Duration::from_secs(config.section.client_timeout_secs),
            default_deadline: config.default_deadline,
            probes,
        }));
        let (stop, stop_rx) = watch::channel(false);
        let server = tokio::spawn(server::serve(
            listener,
            tls,
            router(st),
            config.section.max_connections,
            Duration::from_secs(config.section.client_timeout_secs),
            stop_rx,
        ));
        Ok(HttpFront {
            local_addr,
            stop,
            server,
        })
    }

    /// The address it listens on (the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections; open ones finish their requests (which the intake
    /// answers by the shutdown deadline) within `limit`.
    pub async fn finish(self, limit: Duration) {
        self.stop.send_replace(true);
        if tokio::time::timeout(limit, self.server).await.is_err() {
            tracing::warn!("HTTP connections still open at exit: closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> Models {
        Models {
            local: "ministral-3-3b".into(),
            cloud: vec!["mistralai/Ministral-3B:fastest".into()],
            created: 0,
            details: ModelDetails::default(),
        }
    }

    #[test]
    fn requests_name_a_listed_model() {
        let m = models();
        assert_eq!(m.resolve("ministral-3-3b"), Ok(false));
        assert_eq!(
            m.resolve("ministral-3-3b:latest"),
            Ok(false),
            "Ollama's tag"
        );
        assert_eq!(m.resolve("mistralai/Ministral-3B:fastest"), Ok(true));
        let e = m.resolve("gpt-4o").unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.code.as_str()),
            (404, "model_not_found")
        );
        assert!(e.message.contains("ministral-3-3b"), "{}", e.message);
    }

    #[test]
    fn a_chat_serializes_as_the_intakes_request() {
        let chat = Chat {
            model: "m".into(),
            messages: vec![ChatMessage {
                role: "user".into(),
                content: "hi".into(),
                ..ChatMessage::default()
            }],
            max_tokens: Some(7),
            stop: Some(vec!["x".into()]),
            route: Some(RouteHint::Local),
            deadline_ms: Some(500),
            ..Chat::default()
        };
        let payload = serde_json::to_vec(&IntakeRequest {
            id: "q1",
            chat: &chat,
        })
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "q1", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 7, "stop": ["x"], "stream": false, "route": "local"}),
            "unset options left out; model and deadline_ms are not the intake's"
        );
        let limits = crate::service::schema::Limits {
            max_request_bytes: 4096,
            default_max_tokens: 16,
            max_tokens_limit: 64,
        };
        let req = crate::service::schema::parse_request(&payload, &limits).unwrap();
        assert_eq!((req.id.as_str(), req.max_tokens), ("q1", 7));
    }

    #[test]
    fn random_ids_differ() {
        let (a, b) = (random_hex(12), random_hex(12));
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
