//! The OpenAI chat-completions wire format: the streaming request body, and the meaning of
//! each server-sent event (`chat.completion.chunk` objects, the usage chunk, `[DONE]`, and
//! error events, whether as `event: error` or as a `{"error": ...}` object).
//!
//! Chunks are parsed leniently (unknown fields, `null`s and missing fields are normal:
//! providers differ), but each is an untrusted JSON document: only the first choice's text,
//! reasoning and tool-call deltas, the finish reason and the token counts are kept, and
//! server text that may be shown (error messages, the finish reason) leaves this module
//! only as an [`Excerpt`] made by the redactor. The answer's text, reasoning and calls are
//! left to the caller, which bounds them and passes them through its stream redactors
//! (`assemble`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::redact::{Excerpt, Redactor};
use super::sse::SseEvent;
use super::types::{CloudMessage, CloudRequest, Usage};

/// Longest error message kept from the server.
pub(crate) const MAX_MESSAGE_CHARS: usize = 300;
/// Longest finish reason kept (real ones are words like `stop` or `length`).
const MAX_FINISH_REASON_CHARS: usize = 32;

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct RequestBody<'a> {
    model: &'a str,
    messages: &'a [CloudMessage],
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "<[Value]>::is_empty")]
    tools: &'a [Value],
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a Value>,
}

/// The JSON body of a streaming chat completion for `model`. Unset sampling options are
/// left out rather than sent as `null`, which some providers refuse; so are `tool_choice`
/// and `parallel_tool_calls` without tools, which OpenAI refuses.
pub(crate) fn request_body(model: &str, req: &CloudRequest) -> Vec<u8> {
    let with_tools = !req.tools.is_empty();
    let body = RequestBody {
        model,
        messages: &req.messages,
        stream: true,
        stream_options: StreamOptions {
            include_usage: true,
        },
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        stop: &req.stop,
        tools: &req.tools,
        tool_choice: req.tool_choice.as_ref().filter(|_| with_tools),
        parallel_tool_calls: req.parallel_tool_calls.filter(|_| with_tools),
        response_format: req.response_format.as_ref(),
    };
    // Serializing plain strings, numbers and JSON values cannot fail (non-finite floats are
    // refused by `CloudRequest::validate` and would be written as `null` anyway).
    serde_json::to_vec(&body).unwrap_or_default()
}

#[derive(Deserialize)]
struct ChunkJson {
    #[serde(default)]
    choices: Option<Vec<ChoiceJson>>,
    #[serde(default)]
    usage: Option<UsageJson>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChoiceJson {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    delta: Option<DeltaJson>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct DeltaJson {
    #[serde(default)]
    content: Option<String>,
    /// The reasoning of thinking models (DeepSeek's, vLLM's and the Hugging Face router's
    /// name).
    #[serde(default)]
    reasoning_content: Option<String>,
    /// The same under OpenRouter's and Ollama's name; some servers send both.
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<CallDeltaJson>>,
}

#[derive(Deserialize)]
struct CallDeltaJson {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    function: Option<FunctionDeltaJson>,
}

#[derive(Deserialize)]
struct FunctionDeltaJson {
    #[serde(default)]
    name: Option<String>,
    /// A piece of the arguments' JSON text, as OpenAI streams it; a few servers send the
    /// whole arguments as an object instead.
    #[serde(default)]
    arguments: Option<Value>,
}

/// A piece of one tool call, as a chunk's delta carries it: its first delta names it
/// (`index`, `id`, `name`), the following ones carry pieces of its arguments. Raw server
/// text: bounded and redacted by the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CallDelta {
    /// The provider's index of the call; `None` when it gave none (then a delta naming a
    /// function starts a new call, and one that does not continues the last).
    pub(crate) index: Option<u64>,
    pub(crate) id: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) arguments: Option<String>,
}

#[derive(Deserialize)]
struct UsageJson {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// What one event means for the completion.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StreamEvent {
    /// `data: [DONE]`: the stream is complete.
    Done,
    /// A chunk; any part may be absent (role-only chunks, the usage-only chunk).
    Chunk {
        content: Option<String>,
        reasoning: Option<String>,
        calls: Vec<CallDelta>,
        finish_reason: Option<String>,
        usage: Option<Usage>,
    },
    /// The server reported a failure inside the stream.
    Error(Excerpt),
}

