//! Chaos: the daemon's promise under failure, end to end with real processes. Every MQTT
//! request gets exactly one final reply across SIGTERM restarts, SIGKILL, broker kill -9
//! (with and without persistence) and duplicates; nothing is lost, nothing runs twice.
//!
//! Each test has its own mosquitto (free port), its own daemon (own state directory, reused
//! across its restarts; a canary cloud token) and a collector subscribed to `spillway/#`
//! (reply topics live there too, as in the README). Every test ends with the same checks
//! for every request the broker acknowledged: one final, chunk seqs 0..n without gaps or
//! repeats and none after the final, no replies to requests never sent, and the canary in
//! no daemon log line and no MQTT message.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spillway_e2e::chaos::{
    Broker, Collector, Daemon, DaemonConfig, Persistence, Replies, Request, Requester,
    UNREACHABLE_CLOUD, canary_in_messages, error_code, reply_topic, request_topic,
};
use spillway_e2e::fake_router::{self as fr, FakeRouter, Part};
use spillway_e2e::{TempDir, tiny_tekken_model};

/// Tokens for a request that must still be running seconds later: the tiny model on one
/// thread makes a few hundred tokens per second (within the tiny model's 4096 context).
const LONG: u32 = 800;
/// The longest wait for all answers of a case.
const ANSWERS: Duration = Duration::from_secs(90);
/// The longest wait for a daemon to come online or a generation to start.
const PROMPT: Duration = Duration::from_secs(30);

/// Broker, daemon, collector and requester of one case.
struct Rig {
    device: String,
    collector: Collector,
    requester: Requester,
    daemon: Daemon,
    broker: Broker,
}

impl Rig {
    fn start(device: &str, persistence: Persistence, tweak: impl FnOnce(&mut DaemonConfig)) -> Rig {
        Rig::start_with_cloud(device, persistence, UNREACHABLE_CLOUD, tweak)
    }

    fn start_with_cloud(
        device: &str,
        persistence: Persistence,
        cloud_url: &str,
        tweak: impl FnOnce(&mut DaemonConfig),
    ) -> Rig {
        let broker = Broker::start(persistence).unwrap_or_else(|e| panic!("{e}"));
        let collector =
            Collector::start(broker.port, &format!("collector-{device}"), &["spillway/#"])
                .unwrap_or_else(|e| panic!("{e}"));
        let mut config = DaemonConfig::new(tiny_tekken_model(), broker.port, device);
        tweak(&mut config);
        let since = Instant::now();
        let daemon = Daemon::start(&config, cloud_url, &[]).unwrap_or_else(|e| panic!("{e}"));
        let rig = Rig {
            device: device.to_string(),
            requester: Requester::new(broker.port, &format!("requester-{device}")),
            collector,
            daemon,
            broker,
        };
        rig.wait_online(since);
        rig
    }

    fn wait_online(&self, since: Instant) {
        assert!(
            self.collector.wait_online(&self.device, since, PROMPT),
            "{}: the daemon never came online:\n{}",
            self.device,
            self.daemon.last_life_log()
        );
    }

    fn topic(&self, client: &str) -> String {
        reply_topic(&self.device, client)
    }

    /// A local request with a fresh id `id`, replies to this device's reply topic `client`.
    fn req(&self, id: &str, max_tokens: u32) -> Request {
        Request::local(
            id,
            &self.topic("c"),
            &format!("{id}: tell me about rivers"),
            max_tokens,
            json!({}),
        )
    }

    /// Publishes `req`; panics if the broker does not acknowledge it.
    fn send(&mut self, req: &Request) {
        let topic = request_topic(&self.device);
        assert!(
            self.requester.send(&topic, req, Duration::from_secs(5)),
            "the broker did not acknowledge {}",
            req.id
        );
    }

    fn replies(&self, req: &Request) -> Replies {
        self.collector.with(|m| Replies::of(m, req))
    }

