//! Tool calls over the HTTPS cloud route, end to end: `spillway serve` with a real
//! mosquitto and the fake router ([`spillway_e2e::cloud_rig`]), which answers a request
//! declaring tools with a call streamed the way OpenAI streams one
//! ([`fr::respond`]). A request sent over MQTT with `route: "cloud"` must come back in the
//! shape a local answer has: chunks with `tool_calls` deltas whose arguments concatenate
//! to the final's, and a final with `finish_reason: "tool_calls"` and `tool_calls` in
//! OpenAI's message form; and the router must have received the tools, `tool_choice`,
//! `parallel_tool_calls` and `response_format` as the client gave them. The same request
//! answered by the local engine (a tiny random model with Ministral 3's vocabulary, whose
//! control tokens make calls, constrained to the tool's schema) gives the shape to compare
//! with.

mod mqtt_client;

use std::time::Duration;

use mqtt_client::Conn;
use serde_json::{Value, json};
use spillway_e2e::cloud_rig::{self, CloudRig};
use spillway_e2e::fake_router as fr;
use spillway_e2e::{Mosquitto, Serve, TempDir, tiny_tekken_v13_model};

const DEVICE: &str = "toolboard";
const TOKEN: &str = "hf_E2eCloudToolsSecret_7c3a9e1d5b2f4068";
const WAIT: Duration = Duration::from_secs(20);

/// A request's chunks and final.
struct Answer {
    chunks: Vec<Value>,
    fin: Value,
}

/// Sends `req` and waits for its final.
fn ask(conn: &Conn, serve: &Serve, req: &Value) -> Answer {
    let id = req["id"].as_str().unwrap();
    let topic = format!("replies/{id}");
    conn.request(
        &format!("spillway/{DEVICE}/request"),
        &req.to_string(),
        Some(&topic),
        Some(id.as_bytes()),
        None,
    );
    let msgs = conn.until_finals(&topic, 1, WAIT);
    let mut all: Vec<Value> = msgs.iter().map(|m| m.json()).collect();
    assert!(
        all.last().is_some_and(|m| m["done"] == true),
        "{id}: no final within {WAIT:?}: {all:?}\n--- daemon log:\n{}",
        serve.log_text()
    );
    let fin = all.pop().unwrap();
    for (i, c) in all.iter().enumerate() {
        assert_eq!((&c["id"], &c["seq"]), (&json!(id), &json!(i)), "{c}");
    }
    Answer { chunks: all, fin }
}

/// The shape of a JSON value: every leaf replaced by its type's name, each array by its
/// elements' shapes (deduplicated), so values compare by form alone.
fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(a) => {
            let mut shapes: Vec<Value> = Vec::new();
            for s in a.iter().map(shape) {
                if !shapes.contains(&s) {
                    shapes.push(s);
                }
            }
            Value::Array(shapes)
        }
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
    }
}

/// Call `index`'s arguments as the chunks streamed them.
fn streamed_arguments(chunks: &[Value], index: u64) -> String {
    chunks
        .iter()
        .filter_map(|c| c["tool_calls"].as_array())
        .flatten()
        .filter(|d| d["index"] == index)
        .filter_map(|d| d["function"]["arguments"].as_str())
        .collect()
}

/// The chunk shapes of an answer made only of calls.
fn chunk_shapes(chunks: &[Value]) -> Vec<Value> {
    let mut shapes: Vec<Value> = Vec::new();
    for s in chunks.iter().map(shape) {
        if !shapes.contains(&s) {
            shapes.push(s);
        }
    }
    shapes
}

