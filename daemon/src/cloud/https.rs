//! One HTTP attempt against one endpoint: connect (TCP, then TLS with rustls and the `ring`
//! provider), `POST .../chat/completions` over HTTP/1.1 with hyper's connection API, and
//! either stream the event stream, forwarding the answer's pieces as they are parsed (put
//! together by `assemble`), or turn the error
//! status into a failure that says what the caller should do next.
//!
//! A new connection per attempt: spill-over requests are occasional and last seconds, so
//! a pool would save little, and a retry must never reuse a connection that just failed.
//! HTTP/1.1 only, as every OpenAI-compatible server speaks it and it keeps hyper's h2
//! stack out of the binary.
//!
//! The token goes into one `Authorization` header value built at start and marked
//! sensitive (hyper's `Debug` hides it). That copy, and hyper's write buffer, are not
//! zeroized: hyper's `Bytes` offer no hook for it.
//!
//! Nothing the server sends is shown or forwarded as it came: messages (error bodies, error
//! events, header values, even hyper's and rustls's errors) become [`Excerpt`]s through the
//! [`Redactor`], and the answer's text, reasoning and call arguments go through
//! [`super::redact::StreamRedactor`]s, so the token cannot come back out, however the
//! server encodes or splits it.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use secrecy::ExposeSecret;
use secrecy::zeroize::Zeroizing;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsConnector;

use super::assemble::Assembler;
use super::config::{CloudConfig, CloudConfigError};
use super::error::{CloudErrorKind, TimeoutPhase};
use super::openai::{self, MAX_MESSAGE_CHARS, StreamEvent};
use super::redact::{Excerpt, Redactor};
use super::secrets::ApiToken;
use super::sse::{SseLimits, SseParser};
use super::target::Target;
use super::tls::tls_connector;
use super::types::Usage;
use crate::rng::SplitMix64;
use crate::tokenizer::{AssistantReply, ReplyPiece};

const USER_AGENT: &str = concat!("spillway/", env!("CARGO_PKG_VERSION"));
/// Largest response head (status line and headers).
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Largest error body read for its message.
const MAX_ERROR_BODY_BYTES: usize = 16 << 10;
/// Longest `x-inference-provider` value kept.
const MAX_PROVIDER_CHARS: usize = 64;
/// Longest `Retry-After` believed (a day); anything longer is a broken server.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// A completed stream.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) reply: AssistantReply,
    pub(crate) finish_reason: Option<String>,
    pub(crate) usage: Option<Usage>,
    pub(crate) provider: Option<String>,
}

/// What the client should do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Then {
    /// Transient: try this endpoint again after a backoff (or `after`, from `Retry-After`).
    Retry { after: Option<Duration> },
    /// This endpoint cannot serve it; try the next one.
    NextEndpoint,
    /// The account was refused at this base URL: open its circuit, try other base URLs.
    OpenCircuit { cooldown: Duration },
    /// The request itself is at fault; stop.
    Stop,
}

/// A failed attempt.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: CloudErrorKind,
    pub(crate) next: Then,
    /// Text had been forwarded before the failure (so no retry and no fallback).
    pub(crate) emitted: bool,
}

impl Failure {
    fn new(kind: CloudErrorKind, next: Then) -> Failure {
        Failure {
            kind,
            next,
            emitted: false,
        }
    }
}