    /// Waits until `req` has `n` finals.
    fn wait_finals(&self, req: &Request, n: usize, timeout: Duration) -> Vec<Value> {
        let ok = self
            .collector
            .wait_until(timeout, |m| Replies::of(m, req).finals.len() >= n);
        let r = self.replies(req);
        assert!(
            ok,
            "{}: {} finals within {timeout:?} (want {n}); replies {:?}\n--- daemon log (last life):\n{}",
            req.id,
            r.finals.len(),
            r.finals,
            self.daemon.last_life_log()
        );
        r.finals.into_iter().map(|(_, f)| f).collect()
    }

    /// Waits for the first chunk of `req` (its generation is under way).
    fn wait_first_chunk(&self, req: &Request) {
        let ok = self
            .collector
            .wait_until(PROMPT, |m| !Replies::of(m, req).chunks.is_empty());
        assert!(
            ok,
            "{}: no chunk within {PROMPT:?}\n{}",
            req.id,
            self.daemon.last_life_log()
        );
    }

    /// Waits until every acknowledged request has a final.
    fn wait_all(&self, timeout: Duration) {
        let owed: Vec<Request> = self
            .requester
            .sent
            .iter()
            .filter(|s| s.acked)
            .map(|s| s.request.clone())
            .collect();
        let ok = self.collector.wait_until(timeout, |m| {
            owed.iter().all(|r| !Replies::of(m, r).finals.is_empty())
        });
        if !ok {
            let missing: Vec<&str> = owed
                .iter()
                .filter(|r| self.replies(r).finals.is_empty())
                .map(|r| r.id.as_str())
                .collect();
            panic!(
                "{}: no final within {timeout:?} for {missing:?}\n--- daemon log:\n{}",
                self.device,
                self.daemon.log_text()
            );
        }
    }

    /// The end of every case: after a drain, each acknowledged request (but those in
    /// `checked_apart`, whose several finals the test checked itself) has exactly one final
    /// and well-formed chunks; an unacknowledged one at most one; nothing came for a
    /// request never sent; the canary is nowhere.
    fn finish(self, copies_allowed: bool, checked_apart: &[&str]) {
        std::thread::sleep(Duration::from_millis(700));
        let msgs = self.collector.messages();
        let mut failures = Vec::new();
        let mut keys_seen: Vec<(String, Vec<u8>, String)> = Vec::new();
        for s in &self.requester.sent {
            let r = &s.request;
            keys_seen.push((r.reply_topic.clone(), r.correlation.clone(), r.id.clone()));
            if checked_apart.contains(&r.id.as_str()) {
                continue;
            }
            let got = Replies::of(&msgs, r);
            if !s.acked && got.finals.is_empty() {
                continue;
            }
            if let Err(e) = got.answered_once(copies_allowed) {
                failures.push(format!("{}: {e}", r.id));
            }
        }
        // Every reply belongs to a request sent.
        for m in msgs.iter().filter(|m| m.topic.contains("/reply/")) {
            let j = m.json();
            let key = (
                m.topic.clone(),
                m.correlation.clone().unwrap_or_default(),
                j["id"].as_str().unwrap_or("").to_string(),
            );
            if !keys_seen.contains(&key) {
                failures.push(format!("a reply to a request never sent: {} {j}", m.topic));
            }
        }
        let log = self.daemon.log_text();
        if self.daemon.canary.leaks_in(&log) {
            failures.push("the canary cloud token is in the daemon's log".into());
        }
        for m in canary_in_messages(&msgs, &self.daemon.canary) {
            failures.push(format!(
                "the canary cloud token is in an MQTT message on {}",
                m.topic
            ));
        }
        if !log.contains("cloud API token from") {
            failures.push("the daemon never read the canary token file (no \"cloud API token from\" in its log)".into());
        }
        assert!(
            failures.is_empty(),
            "{}: {} failures:\n{}\n--- daemon log:\n{log}\n--- broker log:\n{}",
            self.device,
            failures.len(),
            failures.join("\n"),
            self.broker.log_text()
        );
    }
}

fn is_success(fin: &Value) -> bool {
    fin["text"].is_string() && fin.get("error").is_none()
}

