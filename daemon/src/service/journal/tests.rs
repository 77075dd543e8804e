//! The journal's tests: state transitions, ordering, bounds, reopening, refusal of damaged
//! or foreign files, and the commit latency the intake waits for.

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "spillway-journal-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("journal.sqlite")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const LIMITS: JournalLimits = JournalLimits {
    max_pending: 100,
    reply_cache: 100,
    max_record_bytes: 1000,
};

fn key(id: &str) -> RequestKey {
    RequestKey {
        id: id.to_string(),
        reply_to: "replies/alice".to_string(),
        correlation: vec![0, 1, 2, 255],
    }
}

fn undelivered(id: &str, final_payload: &[u8]) -> Undelivered {
    Undelivered {
        key: key(id),
        client: "replies/alice".to_string(),
        final_payload: final_payload.to_vec(),
    }
}

fn request(id: &str) -> Accepted {
    Accepted {
        key: key(id),
        payload: format!("{{\"id\":\"{id}\",\"prompt\":\"hi\"}}").into_bytes(),
        received_unix_ms: 1_700_000_000_000,
        deadline_unix_ms: Some(1_700_000_060_000),
        seed: u64::MAX - 7,
        client: "replies/alice".to_string(),
    }
}

fn ids(entries: &[Accepted]) -> Vec<&str> {
    entries.iter().map(|a| a.key.id.as_str()).collect()
}

fn answered_of(journal: &Journal, id: &str) -> Lookup {
    journal.lookup(&key(id)).expect("lookup")
}

#[test]
fn journal_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Journal>();
}

#[test]
fn entry_moves_from_pending_to_answered_to_cached() {
    let dir = TempDir::new("states");
    let journal = Journal::open(&dir.file(), LIMITS).expect("open");
    assert_eq!(answered_of(&journal, "a"), Lookup::Unknown);

    journal.accept(&request("a")).expect("accept");
    assert_eq!(answered_of(&journal, "a"), Lookup::Pending);
    assert_eq!(journal.pending().expect("pending"), vec![request("a")]);
    assert_eq!(journal.counts().expect("counts"), (1, 0));

    journal
        .answered(&key("a"), b"final a", true)
        .expect("answered");
    let answered = Lookup::Answered {
        final_payload: b"final a".to_vec(),
    };
    assert_eq!(answered_of(&journal, "a"), answered);
    assert!(journal.pending().expect("pending").is_empty());
    assert_eq!(
        journal.undelivered().expect("undelivered"),
        vec![undelivered("a", b"final a")]
    );
    assert_eq!(journal.counts().expect("counts"), (0, 0));

    journal.delivered(&key("a")).expect("delivered");
    assert_eq!(answered_of(&journal, "a"), answered, "kept for replay");
    assert!(journal.undelivered().expect("undelivered").is_empty());
    assert_eq!(journal.counts().expect("counts"), (0, 1));
    journal
        .delivered(&key("a"))
        .expect("delivering twice is a no-op");
}

#[test]
fn refusal_is_removed_once_delivered() {
    let dir = TempDir::new("refusal");
    let journal = Journal::open(&dir.file(), LIMITS).expect("open");
    journal.accept(&request("r")).expect("accept");
    journal
        .answered(&key("r"), b"busy", false)
        .expect("answered");
    assert_eq!(
        answered_of(&journal, "r"),
        Lookup::Answered {
            final_payload: b"busy".to_vec()
        },
        "a resend before delivery gets the same refusal"
    );
    journal.delivered(&key("r")).expect("delivered");
    assert_eq!(answered_of(&journal, "r"), Lookup::Unknown);
    assert_eq!(journal.counts().expect("counts"), (0, 0));
}

#[test]
fn wrong_state_transitions_are_refused() {
    let dir = TempDir::new("wrong");
    let journal = Journal::open(&dir.file(), LIMITS).expect("open");
    let err = journal.answered(&key("x"), b"f", true).unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::WrongState {
                found: "unknown",
                ..
            }
        ),
        "{err}"
    );
    journal.accept(&request("x")).expect("accept");
    let err = journal.delivered(&key("x")).unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::WrongState {
                found: "pending",
                ..
            }
        ),
        "{err}"
    );
    journal.answered(&key("x"), b"f", true).expect("answered");
    let err = journal.answered(&key("x"), b"g", true).unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::WrongState {
                found: "answered",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        answered_of(&journal, "x"),
        Lookup::Answered {
            final_payload: b"f".to_vec()
        },
        "the first final stands"
    );
}

