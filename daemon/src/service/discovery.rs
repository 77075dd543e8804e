//! Home Assistant MQTT discovery (`[homeassistant] discovery = true`): the board appears
//! in Home Assistant as one device with six sensors, each configured by one retained
//! message on `<prefix>/sensor/<node_id>/<object_id>/config`:
//!
//! | object id | name | from the telemetry | Home Assistant class |
//! |---|---|---|---|
//! | `soc_temperature` | SoC temperature | `temperature_c` | `temperature`, °C, `measurement` |
//! | `thermal_state` | Thermal state | `routing.thermal_state` | `enum` (`normal`, `soft`, `hard`) |
//! | `queue_depth` | Queue depth | `queue_depth` | `measurement` |
//! | `tokens_per_s` | Generation rate | `tokens_per_s` | tokens/s, `measurement` |
//! | `last_route` | Last route | `last_route` | text |
//! | `requests_served` | Requests served | `requests_served` | `total_increasing` |
//!
//! Every sensor reads the daemon's telemetry topic (`value_template` picks its field) and
//! is available while the daemon's retained status topic says `online` (its last will
//! says `offline`). `node_id` is the device name with anything outside `[a-zA-Z0-9_-]`
//! replaced by `_`. Entity ids are suggested with `default_entity_id`
//! (`sensor.spillway_<node>_<object id>`), which replaced `object_id` in Home Assistant
//! 2025.10.
//!
//! The MQTT front end publishes them (QoS 1, retained) after every connection and again
//! whenever Home Assistant publishes `online` to `<prefix>/status` (its birth message,
//! after a restart), as Home Assistant's documentation asks.

use serde_json::{Value, json};

/// What the discovery configs are made of.
#[derive(Clone, Debug, PartialEq)]
pub struct Board {
    /// Home Assistant's discovery prefix (`homeassistant.prefix`).
    pub prefix: String,
    /// The device name (`mqtt.device`, or the hostname).
    pub device: String,
    /// The daemon's telemetry topic (the sensors' state topic).
    pub telemetry_topic: String,
    /// The daemon's retained `online`/`offline` status topic.
    pub status_topic: String,
    /// The hardware, e.g. `Raspberry Pi 5 Model B Rev 1.0` (the device tree's model, else
    /// the board profile's description).
    pub model: String,
    /// The daemon's version.
    pub sw_version: String,
}

/// One discovery config: its topic and its JSON payload.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscoveryConfig {
    pub topic: String,
    pub payload: Value,
}

/// One sensor's own fields.
struct Sensor {
    object_id: &'static str,
    name: &'static str,
    /// The telemetry field, as a Jinja path under `value_json`.
    field: &'static str,
    /// Fields beyond the common ones (`device_class`, `unit_of_measurement`, ...).
    extra: fn() -> Value,
}

const SENSORS: [Sensor; 6] = [
    Sensor {
        object_id: "soc_temperature",
        name: "SoC temperature",
        field: "temperature_c",
        extra: || {
            json!({
                "device_class": "temperature",
                "unit_of_measurement": "°C",
                "state_class": "measurement",
                "suggested_display_precision": 1,
            })
        },
    },
    Sensor {
        object_id: "thermal_state",
        name: "Thermal state",
        field: "routing.thermal_state",
        extra: || {
            json!({
                "device_class": "enum",
                "options": ["normal", "soft", "hard"],
                "icon": "mdi:thermometer-alert",
            })
        },
    },
    Sensor {
        object_id: "queue_depth",
        name: "Queue depth",
        field: "queue_depth",
        extra: || json!({"state_class": "measurement", "icon": "mdi:tray-full"}),
    },
    Sensor {
        object_id: "tokens_per_s",
        name: "Generation rate",
        field: "tokens_per_s",
        extra: || {
            json!({
                "unit_of_measurement": "tokens/s",
                "state_class": "measurement",
                "suggested_display_precision": 1,
                "icon": "mdi:speedometer",
            })
        },
    },
    Sensor {
        object_id: "last_route",
        name: "Last route",
        field: "last_route",
        extra: || json!({"icon": "mdi:call-split"}),
    },
    Sensor {
        object_id: "requests_served",
        name: "Requests served",
        field: "requests_served",
        extra: || json!({"state_class": "total_increasing", "icon": "mdi:counter"}),
    },
];

