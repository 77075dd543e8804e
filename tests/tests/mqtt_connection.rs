//! The daemon's MQTT connections against a real mosquitto: a daemon stopped cleanly and
//! started again still hears requests (it subscribes after every CONNACK, even when the
//! broker kept its session), and two daemons configured with the same device (so the same
//! client ids) do not take each other over in a tight loop: the reconnection delays grow,
//! and each daemon says in its log that another client is using its client id.

mod mqtt_client;

use std::path::Path;
use std::time::{Duration, Instant};

use mqtt_client::{Conn, Msg};
use spillway_e2e::{Mosquitto, Serve, TempDir, tiny_tekken_model};

/// How long two daemons fight over one client id.
const FIGHT: Duration = Duration::from_secs(20);

/// The most CONNECTs of one client id, both daemons together, within [`FIGHT`]. With
/// full-jitter backoff from 0.5 s (each daemon's delays growing while it keeps being taken
/// over), a simulation of 20 000 fights gives 12 on average and at most 16; the old loop,
/// which started over at 0.5 s after every CONNACK, made about 40.
const MAX_CONNECTS: usize = 16;

/// A minimal `/sys` + `/proc` tree for the router: a cool board with plenty of memory.
fn fake_fs(root: &Path) {
    let zone = root.join("sys/class/thermal/thermal_zone0");
    std::fs::create_dir_all(&zone).unwrap();
    std::fs::write(zone.join("type"), "cpu-thermal\n").unwrap();
    std::fs::write(zone.join("temp"), "40000\n").unwrap();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::write(
        root.join("proc/meminfo"),
        "MemTotal:       16000000 kB\nMemAvailable:   12000000 kB\n",
    )
    .unwrap();
}

/// A daemon for `device` on `broker`; with `upstream`, it also keeps a connection to the
/// same broker as its cloud broker (client id `spillway-<device>-upstream`).
fn config(broker: &Mosquitto, device: &str, fs_root: &Path, upstream: bool) -> String {
    let (routes, upstream) = if upstream {
        (
            "cloud_routes = [\"mqtt\"]\n",
            format!(
                "[upstream]\nbroker = {:?}\ntopic = \"cloud/request\"\n",
                broker.url()
            ),
        )
    } else {
        ("", String::new())
    };
    format!(
        "[model]\npath = {:?}\n[engine]\nthreads = 1\ncontext = 1024\n\
         [router]\nboard = \"generic\"\nfs_root = {:?}\nsample_ms = 100\n{routes}\
         [mqtt]\nbroker = {:?}\ndevice = \"{device}\"\nkeep_alive_secs = 5\n{upstream}",
        tiny_tekken_model().display().to_string(),
        fs_root.display().to_string(),
        broker.url(),
    )
}

/// Waits for the retained `online` of `device`, from a fresh subscription each time (so a
/// retained `online` of an earlier run does not count twice: the watcher is new).
fn wait_online(broker: &Mosquitto, device: &str, serve: &Serve) {
    let watcher = Conn::v5(broker.port, &format!("watch-{device}"), false);
    let topic = format!("spillway/{device}/status");
    watcher.subscribe(&topic);
    assert!(
        watcher.wait_for(&topic, "online", Duration::from_secs(30)),
        "{device} never came online:\n{}",
        serve.log_text()
    );
}

