//! The cloud API token never leaks, whatever the router echoes: the real `spillway serve`
//! against a real mosquitto and the fake HTTPS router playing every echo mode
//! ([`fr::Echo`]): error bodies quoting the token JSON-escaped or percent-encoded (401, 402,
//! 429, 500, 503), an `event: error` quoting it, an `{"error": ...}` chunk after text, and an
//! answer whose text holds the token split across chunks, as it is and percent-encoded.
//!
//! The token is a canary. Everything the daemon says is captured — every line of its
//! standard output and error (debug logging on), every MQTT message on `spillway/#` (status,
//! telemetry every second, including the circuit's reason while it is open) and on the
//! reply topics — and none of it may hold the canary, in clear, JSON-escaped or
//! percent-encoded, or any eight-character piece of its secret part. Each request gets
//! exactly one final reply, and the replies show `[redacted]` where the token was.

mod mqtt_client;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mqtt_client::{Conn, Msg};
use serde_json::{Value, json};
use spillway_e2e::cloud_rig::{self, CloudRig};
use spillway_e2e::fake_router::{self as fr, Echo};
use spillway_e2e::{Mosquitto, TempDir, spillway_bin};

const DEVICE: &str = "leakyboard";
/// The canary: `/` and `_` so that `\/` and `\u005f` escapes are exercised.
const CANARY: &str = "hf_Canary/Chaos_7f3a9c2e5b1d40686dQz";
const WAIT: Duration = Duration::from_secs(15);

/// The rig's configuration ([`cloud_rig::config`]) with no retries (one attempt per
/// request, so each echo is seen once), no cooldowns from repeated failures, and circuits
/// that close after 3 s.
fn config(broker: &Mosquitto, ca_file: &std::path::Path) -> String {
    cloud_rig::config(
        DEVICE,
        broker,
        ca_file,
        "",
        "idle_timeout_ms = 1000\nretries = 0\nfailures_to_cool = 100\nauth_cooldown_secs = 3\n\
         credits_cooldown_secs = 3",
    )
}

/// `spillway serve` with its standard output and error each captured in a file.
struct Daemon {
    child: Child,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
}

impl Daemon {
    fn start(dir: &TempDir, config: &str, args: &[&str]) -> Daemon {
        let conf = dir.path().join("spillway.toml");
        std::fs::write(&conf, config).unwrap();
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        // Its own request journal: the default (/var/lib/spillway as root) would replay the
        // answers of an earlier run to the same request ids.
        let state = dir.path().join("state");
        let child = Command::new(spillway_bin())
            .args(["serve", "--config", conf.to_str().unwrap()])
            .args(["--state-dir", state.to_str().unwrap()])
            .args(args)
            .env_remove("SPILLWAY_KERNELS")
            .env_remove("HF_TOKEN")
            .env("SPILLWAY_LOG", "spillway=debug")
            .stdout(Stdio::from(std::fs::File::create(&stdout).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
            .spawn()
            .expect("spawning spillway serve");
        Daemon {
            child,
            stdout,
            stderr,
        }
    }

    /// Every line the daemon wrote, tagged with the stream it went to.
    fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (tag, path) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let bytes = std::fs::read(path).unwrap_or_default();
            for l in String::from_utf8_lossy(&bytes).lines() {
                out.push(format!("{tag}: {l}"));
            }
        }
        out
    }

