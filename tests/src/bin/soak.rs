//! Soak: many requests over MQTT against one `spillway serve` on the tiny model, with
//! daemon restarts (SIGTERM), kills (SIGKILL) and broker kills (kill -9, persistence on)
//! injected at seeded random points; then it counts what the promise forbids.
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/wt-target \
//!   cargo run --profile test -p spillway-e2e --bin soak -- --requests 10000 --seed 1
//! ```
//!
//! Flags (all optional): `--requests N` (10000), `--seed S` (1), `--max-secs T` (1800: the
//! run stops sending then and drains), `--in-flight W` (6 requests owed an answer at once),
//! `--max-tokens M` (8), `--events K` (24 faults), `--faults term,kill,broker` (the
//! kinds drawn from), `--model PATH` (else a tiny model synthesized
//! once). The daemon is the `test` profile's `spillway`, built by cargo as the end-to-end
//! tests build it.
//!
//! It prints the fault schedule first (by request index, so a seed replays the same
//! schedule), then: requests sent and acknowledged by the broker, finals by outcome, lost
//! finals (acknowledged requests never answered) and duplicated finals (more than one
//! distinct final for one request): both must be 0. Also byte-identical copies (QoS 1
//! redeliveries after a broker kill: the broker's at-least-once, reported apart), chunk
//! anomalies, latency p50/p99 (publish to final, successes), the shutdown times, and the
//! daemon's VmRSS at the start and at the end of each life. Exit status 1 when anything
//! was lost or duplicated, or the canary token leaked.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spillway_e2e::chaos::{
    Broker, Collector, Daemon, DaemonConfig, Persistence, Request, Requester, UNREACHABLE_CLOUD,
    reply_topic, request_topic,
};
use spillway_e2e::mqtt5::Message;

const DEVICE: &str = "soak";
const SHUTDOWN_DEADLINE_SECS: u64 = 2;

#[derive(Debug)]
struct Args {
    requests: usize,
    seed: u64,
    max_secs: u64,
    in_flight: usize,
    max_tokens: u32,
    events: usize,
    faults: Vec<Fault>,
    model: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        requests: 10_000,
        seed: 1,
        max_secs: 1800,
        in_flight: 6,
        max_tokens: 8,
        events: 24,
        faults: vec![Fault::Sigterm, Fault::Sigkill, Fault::BrokerKill9],
        model: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--requests" => a.requests = num(&value)? as usize,
            "--seed" => a.seed = num(&value)?,
            "--max-secs" => a.max_secs = num(&value)?,
            "--in-flight" => a.in_flight = (num(&value)? as usize).max(1),
            "--max-tokens" => a.max_tokens = num(&value)?.clamp(1, 2000) as u32,
            "--events" => a.events = num(&value)? as usize,
            "--model" => a.model = Some(PathBuf::from(value)),
            "--faults" => {
                a.faults = value
                    .split(',')
                    .map(|f| match f {
                        "term" => Ok(Fault::Sigterm),
                        "kill" => Ok(Fault::Sigkill),
                        "broker" => Ok(Fault::BrokerKill9),
                        other => Err(format!("--faults: {other}? (term, kill, broker)")),
                    })
                    .collect::<Result<_, _>>()?;
                if a.faults.is_empty() {
                    return Err("--faults needs at least one of term, kill, broker".into());
                }
            }
            other => return Err(format!("unknown flag {other} (see the soak's doc comment)")),
        }
    }
    Ok(a)
}

/// SplitMix64, the same stream as the daemon's `spillway::rng::SplitMix64`: seeded,
/// reproducible. A copy, because this crate does not depend on the daemon's library (the
/// daemon's tests depend on this one).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Sigterm,
    Sigkill,
    BrokerKill9,
}

#[derive(Clone, Copy, Debug)]
struct Event {
    /// Injected just before request number `at` is sent.
    at: usize,
    fault: Fault,
    /// How long the daemon (or broker) stays down.
    down_ms: u64,
}