/// The shutdown promise: exit within the deadline plus 2 s, with success.
fn assert_stopped_in_time(rig: &Rig, stopped: &spillway_e2e::chaos::Stopped, deadline_secs: u64) {
    let limit = Duration::from_secs(deadline_secs + 2);
    assert!(
        stopped.status.is_some_and(|s| s.success()) && stopped.took <= limit,
        "{}: SIGTERM took {:?} (limit {limit:?}), exit {:?}\n{}",
        rig.device,
        stopped.took,
        stopped.status,
        rig.daemon.last_life_log()
    );
}

/// Case 1: three SIGTERM restarts, with requests before, during (running, queued, and sent
/// while it stops) and after each, and while it is down.
#[test]
fn sigterm_and_restart_three_times_answers_everything_once() {
    let mut rig = Rig::start("chaos-term", Persistence::On, |_| {});
    let mut must_succeed = Vec::new();
    let mut may_be_cut = Vec::new();
    for round in 0..3 {
        for i in 0..2 {
            let r = rig.req(&format!("r{round}-before-{i}"), 8);
            rig.send(&r);
            rig.wait_finals(&r, 1, ANSWERS);
            must_succeed.push(r);
        }
        let long = rig.req(&format!("r{round}-running"), LONG);
        rig.send(&long);
        let queued: Vec<Request> = (0..2)
            .map(|i| rig.req(&format!("r{round}-queued-{i}"), 8))
            .collect();
        for q in &queued {
            rig.send(q);
        }
        rig.wait_first_chunk(&long);
        may_be_cut.push(long);
        may_be_cut.extend(queued);
        // SIGTERM, and requests published while it stops: not taken, left at the broker.
        let pid = rig.daemon.pid();
        let stopping = std::thread::scope(|s| {
            let daemon = &mut rig.daemon;
            let stopper = s.spawn(move || daemon.sigterm(Duration::from_secs(30)));
            std::thread::sleep(Duration::from_millis(300));
            let mut sent = Vec::new();
            for i in 0..2 {
                let r = Request::local(
                    &format!("r{round}-while-stopping-{i}"),
                    &reply_topic("chaos-term", "c"),
                    "while stopping",
                    8,
                    json!({}),
                );
                assert!(rig.requester.send(
                    &request_topic("chaos-term"),
                    &r,
                    Duration::from_secs(5)
                ));
                sent.push(r);
            }
            (stopper.join().expect("the stopper thread"), sent)
        });
        let (stopped, sent_while_stopping) = stopping;
        assert_stopped_in_time(&rig, &stopped, 2);
        must_succeed.extend(sent_while_stopping);
        for i in 0..2 {
            let r = rig.req(&format!("r{round}-while-down-{i}"), 8);
            rig.send(&r);
            must_succeed.push(r);
        }
        let since = Instant::now();
        rig.daemon.start_again().unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(rig.daemon.pid(), pid);
        rig.wait_online(since);
        for i in 0..2 {
            let r = rig.req(&format!("r{round}-after-{i}"), 8);
            rig.send(&r);
            must_succeed.push(r);
        }
    }
    rig.wait_all(ANSWERS);
    for r in &must_succeed {
        let f = rig.replies(r).finals;
        assert!(
            f.iter().all(|(_, f)| is_success(f)),
            "{}: sent while the daemon was up and idle, stopping, or down: it must run: {f:?}",
            r.id
        );
    }
    for r in &may_be_cut {
        let f = rig.replies(r).finals;
        assert!(
            f.iter()
                .all(|(_, f)| is_success(f) || error_code(f) == "shutting_down"),
            "{}: in hand at SIGTERM: an answer or shutting_down: {f:?}",
            r.id
        );
    }
    rig.finish(false, &[]);
}

