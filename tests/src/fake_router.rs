//! A fake cloud router for end-to-end tests: a local HTTPS server (hyper over rustls, with
//! the certificates of [`pki::shared`]; or plain HTTP, as on a LAN) that speaks the Hugging
//! Face router's OpenAI-compatible protocol — `POST /v1/chat/completions`,
//! `text/event-stream` answers as `chat.completion.chunk` objects, the usage chunk,
//! `[DONE]`, the `x-inference-provider` header — and plays a script of replies in order, for
//! any request or per model: streams that stall, break or report errors, 429 with and
//! without `Retry-After`, 402, 503.
//!
//! [`Reply::Respond`] answers from the request itself, as a model would: when it declares
//! tools and `tool_choice` is not `"none"`, with a tool call streamed the way OpenAI streams
//! one (a first delta with the call's index, id, type and name and empty arguments, then
//! the arguments' JSON in several pieces, `finish_reason: "tool_calls"`), of the named
//! function or else the first tool, with arguments made from its parameters' schema
//! ([`arguments_for`]); otherwise with a short text.
//!
//! [`Reply::Echo`] plays a router that quotes the credentials back ([`Echo`]): the token
//! from the request's `Authorization` header in an error body (JSON-escaped or
//! percent-encoded), in an `error` event, or in the answer's text split across chunks. The
//! client must keep it out of everything it shows or forwards.
//!
//! It runs on its own tokio runtime, so synchronous and async tests alike drive it; it
//! records every request (headers and JSON body) for the test to check what was sent, and
//! how often.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::pki;

// ---------------------------------------------------------------------------------------
// TLS

/// Serves the server certificate of [`pki::shared`].
fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let p = pki::shared();
    let certs = rustls_pemfile::certs(&mut &p.server_cert[..])
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut &p.server_key[..])
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

// ---------------------------------------------------------------------------------------
// Scripts

/// A point in a streamed body where the server waits until the test opens it (bounded by
/// ten seconds, so a broken client cannot hang the server).
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<Notify>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Lets the stream waiting at this gate go on (or the next one to reach it).
    pub fn open(&self) {
        self.0.notify_one();
    }
}

/// One step of a streamed body.
#[derive(Clone, Debug)]
pub enum Part {
    /// Written (and flushed) as one body chunk.
    Bytes(Vec<u8>),
    Sleep(Duration),
    Wait(Gate),
}

/// A scripted reply.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with `text/event-stream`.
    Stream {
        provider: Option<String>,
        parts: Vec<Part>,
    },
    /// Any other response, with a JSON body.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// A reply quoting the request's bearer token back, as `echo` says.
    Echo(Echo),
    /// 200 with `text/event-stream`: the answer [`respond_parts`] makes of the request.
    Respond { provider: Option<String> },
}

/// A reply made from the request: a tool call when it asks for one, else text (see the
/// module documentation).
pub fn respond(provider: &str) -> Reply {
    Reply::Respond {
        provider: Some(provider.to_string()),
    }
}

/// The id of the call [`respond_parts`] makes.
pub const RESPOND_CALL_ID: &str = "call_e2eFakeRouter01";
/// The text [`respond_parts`] answers a request without tools with, in two deltas.
pub const RESPOND_TEXT: [&str; 2] = ["Nothing ", "to call."];

/// The function the request's `tool_choice` names, else its first tool's; `None` when it
/// declares no tools or says `"none"`.
pub fn called_tool(body: &Value) -> Option<&Value> {
    let tools = body["tools"].as_array().filter(|t| !t.is_empty())?;
    let choice = &body["tool_choice"];
    if choice == "none" {
        return None;
    }
    match choice["function"]["name"].as_str() {
        Some(name) => tools.iter().find(|t| t["function"]["name"] == name),
        None => tools.first(),
    }
}

