//! The durable request journal: what makes "every request gets exactly one final reply"
//! hold across restarts, SIGKILL and OOM-kills.
//!
//! It stores, per request key (id, reply address, correlation data): the request as
//! received with what is needed to run it again identically (deadline, sampling seed,
//! client), and once produced its final reply; plus a few named settings ([`Journal::meta`]).
//!
//! Why SQLite: its crash safety is proven (torn writes, a kill mid-commit, power loss), WAL
//! mode gives cheap commits with one fsync, and the bundled C source cross-compiles with the
//! aarch64 gcc the project already uses. One connection behind a mutex: writes are
//! serialised anyway, and the busy timeout covers a second process reading the file.
//!
//! Durability of each call (WAL mode):
//! - [`Journal::accept`] and [`Journal::answered`] commit with `synchronous=FULL`: the WAL
//!   is fsync'd before they return, so they survive power loss. A request is accepted
//!   before its MQTT message is acknowledged; a final is recorded before it is sent.
//! - [`Journal::delivered`] and [`Journal::set_meta`] commit with `synchronous=NORMAL`:
//!   they survive a process kill (the WAL is in the page cache), not necessarily power
//!   loss, after which a final may be sent a second time - never not at all.
//!
//! Life of an entry:
//!
//! ```text
//! accept() -> pending --answered()--> answered --delivered()--> removed       (refusals)
//!                 ^                      |                  \-> cached        (successes)
//!                 |                      |                         |  more than reply_cache
//!                 +---- accept() again --+-------------------------+  cached -> evicted
//! ```
//!
//! On start the daemon answers every [`Journal::pending`] request (runs it again or refuses
//! it `interrupted`) and sends every [`Journal::undelivered`] final again. A resent request
//! whose entry is cached gets the same final again ([`Journal::lookup`]).
//!
//! Bounds: at most `max_pending` pending entries ([`JournalError::Full`]); at most
//! `reply_cache` cached finals (the oldest answered are evicted on delivery and at open);
//! payloads and finals at most `max_record_bytes`; keys, client names and settings by the
//! `MAX_*` constants ([`JournalError::TooLarge`]); the WAL file is truncated back to
//! [`WAL_SIZE_LIMIT_BYTES`] after checkpoints. Answered-but-undelivered entries are not
//! evicted (they are bounded by the pending limit that admitted them).
//!
//! At open, `PRAGMA quick_check` must pass and the schema version (`PRAGMA user_version`)
//! must be one this build knows; a damaged or foreign file is refused with an error naming
//! it, never deleted: it holds requests clients are waiting on.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};

/// The schema this build writes and reads (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;
/// Longest request id accepted into the journal, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest reply address, in bytes.
pub const MAX_REPLY_TO_BYTES: usize = 1024;
/// Longest correlation data, in bytes.
pub const MAX_CORRELATION_BYTES: usize = 1024;
/// Longest client name, in bytes.
pub const MAX_CLIENT_BYTES: usize = 1024;
/// Longest setting name, in bytes.
pub const MAX_META_NAME_BYTES: usize = 128;
/// Longest setting value, in bytes.
pub const MAX_META_VALUE_BYTES: usize = 4096;
/// Size the WAL file is truncated back to after a checkpoint.
pub const WAL_SIZE_LIMIT_BYTES: i64 = 4 << 20;
/// How long a statement waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Integrity problems quoted in a [`JournalError::Corrupt`] (quick_check lists up to 100).
const PROBLEMS_QUOTED: usize = 3;