/// Case 2: SIGKILL with one request running and three queued; after the restart with the
/// same state directory all four are answered once, re-run without chunks (`resumed`).
#[test]
fn sigkill_with_one_running_and_three_queued_answers_all_four_once() {
    let mut rig = Rig::start("chaos-kill", Persistence::On, |_| {});
    let long = rig.req("running", LONG);
    rig.send(&long);
    rig.wait_first_chunk(&long);
    let queued: Vec<Request> = (0..3)
        .map(|i| rig.req(&format!("queued-{i}"), 16))
        .collect();
    for q in &queued {
        rig.send(q);
    }
    // Let the daemon take (journal and acknowledge) the queued ones.
    std::thread::sleep(Duration::from_millis(700));
    rig.daemon.sigkill();
    let killed_at = Instant::now();
    let before_kill = rig.replies(&long).streamed();
    std::thread::sleep(Duration::from_millis(500));
    // Chunks the killed daemon had already handed to the broker may still arrive after
    // `killed_at`; none can come from the new daemon before it starts.
    let restarted_at = Instant::now();
    rig.daemon.start_again().unwrap_or_else(|e| panic!("{e}"));
    rig.wait_online(killed_at);
    rig.wait_all(ANSWERS);

    let r = rig.replies(&long);
    let fin = r
        .answered_once(false)
        .unwrap_or_else(|e| panic!("running: {e}"))
        .clone();
    assert_eq!(
        fin["resumed"], true,
        "the interrupted run is resumed: {fin}"
    );
    assert!(is_success(&fin), "{fin}");
    let late: Vec<&Value> = r
        .chunks
        .iter()
        .filter(|(at, _)| *at > restarted_at)
        .map(|(_, c)| c)
        .collect();
    assert!(late.is_empty(), "a resumed run sends no chunks: {late:?}");
    // A re-run that streamed would start again at seq 0: every seq comes once.
    let mut seqs: Vec<u64> = r
        .chunks
        .iter()
        .filter_map(|(_, c)| c["seq"].as_u64())
        .collect();
    let streamed = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        streamed,
        "a resumed run sends no chunks: a seq came twice"
    );
    let text = fin["text"].as_str().unwrap_or_default();
    assert_eq!(
        fin["usage"]["completion_tokens"], LONG,
        "the final's text is whole: {fin}"
    );
    assert!(
        text.starts_with(&before_kill),
        "same seed, same model: the re-run's text begins with what streamed before the kill \
         ({} chars streamed, final {} chars)",
        before_kill.len(),
        text.len()
    );
    for q in &queued {
        let r = rig.replies(q);
        let fin = r
            .answered_once(false)
            .unwrap_or_else(|e| panic!("{}: {e}", q.id))
            .clone();
        assert!(is_success(&fin), "{}: {fin}", q.id);
        if fin["resumed"] == true {
            assert!(
                r.chunks.is_empty(),
                "{}: resumed, yet chunks: {:?}",
                q.id,
                r.chunks
            );
        }
    }
    rig.finish(false, &[]);
}

/// SIGKILL of a request whose deadline passes while the daemon is down: after the restart
/// it is answered `interrupted`, once, and not run.
#[test]
fn a_killed_request_past_its_deadline_is_answered_interrupted() {
    let mut rig = Rig::start("chaos-late", Persistence::On, |_| {});
    let mut r = rig.req("late", 1000);
    r.expiry_secs = Some(8);
    let sent_at = Instant::now();
    rig.send(&r);
    rig.wait_first_chunk(&r);
    rig.daemon.sigkill();
    std::thread::sleep(
        (sent_at + Duration::from_secs(9)).saturating_duration_since(Instant::now()),
    );
    let since = Instant::now();
    rig.daemon.start_again().unwrap_or_else(|e| panic!("{e}"));
    rig.wait_online(since);
    let f = rig.wait_finals(&r, 1, ANSWERS);
    assert_eq!(error_code(&f[0]), "interrupted", "{}", f[0]);
    rig.finish(false, &[]);
}