/// The device name as a discovery topic's `node_id`: `[a-zA-Z0-9_-]` kept, anything else
/// `_`.
pub fn node_id(device: &str) -> String {
    device
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An entity id's object part: lowercase `[a-z0-9_]`.
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Every sensor's discovery config.
pub fn configs(board: &Board) -> Vec<DiscoveryConfig> {
    let node = node_id(&board.device);
    let device = json!({
        "identifiers": [format!("spillway_{node}")],
        "name": board.device,
        "manufacturer": "Spillway",
        "model": board.model,
        "sw_version": board.sw_version,
    });
    let origin = json!({
        "name": "spillway",
        "sw_version": board.sw_version,
        "support_url": env!("CARGO_PKG_REPOSITORY"),
    });
    SENSORS
        .iter()
        .map(|s| {
            let mut payload = json!({
                "name": s.name,
                "unique_id": format!("spillway_{node}_{}", s.object_id),
                "default_entity_id": format!("sensor.spillway_{}_{}", slug(&node), s.object_id),
                "state_topic": board.telemetry_topic,
                "value_template": format!("{{{{ value_json.{} }}}}", s.field),
                "availability_topic": board.status_topic,
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": device,
                "origin": origin,
            });
            if let (Value::Object(p), Value::Object(extra)) = (&mut payload, (s.extra)()) {
                p.extend(extra);
            }
            DiscoveryConfig {
                topic: format!("{}/sensor/{node}/{}/config", board.prefix, s.object_id),
                payload,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> Board {
        Board {
            prefix: "homeassistant".into(),
            device: "pi5.kitchen".into(),
            telemetry_topic: "spillway/pi5.kitchen/telemetry".into(),
            status_topic: "spillway/pi5.kitchen/status".into(),
            model: "Raspberry Pi 5 Model B Rev 1.0".into(),
            sw_version: "0.1.0".into(),
        }
    }

    fn by_object(configs: &[DiscoveryConfig], object: &str) -> Value {
        configs
            .iter()
            .find(|c| c.topic.ends_with(&format!("/{object}/config")))
            .unwrap_or_else(|| panic!("no {object}"))
            .payload
            .clone()
    }

    #[test]
    fn node_ids_keep_only_what_home_assistant_allows() {
        assert_eq!(node_id("board7"), "board7");
        assert_eq!(node_id("pi5.kitchen"), "pi5_kitchen");
        assert_eq!(node_id("Edge-01_a"), "Edge-01_a");
        assert_eq!(node_id("dépôt 2"), "d_p_t_2");
        assert_eq!(slug("Edge-01_a"), "edge_01_a");
    }

    #[test]
    fn one_config_per_sensor_on_its_topic() {
        let c = configs(&board());
        let topics: Vec<&str> = c.iter().map(|c| c.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/sensor/pi5_kitchen/soc_temperature/config",
                "homeassistant/sensor/pi5_kitchen/thermal_state/config",
                "homeassistant/sensor/pi5_kitchen/queue_depth/config",
                "homeassistant/sensor/pi5_kitchen/tokens_per_s/config",
                "homeassistant/sensor/pi5_kitchen/last_route/config",
                "homeassistant/sensor/pi5_kitchen/requests_served/config",
            ]
        );
        let other = configs(&Board {
            prefix: "ha/disc".into(),
            ..board()
        });
        assert_eq!(
            other[0].topic,
            "ha/disc/sensor/pi5_kitchen/soc_temperature/config"
        );
    }

    #[test]
    fn common_fields() {
        let c = configs(&board());
        let mut unique = std::collections::BTreeSet::new();
        for config in &c {
            let p = &config.payload;
            let object = config.topic.split('/').nth(3).unwrap();
            assert_eq!(p["unique_id"], format!("spillway_pi5_kitchen_{object}"));
            assert!(
                unique.insert(p["unique_id"].to_string()),
                "unique ids differ"
            );
            assert_eq!(
                p["default_entity_id"],
                format!("sensor.spillway_pi5_kitchen_{object}")
            );
            assert!(
                p.get("object_id").is_none(),
                "object_id is the deprecated field"
            );
            assert_eq!(p["state_topic"], "spillway/pi5.kitchen/telemetry");
            assert_eq!(p["availability_topic"], "spillway/pi5.kitchen/status");
            assert_eq!(p["payload_available"], "online");
            assert_eq!(p["payload_not_available"], "offline");
            assert!(p["name"].as_str().is_some_and(|n| !n.is_empty()));
            assert!(
                !p["name"].as_str().unwrap().contains("pi5"),
                "entity names do not repeat the device name"
            );
            assert_eq!(
                p["device"],
                json!({
                    "identifiers": ["spillway_pi5_kitchen"],
                    "name": "pi5.kitchen",
                    "manufacturer": "Spillway",
                    "model": "Raspberry Pi 5 Model B Rev 1.0",
                    "sw_version": "0.1.0",
                })
            );
            assert_eq!(p["origin"]["name"], "spillway");
            assert_eq!(p["origin"]["sw_version"], "0.1.0");
            let template = p["value_template"].as_str().unwrap();
            assert!(
                template.starts_with("{{ value_json.") && template.ends_with(" }}"),
                "{template}"
            );
        }
    }

    #[test]
    fn each_sensor_field_by_field() {
        let c = configs(&board());
        let t = by_object(&c, "soc_temperature");
        assert_eq!(t["name"], "SoC temperature");
        assert_eq!(t["device_class"], "temperature");
        assert_eq!(t["unit_of_measurement"], "°C");
        assert_eq!(t["state_class"], "measurement");
        assert_eq!(t["value_template"], "{{ value_json.temperature_c }}");

        let s = by_object(&c, "thermal_state");
        assert_eq!(s["name"], "Thermal state");
        assert_eq!(s["device_class"], "enum");
        assert_eq!(s["options"], json!(["normal", "soft", "hard"]));
        assert_eq!(
            s["value_template"],
            "{{ value_json.routing.thermal_state }}"
        );
        assert!(s.get("state_class").is_none(), "an enum has no state class");

        let q = by_object(&c, "queue_depth");
        assert_eq!(q["name"], "Queue depth");
        assert_eq!(q["state_class"], "measurement");
        assert_eq!(q["value_template"], "{{ value_json.queue_depth }}");

        let r = by_object(&c, "tokens_per_s");
        assert_eq!(r["name"], "Generation rate");
        assert_eq!(r["unit_of_measurement"], "tokens/s");
        assert_eq!(r["state_class"], "measurement");
        assert_eq!(r["value_template"], "{{ value_json.tokens_per_s }}");

        let l = by_object(&c, "last_route");
        assert_eq!(l["name"], "Last route");
        assert_eq!(l["value_template"], "{{ value_json.last_route }}");
        assert!(l.get("state_class").is_none() && l.get("device_class").is_none());

        let n = by_object(&c, "requests_served");
        assert_eq!(n["name"], "Requests served");
        assert_eq!(n["state_class"], "total_increasing");
        assert_eq!(n["value_template"], "{{ value_json.requests_served }}");
    }
}
