//! The request and reply messages, shared by MQTT (and later the forwarders and HTTP).
//!
//! Request: `{"id", "messages": [{"role","content"}...] | "prompt", "max_tokens",
//! "temperature", "top_p", "seed", "stop", "stream", "route", "privacy", "reply_to",
//! "session"}`. Unknown fields are refused (a misspelt `max_token` silently ignored would
//! be worse). Replies: `{"id","seq","delta"}` chunks, then exactly one final
//! `{"id","done":true,...}` with either the answer or `{"error":{"code","message"}}`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::constrain::{self, OutputRules};
use crate::engine::{Completion, SamplingParams};
/// The request's `route` and `privacy` fields are the routing policy's inputs.
pub use crate::router::{Privacy, RouteHint};
use crate::tokenizer::{AssistantReply, ChatPrompt, ReplyPiece};

/// Longest request id.
pub const MAX_ID_LEN: usize = 128;
/// Longest session key.
pub const MAX_SESSION_LEN: usize = 128;

/// Error codes of final error replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not JSON, wrong types, unknown fields, bad values.
    InvalidRequest,
    /// The payload or prompt exceeds a limit.
    TooLarge,
    /// The queue is full.
    Busy,
    /// The request's MQTT message expiry passed before it could run.
    Expired,
    /// Prompt plus `max_tokens` exceed the context.
    ContextLength,
    /// The service is stopping; the request was not finished.
    ShuttingDown,
    /// It had to go to the cloud (`route: cloud`, or it cannot run here) and no cloud
    /// route is up.
    CloudUnavailable,
    /// The cloud route failed after it had started answering.
    CloudError,
    /// The cloud route did not answer in time.
    Timeout,
    /// The daemon stopped (a crash, an OOM kill, a power cut) while the request was in
    /// hand, and its deadline passed before it could run again after the restart.
    Interrupted,
    /// The estimated wait for local capacity exceeds the request's deadline.
    DeadlineExceeded,
    /// The client went away (an HTTP client closed its connection) before the answer was
    /// finished: the work stopped, and this final is recorded for a resend of its key.
    Cancelled,
    /// A bug or an unexpected failure.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Busy => "busy",
            ErrorCode::Expired => "expired",
            ErrorCode::ContextLength => "context_length",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::CloudUnavailable => "cloud_unavailable",
            ErrorCode::CloudError => "cloud_error",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Interrupted => "interrupted",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Internal => "internal",
        }
    }

    /// Every code, for [`ErrorCode::parse`].
    const ALL: [ErrorCode; 13] = [
        ErrorCode::InvalidRequest,
        ErrorCode::TooLarge,
        ErrorCode::Busy,
        ErrorCode::Expired,
        ErrorCode::ContextLength,
        ErrorCode::ShuttingDown,
        ErrorCode::CloudUnavailable,
        ErrorCode::CloudError,
        ErrorCode::Timeout,
        ErrorCode::Interrupted,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Cancelled,
        ErrorCode::Internal,
    ];

    /// The code a reply's `error.code` names (a cloud worker's reply), if it is one.
    pub fn parse(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

/// A refused request: the code and a message for the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
}

impl RequestError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RequestError {
        RequestError {
            code,
            message: message.into(),
        }
    }
}

/// `stop` is a string or an array of strings, as in OpenAI's API.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum StopJson {
    One(String),
    Many(Vec<String>),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestJson {
    id: String,
    /// OpenAI's message objects (tool calls and results included); see
    /// [`ChatPrompt::from_messages`].
    messages: Option<Vec<Value>>,
    prompt: Option<String>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<StopJson>,
    stream: Option<bool>,
    route: Option<RouteHint>,
    privacy: Option<Privacy>,
    reply_to: Option<String>,
    session: Option<String>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<Value>,
    response_format: Option<Value>,
}

