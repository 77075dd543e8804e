//! `spillway serve` against Debian's mosquitto on a free loopback port, with a tiny
//! Tekken-vocabulary model: MQTT 5 request/response with correlation data, MQTT 3.1.1 with
//! `reply_to`, chunks in order then one final, redeliveries answered once, bad input
//! answered with errors, expiry, a full queue, a broker killed and restarted while a
//! request waits, and SIGTERM mid-generation.

mod mqtt_client;

use std::time::Duration;

use mqtt_client::{Conn, Msg};
use spillway_e2e::{Mosquitto, Serve, tiny_tekken_model};

const DEVICE: &str = "board7";

fn config(broker: &Mosquitto, engine: &str, extra: &str) -> String {
    format!(
        "[model]\npath = {:?}\n[engine]\nthreads = 1\ncontext = 1024\n{engine}\n[mqtt]\nbroker = {:?}\ndevice = \"{DEVICE}\"\nkeep_alive_secs = 5\n[service]\ntelemetry_secs = 1\n{extra}\n",
        tiny_tekken_model().display().to_string(),
        broker.url()
    )
}

fn request_topic() -> String {
    format!("spillway/{DEVICE}/request")
}

/// Starts broker and daemon (`extra`: more of `[service]`) and waits until the daemon
/// announces itself online.
fn start(extra: &str) -> (Mosquitto, Serve, Conn) {
    start_with("", extra)
}

/// [`start`], with more of `[engine]` too.
fn start_with(engine: &str, extra: &str) -> (Mosquitto, Serve, Conn) {
    let broker = Mosquitto::start();
    let watcher = Conn::v5(broker.port, "watcher", false);
    watcher.subscribe(&format!("spillway/{DEVICE}/status"));
    let serve = Serve::start(&config(&broker, engine, extra));
    assert!(
        watcher.wait_for(
            &format!("spillway/{DEVICE}/status"),
            "online",
            Duration::from_secs(20)
        ),
        "the daemon never came online:\n{}",
        serve.log_text()
    );
    (broker, serve, watcher)
}

fn finals(msgs: &[Msg]) -> Vec<serde_json::Value> {
    msgs.iter()
        .map(Msg::json)
        .filter(|j| j["done"] == true)
        .collect()
}

#[test]
fn mqtt5_request_streams_chunks_then_one_final_with_correlation_data() {
    let (broker, serve, _w) = start("");
    let c = Conn::v5(broker.port, "client5", false);
    c.subscribe("replies/c5");
    c.request(
        &request_topic(),
        r#"{"id":"q1","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello"}],"max_tokens":12,"seed":7}"#,
        Some("replies/c5"),
        Some(b"corr-42"),
        None,
    );
    let msgs = c.until_finals("replies/c5", 1, Duration::from_secs(30));
    let last = msgs
        .last()
        .unwrap_or_else(|| panic!("no reply:\n{}", serve.log_text()));
    let done = last.json();
    assert_eq!(done["done"], true);
    assert_eq!(done["id"], "q1");
    assert_eq!(done["route"], "local");
    assert_eq!(done["finish_reason"], "length");
    assert_eq!(done["usage"]["completion_tokens"], 12);
    assert!(done["timings"]["generation_tokens_per_s"].as_f64().unwrap() > 0.0);
    let chunks: Vec<serde_json::Value> = msgs[..msgs.len() - 1].iter().map(Msg::json).collect();
    assert!(!chunks.is_empty(), "streamed chunks come first");
    for (i, ch) in chunks.iter().enumerate() {
        assert_eq!(ch["seq"], i as u64, "chunks arrive in order");
        assert_eq!(ch["id"], "q1");
    }
    let streamed: String = chunks
        .iter()
        .map(|c| c["delta"].as_str().unwrap())
        .collect();
    assert_eq!(
        streamed,
        done["text"].as_str().unwrap(),
        "the chunks add up to the final text"
    );
    for m in &msgs {
        assert_eq!(
            m.correlation.as_deref(),
            Some(&b"corr-42"[..]),
            "correlation data echoed on every reply"
        );
    }
    assert!(
        c.next(Duration::from_millis(500)).is_none(),
        "nothing after the final"
    );
}

#[test]
fn mqtt311_clients_use_reply_to() {
    let (broker, _serve, _w) = start("");
    let c = Conn::v311(broker.port, "client311");
    c.subscribe("replies/old");
    c.request(
        &request_topic(),
        r#"{"id":"old-1","prompt":"Hi","max_tokens":5,"stream":false,"reply_to":"replies/old"}"#,
        None,
        None,
        None,
    );
    let msgs = c.until_finals("replies/old", 1, Duration::from_secs(30));
    assert_eq!(msgs.len(), 1, "stream=false: just the final");
    let done = msgs[0].json();
    assert_eq!(
        (
            done["id"].as_str(),
            done["usage"]["completion_tokens"].as_u64()
        ),
        (Some("old-1"), Some(5))
    );
}

