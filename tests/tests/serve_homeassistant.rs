//! `spillway serve` with Home Assistant discovery on, against Debian's mosquitto and a fake
//! board (`--fs-root`): the six sensor configs arrive retained on
//! `homeassistant/sensor/<node>/<object>/config` with every field Home Assistant reads,
//! each `value_template` picks a field the telemetry really carries, and they come again
//! when Home Assistant publishes `online` to `homeassistant/status` (which is not taken for
//! a request).

mod mqtt_client;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mqtt_client::{Conn, Msg};
use spillway_e2e::fake_fs::FakeFs;
use spillway_e2e::{Mosquitto, Serve, tiny_tekken_model};

const DEVICE: &str = "kitchen.pi";
const NODE: &str = "kitchen_pi";
const OBJECTS: [&str; 6] = [
    "soc_temperature",
    "thermal_state",
    "queue_depth",
    "tokens_per_s",
    "last_route",
    "requests_served",
];

fn config(broker: &Mosquitto) -> String {
    format!(
        "[model]\npath = {:?}\n[engine]\nthreads = 1\ncontext = 1024\n[mqtt]\nbroker = {:?}\n\
         device = \"{DEVICE}\"\nkeep_alive_secs = 5\n[service]\ntelemetry_secs = 1\n\
         [router]\nsample_ms = 100\n[homeassistant]\ndiscovery = true\n",
        tiny_tekken_model().display().to_string(),
        broker.url()
    )
}

/// The discovery configs that arrive within `timeout` (all six expected), by object id;
/// other messages (telemetry, status) are kept in `others`.
fn collect_configs(c: &Conn, timeout: Duration, others: &mut Vec<Msg>) -> BTreeMap<String, Msg> {
    let end = Instant::now() + timeout;
    let mut configs = BTreeMap::new();
    while configs.len() < OBJECTS.len() {
        let Some(m) = c.next(end.saturating_duration_since(Instant::now())) else {
            break;
        };
        let parts: Vec<&str> = m.topic.split('/').collect();
        if let ["homeassistant", "sensor", node, object, "config"] = parts[..] {
            assert_eq!(node, NODE, "node id from the device name, sanitised");
            configs.insert(object.to_string(), m);
        } else {
            others.push(m);
        }
    }
    configs
}

/// Follows a `{{ value_json.a.b }}` template through a telemetry message.
fn template_value<'a>(template: &str, telemetry: &'a serde_json::Value) -> &'a serde_json::Value {
    let path = template
        .strip_prefix("{{ value_json.")
        .and_then(|t| t.strip_suffix(" }}"))
        .unwrap_or_else(|| panic!("unexpected template {template:?}"));
    let mut v = telemetry;
    for key in path.split('.') {
        v = v
            .get(key)
            .unwrap_or_else(|| panic!("the telemetry has no {path} (at {key}): {telemetry}"));
    }
    v
}

/// Checks every config's fields; `retained`: they came from the broker's retained store
/// (a live delivery to a subscriber carries no retain flag).
fn check_configs(configs: &BTreeMap<String, Msg>, telemetry: &serde_json::Value, retained: bool) {
    let names: Vec<&str> = configs.keys().map(String::as_str).collect();
    let mut want = OBJECTS.to_vec();
    want.sort_unstable();
    assert_eq!(names, want, "one config per sensor");
    for (object, m) in configs {
        assert!(m.retain || !retained, "{object}: configs are retained");
        let p = m.json();
        assert_eq!(
            p["name"].as_str().map(str::is_empty),
            Some(false),
            "{object}"
        );
        assert_eq!(p["unique_id"], format!("spillway_{NODE}_{object}"));
        assert_eq!(
            p["default_entity_id"],
            format!("sensor.spillway_{NODE}_{object}")
        );
        assert_eq!(p["state_topic"], format!("spillway/{DEVICE}/telemetry"));
        assert_eq!(p["availability_topic"], format!("spillway/{DEVICE}/status"));
        assert_eq!(p["payload_available"], "online");
        assert_eq!(p["payload_not_available"], "offline");
        let d = &p["device"];
        assert_eq!(
            d["identifiers"],
            serde_json::json!([format!("spillway_{NODE}")])
        );
        assert_eq!(d["name"], DEVICE);
        assert_eq!(d["manufacturer"], "Spillway");
        // The fake board's device-tree model.
        assert_eq!(d["model"], "Spillway e2e test board (fake)");
        assert_eq!(d["sw_version"], env!("CARGO_PKG_VERSION"));
        // The template picks a field the telemetry carries.
        let template = p["value_template"].as_str().expect("a value_template");
        let _ = template_value(template, telemetry);
    }
    let t = configs["soc_temperature"].json();
    assert_eq!(
        (
            &t["device_class"],
            &t["unit_of_measurement"],
            &t["state_class"]
        ),
        (
            &serde_json::json!("temperature"),
            &serde_json::json!("°C"),
            &serde_json::json!("measurement")
        )
    );
    let temp = template_value(t["value_template"].as_str().unwrap(), telemetry);
    assert_eq!(temp.as_f64(), Some(47.5), "the fake board's temperature");
    let s = configs["thermal_state"].json();
    assert_eq!(s["device_class"], "enum");
    assert_eq!(s["options"], serde_json::json!(["normal", "soft", "hard"]));
    assert_eq!(
        template_value(s["value_template"].as_str().unwrap(), telemetry),
        "normal"
    );
    assert_eq!(configs["queue_depth"].json()["state_class"], "measurement");
    assert_eq!(configs["tokens_per_s"].json()["state_class"], "measurement");
    assert_eq!(
        configs["requests_served"].json()["state_class"],
        "total_increasing"
    );
}

