//! Rows as entries: what every read selects, and how a row reads.

use std::time::Duration;

use bytes::Bytes;
use tokio_postgres::Row;

use super::schema::{ABANDONED, ATTENTION, COMPLETED, EXPIRED, PENDING};
use crate::journal::blob::{self, decode};
use crate::journal::{EntryState, JournalEntry, JournalError, Lease, RecordedRequest};

/// What every read selects, ages and waits computed by the database's clock.
pub(super) const COLUMNS: &str = "id, key, method, url, key_header, key_value, headers, body, state, \
    attention, answer_status, answer_headers, answer_body, attempts, \
    CASE WHEN expires_at > now() THEN holder END AS live_holder, \
    (EXTRACT(EPOCH FROM (now() - created_at)) * 1000)::BIGINT AS age_ms, \
    (EXTRACT(EPOCH FROM (not_before - now())) * 1000)::BIGINT AS wait_ms, resumes, \
    secret_headers, fingerprint";

pub(super) fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

pub(super) fn millis(value: Option<i64>) -> Option<Duration> {
    value
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

pub(super) fn entry(row: &Row) -> Result<JournalEntry, JournalError> {
    let bad = |e: tokio_postgres::Error| JournalError::corrupt(format!("a row: {e}"));
    let state: i16 = row.try_get("state").map_err(bad)?;
    let status: Option<i32> = row.try_get("answer_status").map_err(bad)?;
    let answer_headers: Option<Vec<u8>> = row.try_get("answer_headers").map_err(bad)?;
    let answer_body: Option<Vec<u8>> = row.try_get("answer_body").map_err(bad)?;
    let status = status.map(i64::from);
    let answer = blob::answer(status, answer_headers.as_deref(), answer_body)?;
    let mut attention_answer = None;
    let state = match state {
        PENDING => EntryState::Pending,
        COMPLETED => {
            let Some(answer) = answer else {
                return Err(JournalError::corrupt(
                    "a completed operation without its answer",
                ));
            };
            EntryState::Completed(answer)
        }
        ATTENTION => {
            attention_answer = answer;
            EntryState::NeedsAttention(
                row.try_get::<_, Option<String>>("attention")
                    .map_err(bad)?
                    .unwrap_or_default(),
            )
        }
        ABANDONED => EntryState::Abandoned(
            row.try_get::<_, Option<String>>("attention")
                .map_err(bad)?
                .unwrap_or_default(),
        ),
        EXPIRED => blob::expired(status, answer_headers.as_deref())?,
        other => return Err(JournalError::corrupt(format!("operation state {other}"))),
    };
    let headers: Vec<u8> = row.try_get("headers").map_err(bad)?;
    let body: Vec<u8> = row.try_get("body").map_err(bad)?;
    let attempts: i64 = row.try_get("attempts").map_err(bad)?;
    let resumes: i64 = row.try_get("resumes").map_err(bad)?;
    let secret_headers: String = row.try_get("secret_headers").map_err(bad)?;
    Ok(JournalEntry {
        id: row.try_get("id").map_err(bad)?,
        request: RecordedRequest {
            method: row.try_get("method").map_err(bad)?,
            url: row.try_get("url").map_err(bad)?,
            key: row.try_get("key").map_err(bad)?,
            key_header: row.try_get("key_header").map_err(bad)?,
            key_value: row.try_get("key_value").map_err(bad)?,
            headers: decode(&headers)?,
            secret_headers: blob::split_names(&secret_headers),
            body: Bytes::from(body),
            fingerprint: row
                .try_get::<_, Option<Vec<u8>>>("fingerprint")
                .map_err(bad)?
                .map(Bytes::from),
        },
        state,
        age: millis(row.try_get("age_ms").map_err(bad)?).unwrap_or_default(),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        holder: row.try_get("live_holder").map_err(bad)?,
        not_before: millis(row.try_get("wait_ms").map_err(bad)?),
        resumes: u32::try_from(resumes).unwrap_or(u32::MAX),
        answer: attention_answer,
    })
}

pub(super) fn token(lease: &Lease) -> i64 {
    i64::try_from(lease.token).unwrap_or(i64::MAX)
}