fn schedule(args: &Args) -> Vec<Event> {
    let mut rng = Rng(args.seed);
    let mut events: Vec<Event> = (0..args.events)
        .map(|_| Event {
            at: 1 + rng.below(args.requests.saturating_sub(1) as u64) as usize,
            fault: args.faults[rng.below(args.faults.len() as u64) as usize],
            down_ms: 100 + rng.below(2000),
        })
        .collect();
    events.sort_by_key(|e| e.at);
    events
}

/// What came back for one request.
#[derive(Debug, Default)]
struct Tally {
    sent_at: Option<Instant>,
    acked: bool,
    seqs: Vec<u64>,
    finals: Vec<Value>,
    payloads: Vec<Vec<u8>>,
    first_final_at: Option<Instant>,
    identical_copies: usize,
    chunks_after_final: usize,
}

struct Soak {
    broker: Broker,
    daemon: Daemon,
    collector: Collector,
    requester: Requester,
    tallies: HashMap<String, Tally>,
    cursor: usize,
    canary_hits: usize,
    shutdowns: Vec<Duration>,
    rss: Vec<(u32, &'static str, Option<u64>)>,
    online_misses: usize,
}

impl Soak {
    /// Takes in the messages that arrived since the last call.
    fn absorb(&mut self) {
        let new: Vec<Message> = self.collector.since(self.cursor);
        self.cursor += new.len();
        let topic = reply_topic(DEVICE, "soak");
        for m in new {
            let text = String::from_utf8_lossy(&m.payload);
            if self.daemon.canary.leaks_in(&text) || self.daemon.canary.leaks_in(&m.topic) {
                self.canary_hits += 1;
            }
            if m.topic != topic {
                continue;
            }
            let j = m.json();
            let id = j["id"].as_str().unwrap_or_default().to_string();
            let t = self.tallies.entry(id.clone()).or_default();
            if m.correlation.as_deref() != Some(format!("corr-{id}").as_bytes()) {
                // Counted as a duplicate final below would hide it: a reply with foreign
                // correlation data is a bug of its own.
                t.finals.push(json!({"bad_correlation": true}));
                continue;
            }
            if t.payloads.contains(&m.payload) {
                t.identical_copies += 1;
                continue;
            }
            t.payloads.push(m.payload.clone());
            if j["done"] == true {
                t.first_final_at.get_or_insert(m.at);
                t.finals.push(j);
            } else {
                if !t.finals.is_empty() {
                    t.chunks_after_final += 1;
                }
                t.seqs.push(j["seq"].as_u64().unwrap_or(u64::MAX));
            }
            // Payloads are kept only to recognise copies; a finished request needs few.
            if t.payloads.len() > 64 {
                t.payloads.drain(..32);
            }
        }
    }

    fn owed(&self) -> usize {
        self.tallies
            .values()
            .filter(|t| t.acked && t.finals.is_empty())
            .count()
    }

    /// Waits for the daemon's `online`; a miss is reported, not fatal: what counts is
    /// whether every request is answered.
    fn wait_online(&mut self, since: Instant) -> Result<(), String> {
        if !self
            .collector
            .wait_online(DEVICE, since, Duration::from_secs(60))
        {
            println!("WARNING: no `online` from the daemon within 60 s; going on");
            self.online_misses += 1;
        }
        Ok(())
    }

