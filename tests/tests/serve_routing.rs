//! Overflow routing end to end: `spillway serve` with a real mosquitto, a fake `/sys` +
//! `/proc` tree (`--fs-root`, `--board generic`: soft limit 70/65 °C, hard 80/75 °C
//! enter/exit) and a fake HTTPS cloud router (`--cloud-base-url`, a 0600 token file, the
//! test CA in `[cloud] ca_file`). The tests heat the board up, cool it down and tighten its
//! memory by rewriting the fake files, wait until the daemon's telemetry shows the new
//! reading, and check where each request went (`route`, `reason`), what the router saw,
//! that answers come back over the original MQTT request (response topic and correlation
//! data, chunks in order then one final), that local-only requests never leave, that
//! retries, fallbacks and the circuit breaker behave, and that every request gets exactly
//! one final reply.

mod mqtt_client;

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use mqtt_client::{Conn, Msg};
use serde_json::{Value, json};
use spillway_e2e::cloud_rig::{self, CloudRig};
use spillway_e2e::fake_fs::FakeFs;
use spillway_e2e::fake_router::{self as fr, FakeRouter, Gate, Part};
use spillway_e2e::{Mosquitto, Serve, TempDir};

const DEVICE: &str = "hotboard";
const TOKEN: &str = "hf_E2eRoutingSecret_4b9d2c7e1f0a8356";
/// The model the daemon asks the router for (the default).
const CLOUD_MODEL: &str = "mistralai/Ministral-3-3B-Instruct-2512:fastest";
/// Longest wait for anything that should happen promptly.
const WAIT: Duration = Duration::from_secs(10);

fn request_topic() -> String {
    format!("spillway/{DEVICE}/request")
}

fn reply_topic(id: &str) -> String {
    format!("replies/{id}")
}

fn correlation(id: &str) -> Vec<u8> {
    format!("corr-{id}").into_bytes()
}

/// The rig's configuration ([`cloud_rig::config`]) with two retries, a 500 ms idle
/// timeout, `Retry-After` honoured up to 5 s and the circuit opening after 5 failures.
fn config(broker: &Mosquitto, ca_file: &Path, router_extra: &str) -> String {
    cloud_rig::config(
        DEVICE,
        broker,
        ca_file,
        router_extra,
        "idle_timeout_ms = 500\nretries = 2\nretry_after_max_secs = 5\nfailures_to_cool = 5",
    )
}

/// What came back for one request.
#[derive(Debug)]
struct Answer {
    chunks: Vec<Value>,
    fin: Value,
}

impl Answer {
    fn streamed(&self) -> String {
        self.chunks
            .iter()
            .map(|c| c["delta"].as_str().unwrap_or_default())
            .collect()
    }

    fn route(&self) -> &str {
        self.fin["route"].as_str().unwrap_or("")
    }

    fn reason(&self) -> &str {
        self.fin["reason"].as_str().unwrap_or("")
    }

    fn error_code(&self) -> &str {
        self.fin["error"]["code"].as_str().unwrap_or("")
    }

    fn error_message(&self) -> &str {
        self.fin["error"]["message"].as_str().unwrap_or("")
    }
}

/// An MQTT 5 client that sends requests (each with its own response topic and correlation
/// data) and keeps every reply, the latest telemetry and the daemon's status.
struct Client {
    conn: Conn,
    replies: RefCell<Vec<Msg>>,
    telemetry: RefCell<Option<Value>>,
    status: RefCell<Option<String>>,
    sent: RefCell<Vec<String>>,
}

impl Client {
    fn new(port: u16) -> Client {
        let conn = Conn::v5(port, "routing-client", false);
        conn.subscribe("replies/#");
        conn.subscribe(&format!("spillway/{DEVICE}/status"));
        conn.subscribe(&format!("spillway/{DEVICE}/telemetry"));
        Client {
            conn,
            replies: RefCell::new(Vec::new()),
            telemetry: RefCell::new(None),
            status: RefCell::new(None),
            sent: RefCell::new(Vec::new()),
        }
    }

    /// Takes in the next message, if one arrives within `timeout`.
    fn pump(&self, timeout: Duration) {
        let Some(m) = self.conn.next(timeout) else {
            return;
        };
        if m.topic.starts_with("replies/") {
            self.replies.borrow_mut().push(m);
        } else if m.topic.ends_with("/telemetry") {
            *self.telemetry.borrow_mut() = Some(m.json());
        } else if m.topic.ends_with("/status") {
            *self.status.borrow_mut() = Some(String::from_utf8_lossy(&m.payload).into_owned());
        }
    }