    fn log(&self) -> String {
        self.lines().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The MQTT side: sends requests, keeps every message seen on `spillway/#` and `replies/#`.
struct Client {
    conn: Conn,
    seen: Vec<Msg>,
    sent: Vec<String>,
}

impl Client {
    fn new(port: u16) -> Client {
        let conn = Conn::v5(port, "chaos-secrets", false);
        conn.subscribe("spillway/#");
        conn.subscribe("replies/#");
        Client {
            conn,
            seen: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// Takes in messages until `cond` holds (true) or `timeout` passes (false).
    fn until(&mut self, timeout: Duration, mut cond: impl FnMut(&[Msg]) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if cond(&self.seen) {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if let Some(m) = self.conn.next(left.min(Duration::from_millis(100))) {
                self.seen.push(m);
            }
        }
    }

    fn send(&mut self, id: &str, route: &str) {
        let req = json!({
            "id": id,
            "messages": [{"role": "user", "content": format!("{id}: say hello")}],
            "max_tokens": 8,
            "seed": 5,
            "route": route,
        });
        self.conn.request(
            &format!("spillway/{DEVICE}/request"),
            &req.to_string(),
            Some(&format!("replies/{id}")),
            Some(id.as_bytes()),
            None,
        );
        self.sent.push(id.to_string());
    }

    fn replies(&self, id: &str) -> Vec<Value> {
        let topic = format!("replies/{id}");
        self.seen
            .iter()
            .filter(|m| m.topic == topic)
            .map(Msg::json)
            .collect()
    }

    /// Waits for the final reply to `id`; returns (streamed text, final).
    fn answer(&mut self, id: &str, daemon: &Daemon) -> (String, Value) {
        let topic = format!("replies/{id}");
        let ok = self.until(WAIT, |seen| {
            seen.iter()
                .any(|m| m.topic == topic && m.json()["done"] == true)
        });
        assert!(ok, "no final reply to {id}:\n{}", daemon.log());
        let replies = self.replies(id);
        let streamed = replies.iter().filter_map(|r| r["delta"].as_str()).collect();
        let fin = replies
            .into_iter()
            .find(|r| r["done"] == true)
            .expect("a final");
        (streamed, fin)
    }

    /// The latest telemetry's `routing.cloud_https`, from a message published after now.
    fn fresh_cloud_health(&mut self) -> String {
        let topic = format!("spillway/{DEVICE}/telemetry");
        let from = self.seen.len();
        let ok = self.until(WAIT, |seen| seen[from..].iter().any(|m| m.topic == topic));
        assert!(ok, "no telemetry");
        let t = self.seen[from..]
            .iter()
            .rev()
            .find(|m| m.topic == topic)
            .expect("telemetry")
            .json();
        t["routing"]["cloud_https"].to_string()
    }
}

/// The forms of the canary a reader could recover it from, and pieces of its secret part.
fn leaks(text: &str) -> Vec<String> {
    let mut forms = vec![
        CANARY.to_string(),
        CANARY.replace('/', "\\/"),
        CANARY.replace('_', "\\u005f"),
        fr::json_escaped(CANARY),
        fr::percent_encoded(CANARY),
        fr::percent_encoded(CANARY).to_lowercase(),
        CANARY.replace('_', "%5F").replace('/', "%2F"),
    ];
    let secret = &CANARY[3..];
    forms.extend((0..=secret.len() - 8).map(|i| secret[i..i + 8].to_string()));
    forms.into_iter().filter(|f| text.contains(f)).collect()
}

fn error_of(fin: &Value) -> (String, String) {
    (
        fin["error"]["code"].as_str().unwrap_or("").to_string(),
        fin["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn the_token_never_leaks_whatever_the_router_echoes() {
    let dir = TempDir::new("chaos-secrets");
    let cloud = CloudRig::start(&dir, CANARY);
    // Hot from the start (generic board: soft limit 70 °C), so an auto request spills.
    cloud.fs.set_temp_c(72.0);
    let router = &cloud.router;
    let broker = Mosquitto::start();
    let mut c = Client::new(broker.port);
    let daemon = Daemon::start(&dir, &config(&broker, &cloud.ca_file), &cloud.serve_args());
    let status = format!("spillway/{DEVICE}/status");
    let online = c.until(Duration::from_secs(30), |seen| {
        seen.iter()
            .any(|m| m.topic == status && m.payload == b"online")
    });
    assert!(online, "the daemon never came online:\n{}", daemon.log());

    // The token split across chunks in the answer: streamed and final text redacted alike.
    router.script([fr::echo(Echo::SplitContent)]);
    c.send("split", "cloud");
    let (streamed, fin) = c.answer("split", &daemon);
    let want = "Your key is [redacted] and encoded [redacted].";
    assert_eq!(fin["text"], want, "{fin}");
    assert_eq!(streamed, want, "the streamed text is the final text: {fin}");
    assert_eq!(fin["route"], "cloud-https", "{fin}");

    // Error events quoting the token, before and after text.
    router.script([
        fr::echo(Echo::SseErrorEvent),
        fr::echo(Echo::StreamErrorAfterText),
    ]);
    c.send("sse-error", "cloud");
    let (_, fin) = c.answer("sse-error", &daemon);
    let (code, message) = error_of(&fin);
    assert_eq!(code, "cloud_error", "{fin}");
    assert!(message.contains("Bearer [redacted]"), "{fin}");
    c.send("after-text", "cloud");
    let (streamed, fin) = c.answer("after-text", &daemon);
    assert_eq!(streamed, "Checking your key");
    let (code, message) = error_of(&fin);
    assert_eq!(code, "cloud_error", "{fin}");
    assert!(message.contains("key [redacted] revoked"), "{fin}");

    // Error bodies with the token percent-encoded: refused, and (auto, on a hot board)
    // served here with the cloud's failure in the reason.
    router.script([
        fr::echo(Echo::PercentEncoded { status: 503 }),
        fr::echo(Echo::PercentEncoded { status: 429 }),
        fr::echo(Echo::PercentEncoded { status: 500 }),
    ]);
    for id in ["percent-503", "percent-429"] {
        c.send(id, "cloud");
        let (_, fin) = c.answer(id, &daemon);
        let (code, message) = error_of(&fin);
        assert_eq!(code, "cloud_unavailable", "{fin}");
        assert!(message.contains("api_key=[redacted]"), "{fin}");
    }
    c.send("auto-hot", "auto");
    let (_, fin) = c.answer("auto-hot", &daemon);
    assert_eq!(fin["route"], "local", "{fin}");
    let reason = fin["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("cloud failed") && reason.contains("[redacted]"),
        "{fin}"
    );

    // 401 with the token JSON-escaped: the circuit opens, and its reason (in the next
    // request's error and in telemetry) quotes the excerpt, not the token.
    router.script([fr::echo(Echo::JsonEscaped { status: 401 })]);
    c.send("auth-401", "cloud");
    let (_, fin) = c.answer("auth-401", &daemon);
    let (code, message) = error_of(&fin);
    assert_eq!(code, "cloud_unavailable", "{fin}");
    assert!(message.contains("Bearer [redacted]"), "{fin}");
    c.send("while-open", "cloud");
    let (_, fin) = c.answer("while-open", &daemon);
    let (code, message) = error_of(&fin);
    assert_eq!(code, "cloud_unavailable", "{fin}");
    assert!(
        message.contains("circuit open") && message.contains("[redacted]"),
        "{fin}"
    );
    let health = c.fresh_cloud_health();
    assert!(
        health.contains("circuit open") && health.contains("[redacted]"),
        "{health}"
    );

    // Once the circuit closes: 402 with the token JSON-escaped opens it again.
    let closed = c.until(WAIT, |seen| {
        seen.iter()
            .rev()
            .find(|m| m.topic.ends_with("/telemetry"))
            .is_some_and(|m| {
                !m.json()["routing"]["cloud_https"]
                    .to_string()
                    .contains("circuit")
            })
    });
    assert!(closed, "the circuit never closed:\n{}", daemon.log());
    router.script([fr::echo(Echo::JsonEscaped { status: 402 })]);
    c.send("credits-402", "cloud");
    let (_, fin) = c.answer("credits-402", &daemon);
    let (code, message) = error_of(&fin);
    assert_eq!(code, "cloud_unavailable", "{fin}");
    assert!(
        message.contains("credits exhausted") && message.contains("Bearer [redacted]"),
        "{fin}"
    );
    let health = c.fresh_cloud_health();
    assert!(health.contains("HTTP 402"), "{health}");

    // Two more seconds of telemetry, then the accounts.
    c.until(Duration::from_secs(2), |_| false);
    assert_eq!(router.unused(), 0, "every echo was played");
    for r in router.requests() {
        assert_eq!(
            r.headers.get("authorization").map(String::as_str),
            Some(format!("Bearer {CANARY}").as_str()),
            "the router was sent the canary, so every echo quoted it"
        );
    }
    for id in &c.sent {
        let replies = c.replies(id);
        let finals = replies.iter().filter(|r| r["done"] == true).count();
        assert_eq!(finals, 1, "{id}: exactly one final reply: {replies:?}");
        assert_eq!(
            replies.last().unwrap()["done"],
            true,
            "{id}: nothing after it"
        );
    }
    let telemetry = c
        .seen
        .iter()
        .filter(|m| m.topic.ends_with("/telemetry"))
        .count();
    assert!(
        telemetry >= 5,
        "telemetry was captured ({telemetry} messages)"
    );
    for m in &c.seen {
        let text = String::from_utf8_lossy(&m.payload);
        let found = leaks(&text);
        assert!(found.is_empty(), "{found:?} in MQTT {}: {text}", m.topic);
    }
    let lines = daemon.lines();
    assert!(
        lines.iter().any(|l| l.contains("cloud API token from")),
        "the token file was used:\n{}",
        daemon.log()
    );
    assert!(
        lines.iter().any(|l| l.contains("[redacted]")),
        "the echoes reached the log, redacted:\n{}",
        daemon.log()
    );
    for l in &lines {
        let found = leaks(l);
        assert!(found.is_empty(), "{found:?} in the daemon's output: {l}");
    }
}
