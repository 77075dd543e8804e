//! The MQTT cloud route end to end: an edge daemon on a hot board (a fake `/sys` + `/proc`
//! tree) spills a request to the cloud broker, where a worker daemon (`role = "worker"`,
//! shared subscription) serves it, and the answer comes back to the original requester
//! through the edge, marked `cloud-mqtt`. A `local-only` request never leaves the edge.
//! One mosquitto plays both the board's broker and the cloud broker.

mod mqtt_client;

use std::path::Path;
use std::time::Duration;

use mqtt_client::{Conn, Msg};
use spillway_e2e::{Mosquitto, Serve, TempDir, tiny_tekken_model};

/// A minimal `/sys` + `/proc` tree: one thermal zone at `millideg` and plenty of memory.
fn fake_fs(root: &Path, millideg: u32) {
    let zone = root.join("sys/class/thermal/thermal_zone0");
    std::fs::create_dir_all(&zone).unwrap();
    std::fs::write(zone.join("type"), "cpu-thermal\n").unwrap();
    std::fs::write(zone.join("temp"), format!("{millideg}\n")).unwrap();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::write(
        root.join("proc/meminfo"),
        "MemTotal:       16000000 kB\nMemAvailable:   12000000 kB\n",
    )
    .unwrap();
}

fn daemon_config(broker: &Mosquitto, device: &str, fs_root: &Path, extra: &str) -> String {
    format!(
        "[model]\npath = {:?}\n[engine]\nthreads = 1\ncontext = 1024\n[mqtt]\nbroker = {:?}\n\
         device = \"{device}\"\nkeep_alive_secs = 5\n{extra}\n",
        tiny_tekken_model().display().to_string(),
        broker.url(),
    )
    .replace(
        "[mqtt]",
        &format!(
            "[router]\nboard = \"generic\"\nfs_root = {:?}\nsample_ms = 100\n{}\n[mqtt]",
            fs_root.display().to_string(),
            if extra.contains("[upstream]") {
                "cloud_routes = [\"mqtt\"]"
            } else {
                ""
            }
        ),
    )
}

fn finals(msgs: &[Msg]) -> Vec<serde_json::Value> {
    msgs.iter()
        .map(Msg::json)
        .filter(|j| j["done"] == true)
        .collect()
}