const SCHEMA: &str = "
CREATE TABLE requests (
    -- Acceptance order; AUTOINCREMENT never reuses a number, so a request accepted again
    -- sorts after everything accepted before it.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    reply_to TEXT NOT NULL,
    correlation BLOB NOT NULL,
    -- 0 pending, 1 answered (final not yet handed to the transport), 2 delivered (cached).
    state INTEGER NOT NULL CHECK (state IN (0, 1, 2)),
    -- Emptied once answered: only the final is needed from then on.
    payload BLOB NOT NULL,
    received_unix_ms INTEGER NOT NULL,
    deadline_unix_ms INTEGER,
    seed INTEGER NOT NULL,
    client TEXT NOT NULL,
    final_payload BLOB CHECK ((state = 0) = (final_payload IS NULL)),
    keep_for_replay INTEGER NOT NULL DEFAULT 0,
    -- Order in which finals were recorded: undelivered() sends, and eviction drops, by it.
    answered_seq INTEGER,
    UNIQUE (id, reply_to, correlation)
);
CREATE INDEX requests_by_state ON requests (state, seq);
CREATE INDEX requests_by_answer ON requests (answered_seq);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// The idempotency key of a request: its id, reply address and correlation data.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub id: String,
    pub reply_to: String,
    pub correlation: Vec<u8>,
}

/// What is journaled when a request is accepted: enough to answer or run it again after a crash.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    pub key: RequestKey,
    /// The request as received (JSON bytes).
    pub payload: Vec<u8>,
    /// Wall-clock times, milliseconds since the Unix epoch.
    pub received_unix_ms: u64,
    pub deadline_unix_ms: Option<u64>,
    /// The sampling seed the request runs with (chosen at acceptance when the client gave none),
    /// so a re-run after a crash reproduces the same text.
    pub seed: u64,
    /// Who sent it (for prefix-cache isolation), e.g. the reply topic.
    pub client: String,
}

/// What the journal knows of a request key.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    Unknown,
    Pending,
    Answered { final_payload: Vec<u8> },
}

#[derive(Clone, Copy, Debug)]
pub struct JournalLimits {
    /// Accepted requests without a final, at most (accept() refuses beyond: JournalError::Full).
    pub max_pending: usize,
    /// Successful finals kept for replay; the oldest are evicted beyond this.
    pub reply_cache: usize,
    /// Largest payload / final stored (bigger: JournalError::TooLarge).
    pub max_record_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the request journal {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the request journal {} is not an SQLite database; move it aside (or configure another \
         journal path) and restart: the daemon then starts an empty journal",
        path.display()
    )]
    NotADatabase { path: PathBuf },
    #[error(
        "the request journal {} failed its integrity check ({problem}); move it aside together \
         with its -wal and -shm files (keep them for inspection) and restart: the daemon then \
         starts an empty journal, and requests pending in the old one go unanswered",
        path.display()
    )]
    Corrupt { path: PathBuf, problem: String },
    #[error(
        "the request journal {} has schema version {found}, newer than the {supported} this \
         spillway understands (written by a newer release?); upgrade spillway, or move the \
         file aside",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("the request journal holds {pending} unanswered requests, its limit is {limit}")]
    Full { pending: usize, limit: usize },
    #[error("{what} is {bytes} bytes, over the request journal's limit of {limit}")]
    TooLarge {
        what: &'static str,
        bytes: usize,
        limit: usize,
    },
    #[error("request {id:?} is {found} in the request journal, expected {expected}")]
    WrongState {
        id: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("request journal storage: {0}")]
    Storage(#[from] rusqlite::Error),
    /// The task running a journal call was cancelled (the runtime is shutting down).
    #[error("the request journal is unavailable: {0}")]
    Unavailable(String),
}

impl JournalError {
    /// Turns SQLite's corruption codes, which can surface from any statement, into the
    /// errors that name the file and say what to do.
    fn located(self, path: &Path) -> JournalError {
        let JournalError::Storage(e) = self else {
            return self;
        };
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => JournalError::NotADatabase {
                path: path.to_path_buf(),
            },
            Some(ErrorCode::DatabaseCorrupt) => JournalError::Corrupt {
                path: path.to_path_buf(),
                problem: e.to_string(),
            },
            _ => JournalError::Storage(e),
        }
    }
}

