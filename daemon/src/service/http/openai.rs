//! OpenAI's chat completions API: `POST /v1/chat/completions` (streamed as server-sent
//! events in OpenAI's chunk shape, ending `data: [DONE]`, or not) and `GET /v1/models`.
//!
//! A request is translated into the intake's schema and nothing else: validation beyond
//! OpenAI's shapes, idempotency, routing, privacy, the queue and the journal are the
//! intake's. Spillway's own fields come as extra body fields (`route`, `privacy`,
//! `session`, `deadline_ms`: what the SDKs send through `extra_body`) and its answer's
//! facts go back in a `spillway` object (`route`, `reason`, `provider`, `timings`) and the
//! `x-spillway-route` header. `tools`, `tool_choice`, `parallel_tool_calls` and
//! `response_format` go to the intake as given (it checks them and compiles their grammar);
//! calls come back as OpenAI's `tool_calls` (streamed: name first, arguments in pieces),
//! thinking as `reasoning_content`. Fields Spillway cannot honour (`logprobs`, `n` > 1) are
//! refused by name rather than ignored.

use std::convert::Infallible;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use super::errors::ApiError;
use super::replies::{Answer, Event, Exchange};
use super::{AppState, Chat, ChatMessage, ClientGone, read_json, unix_now};
use crate::router::{Privacy, RouteHint};

/// `stop`: a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

/// A message's `content`: text, or a list of parts of which only text ones are taken.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MessageIn {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    /// An assistant's calls, in OpenAI's form (checked by the intake).
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
    /// The call a `tool` message answers.
    #[serde(default)]
    tool_call_id: Option<String>,
    /// A reasoning model's thinking in an earlier turn: accepted, not sent to the model
    /// (as Mistral's templates drop it).
    #[serde(default, rename = "reasoning_content")]
    _reasoning_content: Option<IgnoredAny>,
    /// A participant's name: accepted, not used.
    #[serde(default, rename = "name")]
    _name: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The request body. Unknown fields are refused by name (a misspelt `max_token` silently
/// ignored would be worse); fields that change nothing here (`user`, `metadata`, `store`,
/// `service_tier`) are accepted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatRequest {
    model: String,
    messages: Vec<MessageIn>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<StopField>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default, rename = "user")]
    _user: Option<IgnoredAny>,
    #[serde(default, rename = "metadata")]
    _metadata: Option<IgnoredAny>,
    #[serde(default, rename = "store")]
    _store: Option<IgnoredAny>,
    #[serde(default, rename = "service_tier")]
    _service_tier: Option<IgnoredAny>,
    // Spillway's own (`extra_body`).
    #[serde(default)]
    route: Option<RouteHint>,
    #[serde(default)]
    privacy: Option<Privacy>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    deadline_ms: Option<u64>,
}

impl ChatRequest {
    /// Refuses what cannot be honoured, naming the field.
    fn check_supported(&self) -> Result<(), ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid_param("n", "only n = 1 is supported"));
        }
        if self.logprobs == Some(true) || self.top_logprobs.is_some() {
            return Err(ApiError::invalid_param(
                "logprobs",
                "log probabilities are not supported",
            ));
        }
        Ok(())
    }

    fn into_chat(self) -> Result<Chat, ApiError> {
        self.check_supported()?;
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                "tool" => "tool",
                other => {
                    return Err(ApiError::invalid_param(
                        &format!("messages[{i}].role"),
                        format!(
                            "role {other:?} is not supported (system, developer, user, assistant, tool)"
                        ),
                    ));
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::invalid_param(
                                    &format!("messages[{i}].content"),
                                    format!(
                                        "content parts of type {kind:?} are not supported (text only)"
                                    ),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            messages.push(ChatMessage {
                role: role.into(),
                content,
                tool_calls: m.tool_calls.unwrap_or_default(),
                tool_call_id: m.tool_call_id,
            });
        }
        Ok(Chat {
            model: self.model,
            messages,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            stop: self.stop.map(StopField::into_vec),
            stream: self.stream.unwrap_or(false),
            route: self.route,
            privacy: self.privacy,
            session: self.session,
            deadline_ms: self.deadline_ms,
            tools: self.tools,
            tool_choice: self.tool_choice,
            parallel_tool_calls: self.parallel_tool_calls,
            response_format: self.response_format,
        })
    }
}

