//! The cloud forwarder against a fake router ([`spillway_e2e::fake_router`]): a local HTTPS
//! server (hyper over rustls, with a CA made at test time by the `openssl` command line
//! tool) that speaks the Hugging Face router's protocol — `POST /v1/chat/completions`,
//! `text/event-stream` answers chunked as OpenAI `chat.completion.chunk` objects, the usage
//! chunk, `[DONE]`, the `x-inference-provider` header — and plays a script of replies per
//! model: streams that stall, break or report errors, 429 with and without `Retry-After`,
//! 503, 402, 401.
//!
//! The server records every request, so each test checks how many attempts were made, what
//! was sent (body fields, `Authorization`), and that no answer text was ever duplicated.
//! Every test also captures the client's logs and checks that the token never appears in
//! them or in any error. Timeouts are short, so each test takes well under a few seconds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use spillway::cloud::{
    ApiToken, CloudClient, CloudConfig, CloudError, CloudErrorKind, CloudMessage, CloudOutcome,
    CloudRequest, EndpointConfig, TimeoutPhase, Usage,
};
use spillway::tokenizer::ReplyPiece;
use spillway_e2e::TempDir;
use spillway_e2e::fake_router::{
    Echo, FakeRouter, Gate, Part, RESPOND_CALL_ID, Reply, bare_stream, chunk_json, delta, done,
    echo, finish, json_escaped, ok_stream, percent_encoded, respond, role, status, stream,
    stream_error, usage,
};
use tokio::net::TcpListener;
use tokio::time::Instant;

const TOKEN: &str = "hf_TestSecretToken_8c1f0d2e9a7b4c55";
const MODEL: &str = "mistralai/Ministral-3-3B-Instruct-2512:fastest";

// ---------------------------------------------------------------------------------------
// Client side