#[test]
fn a_resent_request_runs_once_and_its_final_is_replayed() {
    let (broker, _serve, _w) = start("");
    let c = Conn::v5(broker.port, "dup", false);
    c.subscribe("replies/dup");
    let req = r#"{"id":"same","prompt":"Hi","max_tokens":4,"stream":false}"#;
    for _ in 0..3 {
        c.request(&request_topic(), req, Some("replies/dup"), Some(b"x"), None);
    }
    // Each of the three is answered: the first by its run; a resend that arrives while it
    // runs is attached to it (no reply of its own), one that arrives after its final gets
    // that final again, marked replayed. Whichever way the timing falls, it ran once.
    let msgs = c.until_finals("replies/dup", 3, Duration::from_secs(8));
    let all = finals(&msgs);
    assert!(!all.is_empty(), "no final: {msgs:?}");
    let runs: Vec<_> = all.iter().filter(|f| f.get("replayed").is_none()).collect();
    assert_eq!(runs.len(), 1, "three sends, one run: {msgs:?}");
    for f in &all {
        assert_eq!(
            f["text"], runs[0]["text"],
            "a replay is the same final: {f}"
        );
    }
    // Sent again now that it is answered: the final again, replayed, without a new run.
    c.request(&request_topic(), req, Some("replies/dup"), Some(b"x"), None);
    let again = finals(&c.until_finals("replies/dup", 1, Duration::from_secs(8)));
    let last = again.last().expect("a final");
    assert_eq!(last["replayed"], true, "{last}");
    assert_eq!(last["text"], runs[0]["text"]);
    // Another correlation is another request, even with the same id.
    c.request(&request_topic(), req, Some("replies/dup"), Some(b"y"), None);
    let other = finals(&c.until_finals("replies/dup", 1, Duration::from_secs(20)));
    assert_eq!(other.len(), 1, "{other:?}");
    assert!(other[0].get("replayed").is_none(), "{other:?}");
}