#[test]
fn a_hot_edge_spills_over_mqtt_to_a_worker_and_keeps_local_only_requests() {
    let broker = Mosquitto::start();
    let hot = TempDir::new("upstream-hot");
    let cool = TempDir::new("upstream-cool");
    fake_fs(hot.path(), 90_000); // above the generic profile's hard limit (80 °C)
    fake_fs(cool.path(), 40_000);

    let watcher = Conn::v5(broker.port, "watcher", false);
    watcher.subscribe("spillway/edge1/status");
    watcher.subscribe("cloud/worker1/status");
    let worker = Serve::start(&daemon_config(
        &broker,
        "worker1",
        cool.path(),
        "topic_prefix = \"cloud\"\n[service]\nrole = \"worker\"",
    ));
    let edge = Serve::start(&daemon_config(
        &broker,
        "edge1",
        hot.path(),
        &format!(
            "[upstream]\nbroker = {:?}\ntopic = \"cloud/request\"\ntimeout_secs = 30",
            broker.url()
        ),
    ));
    // Both announce themselves, in either order (a message for the other topic must not be
    // dropped while waiting for one).
    let mut waiting = vec!["cloud/worker1/status", "spillway/edge1/status"];
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while !waiting.is_empty() {
        let Some(m) = watcher.next(end.saturating_duration_since(std::time::Instant::now())) else {
            panic!(
                "{waiting:?} never came online:\nworker:\n{}\nedge:\n{}",
                worker.log_text(),
                edge.log_text()
            );
        };
        if m.payload == b"online" {
            waiting.retain(|t| *t != m.topic);
        }
    }
    assert!(
        edge.wait_for_log("connected to the cloud broker", Duration::from_secs(10)),
        "{}",
        edge.log_text()
    );

    let c = Conn::v5(broker.port, "client", false);
    c.subscribe("replies/#");
    c.request(
        "spillway/edge1/request",
        r#"{"id":"spill-1","prompt":"Hello","max_tokens":8,"seed":3}"#,
        Some("replies/spill"),
        Some(b"corr-spill"),
        None,
    );
    let msgs = c.until_finals("replies/spill", 1, Duration::from_secs(30));
    let got = finals(&msgs);
    assert_eq!(got.len(), 1, "{msgs:?}\nedge:\n{}", edge.log_text());
    let fin = &got[0];
    assert_eq!(fin["id"], "spill-1");
    assert_eq!(fin["route"], "cloud-mqtt", "{fin}");
    let reason = fin["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("°C"),
        "the reason names the temperature: {reason}"
    );
    assert!(reason.contains("cloud worker"), "{reason}");
    assert!(fin["text"].is_string(), "{fin}");
    for m in &msgs {
        assert_eq!(m.correlation.as_deref(), Some(&b"corr-spill"[..]));
    }
    let chunks: Vec<u64> = msgs
        .iter()
        .map(Msg::json)
        .filter_map(|j| j["seq"].as_u64())
        .collect();
    assert_eq!(chunks, (0..chunks.len() as u64).collect::<Vec<_>>());
    assert!(
        worker.log_text().contains("spill-1"),
        "the worker served it:\n{}",
        worker.log_text()
    );

    // A local-only request on the hot board: never forwarded; with a 2 s expiry it cannot
    // wait for the SoC to cool, so it is refused with a reason.
    c.request(
        "spillway/edge1/request",
        r#"{"id":"private-1","prompt":"Secret","max_tokens":4,"privacy":"local-only"}"#,
        Some("replies/private"),
        None,
        Some(2),
    );
    let got = finals(&c.until_finals("replies/private", 1, Duration::from_secs(20)));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], "private-1");
    let code = got[0]["error"]["code"].as_str().unwrap_or_default();
    assert!(
        code == "deadline_exceeded" || code == "expired",
        "{}",
        got[0]
    );
    // Nothing more arrives for either request.
    assert!(
        c.next(Duration::from_millis(500)).is_none(),
        "no second final"
    );
    assert!(
        !worker.log_text().contains("private-1"),
        "a local-only request reached the worker:\n{}",
        worker.log_text()
    );

    // The board cools down: the same kind of request now runs on the edge.
    fake_fs(hot.path(), 40_000);
    std::thread::sleep(Duration::from_millis(400));
    c.request(
        "spillway/edge1/request",
        r#"{"id":"local-1","prompt":"Hello","max_tokens":4}"#,
        Some("replies/local"),
        None,
        None,
    );
    let got = finals(&c.until_finals("replies/local", 1, Duration::from_secs(20)));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["route"], "local", "{}", got[0]);
    assert!(!worker.log_text().contains("local-1"));
}

#[test]
fn above_the_soft_limit_local_generation_sheds_threads() {
    let broker = Mosquitto::start();
    let fs = TempDir::new("soft-hot");
    fake_fs(fs.path(), 74_000); // generic profile: soft from 70 °C, hard from 80 °C
    let watcher = Conn::v5(broker.port, "watcher", false);
    watcher.subscribe("spillway/warm1/status");
    let serve = Serve::start(
        &daemon_config(&broker, "warm1", fs.path(), "").replace("threads = 1", "threads = 2"),
    );
    assert!(
        watcher.wait_for("spillway/warm1/status", "online", Duration::from_secs(20)),
        "{}",
        serve.log_text()
    );
    let c = Conn::v5(broker.port, "client", false);
    c.subscribe("replies/#");
    c.request(
        "spillway/warm1/request",
        r#"{"id":"warm-1","prompt":"Hello","max_tokens":4}"#,
        Some("replies/warm"),
        None,
        None,
    );
    let got = finals(&c.until_finals("replies/warm", 1, Duration::from_secs(20)));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["route"], "local", "{}", got[0]);
    let reason = got[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("1 of 2 threads"), "{reason}");
    assert!(
        serve
            .log_text()
            .contains("local generation now on 1 of 2 threads"),
        "{}",
        serve.log_text()
    );

    // Cooled below the soft exit threshold (65 °C): back to every thread.
    fake_fs(fs.path(), 50_000);
    std::thread::sleep(Duration::from_millis(400));
    c.request(
        "spillway/warm1/request",
        r#"{"id":"warm-2","prompt":"Hello","max_tokens":4}"#,
        Some("replies/warm2"),
        None,
        None,
    );
    let got = finals(&c.until_finals("replies/warm2", 1, Duration::from_secs(20)));
    assert_eq!(got.len(), 1);
    assert!(
        serve.wait_for_log(
            "local generation now on 2 of 2 threads",
            Duration::from_secs(5)
        ),
        "{}",
        serve.log_text()
    );
}