/// A validated request.
#[derive(Clone, Debug)]
pub struct Request {
    pub id: String,
    /// The conversation and the tools it declares.
    pub chat: ChatPrompt,
    /// `tool_choice`, `parallel_tool_calls`, `response_format`.
    pub output: OutputRules,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    pub route: RouteHint,
    pub privacy: Option<Privacy>,
    /// MQTT 3.1.1 clients name their reply topic here.
    pub reply_to: Option<String>,
    /// Conversation key: follow-up turns reuse its KV cache.
    pub session: Option<String>,
}

/// Limits a request is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub default_max_tokens: usize,
    pub max_tokens_limit: usize,
}

/// A topic clients may ask replies to go to: no wildcards, not a `$` system topic.
pub fn valid_reply_topic(t: &str) -> bool {
    !t.is_empty() && t.len() <= 1024 && !t.contains(['+', '#', '\0']) && !t.starts_with('$')
}

/// What can be salvaged from an invalid payload for the error reply: the id, if any.
pub fn salvage_id(payload: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let id = v.get("id")?.as_str()?;
    (id.len() <= MAX_ID_LEN).then(|| id.to_string())
}

/// Salvages `reply_to` from an invalid payload, for clients without MQTT 5.
pub fn salvage_reply_to(payload: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let t = v.get("reply_to")?.as_str()?;
    valid_reply_topic(t).then(|| t.to_string())
}