#[test]
fn bad_input_gets_error_replies_and_disturbs_nothing() {
    let (broker, _serve, _w) = start("max_request_bytes = 2048");
    let c = Conn::v5(broker.port, "bad", false);
    c.subscribe("replies/bad");
    let big = format!(r#"{{"id":"big","prompt":"{}"}}"#, "word ".repeat(1000));
    let cases: Vec<(&str, String)> = vec![
        ("invalid_request", "this is not json".to_string()),
        ("invalid_request", r#"{"id":"t","prompt":42}"#.to_string()),
        (
            "invalid_request",
            r#"{"id":"u","prompt":"x","temprature":1}"#.to_string(),
        ),
        (
            "invalid_request",
            r#"{"id":"v","messages":[{"role":"assistant","content":"x"}]}"#.to_string(),
        ),
        ("too_large", big),
    ];
    for (_, payload) in &cases {
        c.request(&request_topic(), payload, Some("replies/bad"), None, None);
    }
    // Invalid UTF-8 through the raw client.
    if let mqtt_client::Client::V5(raw) = &c.client {
        let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
            response_topic: Some("replies/bad".into()),
            ..Default::default()
        };
        raw.publish_with_properties(
            request_topic(),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            vec![0xff, 0xfe, b'{'],
            props,
        )
        .unwrap();
    }
    // And a good request after them all still works.
    c.request(
        &request_topic(),
        r#"{"id":"good","prompt":"Hi","max_tokens":3}"#,
        Some("replies/bad"),
        None,
        None,
    );
    let got = finals(&c.until_finals("replies/bad", cases.len() + 2, Duration::from_secs(30)));
    assert_eq!(got.len(), cases.len() + 2, "{got:?}");
    for (i, (code, _)) in cases.iter().enumerate() {
        assert_eq!(got[i]["error"]["code"], *code, "case {i}: {}", got[i]);
        assert!(got[i]["error"]["message"].as_str().unwrap().len() > 10);
    }
    assert_eq!(
        got[cases.len()]["error"]["code"],
        "invalid_request",
        "invalid UTF-8"
    );
    assert_eq!(got[cases.len() + 1]["id"], "good");
    assert!(got[cases.len() + 1]["text"].is_string());
}

#[test]
fn an_expired_request_is_not_run_and_a_full_queue_answers_busy() {
    // One session slot: one request runs at a time.
    let (broker, _serve, _w) = start_with("sessions = 1", "queue = 1");
    let c = Conn::v5(broker.port, "exp", false);
    c.subscribe("replies/exp");
    // A long request occupies the engine (1010 tokens take 2 s or more on one thread)...
    c.request(
        &request_topic(),
        r#"{"id":"long","prompt":"Tell me everything","max_tokens":1010,"stream":false}"#,
        Some("replies/exp"),
        None,
        None,
    );
    std::thread::sleep(Duration::from_millis(300));
    // ...so this one cannot start within its one-second expiry: the router sees the wait
    // ahead and refuses it at once (`deadline_exceeded`), or it waits in the queue and is
    // answered `expired` at its expiry, while the long one still runs...
    c.request(
        &request_topic(),
        r#"{"id":"short-lived","prompt":"Hi","max_tokens":2}"#,
        Some("replies/exp"),
        None,
        Some(1),
    );
    let mut got = finals(&c.until_finals("replies/exp", 1, Duration::from_secs(30)));
    assert_eq!(got.len(), 1, "no final for short-lived");
    assert_eq!(
        got[0]["id"], "short-lived",
        "answered at its expiry, before the long request ends: {got:?}"
    );
    let code = got[0]["error"]["code"].clone();
    assert!(code == "deadline_exceeded" || code == "expired", "{got:?}");
    // ...its place is free again: this one fills the queue (capacity 1)...
    c.request(
        &request_topic(),
        r#"{"id":"filler","prompt":"Hi","max_tokens":2}"#,
        Some("replies/exp"),
        None,
        None,
    );
    std::thread::sleep(Duration::from_millis(100));
    // ...and with the queue full, this one is refused at once.
    c.request(
        &request_topic(),
        r#"{"id":"too-many","prompt":"Hi","max_tokens":2}"#,
        Some("replies/exp"),
        None,
        None,
    );
    got.extend(finals(&c.until_finals(
        "replies/exp",
        3,
        Duration::from_secs(60),
    )));
    let by_id = |id: &str| {
        got.iter()
            .find(|j| j["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no final for {id}: {got:?}"))
    };
    assert_eq!(by_id("too-many")["error"]["code"], "busy", "{got:?}");
    assert!(by_id("long")["text"].is_string(), "{got:?}");
    assert!(by_id("filler")["text"].is_string(), "{got:?}");
    assert_eq!(got.len(), 4, "one final each: {got:?}");
}

#[test]
fn a_queued_request_survives_a_broker_restart() {
    let (mut broker, serve, _w) = start("queue = 4");
    let c = Conn::v5(broker.port, "survivor", true);
    c.subscribe("replies/restart/#");
    let subscribed = std::time::SystemTime::now();
    c.request(
        &request_topic(),
        r#"{"id":"running","prompt":"Tell me a story","max_tokens":1000}"#,
        Some("replies/restart/a"),
        None,
        None,
    );
    c.request(
        &request_topic(),
        r#"{"id":"queued","prompt":"Hi","max_tokens":8,"stream":false}"#,
        Some("replies/restart/b"),
        None,
        None,
    );
    // Wait until generation is under way (the first chunk), then take the broker away.
    let first = c
        .next(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no chunk:\n{}", serve.log_text()));
    assert_eq!(first.json()["id"], "running");
    // The sessions (ours and the daemon's) must be on disk, or the restarted broker has
    // forgotten both: a filesystem's timestamps may be coarse, hence the second.
    assert!(
        broker.wait_for_autosave(subscribed + Duration::from_secs(1), Duration::from_secs(10)),
        "mosquitto never saved its sessions"
    );
    broker.kill();
    std::thread::sleep(Duration::from_secs(1));
    broker.restart();
    let got = finals(&c.until_finals("replies/restart", 2, Duration::from_secs(60)));
    let ids: Vec<&str> = got.iter().filter_map(|j| j["id"].as_str()).collect();
    assert!(
        ids.contains(&"queued"),
        "the queued request got its answer after the restart: {got:?}\n{}",
        serve.log_text()
    );
}

#[test]
fn sigterm_mid_generation_gives_a_final_and_offline() {
    let (broker, mut serve, watcher) = start("shutdown_deadline_secs = 1");
    let c = Conn::v5(broker.port, "term", false);
    c.subscribe("replies/term");
    c.request(
        &request_topic(),
        r#"{"id":"cut","prompt":"Go on forever","max_tokens":1000}"#,
        Some("replies/term"),
        None,
        None,
    );
    let first = c.next(Duration::from_secs(20)).expect("generation started");
    assert_eq!(first.json()["seq"], 0, "streaming: {}", first.json());
    let status = serve.terminate();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        serve.log_text()
    );
    let got = finals(&c.until_finals("replies/term", 1, Duration::from_secs(10)));
    assert_eq!(
        got.len(),
        1,
        "one final for the cut request\n{}",
        serve.log_text()
    );
    assert!(
        got[0]["error"]["code"] == "shutting_down" || got[0]["text"].is_string(),
        "a final reply or an error reply: {}",
        got[0]
    );
    assert!(watcher.wait_for(
        &format!("spillway/{DEVICE}/status"),
        "offline",
        Duration::from_secs(5)
    ));
    // Retained: a newcomer sees it too.
    let late = Conn::v5(broker.port, "late", false);
    late.subscribe(&format!("spillway/{DEVICE}/status"));
    let m = late
        .next(Duration::from_secs(5))
        .expect("the retained status");
    assert_eq!((m.payload.as_slice(), m.retain), (&b"offline"[..], true));
}

#[test]
fn telemetry_reports_state() {
    let (broker, _serve, _w) = start("");
    let c = Conn::v5(broker.port, "tele", false);
    c.subscribe(&format!("spillway/{DEVICE}/telemetry"));
    let m = c
        .next(Duration::from_secs(10))
        .expect("telemetry within its interval");
    let t = m.json();
    assert_eq!(t["device"], DEVICE);
    assert!(
        t["queue_depth"].is_u64() && t["memory"]["rss_bytes"].is_u64(),
        "{t}"
    );
}