/// Interprets one event; `Err` is a malformed event (a protocol violation). `redactor`
/// makes the text that may be shown.
pub(crate) fn interpret(ev: &SseEvent, redactor: &Redactor) -> Result<StreamEvent, Excerpt> {
    let data = ev.data.trim();
    if ev.event == "error" {
        let message = error_message_from_text(data);
        return Ok(StreamEvent::Error(
            redactor.excerpt(&message, MAX_MESSAGE_CHARS),
        ));
    }
    if data == "[DONE]" {
        return Ok(StreamEvent::Done);
    }
    let chunk: ChunkJson = serde_json::from_str(data).map_err(|e| {
        // serde's message may quote a value from the chunk: it is excerpted with the rest.
        let quoted = redactor.excerpt(data, 80);
        redactor.excerpt(
            &format!("malformed chunk ({e}): {quoted}"),
            MAX_MESSAGE_CHARS,
        )
    })?;
    if let Some(err) = chunk.error.filter(|e| !e.is_null()) {
        let message = error_message(&err);
        return Ok(StreamEvent::Error(
            redactor.excerpt(&message, MAX_MESSAGE_CHARS),
        ));
    }
    // We ask for one choice; a server that sends more is answered with the first.
    let choice = chunk
        .choices
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.index.unwrap_or(0) == 0);
    let (delta, finish_reason) = match choice {
        Some(c) => (
            c.delta,
            c.finish_reason
                .map(|r| redactor.excerpt(&r, MAX_FINISH_REASON_CHARS).into_string()),
        ),
        None => (None, None),
    };
    let (content, reasoning, calls) = match delta {
        Some(d) => (
            d.content,
            // Servers that send both send the same text twice.
            d.reasoning_content.or(d.reasoning),
            d.tool_calls
                .unwrap_or_default()
                .into_iter()
                .map(|c| call_delta(c, redactor))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => (None, None, Vec::new()),
    };
    let usage = chunk.usage.map(|u| Usage {
        prompt_tokens: u.prompt_tokens.unwrap_or(0),
        completion_tokens: u.completion_tokens.unwrap_or(0),
    });
    Ok(StreamEvent::Chunk {
        content,
        reasoning,
        calls,
        finish_reason,
        usage,
    })
}

/// One call's delta, checked for what only a chunk can tell: a call of a `function` (the
/// only kind a request declares), arguments as text or an object.
fn call_delta(c: CallDeltaJson, redactor: &Redactor) -> Result<CallDelta, Excerpt> {
    if let Some(kind) = c.kind.as_deref()
        && kind != "function"
    {
        return Err(redactor.excerpt(
            &format!("a tool call of type {kind:?}, not \"function\""),
            MAX_MESSAGE_CHARS,
        ));
    }
    let (name, arguments) = match c.function {
        Some(f) => {
            let arguments = match f.arguments {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s),
                Some(v @ Value::Object(_)) => Some(v.to_string()),
                Some(other) => {
                    let quoted = redactor.excerpt(&other.to_string(), 80);
                    return Err(redactor.excerpt(
                        &format!("tool call arguments neither text nor an object: {quoted}"),
                        MAX_MESSAGE_CHARS,
                    ));
                }
            };
            (f.name, arguments)
        }
        None => (None, None),
    };
    Ok(CallDelta {
        index: c.index,
        id: c.id.filter(|id| !id.is_empty()),
        name: name.filter(|n| !n.is_empty()),
        arguments,
    })
}