#[test]
fn accepting_a_pending_key_again_changes_nothing() {
    let dir = TempDir::new("dup");
    let journal = Journal::open(&dir.file(), LIMITS).expect("open");
    journal.accept(&request("a")).expect("accept");
    let mut again = request("a");
    again.payload = b"{\"other\":1}".to_vec();
    again.seed = 3;
    journal.accept(&again).expect("accept again");
    assert_eq!(journal.pending().expect("pending"), vec![request("a")]);
}

#[test]
fn keys_differ_by_reply_address_and_correlation() {
    let dir = TempDir::new("keys");
    let journal = Journal::open(&dir.file(), LIMITS).expect("open");
    let mut other_client = request("1");
    other_client.key.reply_to = "replies/bob".to_string();
    let mut other_correlation = request("1");
    other_correlation.key.correlation = b"c".to_vec();
    for a in [request("1"), other_client, other_correlation] {
        journal.accept(&a).expect("accept");
    }
    assert_eq!(journal.counts().expect("counts"), (3, 0));
}

#[test]
fn answered_key_accepted_again_is_pending_again_and_sorts_last() {
    let dir = TempDir::new("again");
    let journal = Journal::open(&dir.file(), LIMITS).expect("open");
    journal.accept(&request("a")).expect("accept a");
    journal.accept(&request("b")).expect("accept b");
    journal
        .answered(&key("a"), b"final a", true)
        .expect("answer a");
    journal.delivered(&key("a")).expect("deliver a");

    let mut retry = request("a");
    retry.payload = b"{\"id\":\"a\",\"retry\":true}".to_vec();
    journal.accept(&retry).expect("accept a again");
    assert_eq!(answered_of(&journal, "a"), Lookup::Pending);
    let pending = journal.pending().expect("pending");
    assert_eq!(ids(&pending), ["b", "a"]);
    assert_eq!(pending[1], retry, "the new attempt's request is stored");
    assert_eq!(journal.counts().expect("counts"), (2, 0));
}

#[test]
fn pending_and_undelivered_keep_their_order() {
    let dir = TempDir::new("order");
    let journal = Journal::open(&dir.file(), LIMITS).expect("open");
    for id in ["m", "z", "a", "q"] {
        journal.accept(&request(id)).expect("accept");
    }
    assert_eq!(
        ids(&journal.pending().expect("pending")),
        ["m", "z", "a", "q"]
    );
    for id in ["q", "m", "z"] {
        journal
            .answered(&key(id), id.as_bytes(), true)
            .expect("answer");
    }
    let undelivered: Vec<String> = journal
        .undelivered()
        .expect("undelivered")
        .into_iter()
        .map(|u| u.key.id)
        .collect();
    assert_eq!(
        undelivered,
        ["q", "m", "z"],
        "the order finals were recorded"
    );
    assert_eq!(ids(&journal.pending().expect("pending")), ["a"]);
}

#[test]
fn reply_cache_evicts_the_oldest_answered_delivered_finals() {
    let dir = TempDir::new("evict");
    let limits = JournalLimits {
        reply_cache: 2,
        ..LIMITS
    };
    let journal = Journal::open(&dir.file(), limits).expect("open");
    for id in ["a", "b", "c", "d", "e", "f"] {
        journal.accept(&request(id)).expect("accept");
    }
    // Answer order b, a, c, d; e and f stay undelivered.
    for id in ["b", "a", "c", "d", "e", "f"] {
        journal
            .answered(&key(id), id.as_bytes(), true)
            .expect("answer");
    }
    let cached = |journal: &Journal| -> Vec<&str> {
        ["a", "b", "c", "d", "e", "f"]
            .into_iter()
            .filter(|id| matches!(answered_of(journal, id), Lookup::Answered { .. }))
            .collect()
    };
    journal.delivered(&key("a")).expect("deliver a");
    journal.delivered(&key("b")).expect("deliver b");
    assert_eq!(cached(&journal), ["a", "b", "c", "d", "e", "f"]);
    journal.delivered(&key("c")).expect("deliver c");
    assert_eq!(
        cached(&journal),
        ["a", "c", "d", "e", "f"],
        "b was answered first"
    );
    journal.delivered(&key("d")).expect("deliver d");
    assert_eq!(
        cached(&journal),
        ["c", "d", "e", "f"],
        "undelivered finals are never evicted"
    );
    assert_eq!(journal.counts().expect("counts"), (0, 2));
    drop(journal);

    let smaller = JournalLimits {
        reply_cache: 1,
        ..LIMITS
    };
    let journal = Journal::open(&dir.file(), smaller).expect("reopen");
    assert_eq!(
        cached(&journal),
        ["d", "e", "f"],
        "a smaller cache applies at open"
    );
    assert_eq!(journal.undelivered().expect("undelivered").len(), 2);
}

