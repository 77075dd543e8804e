//! A test client speaking MQTT 5 or 3.1.1 to the broker, through rumqttc's blocking API: a
//! thread drains the connection (reconnecting as rumqttc does) into a channel of received
//! messages.

#![allow(dead_code, unreachable_pub)]

use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// A received message.
#[derive(Clone, Debug)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub correlation: Option<Bytes>,
    pub retain: bool,
}

impl Msg {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

pub enum Client {
    V5(rumqttc::v5::Client),
    V4(rumqttc::Client),
}

pub struct Conn {
    pub client: Client,
    rx: mpsc::Receiver<Msg>,
}

impl Conn {
    /// An MQTT 5 client; `persistent` keeps its session (and queued messages) across
    /// reconnects for five minutes.
    pub fn v5(port: u16, id: &str, persistent: bool) -> Conn {
        let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_start(!persistent);
        if persistent {
            o.set_session_expiry_interval(Some(300));
        }
        o.set_max_packet_size(Some(1 << 20));
        let (client, mut conn) = rumqttc::v5::Client::new(o, 256);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::v5::Event::Incoming(
                        rumqttc::v5::mqttbytes::v5::Packet::Publish(p),
                    )) => {
                        let m = Msg {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            correlation: p.properties.and_then(|pr| pr.correlation_data),
                            retain: p.retain,
                        };
                        if tx.send(m).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Conn {
            client: Client::V5(client),
            rx,
        }
    }

    /// An MQTT 3.1.1 client.
    pub fn v311(port: u16, id: &str) -> Conn {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = rumqttc::Client::new(o, 256);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let m = Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            correlation: None,
                            retain: p.retain,
                        };
                        if tx.send(m).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Conn {
            client: Client::V4(client),
            rx,
        }
    }

    pub fn subscribe(&self, topic: &str) {
        match &self.client {
            Client::V5(c) => c
                .subscribe(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .unwrap(),
            Client::V4(c) => c.subscribe(topic, rumqttc::QoS::AtLeastOnce).unwrap(),
        }
        // Let the SUBACK arrive before anything is published.
        std::thread::sleep(Duration::from_millis(200));
    }

    /// Publishes a request (QoS 1), MQTT 5 properties as given.
    pub fn request(
        &self,
        topic: &str,
        payload: &str,
        response_topic: Option<&str>,
        correlation: Option<&[u8]>,
        expiry_secs: Option<u32>,
    ) {
        match &self.client {
            Client::V5(c) => {
                let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
                    response_topic: response_topic.map(str::to_string),
                    correlation_data: correlation.map(Bytes::copy_from_slice),
                    message_expiry_interval: expiry_secs,
                    ..Default::default()
                };
                c.publish_with_properties(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload.as_bytes().to_vec(),
                    props,
                )
                .unwrap();
            }
            Client::V4(c) => c
                .publish(
                    topic,
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    payload.as_bytes().to_vec(),
                )
                .unwrap(),
        }
    }

    /// The next message, if one arrives within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Msg> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Messages on topics starting with `prefix` until `finals` final replies (`done`)
    /// have arrived or `timeout` passes.
    pub fn until_finals(&self, prefix: &str, finals: usize, timeout: Duration) -> Vec<Msg> {
        let end = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut seen = 0;
        while seen < finals {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(m) = self.next(left) else { break };
            if !m.topic.starts_with(prefix) {
                continue;
            }
            if m.json()["done"] == true {
                seen += 1;
            }
            out.push(m);
        }
        out
    }

    /// Waits for a message on `topic` with `payload`.
    pub fn wait_for(&self, topic: &str, payload: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while let Some(m) = self.next(end.saturating_duration_since(Instant::now())) {
            if m.topic == topic && m.payload == payload.as_bytes() {
                return true;
            }
        }
        false
    }
}