/// Case 3: broker kill -9 with a request running and others queued, then restart on the
/// same port; persistence `p`. With persistence off the requests in hand are sent without
/// streaming (chunks the broker held when it died are its loss, not the daemon's).
fn broker_kill(device: &str, p: Persistence) {
    let mut rig = Rig::start(device, p, |_| {});
    let stream = p == Persistence::On;
    let mut long = rig.req("running", LONG);
    let mut queued: Vec<Request> = (0..3)
        .map(|i| rig.req(&format!("queued-{i}"), 16))
        .collect();
    if !stream {
        long = Request::local(
            "running",
            &long.reply_topic,
            "running",
            LONG,
            json!({"stream": false}),
        );
        for q in &mut queued {
            *q = Request::local(
                &q.id,
                &q.reply_topic,
                "queued",
                16,
                json!({"stream": false}),
            );
        }
    }
    rig.send(&long);
    for q in &queued {
        rig.send(q);
    }
    if stream {
        rig.wait_first_chunk(&long);
    } else {
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_millis(300));
    rig.broker.kill9();
    std::thread::sleep(Duration::from_secs(1));
    let since = Instant::now();
    rig.broker.start_again().unwrap_or_else(|e| panic!("{e}"));
    rig.wait_online(since);
    for i in 0..3 {
        let r = rig.req(&format!("after-{i}"), 8);
        rig.send(&r);
    }
    rig.wait_all(ANSWERS);
    for s in &rig.requester.sent {
        let f = rig.replies(&s.request).finals;
        assert!(
            f.iter().all(|(_, f)| is_success(f)),
            "{}: {f:?}",
            s.request.id
        );
    }
    rig.finish(true, &[]);
}

#[test]
fn broker_kill9_and_restart_with_persistence_loses_nothing() {
    broker_kill("chaos-broker-on", Persistence::On);
}

#[test]
fn broker_kill9_and_restart_without_persistence_answers_what_the_daemon_took() {
    broker_kill("chaos-broker-off", Persistence::Off);
}

/// Case 4: the same request twice while it runs, as a QoS 1 redelivery (same packet id,
/// DUP) and as a plain resend: one run, one final, one set of chunks.
#[test]
fn a_duplicate_while_running_attaches_to_the_run() {
    let mut rig = Rig::start("chaos-dup", Persistence::On, |_| {});
    let topic = request_topic(&rig.device);
    let a = rig.req("dup-redelivered", 400);
    let collector = &rig.collector;
    let acked = rig.requester.send_with_redelivery(&topic, &a, || {
        assert!(collector.wait_until(PROMPT, |m| !Replies::of(m, &a).chunks.is_empty()));
    });
    assert!(acked, "both publishes acknowledged");
    let b = rig.req("dup-resent", 400);
    rig.send(&b);
    rig.wait_first_chunk(&b);
    rig.send(&b);
    rig.wait_all(ANSWERS);
    for r in [&a, &b] {
        let got = rig.replies(r);
        let fin = got
            .answered_once(false)
            .unwrap_or_else(|e| panic!("{}: {e}", r.id));
        assert!(is_success(fin), "{}: {fin}", r.id);
        assert_ne!(
            fin["replayed"], true,
            "{}: one run, its own final: {fin}",
            r.id
        );
        assert_eq!(
            got.streamed(),
            fin["text"].as_str().unwrap_or_default(),
            "{}",
            r.id
        );
    }
    rig.finish(false, &[]);
}

