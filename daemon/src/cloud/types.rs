//! The request and answer types every part of the cloud client shares: the chat messages
//! and options of a [`CloudRequest`] (with their bounds), and the server's token [`Usage`].
//! The wire format, the transport and the client's retry loop all speak these, so they
//! live apart from each of them.

use serde::{Deserialize, Serialize};

/// Most stop sequences sent (OpenAI allows 4; some providers more).
const MAX_STOP: usize = 16;
/// Longest role name.
const MAX_ROLE_LEN: usize = 32;

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl CloudMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> CloudMessage {
        CloudMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat completion to run in the cloud. Unset options are left to the server's defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CloudRequest {
    pub messages: Vec<CloudMessage>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

impl CloudRequest {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.messages.is_empty() {
            return Err("no messages".into());
        }
        for m in &self.messages {
            if m.role.is_empty()
                || m.role.len() > MAX_ROLE_LEN
                || !m
                    .role
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(format!("bad message role {:?}", m.role));
            }
        }
        if self.max_tokens == Some(0) {
            return Err("max_tokens must be at least 1".into());
        }
        if let Some(t) = self.temperature
            && !(t.is_finite() && t >= 0.0)
        {
            return Err("temperature must be a finite number >= 0".into());
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err("top_p must be in (0, 1]".into());
        }
        if self.stop.len() > MAX_STOP || self.stop.iter().any(String::is_empty) {
            return Err(format!("stop: at most {MAX_STOP} non-empty strings"));
        }
        Ok(())
    }
}

/// Token counts reported by the server (its usage chunk).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_validated() {
        let ok = CloudRequest {
            messages: vec![CloudMessage::new("user", "hi")],
            ..CloudRequest::default()
        };
        ok.validate().unwrap();
        let bad = [
            (CloudRequest::default(), "no messages"),
            (
                CloudRequest {
                    max_tokens: Some(0),
                    ..ok.clone()
                },
                "max_tokens must be at least 1",
            ),
            (
                CloudRequest {
                    temperature: Some(f32::NAN),
                    ..ok.clone()
                },
                "temperature must be a finite number",
            ),
            (
                CloudRequest {
                    top_p: Some(0.0),
                    ..ok.clone()
                },
                "top_p must be in (0, 1]",
            ),
            (
                CloudRequest {
                    stop: vec![String::new()],
                    ..ok.clone()
                },
                "stop: at most 16 non-empty strings",
            ),
            (
                CloudRequest {
                    messages: vec![CloudMessage::new("us er", "hi")],
                    ..ok.clone()
                },
                "bad message role \"us er\"",
            ),
        ];
        for (r, want) in bad {
            let err = r.validate().unwrap_err();
            assert!(err.contains(want), "{r:?}: {err}");
        }
    }
}