/// Parses and validates a request payload.
pub fn parse_request(payload: &[u8], limits: &Limits) -> Result<Request, RequestError> {
    if payload.len() > limits.max_request_bytes {
        return Err(RequestError::new(
            ErrorCode::TooLarge,
            format!(
                "the request is {} bytes; the limit is {}",
                payload.len(),
                limits.max_request_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(payload).map_err(|e| {
        RequestError::new(
            ErrorCode::InvalidRequest,
            format!("the payload is not UTF-8: {e}"),
        )
    })?;
    let r: RequestJson = serde_json::from_str(text).map_err(|e| {
        RequestError::new(
            ErrorCode::InvalidRequest,
            format!("the payload is not a valid request: {e}"),
        )
    })?;
    let bad = |m: String| Err(RequestError::new(ErrorCode::InvalidRequest, m));
    if r.id.is_empty() || r.id.len() > MAX_ID_LEN || r.id.chars().any(char::is_control) {
        return bad(format!("id must be 1 to {MAX_ID_LEN} printable characters"));
    }
    let chat = match (r.messages, r.prompt) {
        (Some(_), Some(_)) => return bad("give either messages or prompt, not both".into()),
        (None, None) => return bad("messages or prompt is required".into()),
        (None, Some(p)) => ChatPrompt::new().user(p),
        (Some(msgs), None) => {
            if msgs.is_empty() {
                return bad("messages is empty".into());
            }
            ChatPrompt::from_messages(&msgs)
                .map_err(|e| RequestError::new(ErrorCode::InvalidRequest, e.to_string()))?
        }
    };
    let tools = constrain::parse_tools(r.tools.as_ref())
        .map_err(|e| RequestError::new(ErrorCode::InvalidRequest, e))?;
    let output = OutputRules::parse(
        &tools,
        r.tool_choice.as_ref(),
        r.parallel_tool_calls.as_ref(),
        r.response_format.as_ref(),
    )
    .map_err(|e| RequestError::new(ErrorCode::InvalidRequest, e))?;
    let chat = chat.tools(tools);
    chat.validate()
        .map_err(|e| RequestError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    let max_tokens = r
        .max_tokens
        .map_or(limits.default_max_tokens, |m| m as usize);
    if max_tokens == 0 || max_tokens > limits.max_tokens_limit {
        return bad(format!(
            "max_tokens must be between 1 and {}",
            limits.max_tokens_limit
        ));
    }
    let defaults = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: r.temperature.unwrap_or(defaults.temperature),
        top_p: r.top_p.unwrap_or(defaults.top_p),
        top_k: r.top_k.map_or(defaults.top_k, |k| k as usize),
        min_p: r.min_p.unwrap_or(defaults.min_p),
        presence_penalty: r.presence_penalty.unwrap_or(defaults.presence_penalty),
        frequency_penalty: r.frequency_penalty.unwrap_or(defaults.frequency_penalty),
        seed: r.seed.unwrap_or_else(rand_seed),
        ..defaults
    };
    sampling
        .validate()
        .map_err(|e| RequestError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    let stop = match r.stop {
        None => Vec::new(),
        Some(StopJson::One(s)) => vec![s],
        Some(StopJson::Many(v)) => v,
    };
    if stop.len() > crate::engine::stop::MAX_STOP_STRINGS
        || stop
            .iter()
            .any(|s| s.is_empty() || s.len() > crate::engine::stop::MAX_STOP_LEN)
    {
        return bad(format!(
            "stop takes at most {} strings of 1 to {} bytes",
            crate::engine::stop::MAX_STOP_STRINGS,
            crate::engine::stop::MAX_STOP_LEN
        ));
    }
    if let Some(t) = &r.reply_to
        && !valid_reply_topic(t)
    {
        return bad("reply_to must be a topic without wildcards, not starting with '$'".into());
    }
    if let Some(s) = &r.session
        && (s.is_empty() || s.len() > MAX_SESSION_LEN)
    {
        return bad(format!("session must be 1 to {MAX_SESSION_LEN} characters"));
    }
    Ok(Request {
        id: r.id,
        chat,
        output,
        max_tokens,
        sampling,
        stop,
        stream: r.stream.unwrap_or(true),
        route: r.route.unwrap_or_default(),
        privacy: r.privacy,
        reply_to: r.reply_to,
        session: r.session,
    })
}

/// A seed for requests that give none: different every request.
fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A streamed piece of the answer: `{"id","seq"}` and one of `"delta"` (text),
/// `"reasoning"` (thinking text) or `"tool_calls"` (OpenAI's delta form: a call's `index`,
/// `id`, `type` and name first, then pieces of its `arguments`).
pub fn piece_json(id: &str, seq: u64, piece: &ReplyPiece<'_>) -> Vec<u8> {
    let v = match *piece {
        ReplyPiece::Content(text) => json!({"id": id, "seq": seq, "delta": text}),
        ReplyPiece::Reasoning(text) => json!({"id": id, "seq": seq, "reasoning": text}),
        ReplyPiece::CallStart {
            index,
            id: call_id,
            name,
        } => json!({"id": id, "seq": seq, "tool_calls": [{
            "index": index, "id": call_id, "type": "function",
            "function": {"name": name, "arguments": ""},
        }]}),
        ReplyPiece::CallArguments { index, text } => json!({"id": id, "seq": seq, "tool_calls": [{
            "index": index, "function": {"arguments": text},
        }]}),
    };
    serde_json::to_vec(&v).expect("plain JSON")
}

/// A streamed piece of text.
pub fn chunk_json(id: &str, seq: u64, delta: &str) -> Vec<u8> {
    piece_json(id, seq, &ReplyPiece::Content(delta))
}

/// The finish reason a final reply gives: `tool_calls` when the answer ended with calls.
pub fn finish_reason(reply: &AssistantReply, ended: &str) -> String {
    if ended == "stop" && !reply.tool_calls.is_empty() {
        "tool_calls".into()
    } else {
        ended.into()
    }
}

/// The answer's fields of a final reply: `text`, and `reasoning_content` and
/// `tool_calls` (OpenAI's message form) when there are any.
pub(crate) fn reply_fields(out: &mut Value, reply: &AssistantReply) {
    out["text"] = reply.content.clone().into();
    if !reply.reasoning.is_empty() {
        out["reasoning_content"] = reply.reasoning.clone().into();
    }
    if !reply.tool_calls.is_empty() {
        out["tool_calls"] = reply
            .tool_calls
            .iter()
            .map(|c| {
                json!({"id": c.id, "type": "function",
                       "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect();
    }
}

/// Where a request was served: the final reply's `route` and the telemetry's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServedRoute {
    /// `local`: the engine on this board.
    Local,
    /// `cloud-https`: the HTTPS router.
    CloudHttps,
    /// `cloud-mqtt`: a worker behind the cloud broker.
    CloudMqtt,
}

impl ServedRoute {
    pub fn as_str(self) -> &'static str {
        match self {
            ServedRoute::Local => "local",
            ServedRoute::CloudHttps => "cloud-https",
            ServedRoute::CloudMqtt => "cloud-mqtt",
        }
    }

    /// Where a routing decision serves the request (`queue` waits for the engine here);
    /// `None` for a refusal.
    pub fn of(route: crate::router::Route) -> Option<ServedRoute> {
        use crate::router::Route;
        match route {
            Route::Local | Route::Queue => Some(ServedRoute::Local),
            Route::CloudHttps => Some(ServedRoute::CloudHttps),
            Route::CloudMqtt => Some(ServedRoute::CloudMqtt),
            Route::Reject(_) => None,
        }
    }
}

impl Serialize for ServedRoute {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How a request was served, for the final reply and telemetry.
#[derive(Clone, Debug)]
pub struct Served {
    pub route: ServedRoute,
    pub reason: String,
}

/// The final reply of a successful request.
pub fn final_json(
    id: &str,
    reply: &AssistantReply,
    done: &Completion,
    served: &Served,
    queue_ms: f64,
) -> Vec<u8> {
    let t = &done.timings;
    let mut v = json!({
        "id": id,
        "done": true,
        "finish_reason": finish_reason(reply, done.finish_reason.as_str()),
        "usage": {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "cached_tokens": done.cached_tokens,
        },
        "route": served.route,
        "reason": served.reason,
        "timings": {
            "queue_ms": queue_ms,
            "prompt_ms": t.prompt.as_secs_f64() * 1e3,
            "generation_ms": t.generation.as_secs_f64() * 1e3,
            "time_to_first_token_ms": t.time_to_first_token.as_secs_f64() * 1e3 + queue_ms,
            "prompt_tokens_per_s": t.prompt_tokens_per_s(),
            "generation_tokens_per_s": done.generation_tokens_per_s(),
        },
    });
    reply_fields(&mut v, reply);
    serde_json::to_vec(&v).expect("plain JSON")
}

/// The final reply of a request the cloud answered: the answer's fields and finish reason
/// as a local final gives them (`reply_fields`, [`finish_reason`]), so the shape does not
/// tell which route answered; then the cloud's own (provider, model, attempts).
pub fn cloud_final_json(
    id: &str,
    outcome: &crate::cloud::CloudOutcome,
    served: &Served,
    queue_ms: f64,
    total_ms: f64,
    first_token_ms: Option<f64>,
) -> Vec<u8> {
    let usage = outcome.usage.as_ref();
    let mut v = json!({
        "id": id,
        "done": true,
        "finish_reason": cloud_finish_reason(outcome),
        "usage": {
            "prompt_tokens": usage.map(|u| u.prompt_tokens),
            "completion_tokens": usage.map(|u| u.completion_tokens),
        },
        "route": served.route,
        "reason": served.reason,
        "provider": outcome.provider,
        "model": outcome.endpoint.model,
        "timings": {
            "queue_ms": queue_ms,
            "total_ms": total_ms,
            "time_to_first_token_ms": first_token_ms,
            "attempts": outcome.attempts,
        },
    });
    reply_fields(&mut v, &outcome.reply);
    serde_json::to_vec(&v).expect("plain JSON")
}

/// The finish reason of a cloud answer: the provider's (`tool_calls` kept), `stop` when it
/// gave none, and `tool_calls` for an answer with calls that the provider said `stop` of
/// (some do), as a local answer would say.
pub fn cloud_finish_reason(outcome: &crate::cloud::CloudOutcome) -> String {
    finish_reason(
        &outcome.reply,
        outcome.finish_reason.as_deref().unwrap_or("stop"),
    )
}

/// The final reply of a failed request.
pub fn error_json(id: Option<&str>, err: &RequestError) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id,
        "done": true,
        "error": {"code": err.code.as_str(), "message": err.message},
    }))
    .expect("plain JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_request_bytes: 4096,
        default_max_tokens: 100,
        max_tokens_limit: 1000,
    };

    fn parse(s: &str) -> Result<Request, RequestError> {
        parse_request(s.as_bytes(), &LIMITS)
    }

    #[test]
    fn accepts_prompt_and_messages() {
        let r = parse(r#"{"id":"a","prompt":"hi","stop":"\n","seed":3,"route":"local","privacy":"local-only"}"#).unwrap();
        assert_eq!((r.id.as_str(), r.max_tokens, r.stream), ("a", 100, true));
        assert_eq!(r.stop, vec!["\n".to_string()]);
        assert_eq!(r.route, RouteHint::Local);
        assert_eq!(r.privacy, Some(Privacy::LocalOnly));
        let r = parse(r#"{"id":"b","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"stream":false,"max_tokens":7,"reply_to":"x/y"}"#).unwrap();
        assert_eq!(
            (r.max_tokens, r.stream, r.reply_to.as_deref()),
            (7, false, Some("x/y"))
        );
    }

    #[test]
    fn refuses_with_codes() {
        let code = |s: &str| parse(s).unwrap_err().code;
        assert_eq!(code("not json"), ErrorCode::InvalidRequest);
        assert_eq!(code(r#"{"id":"a"}"#), ErrorCode::InvalidRequest);
        assert_eq!(
            code(r#"{"id":"a","prompt":"x","max_token":5}"#),
            ErrorCode::InvalidRequest,
            "unknown field"
        );
        assert_eq!(
            code(r#"{"id":"a","prompt":5}"#),
            ErrorCode::InvalidRequest,
            "wrong type"
        );
        assert_eq!(code(r#"{"id":"","prompt":"x"}"#), ErrorCode::InvalidRequest);
        assert_eq!(
            code(r#"{"id":"a","prompt":"x","temperature":7}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(r#"{"id":"a","prompt":"x","max_tokens":5000}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(r#"{"id":"a","prompt":"x","reply_to":"a/#"}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(r#"{"id":"a","messages":[{"role":"assistant","content":"x"}]}"#),
            ErrorCode::InvalidRequest
        );
        let big = format!(r#"{{"id":"a","prompt":"{}"}}"#, "x".repeat(5000));
        assert_eq!(code(&big), ErrorCode::TooLarge);
        assert_eq!(
            parse_request(b"{\"id\":\"\xff\"}", &LIMITS)
                .unwrap_err()
                .code,
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn error_codes_parse_back() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("insufficient_memory"), None);
        assert_eq!(ErrorCode::parse("ok"), None);
    }

    #[test]
    fn served_routes_keep_their_wire_names() {
        for (route, name) in [
            (ServedRoute::Local, "local"),
            (ServedRoute::CloudHttps, "cloud-https"),
            (ServedRoute::CloudMqtt, "cloud-mqtt"),
        ] {
            assert_eq!(route.as_str(), name);
            assert_eq!(serde_json::json!(route), serde_json::json!(name));
        }
        use crate::router::{RejectCode, Route};
        for (decided, served) in [
            (Route::Local, Some(ServedRoute::Local)),
            (Route::Queue, Some(ServedRoute::Local)),
            (Route::CloudHttps, Some(ServedRoute::CloudHttps)),
            (Route::CloudMqtt, Some(ServedRoute::CloudMqtt)),
            (Route::Reject(RejectCode::Busy), None),
        ] {
            assert_eq!(ServedRoute::of(decided), served, "{decided:?}");
        }
    }

    #[test]
    fn ids_are_salvaged_for_error_replies() {
        assert_eq!(
            salvage_id(br#"{"id":"q1","prompt":5}"#).as_deref(),
            Some("q1")
        );
        assert_eq!(salvage_id(b"garbage"), None);
        assert_eq!(
            salvage_reply_to(br#"{"id":"q1","reply_to":"r/1","x":1}"#).as_deref(),
            Some("r/1")
        );
    }
}