/// Case 5: a resend after a success gets the same final again, `replayed`, without chunks;
/// a resend after `busy` is a new attempt and runs.
#[test]
fn a_resend_replays_a_success_and_retries_a_refusal() {
    // One session slot and one place in the queue: the third request is refused.
    let mut rig = Rig::start("chaos-resend", Persistence::On, |c| {
        c.queue = 1;
        c.sessions = 1;
    });
    let s = rig.req("done-once", 8);
    rig.send(&s);
    rig.wait_finals(&s, 1, ANSWERS);
    rig.send(&s);
    let finals = rig.wait_finals(&s, 2, ANSWERS);
    let got = rig.replies(&s);
    assert_eq!(finals.len(), 2, "{finals:?}");
    assert_ne!(finals[0]["replayed"], true, "{}", finals[0]);
    assert_eq!(finals[1]["replayed"], true, "{}", finals[1]);
    let mut same = finals[1].clone();
    if let Some(o) = same.as_object_mut() {
        o.remove("replayed");
    }
    assert_eq!(same, finals[0], "the replay is that same final");
    let first_final_at = got.finals[0].0;
    assert!(
        got.chunks.iter().all(|(at, _)| *at < first_final_at),
        "a replay sends no chunks"
    );
    assert_eq!(
        got.chunks.len() as u64,
        got.chunks
            .last()
            .map_or(0, |(_, c)| c["seq"].as_u64().unwrap_or(0) + 1)
    );

    // Fill the engine and the one-place queue; the next is refused busy.
    let long = rig.req("long", LONG);
    rig.send(&long);
    rig.wait_first_chunk(&long);
    let filler = rig.req("filler", 8);
    rig.send(&filler);
    std::thread::sleep(Duration::from_millis(300));
    let refused = rig.req("refused-then-run", 8);
    rig.send(&refused);
    let f = rig.wait_finals(&refused, 1, ANSWERS);
    assert_eq!(error_code(&f[0]), "busy", "{}", f[0]);
    rig.wait_finals(&long, 1, ANSWERS);
    rig.wait_finals(&filler, 1, ANSWERS);
    rig.send(&refused);
    let f = rig.wait_finals(&refused, 2, ANSWERS);
    assert!(is_success(&f[1]), "a resend after busy runs: {}", f[1]);
    assert_ne!(f[1]["replayed"], true, "{}", f[1]);
    let got = rig.replies(&refused);
    let seqs: Vec<u64> = got
        .chunks
        .iter()
        .filter_map(|(_, c)| c["seq"].as_u64())
        .collect();
    assert!(
        seqs.iter().enumerate().all(|(i, &s)| s == i as u64),
        "{seqs:?}"
    );
    assert_eq!(got.streamed(), f[1]["text"].as_str().unwrap_or_default());
    rig.finish(false, &["done-once", "refused-then-run"]);
}

/// Case 6: SIGTERM while a cloud answer trickles in: the daemon exits within the shutdown
/// deadline plus 2 s and the request gets one final.
#[test]
fn sigterm_during_a_trickling_cloud_stream_exits_in_time_with_one_final() {
    let router = FakeRouter::start();
    let dir = TempDir::new("chaos-cloud");
    let ca = dir.path().join("router-ca.pem");
    std::fs::write(&ca, router.ca_pem()).expect("writing the CA file");
    let mut parts = vec![fr::role()];
    for i in 0..60 {
        parts.push(fr::delta(&format!("w{i} ")));
        parts.push(Part::Sleep(Duration::from_millis(250)));
    }
    parts.extend([fr::finish("stop"), fr::usage(9, 60), fr::done()]);
    router.script([fr::stream("trickle-provider", parts)]);
    let ca_line = format!("ca_file = {:?}", ca.display().to_string());
    let mut rig = Rig::start_with_cloud("chaos-cloud", Persistence::On, router.base_url(), |c| {
        c.extra = ca_line;
    });
    let r = Request::local(
        "cloudy",
        &rig.topic("c"),
        "cloudy: say hello",
        60,
        json!({"route": "cloud"}),
    );
    rig.send(&r);
    rig.wait_first_chunk(&r);
    let stopped = rig.daemon.sigterm(Duration::from_secs(30));
    assert_stopped_in_time(&rig, &stopped, 2);
    let f = rig.wait_finals(&r, 1, Duration::from_secs(10));
    assert!(
        is_success(&f[0]) || error_code(&f[0]) == "shutting_down",
        "an answer or shutting_down: {}",
        f[0]
    );
    let auth = router
        .requests()
        .first()
        .and_then(|q| q.headers.get("authorization").cloned());
    assert_eq!(
        auth.as_deref(),
        Some(format!("Bearer {}", rig.daemon.canary.token).as_str()),
        "the router got the canary token"
    );
    rig.finish(false, &[]);
}

