//! The HTTP API end to end: `spillway serve --http` with a real mosquitto, spoken to by
//! real clients — OpenAI's Python SDK and the `ollama` package (tests/scripts/
//! http_clients.py, run with `$SPILLWAY_PYTHON`), raw HTTP/1.1 for SSE framing and for
//! what SDKs hide (statuses, `Retry-After`, disconnects), `mosquitto_pub` for the MQTT side
//! of a shared idempotency key — and a fake cloud router for a spilled request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spillway_e2e::cloud_rig::CloudRig;
use spillway_e2e::fake_router as fr;
use spillway_e2e::pki::TestPki;
use spillway_e2e::{
    Mosquitto, Serve, TempDir, free_port, python, tiny_tekken_model, workspace_root,
};

const KEY: &str = "sk-spillway-e2e-7c2b9f";
/// Longest wait for anything that should happen promptly.
const WAIT: Duration = Duration::from_secs(20);

/// A daemon with the HTTP front end on a free loopback port.
struct Daemon {
    serve: Serve,
    port: u16,
    _broker: Mosquitto,
    _dir: TempDir,
}

/// Options of a test daemon.
#[derive(Default)]
struct Opts<'a> {
    /// Require this API key (written to a 0600 file).
    key: bool,
    /// Extra TOML for `[service]`.
    service: &'a str,
    /// Extra TOML for `[http]`.
    http: &'a str,
    /// Extra TOML for `[router]`.
    router: &'a str,
    /// Extra TOML for `[engine]`.
    engine: &'a str,
    /// A cloud router to spill to (and the fake board the rig comes with).
    cloud: Option<&'a CloudRig>,
    /// Serve HTTPS with this PKI's server certificate.
    tls: Option<&'a TestPki>,
}

fn start(o: Opts<'_>) -> Daemon {
    let broker = Mosquitto::start();
    let dir = TempDir::new("http");
    let port = free_port();
    let mut http = format!(
        "listen = \"127.0.0.1:{port}\"\napi_key_credential = \"\"\n{}\n",
        o.http
    );
    if o.key {
        let file = dir.path().join("api-key");
        std::fs::write(&file, format!("{KEY}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        http.push_str(&format!(
            "api_key_file = {:?}\n",
            file.display().to_string()
        ));
    }
    if let Some(pki) = o.tls {
        http.push_str(&format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            pki.path("server.crt").display().to_string(),
            pki.path("server.key").display().to_string()
        ));
    }
    let (cloud, args) = match o.cloud {
        None => (String::new(), Vec::new()),
        Some(rig) => (
            format!(
                "[cloud]\nca_file = {:?}\ntoken_credential = \"\"\ntoken_env = \"\"\nretries = 0\n",
                rig.ca_file.display().to_string()
            ),
            rig.serve_args().to_vec(),
        ),
    };
    let config = format!(
        r#"[model]
path = {model:?}
[engine]
threads = 1
context = 4096
{engine}
[mqtt]
broker = {broker:?}
device = "httpboard"
[service]
telemetry_secs = 0
{service}
[router]
rate_prior = 200.0
{router}
[http]
{http}
{cloud}"#,
        model = tiny_tekken_model().display().to_string(),
        broker = broker.url(),
        service = o.service,
        router = o.router,
        engine = o.engine,
    );
    let serve = Serve::start_with_args(&config, &args);
    assert!(
        serve.wait_for_log("HTTP API on http", WAIT),
        "no HTTP front end:\n{}",
        serve.log_text()
    );
    Daemon {
        serve,
        port,
        _broker: broker,
        _dir: dir,
    }
}

/// A raw HTTP/1.1 exchange: (status, headers lower-cased, body).
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Opens a connection and sends one request (`Connection: close`); reading the reply, or
/// hanging up, is the caller's.
fn send(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    s
}