    /// Takes in messages until `cond` holds (true) or `timeout` passes (false).
    fn until(&self, timeout: Duration, mut cond: impl FnMut(&Client) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.pump(left.min(Duration::from_millis(100)));
        }
    }

    /// Publishes request `id` (a user message naming the id, 8 tokens) with `extra` fields
    /// and an optional message expiry.
    fn send(&self, id: &str, extra: Value, expiry_secs: Option<u32>) {
        let mut req = json!({
            "id": id,
            "messages": [{"role": "user", "content": format!("{id}: say hello")}],
            "max_tokens": 8,
            "seed": 5,
        });
        for (k, v) in extra.as_object().expect("extra fields are an object") {
            req[k] = v.clone();
        }
        self.conn.request(
            &request_topic(),
            &req.to_string(),
            Some(&reply_topic(id)),
            Some(&correlation(id)),
            expiry_secs,
        );
        self.sent.borrow_mut().push(id.to_string());
    }

    fn msgs_for(&self, id: &str) -> Vec<Msg> {
        let topic = reply_topic(id);
        self.replies
            .borrow()
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    fn has_final(&self, id: &str) -> bool {
        self.msgs_for(id).iter().any(|m| m.json()["done"] == true)
    }

    fn temperature(&self) -> Option<f64> {
        self.telemetry.borrow().as_ref()?["temperature_c"].as_f64()
    }
}

/// Broker, fake board, fake router and daemon, with a client connected.
struct Rig {
    client: Client,
    serve: Serve,
    router: FakeRouter,
    fs: FakeFs,
    _broker: Mosquitto,
    _dir: TempDir,
}

fn start(router_extra: &str) -> Rig {
    let dir = TempDir::new("routing");
    let cloud = CloudRig::start(&dir, TOKEN);
    let broker = Mosquitto::start();
    let client = Client::new(broker.port);
    let serve = Serve::start_with_args(
        &config(&broker, &cloud.ca_file, router_extra),
        &cloud.serve_args(),
    );
    let online = client.until(Duration::from_secs(30), |c| {
        c.status.borrow().as_deref() == Some("online")
    });
    assert!(
        online,
        "the daemon never came online:\n{}",
        serve.log_text()
    );
    let CloudRig { fs, router, .. } = cloud;
    Rig {
        client,
        serve,
        router,
        fs,
        _broker: broker,
        _dir: dir,
    }
}

impl Rig {
    /// Waits for the final reply to `id` and returns it with the chunks before it.
    fn answer(&self, id: &str) -> Answer {
        self.answer_within(id, WAIT)
    }