#[test]
fn full_journal_refuses_new_requests_only() {
    let dir = TempDir::new("full");
    let limits = JournalLimits {
        max_pending: 2,
        ..LIMITS
    };
    let journal = Journal::open(&dir.file(), limits).expect("open");
    journal.accept(&request("a")).expect("accept a");
    journal.accept(&request("b")).expect("accept b");
    let err = journal.accept(&request("c")).unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::Full {
                pending: 2,
                limit: 2
            }
        ),
        "{err}"
    );
    journal
        .accept(&request("a"))
        .expect("a pending key is still a no-op");
    journal.answered(&key("a"), b"f", true).expect("answer a");
    journal.accept(&request("c")).expect("room again");
    assert_eq!(ids(&journal.pending().expect("pending")), ["b", "c"]);
}

#[test]
fn oversized_records_and_keys_are_refused_and_not_stored() {
    let dir = TempDir::new("large");
    let journal = Journal::open(&dir.file(), LIMITS).expect("open");
    let refused = |a: Accepted, what: &str| {
        let err = journal.accept(&a).unwrap_err();
        match err {
            JournalError::TooLarge { what: w, .. } if w == what => {}
            other => panic!("expected TooLarge {what}, got {other}"),
        }
    };
    let mut a = request("p");
    a.payload = vec![b'x'; LIMITS.max_record_bytes + 1];
    refused(a, "request payload");
    let mut a = request(&"i".repeat(MAX_ID_BYTES + 1));
    a.key.id = "i".repeat(MAX_ID_BYTES + 1);
    refused(a, "request id");
    let mut a = request("t");
    a.key.reply_to = "t".repeat(MAX_REPLY_TO_BYTES + 1);
    refused(a, "reply address");
    let mut a = request("c");
    a.key.correlation = vec![7; MAX_CORRELATION_BYTES + 1];
    refused(a, "correlation data");
    let mut a = request("n");
    a.client = "n".repeat(MAX_CLIENT_BYTES + 1);
    refused(a, "client name");
    assert_eq!(journal.counts().expect("counts"), (0, 0));

    let mut at_limit = request(&"i".repeat(MAX_ID_BYTES));
    at_limit.payload = vec![b'x'; LIMITS.max_record_bytes];
    at_limit.key.reply_to = "t".repeat(MAX_REPLY_TO_BYTES);
    at_limit.key.correlation = vec![7; MAX_CORRELATION_BYTES];
    journal.accept(&at_limit).expect("exactly at the limits");
    let err = journal
        .answered(
            &at_limit.key,
            &vec![b'f'; LIMITS.max_record_bytes + 1],
            true,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::TooLarge {
                what: "final reply",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        journal.lookup(&at_limit.key).expect("lookup"),
        Lookup::Pending
    );
    let err = journal
        .set_meta("rate", &"9".repeat(MAX_META_VALUE_BYTES + 1))
        .unwrap_err();
    assert!(matches!(err, JournalError::TooLarge { .. }), "{err}");
}

#[test]
fn reopening_keeps_everything() {
    let dir = TempDir::new("reopen");
    let mut no_deadline = request("p2");
    no_deadline.deadline_unix_ms = None;
    no_deadline.seed = 0;
    {
        let journal = Journal::open(&dir.file(), LIMITS).expect("open");
        for a in [
            request("p1"),
            no_deadline.clone(),
            request("u"),
            request("c"),
        ] {
            journal.accept(&a).expect("accept");
        }
        journal
            .answered(&key("u"), b"final u", true)
            .expect("answer u");
        journal
            .answered(&key("c"), b"final c", true)
            .expect("answer c");
        journal.delivered(&key("c")).expect("deliver c");
        journal.set_meta("tokens_per_s", "7.5").expect("set");
        journal.set_meta("tokens_per_s", "8.25").expect("overwrite");
    }
    let journal = Journal::open(&dir.file(), LIMITS).expect("reopen");
    assert_eq!(
        journal.pending().expect("pending"),
        vec![request("p1"), no_deadline]
    );
    assert_eq!(
        journal.undelivered().expect("undelivered"),
        vec![undelivered("u", b"final u")]
    );
    assert_eq!(
        answered_of(&journal, "c"),
        Lookup::Answered {
            final_payload: b"final c".to_vec()
        }
    );
    assert_eq!(
        journal.meta("tokens_per_s").expect("meta").as_deref(),
        Some("8.25")
    );
    assert_eq!(journal.meta("absent").expect("meta"), None);
    assert_eq!(journal.counts().expect("counts"), (2, 1));
}

#[test]
fn created_file_is_private() {
    let dir = TempDir::new("mode");
    let journal = Journal::open(&dir.file(), LIMITS).expect("open");
    journal.accept(&request("a")).expect("accept");
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", dir.file().display()));
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
}

#[test]
fn missing_directory_is_named() {
    let dir = TempDir::new("nodir");
    let path = dir.0.join("absent").join("journal.sqlite");
    let err = Journal::open(&path, LIMITS).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, JournalError::Open { .. }), "{message}");
    assert!(
        message.contains("absent") && message.contains("does not exist"),
        "{message}"
    );
}