    fn inject(&mut self, e: &Event) -> Result<(), String> {
        let down = Duration::from_millis(e.down_ms);
        match e.fault {
            Fault::Sigterm | Fault::Sigkill => {
                self.rss
                    .push((self.daemon.lives(), "end", self.daemon.rss_kib()));
                if e.fault == Fault::Sigterm {
                    let stopped = self
                        .daemon
                        .sigterm(Duration::from_secs(SHUTDOWN_DEADLINE_SECS + 30));
                    self.shutdowns.push(stopped.took);
                } else {
                    self.daemon.sigkill();
                }
                std::thread::sleep(down);
                let since = Instant::now();
                self.daemon.start_again()?;
                self.wait_online(since)?;
                self.rss
                    .push((self.daemon.lives(), "start", self.daemon.rss_kib()));
            }
            Fault::BrokerKill9 => {
                self.broker.kill9();
                std::thread::sleep(down);
                let since = Instant::now();
                self.broker.start_again()?;
                self.wait_online(since)?;
            }
        }
        Ok(())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run(args: &Args) -> Result<bool, String> {
    let events = schedule(args);
    println!("soak: {args:?}");
    println!("schedule ({} faults, by request index):", events.len());
    for e in &events {
        println!(
            "  before request {:>6}: {:?}, down {} ms",
            e.at, e.fault, e.down_ms
        );
    }
    let model = match &args.model {
        Some(m) => m.clone(),
        None => spillway_e2e::tiny_tekken_model().to_path_buf(),
    };
    let broker = Broker::start(Persistence::On)?;
    let collector = Collector::start(broker.port, "soak-collector", &["spillway/#"])?;
    let config = DaemonConfig::new(&model, broker.port, DEVICE);
    let since = Instant::now();
    let daemon = Daemon::start(&config, UNREACHABLE_CLOUD, &[])?;
    let mut s = Soak {
        requester: Requester::new(broker.port, "soak-requester"),
        broker,
        daemon,
        collector,
        tallies: HashMap::new(),
        cursor: 0,
        canary_hits: 0,
        shutdowns: Vec::new(),
        rss: Vec::new(),
        online_misses: 0,
    };
    s.wait_online(since)?;
    s.rss.push((1, "start", s.daemon.rss_kib()));

    let start = Instant::now();
    let stop_sending = start + Duration::from_secs(args.max_secs);
    let topic = request_topic(DEVICE);
    let reply = reply_topic(DEVICE, "soak");
    let mut next_event = 0;
    let mut sent = 0;
    let mut rng = Rng(args.seed ^ 0x5eed);
    while sent < args.requests && Instant::now() < stop_sending {
        s.absorb();
        if s.owed() >= args.in_flight {
            s.collector.wait_until(Duration::from_millis(20), |_| false);
            continue;
        }
        while next_event < events.len() && events[next_event].at <= sent {
            let e = events[next_event];
            println!(
                "[{:>7.1}s] request {sent}: {:?} (down {} ms)",
                start.elapsed().as_secs_f64(),
                e.fault,
                e.down_ms
            );
            s.inject(&e)?;
            next_event += 1;
        }
        let id = format!("s{sent}");
        let prompt = format!("{id}: {} words about rivers", 1 + rng.below(40));
        let req = Request::local(&id, &reply, &prompt, args.max_tokens, json!({}));
        let at = Instant::now();
        let acked = s.requester.send(&topic, &req, Duration::from_secs(5));
        let t = s.tallies.entry(id).or_default();
        t.sent_at = Some(at);
        t.acked = acked;
        sent += 1;
        if sent % 1000 == 0 {
            println!(
                "[{:>7.1}s] {sent} sent, {} owed",
                start.elapsed().as_secs_f64(),
                s.owed()
            );
        }
    }
    let sending_took = start.elapsed();
    // Drain: everything acknowledged should be answered within two minutes.
    let drain_end = Instant::now() + Duration::from_secs(120);
    while s.owed() > 0 && Instant::now() < drain_end {
        s.collector
            .wait_until(Duration::from_millis(200), |_| false);
        s.absorb();
    }
    std::thread::sleep(Duration::from_secs(2));
    s.absorb();
    s.rss.push((s.daemon.lives(), "end", s.daemon.rss_kib()));
    let total = start.elapsed();
    Ok(report(&s, sent, sending_took, total))
}

fn report(s: &Soak, sent: usize, sending_took: Duration, total: Duration) -> bool {
    let acked = s.tallies.values().filter(|t| t.acked).count();
    let lost: Vec<&String> = s
        .tallies
        .iter()
        .filter(|(_, t)| t.acked && t.finals.is_empty())
        .map(|(id, _)| id)
        .collect();
    let duplicated: Vec<&String> = s
        .tallies
        .iter()
        .filter(|(_, t)| t.finals.len() > 1)
        .map(|(id, _)| id)
        .collect();
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let (mut resumed, mut replayed, mut copies, mut bad_chunks) = (0, 0, 0, 0);
    let mut latencies = Vec::new();
    for t in s.tallies.values() {
        copies += t.identical_copies;
        let contiguous = t.seqs.iter().enumerate().all(|(i, &q)| q == i as u64);
        if !contiguous || t.chunks_after_final > 0 {
            bad_chunks += 1;
        }
        for f in &t.finals {
            let code = f["error"]["code"].as_str().unwrap_or("ok").to_string();
            *outcomes.entry(code).or_default() += 1;
            resumed += usize::from(f["resumed"] == true);
            replayed += usize::from(f["replayed"] == true);
        }
        if let (Some(a), Some(b), Some(f)) = (t.sent_at, t.first_final_at, t.finals.first())
            && f["text"].is_string()
        {
            latencies.push(b.saturating_duration_since(a));
        }
    }
    latencies.sort();
    let mut outcomes: Vec<_> = outcomes.into_iter().collect();
    outcomes.sort();
    let log_leak = s.daemon.canary.leaks_in(&s.daemon.log_text());
    println!("---- soak results");
    println!(
        "requests sent {sent}, acknowledged by the broker {acked}, sending took {:.1} s, total {:.1} s",
        sending_took.as_secs_f64(),
        total.as_secs_f64()
    );
    println!("finals by outcome: {outcomes:?}");
    println!(
        "LOST finals: {} {:?}",
        lost.len(),
        lost.iter().take(20).collect::<Vec<_>>()
    );
    println!(
        "DUPLICATED finals: {} {:?}",
        duplicated.len(),
        duplicated.iter().take(20).collect::<Vec<_>>()
    );
    if let Some(id) = duplicated.first() {
        println!("  e.g. {id}: {:?}", s.tallies[*id].finals);
    }
    println!(
        "resumed finals {resumed}, replayed finals {replayed}, byte-identical copies (broker QoS 1) {copies}, requests with bad chunks {bad_chunks}"
    );
    println!(
        "latency publish->final (successes, {}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "SIGTERM exits: {:?} (limit {} s)",
        s.shutdowns,
        SHUTDOWN_DEADLINE_SECS + 2
    );
    println!("daemon VmRSS (life, when, KiB): {:?}", s.rss);
    println!("waits for `online` that timed out: {}", s.online_misses);
    println!(
        "canary token in MQTT messages: {}, in the daemon log: {log_leak}",
        s.canary_hits
    );
    let ok = lost.is_empty() && duplicated.is_empty() && s.canary_hits == 0 && !log_leak;
    if !ok {
        keep_logs(s, &lost);
    }
    println!("{}", if ok { "PASS" } else { "FAIL" });
    ok
}

/// On a failure: the daemon's and broker's logs (their temp dirs go with the run) are
/// copied beside them, and what the daemon logged about each lost request is shown.
fn keep_logs(s: &Soak, lost: &[&String]) {
    let base = std::env::temp_dir().join(format!("spillway-soak-{}", std::process::id()));
    let log = s.daemon.log_text();
    for (what, text) in [("daemon", &log), ("broker", &s.broker.log_text())] {
        let path = base.with_extension(format!("{what}.log"));
        match std::fs::write(&path, text) {
            Ok(()) => println!("{what} log kept: {}", path.display()),
            Err(e) => println!("{what} log not kept: {}: {e}", path.display()),
        }
    }
    for id in lost.iter().take(5) {
        let needle = format!("id={id}");
        println!("daemon log lines for lost {id}:");
        for l in log
            .lines()
            .filter(|l| l.contains(&needle) || l.contains("==== chaos rig"))
        {
            println!("  {l}");
        }
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    }
}
