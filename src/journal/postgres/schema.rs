//! The journal's table in PostgreSQL: its schema, created or migrated under a
//! fleet-wide advisory lock, and the states a row can be in.

use tokio_postgres::Client;

use crate::journal::JournalError;

/// The schema this version writes; a database with a newer one is refused.
pub(super) const SCHEMA_VERSION: i32 = 3;

/// The advisory lock under which the schema is created or migrated, fleet-wide.
pub(super) const SCHEMA_LOCK: i64 = 0x4944_454d_504f_5354; // "IDEMPOST"

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS idempotent_retry_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS idempotent_retry_operations (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    key TEXT NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    key_header TEXT NOT NULL,
    key_value BYTEA NOT NULL,
    headers BYTEA NOT NULL,
    body BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    state SMALLINT NOT NULL DEFAULT 0,
    attention TEXT,
    answer_status INTEGER,
    answer_headers BYTEA,
    answer_body BYTEA,
    attempts BIGINT NOT NULL DEFAULT 0,
    holder TEXT,
    token BIGINT NOT NULL DEFAULT 1,
    expires_at TIMESTAMPTZ NOT NULL,
    not_before TIMESTAMPTZ,
    resumes BIGINT NOT NULL DEFAULT 0,
    closed_at TIMESTAMPTZ,
    PRIMARY KEY (namespace, id)
);
-- Schema 2: the names of a request's secret headers, one a line.
ALTER TABLE idempotent_retry_operations
    ADD COLUMN IF NOT EXISTS secret_headers TEXT NOT NULL DEFAULT '';
-- Schema 3: the request's fingerprint, which outlives a completed record's body.
ALTER TABLE idempotent_retry_operations ADD COLUMN IF NOT EXISTS fingerprint BYTEA;
CREATE INDEX IF NOT EXISTS idempotent_retry_operations_open
    ON idempotent_retry_operations (namespace, state, created_at);
";

// Statements about one operation test its state as `state + 0`, which no index serves:
// they find their row by the primary key alone, never by walking this index of open
// operations (all of a namespace's pending rows).

pub(super) const PENDING: i16 = 0;
pub(super) const COMPLETED: i16 = 1;
pub(super) const ATTENTION: i16 = 2;
pub(super) const ABANDONED: i16 = 3;
/// Completed, past `keep_answers`: the answer's body is gone, its status and headers kept.
pub(super) const EXPIRED: i16 = 4;

pub(super) fn sql(what: &'static str) -> impl Fn(tokio_postgres::Error) -> JournalError {
    move |e| JournalError::storage(what, e)
}

/// Creates the schema or checks it, under the fleet-wide lock.
pub(super) async fn migrate(client: &Client) -> Result<(), JournalError> {
    let fail = sql("could not create the journal's schema");
    client.batch_execute("BEGIN").await.map_err(&fail)?;
    let result = async {
        client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(&fail)?;
        client.batch_execute(SCHEMA).await.map_err(&fail)?;
        let version: Option<i32> = client
            .query_opt("SELECT max(version) FROM idempotent_retry_schema", &[])
            .await
            .map_err(&fail)?
            .and_then(|row| row.get(0));
        match version {
            None => {
                client
                    .execute(
                        "INSERT INTO idempotent_retry_schema (version) VALUES ($1)",
                        &[&SCHEMA_VERSION],
                    )
                    .await
                    .map_err(&fail)?;
                Ok(())
            }
            Some(v) if v > SCHEMA_VERSION => Err(JournalError::corrupt(format!(
                "the database has journal schema {v}; this version reads up to {SCHEMA_VERSION}"
            ))),
            // Older: the schema above has just added what it lacked.
            Some(v) if v < SCHEMA_VERSION => {
                client
                    .execute(
                        "UPDATE idempotent_retry_schema SET version = $1",
                        &[&SCHEMA_VERSION],
                    )
                    .await
                    .map_err(&fail)?;
                Ok(())
            }
            Some(_) => Ok(()),
        }
    }
    .await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    client.batch_execute(end).await.map_err(&fail)?;
    result
}
