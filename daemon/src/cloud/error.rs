//! Why a cloud request failed, and the reply error code each failure maps to. Messages
//! quote the endpoint and server text; every message is an [`Excerpt`], which only the
//! redactor makes (decoded, cleaned, bounded, without the token), so no error can show the
//! token whatever the server sent.

use std::fmt;

use super::redact::{Excerpt, Redactor};

/// Longest summary kept as a cooldown or circuit reason.
pub(crate) const MAX_SUMMARY_CHARS: usize = 600;

/// Which timeout fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// DNS, TCP connect and TLS handshake.
    Connect,
    /// Waiting for the response and its first text delta.
    FirstToken,
    /// Silence between chunks after text had started.
    Idle,
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Connect => "connecting",
            TimeoutPhase::FirstToken => "waiting for the first token",
            TimeoutPhase::Idle => "waiting for the next chunk (stalled stream)",
        })
    }
}

/// What went wrong, on which endpoint (`endpoint` is "base URL (model)").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloudErrorKind {
    /// Nothing was sent: every endpoint is cooling down or behind an open circuit.
    #[error("cloud unavailable: {reason}")]
    Unavailable { reason: Excerpt },
    /// The request cannot be sent as it is.
    #[error("invalid cloud request: {0}")]
    InvalidRequest(Excerpt),
    #[error("cannot connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: Excerpt },
    #[error("TLS with {endpoint} failed: {message}")]
    Tls { endpoint: String, message: Excerpt },
    /// 401 or 403: the token was refused; the circuit is now open.
    #[error("{endpoint} refused the API token (HTTP {status}): {message}")]
    Auth {
        endpoint: String,
        status: u16,
        message: Excerpt,
    },
    /// 402: the account is out of credits; the circuit is now open.
    #[error("{endpoint}: credits exhausted (HTTP 402): {message}")]
    Credits { endpoint: String, message: Excerpt },
    /// 429, 5xx and other statuses that say nothing about the request itself.
    #[error("{endpoint}: HTTP {status}: {message}")]
    Http {
        endpoint: String,
        status: u16,
        message: Excerpt,
    },
    /// 400, 413, 422: the request itself was refused; another try would fare no better.
    #[error("{endpoint} rejected the request (HTTP {status}): {message}")]
    Rejected {
        endpoint: String,
        status: u16,
        message: Excerpt,
    },
    #[error("{endpoint}: timed out {phase}")]
    Timeout {
        endpoint: String,
        phase: TimeoutPhase,
    },
    /// An `error` event in the stream, or the stream ending before `[DONE]`.
    #[error("{endpoint}: the stream failed: {message}")]
    Stream { endpoint: String, message: Excerpt },
    /// A response that breaks the protocol or a limit (oversize line, not an event stream,
    /// malformed chunk).
    #[error("{endpoint}: bad response: {message}")]
    Protocol { endpoint: String, message: Excerpt },
}

impl CloudErrorKind {
    /// The reply error code.
    pub fn code(&self) -> CloudErrorCode {
        match self {
            CloudErrorKind::Unavailable { .. }
            | CloudErrorKind::Connect { .. }
            | CloudErrorKind::Tls { .. }
            | CloudErrorKind::Auth { .. }
            | CloudErrorKind::Credits { .. } => CloudErrorCode::Unavailable,
            CloudErrorKind::Http { status, .. } if *status == 429 || *status >= 500 => {
                CloudErrorCode::Unavailable
            }
            CloudErrorKind::InvalidRequest(_) => CloudErrorCode::InvalidRequest,
            CloudErrorKind::Timeout { .. } => CloudErrorCode::Timeout,
            CloudErrorKind::Http { .. }
            | CloudErrorKind::Rejected { .. }
            | CloudErrorKind::Stream { .. }
            | CloudErrorKind::Protocol { .. } => CloudErrorCode::Error,
        }
    }

