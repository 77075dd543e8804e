//! Ollama's API, as much of it as Home Assistant's Ollama integration and the `ollama`
//! Python client use: `POST /api/chat` and `POST /api/generate` (newline-delimited JSON
//! streams, the default, or one object), `GET /api/tags`, `POST /api/show`,
//! `GET /api/ps`, `GET /api/version`. Requests go through the same intake as every other;
//! the local model is listed as `<id>:latest`. Unknown `options` are ignored, as Ollama
//! does. `tools` go to the intake as OpenAI's (Ollama uses the same definitions) and calls
//! come back in Ollama's form (`message.tool_calls[].function.arguments` an object);
//! `format` (`"json"` or a JSON Schema) becomes the intake's `response_format`; thinking
//! comes back as `message.thinking`. Images are refused by name.

use std::convert::Infallible;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};

use super::errors::ApiError;
use super::openai::StopField;
use super::replies::{Answer, Event, Exchange};
use super::{AppState, Chat, ChatMessage, ClientGone, Models, read_json, unix_now};
use crate::router::{Privacy, RouteHint};

/// The API version `/api/version` reports: the Ollama release whose API this follows.
const OLLAMA_API_VERSION: &str = "0.12.0";

#[derive(Debug, Deserialize)]
struct MessageIn {
    role: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    images: Option<Vec<Value>>,
    /// An assistant's calls: `[{"function": {"name", "arguments": {...}}}]`.
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
    /// The tool a `tool` message's result comes from: accepted, not needed (results are
    /// matched to calls by order).
    #[serde(default, rename = "tool_name")]
    _tool_name: Option<IgnoredAny>,
    /// Earlier thinking: accepted, not sent to the model.
    #[serde(default, rename = "thinking")]
    _thinking: Option<IgnoredAny>,
}

/// `options`: the ones that change generation; others (num_ctx, num_thread, ...) are
/// ignored, as Ollama ignores options a model does not use.
#[derive(Debug, Default, Deserialize)]
struct Options {
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    num_predict: Option<i64>,
    #[serde(default)]
    stop: Option<StopField>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(flatten)]
    _ignored: Map<String, Value>,
}

/// What `/api/chat` and `/api/generate` share.
#[derive(Debug, Default, Deserialize)]
struct Common {
    model: String,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    format: Option<Value>,
    #[serde(default)]
    options: Option<Options>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default, rename = "keep_alive")]
    _keep_alive: Option<IgnoredAny>,
    #[serde(default, rename = "think")]
    _think: Option<IgnoredAny>,
    // Spillway's own.
    #[serde(default)]
    route: Option<RouteHint>,
    #[serde(default)]
    privacy: Option<Privacy>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    deadline_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    #[serde(flatten)]
    common: Common,
    #[serde(default)]
    messages: Vec<MessageIn>,
}

#[derive(Debug, Deserialize)]
struct GenerateBody {
    #[serde(flatten)]
    common: Common,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    images: Option<Vec<Value>>,
    #[serde(default)]
    raw: Option<bool>,
}

impl Common {
    fn into_chat(self, messages: Vec<ChatMessage>) -> Result<Chat, ApiError> {
        // `format`: "json" for any JSON object, or a JSON Schema the answer must match.
        let response_format = match self.format {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) if s == "json" => Some(json!({"type": "json_object"})),
            Some(schema @ Value::Object(_)) => Some(json!({"type": "json_schema",
                "json_schema": {"name": "format", "schema": schema, "strict": true}})),
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "format",
                    "format must be \"json\" or a JSON Schema object",
                )
                .ollama());
            }
        };
        let tools = self
            .tools
            .filter(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty()));
        let o = self.options.unwrap_or_default();
        // -1: until the model stops; -2: fill the context. Both: the service's default.
        let max_tokens = match o.num_predict {
            Some(n) if n > 0 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            _ => None,
        };
        Ok(Chat {
            model: self.model,
            messages,
            max_tokens,
            temperature: o.temperature,
            top_p: o.top_p,
            top_k: o.top_k,
            min_p: o.min_p,
            presence_penalty: o.presence_penalty,
            frequency_penalty: o.frequency_penalty,
            seed: o.seed,
            stop: o.stop.map(StopField::into_vec),
            stream: self.stream.unwrap_or(true),
            route: self.route,
            privacy: self.privacy,
            session: self.session,
            deadline_ms: self.deadline_ms,
            tools,
            tool_choice: None,
            parallel_tool_calls: None,
            response_format,
        })
    }
}