/// `POST /v1/chat/completions`.
pub(super) async fn chat_completions(
    State(st): State<AppState>,
    Extension(gone): Extension<ClientGone>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match chat_completions_inner(&st, &headers, body, gone).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_completions_inner(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    gone: ClientGone,
) -> Result<Response, ApiError> {
    let req: ChatRequest = read_json(st, body).await?;
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let chat = req.into_chat()?;
    let stream = chat.stream;
    let (mut ex, model) = st.submit_chat(chat, headers, gone).await?;
    let created = unix_now();
    if !stream {
        return loop {
            match ex.next().await {
                Some(Event::Delta(_) | Event::Reasoning(_) | Event::ToolCalls(_)) => {}
                Some(Event::Done(a)) => break Ok(completion_response(&a, &model, created)),
                Some(Event::Failed(e)) => break Err(e),
                None => break Err(ApiError::internal("the request ended without a final")),
            }
        };
    }
    // The first event decides the status: an error before any text is an HTTP error.
    let first = match ex.next().await {
        Some(Event::Failed(e)) => return Err(e),
        Some(ev) => ev,
        None => return Err(ApiError::internal("the request ended without a final")),
    };
    let sse = Sse {
        ex,
        model,
        created,
        include_usage,
        pending: Some(first),
        sent_role: false,
        sent_text: false,
        done: false,
        id: None,
    };
    let body = Body::from_stream(futures_util::stream::unfold(sse, |mut sse| async move {
        sse.next_frame()
            .await
            .map(|frame| (Ok::<_, Infallible>(frame), sse))
    }));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The `chatcmpl-` id of a request's completion, from the request's id.
fn completion_id(request_id: &str) -> String {
    format!("chatcmpl-{request_id}")
}

fn usage_json(a: &Answer) -> Value {
    let p = a.usage.prompt_tokens.unwrap_or(0);
    let c = a.usage.completion_tokens.unwrap_or(0);
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

/// The model named in replies: the cloud model that answered, else the requested one.
fn answered_by<'a>(a: &'a Answer, requested: &'a str) -> &'a str {
    a.model.as_deref().unwrap_or(requested)
}

/// A non-streamed completion.
fn completion_response(a: &Answer, model: &str, created: u64) -> Response {
    let body = json!({
        "id": completion_id(&a.id),
        "object": "chat.completion",
        "created": created,
        "model": answered_by(a, model),
        "choices": [{
            "index": 0,
            "message": message_json(a),
            "logprobs": null,
            "finish_reason": a.openai_finish_reason(),
        }],
        "usage": usage_json(a),
        "system_fingerprint": null,
        "spillway": a.spillway_json(),
    });
    let mut response = (StatusCode::OK, Json(body)).into_response();
    if let Some(route) = a
        .route
        .as_deref()
        .and_then(|r| HeaderValue::from_str(r).ok())
    {
        response.headers_mut().insert("x-spillway-route", route);
    }
    response
}

/// The answer as OpenAI's assistant message: `content` (null when the answer is only
/// calls), `tool_calls` and `reasoning_content` when there are any.
fn message_json(a: &Answer) -> Value {
    let content = if a.text.is_empty() && !a.tool_calls.is_empty() {
        Value::Null
    } else {
        a.text.clone().into()
    };
    let mut m = json!({"role": "assistant", "content": content, "refusal": null});
    if !a.tool_calls.is_empty() {
        m["tool_calls"] = a.tool_calls.clone().into();
    }
    if let Some(r) = a.reasoning_content.as_deref().filter(|r| !r.is_empty()) {
        m["reasoning_content"] = r.into();
    }
    m
}

/// A whole call (message form) as one streamed delta: `index` added, arguments whole.
fn call_delta(index: usize, call: &Value) -> Value {
    let mut d = call.clone();
    d["index"] = index.into();
    d
}

/// A stream of server-sent events in OpenAI's chunk shape.
struct Sse {
    ex: Exchange,
    model: String,
    created: u64,
    include_usage: bool,
    /// The event read before the stream started.
    pending: Option<Event>,
    sent_role: bool,
    sent_text: bool,
    done: bool,
    /// The completion id, known from the final; chunks before it use the exchange's.
    id: Option<String>,
}

impl Sse {
    fn frame(v: &Value) -> Bytes {
        let mut s = String::with_capacity(256);
        s.push_str("data: ");
        s.push_str(&v.to_string());
        s.push_str("\n\n");
        Bytes::from(s)
    }

    fn chunk(
        &self,
        delta: Value,
        finish_reason: Option<&str>,
        extra: Option<(&str, Value)>,
    ) -> Bytes {
        let mut v = json!({
            "id": self.id.clone().unwrap_or_else(|| completion_id(self.ex.request_id())),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        if let Some((k, x)) = extra {
            v[k] = x;
        }
        Sse::frame(&v)
    }

    /// The next bytes of the stream; `None` after `data: [DONE]`.
    async fn next_frame(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if !self.sent_role {
            self.sent_role = true;
            return Some(self.chunk(json!({"role": "assistant", "content": ""}), None, None));
        }
        let event = match self.pending.take() {
            Some(e) => Some(e),
            None => self.ex.next().await,
        };
        let mut out = Vec::new();
        match event {
            Some(Event::Delta(d)) => {
                self.sent_text = true;
                out.push(self.chunk(json!({"content": d}), None, None));
            }
            Some(Event::Reasoning(r)) => {
                self.sent_text = true;
                out.push(self.chunk(json!({"reasoning_content": r}), None, None));
            }
            Some(Event::ToolCalls(calls)) => {
                self.sent_text = true;
                out.push(self.chunk(json!({"tool_calls": calls}), None, None));
            }
            Some(Event::Done(a)) => {
                self.id = Some(completion_id(&a.id));
                if let Some(m) = &a.model {
                    self.model = m.clone();
                }
                if !self.sent_text {
                    // A final without chunks (a replay, a resumed or attached request).
                    if let Some(r) = a.reasoning_content.as_deref().filter(|r| !r.is_empty()) {
                        out.push(self.chunk(json!({"reasoning_content": r}), None, None));
                    }
                    if !a.text.is_empty() {
                        out.push(self.chunk(json!({"content": a.text}), None, None));
                    }
                    if !a.tool_calls.is_empty() {
                        let calls: Vec<Value> = a
                            .tool_calls
                            .iter()
                            .enumerate()
                            .map(|(i, c)| call_delta(i, c))
                            .collect();
                        out.push(self.chunk(json!({"tool_calls": calls}), None, None));
                    }
                }
                out.push(self.chunk(
                    json!({}),
                    Some(a.openai_finish_reason()),
                    Some(("spillway", a.spillway_json())),
                ));
                if self.include_usage {
                    let mut usage = json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "system_fingerprint": null,
                        "choices": [],
                    });
                    usage["usage"] = usage_json(&a);
                    out.push(Sse::frame(&usage));
                }
                out.push(Bytes::from_static(b"data: [DONE]\n\n"));
                self.done = true;
            }
            Some(Event::Failed(e)) => {
                // After the stream started the status is sent: the error goes in the stream,
                // as OpenAI's API does.
                out.push(Sse::frame(&e.body()));
                out.push(Bytes::from_static(b"data: [DONE]\n\n"));
                self.done = true;
            }
            None => {
                self.done = true;
                out.push(Bytes::from_static(b"data: [DONE]\n\n"));
            }
        }
        Some(Bytes::from(out.concat()))
    }
}

/// `GET /v1/models`.
pub(super) async fn models(State(st): State<AppState>) -> Response {
    let created = st.models.created;
    let mut data = vec![json!({
        "id": st.models.local,
        "object": "model",
        "created": created,
        "owned_by": "spillway",
    })];
    for m in &st.models.cloud {
        data.push(json!({
            "id": m,
            "object": "model",
            "created": created,
            "owned_by": "cloud",
        }));
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Chat, ApiError> {
        let req: ChatRequest =
            serde_json::from_str(body).map_err(|e| ApiError::invalid(e.to_string()))?;
        req.into_chat()
    }

    #[test]
    fn openai_requests_translate() {
        let c = parse(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
                "max_completion_tokens":5,"max_tokens":9,"stop":"\n","stream":true,
                "user":"u1","route":"cloud","privacy":"local-only","deadline_ms":1500}"#,
        )
        .unwrap();
        assert_eq!(c.messages[0].role, "system");
        assert_eq!(c.messages[1].content, "hi there");
        assert_eq!(c.max_tokens, Some(5), "max_completion_tokens wins");
        assert_eq!(c.stop, Some(vec!["\n".to_string()]));
        assert_eq!(
            (c.route, c.privacy),
            (Some(RouteHint::Cloud), Some(Privacy::LocalOnly))
        );
        assert_eq!(c.deadline_ms, Some(1500));
        assert!(c.stream);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let param = |body: &str| parse(body).unwrap_err().param;
        let m = r#""model":"m","messages":[{"role":"user","content":"x"}]"#;
        assert_eq!(param(&format!("{{{m},\"n\":2}}")).as_deref(), Some("n"));
        assert_eq!(
            param(&format!("{{{m},\"logprobs\":true}}")).as_deref(),
            Some("logprobs")
        );
        assert_eq!(
            param(r#"{"model":"m","messages":[{"role":"function","content":"x"}]}"#).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#)
                .as_deref(),
            Some("messages[0].content")
        );
        let unknown = parse(&format!("{{{m},\"max_token\":3}}")).unwrap_err();
        assert!(unknown.message.contains("max_token"), "{}", unknown.message);
        // Tools and formats go to the intake as given; it checks them.
        let c = parse(&format!(
            "{{{m},\"tools\":[{{\"type\":\"function\",\"function\":{{\"name\":\"f\"}}}}],\
             \"tool_choice\":\"required\",\"parallel_tool_calls\":false,\
             \"response_format\":{{\"type\":\"json_object\"}}}}"
        ))
        .unwrap();
        assert_eq!(c.tools.unwrap()[0]["function"]["name"], "f");
        assert_eq!(
            (c.tool_choice, c.parallel_tool_calls),
            (Some(json!("required")), Some(false))
        );
        assert_eq!(c.response_format, Some(json!({"type": "json_object"})));
        let c = parse(
            r#"{"model":"m","messages":[{"role":"user","content":"x"},
               {"role":"assistant","content":null,"tool_calls":[{"id":"abcdefghi","type":"function",
                 "function":{"name":"f","arguments":"{}"}}]},
               {"role":"tool","tool_call_id":"abcdefghi","content":"ok"}]}"#,
        )
        .unwrap();
        assert_eq!(c.messages[1].tool_calls.len(), 1);
        assert_eq!(c.messages[2].tool_call_id.as_deref(), Some("abcdefghi"));
    }
}