/// Sends one request and reads the whole reply, de-chunked.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut s = send(port, method, path, headers, body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked")
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// The local model's id, as `GET /v1/models` lists it first.
fn model_id(port: u16, headers: &[(&str, &str)]) -> String {
    let r = http(port, "GET", "/v1/models", headers, "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["data"][0]["id"].as_str().unwrap().to_string()
}

fn chat_body(model: &str, extra: Value) -> String {
    let mut v = json!({"model": model, "messages": [{"role": "user", "content": "Tell me about the kitchen"}]});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

/// Runs tests/scripts/http_clients.py; its JSON output.
fn clients(cmd: &str, base: &str, model: &str, key: Option<&str>) -> Value {
    let mut c = Command::new(python());
    c.arg(workspace_root().join("tests/scripts/http_clients.py"))
        .args([cmd, base, model])
        .current_dir("/");
    if let Some(k) = key {
        c.arg(k);
    }
    let out = c.output().expect("running http_clients.py");
    assert!(
        out.status.success(),
        "http_clients.py {cmd} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from http_clients.py")
}

#[test]
fn openai_sdk_gets_completions_streamed_and_not() {
    let d = start(Opts::default());
    let model = model_id(d.port, &[]);
    let out = clients(
        "openai",
        &format!("http://127.0.0.1:{}/v1", d.port),
        &model,
        None,
    );
    let (plain, stream) = (&out["plain"], &out["stream"]);
    assert_eq!(plain["model"], json!(model));
    assert_eq!(plain["route_header"], "local");
    assert_eq!(plain["spillway"]["route"], "local");
    assert!(
        plain["spillway"]["timings"]["prompt_ms"].is_number(),
        "{plain}"
    );
    assert_eq!(
        (&plain["content"], &plain["completion_tokens"]),
        (&stream["content"], &stream["completion_tokens"]),
        "the same greedy request streamed and not gives the same answer: {out}"
    );
    assert!(stream["chunks"].as_u64().unwrap() >= 3, "{stream}");
    assert_eq!(out["models"], json!([model]));

    // What the requests left in the metrics, as Prometheus scrapes them.
    let m = http(d.port, "GET", "/metrics", &[], "");
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        m.header("content-type")
    );
    let text = String::from_utf8(m.body).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let ok = text
        .lines()
        .find(|l| {
            l.starts_with("spillway_requests_total{")
                && l.contains("route=\"local\"")
                && l.contains("outcome=\"ok\"")
        })
        .unwrap_or_else(|| panic!("no local ok counter in:\n{text}"));
    let n: f64 = ok.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 2.0, "{ok}");
    assert!(
        text.contains("spillway_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[test]
fn every_error_has_openai_status_and_shape() {
    let d = start(Opts {
        key: true,
        // One session slot: the 504 below waits behind a long request.
        engine: "sessions = 1",
        ..Opts::default()
    });
    let auth = format!("Bearer {KEY}");
    let h = [("authorization", auth.as_str())];
    let model = model_id(d.port, &h);
    let seen = clients(
        "openai-errors",
        &format!("http://127.0.0.1:{}/v1", d.port),
        &model,
        Some(KEY),
    );
    let status = |name: &str| seen[name]["status"].as_u64().unwrap_or(0);
    assert_eq!(status("model_not_found"), 404, "{seen}");
    assert_eq!(seen["model_not_found"]["code"], "model_not_found");
    assert_eq!((status("n"), seen["n"]["param"].as_str()), (400, Some("n")));
    assert_eq!(status("tools"), 400, "{seen}");
    assert!(
        seen["tools"]["message"]
            .as_str()
            .unwrap()
            .contains("[ARGS]"),
        "a model without the tool-call tokens says so: {seen}"
    );
    assert_eq!(status("tool_name"), 400, "{seen}");
    assert!(
        seen["tool_name"]["message"]
            .as_str()
            .unwrap()
            .contains("tools[0]"),
        "{seen}"
    );
    assert_eq!(status("max_tokens"), 400);
    assert_eq!(status("too_large"), 413);
    assert_eq!(
        (status("auth"), seen["auth"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );

    // Without a key: 401 with OpenAI's error object; /health needs none.
    let r = http(d.port, "GET", "/v1/models", &[], "");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(http(d.port, "GET", "/health", &[], "").status, 200);
    let r = http(d.port, "POST", "/api/chat", &[], "{}");
    assert_eq!(
        (r.status, r.json()["error"].is_string()),
        (401, true),
        "Ollama's shape"
    );

    // 504: waiting here (behind a long request) cannot meet the deadline, and there is no
    // cloud.
    let port = d.port;
    let long = chat_body(&model, json!({"max_tokens": 3000}));
    let auth_header = auth.clone();
    // Earlier requests were placed too: wait for this one's placement.
    let placed_before = d.serve.log_text().matches("fits locally").count();
    let running = std::thread::spawn(move || {
        http(
            port,
            "POST",
            "/v1/chat/completions",
            &[("authorization", &auth_header)],
            &long,
        )
    });
    let end = Instant::now() + WAIT;
    while d.serve.log_text().matches("fits locally").count() <= placed_before {
        assert!(Instant::now() < end, "{}", d.serve.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = http(
        d.port,
        "POST",
        "/v1/chat/completions",
        &h,
        &chat_body(&model, json!({"max_tokens": 1000, "deadline_ms": 2000})),
    );
    assert_eq!(
        r.status,
        504,
        "{}\n{}",
        String::from_utf8_lossy(&r.body),
        d.serve.log_text()
    );
    // Until a rate is measured the router does not turn requests away on an estimate: the
    // request waits, and is answered when its deadline passes.
    let code = r.json()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        ["expired", "deadline_exceeded"].contains(&code.as_str()),
        "{code}"
    );
    assert_eq!(running.join().unwrap().status, 200);
    // A declared body over the limit: 413 at once, without waiting for the body.
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 99999999999\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("an answer before the body");
    assert_eq!(&head, b"HTTP/1.1 413");
    // Malformed JSON: 400 naming the problem.
    let r = http(d.port, "POST", "/v1/chat/completions", &h, "{\"model\": ");
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a valid request")
    );
    assert!(
        !d.serve.log_text().contains(KEY),
        "the API key is never logged"
    );
}

#[test]
fn a_full_queue_answers_429_and_shutdown_503_with_retry_after() {
    let d = start(Opts {
        service: "queue = 1\nshutdown_deadline_secs = 5",
        // One session slot: one request runs at a time.
        engine: "sessions = 1",
        ..Opts::default()
    });
    let model = model_id(d.port, &[]);
    // A string answer that cannot end before 3000 tokens: the end-of-sequence token is
    // masked, so these hold the engine and the queue for their whole length.
    let long = chat_body(
        &model,
        json!({"max_tokens": 3000, "stream": true, "response_format": {"type": "json_schema",
            "json_schema": {"name": "long", "schema": {"type": "string", "minLength": 20000}}}}),
    );
    // One running, one queued; the rest are refused.
    let port = d.port;
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let body = long.clone();
            std::thread::spawn(move || http(port, "POST", "/v1/chat/completions", &[], &body))
        })
        .collect();
    // Two of the four are refused once the other two hold the engine and the queue.
    let end = Instant::now() + WAIT;
    while d.serve.log_text().matches("refused: busy").count() < 2 {
        assert!(Instant::now() < end, "{}", d.serve.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = http(
        d.port,
        "POST",
        "/v1/chat/completions",
        &[],
        &chat_body(&model, json!({})),
    );
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["code"], "busy");
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok())
    );

    // SIGTERM: while the running requests finish, a new one is told to come back.
    let mut serve = d.serve;
    serve.request_stop();
    assert!(
        serve.wait_for_log("shutting down", WAIT),
        "{}",
        serve.log_text()
    );
    let r = http(
        d.port,
        "POST",
        "/v1/chat/completions",
        &[],
        &chat_body(&model, json!({})),
    );
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["code"], "shutting_down");
    assert!(r.header("retry-after").is_some());
    for t in busy {
        let r = t.join().unwrap();
        // Answered, refused, or (queued when the deadline came) told to come back.
        assert!([200, 429, 503].contains(&r.status), "{}", r.status);
    }
    let status = serve.wait();
    assert!(status.success(), "{status:?}");
}

#[test]
fn ollama_client_chats_generates_lists_and_shows() {
    let d = start(Opts::default());
    let model = model_id(d.port, &[]);
    let out = clients(
        "ollama",
        &format!("http://127.0.0.1:{}", d.port),
        &model,
        None,
    );
    assert_eq!(
        out["chat"]["content"], out["chat_stream"]["content"],
        "{out}"
    );
    assert_eq!(out["chat"]["eval_count"], out["chat_stream"]["eval_count"]);
    assert!(out["chat"]["prompt_eval_count"].as_u64().unwrap() > 0);
    let tagged = format!("{model}:latest");
    assert_eq!(out["tags"], json!([tagged]));
    assert_eq!(out["ps"], json!([tagged]));
    assert_eq!(out["show"]["family"], "mistral3");
    assert_eq!(out["unknown_model"]["status"], 404);
}

#[test]
fn sse_and_ndjson_framing_is_exact() {
    let d = start(Opts::default());
    let model = model_id(d.port, &[]);
    let r = http(
        d.port,
        "POST",
        "/v1/chat/completions",
        &[],
        &chat_body(&model, json!({"stream": true, "max_tokens": 12, "seed": 1})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text:?}");
    let events: Vec<&str> = text.trim_end().split("\n\n").collect();
    for e in &events {
        assert!(e.starts_with("data: ") && !e[6..].contains('\n'), "{e:?}");
    }
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e[6..]).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string(), "{last}");
    assert_eq!(last["spillway"]["route"], "local");
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
    }

    let r = http(
        d.port,
        "POST",
        "/api/generate",
        &[],
        &json!({"model": model, "prompt": "hello", "options": {"num_predict": 6}}).to_string(),
    );
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let text = String::from_utf8(r.body).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(text.ends_with('\n'));
    assert_eq!(lines.last().unwrap()["done"], true);
    assert!(lines[..lines.len() - 1].iter().all(|l| l["done"] == false));
    assert_eq!(lines.last().unwrap()["eval_count"], 6);
}