    fn answer_within(&self, id: &str, timeout: Duration) -> Answer {
        let ok = self.client.until(timeout, |c| c.has_final(id));
        assert!(
            ok,
            "no final reply to {id} within {timeout:?}; replies so far: {:?}\n--- daemon log:\n{}",
            self.client
                .msgs_for(id)
                .iter()
                .map(Msg::json)
                .collect::<Vec<_>>(),
            self.serve.log_text()
        );
        let msgs = self.client.msgs_for(id);
        let done = msgs
            .iter()
            .position(|m| m.json()["done"] == true)
            .expect("a final");
        let chunks: Vec<Value> = msgs[..done].iter().map(Msg::json).collect();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c["id"], id, "{c}");
            assert_eq!(
                c["seq"], i as u64,
                "{id}: chunks arrive in order: {chunks:?}"
            );
        }
        for m in &msgs {
            assert_eq!(
                m.correlation.as_deref(),
                Some(&correlation(id)[..]),
                "{id}: the correlation data comes back on every reply"
            );
        }
        let fin = msgs[done].json();
        assert_eq!(fin["id"], id, "{fin}");
        Answer { chunks, fin }
    }

    /// Sets the SoC temperature and waits until the daemon's telemetry reports it (so the
    /// routing policy sees it from the next request on).
    fn set_temp(&self, celsius: f32) {
        self.fs.set_temp_c(celsius);
        *self.client.telemetry.borrow_mut() = None;
        let want = f64::from(celsius);
        let ok = self.client.until(WAIT, |c| {
            c.temperature().is_some_and(|t| (t - want).abs() < 0.01)
        });
        assert!(
            ok,
            "telemetry never showed {celsius} °C (last: {:?})\n{}",
            self.client.telemetry.borrow(),
            self.serve.log_text()
        );
    }

    /// Sets `MemAvailable` and waits until the daemon's telemetry reports it.
    fn set_mem_available(&self, bytes: u64) {
        self.fs.set_mem_available(bytes);
        *self.client.telemetry.borrow_mut() = None;
        let want = bytes / 1024 * 1024;
        let ok = self.client.until(WAIT, |c| {
            c.telemetry
                .borrow()
                .as_ref()
                .is_some_and(|t| t["memory"]["available_bytes"].as_u64() == Some(want))
        });
        assert!(ok, "telemetry never showed {want} bytes available");
    }

    /// Telemetry's `routing` object, from a message published after now.
    fn fresh_routing(&self) -> Value {
        *self.client.telemetry.borrow_mut() = None;
        assert!(
            self.client.until(WAIT, |c| c.telemetry.borrow().is_some()),
            "no telemetry"
        );
        self.client.telemetry.borrow().as_ref().unwrap()["routing"].clone()
    }

    fn log(&self) -> String {
        self.serve.log_text()
    }

    /// Waits (taking in MQTT messages meanwhile) until the daemon's log contains `needle`.
    fn until_log(&self, needle: &str) {
        let ok = self.client.until(WAIT, |_| self.log().contains(needle));
        assert!(ok, "the daemon never logged {needle:?}:\n{}", self.log());
    }

    /// How many requests the router received that mention `needle` in a message.
    fn forwarded(&self, needle: &str) -> usize {
        self.router
            .requests()
            .iter()
            .filter(|r| r.mentions(needle))
            .count()
    }

    /// The end of every test: after a short drain, every request sent has exactly one final
    /// reply, as its last message; nothing came for an unknown request; the token never
    /// reached the daemon's log.
    fn finish(self) {
        self.client.until(Duration::from_millis(300), |_| false);
        let sent = self.client.sent.borrow().clone();
        for id in &sent {
            let msgs = self.client.msgs_for(id);
            let finals = msgs.iter().filter(|m| m.json()["done"] == true).count();
            assert_eq!(
                finals,
                1,
                "{id}: exactly one final reply, got {finals}: {:?}",
                msgs.iter().map(Msg::json).collect::<Vec<_>>()
            );
            assert_eq!(
                msgs.last().unwrap().json()["done"],
                true,
                "{id}: nothing after the final"
            );
        }
        for m in self.client.replies.borrow().iter() {
            let id = m.topic.trim_start_matches("replies/");
            assert!(
                sent.iter().any(|s| s == id),
                "a reply for a request never sent: {m:?}"
            );
        }
        let log = self.log();
        assert!(
            log.contains("cloud API token from"),
            "the token file was used:\n{log}"
        );
        assert!(!log.contains(TOKEN), "the token is in the daemon's log");
        assert!(
            !log.contains(&TOKEN[10..]),
            "part of the token is in the daemon's log"
        );
    }
}