/// Case 7: two clients send the same prompt: the second does not reuse the first's cache.
#[test]
fn one_clients_prompt_cache_is_not_anothers() {
    let mut rig = Rig::start("chaos-cache", Persistence::On, |_| {});
    let prompt = format!(
        "Summarise this: {}",
        "the river runs to the sea and back again ".repeat(30)
    );
    let alice = Request::local("q1", &rig.topic("alice"), &prompt, 8, json!({}));
    let bob = Request::local("q1", &rig.topic("bob"), &prompt, 8, json!({}));
    rig.send(&alice);
    let a = rig.wait_finals(&alice, 1, ANSWERS);
    assert!(
        a[0]["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 100,
        "{}",
        a[0]
    );
    rig.send(&bob);
    let b = rig.wait_finals(&bob, 1, ANSWERS);
    assert!(
        is_success(&b[0]) && b[0]["replayed"] != true,
        "bob's own run: {}",
        b[0]
    );
    assert_eq!(
        b[0]["usage"]["cached_tokens"], 0,
        "bob got none of alice's cache: {}",
        b[0]
    );
    rig.finish(false, &[]);
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Case 8: the README's `mosquitto_pub` example, exactly, twice: both runs get a final, the
/// second `replayed`.
#[test]
fn the_readme_mosquitto_pub_example_twice() {
    let mut rig = Rig::start("kitchen-pi", Persistence::On, |_| {});
    let port = rig.broker.port.to_string();
    let dir = TempDir::new("chaos-readme");
    let out_path = dir.path().join("sub.out");
    let out = std::fs::File::create(&out_path).expect("creating the mosquitto_sub output");
    let sub = std::process::Command::new("mosquitto_sub")
        .args([
            "-V",
            "mqttv5",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "spillway/kitchen-pi/reply/#",
            "-v",
        ])
        .stdout(out)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients)");
    let mut sub = KillOnDrop(sub);
    std::thread::sleep(Duration::from_millis(700));
    let finals_in_sub = || -> Vec<Value> {
        std::fs::read_to_string(&out_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(topic, _)| *topic == "spillway/kitchen-pi/reply/me")
            .filter_map(|(_, json)| serde_json::from_str::<Value>(json).ok())
            .filter(|j| j["done"] == true)
            .collect()
    };
    let payload = r#"{"id": "q1", "messages": [{"role": "user", "content": "What is MQTT?"}], "max_tokens": 128}"#;
    for run in 1..=2 {
        let status = std::process::Command::new("mosquitto_pub")
            .args([
                "-V",
                "mqttv5",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-q",
                "1",
                "-t",
                "spillway/kitchen-pi/request",
            ])
            .args([
                "-D",
                "publish",
                "response-topic",
                "spillway/kitchen-pi/reply/me",
            ])
            .args(["-D", "publish", "correlation-data", "q1"])
            .args(["-m", payload])
            .status()
            .expect("mosquitto_pub");
        assert!(status.success(), "mosquitto_pub run {run}: {status:?}");
        let end = Instant::now() + ANSWERS;
        while finals_in_sub().len() < run && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            finals_in_sub().len(),
            run,
            "run {run}: finals seen by mosquitto_sub\n{}",
            rig.daemon.log_text()
        );
    }
    sub.stop();
    let f = finals_in_sub();
    assert!(is_success(&f[0]) && f[0]["replayed"] != true, "{}", f[0]);
    assert_eq!(f[1]["replayed"], true, "{}", f[1]);
    assert_eq!(f[1]["text"], f[0]["text"]);
    // The collector saw the same, with the correlation data; it checks the canary too.
    let readme = Request {
        id: "q1".into(),
        reply_topic: "spillway/kitchen-pi/reply/me".into(),
        correlation: b"q1".to_vec(),
        payload: payload.into(),
        expiry_secs: None,
    };
    let got = rig.replies(&readme);
    assert_eq!(got.finals.len(), 2, "{:?}", got.finals);
    let first = got.finals[0].0;
    assert!(
        got.chunks.iter().all(|(at, _)| *at < first),
        "the replay has no chunks"
    );
    // Recorded as two sends of one request, checked above.
    rig.requester.sent.push(spillway_e2e::chaos::Sent {
        request: readme,
        acked: true,
        at: Instant::now(),
    });
    rig.finish(false, &["q1"]);
}