#[test]
fn a_spilled_request_has_the_same_shape_as_a_local_one() {
    let rig_dir = TempDir::new("rig");
    let rig = CloudRig::start(&rig_dir, "hf_HttpE2eToken_93f1");
    let router = &rig.router;
    let d = start(Opts {
        cloud: Some(&rig),
        ..Opts::default()
    });
    let model = model_id(d.port, &[]);
    let local = http(
        d.port,
        "POST",
        "/v1/chat/completions",
        &[],
        &chat_body(&model, json!({"max_tokens": 5, "route": "local"})),
    );
    router.script([fr::ok_stream(
        "fake-provider",
        &["Hello", " from", " the cloud"],
    )]);
    let cloud = http(
        d.port,
        "POST",
        "/v1/chat/completions",
        &[],
        &chat_body(&model, json!({"max_tokens": 5, "route": "cloud"})),
    );
    assert_eq!(
        (local.status, cloud.status),
        (200, 200),
        "{}",
        String::from_utf8_lossy(&cloud.body)
    );
    assert_eq!(cloud.header("x-spillway-route"), Some("cloud-https"));
    let (l, c) = (local.json(), cloud.json());
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&l), keys(&c), "top-level fields");
    assert_eq!(keys(&l["choices"][0]), keys(&c["choices"][0]));
    assert_eq!(keys(&l["usage"]), keys(&c["usage"]));
    assert_eq!(
        c["choices"][0]["message"]["content"],
        "Hello from the cloud"
    );
    assert_eq!(c["spillway"]["route"], "cloud-https");
    assert_eq!(c["spillway"]["provider"], "fake-provider");
    assert_eq!(c["object"], "chat.completion");
}