/// The state column's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Pending = 0,
    Answered = 1,
    Delivered = 2,
}

impl State {
    fn from_column(value: i64) -> rusqlite::Result<State> {
        match value {
            0 => Ok(State::Pending),
            1 => Ok(State::Answered),
            2 => Ok(State::Delivered),
            other => Err(rusqlite::Error::IntegralValueOutOfRange(0, other)),
        }
    }

    fn name(state: Option<State>) -> &'static str {
        match state {
            None => "unknown",
            Some(State::Pending) => "pending",
            Some(State::Answered) => "answered",
            Some(State::Delivered) => "delivered",
        }
    }
}

/// `PRAGMA synchronous` levels the journal switches between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Synchronous {
    /// The WAL is fsync'd at every commit: survives power loss.
    Full,
    /// The WAL is fsync'd at checkpoints only: survives a process kill.
    Normal,
}

impl Synchronous {
    fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// The connection and the synchronous level it is set to (switched only when it changes).
struct Store {
    conn: Connection,
    synchronous: Synchronous,
}

impl Store {
    fn set_synchronous(&mut self, level: Synchronous) -> rusqlite::Result<()> {
        if self.synchronous != level {
            self.conn
                .pragma_update(None, "synchronous", level.pragma_value())?;
            self.synchronous = level;
        }
        Ok(())
    }
}

/// The request journal; see the module documentation.
pub struct Journal {
    path: PathBuf,
    limits: JournalLimits,
    store: Mutex<Store>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens or creates `path` (the parent directory must exist; created files are mode 0600).
    pub fn open(path: &Path, limits: JournalLimits) -> Result<Journal, JournalError> {
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| JournalError::Open {
            path: path.to_path_buf(),
            source,
        };
        create_private(path).map_err(|e| open_error(e.into()))?;
        // NO_MUTEX: the Mutex around the connection serialises its use.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(e.into()))?;
        let prepare = || -> Result<(), JournalError> {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            check_integrity(&conn, path)?;
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(open_error(
                    format!("SQLite kept journal_mode {mode} instead of WAL").into(),
                ));
            }
            conn.pragma_update(None, "synchronous", Synchronous::Full.pragma_value())?;
            conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)?;
            Ok(())
        };
        prepare().map_err(|e| e.located(path))?;
        let mut store = Store {
            conn,
            synchronous: Synchronous::Full,
        };
        migrate(&mut store.conn, path).map_err(|e| e.located(path))?;
        let journal = Journal {
            path: path.to_path_buf(),
            limits,
            store: Mutex::new(store),
        };
        // The reply cache may have been made smaller since the last run.
        journal.with_store(Some(Synchronous::Normal), |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            evict(&tx, limits.reply_cache)?;
            tx.commit()?;
            Ok(())
        })?;
        Ok(journal)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn limits(&self) -> JournalLimits {
        self.limits
    }

    /// Journals an accepted request; durable (fsync'd) when it returns. Accepting a key that is
    /// already pending is a no-op (Ok); a key that has an answered entry replaces it (a new attempt).
    pub fn accept(&self, a: &Accepted) -> Result<(), JournalError> {
        check_key(&a.key)?;
        check_size(
            "request payload",
            a.payload.len(),
            self.limits.max_record_bytes,
        )?;
        check_size("client name", a.client.len(), MAX_CLIENT_BYTES)?;
        let max_pending = self.limits.max_pending;
        self.with_store(Some(Synchronous::Full), |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            match entry_state(&tx, &a.key)? {
                Some((State::Pending, _)) => return Ok(()),
                Some(_) => {
                    tx.execute(
                        "DELETE FROM requests WHERE id = ?1 AND reply_to = ?2 AND correlation = ?3",
                        params![a.key.id, a.key.reply_to, a.key.correlation],
                    )?;
                }
                None => {}
            }
            let pending = count(&tx, "SELECT COUNT(*) FROM requests WHERE state = 0")?;
            if pending >= max_pending {
                return Err(JournalError::Full {
                    pending,
                    limit: max_pending,
                });
            }
            tx.execute(
                "INSERT INTO requests (id, reply_to, correlation, state, payload, \
                 received_unix_ms, deadline_unix_ms, seed, client) \
                 VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8)",
                params![
                    a.key.id,
                    a.key.reply_to,
                    a.key.correlation,
                    a.payload,
                    u64_to_column(a.received_unix_ms),
                    a.deadline_unix_ms.map(u64_to_column),
                    u64_to_column(a.seed),
                    a.client,
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    pub fn lookup(&self, key: &RequestKey) -> Result<Lookup, JournalError> {
        check_key(key)?;
        self.with_store(None, |conn| {
            let row = conn
                .query_row(
                    "SELECT state, final_payload FROM requests \
                     WHERE id = ?1 AND reply_to = ?2 AND correlation = ?3",
                    params![key.id, key.reply_to, key.correlation],
                    |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Option<Vec<u8>>>(1)?)),
                )
                .optional()?;
            Ok(match row {
                None => Lookup::Unknown,
                Some((state, final_payload)) => match (State::from_column(state)?, final_payload) {
                    (State::Pending, _) => Lookup::Pending,
                    (_, Some(final_payload)) => Lookup::Answered { final_payload },
                    // The schema's CHECK makes this unreachable short of corruption.
                    (_, None) => {
                        return Err(JournalError::Corrupt {
                            path: self.path.clone(),
                            problem: format!("answered request {:?} has no final", key.id),
                        });
                    }
                },
            })
        })
    }

    /// Records the final reply of a pending request (durable). `keep_for_replay`: keep it in the
    /// reply cache (successful finals); false: the entry is removed once delivered (refusals: a
    /// resend is a new attempt). A key that is not pending: [`JournalError::WrongState`].
    pub fn answered(
        &self,
        key: &RequestKey,
        final_payload: &[u8],
        keep_for_replay: bool,
    ) -> Result<(), JournalError> {
        check_key(key)?;
        check_size(
            "final reply",
            final_payload.len(),
            self.limits.max_record_bytes,
        )?;
        self.with_store(Some(Synchronous::Full), |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let state = entry_state(&tx, key)?.map(|(state, _)| state);
            if state != Some(State::Pending) {
                return Err(JournalError::WrongState {
                    id: key.id.clone(),
                    found: State::name(state),
                    expected: "pending",
                });
            }
            tx.execute(
                "UPDATE requests SET state = 1, payload = x'', final_payload = ?4, \
                 keep_for_replay = ?5, \
                 answered_seq = (SELECT COALESCE(MAX(answered_seq), 0) + 1 FROM requests) \
                 WHERE id = ?1 AND reply_to = ?2 AND correlation = ?3",
                params![
                    key.id,
                    key.reply_to,
                    key.correlation,
                    final_payload,
                    keep_for_replay
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The final was handed to the transport (need not be fsync'd: WAL with synchronous=NORMAL
    /// is enough, it survives a process kill). Removes entries not kept for replay. A key
    /// already delivered or gone (evicted, replaced) is a no-op; a pending key:
    /// [`JournalError::WrongState`].
    pub fn delivered(&self, key: &RequestKey) -> Result<(), JournalError> {
        check_key(key)?;
        let reply_cache = self.limits.reply_cache;
        self.with_store(Some(Synchronous::Normal), |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let key_params = params![key.id, key.reply_to, key.correlation];
            match entry_state(&tx, key)? {
                None | Some((State::Delivered, _)) => return Ok(()),
                Some((State::Pending, _)) => {
                    return Err(JournalError::WrongState {
                        id: key.id.clone(),
                        found: "pending",
                        expected: "answered",
                    });
                }
                Some((State::Answered, true)) => {
                    tx.execute(
                        "UPDATE requests SET state = 2 \
                         WHERE id = ?1 AND reply_to = ?2 AND correlation = ?3",
                        key_params,
                    )?;
                    evict(&tx, reply_cache)?;
                }
                Some((State::Answered, false)) => {
                    tx.execute(
                        "DELETE FROM requests WHERE id = ?1 AND reply_to = ?2 AND correlation = ?3",
                        key_params,
                    )?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Accepted requests without a final, oldest first.
    pub fn pending(&self) -> Result<Vec<Accepted>, JournalError> {
        self.with_store(None, |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, reply_to, correlation, payload, received_unix_ms, deadline_unix_ms, \
                 seed, client FROM requests WHERE state = 0 ORDER BY seq",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(Accepted {
                    key: RequestKey {
                        id: row.get(0)?,
                        reply_to: row.get(1)?,
                        correlation: row.get(2)?,
                    },
                    payload: row.get(3)?,
                    received_unix_ms: column_to_u64(row.get(4)?),
                    deadline_unix_ms: row.get::<_, Option<i64>>(5)?.map(column_to_u64),
                    seed: column_to_u64(row.get(6)?),
                    client: row.get(7)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Finals recorded but not delivered: (key, final payload), oldest first.
    pub fn undelivered(&self) -> Result<Vec<(RequestKey, Vec<u8>)>, JournalError> {
        self.with_store(None, |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, reply_to, correlation, final_payload FROM requests \
                 WHERE state = 1 ORDER BY answered_seq",
            )?;
            let rows = stmt.query_map([], |row| {
                let key = RequestKey {
                    id: row.get(0)?,
                    reply_to: row.get(1)?,
                    correlation: row.get(2)?,
                };
                Ok((key, row.get(3)?))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Small persisted settings (e.g. the measured generation rate): get/set by name.
    pub fn meta(&self, name: &str) -> Result<Option<String>, JournalError> {
        check_size("setting name", name.len(), MAX_META_NAME_BYTES)?;
        self.with_store(None, |conn| {
            Ok(conn
                .query_row(
                    "SELECT value FROM meta WHERE name = ?1",
                    params![name],
                    |row| row.get(0),
                )
                .optional()?)
        })
    }

    /// Durable against a process kill, not power loss (`synchronous=NORMAL`).
    pub fn set_meta(&self, name: &str, value: &str) -> Result<(), JournalError> {
        check_size("setting name", name.len(), MAX_META_NAME_BYTES)?;
        check_size("setting value", value.len(), MAX_META_VALUE_BYTES)?;
        self.with_store(Some(Synchronous::Normal), |conn| {
            conn.execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![name, value],
            )?;
            Ok(())
        })
    }

    /// (pending, cached finals), for telemetry. Cached: delivered finals kept for replay
    /// (at most `reply_cache`).
    pub fn counts(&self) -> Result<(usize, usize), JournalError> {
        self.with_store(None, |conn| {
            let pending = count(conn, "SELECT COUNT(*) FROM requests WHERE state = 0")?;
            let cached = count(conn, "SELECT COUNT(*) FROM requests WHERE state = 2")?;
            Ok((pending, cached))
        })
    }

    /// Runs `work` on the connection (after switching to `synchronous`, for writes) and
    /// names the file in corruption errors.
    fn with_store<T>(
        &self,
        synchronous: Option<Synchronous>,
        work: impl FnOnce(&mut Connection) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        // A panic while the lock was held cannot leave a half-written entry: the dropped
        // transaction rolled back. So a poisoned lock is still a usable connection.
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let result = match synchronous {
            Some(level) => store.set_synchronous(level).map_err(JournalError::from),
            None => Ok(()),
        };
        result
            .and_then(|()| work(&mut store.conn))
            .map_err(|e| e.located(&self.path))
    }
}

/// Creates `path` with mode 0600 unless it exists (SQLite gives its -wal and -shm files the
/// database file's mode), and makes the new directory entry durable.
fn create_private(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("its directory {} does not exist", parent.display()),
        ));
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => {
            file.sync_all()?;
            File::open(parent)?.sync_all()
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// `PRAGMA quick_check`: the b-trees are well formed (not the slower index cross-check of
/// integrity_check). A file that is not a database fails here with NotADatabase.
fn check_integrity(conn: &Connection, path: &Path) -> Result<(), JournalError> {
    let mut problems = Vec::new();
    let mut total = 0usize;
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let line: String = row.get(0)?;
        if line != "ok" {
            total += 1;
            if problems.len() < PROBLEMS_QUOTED {
                problems.push(line);
            }
        }
    }
    if total == 0 {
        return Ok(());
    }
    let mut problem = problems.join("; ");
    if total > problems.len() {
        problem.push_str(&format!(" and {} more", total - problems.len()));
    }
    Err(JournalError::Corrupt {
        path: path.to_path_buf(),
        problem,
    })
}

/// Creates the schema in a new file; refuses files of a newer release or of another program.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), JournalError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    match version {
        SCHEMA_VERSION => Ok(()),
        0 => {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let tables = count(
                &tx,
                "SELECT COUNT(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'",
            )?;
            if tables > 0 {
                return Err(JournalError::Open {
                    path: path.to_path_buf(),
                    source: "it is an SQLite database of another program (it has tables but no \
                             Spillway schema version)"
                        .into(),
                });
            }
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
            Ok(())
        }
        found if found > SCHEMA_VERSION => Err(JournalError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        }),
        found => Err(JournalError::Open {
            path: path.to_path_buf(),
            source: format!("its schema version {found} is not one Spillway ever wrote").into(),
        }),
    }
}

/// Drops the oldest-answered delivered entries beyond `keep`.
fn evict(tx: &Transaction<'_>, keep: usize) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM requests WHERE seq IN (SELECT seq FROM requests WHERE state = 2 \
         ORDER BY answered_seq DESC LIMIT -1 OFFSET ?1)",
        params![i64::try_from(keep).unwrap_or(i64::MAX)],
    )?;
    Ok(())
}

/// The state of `key`'s entry and whether its final is kept for replay.
fn entry_state(conn: &Connection, key: &RequestKey) -> rusqlite::Result<Option<(State, bool)>> {
    conn.query_row(
        "SELECT state, keep_for_replay FROM requests \
         WHERE id = ?1 AND reply_to = ?2 AND correlation = ?3",
        params![key.id, key.reply_to, key.correlation],
        |row| Ok((State::from_column(row.get(0)?)?, row.get::<_, bool>(1)?)),
    )
    .optional()
}

fn count(conn: &Connection, sql: &str) -> rusqlite::Result<usize> {
    let n: i64 = conn.query_row(sql, [], |row| row.get(0))?;
    // COUNT(*) is never negative.
    Ok(usize::try_from(n).unwrap_or(0))
}

fn check_key(key: &RequestKey) -> Result<(), JournalError> {
    check_size("request id", key.id.len(), MAX_ID_BYTES)?;
    check_size("reply address", key.reply_to.len(), MAX_REPLY_TO_BYTES)?;
    check_size(
        "correlation data",
        key.correlation.len(),
        MAX_CORRELATION_BYTES,
    )
}

fn check_size(what: &'static str, bytes: usize, limit: usize) -> Result<(), JournalError> {
    if bytes > limit {
        return Err(JournalError::TooLarge { what, bytes, limit });
    }
    Ok(())
}

/// SQLite integers are i64; u64 values (seeds use the whole range) are stored bit for bit.
fn u64_to_column(value: u64) -> i64 {
    value as i64
}

fn column_to_u64(value: i64) -> u64 {
    value as u64
}

#[cfg(test)]
mod tests {
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
            vec![(key("a"), b"final a".to_vec())]
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
            .map(|(k, _)| k.id)
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
            vec![(key("u"), b"final u".to_vec())]
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
}
