//! The SQLite file: its schema and what marks it as a journal, and how it is opened
//! (checked, migrated, WAL with `synchronous=FULL`).

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use crate::journal::{JournalError, owners};

/// Marks a SQLite file as this crate's journal (`PRAGMA application_id`), so that
/// another application's database is refused rather than written into.
pub(super) const APPLICATION_ID: i32 = 0x4944_454d; // "IDEM"

/// The schema this version writes; a file with a newer one is refused.
pub(super) const SCHEMA_VERSION: i32 = 3;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY NOT NULL,
    key TEXT NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    key_header TEXT NOT NULL,
    key_value BLOB NOT NULL,
    headers BLOB NOT NULL,
    body BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    state INTEGER NOT NULL,
    attention TEXT,
    answer_status INTEGER,
    answer_headers BLOB,
    answer_body BLOB,
    attempts INTEGER NOT NULL DEFAULT 0,
    holder TEXT,
    token INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    not_before_ms INTEGER,
    resumes INTEGER NOT NULL DEFAULT 0,
    closed_ms INTEGER,
    owner TEXT,
    secret_headers TEXT NOT NULL DEFAULT '',
    fingerprint BLOB
);
CREATE INDEX IF NOT EXISTS operations_open ON operations (state, created_ms);
";

pub(super) const PENDING: i64 = 0;
pub(super) const COMPLETED: i64 = 1;
pub(super) const ATTENTION: i64 = 2;
pub(super) const ABANDONED: i64 = 3;
/// Completed, past `keep_answers`: the answer's body is gone, its status and headers kept.
pub(super) const EXPIRED: i64 = 4;

pub(super) fn storage(what: &'static str) -> impl Fn(rusqlite::Error) -> JournalError {
    move |e| match e {
        rusqlite::Error::SqliteFailure(code, _)
            if code.code == rusqlite::ErrorCode::NotADatabase =>
        {
            JournalError::corrupt(format!("{what}: the file is not a SQLite database"))
        }
        e => JournalError::storage(what, e),
    }
}

pub(super) fn open(path: &Path, busy: Duration) -> Result<Connection, JournalError> {
    let shown = path.display().to_string();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if let Some(kind) = owners::network_file_system(dir) {
        return Err(JournalError::Storage {
            reason: format!(
                "{shown} is on {kind}, a network file system, where SQLite's locks do not \
                 hold: put the journal on a local disk, or use PostgresJournal"
            ),
            source: None,
        });
    }
    let connection = Connection::open(path)
        .map_err(|e| JournalError::storage(format!("could not open the journal {shown}"), e))?;
    connection
        .busy_timeout(busy)
        .map_err(storage("could not set the busy timeout"))?;
    let application_id: i32 = connection
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(storage("could not read the journal"))?;
    let version: i32 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(storage("could not read the journal"))?;
    let tables: i64 = connection
        .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
        .map_err(storage("could not read the journal"))?;
    if application_id != APPLICATION_ID && (application_id != 0 || tables > 0) {
        return Err(JournalError::corrupt(format!(
            "{shown} is another application's SQLite database, not an operation journal"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(JournalError::corrupt(format!(
            "{shown} has journal schema {version}; this version reads up to {SCHEMA_VERSION}"
        )));
    }
    // WAL for concurrent readers; FULL so that a commit is synced before it returns.
    let mode: String = connection
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(storage("could not turn on WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(JournalError::Storage {
            reason: format!("{shown}: SQLite refused WAL mode (journal_mode is {mode})"),
            source: None,
        });
    }
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(storage("could not set synchronous=FULL"))?;
    connection
        .execute_batch(SCHEMA)
        .map_err(storage("could not create the journal's schema"))?;
    // A new file (version 0) was just created whole; an older one gains what it lacks.
    let migrations = [
        // Schema 2 records the names of a request's secret headers.
        (
            2,
            "ALTER TABLE operations ADD COLUMN secret_headers TEXT NOT NULL DEFAULT ''",
        ),
        // Schema 3 records the request's fingerprint, which outlives a completed body.
        (3, "ALTER TABLE operations ADD COLUMN fingerprint BLOB"),
    ];
    for (to, statement) in migrations {
        if (1..to).contains(&version) {
            connection
                .execute_batch(statement)
                .map_err(storage("could not migrate the journal's schema"))?;
        }
    }
    connection
        .pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(storage("could not mark the journal"))?;
    connection
        .pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(storage("could not mark the journal's schema"))?;
    Ok(connection)
}