#[test]
fn a_client_that_disconnects_frees_the_engine() {
    let d = start(Opts::default());
    let model = model_id(d.port, &[]);
    let body = chat_body(&model, json!({"max_tokens": 900, "stream": true}));
    let mut s = send(d.port, "POST", "/v1/chat/completions", &[], &body);
    // Wait for the stream to start, then hang up.
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("chat.completion.chunk") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early");
        got.extend_from_slice(&buf[..n]);
    }
    drop(s);
    let hung_up = Instant::now();
    assert!(
        d.serve.wait_for_log("cancelled", WAIT),
        "{}",
        d.serve.log_text()
    );
    // The engine is free: a short request starts at once, not after 900 tokens.
    let r = http(
        d.port,
        "POST",
        "/v1/chat/completions",
        &[],
        &chat_body(&model, json!({"max_tokens": 2})),
    );
    assert_eq!(r.status, 200);
    let queue_ms = r.json()["spillway"]["timings"]["queue_ms"]
        .as_f64()
        .unwrap();
    assert!(queue_ms < 2000.0, "waited {queue_ms} ms for the engine");
    assert!(hung_up.elapsed() < WAIT);
}

#[test]
fn http_and_mqtt_senders_of_one_idempotency_key_get_one_run() {
    let d = start(Opts::default());
    let model = model_id(d.port, &[]);
    let broker_port = d._broker.url().rsplit(':').next().unwrap().to_string();
    let key = format!("idem-{}", std::process::id());
    // The MQTT sender first, with the key as an MQTT 5 user property.
    let sub = Command::new("mosquitto_sub")
        .args([
            "-V",
            "mqttv5",
            "-p",
            &broker_port,
            "-t",
            "replies/idem",
            "-C",
            "1",
            "-W",
            "60",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let payload = json!({"id": "mqtt-1", "prompt": "Tell me about the kitchen", "max_tokens": 40,
        "stream": false, "seed": 5});
    let status = Command::new("mosquitto_pub")
        .args([
            "-V",
            "mqttv5",
            "-p",
            &broker_port,
            "-t",
            "spillway/httpboard/request",
            "-q",
            "1",
        ])
        .args(["-D", "publish", "response-topic", "replies/idem"])
        .args(["-D", "publish", "user-property", "idempotency-key", &key])
        .args(["-m", &payload.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    // The HTTP sender of the same key, while the first runs: attached, same final.
    let h = [("idempotency-key", key.as_str())];
    let body = chat_body(&model, json!({"max_tokens": 40, "seed": 5}));
    let r = http(d.port, "POST", "/v1/chat/completions", &h, &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let out = sub.wait_with_output().unwrap();
    let mqtt: Value = serde_json::from_slice(&out.stdout).expect("the MQTT final");
    let http_final = r.json();
    assert_eq!(mqtt["id"], "mqtt-1", "the MQTT reply carries its own id");
    assert_eq!(
        http_final["choices"][0]["message"]["content"], mqtt["text"],
        "both senders get the one answer"
    );
    // Sent again after the answer: the final is replayed, not run again.
    let again = http(d.port, "POST", "/v1/chat/completions", &h, &body).json();
    assert_eq!(again["spillway"]["replayed"], true, "{again}");
    assert_eq!(again["choices"][0]["message"]["content"], mqtt["text"]);
    let runs = d
        .serve
        .log_text()
        .lines()
        .filter(|l| l.contains("finished") && l.contains(&key))
        .count();
    assert_eq!(runs, 1, "one run for the key:\n{}", d.serve.log_text());
}

#[test]
fn two_hundred_connections_get_answers_or_retry_after() {
    let d = start(Opts {
        service: "queue = 2",
        http: "max_connections = 24",
        ..Opts::default()
    });
    let model = model_id(d.port, &[]);
    let rss = |pid: &str| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let pid = d.serve.pid().to_string();
    let before = rss(&pid);
    let started = Instant::now();
    let body = chat_body(&model, json!({"max_tokens": 3}));
    let port = d.port;
    let threads: Vec<_> = (0..200)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || http(port, "POST", "/v1/chat/completions", &[], &body))
        })
        .collect();
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for t in threads {
        let r = t.join().expect("a client thread");
        *by_status.entry(r.status).or_default() += 1;
        if r.status != 200 {
            assert!(
                r.header("retry-after").is_some(),
                "{} without Retry-After",
                r.status
            );
        }
    }
    let after = rss(&pid);
    assert!(
        by_status.keys().all(|s| [200, 429, 503].contains(s)),
        "{by_status:?}"
    );
    assert!(
        by_status.get(&200).is_some_and(|&n| n >= 3),
        "{by_status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(180),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} kB to {after} kB"
    );
    // Still serving.
    assert_eq!(http(d.port, "GET", "/health", &[], "").status, 200);
}

#[test]
fn https_serves_clients_that_trust_its_certificate() {
    let pki = TestPki::new();
    let d = start(Opts {
        tls: Some(&pki),
        ..Opts::default()
    });
    assert!(d.serve.log_text().contains("HTTP API on https://"));
    // The certificate names `localhost`.
    let base = format!("https://localhost:{}/v1", d.port);
    let out = clients(
        "https",
        &base,
        "-",
        Some(pki.path("ca.crt").to_str().unwrap()),
    );
    assert!(out["finish_reason"].is_string(), "{out}");
}

#[test]
fn a_non_loopback_address_without_a_key_is_refused_at_start() {
    let broker = Mosquitto::start();
    let config = format!(
        "[model]\npath = {:?}\n[mqtt]\nbroker = {:?}\ndevice = \"open\"\n[http]\nlisten = \"0.0.0.0:{}\"\napi_key_credential = \"\"\n",
        tiny_tekken_model().display().to_string(),
        broker.url(),
        free_port()
    );
    let mut serve = Serve::start(&config);
    let status = serve.wait();
    assert!(!status.success());
    let log = serve.log_text();
    assert!(
        log.contains("0.0.0.0")
            && log.contains("not a loopback address")
            && log.contains("api_key_file"),
        "{log}"
    );
}

#[test]
fn a_client_that_disconnects_stops_its_cloud_request() {
    let rig_dir = TempDir::new("rig");
    let rig = CloudRig::start(&rig_dir, "hf_HttpE2eToken_93f1");
    let router = &rig.router;
    let d = start(Opts {
        cloud: Some(&rig),
        ..Opts::default()
    });
    let model = model_id(d.port, &[]);
    router.script([fr::stream(
        "slow-provider",
        vec![
            fr::role(),
            fr::Part::Sleep(Duration::from_secs(8)),
            fr::delta("too late"),
            fr::finish("stop"),
            fr::done(),
        ],
    )]);
    let body = chat_body(&model, json!({"max_tokens": 5, "route": "cloud"}));
    let s = send(d.port, "POST", "/v1/chat/completions", &[], &body);
    assert!(
        d.serve.wait_for_log("route=\"cloud-https\"", WAIT),
        "{}",
        d.serve.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    let hung_up = Instant::now();
    drop(s);
    assert!(
        d.serve.wait_for_log("cancelled", WAIT),
        "{}",
        d.serve.log_text()
    );
    assert!(
        hung_up.elapsed() < Duration::from_secs(6),
        "the cloud request ran on for {:?} after the client left",
        hung_up.elapsed()
    );
}

/// Continuous batching through the service: requests sent at once run together (the
/// `running` gauge reaches the slot count) and each answer is the one the same request gets
/// alone afterwards, token for token (same seed).
#[test]
fn requests_run_together_and_each_answer_equals_its_run_alone() {
    let d = start(Opts {
        engine: "sessions = 3",
        ..Opts::default()
    });
    let model = model_id(d.port, &[]);
    let body = |i: u64| {
        json!({"model": model, "max_tokens": 120, "temperature": 0.9, "seed": 100 + i,
               "messages": [{"role": "user", "content": format!("Story number {i}, please")}]})
        .to_string()
    };
    let port = d.port;
    let together: Vec<_> = (0..3)
        .map(|i| {
            let b = body(i);
            std::thread::spawn(move || http(port, "POST", "/v1/chat/completions", &[], &b))
        })
        .collect();
    let mut most = 0;
    while !together.iter().all(|t| t.is_finished()) {
        let m = http(d.port, "GET", "/metrics", &[], "");
        let text = String::from_utf8_lossy(&m.body).to_string();
        if let Some(n) = text
            .lines()
            .find(|l| l.starts_with("spillway_running "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
        {
            most = most.max(n);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let answers: Vec<Value> = together
        .into_iter()
        .map(|t| {
            let r = t.join().unwrap();
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.json()
        })
        .collect();
    assert_eq!(most, 3, "the three ran at once");
    for (i, together) in answers.iter().enumerate() {
        let alone = http(d.port, "POST", "/v1/chat/completions", &[], &body(i as u64)).json();
        assert_eq!(
            together["choices"][0]["message"], alone["choices"][0]["message"],
            "request {i}: batched vs alone"
        );
        for n in ["prompt_tokens", "completion_tokens"] {
            assert_eq!(together["usage"][n], alone["usage"][n], "request {i}: {n}");
        }
        assert!(
            together["usage"]["completion_tokens"].as_u64().unwrap() > 20,
            "{together}"
        );
    }
}
