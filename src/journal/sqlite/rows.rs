//! Rows as entries, and the journal's clock in milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension};

use super::schema::{ABANDONED, ATTENTION, COMPLETED, EXPIRED, PENDING, storage};
use crate::journal::blob::{self, decode};
use crate::journal::{EntryState, JournalEntry, JournalError, Lease, RecordedRequest};

/// The journal's clock: milliseconds since the Unix epoch.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(super) fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

pub(super) fn since(earlier_ms: i64, now: i64) -> Duration {
    Duration::from_millis(u64::try_from(now.saturating_sub(earlier_ms)).unwrap_or(0))
}

pub(super) const COLUMNS: &str = "id, key, method, url, key_header, key_value, headers, body, created_ms, \
     state, attention, answer_status, answer_headers, answer_body, attempts, holder, expires_ms, \
     not_before_ms, resumes, secret_headers, fingerprint";

/// What a claim reads: state, holder, token, lease expiry, not-before, the holder's
/// process (its owner registration).
pub(super) type ClaimRow = (i64, Option<String>, i64, i64, Option<i64>, Option<String>);

/// A row as read, before its blobs are checked.
pub(super) struct RawRow {
    id: String,
    request: (String, String, String, String, Vec<u8>, Vec<u8>, Vec<u8>),
    created_ms: i64,
    state: i64,
    attention: Option<String>,
    answer: (Option<i64>, Option<Vec<u8>>, Option<Vec<u8>>),
    attempts: i64,
    holder: Option<String>,
    expires_ms: i64,
    not_before_ms: Option<i64>,
    resumes: i64,
    secret_headers: String,
    fingerprint: Option<Vec<u8>>,
}

pub(super) fn raw(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: row.get(0)?,
        request: (
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
            row.get(6)?,
            row.get(7)?,
        ),
        created_ms: row.get(8)?,
        state: row.get(9)?,
        attention: row.get(10)?,
        answer: (row.get(11)?, row.get(12)?, row.get(13)?),
        attempts: row.get(14)?,
        holder: row.get(15)?,
        expires_ms: row.get(16)?,
        not_before_ms: row.get(17)?,
        resumes: row.get(18)?,
        secret_headers: row.get(19)?,
        fingerprint: row.get(20)?,
    })
}

pub(super) fn entry(row: RawRow, now: i64) -> Result<JournalEntry, JournalError> {
    let (key, method, url, key_header, key_value, headers, body) = row.request;
    let (status, answer_headers, answer_body) = row.answer;
    let answer = blob::answer(status, answer_headers.as_deref(), answer_body)?;
    let mut attention_answer = None;
    let state = match row.state {
        PENDING => EntryState::Pending,
        COMPLETED => {
            let Some(answer) = answer else {
                return Err(JournalError::corrupt(format!(
                    "operation {:?} is completed without its answer",
                    row.id
                )));
            };
            EntryState::Completed(answer)
        }
        ATTENTION => {
            attention_answer = answer;
            EntryState::NeedsAttention(row.attention.unwrap_or_default())
        }
        ABANDONED => EntryState::Abandoned(row.attention.unwrap_or_default()),
        EXPIRED => blob::expired(status, answer_headers.as_deref())?,
        other => return Err(JournalError::corrupt(format!("operation state {other}"))),
    };
    Ok(JournalEntry {
        request: RecordedRequest {
            method,
            url,
            key,
            key_header,
            key_value,
            headers: decode(&headers)?,
            secret_headers: blob::split_names(&row.secret_headers),
            body: Bytes::from(body),
            fingerprint: row.fingerprint.map(Bytes::from),
        },
        state,
        age: since(row.created_ms, now),
        attempts: u32::try_from(row.attempts).unwrap_or(u32::MAX),
        holder: row.holder.filter(|_| row.expires_ms > now),
        not_before: row
            .not_before_ms
            .filter(|at| *at > now)
            .map(|at| since(now, at)),
        resumes: u32::try_from(row.resumes).unwrap_or(u32::MAX),
        answer: attention_answer,
        id: row.id,
    })
}

pub(super) fn find(
    connection: &Connection,
    id: &str,
) -> Result<Option<JournalEntry>, JournalError> {
    let read = storage("could not read an operation");
    let row = connection
        .prepare_cached(&format!("SELECT {COLUMNS} FROM operations WHERE id = ?1"))
        .map_err(&read)?
        .query_row([id], raw)
        .optional()
        .map_err(&read)?;
    row.map(|row| entry(row, now_ms())).transpose()
}

/// A lease's token as SQLite stores it.
pub(super) fn token(lease: &Lease) -> i64 {
    i64::try_from(lease.token).unwrap_or(i64::MAX)
}
