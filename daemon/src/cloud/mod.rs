//! Spill-over to a cloud router over HTTPS: an OpenAI-compatible streaming client for the
//! Hugging Face router (`https://router.huggingface.co/v1`) or any compatible server (a
//! LiteLLM proxy, llama.cpp's server on the LAN).
//!
//! - [`CloudClient`] sends `POST {base}/chat/completions` with `stream: true` to an ordered
//!   list of endpoints, forwards each piece of the answer (text, reasoning, tool calls: the
//!   local engine's [`crate::tokenizer::ReplyPiece`]s) to the caller as it arrives,
//!   retries 429/5xx with jittered backoff (honouring `Retry-After`) only while nothing has
//!   been forwarded, cools endpoints down after repeated failures and opens a circuit on
//!   401/403/402. [`CloudClient::availability`] tells the routing policy whether a request
//!   sent now could be served, and why not.
//! - [`sse`]: the incremental server-sent-events parser, bounded in line and event size.
//! - `openai`: the wire format (the request body with its tools, the chunks' deltas);
//!   `assemble`: the deltas put together into an [`crate::tokenizer::AssistantReply`],
//!   bounded (calls, names, size), with ids made up for calls that came without one.
//! - [`secrets`]: the API token from a systemd credential, a private file or the
//!   environment, held in a zeroizing type that never prints.
//! - `redact`: the one place server text becomes showable ([`Excerpt`]: decoded, token
//!   removed, cleaned, bounded), and the stream redactor that keeps the token out of the
//!   answer even when it is split across chunks.
//! - [`CloudConfig`]: the `[cloud]` settings with their defaults.
//! - `types`: [`CloudRequest`], [`CloudMessage`] (with its [`CloudToolCall`]s) and
//!   [`Usage`], which the client, the wire format (`openai`) and the transport (`https`)
//!   all speak.
//! - `target`: one endpoint's base URL parsed into what a connection needs; `tls`: the
//!   rustls client configuration (CA file or system roots).
//!
//! Wiring it up:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use spillway::cloud::{CloudClient, CloudConfig, CloudMessage, CloudRequest, load_token};
//!
//! let config = CloudConfig::default();
//! let token = load_token(&config.token_sources())?;
//! tracing::info!("cloud API token from {}", token.source);
//! let client = CloudClient::new(config, Some(token.token))?;
//! if let Err(why) = client.availability() {
//!     println!("not spilling over: {why}");
//! }
//! let req = CloudRequest {
//!     messages: vec![CloudMessage::new("user", "Hello")],
//!     max_tokens: Some(64),
//!     ..CloudRequest::default()
//! };
//! let out = client
//!     .complete(&req, |piece| {
//!         if let spillway::tokenizer::ReplyPiece::Content(text) = piece {
//!             print!("{text}");
//!         }
//!     })
//!     .await?;
//! println!("\n{} via {:?} in {} attempt(s)", out.endpoint.model, out.provider, out.attempts);
//! # Ok(())
//! # }
//! ```
//!
//! Everything received is untrusted: bodies, lines and events are bounded, error messages
//! from the server are decoded, cleaned and truncated before they reach logs or replies, and
//! the token is scrubbed from anything the server echoes back, escaped, percent-encoded or
//! split across chunks.

mod assemble;
mod client;
mod config;
mod error;
mod health;
mod https;
mod openai;
mod redact;
pub mod secrets;
pub mod sse;
mod target;
mod tls;
mod types;

pub use client::{CloudClient, CloudOutcome, EndpointStatus};
pub use config::{CloudConfig, CloudConfigError, DEFAULT_BASE_URL, DEFAULT_MODEL, EndpointConfig};
pub use error::{CloudError, CloudErrorCode, CloudErrorKind, TimeoutPhase};
pub use health::EndpointState;
pub use redact::Excerpt;
pub use secrets::{
    ApiToken, LoadedToken, SecretError, TokenSource, TokenSources, load_token, load_token_with,
};
pub use types::{CloudFunctionCall, CloudMessage, CloudRequest, CloudToolCall, Usage, new_call_id};
