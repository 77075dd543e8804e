//! `spillway serve` under a fake systemd: a Unix datagram socket as `$NOTIFY_SOCKET` and a
//! one-second `$WATCHDOG_USEC`. The daemon must say `READY=1` only once connected to the
//! broker, report `STATUS=`, ping the watchdog while idle, and say `STOPPING=1` on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use spillway_e2e::{Mosquitto, Serve, TempDir, tiny_tekken_model};

/// Notifications received, with when they arrived.
fn listen(socket: UnixDatagram) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if tx.send((Instant::now(), msg)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a notification with a `line` among its lines, collecting everything seen.
fn wait_for(
    rx: &mpsc::Receiver<(Instant, String)>,
    seen: &mut Vec<(Instant, String)>,
    line: &str,
    timeout: Duration,
) -> Option<Instant> {
    let end = Instant::now() + timeout;
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        let (at, msg) = rx.recv_timeout(left).ok()?;
        let hit = msg.lines().any(|l| l == line);
        seen.push((at, msg));
        if hit {
            return Some(at);
        }
    }
}

#[test]
fn notifies_ready_after_connecting_pings_the_watchdog_and_says_stopping() {
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let rx = listen(socket);

    let broker = Mosquitto::start();
    let config = format!(
        "[model]\npath = {:?}\n[engine]\nthreads = 1\ncontext = 512\n[mqtt]\nbroker = {:?}\ndevice = \"sd1\"\n[service]\ntelemetry_secs = 0\n",
        tiny_tekken_model().display().to_string(),
        broker.url()
    );
    let mut serve = Serve::start_with_env(
        &config,
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut seen = Vec::new();
    let ready = wait_for(&rx, &mut seen, "READY=1", Duration::from_secs(30));
    assert!(
        ready.is_some(),
        "no READY=1; got {seen:?}; log:\n{}",
        serve.log_text()
    );
    let log = serve.log_text();
    assert!(
        log.contains("connected to 127.0.0.1"),
        "READY=1 only after the broker connection; log:\n{log}"
    );
    let before: Vec<&str> = seen.iter().map(|(_, m)| m.as_str()).collect();
    assert!(
        before
            .iter()
            .any(|m| m.starts_with("STATUS=loading the model")),
        "a loading status first: {before:?}"
    );
    assert!(
        before
            .iter()
            .any(|m| m.starts_with("STATUS=connecting to the broker")),
        "a connecting status: {before:?}"
    );
    assert!(
        before.last().unwrap().contains("STATUS=serving: 0 queued"),
        "READY=1 comes with the serving status: {before:?}"
    );

    // A 1 s watchdog: pings every 0.5 s while the engine idles.
    let mut pings = 0;
    let end = Instant::now() + Duration::from_secs(3);
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((_, m)) if m == "WATCHDOG=1" => pings += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(pings >= 3, "{pings} watchdog pings in 3 s");

    let status = serve.terminate();
    let mut after = Vec::new();
    let stopping = wait_for(&rx, &mut after, "STOPPING=1", Duration::from_secs(5));
    assert!(
        stopping.is_some(),
        "no STOPPING=1 after SIGTERM; got {after:?}; log:\n{}",
        serve.log_text()
    );
    assert!(
        after
            .iter()
            .any(|(_, m)| m.contains("STATUS=shutting down")),
        "{after:?}"
    );
    assert!(status.success(), "clean exit: {status:?}");
}