/// Aborts the spawned connection task when the attempt ends, however it ends (including
/// when the caller drops the request future).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What every attempt shares: TLS, the token, timeouts and limits.
pub(crate) struct Transport {
    tls: Option<TlsConnector>,
    /// Holds the token, and takes it out of everything the server sends.
    redactor: Redactor,
    authorization: Option<HeaderValue>,
    connect_timeout: Duration,
    first_token_timeout: Duration,
    idle_timeout: Duration,
    sse_limits: SseLimits,
    max_body_bytes: usize,
    auth_cooldown: Duration,
    credits_cooldown: Duration,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("tls", &self.tls.is_some())
            .field("redactor", &self.redactor)
            .field("connect_timeout", &self.connect_timeout)
            .field("first_token_timeout", &self.first_token_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("sse_limits", &self.sse_limits)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl Transport {
    pub(crate) fn new(
        cfg: &CloudConfig,
        targets: &[Target],
        token: Option<ApiToken>,
    ) -> Result<Transport, CloudConfigError> {
        let tls = if targets.iter().any(Target::is_tls) {
            Some(tls_connector(&cfg.ca_file)?)
        } else {
            None
        };
        let authorization = match &token {
            Some(t) => {
                let text = Zeroizing::new(format!("Bearer {}", t.expose_secret()));
                // `ApiToken` admits only visible ASCII, which is always a valid header value.
                let mut v =
                    HeaderValue::from_str(&text).map_err(|_| CloudConfigError::Invalid {
                        field: "token".into(),
                        message: "not usable in an HTTP header".into(),
                    })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Transport {
            tls,
            redactor: Redactor::new(token),
            authorization,
            connect_timeout: cfg.connect_timeout(),
            first_token_timeout: cfg.first_token_timeout(),
            idle_timeout: cfg.idle_timeout(),
            sse_limits: SseLimits {
                max_line_bytes: cfg.max_line_bytes,
                max_event_bytes: cfg.max_event_bytes,
            },
            max_body_bytes: cfg.max_body_bytes,
            auth_cooldown: Duration::from_secs(cfg.auth_cooldown_secs),
            credits_cooldown: Duration::from_secs(cfg.credits_cooldown_secs),
        })
    }

    pub(crate) fn has_token(&self) -> bool {
        self.redactor.token().is_some()
    }

    pub(crate) fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Text fit for an error message (server text, or an error that may quote it).
    fn shown(&self, text: &str) -> Excerpt {
        self.redactor.excerpt(text, MAX_MESSAGE_CHARS)
    }

    /// One attempt: connect, send `body`, stream the answer's pieces into `on_piece`.
    /// Calls that come without an id get one drawn from `call_ids`.
    pub(crate) async fn attempt<F: FnMut(ReplyPiece<'_>)>(
        &self,
        target: &Target,
        body: Bytes,
        call_ids: SplitMix64,
        on_piece: &mut F,
    ) -> Result<Answer, Failure> {
        let conn = match timeout(self.connect_timeout, self.connect(target)).await {
            Err(_) => {
                return Err(Failure::new(
                    CloudErrorKind::Timeout {
                        endpoint: target.label.clone(),
                        phase: TimeoutPhase::Connect,
                    },
                    Then::Retry { after: None },
                ));
            }
            Ok(r) => r?,
        };
        match conn {
            Conn::Plain(tcp) => self.exchange(target, tcp, body, call_ids, on_piece).await,
            Conn::Tls(tls) => self.exchange(target, *tls, body, call_ids, on_piece).await,
        }
    }

    async fn connect(&self, t: &Target) -> Result<Conn, Failure> {
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| {
                Failure::new(
                    CloudErrorKind::Connect {
                        endpoint: t.label.clone(),
                        message: self.shown(&e.to_string()),
                    },
                    Then::Retry { after: None },
                )
            })?;
        // Deltas are small and their latency is the point of streaming.
        let _ = tcp.set_nodelay(true);
        match (&self.tls, &t.server_name) {
            (Some(connector), Some(name)) => {
                let stream = connector.connect(name.clone(), tcp).await.map_err(|e| {
                    // A certificate the trust store refuses will be refused again; another
                    // endpoint may still work.
                    Failure::new(
                        CloudErrorKind::Tls {
                            endpoint: t.label.clone(),
                            message: self.shown(&e.to_string()),
                        },
                        Then::NextEndpoint,
                    )
                })?;
                Ok(Conn::Tls(Box::new(stream)))
            }
            _ => Ok(Conn::Plain(tcp)),
        }
    }

    async fn exchange<IO, F: FnMut(ReplyPiece<'_>)>(
        &self,
        t: &Target,
        io: IO,
        body: Bytes,
        call_ids: SplitMix64,
        on_piece: &mut F,
    ) -> Result<Answer, Failure>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let lost = |e: hyper::Error| {
            Failure::new(
                CloudErrorKind::Connect {
                    endpoint: t.label.clone(),
                    message: self.shown(&format!("connection failed before the response: {e}")),
                },
                Then::Retry { after: None },
            )
        };
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_header_size(MAX_HEAD_BYTES)
            .handshake::<_, Full<Bytes>>(TokioIo::new(io))
            .await
            .map_err(lost)?;
        let _driver = AbortOnDrop(tokio::spawn(async move {
            // Its errors surface through the response and body futures.
            let _ = conn.await;
        }));

        let mut req = Request::post(t.path.as_str())
            .header(header::HOST, t.host_header.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "text/event-stream")
            .header(header::USER_AGENT, USER_AGENT);
        if let Some(auth) = &self.authorization {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        let req = req.body(Full::new(body)).map_err(|e| {
            Failure::new(
                CloudErrorKind::InvalidRequest(
                    self.shown(&format!("cannot build the request: {e}")),
                ),
                Then::Stop,
            )
        })?;

        let first_deadline = Instant::now() + self.first_token_timeout;
        let resp = match timeout_at(first_deadline, sender.send_request(req)).await {
            Err(_) => {
                return Err(Failure::new(
                    CloudErrorKind::Timeout {
                        endpoint: t.label.clone(),
                        phase: TimeoutPhase::FirstToken,
                    },
                    Then::Retry { after: None },
                ));
            }
            Ok(r) => r.map_err(lost)?,
        };
        if !resp.status().is_success() {
            return Err(self.status_failure(t, resp).await);
        }
        let headers = resp.headers();
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !content_type.starts_with("text/event-stream") {
            let text = String::from_utf8_lossy(
                &read_bounded(resp.into_body(), MAX_ERROR_BODY_BYTES, self.idle_timeout).await,
            )
            .into_owned();
            let message = format!(
                "expected an event stream, got content-type {:?}: {}",
                self.redactor.excerpt(&content_type, 80).as_str(),
                self.shown(&openai::error_message_from_text(&text))
            );
            return Err(Failure::new(
                CloudErrorKind::Protocol {
                    endpoint: t.label.clone(),
                    message: self.redactor.excerpt(&message, MAX_MESSAGE_CHARS + 120),
                },
                Then::NextEndpoint,
            ));
        }
        if let Some(enc) = headers.get(header::CONTENT_ENCODING)
            && enc.as_bytes() != b"identity"
        {
            return Err(Failure::new(
                CloudErrorKind::Protocol {
                    endpoint: t.label.clone(),
                    message: self.shown(&format!(
                        "unrequested content-encoding {:?}",
                        self.redactor
                            .excerpt(&String::from_utf8_lossy(enc.as_bytes()), 40)
                            .as_str()
                    )),
                },
                Then::NextEndpoint,
            ));
        }
        let provider = headers
            .get("x-inference-provider")
            .map(|v| {
                self.redactor
                    .excerpt(&String::from_utf8_lossy(v.as_bytes()), MAX_PROVIDER_CHARS)
                    .into_string()
            })
            .filter(|p| !p.is_empty());
        let assembler = Assembler::new(&self.redactor, self.max_body_bytes, call_ids);
        self.stream(
            t,
            resp.into_body(),
            first_deadline,
            provider,
            assembler,
            on_piece,
        )
        .await
    }

    /// Reads the event stream to `[DONE]`, forwarding each piece of the answer once the
    /// assembler has passed it (so `emitted` means something the caller really received).
    async fn stream<F: FnMut(ReplyPiece<'_>)>(
        &self,
        t: &Target,
        mut body: Incoming,
        first_deadline: Instant,
        provider: Option<String>,
        mut assembler: Assembler<'_>,
        on_piece: &mut F,
    ) -> Result<Answer, Failure> {
        let mut parser = SseParser::new(self.sse_limits);
        let mut events = Vec::new();
        let mut finish_reason = None;
        let mut usage = None;
        let mut received = 0usize;
        let mut emitted = false;
        let fail = |kind: CloudErrorKind, next: Then, emitted: bool| Failure {
            kind,
            next,
            emitted,
        };
        let protocol = |message: Excerpt| CloudErrorKind::Protocol {
            endpoint: t.label.clone(),
            message,
        };
        // The answer is exactly what was streamed: the assembler keeps what it hands out.
        let answer = |reply: AssistantReply, finish_reason, usage| Answer {
            reply,
            finish_reason,
            usage,
            provider: provider.clone(),
        };
        loop {
            // Before the first delta the provider may be queueing or reading the prompt;
            // after it, a silence is a stall.
            let deadline = if emitted {
                Instant::now() + self.idle_timeout
            } else {
                first_deadline
            };
            let frame = match timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    let phase = if emitted {
                        TimeoutPhase::Idle
                    } else {
                        TimeoutPhase::FirstToken
                    };
                    let kind = CloudErrorKind::Timeout {
                        endpoint: t.label.clone(),
                        phase,
                    };
                    return Err(fail(kind, Then::Retry { after: None }, emitted));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let kind = CloudErrorKind::Stream {
                        endpoint: t.label.clone(),
                        message: self.shown(&format!("connection failed mid-stream: {e}")),
                    };
                    return Err(fail(kind, Then::Retry { after: None }, emitted));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            received += data.len();
            if received > self.max_body_bytes {
                let kind = protocol(self.shown(&format!(
                    "response larger than {} bytes",
                    self.max_body_bytes
                )));
                return Err(fail(kind, Then::NextEndpoint, emitted));
            }
            if let Err(e) = parser.feed(&data, &mut events) {
                let kind = protocol(self.shown(&e.to_string()));
                return Err(fail(kind, Then::NextEndpoint, emitted));
            }
            for ev in events.drain(..) {
                match openai::interpret(&ev, &self.redactor) {
                    Err(m) => return Err(fail(protocol(m), Then::NextEndpoint, emitted)),
                    Ok(StreamEvent::Done) => {
                        return match assembler.finish(on_piece) {
                            Ok(reply) => Ok(answer(reply, finish_reason, usage)),
                            Err(m) => Err(fail(protocol(m), Then::NextEndpoint, emitted)),
                        };
                    }
                    Ok(StreamEvent::Error(message)) => {
                        let kind = CloudErrorKind::Stream {
                            endpoint: t.label.clone(),
                            message,
                        };
                        return Err(fail(kind, Then::Retry { after: None }, emitted));
                    }
                    Ok(StreamEvent::Chunk {
                        content,
                        reasoning,
                        calls,
                        finish_reason: reason,
                        usage: counts,
                    }) => {
                        if counts.is_some() {
                            usage = counts;
                        }
                        if reason.is_some() {
                            finish_reason = reason;
                        }
                        let pieces = || -> Result<(), Excerpt> {
                            if let Some(r) = reasoning {
                                assembler.reasoning(&r, on_piece)?;
                            }
                            if let Some(c) = content {
                                assembler.content(&c, on_piece)?;
                            }
                            for call in calls {
                                assembler.call(call, on_piece)?;
                            }
                            Ok(())
                        };
                        let result = pieces();
                        emitted = assembler.emitted();
                        if let Err(m) = result {
                            return Err(fail(protocol(m), Then::NextEndpoint, emitted));
                        }
                    }
                }
            }
        }
        // The connection closed without `[DONE]`. Some servers do that after the final
        // chunk; without a finish reason, though, the answer was cut short.
        if finish_reason.is_some() && !parser.has_partial_event() {
            return match assembler.finish(on_piece) {
                Ok(reply) => Ok(answer(reply, finish_reason, usage)),
                Err(m) => Err(fail(protocol(m), Then::NextEndpoint, emitted)),
            };
        }
        let kind = CloudErrorKind::Stream {
            endpoint: t.label.clone(),
            message: self.shown("the stream ended before [DONE]"),
        };
        Err(fail(kind, Then::Retry { after: None }, emitted))
    }

    /// The failure for a non-2xx response, with the server's message and what to do next.
    async fn status_failure(&self, t: &Target, resp: Response<Incoming>) -> Failure {
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // The body may be cut at the limit, mid-token: the excerpt redacts such a piece too.
        let text = String::from_utf8_lossy(
            &read_bounded(resp.into_body(), MAX_ERROR_BODY_BYTES, self.idle_timeout).await,
        )
        .into_owned();
        let mut message = self.shown(&openai::error_message_from_text(&text));
        if message.is_empty() {
            message = self.shown(status.canonical_reason().unwrap_or("no message"));
        }
        let endpoint = t.label.clone();
        let code = status.as_u16();
        match code {
            401 | 403 => Failure::new(
                CloudErrorKind::Auth {
                    endpoint,
                    status: code,
                    message,
                },
                Then::OpenCircuit {
                    cooldown: self.auth_cooldown,
                },
            ),
            402 => Failure::new(
                CloudErrorKind::Credits { endpoint, message },
                Then::OpenCircuit {
                    cooldown: self.credits_cooldown,
                },
            ),
            408 | 429 | 500..=599 => Failure::new(
                CloudErrorKind::Http {
                    endpoint,
                    status: code,
                    message,
                },
                Then::Retry { after: retry_after },
            ),
            400 | 413 | 422 => Failure::new(
                CloudErrorKind::Rejected {
                    endpoint,
                    status: code,
                    message,
                },
                Then::Stop,
            ),
            // 404 (unknown model here), redirects (never followed: the token must not go
            // to another host) and the rest: this endpoint cannot serve it.
            _ => Failure::new(
                CloudErrorKind::Http {
                    endpoint,
                    status: code,
                    message,
                },
                Then::NextEndpoint,
            ),
        }
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Reads at most `limit` bytes of a body, giving up after `max_wait` in total (an error
/// body only supplies a message; a server trickling it must not hold up the retry).
async fn read_bounded(mut body: Incoming, limit: usize, max_wait: Duration) -> Vec<u8> {
    let deadline = Instant::now() + max_wait;
    let mut out = Vec::new();
    while out.len() < limit {
        match timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(d) = frame.into_data() {
                    let n = d.len().min(limit - out.len());
                    out.extend_from_slice(&d[..n]);
                }
            }
            _ => break,
        }
    }
    out
}

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3), relative to `now`;
/// `None` when unparsable. Capped at a day.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    let d = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than fit a u64 is still "a very long time".
        Duration::from_secs(
            v.parse::<u64>()
                .unwrap_or(u64::MAX)
                .min(MAX_RETRY_AFTER.as_secs()),
        )
    } else {
        let date = httpdate::parse_http_date(v).ok()?;
        date.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        let p = |v: &str| parse_retry_after(v, now);
        assert_eq!(p("3"), Some(Duration::from_secs(3)));
        assert_eq!(p(" 0 "), Some(Duration::ZERO));
        assert_eq!(p("99999999999999999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            p("Wed, 21 Oct 2026 07:28:07 GMT"),
            Some(Duration::from_secs(7))
        );
        // A date in the past means "now".
        assert_eq!(p("Wed, 21 Oct 2026 07:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(p("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(p("-1"), None);
        assert_eq!(p("1.5"), None);
        assert_eq!(p("soon"), None);
        assert_eq!(p(""), None);
    }
}
