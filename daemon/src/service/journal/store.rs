//! The journal's storage: the SQLite schema and its migration, the file's creation and
//! integrity check, the connection with its `synchronous` level, and the row helpers the
//! [`Journal`](super::Journal) calls are made of.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{
    JournalError, MAX_CORRELATION_BYTES, MAX_ID_BYTES, MAX_REPLY_TO_BYTES, PROBLEMS_QUOTED,
    RequestKey, SCHEMA_VERSION,
};

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

/// The state column's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Pending = 0,
    Answered = 1,
    Delivered = 2,
}

impl State {
    pub(super) fn from_column(value: i64) -> rusqlite::Result<State> {
        match value {
            0 => Ok(State::Pending),
            1 => Ok(State::Answered),
            2 => Ok(State::Delivered),
            other => Err(rusqlite::Error::IntegralValueOutOfRange(0, other)),
        }
    }

    pub(super) fn name(state: Option<State>) -> &'static str {
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
pub(super) enum Synchronous {
    /// The WAL is fsync'd at every commit: survives power loss.
    Full,
    /// The WAL is fsync'd at checkpoints only: survives a process kill.
    Normal,
}

impl Synchronous {
    pub(super) fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// The connection and the synchronous level it is set to (switched only when it changes).
pub(super) struct Store {
    pub(super) conn: Connection,
    pub(super) synchronous: Synchronous,
}

impl Store {
    pub(super) fn set_synchronous(&mut self, level: Synchronous) -> rusqlite::Result<()> {
        if self.synchronous != level {
            self.conn
                .pragma_update(None, "synchronous", level.pragma_value())?;
            self.synchronous = level;
        }
        Ok(())
    }
}

/// Creates `path` with mode 0600 unless it exists (SQLite gives its -wal and -shm files the
/// database file's mode), and makes the new directory entry durable.
pub(super) fn create_private(path: &Path) -> io::Result<()> {
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
pub(super) fn check_integrity(conn: &Connection, path: &Path) -> Result<(), JournalError> {
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
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), JournalError> {
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
pub(super) fn evict(tx: &Transaction<'_>, keep: usize) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM requests WHERE seq IN (SELECT seq FROM requests WHERE state = 2 \
         ORDER BY answered_seq DESC LIMIT -1 OFFSET ?1)",
        params![i64::try_from(keep).unwrap_or(i64::MAX)],
    )?;
    Ok(())
}

/// The state of `key`'s entry and whether its final is kept for replay.
pub(super) fn entry_state(
    conn: &Connection,
    key: &RequestKey,
) -> rusqlite::Result<Option<(State, bool)>> {
    conn.query_row(
        "SELECT state, keep_for_replay FROM requests \
         WHERE id = ?1 AND reply_to = ?2 AND correlation = ?3",
        params![key.id, key.reply_to, key.correlation],
        |row| Ok((State::from_column(row.get(0)?)?, row.get::<_, bool>(1)?)),
    )
    .optional()
}

pub(super) fn count(conn: &Connection, sql: &str) -> rusqlite::Result<usize> {
    let n: i64 = conn.query_row(sql, [], |row| row.get(0))?;
    // COUNT(*) is never negative.
    Ok(usize::try_from(n).unwrap_or(0))
}

pub(super) fn check_key(key: &RequestKey) -> Result<(), JournalError> {
    check_size("request id", key.id.len(), MAX_ID_BYTES)?;
    check_size("reply address", key.reply_to.len(), MAX_REPLY_TO_BYTES)?;
    check_size(
        "correlation data",
        key.correlation.len(),
        MAX_CORRELATION_BYTES,
    )
}

pub(super) fn check_size(
    what: &'static str,
    bytes: usize,
    limit: usize,
) -> Result<(), JournalError> {
    if bytes > limit {
        return Err(JournalError::TooLarge { what, bytes, limit });
    }
    Ok(())
}

/// SQLite integers are i64; u64 values (seeds use the whole range) are stored bit for bit.
pub(super) fn u64_to_column(value: u64) -> i64 {
    value as i64
}

pub(super) fn column_to_u64(value: i64) -> u64 {
    value as u64
}