/// Sends one request to `device` and returns its final reply, if one came within 30 s.
fn ask(broker: &Mosquitto, device: &str, id: &str) -> Option<serde_json::Value> {
    let c = Conn::v5(broker.port, &format!("client-{id}"), false);
    let reply_topic = format!("replies/{id}");
    c.subscribe(&reply_topic);
    c.request(
        &format!("spillway/{device}/request"),
        &format!(r#"{{"id":"{id}","prompt":"Hello","max_tokens":4,"seed":1}}"#),
        Some(&reply_topic),
        Some(id.as_bytes()),
        None,
    );
    c.until_finals(&reply_topic, 1, Duration::from_secs(30))
        .iter()
        .map(Msg::json)
        .find(|j| j["done"] == true)
}

/// CONNECTs of `client_id` in mosquitto's log ("New client connected from ... as ID (p5,
/// ...").
fn connects(broker: &Mosquitto, client_id: &str) -> usize {
    let needle = format!(" as {client_id} (");
    broker
        .log_text()
        .lines()
        .filter(|l| l.contains("New client connected") && l.contains(&needle))
        .count()
}

#[test]
fn a_daemon_restarted_cleanly_still_answers_requests() {
    let broker = Mosquitto::start();
    let fs = TempDir::new("conn-restart");
    fake_fs(fs.path());
    let conf = config(&broker, "again1", fs.path(), false);

    let mut first = Serve::start(&conf);
    wait_online(&broker, "again1", &first);
    let reply = ask(&broker, "again1", "before-restart")
        .unwrap_or_else(|| panic!("no answer before the restart:\n{}", first.log_text()));
    assert_eq!(reply["id"], "before-restart", "{reply}");
    let status = first.terminate();
    assert!(status.success(), "{status:?}:\n{}", first.log_text());

    // Same device, same client id: the broker resumes the session (session present), in
    // which the clean shutdown had unsubscribed the request topics.
    let second = Serve::start(&conf);
    assert!(
        second.wait_for_log("session resumed", Duration::from_secs(30)),
        "the broker kept the session, so the second run resumes it:\n{}",
        second.log_text()
    );
    wait_online(&broker, "again1", &second);
    let reply = ask(&broker, "again1", "after-restart").unwrap_or_else(|| {
        panic!(
            "the restarted daemon is deaf:\n{}\nbroker:\n{}",
            second.log_text(),
            broker.log_text()
        )
    });
    assert_eq!(reply["id"], "after-restart", "{reply}");
}

/// Two daemons with one device for [`FIGHT`]; checks the connection of `client_id` (one of
/// theirs) reconnected at most [`MAX_CONNECTS`] times and that the takeover was reported.
fn fight_over(client_id: &str, upstream: bool) {
    let broker = Mosquitto::start();
    let fs = TempDir::new("conn-fight");
    fake_fs(fs.path());
    let conf = config(&broker, "twin1", fs.path(), upstream);
    let started = Instant::now();
    let a = Serve::start(&conf);
    let b = Serve::start(&conf);
    std::thread::sleep(FIGHT.saturating_sub(started.elapsed()));
    let n = connects(&broker, client_id);
    eprintln!("{n} CONNECTs as {client_id} in {FIGHT:?}");
    let logs = format!("daemon a:\n{}\ndaemon b:\n{}", a.log_text(), b.log_text());
    assert!(
        n >= 2,
        "both daemons connected as {client_id} at least once:\n{logs}"
    );
    assert!(
        n <= MAX_CONNECTS,
        "{n} CONNECTs as {client_id} in {FIGHT:?}: the backoff does not hold\n{logs}"
    );
    // Mosquitto closes the old connection without a DISCONNECT 0x8E, so the daemons infer
    // the takeover from connections dropped soon after CONNACK; either wording names the
    // client id and says another client may be using it.
    let names_it = |l: &str| {
        l.contains("ERROR")
            && l.contains("another client")
            && (l.contains(&format!("client id {client_id}:"))
                || l.contains(&format!("client id {client_id};")))
    };
    let reported = [&a, &b]
        .iter()
        .filter(|s| s.log_text().lines().any(names_it))
        .count();
    assert!(
        reported >= 1,
        "no ERROR naming the client id {client_id} taken over:\n{logs}"
    );
    for s in [&a, &b] {
        let times = s.log_text().lines().filter(|l| names_it(l)).count();
        assert!(
            times <= 1,
            "the takeover is reported once per episode, not {times} times:\n{logs}"
        );
    }
}

#[test]
fn two_daemons_with_one_device_take_the_upstream_client_id_from_each_other_slowly() {
    fight_over("spillway-twin1-upstream", true);
}

#[test]
fn two_daemons_with_one_device_take_the_request_client_id_from_each_other_slowly() {
    fight_over("spillway-twin1", false);
}