#[test]
fn file_that_is_not_a_database_is_refused_and_kept() {
    let dir = TempDir::new("garbage");
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.file(), &garbage).expect("write garbage");
    let err = Journal::open(&dir.file(), LIMITS).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, JournalError::NotADatabase { .. }),
        "{message}"
    );
    assert!(
        message.contains(&dir.file().display().to_string()),
        "{message}"
    );
    assert!(message.contains("move it aside"), "{message}");
    assert_eq!(std::fs::read(dir.file()).expect("still there"), garbage);
}

#[test]
fn corrupt_journal_is_refused_and_kept() {
    let dir = TempDir::new("corrupt");
    {
        let journal = Journal::open(&dir.file(), LIMITS).expect("open");
        for i in 0..50 {
            journal.accept(&request(&format!("r{i}"))).expect("accept");
        }
        // Closing the last connection checkpoints the WAL into the main file.
    }
    let mut bytes = std::fs::read(dir.file()).expect("read");
    assert!(bytes.len() > 4096, "more than the schema page");
    // Keep page 1 (header and schema), overwrite every table and index page.
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b = (i.wrapping_mul(31) % 251) as u8;
    }
    std::fs::write(dir.file(), &bytes).expect("corrupt");
    let err = Journal::open(&dir.file(), LIMITS).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, JournalError::Corrupt { .. }), "{message}");
    assert!(
        message.contains(&dir.file().display().to_string()),
        "{message}"
    );
    assert!(message.contains("move it aside"), "{message}");
    assert_eq!(std::fs::read(dir.file()).expect("still there"), bytes);
}

#[test]
fn newer_schema_is_refused() {
    let dir = TempDir::new("newer");
    drop(Journal::open(&dir.file(), LIMITS).expect("open"));
    let conn = Connection::open(dir.file()).expect("raw open");
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("bump version");
    drop(conn);
    let err = Journal::open(&dir.file(), LIMITS).unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::NewerSchema {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn database_of_another_program_is_refused() {
    let dir = TempDir::new("foreign");
    let conn = Connection::open(dir.file()).expect("raw open");
    conn.execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY);")
        .expect("create");
    drop(conn);
    let err = Journal::open(&dir.file(), LIMITS).unwrap_err();
    assert!(err.to_string().contains("another program"), "{err}");
}

/// Measures accept() (one fsync'd WAL commit each):
/// `cargo test -p spillway --lib accept_latency -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn accept_latency() {
    let dir = TempDir::new("latency");
    let limits = JournalLimits {
        max_pending: 1000,
        ..LIMITS
    };
    let journal = Journal::open(&dir.file(), limits).expect("open");
    let mut micros: Vec<u128> = (0..200)
        .map(|i| {
            let a = request(&format!("lat{i}"));
            let start = Instant::now();
            journal.accept(&a).expect("accept");
            start.elapsed().as_micros()
        })
        .collect();
    micros.sort_unstable();
    println!(
        "accept() over 200 calls in {}: median {} us, p90 {} us, max {} us",
        dir.0.display(),
        micros[100],
        micros[180],
        micros[199]
    );
}
