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
//!
//! The storage underneath (schema, migration, file checks) is in `store`.

mod store;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use store::{
    State, Store, Synchronous, check_integrity, check_key, check_size, column_to_u64, count,
    create_private, entry_state, evict, migrate, u64_to_column,
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

/// A final recorded but not delivered (see [`Journal::undelivered`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Undelivered {
    pub key: RequestKey,
    /// Who sent the request ([`Accepted::client`]).
    pub client: String,
    pub final_payload: Vec<u8>,
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

    /// Finals recorded but not delivered, oldest first.
    pub fn undelivered(&self) -> Result<Vec<Undelivered>, JournalError> {
        self.with_store(None, |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, reply_to, correlation, client, final_payload FROM requests \
                 WHERE state = 1 ORDER BY answered_seq",
            )?;
            let rows = stmt.query_map([], |row| {
                let key = RequestKey {
                    id: row.get(0)?,
                    reply_to: row.get(1)?,
                    correlation: row.get(2)?,
                };
                Ok(Undelivered {
                    key,
                    client: row.get(3)?,
                    final_payload: row.get(4)?,
                })
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