/// Captures everything the client logs in this test, in a file (the subscriber is per
/// thread, and `#[tokio::test]` runs the client on the test's thread).
struct Logs {
    dir: TempDir,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    fn capture() -> Logs {
        let dir = TempDir::new("cloud-logs");
        let file = std::fs::File::create(dir.path().join("client.log")).unwrap();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(Arc::new(file))
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        Logs {
            dir,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn text(&self) -> String {
        let bytes = std::fs::read(self.dir.path().join("client.log")).unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The token must appear nowhere: not in the logs, not in any error text.
    fn assert_no_token(&self, errors: &[&CloudError]) {
        let logs = self.text();
        assert!(!logs.contains(TOKEN), "token in the logs:\n{logs}");
        for e in errors {
            for s in [format!("{e}"), format!("{e:?}"), format!("{e:#?}")] {
                assert!(!s.contains(TOKEN), "token in an error: {s}");
            }
        }
    }
}

struct Setup {
    dir: TempDir,
    config: CloudConfig,
}

/// A configuration with short timeouts and quick backoff, trusting the test CA.
fn setup(endpoints: &[(&str, &str)]) -> Setup {
    let dir = TempDir::new("cloud");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &spillway_e2e::pki::shared().ca).unwrap();
    let config = CloudConfig {
        endpoints: endpoints
            .iter()
            .map(|(b, m)| EndpointConfig {
                base_url: b.to_string(),
                model: m.to_string(),
            })
            .collect(),
        ca_file,
        connect_timeout_ms: 500,
        first_token_timeout_ms: 1500,
        idle_timeout_ms: 400,
        retries: 2,
        backoff_initial_ms: 20,
        backoff_max_ms: 200,
        retry_after_max_secs: 5,
        failures_to_cool: 3,
        failure_window_secs: 60,
        cooldown_secs: 60,
        auth_cooldown_secs: 600,
        credits_cooldown_secs: 3600,
        max_line_bytes: 4096,
        max_event_bytes: 16384,
        max_body_bytes: 1 << 20,
        ..CloudConfig::default()
    };
    Setup { dir, config }
}

impl Setup {
    fn client(&self) -> CloudClient {
        CloudClient::new(self.config.clone(), Some(token())).unwrap()
    }
}

fn token() -> ApiToken {
    ApiToken::from_string(TOKEN.to_string()).unwrap()
}

fn request() -> CloudRequest {
    CloudRequest {
        messages: vec![
            CloudMessage::new("system", "Be brief."),
            CloudMessage::new("user", "Say hello"),
        ],
        max_tokens: Some(32),
        temperature: Some(0.25),
        top_p: Some(0.5),
        seed: Some(42),
        stop: vec!["\n\n".into()],
        ..CloudRequest::default()
    }
}

/// Runs a request, collecting the deltas as they are handed over.
async fn run(client: &CloudClient) -> (Result<CloudOutcome, CloudError>, Vec<String>) {
    let mut deltas = Vec::new();
    let r = client
        .complete(&request(), |p| {
            if let ReplyPiece::Content(d) = p {
                deltas.push(d.to_string());
            }
        })
        .await;
    (r, deltas)
}

/// The usual start of a test: the logs captured, a fake HTTPS router playing `replies` for
/// [`MODEL`], and a configuration with that one endpoint.
fn one_router(replies: Vec<Reply>) -> (Logs, FakeRouter, Setup) {
    let logs = Logs::capture();
    let router = FakeRouter::start();
    let s = setup(&[(router.base_url(), MODEL)]);
    router.script_model(MODEL, replies);
    (logs, router, s)
}

fn assert_send<T: Send>(_: &T) {}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn a_stream_is_forwarded_delta_by_delta_as_it_arrives() {
    // The server holds the rest of the answer back until the client has handed the first
    // delta to the caller: a client that buffered the body would stall here and time out.
    let gate = Gate::new();
    let (logs, router, s) = one_router(vec![stream(
        "novita",
        vec![
            role(),
            delta("Hel"),
            Part::Wait(gate.clone()),
            delta("lo"),
            delta(", world"),
            finish("stop"),
            usage(12, 3),
            done(),
        ],
    )]);
    let client = s.client();
    let req = request();
    let mut deltas: Vec<String> = Vec::new();
    let fut = client.complete(&req, |p| {
        let ReplyPiece::Content(d) = p else {
            panic!("only text: {p:?}");
        };
        if deltas.is_empty() {
            gate.open();
        }
        deltas.push(d.to_string());
    });
    // The future can be spawned on a multi-threaded runtime.
    assert_send(&fut);
    let out = fut.await.unwrap();

    assert_eq!(deltas, ["Hel", "lo", ", world"]);
    assert_eq!(out.reply.content, "Hello, world");
    assert_eq!(out.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        out.usage,
        Some(Usage {
            prompt_tokens: 12,
            completion_tokens: 3
        })
    );
    assert_eq!(out.provider.as_deref(), Some("novita"));
    assert_eq!(out.endpoint.base_url, router.base_url());
    assert_eq!(out.endpoint.model, MODEL);
    assert_eq!(out.attempts, 1);

    let reqs = router.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.headers["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["accept"], "text/event-stream");
    assert!(r.headers["host"].starts_with("127.0.0.1:"));
    assert_eq!(
        r.body,
        json!({
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say hello"},
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": 32, "temperature": 0.25, "top_p": 0.5, "seed": 42,
            "stop": ["\n\n"],
        })
    );
    assert!(client.is_available());
    logs.assert_no_token(&[]);
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_after_that_delay() {
    let (logs, router, s) = one_router(vec![
        status(
            429,
            &[("retry-after", "1")],
            r#"{"error":"Rate limit reached"}"#,
        ),
        ok_stream("together", &["Hi", "!"]),
    ]);
    let client = s.client();
    let (r, deltas) = run(&client).await;
    let out = r.unwrap();
    assert_eq!(out.reply.content, "Hi!");
    assert_eq!(deltas, ["Hi", "!"]);
    assert_eq!(out.attempts, 2);
    assert_eq!(out.provider.as_deref(), Some("together"));
    let reqs = router.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(1000) && gap < Duration::from_millis(2500),
        "waited {gap:?} for Retry-After: 1"
    );
    assert!(
        logs.text().contains("HTTP 429: Rate limit reached"),
        "{}",
        logs.text()
    );
    logs.assert_no_token(&[]);
}

#[tokio::test]
async fn a_429_without_retry_after_backs_off_exponentially() {
    let (logs, router, mut s) = one_router(vec![
        status(429, &[], r#"{"error":{"message":"Too many requests"}}"#),
        status(429, &[], ""),
        ok_stream("groq", &["ok"]),
    ]);
    s.config.backoff_initial_ms = 100;
    s.config.backoff_max_ms = 1000;
    let (r, deltas) = run(&s.client()).await;
    let out = r.unwrap();
    assert_eq!((out.reply.content.as_str(), out.attempts), ("ok", 3));
    assert_eq!(deltas, ["ok"]);
    let reqs = router.requests();
    assert_eq!(reqs.len(), 3);
    // Equal jitter: the first wait is 50-100 ms, the second 100-200 ms.
    let (g1, g2) = (reqs[1].at - reqs[0].at, reqs[2].at - reqs[1].at);
    assert!(
        g1 >= Duration::from_millis(50) && g1 < Duration::from_millis(1000),
        "{g1:?}"
    );
    assert!(
        g2 >= Duration::from_millis(100) && g2 < Duration::from_millis(1500),
        "{g2:?}"
    );
    logs.assert_no_token(&[]);
}

#[tokio::test]
async fn a_503_is_retried_and_the_retry_serves() {
    let (logs, router, s) = one_router(vec![
        status(503, &[], "<html>Service Temporarily Unavailable</html>"),
        ok_stream("hf-inference", &["A", "B"]),
    ]);
    let (r, deltas) = run(&s.client()).await;
    let out = r.unwrap();
    assert_eq!((out.reply.content.as_str(), out.attempts), ("AB", 2));
    assert_eq!(deltas, ["A", "B"]);
    assert_eq!(router.requests().len(), 2);
    logs.assert_no_token(&[]);
}

#[tokio::test]
async fn retries_are_bounded_and_the_error_says_how_many_were_made() {
    let (logs, router, mut s) =
        one_router((0..5).map(|_| status(502, &[], "bad gateway")).collect());
    s.config.failures_to_cool = 10;
    let (r, deltas) = run(&s.client()).await;
    let err = r.unwrap_err();
    assert!(deltas.is_empty());
    assert_eq!(err.attempts, 3, "{err}");
    assert!(!err.partial);
    assert_eq!(err.code().as_str(), "cloud_unavailable");
    assert!(
        matches!(err.kind, CloudErrorKind::Http { status: 502, .. }),
        "{err:?}"
    );
    assert!(err.to_string().ends_with("(after 3 attempts)"), "{err}");
    assert_eq!(router.requests().len(), 3);
    logs.assert_no_token(&[&err]);
}

#[tokio::test]
async fn a_402_opens_the_circuit_without_retrying() {
    let (logs, router, s) = one_router(vec![
        status(
            402,
            &[],
            r#"{"error":"You have exceeded your monthly included credits for Inference Providers."}"#,
        ),
        ok_stream("never", &["x"]),
    ]);
    let client = s.client();
    let (r, _) = run(&client).await;
    let err = r.unwrap_err();
    assert_eq!(err.code().as_str(), "cloud_unavailable");
    assert!(
        matches!(err.kind, CloudErrorKind::Credits { .. }),
        "{err:?}"
    );
    assert_eq!(err.attempts, 1);
    assert!(
        err.to_string()
            .contains("exceeded your monthly included credits"),
        "{err}"
    );
    assert_eq!(router.requests().len(), 1);

    assert!(!client.is_available());
    let why = client.availability().unwrap_err();
    assert!(why.contains("circuit open"), "{why}");
    assert!(why.contains("credits exhausted (HTTP 402)"), "{why}");
    assert!(why.contains(router.base_url()), "{why}");

    // While the circuit is open nothing is sent.
    let (r2, _) = run(&client).await;
    let err2 = r2.unwrap_err();
    assert!(
        matches!(err2.kind, CloudErrorKind::Unavailable { .. }),
        "{err2:?}"
    );
    assert_eq!(
        (err2.code().as_str(), err2.attempts),
        ("cloud_unavailable", 0)
    );
    assert_eq!(router.requests().len(), 1);
    logs.assert_no_token(&[&err, &err2]);
}

#[tokio::test]
async fn a_401_opens_the_circuit_for_that_router_only_and_the_token_stays_secret() {
    let logs = Logs::capture();
    let hf = FakeRouter::start();
    let lan = FakeRouter::start();
    let s = setup(&[
        (hf.base_url(), MODEL),
        (hf.base_url(), "other/model:cheapest"),
        (lan.base_url(), "ministral"),
    ]);
    // A server that quotes the refused credentials back must not get them into our logs.
    let echo =
        format!(r#"{{"error":"Invalid credentials in Authorization header: Bearer {TOKEN}"}}"#);
    hf.script_model(MODEL, vec![status(401, &[], &echo)]);
    lan.script_model(
        "ministral",
        vec![ok_stream("llama.cpp", &["from", " the", " LAN"])],
    );
    let client = s.client();
    let (r, deltas) = run(&client).await;
    let out = r.unwrap();
    assert_eq!(out.reply.content, "from the LAN");
    assert_eq!(deltas.concat(), "from the LAN");
    assert_eq!(out.endpoint.base_url, lan.base_url());
    assert_eq!(out.attempts, 2);
    // One refusal, no retry, and the second model on the same router was not tried.
    assert_eq!(hf.requests().len(), 1);
    assert_eq!(hf.count_model("other/model:cheapest"), 0);

    let health = client.endpoint_status();
    assert!(
        health[0]
            .blocked
            .as_deref()
            .unwrap()
            .contains("API token refused (HTTP 401)")
    );
    assert!(
        health[1]
            .blocked
            .as_deref()
            .unwrap()
            .contains("circuit open")
    );
    assert_eq!(health[2].blocked, None);
    assert!(client.is_available());
    for st in &health {
        assert!(!format!("{st:?}").contains(TOKEN));
    }
    let logs_text = logs.text();
    assert!(logs_text.contains("[redacted]"), "{logs_text}");
    logs.assert_no_token(&[]);

    // With only the router configured, the same refusal is the request's error.
    let s2 = setup(&[(hf.base_url(), MODEL)]);
    hf.script_model(MODEL, vec![status(403, &[], &echo)]);
    let client2 = s2.client();
    let (r, _) = run(&client2).await;
    let err = r.unwrap_err();
    assert!(
        matches!(err.kind, CloudErrorKind::Auth { status: 403, .. }),
        "{err:?}"
    );
    assert_eq!(err.code().as_str(), "cloud_unavailable");
    assert!(err.to_string().contains("[redacted]"), "{err}");
    let why = client2.availability().unwrap_err();
    assert!(!why.contains(TOKEN), "{why}");
    assert!(why.contains("HTTP 403"), "{why}");
    assert_eq!(hf.requests().len(), 2);
    logs.assert_no_token(&[&err]);
}

#[tokio::test]
async fn a_stall_after_text_times_out_and_is_not_retried() {
    let (logs, router, s) = one_router(vec![
        stream(
            "nebius",
            vec![
                role(),
                delta("a"),
                delta("b"),
                Part::Sleep(Duration::from_secs(10)),
            ],
        ),
        // Must not be used: a retry would send "a" and "b" again.
        ok_stream("nebius", &["a", "b", "c"]),
    ]);
    let t0 = Instant::now();
    let (r, deltas) = run(&s.client()).await;
    let err = r.unwrap_err();
    assert_eq!(deltas, ["a", "b"]);
    assert!(
        matches!(
            err.kind,
            CloudErrorKind::Timeout {
                phase: TimeoutPhase::Idle,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code().as_str(), "timeout");
    assert!(err.partial);
    assert_eq!(err.attempts, 1);
    assert_eq!(router.requests().len(), 1);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    logs.assert_no_token(&[&err]);
}

#[tokio::test]
async fn a_stall_before_the_first_token_is_retried() {
    let (logs, _router, mut s) = one_router(vec![
        bare_stream(vec![role(), Part::Sleep(Duration::from_secs(10))]),
        ok_stream("sambanova", &["late", " but", " once"]),
    ]);
    s.config.first_token_timeout_ms = 500;
    let (r, deltas) = run(&s.client()).await;
    let out = r.unwrap();
    assert_eq!(deltas, ["late", " but", " once"]);
    assert_eq!(
        (out.reply.content.as_str(), out.attempts),
        ("late but once", 2)
    );
    assert!(
        logs.text()
            .contains("timed out waiting for the first token"),
        "{}",
        logs.text()
    );
    logs.assert_no_token(&[]);
}

#[tokio::test]
async fn an_error_event_mid_stream_fails_without_retry() {
    let (logs, router, s) = one_router(vec![
        stream(
            "fireworks-ai",
            vec![
                role(),
                delta("par"),
                stream_error("Upstream provider overloaded"),
            ],
        ),
        ok_stream("fireworks-ai", &["never"]),
    ]);
    let (r, deltas) = run(&s.client()).await;
    let err = r.unwrap_err();
    assert_eq!(deltas, ["par"]);
    assert!(err.partial);
    assert_eq!(err.code().as_str(), "cloud_error");
    assert!(matches!(err.kind, CloudErrorKind::Stream { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("Upstream provider overloaded (503)"),
        "{err}"
    );
    assert_eq!(router.requests().len(), 1);
    logs.assert_no_token(&[&err]);
}

#[tokio::test]
async fn an_error_event_before_any_text_is_retried() {
    let (logs, _router, s) = one_router(vec![
        bare_stream(vec![
            role(),
            Part::Bytes(b"event: error\ndata: {\"error\":\"worker restarted\"}\n\n".to_vec()),
        ]),
        ok_stream("cerebras", &["fine"]),
    ]);
    let (r, deltas) = run(&s.client()).await;
    let out = r.unwrap();
    assert_eq!((out.reply.content.as_str(), out.attempts), ("fine", 2));
    assert_eq!(deltas, ["fine"]);
    logs.assert_no_token(&[]);
}

#[tokio::test]
async fn a_failing_endpoint_cools_down_and_the_next_one_serves() {
    let logs = Logs::capture();
    let router = FakeRouter::start();
    let mut s = setup(&[
        (router.base_url(), "model-a"),
        (router.base_url(), "model-b:cheapest"),
    ]);
    s.config.failures_to_cool = 2;
    s.config.retries = 5;
    router.script_model(
        "model-a",
        (0..5).map(|_| status(500, &[], r#"{"error":"internal"}"#)),
    );
    router.script_model(
        "model-b:cheapest",
        vec![ok_stream("novita", &["b1"]), ok_stream("novita", &["b2"])],
    );
    let client = s.client();
    let (r, _) = run(&client).await;
    let out = r.unwrap();
    assert_eq!(out.reply.content, "b1");
    assert_eq!(out.endpoint.model, "model-b:cheapest");
    // Two failures cooled model-a before its retries were used up.
    assert_eq!(out.attempts, 3);
    assert_eq!(router.count_model("model-a"), 2);

    let health = client.endpoint_status();
    let why = health[0].blocked.as_deref().unwrap();
    assert!(why.contains("cooling down"), "{why}");
    assert!(why.contains("2 failures within 60 s"), "{why}");
    assert!(why.contains("HTTP 500"), "{why}");
    assert_eq!(health[1].blocked, None);
    assert!(client.is_available());

    // The next request goes straight to model-b.
    let (r, _) = run(&client).await;
    let out = r.unwrap();
    assert_eq!((out.reply.content.as_str(), out.attempts), ("b2", 1));
    assert_eq!(router.count_model("model-a"), 2);
    assert_eq!(router.count_model("model-b:cheapest"), 2);
    logs.assert_no_token(&[]);
}

#[tokio::test]
async fn a_long_retry_after_cools_the_endpoint_instead_of_waiting() {
    let logs = Logs::capture();
    let router = FakeRouter::start();
    let s = setup(&[(router.base_url(), "busy"), (router.base_url(), "spare")]);
    let in_an_hour =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    router.script_model(
        "busy",
        vec![status(429, &[("retry-after", &in_an_hour)], "")],
    );
    router.script_model("spare", vec![ok_stream("groq", &["spare"])]);
    let client = s.client();
    let t0 = Instant::now();
    let (r, _) = run(&client).await;
    assert_eq!(r.unwrap().reply.content, "spare");
    // Generous bounds: a loaded machine may take seconds, never the hour.
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "did not wait an hour: {:?}",
        t0.elapsed()
    );
    let why = client.endpoint_status()[0].blocked.clone().unwrap();
    let secs: u64 = why
        .split("Retry-After ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After seconds in {why:?}"));
    // The date has whole seconds and time passes between writing and reading it.
    assert!((3540..=3600).contains(&secs), "{why}");
    logs.assert_no_token(&[]);
}

#[tokio::test]
async fn chunks_split_at_awkward_byte_boundaries_are_reassembled() {
    // CRLF line ends, comments, a multi-line data field (JSON split over two lines), and
    // multi-byte characters; then cut inside "data", between CR and LF, inside a 4-byte
    // emoji, inside "[DONE]", and byte by byte through one whole event.
    let c1 = chunk_json(json!({"content": "Grüße "}), Value::Null).to_string();
    let c2 = chunk_json(json!({"content": "🦀 crabs"}), Value::Null).to_string();
    let (c2a, c2b) = c2.split_at(c2.find("\"choices\"").unwrap());
    let fin = chunk_json(json!({}), json!("length")).to_string();
    let text = format!(
        ": OPENROUTER PROCESSING\r\n\r\ndata: {c1}\r\n\r\ndata: {c2a}\r\ndata: {c2b}\r\n\r\n\
         :ping\r\ndata: {fin}\r\n\r\ndata: [DONE]\r\n\r\n"
    );
    let bytes = text.as_bytes();
    let mut cuts: Vec<usize> = Vec::new();
    let second = text.find("data: {").unwrap() + 2; // "da|ta"
    cuts.push(second);
    let crlf = text.find("\r\n\r\ndata: {").unwrap() + 1; // "\r|\n"
    cuts.push(crlf);
    let crab = text.find('🦀').unwrap();
    cuts.extend([crab + 1, crab + 3]); // inside the emoji's 4 bytes
    let fin_at = text.find(&fin).unwrap();
    cuts.extend(fin_at..fin_at + 40); // byte by byte
    let done_at = text.find("[DONE]").unwrap() + 3; // "[DO|NE]"
    cuts.push(done_at);
    cuts.sort_unstable();
    cuts.dedup();
    let mut parts = Vec::new();
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
        parts.push(Part::Bytes(bytes[prev..c].to_vec()));
        // A pause so each piece leaves in its own TCP segment and TLS record.
        parts.push(Part::Sleep(Duration::from_millis(3)));
        prev = c;
    }
    let (logs, _router, s) = one_router(vec![stream("novita", parts)]);
    let (r, deltas) = run(&s.client()).await;
    let out = r.unwrap();
    assert_eq!(deltas, ["Grüße ", "🦀 crabs"]);
    assert_eq!(out.reply.content, "Grüße 🦀 crabs");
    assert_eq!(out.finish_reason.as_deref(), Some("length"));
    assert_eq!(out.usage, None);
    logs.assert_no_token(&[]);
}

#[tokio::test]
async fn an_oversize_line_is_refused() {
    // No newline ever comes: the client must give up at the limit, not buffer on.
    let mut parts = vec![
        role(),
        Part::Bytes(b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec()),
    ];
    parts.extend((0..20).map(|_| Part::Bytes(vec![b'x'; 1000])));
    parts.push(Part::Sleep(Duration::from_secs(10)));
    let (logs, router, s) = one_router(vec![bare_stream(parts), ok_stream("unused", &["no"])]);
    let t0 = Instant::now();
    let (r, deltas) = run(&s.client()).await;
    let err = r.unwrap_err();
    assert!(deltas.is_empty());
    assert!(
        matches!(err.kind, CloudErrorKind::Protocol { .. }),
        "{err:?}"
    );
    assert_eq!(err.code().as_str(), "cloud_error");
    assert!(
        err.to_string().contains("line longer than 4096 bytes"),
        "{err}"
    );
    assert!(!err.partial);
    // The endpoint's fault: not retried on the same endpoint.
    assert_eq!(router.requests().len(), 1);
    assert!(t0.elapsed() < Duration::from_secs(2));
    logs.assert_no_token(&[&err]);
}

#[tokio::test]
async fn connection_failures_fail_over_to_the_next_endpoint() {
    let logs = Logs::capture();
    // A port nobody listens on.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    // A server that accepts TCP but never answers the TLS handshake.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    let silent_task = tokio::spawn(async move {
        while let Ok((s, _)) = silent.accept().await {
            h.lock().unwrap().push(s);
        }
    });
    let router = FakeRouter::start();
    let closed_url = format!("https://127.0.0.1:{closed}/v1");
    let silent_url = format!("https://localhost:{silent_port}/v1");
    let mut s = setup(&[
        (&closed_url, MODEL),
        (&silent_url, MODEL),
        (router.base_url(), MODEL),
    ]);
    s.config.retries = 1;
    s.config.connect_timeout_ms = 300;
    router.script_model(MODEL, vec![ok_stream("novita", &["third", " time"])]);
    let t0 = Instant::now();
    let (r, _) = run(&s.client()).await;
    let out = r.unwrap();
    assert_eq!(out.reply.content, "third time");
    assert_eq!(out.endpoint.base_url, router.base_url());
    // Two tries on each dead endpoint, then one that works.
    assert_eq!(out.attempts, 5);
    assert_eq!(held.lock().unwrap().len(), 2);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let text = logs.text();
    assert!(text.contains("timed out connecting"), "{text}");
    assert!(text.contains("cannot connect to"), "{text}");
    logs.assert_no_token(&[]);
    silent_task.abort();
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let (logs, router, mut s) = one_router(vec![ok_stream("x", &["x"])]);
    let other = s.dir.path().join("other.crt");
    std::fs::write(&other, &spillway_e2e::pki::shared().other_ca).unwrap();
    s.config.ca_file = other;
    let (r, _) = run(&s.client()).await;
    let err = r.unwrap_err();
    assert!(matches!(err.kind, CloudErrorKind::Tls { .. }), "{err:?}");
    assert_eq!(err.code().as_str(), "cloud_unavailable");
    assert!(err.to_string().contains("certificate"), "{err}");
    // Nothing reached the server, the token least of all.
    assert!(router.requests().is_empty());
    logs.assert_no_token(&[&err]);
}

#[tokio::test]
async fn a_plain_http_lan_router_is_accepted_with_a_warning() {
    let logs = Logs::capture();
    let lan = FakeRouter::start_plain();
    let s = setup(&[(lan.base_url(), "ministral-3b")]);
    lan.script_model("ministral-3b", vec![ok_stream("llama.cpp", &["plain"])]);
    let client = s.client();
    let text = logs.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("plain http://"), "{text}");
    assert!(text.contains("API token travel unencrypted"), "{text}");
    let (r, _) = run(&client).await;
    assert_eq!(r.unwrap().reply.content, "plain");
    // Without a token no Authorization header is sent at all.
    let anon = CloudClient::new(s.config.clone(), None).unwrap();
    lan.script_model("ministral-3b", vec![ok_stream("llama.cpp", &["anon"])]);
    let (r, _) = run(&anon).await;
    assert_eq!(r.unwrap().reply.content, "anon");
    let reqs = lan.requests();
    assert_eq!(reqs[0].headers["authorization"], format!("Bearer {TOKEN}"));
    assert!(!reqs[1].headers.contains_key("authorization"));
    logs.assert_no_token(&[]);
}

/// A tool call streamed as OpenAI streams it (the name first, then the arguments in
/// pieces) is handed over piece by piece and put together in the outcome; the tools went
/// in the request as given.
#[tokio::test]
async fn a_tool_call_is_streamed_in_pieces_and_put_together() {
    let (logs, router, s) = one_router(vec![respond("together")]);
    let tool = json!({"type": "function", "function": {"name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"},
                                                        "n": {"type": "integer"}},
                       "required": ["q", "n"]}}});
    let req = CloudRequest {
        tools: vec![tool.clone()],
        tool_choice: Some(json!("required")),
        parallel_tool_calls: Some(true),
        ..request()
    };
    let mut pieces: Vec<String> = Vec::new();
    let out = s
        .client()
        .complete(&req, |p| pieces.push(format!("{p:?}")))
        .await
        .unwrap();
    assert_eq!(out.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(out.reply.content, "");
    assert_eq!(out.reply.tool_calls.len(), 1);
    let call = &out.reply.tool_calls[0];
    assert_eq!(
        (call.id.as_str(), call.name.as_str()),
        (RESPOND_CALL_ID, "lookup")
    );
    let args: Value = serde_json::from_str(&call.arguments).unwrap();
    assert_eq!(args, json!({"q": "example", "n": 1}));
    assert_eq!(
        pieces[0],
        format!("CallStart {{ index: 0, id: {RESPOND_CALL_ID:?}, name: \"lookup\" }}")
    );
    assert!(pieces.len() > 3, "arguments in pieces: {pieces:?}");
    let body = &router.requests()[0].body;
    assert_eq!(body["tools"], json!([tool]));
    assert_eq!(body["tool_choice"], "required");
    assert_eq!(body["parallel_tool_calls"], true);
    logs.assert_no_token(&[]);
}

#[tokio::test]
async fn a_stream_cut_before_done_is_an_error_unless_finished() {
    let (logs, router, s) = one_router(vec![
        // Cut after text, without a finish reason: partial, not retried.
        bare_stream(vec![role(), delta("half")]),
        // Finished but without [DONE] (some servers): accepted.
        bare_stream(vec![role(), delta("whole"), finish("stop")]),
    ]);
    let client = s.client();
    let (r, deltas) = run(&client).await;
    let err = r.unwrap_err();
    assert_eq!(deltas, ["half"]);
    assert!(err.partial);
    assert!(err.to_string().contains("ended before [DONE]"), "{err}");
    let (r, _) = run(&client).await;
    let out = r.unwrap();
    assert_eq!(
        (out.reply.content.as_str(), out.finish_reason.as_deref()),
        ("whole", Some("stop"))
    );
    assert_eq!(router.requests().len(), 2);
    logs.assert_no_token(&[&err]);
}

/// Every echo mode of the fake router: the token, JSON-escaped, percent-encoded, in an error
/// event or split across chunks, shows nowhere — not in the deltas, the answer, the error,
/// the circuit's reasons or the logs — and `[redacted]` shows where it was.
#[tokio::test]
async fn whatever_the_router_echoes_the_token_shows_nowhere() {
    let forms = [
        TOKEN.to_string(),
        json_escaped(TOKEN),
        TOKEN.replace('_', "\\u005f"),
        percent_encoded(TOKEN),
        TOKEN.replace('_', "%5F"),
        TOKEN[3..15].to_string(),
    ];
    let hidden = |what: &str, text: &str| {
        for f in &forms {
            assert!(!text.contains(f.as_str()), "{what}: {f:?} in {text}");
        }
    };
    let cases = [
        (Echo::SplitContent, "ok"),
        (Echo::SseErrorEvent, "cloud_error"),
        (Echo::StreamErrorAfterText, "cloud_error"),
        (Echo::PercentEncoded { status: 503 }, "cloud_unavailable"),
        (Echo::PercentEncoded { status: 400 }, "cloud_error"),
        (Echo::JsonEscaped { status: 401 }, "cloud_unavailable"),
        (Echo::JsonEscaped { status: 402 }, "cloud_unavailable"),
    ];
    for (how, want) in cases {
        let (logs, router, mut s) = one_router(vec![echo(how)]);
        s.config.retries = 0;
        let client = s.client();
        let (r, deltas) = run(&client).await;
        let streamed = deltas.concat();
        hidden("deltas", &streamed);
        for d in &deltas {
            hidden("a delta", d);
        }
        let shown = match r {
            Ok(out) => {
                assert_eq!(want, "ok", "{how:?}");
                assert_eq!(
                    out.reply.content,
                    "Your key is [redacted] and encoded [redacted]."
                );
                assert_eq!(
                    out.reply.content, streamed,
                    "the answer is what was streamed"
                );
                out.reply.content
            }
            Err(e) => {
                assert_eq!(e.code().as_str(), want, "{how:?}: {e}");
                hidden("the error", &format!("{e} {e:?} {e:#?}"));
                e.to_string()
            }
        };
        assert!(shown.contains("[redacted]"), "{how:?}: {shown}");
        if let Err(why) = client.availability() {
            hidden("availability", &why);
        }
        hidden(
            "endpoint status",
            &format!("{:?}", client.endpoint_status()),
        );
        hidden("logs", &logs.text());
        assert_eq!(router.requests().len(), 1, "{how:?}");
        assert_eq!(router.unused(), 0);
    }
}
