//! The request and answer types every part of the cloud client shares: the chat messages
//! (with their tool calls and results) and options of a [`CloudRequest`] (with their
//! bounds), the server's token [`Usage`], and the call ids made up for calls that came
//! without one. The wire format, the transport and the client's retry loop all speak these,
//! so they live apart from each of them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rng::SplitMix64;
use crate::tokenizer::reply::CALL_ID_LEN;

/// Most stop sequences sent (OpenAI allows 4; some providers more).
const MAX_STOP: usize = 16;
/// Longest role name.
const MAX_ROLE_LEN: usize = 32;

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// `None` (sent as `null`) only for an assistant turn made of tool calls alone, as
    /// OpenAI writes it.
    pub content: Option<String>,
    /// An assistant turn's calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<CloudToolCall>,
    /// A tool result: the id of the call it answers (OpenAI pairs results with calls by
    /// id, not by order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl CloudMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> CloudMessage {
        CloudMessage {
            role: role.into(),
            content: Some(content.into()),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A call in an assistant message, in OpenAI's form:
/// `{"id", "type": "function", "function": {"name", "arguments"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudToolCall {
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    pub function: CloudFunctionCall,
}

/// The function a [`CloudToolCall`] calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudFunctionCall {
    pub name: String,
    /// The arguments as a JSON text (OpenAI sends and expects a string, not an object).
    pub arguments: String,
}

impl CloudToolCall {
    pub fn function(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> CloudToolCall {
        CloudToolCall {
            id: id.into(),
            kind: "function".into(),
            function: CloudFunctionCall {
                name: name.into(),
                arguments: arguments.into(),
            },
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
    /// Tool definitions, sent as the client gave them (the intake has checked them).
    pub tools: Vec<Value>,
    /// OpenAI's `tool_choice` (`"auto"`, `"none"`, `"required"` or a named function); sent
    /// only with tools.
    pub tool_choice: Option<Value>,
    /// Sent only with tools.
    pub parallel_tool_calls: Option<bool>,
    /// OpenAI's `response_format` (`json_object`, `json_schema`); `None` for text.
    pub response_format: Option<Value>,
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
            if !m.tool_calls.is_empty() && m.role != "assistant" {
                return Err(format!("a {:?} message with tool calls", m.role));
            }
            if m.content.is_none() && m.tool_calls.is_empty() {
                return Err(format!("a {:?} message without content", m.role));
            }
            if m.role == "tool" && m.tool_call_id.as_deref().is_none_or(str::is_empty) {
                return Err("a tool message without the id of its call".into());
            }
            if m.tool_calls
                .iter()
                .any(|c| c.id.is_empty() || c.function.name.is_empty())
            {
                return Err("a tool call without an id or a name".into());
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
        if self.tools.len() > crate::constrain::MAX_TOOLS {
            return Err(format!(
                "tools: at most {} tools",
                crate::constrain::MAX_TOOLS
            ));
        }
        Ok(())
    }
}

/// Characters of made-up call ids.
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// A call id for a call that has none: 9 alphanumerics, the form of the ids the local
/// engine gives its calls (so a client sees one kind of id whichever route answered).
pub fn new_call_id(rng: &mut SplitMix64) -> String {
    (0..CALL_ID_LEN)
        .map(|_| ID_ALPHABET[(rng.next_u64() % ID_ALPHABET.len() as u64) as usize] as char)
        .collect()
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
            (
                CloudRequest {
                    messages: vec![CloudMessage::new("tool", "18 °C")],
                    ..ok.clone()
                },
                "a tool message without the id of its call",
            ),
            (
                CloudRequest {
                    messages: vec![CloudMessage {
                        tool_calls: vec![CloudToolCall::function("c", "f", "{}")],
                        ..CloudMessage::new("user", "hi")
                    }],
                    ..ok.clone()
                },
                "a \"user\" message with tool calls",
            ),
            (
                CloudRequest {
                    messages: vec![CloudMessage {
                        content: None,
                        ..CloudMessage::new("assistant", "")
                    }],
                    ..ok.clone()
                },
                "a \"assistant\" message without content",
            ),
            (
                CloudRequest {
                    messages: vec![CloudMessage {
                        tool_calls: vec![CloudToolCall::function("", "f", "{}")],
                        ..CloudMessage::new("assistant", "")
                    }],
                    ..ok.clone()
                },
                "a tool call without an id or a name",
            ),
        ];
        for (r, want) in bad {
            let err = r.validate().unwrap_err();
            assert!(err.contains(want), "{r:?}: {err}");
        }
    }

    #[test]
    fn made_up_call_ids_look_like_the_local_engine_s() {
        let mut rng = SplitMix64::new(1);
        let a = new_call_id(&mut rng);
        let b = new_call_id(&mut rng);
        for id in [&a, &b] {
            assert_eq!(id.len(), CALL_ID_LEN);
            assert!(id.bytes().all(|c| c.is_ascii_alphanumeric()), "{id}");
        }
        assert_ne!(a, b);
        // The same seed, the same ids.
        assert_eq!(new_call_id(&mut SplitMix64::new(1)), a);
    }
}
