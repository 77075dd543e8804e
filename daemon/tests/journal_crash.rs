//! The request journal under SIGKILL: a child process (this test binary run again in child
//! mode) loops accept() / answered() / delivered(), reporting each step on stdout after the
//! call returned; the parent kills it at random moments, reopens the journal and checks
//! that what the child was told is durable is there, exactly, and that nothing else is.
//!
//! Reproduce a run with `SPILLWAY_JOURNAL_CRASH_SEED=<seed printed on failure>`.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spillway::service::journal::{Accepted, Journal, JournalLimits, Lookup, RequestKey};

/// Set in the child: the journal path.
const CHILD_JOURNAL_ENV: &str = "SPILLWAY_JOURNAL_CRASH_CHILD";
/// Set in the child: the round number (keys are unique per round).
const CHILD_ROUND_ENV: &str = "SPILLWAY_JOURNAL_CRASH_ROUND";
const SEED_ENV: &str = "SPILLWAY_JOURNAL_CRASH_SEED";
const ROUNDS: u32 = 20;
/// The child stops by itself after this long, should the parent die before killing it.
const CHILD_LIFETIME: Duration = Duration::from_secs(20);

/// Large enough that nothing is refused or evicted: every entry's state follows from the
/// child's protocol alone.
const LIMITS: JournalLimits = JournalLimits {
    max_pending: 1_000_000,
    reply_cache: 1_000_000,
    max_record_bytes: 4096,
};

fn key(round: u32, i: u32) -> RequestKey {
    RequestKey {
        id: format!("r{round}-{i}"),
        reply_to: format!("replies/client{}", i % 3),
        correlation: vec![round as u8, (i % 251) as u8],
    }
}

fn request(round: u32, i: u32) -> Accepted {
    Accepted {
        key: key(round, i),
        payload: format!(
            "{{\"id\":\"r{round}-{i}\",\"prompt\":\"{}\"}}",
            "x".repeat(i as usize % 200)
        )
        .into_bytes(),
        received_unix_ms: 1_700_000_000_000 + u64::from(i),
        deadline_unix_ms: i
            .is_multiple_of(2)
            .then_some(1_700_000_100_000 + u64::from(i)),
        seed: u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        client: format!("replies/client{}", i % 3),
    }
}

fn final_reply(round: u32, i: u32) -> Vec<u8> {
    format!(
        "{{\"id\":\"r{round}-{i}\",\"final\":true,\"text\":\"{}\"}}",
        "y".repeat(i as usize % 300)
    )
    .into_bytes()
}

/// The child's protocol: every 5th request stays pending, every 4th final is a refusal
/// (not kept), and some finals stay undelivered.
fn is_answered(i: u32) -> bool {
    i % 5 != 4
}
fn keep_for_replay(i: u32) -> bool {
    !i.is_multiple_of(4)
}
fn is_delivered(i: u32) -> bool {
    i % 7 != 3
}

/// How far the child got with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Accepted,
    Answered,
    Delivered,
}

/// The last stage the protocol takes request `i` to.
fn last_stage(i: u32) -> Stage {
    if !is_answered(i) {
        Stage::Accepted
    } else if !is_delivered(i) {
        Stage::Answered
    } else {
        Stage::Delivered
    }
}

/// What the journal must say about request `i` once it reached `stage`.
fn expected_lookup(round: u32, i: u32, stage: Stage) -> Lookup {
    match stage {
        Stage::Accepted => Lookup::Pending,
        Stage::Delivered if !keep_for_replay(i) => Lookup::Unknown,
        Stage::Answered | Stage::Delivered => Lookup::Answered {
            final_payload: final_reply(round, i),
        },
    }
}