    /// The failure without the endpoint, for cooldown and circuit reasons (which name the
    /// endpoint themselves).
    pub(crate) fn summary(&self, redactor: &Redactor) -> Excerpt {
        let text = match self {
            CloudErrorKind::Unavailable { reason } => reason.to_string(),
            CloudErrorKind::InvalidRequest(m) => m.to_string(),
            CloudErrorKind::Connect { message, .. } => format!("connection failed: {message}"),
            CloudErrorKind::Tls { message, .. } => format!("TLS failed: {message}"),
            CloudErrorKind::Auth {
                status, message, ..
            } => format!("API token refused (HTTP {status}): {message}"),
            CloudErrorKind::Credits { message, .. } => {
                format!("credits exhausted (HTTP 402): {message}")
            }
            CloudErrorKind::Http {
                status, message, ..
            }
            | CloudErrorKind::Rejected {
                status, message, ..
            } => format!("HTTP {status}: {message}"),
            CloudErrorKind::Timeout { phase, .. } => format!("timed out {phase}"),
            CloudErrorKind::Stream { message, .. } => format!("stream failed: {message}"),
            CloudErrorKind::Protocol { message, .. } => format!("bad response: {message}"),
        };
        redactor.excerpt(&text, MAX_SUMMARY_CHARS)
    }
}

/// What a failed cloud request tells the client, as the reply's `error.code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloudErrorCode {
    /// `cloud_unavailable`: the route cannot take requests now (down, refused the token,
    /// out of credits, overloaded).
    Unavailable,
    /// `cloud_error`: the route failed while answering or broke the protocol.
    Error,
    /// `timeout`: no answer in time.
    Timeout,
    /// `invalid_request`: the request cannot be sent as it is.
    InvalidRequest,
}

impl CloudErrorCode {
    /// The reply's `error.code`.
    pub fn as_str(self) -> &'static str {
        match self {
            CloudErrorCode::Unavailable => "cloud_unavailable",
            CloudErrorCode::Error => "cloud_error",
            CloudErrorCode::Timeout => "timeout",
            CloudErrorCode::InvalidRequest => "invalid_request",
        }
    }
}

/// A failed cloud request: the last failure, how many HTTP attempts were made, and whether
/// text had already been forwarded (then the caller must not fall back to another route,
/// or the answer would be duplicated).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}{}", attempts_note(*attempts))]
pub struct CloudError {
    pub kind: CloudErrorKind,
    pub attempts: u32,
    pub partial: bool,
}

fn attempts_note(attempts: u32) -> String {
    match attempts {
        0 | 1 => String::new(),
        n => format!(" (after {n} attempts)"),
    }
}

impl CloudError {
    /// The reply error code.
    pub fn code(&self) -> CloudErrorCode {
        self.kind.code()
    }

    pub(crate) fn new(kind: CloudErrorKind, attempts: u32, partial: bool) -> CloudError {
        CloudError {
            kind,
            attempts,
            partial,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let e = |kind| CloudError::new(kind, 1, false).code().as_str();
        let r = Redactor::new(None);
        let ep = || "x".to_string();
        let m = || r.excerpt("x", 10);
        assert_eq!(
            e(CloudErrorKind::Unavailable { reason: m() }),
            "cloud_unavailable"
        );
        assert_eq!(
            e(CloudErrorKind::Credits {
                endpoint: ep(),
                message: m()
            }),
            "cloud_unavailable"
        );
        assert_eq!(
            e(CloudErrorKind::Http {
                endpoint: ep(),
                status: 503,
                message: m()
            }),
            "cloud_unavailable"
        );
        assert_eq!(
            e(CloudErrorKind::Http {
                endpoint: ep(),
                status: 404,
                message: m()
            }),
            "cloud_error"
        );
        assert_eq!(
            e(CloudErrorKind::Timeout {
                endpoint: ep(),
                phase: TimeoutPhase::Idle
            }),
            "timeout"
        );
        assert_eq!(
            e(CloudErrorKind::Stream {
                endpoint: ep(),
                message: m()
            }),
            "cloud_error"
        );
        assert_eq!(e(CloudErrorKind::InvalidRequest(m())), "invalid_request");
    }

    #[test]
    fn display_mentions_attempts_only_when_retried() {
        let kind = CloudErrorKind::Http {
            endpoint: "https://r/v1 (m)".into(),
            status: 503,
            message: Redactor::new(None).excerpt("busy", 10),
        };
        assert_eq!(
            CloudError::new(kind.clone(), 1, false).to_string(),
            "https://r/v1 (m): HTTP 503: busy"
        );
        assert_eq!(
            CloudError::new(kind, 3, false).to_string(),
            "https://r/v1 (m): HTTP 503: busy (after 3 attempts)"
        );
    }
}