/// The message of an OpenAI-style error value: `{"message": ...}` (possibly with a `code`
/// or `type`), or a bare string as TGI sends. Raw server text: excerpt it before showing it.
pub(crate) fn error_message(err: &Value) -> String {
    match err {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let msg = o.get("message").and_then(Value::as_str).unwrap_or("");
            let code = ["code", "type"]
                .iter()
                .filter_map(|k| o.get(*k))
                .find(|v| !v.is_null())
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            match (msg.is_empty(), code) {
                (false, Some(c)) => format!("{msg} ({c})"),
                (false, None) => msg.to_string(),
                (true, Some(c)) => c,
                (true, None) => err.to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// The message in an error body: a JSON `{"error": ...}` document, `{"message": ...}`, or
/// plain text. Raw server text: excerpt it before showing it.
pub(crate) fn error_message_from_text(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => match o.get("error") {
            Some(e) if !e.is_null() => error_message(e),
            _ => error_message(&Value::Object(o)),
        },
        Ok(Value::String(s)) => s,
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::types::CloudToolCall;

    fn interp(ev: &SseEvent) -> Result<StreamEvent, Excerpt> {
        interpret(ev, &Redactor::new(None))
    }

    fn error(message: &str) -> StreamEvent {
        StreamEvent::Error(Redactor::new(None).excerpt(message, 1000))
    }

    fn data(d: &str) -> SseEvent {
        SseEvent {
            event: "message".into(),
            data: d.into(),
        }
    }

    #[test]
    fn body_has_every_field_and_omits_unset_ones() {
        let req = CloudRequest {
            messages: vec![CloudMessage::new("user", "Hi")],
            max_tokens: Some(16),
            temperature: Some(0.5),
            top_p: Some(0.9),
            seed: Some(7),
            stop: vec!["\n\n".into()],
            ..CloudRequest::default()
        };
        let v: Value = serde_json::from_slice(&request_body("m:cheapest", &req)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "model": "m:cheapest",
                "messages": [{"role": "user", "content": "Hi"}],
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_tokens": 16, "temperature": 0.5, "top_p": 0.9,
                "seed": 7, "stop": ["\n\n"],
            })
        );
        let bare = CloudRequest {
            messages: vec![CloudMessage::new("user", "Hi")],
            ..CloudRequest::default()
        };
        let v: Value = serde_json::from_slice(&request_body("m", &bare)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, ["model", "messages", "stream", "stream_options"]);
    }

    /// Tools, `tool_choice`, `parallel_tool_calls` and `response_format` go as given; the
    /// conversation's calls in OpenAI's form (arguments as text, `content: null` for a turn
    /// of calls alone) and its results with their call's id.
    #[test]
    fn body_carries_tools_and_the_conversation_s_calls() {
        let tool = serde_json::json!({"type": "function", "function": {
            "name": "get_weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}});
        let format = serde_json::json!({"type": "json_schema", "json_schema": {
            "name": "w", "schema": {"type": "object"}, "strict": true}});
        let req = CloudRequest {
            messages: vec![
                CloudMessage::new("user", "Weather in Paris?"),
                CloudMessage {
                    content: None,
                    tool_calls: vec![CloudToolCall::function(
                        "call_1",
                        "get_weather",
                        r#"{"city":"Paris"}"#,
                    )],
                    ..CloudMessage::new("assistant", "")
                },
                CloudMessage {
                    tool_call_id: Some("call_1".into()),
                    ..CloudMessage::new("tool", "18 °C")
                },
            ],
            tools: vec![tool.clone()],
            tool_choice: Some(serde_json::json!({"type": "function",
                                                 "function": {"name": "get_weather"}})),
            parallel_tool_calls: Some(false),
            response_format: Some(format.clone()),
            ..CloudRequest::default()
        };
        req.validate().unwrap();
        let v: Value = serde_json::from_slice(&request_body("m", &req)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "model": "m",
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                    {"role": "tool", "content": "18 °C", "tool_call_id": "call_1"},
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
                "tools": [tool],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "parallel_tool_calls": false,
                "response_format": format,
            })
        );
        // Without tools, tool_choice and parallel_tool_calls are not sent (OpenAI refuses
        // them); response_format is.
        let bare = CloudRequest {
            tools: Vec::new(),
            messages: vec![CloudMessage::new("user", "Hi")],
            ..req
        };
        let v: Value = serde_json::from_slice(&request_body("m", &bare)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "model",
                "messages",
                "stream",
                "stream_options",
                "response_format"
            ]
        );
    }

    #[test]
    fn reasoning_and_tool_call_deltas() {
        let both = r#"{"choices":[{"delta":{"reasoning_content":"Hmm","reasoning":"Hmm"}}]}"#;
        let StreamEvent::Chunk { reasoning, .. } = interp(&data(both)).unwrap() else {
            panic!("a chunk");
        };
        assert_eq!(reasoning.as_deref(), Some("Hmm"));
        let other = r#"{"choices":[{"delta":{"reasoning":"Well"}}]}"#;
        let StreamEvent::Chunk { reasoning, .. } = interp(&data(other)).unwrap() else {
            panic!("a chunk");
        };
        assert_eq!(reasoning.as_deref(), Some("Well"));
        let call = r#"{"choices":[{"delta":{"tool_calls":[
            {"index":0,"id":"call_9","type":"function","function":{"name":"f","arguments":""}},
            {"index":1,"id":"","function":{"arguments":"{\"a\""}},
            {"index":2,"function":{"name":"g","arguments":{"x":1}}}]},
            "finish_reason":"tool_calls"}]}"#;
        let StreamEvent::Chunk {
            calls,
            finish_reason,
            ..
        } = interp(&data(call)).unwrap()
        else {
            panic!("a chunk");
        };
        assert_eq!(finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            calls,
            [
                CallDelta {
                    index: Some(0),
                    id: Some("call_9".into()),
                    name: Some("f".into()),
                    arguments: Some(String::new()),
                },
                CallDelta {
                    index: Some(1),
                    id: None,
                    name: None,
                    arguments: Some("{\"a\"".into()),
                },
                CallDelta {
                    index: Some(2),
                    id: None,
                    name: Some("g".into()),
                    arguments: Some(r#"{"x":1}"#.into()),
                },
            ]
        );
    }

    #[test]
    fn chunks() {
        let role = r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":null}]}"#;
        assert_eq!(
            interp(&data(role)).unwrap(),
            StreamEvent::Chunk {
                content: None,
                reasoning: None,
                calls: Vec::new(),
                finish_reason: None,
                usage: None
            }
        );
        let text =
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"logprobs":null}],"usage":null}"#;
        assert_eq!(
            interp(&data(text)).unwrap(),
            StreamEvent::Chunk {
                content: Some("Hel".into()),
                reasoning: None,
                calls: Vec::new(),
                finish_reason: None,
                usage: None
            }
        );
        let fin = r#"{"choices":[{"index":1,"delta":{"content":"no"}},{"delta":{},"finish_reason":"length"}]}"#;
        assert_eq!(
            interp(&data(fin)).unwrap(),
            StreamEvent::Chunk {
                content: None,
                reasoning: None,
                calls: Vec::new(),
                finish_reason: Some("length".into()),
                usage: None
            }
        );
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
        assert_eq!(
            interp(&data(usage)).unwrap(),
            StreamEvent::Chunk {
                content: None,
                reasoning: None,
                calls: Vec::new(),
                finish_reason: None,
                usage: Some(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 3
                }),
            }
        );
        assert_eq!(interp(&data(" [DONE] ")).unwrap(), StreamEvent::Done);
        let err = interp(&data("{\"choices\": 5}")).unwrap_err();
        assert!(
            err.as_str()
                .starts_with("malformed chunk (invalid type: integer `5`, expected a sequence"),
            "{}",
            err.as_str()
        );
        assert!(
            interp(&data("not json"))
                .unwrap_err()
                .as_str()
                .contains("not json")
        );
    }

    #[test]
    fn errors_in_the_stream() {
        let e = interp(&data(
            r#"{"error":{"message":"Model too busy","type":"overloaded","code":null}}"#,
        ))
        .unwrap();
        assert_eq!(e, error("Model too busy (overloaded)"));
        let tgi = interp(&data(
            r#"{"error":"Input validation error","error_type":"validation"}"#,
        ));
        assert_eq!(tgi.unwrap(), error("Input validation error"));
        let typed = SseEvent {
            event: "error".into(),
            data: "upstream\nreset".into(),
        };
        assert_eq!(interp(&typed).unwrap(), error("upstream reset"));
        // `"error": null` is not an error.
        assert!(matches!(
            interp(&data(r#"{"error":null,"choices":[]}"#)).unwrap(),
            StreamEvent::Chunk { .. }
        ));
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message_from_text(r#"{"error":"Invalid credentials in Authorization header"}"#),
            "Invalid credentials in Authorization header"
        );
        assert_eq!(
            error_message_from_text(r#"{"message":"rate limited","code":429}"#),
            "rate limited (429)"
        );
        assert_eq!(
            error_message_from_text("<html>\n502</html>"),
            "<html>\n502</html>"
        );
    }

    /// JSON escapes in a chunk are undone by the JSON parse, so the stream redactor sees the
    /// token in the content as it is; error text comes out redacted.
    #[test]
    fn the_token_is_decoded_in_content_and_redacted_in_errors() {
        let token = "hf_OpenaiTestToken0123456789";
        let r = Redactor::new(Some(
            crate::cloud::ApiToken::from_string(token.into()).unwrap(),
        ));
        let escaped = token.replace('_', "\\u005f");
        let chunk = format!(r#"{{"choices":[{{"delta":{{"content":"key {escaped}"}}}}]}}"#);
        let StreamEvent::Chunk { content, .. } = interpret(&data(&chunk), &r).unwrap() else {
            panic!("a chunk");
        };
        assert_eq!(content.unwrap(), format!("key {token}"));
        for (event, payload) in [
            ("error", format!(r#"{{"error":"bad key {escaped}"}}"#)),
            (
                "message",
                format!(r#"{{"error":{{"message":"bad key {escaped}"}}}}"#),
            ),
            ("error", format!("bad key {}", token.replace('_', "%5F"))),
        ] {
            let ev = SseEvent {
                event: event.into(),
                data: payload,
            };
            let StreamEvent::Error(m) = interpret(&ev, &r).unwrap() else {
                panic!("an error");
            };
            assert_eq!(m.as_str(), "bad key [redacted]");
        }
        let bad = format!(r#"{{"choices": "{escaped}"}}"#);
        let e = interpret(&data(&bad), &r).unwrap_err();
        assert!(!e.as_str().contains(token), "{e}");
        let fin = format!(r#"{{"choices":[{{"delta":{{}},"finish_reason":"{token}"}}]}}"#);
        let StreamEvent::Chunk { finish_reason, .. } = interpret(&data(&fin), &r).unwrap() else {
            panic!("a chunk");
        };
        assert_eq!(finish_reason.as_deref(), Some("[redacted]"));
    }
}