/// Child mode: run by `journal_survives_sigkill`, skipped otherwise.
#[test]
#[ignore = "the child process of journal_survives_sigkill"]
fn crash_child() {
    let (Some(path), Some(round)) = (
        std::env::var_os(CHILD_JOURNAL_ENV),
        std::env::var(CHILD_ROUND_ENV).ok(),
    ) else {
        return;
    };
    let round: u32 = round.parse().expect("round number");
    let journal = Journal::open(Path::new(&path), LIMITS).expect("child opens the journal");
    let mut out = std::io::stdout().lock();
    let mut report = |line: String| {
        writeln!(out, "{line}").expect("report");
        out.flush().expect("flush report");
    };
    report("ready".to_string());
    let started = Instant::now();
    for i in 0..100_000 {
        if started.elapsed() > CHILD_LIFETIME {
            break;
        }
        journal.accept(&request(round, i)).expect("accept");
        report(format!("accepted {round} {i}"));
        if !is_answered(i) {
            continue;
        }
        journal
            .answered(&key(round, i), &final_reply(round, i), keep_for_replay(i))
            .expect("answered");
        report(format!("answered {round} {i}"));
        if !is_delivered(i) {
            continue;
        }
        journal.delivered(&key(round, i)).expect("delivered");
        report(format!("delivered {round} {i}"));
        journal
            .set_meta("progress", &format!("{round} {i}"))
            .expect("set_meta");
    }
}

/// A small xorshift generator: the delays need no quality, only a seed to replay.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The complete lines a killed child wrote (a torn last line is dropped).
fn read_lines(stdout: impl std::io::Read + Send + 'static, lines: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line.ends_with(b"\n") => {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if lines.send(text).is_err() {
                    return;
                }
            }
            Ok(_) => return,
        }
    }
}

