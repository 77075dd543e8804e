//! `spillway serve` against mosquitto secured as a deployment would secure it: TLS with a
//! private CA (and a wrong CA refused), client certificates required by the broker,
//! username and password (and a wrong password refused), and a `$share` group spreading
//! requests over two daemons. The certificates are made at test time with the `openssl`
//! command line tool. On the secured brokers the test's own clients are mosquitto's
//! (`mosquitto_sub`, `mosquitto_pub`: OpenSSL on their side, rustls on the daemon's).
//! Every wait is bounded.

mod mqtt_client;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mqtt_client::{Conn, Msg};
use spillway_e2e::pki::TestPki;
use spillway_e2e::{Mosquitto, Serve, TempDir, tiny_tekken_model};

/// How long a refused daemon may take to say so (rumqttc's connection timeout is 10 s;
/// TLS and CONNACK refusals come at once).
const REFUSAL: Duration = Duration::from_secs(15);

/// Mosquitto listener lines for TLS with the PKI's server certificate.
fn listener(pki: &TestPki, require_certificate: bool) -> String {
    format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require_certificate}\n",
        pki.path("ca.crt").display(),
        pki.path("server.crt").display(),
        pki.path("server.key").display(),
    )
}

/// Command line options of mosquitto's clients for TLS trusting the PKI's CA, with the
/// client certificate if asked.
fn cli_options(pki: &TestPki, with_cert: bool) -> Vec<String> {
    let path = |name: &str| pki.path(name).display().to_string();
    let mut o = vec!["--cafile".to_string(), path("ca.crt")];
    if with_cert {
        o.extend([
            "--cert".into(),
            path("client.crt"),
            "--key".into(),
            path("client.key"),
        ]);
    }
    o
}

/// mosquitto's command line clients on one listener, with its TLS or login options.
struct Cli {
    port: u16,
    options: Vec<String>,
}