/// The next telemetry message in `msgs`, else from `c` within `timeout`.
fn telemetry(c: &Conn, msgs: &[Msg], timeout: Duration) -> serde_json::Value {
    let topic = format!("spillway/{DEVICE}/telemetry");
    if let Some(m) = msgs.iter().rev().find(|m| m.topic == topic) {
        return m.json();
    }
    let end = Instant::now() + timeout;
    while let Some(m) = c.next(end.saturating_duration_since(Instant::now())) {
        if m.topic == topic {
            return m.json();
        }
    }
    panic!("no telemetry within {timeout:?}");
}

#[test]
fn discovery_configs_on_connect_and_again_when_home_assistant_comes_online() {
    let fs = FakeFs::new();
    fs.set_temp_c(47.5);
    let broker = Mosquitto::start();
    let ha = Conn::v5(broker.port, "home-assistant", false);
    ha.subscribe("homeassistant/#");
    ha.subscribe(&format!("spillway/{DEVICE}/#"));
    let serve = Serve::start_with_args(
        &config(&broker),
        &[
            "--fs-root",
            fs.root().to_str().unwrap(),
            "--board",
            "generic",
        ],
    );

    let mut others = Vec::new();
    let configs = collect_configs(&ha, Duration::from_secs(30), &mut others);
    assert_eq!(
        configs.len(),
        OBJECTS.len(),
        "the discovery configs did not all arrive: {:?}\n{}",
        configs.keys().collect::<Vec<_>>(),
        serve.log_text()
    );
    let t = telemetry(&ha, &others, Duration::from_secs(10));
    check_configs(&configs, &t, false);
    // The broker kept them: a client that subscribes now gets them, marked retained.
    let late = Conn::v5(broker.port, "late-subscriber", false);
    late.subscribe("homeassistant/#");
    let kept = collect_configs(&late, Duration::from_secs(5), &mut Vec::new());
    check_configs(&kept, &t, true);

    // A request, so that last_route and requests_served have something to say.
    let client = Conn::v5(broker.port, "asker", false);
    client.subscribe("replies/asker");
    client.request(
        &format!("spillway/{DEVICE}/request"),
        r#"{"id":"ha-1","prompt":"Hi","max_tokens":4,"stream":false}"#,
        Some("replies/asker"),
        Some(b"c1"),
        None,
    );
    let finals = client.until_finals("replies/asker", 1, Duration::from_secs(30));
    assert_eq!(
        finals.last().map(|m| m.json()["route"].clone()),
        Some(serde_json::json!("local")),
        "no answer:\n{}",
        serve.log_text()
    );
    // Telemetry from after the answer (one a second) says so.
    let end = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let t = telemetry(&ha, &[], Duration::from_secs(5));
        if t["requests_served"] == 1 || Instant::now() > end {
            break t;
        }
    };
    let served = &configs["requests_served"].json()["value_template"];
    assert_eq!(template_value(served.as_str().unwrap(), &after), 1);
    let last = &configs["last_route"].json()["value_template"];
    assert_eq!(template_value(last.as_str().unwrap(), &after), "local");

    // Home Assistant restarts: its birth message brings every config again, and is not
    // answered as a request (no error reply anywhere, the daemon stays up).
    ha.request("homeassistant/status", "online", None, None, None);
    let mut others = Vec::new();
    let again = collect_configs(&ha, Duration::from_secs(10), &mut others);
    assert_eq!(
        again.len(),
        OBJECTS.len(),
        "the configs did not come again after `online`: {:?}\n{}",
        again.keys().collect::<Vec<_>>(),
        serve.log_text()
    );
    assert!(
        serve.wait_for_log("Home Assistant is online", Duration::from_secs(5)),
        "{}",
        serve.log_text()
    );
    // Anything else on its status topic is acknowledged and ignored.
    ha.request("homeassistant/status", "offline", None, None, None);
    let mut others = Vec::new();
    let none = collect_configs(&ha, Duration::from_secs(3), &mut others);
    assert!(none.is_empty(), "configs again after `offline`: {none:?}");
    // Neither message was taken for a request: the one request is all the counters know.
    let t = telemetry(&ha, &[], Duration::from_secs(5));
    check_configs(&again, &t, false);
    assert_eq!(
        t["requests"],
        serde_json::json!({"local": {"ok": 1}}),
        "Home Assistant's status was counted as a request"
    );
}