#[test]
fn a_cool_board_answers_here_and_a_hot_one_spills_over_https() {
    let rig = start("");

    // Cool: served here, the router sees nothing.
    rig.client.send("cool-1", json!({}), None);
    let a = rig.answer("cool-1");
    assert_eq!(a.route(), "local", "{}", a.fin);
    assert!(a.reason().starts_with("fits locally"), "{}", a.fin);
    assert_eq!(a.fin["usage"]["completion_tokens"], 8, "{}", a.fin);
    assert_eq!(a.streamed(), a.fin["text"].as_str().unwrap());
    assert_eq!(rig.router.count(), 0);

    // Past the soft limit: forwarded, streamed back as it arrives. The router holds the
    // rest of the answer until the first chunk has reached the MQTT client, so a daemon
    // that buffered the answer would stall here.
    rig.set_temp(72.0);
    let gate = Gate::new();
    rig.router.script([fr::stream(
        "novita",
        vec![
            fr::role(),
            fr::delta("Hello"),
            Part::Wait(gate.clone()),
            fr::delta(", world"),
            fr::delta("!"),
            fr::finish("stop"),
            fr::usage(11, 3),
            fr::done(),
        ],
    )]);
    rig.client.send("soft-1", json!({}), None);
    let first = rig.client.until(WAIT, |c| !c.msgs_for("soft-1").is_empty());
    assert!(first, "no chunk from the cloud:\n{}", rig.log());
    let msgs = rig.client.msgs_for("soft-1");
    assert_eq!(
        msgs[0].json(),
        json!({"id": "soft-1", "seq": 0, "delta": "Hello"})
    );
    assert!(!rig.client.has_final("soft-1"));
    gate.open();
    let a = rig.answer("soft-1");
    assert_eq!(a.route(), "cloud-https", "{}", a.fin);
    assert!(
        a.reason().contains("soc 72.0 °C above soft limit 70 °C"),
        "{}",
        a.fin
    );
    assert_eq!(a.fin["provider"], "novita");
    assert_eq!(a.fin["model"], CLOUD_MODEL);
    assert_eq!(a.fin["text"], "Hello, world!");
    assert_eq!(a.streamed(), "Hello, world!");
    assert_eq!(a.chunks.len(), 3);
    assert_eq!(a.fin["finish_reason"], "stop");
    assert_eq!(
        a.fin["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 3})
    );
    assert_eq!(a.fin["timings"]["attempts"], 1);
    let reqs = rig.router.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(r.headers["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(r.body["model"], CLOUD_MODEL);
    assert_eq!(r.body["stream"], true);
    assert_eq!(r.body["max_tokens"], 8);
    assert_eq!(r.body["seed"], 5);
    assert_eq!(
        r.body["messages"],
        json!([{"role": "user", "content": "soft-1: say hello"}])
    );

    // Past the hard limit: still the cloud, and the reason says why. A non-streaming
    // request gets just the final.
    rig.set_temp(85.0);
    rig.router.script([
        fr::ok_stream("together", &["Cool", "er"]),
        fr::ok_stream("together", &["Quiet", "ly"]),
    ]);
    rig.client.send("hard-1", json!({}), None);
    let a = rig.answer("hard-1");
    assert_eq!(a.route(), "cloud-https", "{}", a.fin);
    assert!(
        a.reason().contains("soc 85.0 °C above hard limit 80 °C"),
        "{}",
        a.fin
    );
    assert_eq!(a.fin["provider"], "together");
    assert_eq!(
        (a.streamed(), a.fin["text"].as_str()),
        ("Cooler".into(), Some("Cooler"))
    );
    rig.client.send("hard-2", json!({"stream": false}), None);
    let a = rig.answer("hard-2");
    assert!(a.chunks.is_empty(), "stream false: no chunks");
    assert_eq!(
        (a.route(), a.fin["text"].as_str()),
        ("cloud-https", Some("Quietly"))
    );
    assert_eq!(rig.router.count(), 3);
    for (r, id) in rig
        .router
        .requests()
        .iter()
        .zip(["soft-1", "hard-1", "hard-2"])
    {
        assert!(r.mentions(id), "{:?}", r.body);
        assert_eq!(r.headers["authorization"], format!("Bearer {TOKEN}"));
    }
    // Telemetry counts the spills by their stable reason, and the requests by route.
    let counted = rig.client.until(WAIT, |c| {
        c.telemetry.borrow().as_ref().is_some_and(|t| {
            t["routing"]["spills"] == json!({"thermal_soft": 1, "thermal_hard": 2})
                && t["requests"] == json!({"local": {"ok": 1}, "cloud-https": {"ok": 3}})
                && t["requests_served"] == 4
                && t["last_route"] == "cloud-https"
        })
    });
    assert!(
        counted,
        "telemetry: {:?}\n{}",
        rig.client.telemetry.borrow(),
        rig.log()
    );
    rig.finish();
}

#[test]
fn hysteresis_keeps_spilling_until_below_the_exit_thresholds() {
    let rig = start("");
    rig.router
        .script((0..4).map(|i| fr::ok_stream("hf-inference", &["cloud ", &format!("answer {i}")])));
    // (temperature, request, route, what the reason says)
    let steps: [(f32, &str, &str, &str); 6] = [
        (
            85.0,
            "h-85",
            "cloud-https",
            "soc 85.0 °C above hard limit 80 °C",
        ),
        // Below the hard limit, not yet below its exit: still hard.
        (
            77.0,
            "h-77",
            "cloud-https",
            "soc 77.0 °C not yet below hard exit 75 °C (limit 80 °C)",
        ),
        // Below the soft limit, not yet below its exit: still soft.
        (
            67.0,
            "h-67",
            "cloud-https",
            "soc 67.0 °C not yet below soft exit 65 °C (limit 70 °C)",
        ),
        // Below the soft exit: here again.
        (63.0, "h-63", "local", "fits locally"),
        // Warming into the band from below does not spill yet...
        (68.0, "h-68", "local", "fits locally"),
        // ...reaching the soft limit does.
        (
            70.5,
            "h-70.5",
            "cloud-https",
            "soc 70.5 °C above soft limit 70 °C",
        ),
    ];
    for (t, id, route, reason) in steps {
        rig.set_temp(t);
        rig.client.send(id, json!({}), None);
        let a = rig.answer(id);
        assert_eq!(a.route(), route, "at {t} °C: {}", a.fin);
        assert!(a.reason().contains(reason), "at {t} °C: {}", a.fin);
        if route == "local" {
            assert_eq!(a.fin["usage"]["completion_tokens"], 8, "{}", a.fin);
        } else {
            assert_eq!(a.fin["provider"], "hf-inference", "{}", a.fin);
        }
    }
    let forwarded: Vec<String> = rig
        .router
        .requests()
        .iter()
        .map(|r| {
            r.body["messages"][0]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        forwarded,
        [
            "h-85: say hello",
            "h-77: say hello",
            "h-67: say hello",
            "h-70.5: say hello"
        ]
    );
    assert_eq!(rig.fresh_routing()["thermal_state"], "soft");

    // A burst while soft: auto requests spill, a local one and local-only ones run here,
    // each answered exactly once.
    rig.router
        .script((0..4).map(|i| fr::ok_stream("hf-inference", &[&format!("burst {i}")])));
    let burst = [
        ("b-auto-0", json!({})),
        ("b-private-0", json!({"privacy": "local-only"})),
        ("b-auto-1", json!({})),
        ("b-local", json!({"route": "local"})),
        ("b-auto-2", json!({"stream": false})),
        (
            "b-private-1",
            json!({"privacy": "local-only", "stream": false}),
        ),
        ("b-auto-3", json!({})),
    ];
    for (id, extra) in &burst {
        rig.client.send(id, extra.clone(), None);
    }
    for (id, extra) in &burst {
        let a = rig.answer(id);
        let want = if extra.get("privacy").is_some() || extra.get("route").is_some() {
            "local"
        } else {
            "cloud-https"
        };
        assert_eq!(a.route(), want, "{id}: {}", a.fin);
        assert!(a.fin["text"].is_string(), "{id}: {}", a.fin);
    }
    assert_eq!(rig.router.count(), 8);
    assert_eq!(rig.forwarded("b-private"), 0);
    assert_eq!(rig.forwarded("b-local"), 0);
    assert_eq!(rig.router.unused(), 0);
    rig.finish();
}

#[test]
fn a_heat_spike_between_requests_is_remembered() {
    let rig = start("");
    // The board heats past the hard limit while no request comes in...
    rig.set_temp(85.0);
    let routing = rig.fresh_routing();
    assert_eq!(routing["thermal_state"], "hard", "{routing}");
    // ...and cools below it, but not below its exit threshold: it is still hot, so a
    // request for the board waits rather than starting at once.
    rig.set_temp(77.0);
    rig.client.send("spike", json!({"route": "local"}), None);
    rig.until_log("waiting for the SoC to cool");
    assert!(
        !rig.client.has_final("spike"),
        "{:?}",
        rig.client.msgs_for("spike").last().map(Msg::json)
    );
    rig.set_temp(74.0);
    let a = rig.answer("spike");
    assert_eq!(a.route(), "local", "{}", a.fin);
    assert!(
        a.reason().contains(
            "route local: waiting for local capacity (soc 77.0 °C not yet below hard exit 75 °C"
        ),
        "{}",
        a.fin
    );
    assert_eq!(rig.fresh_routing()["thermal_state"], "soft");
    assert_eq!(rig.router.count(), 0);
    rig.finish();
}

#[test]
fn local_only_requests_never_leave_the_board() {
    // A short cool-down estimate, so that a local-only request with a few seconds' expiry
    // is held for the board to cool rather than refused at once.
    let rig = start("hard_cooldown_secs = 2");
    rig.set_temp(85.0);

    // Held for the board to cool, and its expiry passes first: refused, `expired`.
    rig.client
        .send("p-expiring", json!({"privacy": "local-only"}), Some(4));
    rig.until_log("waiting for the SoC to cool");
    // Cannot meet its deadline even if the board cooled now: refused at once, with why.
    rig.client
        .send("p-short", json!({"privacy": "local-only"}), Some(2));
    // No expiry: waits for the board to cool.
    rig.client
        .send("p-wait", json!({"privacy": "local-only"}), None);
    // Local-only and route cloud contradict each other.
    rig.client.send(
        "p-cloud",
        json!({"privacy": "local-only", "route": "cloud"}),
        None,
    );
    // Meanwhile an ordinary request spills.
    rig.router.script([fr::ok_stream("groq", &["Spilled"])]);
    rig.client.send("auto-hot", json!({}), None);

    let a = rig.answer("p-short");
    // No generation rate is measured yet, so admission does not refuse it up front on an
    // estimate (only a measured rate may); it waits here, never forwarded, until its expiry.
    assert_eq!(a.error_code(), "expired", "{}", a.fin);
    assert!(a.error_message().contains("expiry"), "{}", a.fin);
    let a = rig.answer("p-cloud");
    assert_eq!(a.error_code(), "invalid_request", "{}", a.fin);
    assert!(a.error_message().contains("local-only"), "{}", a.fin);
    let a = rig.answer("auto-hot");
    assert_eq!(
        (a.route(), a.fin["text"].as_str()),
        ("cloud-https", Some("Spilled"))
    );
    let a = rig.answer("p-expiring");
    assert_eq!(a.error_code(), "expired", "{}", a.fin);
    assert!(a.chunks.is_empty());
    assert!(
        !rig.client.has_final("p-wait"),
        "p-wait ran while the board was hot"
    );

    // Cooled: the waiting one runs here.
    rig.set_temp(60.0);
    let a = rig.answer("p-wait");
    assert_eq!(a.route(), "local", "{}", a.fin);
    assert!(a.reason().contains("privacy local-only"), "{}", a.fin);
    assert_eq!(a.fin["usage"]["completion_tokens"], 8, "{}", a.fin);

    assert_eq!(rig.router.count(), 1, "only auto-hot was forwarded");
    assert_eq!(rig.forwarded("auto-hot"), 1);
    assert_eq!(rig.forwarded("p-"), 0);
    rig.finish();
}

#[test]
fn cloud_failures_are_retried_or_open_the_circuit() {
    let rig = start("");
    rig.set_temp(72.0);

    // 429 with Retry-After, then a stream: one answer, two attempts a second apart.
    rig.router.script([
        fr::status(
            429,
            &[("retry-after", "1")],
            r#"{"error":"Rate limit reached"}"#,
        ),
        fr::ok_stream("together", &["Second ", "try"]),
    ]);
    rig.client.send("r-429", json!({}), None);
    let a = rig.answer("r-429");
    assert_eq!(a.route(), "cloud-https", "{}", a.fin);
    assert_eq!(
        (a.streamed(), a.fin["text"].as_str()),
        ("Second try".into(), Some("Second try"))
    );
    assert_eq!(a.fin["timings"]["attempts"], 2);
    let reqs = rig.router.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(1000),
        "Retry-After: 1 honoured: {gap:?}"
    );

    // 503 without Retry-After: backoff, then a stream.
    rig.router.script([
        fr::status(503, &[], r#"{"error":"Service unavailable"}"#),
        fr::ok_stream("sambanova", &["Third"]),
    ]);
    rig.client.send("r-503", json!({}), None);
    let a = rig.answer("r-503");
    assert_eq!(
        (a.route(), a.fin["provider"].as_str()),
        ("cloud-https", Some("sambanova"))
    );
    assert_eq!(a.fin["timings"]["attempts"], 2);
    assert_eq!(rig.router.count(), 4);

    // 402: credits exhausted. Not retried; the circuit opens and the request is served
    // here instead, saying why.
    rig.router.script([fr::status(
        402,
        &[],
        r#"{"error":"You have exceeded your monthly included credits"}"#,
    )]);
    rig.client.send("r-402", json!({}), None);
    let a = rig.answer("r-402");
    assert_eq!(a.route(), "local", "{}", a.fin);
    for want in [
        "soc 72.0 °C above soft limit 70 °C",
        "cloud failed",
        "credits exhausted (HTTP 402)",
    ] {
        assert!(a.reason().contains(want), "{want:?}: {}", a.fin);
    }
    assert_eq!(a.fin["usage"]["completion_tokens"], 8, "{}", a.fin);
    assert_eq!(a.streamed(), a.fin["text"].as_str().unwrap());
    assert_eq!(rig.router.count(), 5);
    let routing = rig.fresh_routing();
    let https = routing["cloud_https"].as_str().unwrap_or_default();
    assert!(https.contains("circuit open"), "{routing}");

    // With the circuit open, a hot auto request stays here without trying the router...
    rig.client.send("r-open", json!({}), None);
    let a = rig.answer("r-open");
    assert_eq!(a.route(), "local", "{}", a.fin);
    assert!(
        a.reason().contains("cloud unavailable") && a.reason().contains("circuit open"),
        "{}",
        a.fin
    );
    assert!(a.fin["text"].is_string(), "{}", a.fin);
    // ...and one that insists on the cloud is refused.
    rig.client.send("r-forced", json!({"route": "cloud"}), None);
    let a = rig.answer("r-forced");
    assert_eq!(a.error_code(), "cloud_unavailable", "{}", a.fin);
    assert!(a.error_message().contains("circuit open"), "{}", a.fin);
    assert_eq!(
        rig.router.count(),
        5,
        "nothing sent while the circuit is open"
    );
    rig.finish();
}

#[test]
fn a_stream_failing_mid_answer_ends_with_one_error_and_no_rerun() {
    let rig = start("");
    rig.set_temp(72.0);
    rig.router.script([
        fr::stream(
            "fireworks-ai",
            vec![
                fr::role(),
                fr::delta("Par"),
                fr::delta("tial"),
                fr::stream_error("Upstream provider overloaded"),
            ],
        ),
        // Stalls after one delta, longer than the idle timeout (500 ms).
        fr::stream(
            "fireworks-ai",
            vec![
                fr::role(),
                fr::delta("Stal"),
                Part::Sleep(Duration::from_secs(5)),
            ],
        ),
    ]);

    rig.client.send("m-error", json!({}), None);
    let a = rig.answer("m-error");
    assert_eq!(
        a.streamed(),
        "Partial",
        "the deltas forwarded before the error"
    );
    assert_eq!(a.error_code(), "cloud_error", "{}", a.fin);
    assert!(
        a.error_message().contains("Upstream provider overloaded"),
        "{}",
        a.fin
    );

    rig.client.send("m-stall", json!({}), None);
    let a = rig.answer("m-stall");
    assert_eq!(a.streamed(), "Stal");
    assert_eq!(a.error_code(), "timeout", "{}", a.fin);
    assert!(a.error_message().contains("stalled"), "{}", a.fin);
    assert_eq!(rig.router.count(), 2, "neither was retried");

    // A local rerun of either would be in the engine's queue ahead of this one: once this
    // is answered, nothing more can come for them.
    rig.client.send("after", json!({"route": "local"}), None);
    let a = rig.answer("after");
    assert_eq!(a.route(), "local", "{}", a.fin);
    // Chunks plus the final, and nothing else.
    for (id, replies) in [("m-error", 3), ("m-stall", 2)] {
        assert_eq!(
            rig.client.msgs_for(id).len(),
            replies,
            "{id}: nothing after its final"
        );
    }
    assert!(!rig.log().contains("serving here"), "{}", rig.log());
    rig.finish();
}

#[test]
fn short_memory_spills_and_plenty_runs_here_again() {
    let rig = start("");
    rig.router.script([fr::ok_stream("cerebras", &["Roomy"])]);
    rig.set_mem_available(64 << 20);
    rig.client.send("mem-short", json!({}), None);
    let a = rig.answer("mem-short");
    assert_eq!(a.route(), "cloud-https", "{}", a.fin);
    assert!(
        a.reason().contains("exceeds memory headroom 64.00 MiB"),
        "{}",
        a.fin
    );
    assert_eq!(a.fin["text"], "Roomy");

    rig.set_mem_available(6 << 30);
    rig.client.send("mem-ok", json!({}), None);
    let a = rig.answer("mem-ok");
    assert_eq!(a.route(), "local", "{}", a.fin);
    assert_eq!(rig.router.count(), 1);
    rig.finish();
}