/// Which endpoint's shape the replies take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `/api/chat`: `message.content`.
    Chat,
    /// `/api/generate`: `response`.
    Generate,
}

/// `POST /api/chat`.
pub(super) async fn chat(
    State(st): State<AppState>,
    Extension(gone): Extension<ClientGone>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let run = async {
        let b: ChatBody = read_json(&st, body).await.map_err(ApiError::ollama)?;
        let mut messages = Vec::with_capacity(b.messages.len());
        for (i, m) in b.messages.into_iter().enumerate() {
            if m.images.as_ref().is_some_and(|v| !v.is_empty()) {
                return Err(ApiError::invalid_param(
                    &format!("messages[{i}].images"),
                    "images are not supported",
                )
                .ollama());
            }
            messages.push(ChatMessage {
                role: m.role,
                content: m.content,
                tool_calls: m.tool_calls.unwrap_or_default(),
                tool_call_id: None,
            });
        }
        let chat = b.common.into_chat(messages)?;
        respond(&st, chat, &headers, Shape::Chat, gone).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /api/generate`: the prompt as one user turn (after `system`, if given).
pub(super) async fn generate(
    State(st): State<AppState>,
    Extension(gone): Extension<ClientGone>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let run = async {
        let b: GenerateBody = read_json(&st, body).await.map_err(ApiError::ollama)?;
        if b.images.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(ApiError::invalid_param("images", "images are not supported").ollama());
        }
        if b.raw == Some(true) {
            return Err(ApiError::invalid_param(
                "raw",
                "raw prompts are not supported: the chat template is always applied",
            )
            .ollama());
        }
        if b.prompt.is_empty() {
            // Ollama's way to load a model: it is loaded already.
            st.models
                .resolve(&b.common.model)
                .map_err(ApiError::ollama)?;
            return Ok(Json(json!({
                "model": b.common.model,
                "created_at": rfc3339_now(),
                "response": "",
                "done": true,
                "done_reason": "load",
            }))
            .into_response());
        }
        let mut messages = Vec::new();
        if let Some(system) = b.system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: system,
                ..ChatMessage::default()
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: b.prompt,
            ..ChatMessage::default()
        });
        let chat = b.common.into_chat(messages)?;
        respond(&st, chat, &headers, Shape::Generate, gone).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn respond(
    st: &AppState,
    chat: Chat,
    headers: &HeaderMap,
    shape: Shape,
    gone: ClientGone,
) -> Result<Response, ApiError> {
    let stream = chat.stream;
    let (mut ex, model) = st
        .submit_chat(chat, headers, gone)
        .await
        .map_err(ApiError::ollama)?;
    if !stream {
        return loop {
            match ex.next().await {
                Some(Event::Delta(_) | Event::Reasoning(_) | Event::ToolCalls(_)) => {}
                Some(Event::Done(a)) => {
                    let mut body = piece(shape, &model, &a.text);
                    if let Some(r) = a.reasoning_content.as_deref() {
                        think(shape, &mut body, r);
                    }
                    finish(&mut body, &a);
                    let mut r = Json(body).into_response();
                    if let Some(route) = a
                        .route
                        .as_deref()
                        .and_then(|r| HeaderValue::from_str(r).ok())
                    {
                        r.headers_mut().insert("x-spillway-route", route);
                    }
                    break Ok(r);
                }
                Some(Event::Failed(e)) => break Err(e.ollama()),
                None => break Err(ApiError::internal("the request ended without a final").ollama()),
            }
        };
    }
    let first = match ex.next().await {
        Some(Event::Failed(e)) => return Err(e.ollama()),
        Some(ev) => ev,
        None => return Err(ApiError::internal("the request ended without a final").ollama()),
    };
    let lines = Lines {
        ex,
        model,
        shape,
        pending: Some(first),
        sent_text: false,
        done: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(lines, |mut l| async move {
        l.next_line()
            .await
            .map(|line| (Ok::<_, Infallible>(line), l))
    }));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// One object of a reply: a piece of text in the endpoint's shape.
fn piece(shape: Shape, model: &str, text: &str) -> Value {
    let mut v = json!({"model": model, "created_at": rfc3339_now()});
    match shape {
        Shape::Chat => v["message"] = json!({"role": "assistant", "content": text}),
        Shape::Generate => v["response"] = json!(text),
    }
    v["done"] = json!(false);
    v
}

/// Adds thinking text to a reply object (`message.thinking`; `thinking` for generate).
fn think(shape: Shape, v: &mut Value, text: &str) {
    if text.is_empty() {
        return;
    }
    match shape {
        Shape::Chat => v["message"]["thinking"] = json!(text),
        Shape::Generate => v["thinking"] = json!(text),
    }
}

/// The answer's calls in Ollama's form: `{"function": {"name", "arguments": {...}}}`, the
/// arguments an object (OpenAI's are a JSON string).
fn ollama_calls(a: &Answer) -> Vec<Value> {
    a.tool_calls
        .iter()
        .map(|c| {
            let f = &c["function"];
            let arguments = f["arguments"]
                .as_str()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .unwrap_or_else(|| json!({}));
            json!({"function": {"name": f["name"], "arguments": arguments}})
        })
        .collect()
}

/// Makes `v` the last object: `done`, why, the calls, and Ollama's counts and durations
/// (ns).
fn finish(v: &mut Value, a: &Answer) {
    let ns = |ms: Option<f64>| ms.map_or(0, |ms| (ms * 1e6).max(0.0) as u64);
    let total = a.timing_ms("total_ms").or_else(|| {
        Some(a.timing_ms("queue_ms")? + a.timing_ms("prompt_ms")? + a.timing_ms("generation_ms")?)
    });
    v["done"] = json!(true);
    // Ollama says `stop` for an answer of calls too.
    v["done_reason"] = json!(match a.openai_finish_reason() {
        "length" => "length",
        _ => "stop",
    });
    if !a.tool_calls.is_empty() && v.get("message").is_some() {
        v["message"]["tool_calls"] = ollama_calls(a).into();
    }
    v["total_duration"] = json!(ns(total));
    v["load_duration"] = json!(0);
    v["prompt_eval_count"] = json!(a.usage.prompt_tokens.unwrap_or(0));
    v["prompt_eval_duration"] = json!(ns(a.timing_ms("prompt_ms")));
    v["eval_count"] = json!(a.usage.completion_tokens.unwrap_or(0));
    v["eval_duration"] = json!(ns(a.timing_ms("generation_ms")));
    if let Some(m) = &a.model {
        v["model"] = json!(m);
    }
    v["spillway"] = a.spillway_json();
}

/// A newline-delimited JSON stream.
struct Lines {
    ex: Exchange,
    model: String,
    shape: Shape,
    pending: Option<Event>,
    sent_text: bool,
    done: bool,
}

impl Lines {
    fn line(v: &Value) -> Bytes {
        let mut s = v.to_string();
        s.push('\n');
        Bytes::from(s)
    }

    async fn next_line(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut event = match self.pending.take() {
            Some(e) => Some(e),
            None => self.ex.next().await,
        };
        // Ollama sends a call whole: calls go with the last object, from the final.
        while let Some(Event::ToolCalls(_)) = event {
            self.sent_text = true;
            event = self.ex.next().await;
        }
        self.done = !matches!(
            event,
            Some(Event::Delta(_) | Event::Reasoning(_) | Event::ToolCalls(_))
        );
        Some(match event {
            Some(Event::Delta(d)) => {
                self.sent_text = true;
                Lines::line(&piece(self.shape, &self.model, &d))
            }
            Some(Event::Reasoning(r)) => {
                self.sent_text = true;
                let mut v = piece(self.shape, &self.model, "");
                think(self.shape, &mut v, &r);
                Lines::line(&v)
            }
            Some(Event::ToolCalls(_)) => unreachable!("skipped above"),
            Some(Event::Done(a)) => {
                let text = if self.sent_text { "" } else { a.text.as_str() };
                let mut last = piece(self.shape, &self.model, text);
                if !self.sent_text
                    && let Some(r) = a.reasoning_content.as_deref()
                {
                    think(self.shape, &mut last, r);
                }
                finish(&mut last, &a);
                Lines::line(&last)
            }
            Some(Event::Failed(e)) => Lines::line(&e.ollama().body()),
            None => Lines::line(
                &ApiError::internal("the request ended without a final")
                    .ollama()
                    .body(),
            ),
        })
    }
}

/// The local model as Ollama's listings describe it.
fn model_entry(m: &Models) -> Value {
    let name = format!("{}:latest", m.local);
    json!({
        "name": name,
        "model": name,
        "modified_at": rfc3339(m.created),
        "size": m.details.file_bytes,
        "digest": digest(m),
        "details": details(m),
    })
}

fn details(m: &Models) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": m.details.family,
        "families": [m.details.family],
        "parameter_size": m.details.parameter_size,
        "quantization_level": m.details.quantization,
    })
}

/// A stable identifier of the model file (its name, size and time; not its content, which
/// would mean reading gigabytes).
fn digest(m: &Models) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{}\0{}\0{}", m.local, m.details.file_bytes, m.created).as_bytes(),
    );
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET /api/tags`.
pub(super) async fn tags(State(st): State<AppState>) -> Response {
    Json(json!({"models": [model_entry(&st.models)]})).into_response()
}

/// `GET /api/ps`: the local model is always loaded.
pub(super) async fn ps(State(st): State<AppState>) -> Response {
    let mut entry = model_entry(&st.models);
    entry["expires_at"] = json!("2318-01-01T00:00:00Z");
    entry["size_vram"] = json!(0);
    entry["context_length"] = json!(st.models.details.context_length);
    Json(json!({"models": [entry]})).into_response()
}

/// `GET /api/version`.
pub(super) async fn version() -> Response {
    Json(json!({"version": OLLAMA_API_VERSION})).into_response()
}

#[derive(Deserialize)]
struct ShowBody {
    #[serde(alias = "name")]
    model: String,
}

/// `POST /api/show`.
pub(super) async fn show(State(st): State<AppState>, body: Body) -> Response {
    let run = async {
        let b: ShowBody = read_json(&st, body).await.map_err(ApiError::ollama)?;
        if st.models.resolve(&b.model).map_err(ApiError::ollama)? {
            return Err(ApiError::invalid_param(
                "model",
                "details are known for the local model only",
            )
            .ollama());
        }
        let m = &st.models;
        Ok(Json(json!({
            "modelfile": format!("# Served by Spillway\nFROM {}\n", m.local),
            "parameters": "",
            "template": "{{ .Prompt }}",
            "details": details(m),
            "model_info": {
                "general.architecture": m.details.family,
                "general.parameter_count": m.details.parameter_size,
                format!("{}.context_length", m.details.family): m.details.context_length,
            },
            "capabilities": ["completion"],
            "modified_at": rfc3339(m.created),
        }))
        .into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

fn rfc3339_now() -> String {
    rfc3339(unix_now())
}

/// `secs` since the Unix epoch as an RFC 3339 UTC time.
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_300_000), "2026-12-03T12:13:20Z");
    }

    #[test]
    fn options_map_to_the_intake() {
        let b: ChatBody = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],
                "options":{"num_predict":7,"temperature":0.2,"num_ctx":8192,"stop":["x"]},
                "keep_alive":"5m"}"#,
        )
        .unwrap();
        let c = b.common.into_chat(Vec::new()).unwrap();
        assert_eq!(
            (c.max_tokens, c.temperature, c.stream),
            (Some(7), Some(0.2), true)
        );
        assert_eq!(c.stop, Some(vec!["x".to_string()]));
        let b: ChatBody =
            serde_json::from_str(r#"{"model":"m","messages":[],"options":{"num_predict":-1}}"#)
                .unwrap();
        assert_eq!(b.common.into_chat(Vec::new()).unwrap().max_tokens, None);
        let format = |f: &str| {
            let b: ChatBody =
                serde_json::from_str(&format!(r#"{{"model":"m","format":{f}}}"#)).unwrap();
            b.common.into_chat(Vec::new())
        };
        assert_eq!(
            format(r#""json""#).unwrap().response_format,
            Some(json!({"type": "json_object"}))
        );
        let schema = format(r#"{"type":"object"}"#)
            .unwrap()
            .response_format
            .unwrap();
        assert_eq!(schema["json_schema"]["schema"], json!({"type": "object"}));
        assert_eq!(format("\"\"").unwrap().response_format, None);
        assert_eq!(
            format(r#""yaml""#).unwrap_err().param.as_deref(),
            Some("format")
        );
    }
}