#[test]
fn journal_survives_sigkill() {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let mut rng = Rng(seed);
    let dir = TempDir(std::env::temp_dir().join(format!(
        "spillway-journal-crash-{}-{seed}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let journal_path = dir.0.join("journal.sqlite");
    let exe = std::env::current_exe().expect("own test binary");
    let started = Instant::now();

    // reported[round] = the stage of each request the child reported, in order.
    let mut reported: Vec<Vec<Stage>> = Vec::new();
    for round in 0..ROUNDS {
        let context = format!("round {round}, seed {seed} (rerun with {SEED_ENV}={seed})");
        let stderr_path = dir.0.join(format!("child-{round}.stderr"));
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--ignored"])
            .env(CHILD_JOURNAL_ENV, &journal_path)
            .env(CHILD_ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("child stderr file"))
            .spawn()
            .expect("spawn the child");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("child stdout");
        let reader = std::thread::spawn(move || read_lines(stdout, tx));
        // Every fifth round the clock starts at spawn, so the kill may land during open();
        // otherwise it starts once the journal is open, to land inside the loop.
        let delay = Duration::from_millis(5 + rng.below(96));
        let mut lines = Vec::new();
        if round % 5 != 4 {
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                let ready = line == "ready";
                lines.push(line);
                if ready {
                    break;
                }
            }
        }
        std::thread::sleep(delay);
        // Child::kill sends SIGKILL on Unix.
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap the child");
        reader.join().expect("stdout reader");
        lines.extend(rx.try_iter());
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{context}: the child ended before the kill ({status}):\n{stderr}"
        );

        let mut stages: Vec<Stage> = Vec::new();
        for line in &lines {
            let mut words = line.split(' ');
            let stage = match words.next() {
                Some("accepted") => Stage::Accepted,
                Some("answered") => Stage::Answered,
                Some("delivered") => Stage::Delivered,
                _ => continue,
            };
            let line_round: u32 = words.next().and_then(|w| w.parse().ok()).expect("round");
            let i: usize = words.next().and_then(|w| w.parse().ok()).expect("index");
            assert_eq!(line_round, round, "{context}: {line}");
            if stage == Stage::Accepted {
                assert_eq!(i, stages.len(), "{context}: accepted out of order");
                stages.push(stage);
            } else {
                assert_eq!(
                    i + 1,
                    stages.len(),
                    "{context}: {line} not about the last request"
                );
                stages[i] = stage;
            }
        }
        reported.push(stages);

        check_journal(&journal_path, &reported, &context);
    }
    let accepted: usize = reported.iter().map(Vec::len).sum();
    eprintln!(
        "journal_survives_sigkill: {ROUNDS} kills, {accepted} requests reported accepted, {:.1} s, seed {seed}",
        started.elapsed().as_secs_f64()
    );
    assert!(accepted > 0, "no kill landed after an accept (seed {seed})");
}

/// Reopens the journal and checks it against what the children reported.
fn check_journal(path: &Path, reported: &[Vec<Stage>], context: &str) {
    // The file as the kill left it (WAL included) passes SQLite's own check.
    {
        let raw = rusqlite::Connection::open(path).expect("raw open");
        let check: String = raw
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .unwrap_or_else(|e| panic!("{context}: quick_check failed to run: {e}"));
        assert_eq!(check, "ok", "{context}");
    }
    let journal = Journal::open(path, LIMITS).unwrap_or_else(|e| panic!("{context}: reopen: {e}"));

    let mut expected_pending: Vec<Accepted> = Vec::new();
    let mut answered = 0usize;
    for (round, stages) in reported.iter().enumerate() {
        let round = round as u32;
        let n = stages.len() as u32;
        // Requests the child finished, the one it was working on (reported, maybe further
        // along than reported), the one it may have accepted without reporting, and one
        // it cannot have reached.
        for i in 0..n + 2 {
            let allowed: Vec<Lookup> = if i + 1 < n {
                vec![expected_lookup(round, i, last_stage(i))]
            } else if i + 1 == n {
                let reached = stages[i as usize];
                [Stage::Accepted, Stage::Answered, Stage::Delivered]
                    .into_iter()
                    .filter(|&s| s >= reached && s <= last_stage(i))
                    .map(|s| expected_lookup(round, i, s))
                    .collect()
            } else if i == n {
                let mut allowed = vec![Lookup::Unknown];
                allowed.extend(
                    [Stage::Accepted, Stage::Answered, Stage::Delivered]
                        .into_iter()
                        .filter(|&s| s <= last_stage(i))
                        .map(|s| expected_lookup(round, i, s)),
                );
                allowed
            } else {
                vec![Lookup::Unknown]
            };
            let found = journal
                .lookup(&key(round, i))
                .unwrap_or_else(|e| panic!("{context}: lookup r{round}-{i}: {e}"));
            assert!(
                allowed.contains(&found),
                "{context}: r{round}-{i} (reported {:?}) is {}, allowed {:?}",
                stages.get(i as usize),
                describe(&found),
                allowed.iter().map(describe).collect::<Vec<_>>()
            );
            match found {
                Lookup::Pending => expected_pending.push(request(round, i)),
                Lookup::Answered { .. } => answered += 1,
                Lookup::Unknown => {}
            }
        }
    }

    // Nothing else is in the journal, pending requests are intact and in acceptance order.
    let pending = journal.pending().expect("pending");
    assert_eq!(pending, expected_pending, "{context}: pending()");
    let undelivered = journal.undelivered().expect("undelivered");
    let distinct: HashSet<&RequestKey> = undelivered.iter().map(|u| &u.key).collect();
    assert_eq!(
        distinct.len(),
        undelivered.len(),
        "{context}: duplicate undelivered"
    );
    let (pending_count, cached) = journal.counts().expect("counts");
    assert_eq!(pending_count, pending.len(), "{context}");
    assert_eq!(
        cached + undelivered.len(),
        answered,
        "{context}: answered entries other than the children's"
    );
    if let Some(progress) = journal.meta("progress").expect("meta") {
        let mut words = progress.split(' ').map(str::parse::<u32>);
        assert!(
            matches!(
                (words.next(), words.next(), words.next()),
                (Some(Ok(_)), Some(Ok(_)), None)
            ),
            "{context}: torn setting {progress:?}"
        );
    }
}

/// A lookup with its final as text, for failure messages.
fn describe(lookup: &Lookup) -> String {
    match lookup {
        Lookup::Answered { final_payload } => {
            format!("Answered({})", String::from_utf8_lossy(final_payload))
        }
        other => format!("{other:?}"),
    }
}