impl Cli {
    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-V",
            "5",
            "-q",
            "1",
        ])
        .args(&self.options);
        c
    }

    /// `mosquitto_sub -v` on `topics`.
    fn subscribe(&self, topics: &[&str]) -> Sub {
        let mut cmd = self.command("mosquitto_sub");
        cmd.arg("-v");
        for t in topics {
            cmd.args(["-t", t]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running mosquitto_sub (apt-get install mosquitto-clients)");
        let (tx, rx) = mpsc::channel();
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("mosquitto_sub: {line}"));
            }
        });
        Sub {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// `mosquitto_pub` of a request (QoS 1) with a response topic and correlation data.
    fn request(&self, topic: &str, payload: &str, response_topic: &str, correlation: &str) {
        let out = self
            .command("mosquitto_pub")
            .args(["-t", topic, "-m", payload])
            .args(["-D", "publish", "response-topic", response_topic])
            .args(["-D", "publish", "correlation-data", correlation])
            .output()
            .expect("running mosquitto_pub (apt-get install mosquitto-clients)");
        assert!(
            out.status.success(),
            "mosquitto_pub failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A running `mosquitto_sub -v`: its lines are `<topic> <payload>`.
struct Sub {
    child: Child,
    rx: mpsc::Receiver<String>,
    /// Every line so far, for failure messages.
    seen: Vec<String>,
}

impl Sub {
    /// The payload of the next message on `topic` within `timeout`.
    fn next_on(&mut self, topic: &str, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        let prefix = format!("{topic} ");
        loop {
            let line = self
                .rx
                .recv_timeout(end.saturating_duration_since(Instant::now()))
                .ok()?;
            self.seen.push(line.clone());
            if let Some(payload) = line.strip_prefix(&prefix) {
                return Some(payload.to_string());
            }
        }
    }

    /// Waits for `device`'s `online` status.
    fn wait_online(&mut self, device: &str, serve: &Serve, broker: &Mosquitto) {
        let status = format!("spillway/{device}/status");
        let end = Instant::now() + Duration::from_secs(20);
        while let Some(p) = self.next_on(&status, end.saturating_duration_since(Instant::now())) {
            if p == "online" {
                return;
            }
        }
        panic!(
            "{device} never came online:\n{}\nsubscriber: {:?}\nbroker log:\n{}",
            serve.log_text(),
            self.seen,
            broker.log_text()
        );
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TOML string holding `p`.
fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The daemon's configuration: `mqtt` holds extra lines for the `[mqtt]` section.
fn config(broker_url: &str, device: &str, mqtt: &str) -> String {
    format!(
        "[model]\npath = {}\n[engine]\nthreads = 1\ncontext = 1024\n[mqtt]\nbroker = {broker_url:?}\ndevice = {device:?}\nkeep_alive_secs = 5\n{mqtt}\n",
        toml_path(tiny_tekken_model())
    )
}

fn tls_url(broker: &Mosquitto) -> String {
    format!("mqtts://127.0.0.1:{}", broker.port)
}

/// Starts a subscriber to `device`'s status and replies, then the daemon with `config`;
/// waits until it is online.
fn start_and_wait(cli: &Cli, device: &str, config: &str, broker: &Mosquitto) -> (Serve, Sub) {
    let mut sub = cli.subscribe(&[
        &format!("spillway/{device}/status"),
        &format!("replies/{device}"),
    ]);
    let serve = Serve::start(config);
    sub.wait_online(device, &serve, broker);
    (serve, sub)
}

/// Sends one short request to `device` and checks its one final answer.
fn assert_answers(cli: &Cli, sub: &mut Sub, device: &str, serve: &Serve) {
    let replies = format!("replies/{device}");
    cli.request(
        &format!("spillway/{device}/request"),
        r#"{"id":"secure-1","prompt":"Hello","max_tokens":4,"stream":false}"#,
        &replies,
        "c1",
    );
    let payload = sub
        .next_on(&replies, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no answer from {device}:\n{}", serve.log_text()));
    let done: serde_json::Value = serde_json::from_str(&payload).expect("a JSON reply");
    assert_eq!(done["done"], true, "{done}");
    assert_eq!(done["id"], "secure-1", "{done}");
    assert_eq!(done["usage"]["completion_tokens"], 4, "{done}");
    assert!(done["text"].is_string(), "{done}");
}

/// Waits for the daemon to log a failed connection attempt, checks that the log names the
/// cause (`reason`), and that it never connected.
fn assert_refused(serve: &Serve, broker: &Mosquitto, reason: &str) {
    let failed = format!("MQTT connection to 127.0.0.1:{} failed", broker.port);
    assert!(
        serve.wait_for_log(&failed, REFUSAL),
        "no failed connection logged within {REFUSAL:?}:\n{}\nbroker log:\n{}",
        serve.log_text(),
        broker.log_text()
    );
    let log = serve.log_text();
    let line = log.lines().find(|l| l.contains(&failed)).unwrap();
    assert!(
        line.contains(reason),
        "the log should say why ({reason:?}): {line}"
    );
    assert!(
        !log.contains("connected to"),
        "it must not have connected:\n{log}"
    );
}

#[test]
fn tls_with_a_private_ca_answers_requests() {
    let pki = TestPki::new();
    let broker = Mosquitto::start_with(&listener(&pki, false));
    let cli = Cli {
        port: broker.port,
        options: cli_options(&pki, false),
    };
    let ca = format!("ca_file = {}", toml_path(&pki.path("ca.crt")));
    let (serve, mut sub) = start_and_wait(
        &cli,
        "tls1",
        &config(&tls_url(&broker), "tls1", &ca),
        &broker,
    );
    assert_answers(&cli, &mut sub, "tls1", &serve);
}

#[test]
fn tls_with_the_wrong_ca_is_refused_and_logged() {
    let pki = TestPki::new();
    let broker = Mosquitto::start_with(&listener(&pki, false));
    let serve = Serve::start(&config(
        &tls_url(&broker),
        "wrongca",
        &format!("ca_file = {}", toml_path(&pki.path("other-ca.crt"))),
    ));
    assert_refused(&serve, &broker, "UnknownIssuer");
}

#[test]
fn a_broker_requiring_client_certificates_takes_ours_and_refuses_none() {
    let pki = TestPki::new();
    let broker = Mosquitto::start_with(&listener(&pki, true));
    let cli = Cli {
        port: broker.port,
        options: cli_options(&pki, true),
    };
    let ca = format!("ca_file = {}", toml_path(&pki.path("ca.crt")));
    let mtls = format!(
        "{ca}\nclient_cert = {}\nclient_key = {}",
        toml_path(&pki.path("client.crt")),
        toml_path(&pki.path("client.key")),
    );
    let (serve, mut sub) = start_and_wait(
        &cli,
        "mtls",
        &config(&tls_url(&broker), "mtls", &mtls),
        &broker,
    );
    assert_answers(&cli, &mut sub, "mtls", &serve);

    let without = Serve::start(&config(&tls_url(&broker), "nocert", &ca));
    assert_refused(&without, &broker, "CertificateRequired");
}

#[test]
fn username_and_password_are_checked() {
    let dir = TempDir::new("passwd");
    let passwd = dir.path().join("passwd");
    let status = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["spill", "s3cret pass"])
        .status()
        .expect("running mosquitto_passwd (apt-get install mosquitto)");
    assert!(status.success());
    let broker = Mosquitto::start_with(&format!(
        "allow_anonymous false\npassword_file {}\n",
        passwd.display()
    ));
    let cli = Cli {
        port: broker.port,
        options: ["-u", "spill", "-P", "s3cret pass"]
            .map(String::from)
            .to_vec(),
    };
    let secret = dir.path().join("mqtt-password");
    std::fs::write(&secret, "s3cret pass\n").unwrap();
    let login = format!(
        "username = \"spill\"\npassword_file = {}",
        toml_path(&secret)
    );
    let (serve, mut sub) =
        start_and_wait(&cli, "pw", &config(&broker.url(), "pw", &login), &broker);
    assert_answers(&cli, &mut sub, "pw", &serve);

    let wrong = Serve::start(&config(
        &broker.url(),
        "wrongpw",
        "username = \"spill\"\npassword = \"not it\"",
    ));
    assert_refused(&wrong, &broker, "NotAuthorized");
}

#[test]
fn a_shared_group_spreads_requests_over_two_daemons_answering_each_once() {
    const N: usize = 6;
    let broker = Mosquitto::start();
    let watcher = Conn::v5(broker.port, "watcher", false);
    watcher.subscribe("spillway/+/status");
    let group = "shared_group = \"fleet\"";
    let alpha = Serve::start(&config(&broker.url(), "alpha", group));
    let beta = Serve::start(&config(&broker.url(), "beta", group));
    // Both online, in whichever order they come.
    let mut online = std::collections::BTreeSet::new();
    let end = Instant::now() + Duration::from_secs(20);
    while online.len() < 2 {
        let m = watcher
            .next(end.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|| {
                panic!(
                    "not both online ({online:?}):\nalpha:\n{}\nbeta:\n{}",
                    alpha.log_text(),
                    beta.log_text()
                )
            });
        if m.payload == b"online" {
            online.insert(m.topic);
        }
    }

    let c = Conn::v5(broker.port, "fleet-client", false);
    c.subscribe("replies/fleet");
    // A publisher sees the group's topic without `$share/<group>/`.
    for i in 0..N {
        c.request(
            "spillway/request",
            &format!(r#"{{"id":"share-{i}","prompt":"Hi","max_tokens":3,"stream":false}}"#),
            Some("replies/fleet"),
            Some(format!("corr-{i}").as_bytes()),
            None,
        );
    }
    let msgs = c.until_finals("replies/fleet", N, Duration::from_secs(15));
    // Anything extra (a second answer to one request) would come soon after.
    let late: Vec<Msg> = std::iter::from_fn(|| c.next(Duration::from_millis(500))).collect();
    let mut ids: Vec<String> = msgs
        .iter()
        .chain(&late)
        .map(|m| {
            let j = m.json();
            assert_eq!(j["done"], true, "stream=false: finals only: {j}");
            assert!(j["text"].is_string(), "{j}");
            let id = j["id"].as_str().unwrap().to_string();
            let corr = format!("corr-{}", id.trim_start_matches("share-"));
            assert_eq!(m.correlation.as_deref(), Some(corr.as_bytes()), "{j}");
            id
        })
        .collect();
    ids.sort();
    let want: Vec<String> = (0..N).map(|i| format!("share-{i}")).collect();
    assert_eq!(
        ids,
        want,
        "one final per request\nalpha:\n{}\nbeta:\n{}",
        alpha.log_text(),
        beta.log_text()
    );

    // Which daemon ran which request: each logs the requests it queued.
    let queued = |s: &Serve| -> Vec<String> {
        s.log_text()
            .lines()
            .filter(|l| l.contains(" finished id="))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("id=")))
            .map(str::to_string)
            .collect()
    };
    let (a, b) = (queued(&alpha), queued(&beta));
    let mut both: Vec<String> = a.iter().chain(&b).cloned().collect();
    both.sort();
    assert_eq!(
        both, want,
        "each request ran on one daemon: alpha {a:?}, beta {b:?}"
    );
    assert!(
        !a.is_empty() && !b.is_empty(),
        "the broker spread the group's requests over both: alpha {a:?}, beta {b:?}"
    );
}