/// Arguments valid against a simple JSON schema, made deterministically: for an object,
/// each required property (every property when none is marked required) with a value of
/// its own schema; the first `enum` value; `"example"`, `1`, `1.5`, `true`, an empty array
/// for the other types (the first type that is not `null`, when several are given).
pub fn arguments_for(schema: &Value) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    let ty = match &schema["type"] {
        Value::String(t) => t.as_str(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match ty {
        "object" => {
            let props = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let required: Vec<&str> = match schema["required"].as_array() {
                Some(r) => r.iter().filter_map(Value::as_str).collect(),
                None => props.keys().map(String::as_str).collect(),
            };
            let obj = required
                .iter()
                .map(|k| {
                    let sub = props.get(*k).cloned().unwrap_or(Value::Null);
                    (k.to_string(), arguments_for(&sub))
                })
                .collect();
            Value::Object(obj)
        }
        "integer" => json!(1),
        "number" => json!(1.5),
        "boolean" => json!(true),
        "array" => json!([]),
        "null" => Value::Null,
        _ => json!("example"),
    }
}

/// The stream [`Reply::Respond`] answers `body` with.
pub fn respond_parts(body: &Value) -> Vec<Part> {
    let Some(tool) = called_tool(body) else {
        let mut parts = vec![role()];
        parts.extend(RESPOND_TEXT.iter().map(|t| delta(t)));
        parts.extend([finish("stop"), usage(9, 2), done()]);
        return parts;
    };
    let name = tool["function"]["name"].as_str().unwrap_or_default();
    let args = arguments_for(&tool["function"]["parameters"]).to_string();
    let mut parts = vec![
        sse(chunk_json(
            json!({"role": "assistant", "content": null}),
            Value::Null,
        )),
        sse(chunk_json(
            json!({"tool_calls": [{"index": 0, "id": RESPOND_CALL_ID, "type": "function",
                                   "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        )),
    ];
    // OpenAI cuts the arguments anywhere, a few characters at a time.
    let chars: Vec<char> = args.chars().collect();
    for piece in chars.chunks(5) {
        let piece: String = piece.iter().collect();
        parts.push(sse(chunk_json(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
            Value::Null,
        )));
    }
    parts.extend([finish("tool_calls"), usage(20, 12), done()]);
    parts
}

/// How a [`Reply::Echo`] quotes the token it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Echo {
    /// `status` with a JSON body holding the token JSON-escaped: `_` as `\u005f`, `/` as
    /// `\/` (what a JSON encoder that escapes more than it must produces).
    JsonEscaped { status: u16 },
    /// `status` with a JSON body holding the token percent-encoded (as in a quoted URL).
    PercentEncoded { status: u16 },
    /// 200, then an `event: error` whose data quotes the token JSON-escaped.
    SseErrorEvent,
    /// 200, a delta of text, then an `{"error": ...}` chunk quoting the token
    /// percent-encoded.
    StreamErrorAfterText,
    /// 200 and a complete answer whose text holds the token twice: once as it is, split
    /// between two deltas (one of them also split across two body writes), and once
    /// percent-encoded, split inside an escape. The answer reads
    /// `Your key is TOKEN and encoded PERCENT-ENCODED-TOKEN.`
    SplitContent,
}

/// A reply quoting the request's token back.
pub fn echo(how: Echo) -> Reply {
    Reply::Echo(how)
}

/// `text` with `_` and `/` JSON-escaped (`\u005f`, `\/`), the rest as it is.
pub fn json_escaped(text: &str) -> String {
    text.replace('_', "\\u005f").replace('/', "\\/")
}

/// Every byte of `text` percent-encoded.
pub fn percent_encoded(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// The reply `how` makes of `token`.
fn echo_reply(how: Echo, token: &str) -> Reply {
    // Bodies are written by hand, not with serde_json (which would undo the escapes).
    let error_body = |quoted: &str| {
        format!(
            r#"{{"error":{{"message":"Invalid credentials in Authorization header: Bearer {quoted}","type":"invalid_request_error"}}}}"#
        )
    };
    match how {
        Echo::JsonEscaped { status } => Reply::Status {
            status,
            headers: Vec::new(),
            body: error_body(&json_escaped(token)),
        },
        Echo::PercentEncoded { status } => Reply::Status {
            status,
            headers: Vec::new(),
            body: format!(
                r#"{{"error":"GET /v1/models?api_key={} refused"}}"#,
                percent_encoded(token)
            ),
        },
        Echo::SseErrorEvent => bare_stream(vec![Part::Bytes(
            format!(
                "event: error\ndata: {}\n\n",
                error_body(&json_escaped(token))
            )
            .into_bytes(),
        )]),
        Echo::StreamErrorAfterText => bare_stream(vec![
            role(),
            delta("Checking your key"),
            Part::Bytes(
                format!(
                    "data: {{\"error\":{{\"message\":\"key {} revoked\",\"code\":401}}}}\n\n",
                    percent_encoded(token)
                )
                .into_bytes(),
            ),
        ]),
        Echo::SplitContent => {
            let half = token.len() / 2;
            let encoded = percent_encoded(token);
            // Inside the sixth escape: "%XX" * 5 + "%".
            let cut = 16.min(encoded.len());
            let second = format!(
                "data: {}\n\n",
                chunk_json(
                    json!({"content": format!("{} and encoded {}", &token[half..], &encoded[..cut])}),
                    Value::Null
                )
            )
            .into_bytes();
            let mid = second.len() / 2;
            bare_stream(vec![
                role(),
                delta(&format!("Your key is {}", &token[..half])),
                Part::Bytes(second[..mid].to_vec()),
                Part::Sleep(Duration::from_millis(20)),
                Part::Bytes(second[mid..].to_vec()),
                delta(&format!("{}.", &encoded[cut..])),
                finish("stop"),
                usage(9, 12),
                done(),
            ])
        }
    }
}

/// An SSE `data:` event.
pub fn sse(v: Value) -> Part {
    Part::Bytes(format!("data: {v}\n\n").into_bytes())
}

/// A `chat.completion.chunk` object with one choice.
pub fn chunk_json(delta: Value, finish: Value) -> Value {
    json!({
        "id": "chatcmpl-e2e", "object": "chat.completion.chunk", "created": 1767225600,
        "model": "mistralai/Ministral-3-3B-Instruct-2512",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        "usage": null,
    })
}

/// The first chunk: the assistant role with empty content.
pub fn role() -> Part {
    sse(chunk_json(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ))
}

/// A chunk of answer text.
pub fn delta(text: &str) -> Part {
    sse(chunk_json(json!({"content": text}), Value::Null))
}

/// The chunk carrying the finish reason.
pub fn finish(reason: &str) -> Part {
    sse(chunk_json(json!({}), json!(reason)))
}

/// The usage chunk (no choices).
pub fn usage(prompt: u64, completion: u64) -> Part {
    sse(json!({
        "id": "chatcmpl-e2e", "object": "chat.completion.chunk", "created": 1767225600,
        "model": "mistralai/Ministral-3-3B-Instruct-2512", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
    }))
}

/// `data: [DONE]`.
pub fn done() -> Part {
    Part::Bytes(b"data: [DONE]\n\n".to_vec())
}

/// An `error` object in the stream, as providers send when they fail mid-answer.
pub fn stream_error(message: &str) -> Part {
    sse(json!({"error": {"message": message, "type": "server_error", "code": 503}}))
}

/// A streamed reply from `provider` made of `parts`.
pub fn stream(provider: &str, parts: Vec<Part>) -> Reply {
    Reply::Stream {
        provider: Some(provider.to_string()),
        parts,
    }
}

/// A streamed reply made of `parts`, without the `x-inference-provider` header.
pub fn bare_stream(parts: Vec<Part>) -> Reply {
    Reply::Stream {
        provider: None,
        parts,
    }
}

/// A complete, well-formed answer streamed one word per chunk.
pub fn ok_stream(provider: &str, words: &[&str]) -> Reply {
    let mut parts = vec![role()];
    parts.extend(words.iter().map(|w| delta(w)));
    parts.extend([finish("stop"), usage(9, words.len() as u64), done()]);
    stream(provider, parts)
}

/// A non-streamed response: `status`, extra `headers`, a JSON `body`.
pub fn status(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
    Reply::Status {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// The server

/// A request the router received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub at: Instant,
}

impl Recorded {
    /// The `model` the request named.
    pub fn model(&self) -> &str {
        self.body["model"].as_str().unwrap_or("")
    }

    /// Whether any message of the request contains `needle` (tests put the request id in
    /// the prompt to tell which MQTT request was forwarded).
    pub fn mentions(&self, needle: &str) -> bool {
        self.body["messages"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["content"].as_str().is_some_and(|c| c.contains(needle)))
        })
    }
}

#[derive(Debug, Default)]
struct State {
    script: Mutex<VecDeque<Reply>>,
    by_model: Mutex<HashMap<String, VecDeque<Reply>>>,
    requests: Mutex<Vec<Recorded>>,
}

/// The fake router; stops on drop.
#[derive(Debug)]
pub struct FakeRouter {
    base_url: String,
    state: Arc<State>,
    rt: Option<tokio::runtime::Runtime>,
}

type Body = Either<Full<Bytes>, Channel<Bytes>>;

impl FakeRouter {
    /// Starts an HTTPS router on a free loopback port, with certificates from
    /// [`pki::shared`].
    pub fn start() -> FakeRouter {
        FakeRouter::start_with(Some(tls_acceptor()))
    }

    /// Starts a plain HTTP router on a free loopback port, as a LAN server would be.
    pub fn start_plain() -> FakeRouter {
        FakeRouter::start_with(None)
    }

    fn start_with(acceptor: Option<tokio_rustls::TlsAcceptor>) -> FakeRouter {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-router")
            .enable_all()
            .build()
            .expect("a tokio runtime for the fake router");
        let state = Arc::new(State::default());
        // Bound here rather than with `block_on`, which async tests may not call.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the fake router");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let st = Arc::clone(&state);
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (st, acceptor) = (Arc::clone(&st), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                serve_conn(TokioIo::new(tls), st).await;
                            }
                        }
                        None => serve_conn(TokioIo::new(tcp), st).await,
                    }
                });
            }
        });
        FakeRouter {
            base_url: format!("{scheme}://127.0.0.1:{port}/v1"),
            state,
            rt: Some(rt),
        }
    }

    /// `https://127.0.0.1:PORT/v1` (`http://` for [`FakeRouter::start_plain`]).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca_pem(&self) -> &'static [u8] {
        &pki::shared().ca
    }

    /// Appends replies for requests naming `model`; such a request takes the next of these,
    /// or, when none is left, the next of [`FakeRouter::script`]'s.
    pub fn script_model(&self, model: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .by_model
            .lock()
            .unwrap()
            .entry(model.to_string())
            .or_default()
            .extend(replies);
    }

    /// Appends replies to the script; each request takes the next one. A request with no
    /// reply left gets a 500.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Scripted replies not yet used.
    pub fn unused(&self) -> usize {
        let by_model: usize = self
            .state
            .by_model
            .lock()
            .unwrap()
            .values()
            .map(VecDeque::len)
            .sum();
        self.state.script.lock().unwrap().len() + by_model
    }

    /// The JSON body of the last request received.
    pub fn last_body(&self) -> Option<Value> {
        (self.state.requests.lock().unwrap().last()).map(|r| r.body.clone())
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// How many requests were received.
    pub fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// How many requests named `model`.
    pub fn count_model(&self, model: &str) -> usize {
        let requests = self.state.requests.lock().unwrap();
        requests.iter().filter(|r| r.model() == model).count()
    }
}

