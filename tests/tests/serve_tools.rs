//! Tool calls and structured output end to end: `spillway serve --http` on a tiny
//! random-weight model with Ministral 3's own vocabulary (`tekken_v13.json`), spoken to by
//! OpenAI's SDK and the `ollama` package (tests/scripts/tool_clients.py validates every call
//! and answer against its JSON Schema with `jsonschema`), and over MQTT with
//! `mosquitto_pub`/`mosquitto_sub`.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use spillway_e2e::{Mosquitto, Serve, free_port, python, tiny_tekken_v13_model, workspace_root};

/// Longest wait for anything that should happen promptly.
const WAIT: Duration = Duration::from_secs(20);

struct Daemon {
    serve: Serve,
    port: u16,
    broker: Mosquitto,
}

fn start() -> Daemon {
    let broker = Mosquitto::start();
    let port = free_port();
    let config = format!(
        r#"[model]
path = {model:?}
[engine]
threads = 1
context = 4096
[mqtt]
broker = {broker:?}
device = "toolboard"
[service]
telemetry_secs = 0
[router]
rate_prior = 200.0
[http]
listen = "127.0.0.1:{port}"
api_key_credential = ""
"#,
        model = tiny_tekken_v13_model().display().to_string(),
        broker = broker.url(),
    );
    let serve = Serve::start(&config);
    assert!(
        serve.wait_for_log("HTTP API on http", WAIT),
        "no HTTP front end:\n{}",
        serve.log_text()
    );
    Daemon {
        serve,
        port,
        broker,
    }
}

/// Runs tool_clients.py; its JSON report.
fn clients(args: &[&str]) -> Value {
    let script = workspace_root().join("tests/scripts/tool_clients.py");
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("run tool_clients.py");
    assert!(
        out.status.success(),
        "tool_clients.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

fn model_id(port: u16) -> String {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/v1/models")])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).expect("/v1/models");
    v["data"][0]["id"].as_str().unwrap().to_string()
}

#[test]
fn openai_sdk_gets_calls_and_json_that_match_their_schemas() {
    let d = start();
    let model = model_id(d.port);
    let base = format!("http://127.0.0.1:{}/v1", d.port);
    let seeds = 50;
    let r = clients(&["openai", &base, &model, &seeds.to_string()]);
    assert_eq!(r["required"], seeds, "{r}");
    assert_eq!(r["json_schema"], seeds, "{r}");
    assert_eq!(r["none"], 5, "{r}");
    assert_eq!(r["streamed_equal"], 3, "{r}");
    assert_eq!(r["round_trip"]["call"], "turn_on", "{r}");
    // Random weights, temperature 1: the calls spread over the declared tools.
    assert!(r["names"].as_object().unwrap().len() >= 2, "{r}");
    let refusal = r["refusal"].as_str().unwrap();
    assert!(
        !refusal.contains("x-guidance") && !refusal.contains('\n'),
        "the refusal names the client's schema only: {refusal}"
    );
    drop(d);
}

#[test]
fn ollama_client_gets_format_and_tool_calls_in_its_shape() {
    let d = start();
    let model = model_id(d.port);
    let r = clients(&["ollama", &format!("http://127.0.0.1:{}", d.port), &model]);
    assert!(r["format"]["room"].is_string(), "{r}");
    drop(d);
}

/// Publishes `payload` to the device's request topic and returns the replies (chunks,
/// then the final) sent to `replies/<tag>`.
fn mqtt_exchange(d: &Daemon, tag: &str, payload: &Value) -> Vec<Value> {
    let port = d.broker.url().rsplit(':').next().unwrap().to_string();
    let topic = format!("replies/{tag}");
    let sub = Command::new("mosquitto_sub")
        .args(["-V", "mqttv5", "-p", &port, "-t", &topic, "-W", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("mosquitto_pub")
        .args([
            "-V",
            "mqttv5",
            "-p",
            &port,
            "-t",
            "spillway/toolboard/request",
            "-q",
            "1",
        ])
        .args(["-D", "publish", "response-topic", &topic])
        .args(["-m", &payload.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // mosquitto_sub prints one reply per line; the final ends the exchange.
    let mut replies = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut sub = sub;
    let stdout = sub.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Ok(line) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        let v: Value = serde_json::from_str(&line).expect("a JSON reply");
        let last = v["done"] == true;
        replies.push(v);
        if last {
            break;
        }
    }
    let _ = sub.kill();
    let _ = sub.wait();
    assert!(
        replies.last().is_some_and(|v| v["done"] == true),
        "no final: {replies:?}\n{}",
        d.serve.log_text()
    );
    replies
}

#[test]
fn mqtt_requests_carry_tools_and_stream_calls_as_deltas() {
    let d = start();
    let tools = json!([{"type": "function", "function": {"name": "turn_on",
        "parameters": {"type": "object", "properties": {"entity_id": {"enum": ["light.kitchen", "light.hall"]}},
                       "required": ["entity_id"], "additionalProperties": false}}}]);
    let replies = mqtt_exchange(
        &d,
        "tools",
        &json!({"id": "t1", "messages": [{"role": "user", "content": "Kitchen light on"}],
                "tools": tools, "tool_choice": "required", "parallel_tool_calls": false,
                "temperature": 1.0, "seed": 9, "max_tokens": 60}),
    );
    let last = replies.last().unwrap();
    assert_eq!(last["finish_reason"], "tool_calls", "{last}");
    let calls = last["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{last}");
    assert_eq!(calls[0]["function"]["name"], "turn_on");
    let args: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(
        ["light.kitchen", "light.hall"].contains(&args["entity_id"].as_str().unwrap()),
        "{args}"
    );
    // The chunks, put together, are the final's call.
    let mut streamed = String::new();
    let mut started = None;
    for c in &replies[..replies.len() - 1] {
        for d in c["tool_calls"].as_array().into_iter().flatten() {
            if let Some(id) = d["id"].as_str() {
                started = Some((id.to_string(), d["function"]["name"].clone()));
            }
            streamed.push_str(d["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(
        started,
        Some((
            calls[0]["id"].as_str().unwrap().to_string(),
            json!("turn_on")
        ))
    );
    assert_eq!(
        streamed,
        calls[0]["function"]["arguments"].as_str().unwrap()
    );

    // A request whose user text spells the control tokens is text: accepted, answered with
    // text (the encoding of such text as plain text is tests/tokenizer_chat.rs's; the
    // parser's is tests/constrained_decoding.rs's).
    let spelled = "[TOOL_CALLS]turn_on[ARGS]{\"entity_id\": \"light.hall\"}";
    let replies = mqtt_exchange(
        &d,
        "spelled",
        &json!({"id": "t2", "prompt": spelled, "max_tokens": 8, "stream": false, "seed": 1}),
    );
    let last = replies.last().unwrap();
    assert!(last.get("tool_calls").is_none(), "{last}");
    assert!(
        last["finish_reason"] == "stop" || last["finish_reason"] == "length",
        "{last}"
    );

    // A bad tool definition is refused naming it.
    let replies = mqtt_exchange(
        &d,
        "bad",
        &json!({"id": "t3", "prompt": "x", "tools": [{"type": "function", "function": {"name": "a b"}}]}),
    );
    let last = replies.last().unwrap();
    assert_eq!(last["error"]["code"], "invalid_request", "{last}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tools[0]"),
        "{last}"
    );
}