#[test]
fn a_cloud_tool_call_comes_back_in_the_local_shape() {
    let dir = TempDir::new("cloud-tools");
    let cloud = CloudRig::start(&dir, TOKEN);
    let broker = Mosquitto::start();
    let conn = Conn::v5(broker.port, "tools-client", false);
    conn.subscribe("replies/#");
    conn.subscribe(&format!("spillway/{DEVICE}/status"));
    // The rig's configuration with the model that can call tools: its first `path` is
    // `[model]`'s.
    let rig = cloud_rig::config(DEVICE, &broker, &cloud.ca_file, "", "");
    let model_line = rig.lines().find(|l| l.starts_with("path = ")).unwrap();
    let config = rig.replacen(
        model_line,
        &format!("path = {:?}", tiny_tekken_v13_model().display().to_string()),
        1,
    );
    let serve = Serve::start_with_args(&config, &cloud.serve_args());
    assert!(
        conn.wait_for(
            &format!("spillway/{DEVICE}/status"),
            "online",
            Duration::from_secs(30)
        ),
        "the daemon never came online:\n{}",
        serve.log_text()
    );

    let weather = json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {"type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": false}}});
    let clock = json!({"type": "function", "function": {
        "name": "get_time", "parameters": {"type": "object", "properties": {}}}});
    let choice = json!({"type": "function", "function": {"name": "get_weather"}});
    let request = |id: &str, route: &str| {
        json!({
            "id": id,
            "messages": [{"role": "user", "content": "What is the weather in Oslo?"}],
            "tools": [clock, weather],
            "tool_choice": choice,
            "parallel_tool_calls": false,
            "max_tokens": 96,
            "seed": 11,
            "route": route,
        })
    };

    // The cloud: one call, streamed in pieces.
    cloud.router.script([fr::respond("together")]);
    let c = ask(&conn, &serve, &request("tools-cloud", "cloud"));
    assert_eq!(c.fin["route"], "cloud-https", "{}", c.fin);
    assert_eq!(c.fin["finish_reason"], "tool_calls", "{}", c.fin);
    assert_eq!(c.fin["text"], "", "{}", c.fin);
    let want_args = json!({"city": "example", "unit": "celsius"});
    let calls = c.fin["tool_calls"]
        .as_array()
        .expect("tool_calls in the final");
    assert_eq!(calls.len(), 1, "{}", c.fin);
    assert_eq!(
        calls[0],
        json!({"id": fr::RESPOND_CALL_ID, "type": "function",
               "function": {"name": "get_weather", "arguments": want_args.to_string()}})
    );
    // The first chunk names the call, the rest carry its arguments in pieces, which
    // concatenate to the final's.
    assert_eq!(
        c.chunks[0],
        json!({"id": "tools-cloud", "seq": 0, "tool_calls": [{"index": 0,
            "id": fr::RESPOND_CALL_ID, "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]})
    );
    assert!(
        c.chunks.len() > 3,
        "arguments in several pieces: {:?}",
        c.chunks
    );
    assert_eq!(
        streamed_arguments(&c.chunks, 0),
        calls[0]["function"]["arguments"].as_str().unwrap()
    );
    // The router saw the tools and the rules as the client gave them.
    let body = cloud
        .router
        .last_body()
        .expect("the router got the request");
    assert_eq!(body["tools"], json!([clock, weather]));
    assert_eq!(body["tool_choice"], choice);
    assert_eq!(body["parallel_tool_calls"], false);
    assert_eq!(body.get("response_format"), None);

    // `response_format` goes as given too (no tools: the router answers with text).
    let format = json!({"type": "json_schema", "json_schema": {"name": "weather",
        "schema": {"type": "object", "properties": {"t": {"type": "number"}}}, "strict": true}});
    cloud.router.script([fr::respond("together")]);
    let t = ask(
        &conn,
        &serve,
        &json!({"id": "format-cloud", "prompt": "Weather as JSON", "route": "cloud",
                "response_format": format, "max_tokens": 16}),
    );
    assert_eq!(t.fin["text"], fr::RESPOND_TEXT.concat(), "{}", t.fin);
    assert_eq!(t.fin["finish_reason"], "stop", "{}", t.fin);
    assert_eq!(t.fin.get("tool_calls"), None, "{}", t.fin);
    let body = cloud.router.last_body().unwrap();
    assert_eq!(body["response_format"], format);
    assert_eq!(body.get("tools"), None);
    assert_eq!(body.get("tool_choice"), None);

    // The same request answered here: the same shape of call, chunks and final.
    let l = ask(&conn, &serve, &request("tools-local", "local"));
    assert_eq!(l.fin["route"], "local", "{}", l.fin);
    let local_calls = l.fin["tool_calls"].as_array().expect("a local call");
    assert_eq!(local_calls[0]["function"]["name"], "get_weather");
    assert_eq!(shape(&l.fin["tool_calls"]), shape(&c.fin["tool_calls"]));
    assert_eq!(chunk_shapes(&l.chunks), chunk_shapes(&c.chunks));
    assert_eq!(
        streamed_arguments(&l.chunks, 0),
        local_calls[0]["function"]["arguments"].as_str().unwrap()
    );
    for key in [
        "id",
        "done",
        "text",
        "finish_reason",
        "usage",
        "route",
        "reason",
        "tool_calls",
    ] {
        assert!(
            l.fin.get(key).is_some() && c.fin.get(key).is_some(),
            "{key}: {} / {}",
            l.fin,
            c.fin
        );
    }
    // The tiny model may run out of tokens inside the arguments; a finished call says
    // tool_calls, as the cloud's.
    assert!(
        matches!(
            l.fin["finish_reason"].as_str(),
            Some("tool_calls" | "length")
        ),
        "{}",
        l.fin
    );

    let log = serve.log_text();
    assert!(!log.contains(TOKEN), "the token is in the daemon's log");
    assert_eq!(cloud.router.count(), 2, "the local request never left");
}