impl Drop for FakeRouter {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve_conn<IO>(io: TokioIo<IO>, state: Arc<State>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(req, Arc::clone(&state)));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let rec = Recorded {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
    };
    let model = rec.model().to_string();
    let body = rec.body.clone();
    let token = (rec.headers.get("authorization"))
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    state.requests.lock().unwrap().push(rec);
    let for_model = (state.by_model.lock().unwrap())
        .get_mut(&model)
        .and_then(VecDeque::pop_front);
    let mut reply = for_model.or_else(|| state.script.lock().unwrap().pop_front());
    match reply {
        Some(Reply::Echo(how)) => reply = Some(echo_reply(how, &token)),
        Some(Reply::Respond { provider }) => {
            reply = Some(Reply::Stream {
                provider,
                parts: respond_parts(&body),
            })
        }
        _ => {}
    }
    let resp = match reply {
        None => {
            let error = format!("the fake router has no scripted reply left for {model:?}");
            Response::builder()
                .status(500)
                .header("content-type", "application/json")
                .body(Either::Left(Full::from(
                    json!({ "error": error }).to_string(),
                )))
        }
        Some(Reply::Status {
            status,
            headers,
            body,
        }) => {
            let mut b = Response::builder()
                .status(status)
                .header("content-type", "application/json");
            for (k, v) in headers {
                b = b.header(k, v);
            }
            b.body(Either::Left(Full::from(body)))
        }
        // Resolved into a status or a stream above.
        Some(Reply::Echo(_) | Reply::Respond { .. }) => Response::builder()
            .status(500)
            .body(Either::Left(Full::from("unresolved reply"))),
        Some(Reply::Stream { provider, parts }) => {
            let (mut tx, body) = Channel::new(1);
            tokio::spawn(async move {
                for part in parts {
                    match part {
                        Part::Bytes(b) => {
                            if tx.send_data(Bytes::from(b)).await.is_err() {
                                return;
                            }
                        }
                        Part::Sleep(d) => tokio::time::sleep(d).await,
                        Part::Wait(g) => {
                            let _ =
                                tokio::time::timeout(Duration::from_secs(10), g.0.notified()).await;
                        }
                    }
                }
            });
            let mut b = Response::builder()
                .status(200)
                .header("content-type", "text/event-stream; charset=utf-8")
                .header("cache-control", "no-cache");
            if let Some(p) = provider {
                b = b.header("x-inference-provider", p);
            }
            b.body(Either::Right(body))
        }
    };
    Ok(resp.expect("a valid response"))
}
