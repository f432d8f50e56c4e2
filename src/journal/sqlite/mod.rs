//! The journal in one SQLite file (feature `journal-sqlite`): the embedded default, for
//! a process or several on one machine. SQLite is bundled: nothing to install.
//!
//! Durable means synced: WAL with `synchronous=FULL`, so a write is on disk when it
//! returns. Claims run in `BEGIN IMMEDIATE` transactions; writes that name a lease are
//! conditional on its token. The journal's clock is the machine's wall clock, shared by
//! every process on it.
//!
//! Here: the builder and the statements of each [`Journal`] method. Beside it:
//! `schema.rs` (the file, opened, checked and migrated), `writer.rs` (the thread that
//! groups concurrent writes into one synced commit) and `rows.rs` (rows as entries).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

mod rows;
mod schema;
mod writer;

use super::blob::{self, encode};
use super::owners;
use super::{
    Claimed, Inserted, Journal, JournalEntry, JournalError, JournalFuture, Lease, Limits,
    RecordedAnswer, RecordedRequest, Release, Resolution, fenced, limit_setters, limits_of,
};
use rows::{COLUMNS, ClaimRow, entry, find, ms, now_ms, raw, since, token};
use schema::{ATTENTION, PENDING, open, storage};
use writer::Writer;

/// Settings for a [`SqliteJournal`].
///
/// # Default
///
/// | setting | default |
/// |---|---|
/// | `lease_duration` | 30 s ([`DEFAULT_LEASE_DURATION`](super::DEFAULT_LEASE_DURATION)) |
/// | `max_resume_age` | 20 h ([`DEFAULT_MAX_RESUME_AGE`](super::DEFAULT_MAX_RESUME_AGE), below Stripe's 24 h) |
/// | `max_resumes` | 20 ([`DEFAULT_MAX_RESUMES`](super::DEFAULT_MAX_RESUMES)) |
/// | `completed_retention` | 7 days ([`DEFAULT_COMPLETED_RETENTION`](super::DEFAULT_COMPLETED_RETENTION)) |
/// | `keep_answers` | as long as `completed_retention`: a re-run gets the whole answer while the record is kept |
/// | `busy_timeout` | 5 s waiting for another process's write |
///
/// ```no_run
/// use std::time::Duration;
/// use idempotent_retry::journal::SqliteJournal;
///
/// # async fn run() -> Result<(), idempotent_retry::Error> {
/// let journal = SqliteJournal::builder("ops.db")
///     .lease_duration(Duration::from_secs(30))
///     .max_resume_age(Duration::from_secs(20 * 3600))
///     .open()
///     .await?;
/// # drop(journal);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct SqliteJournalBuilder {
    path: PathBuf,
    limits: Limits,
    busy_timeout: Duration,
}

impl SqliteJournalBuilder {
    limit_setters!();

    /// How long a write waits for another process's to finish.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Opens the journal, creating the file and its schema if needed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a zero lease; an
    /// [`Error::Journal`](crate::Error::Journal) if the file cannot be opened or
    /// created, is not a SQLite database, is another application's database, or has a
    /// newer schema.
    pub async fn open(self) -> Result<SqliteJournal, crate::Error> {
        self.limits.check()?;
        let path = self.path.clone();
        let busy = self.busy_timeout;
        let opened = tokio::task::spawn_blocking(move || {
            let writer = open(&path, busy)?;
            let owner = owners::Owner::register(&path)?;
            // Reads go on a connection of their own: in WAL mode they never wait for the
            // writer, and they keep its queue for the writes.
            let reader = Connection::open(&path)
                .and_then(|reader| reader.busy_timeout(busy).map(|()| reader))
                .map_err(storage("could not open the journal for reading"))?;
            Ok((writer, reader, owner))
        })
        .await
        .unwrap_or_else(|e| Err(JournalError::storage("the journal could not be opened", e)));
        let journal_error = |source| crate::Error::Journal {
            operation_id: String::new(),
            key: None,
            outcome_unknown: false,
            source,
        };
        let (connection, reader, owner) = opened.map_err(journal_error)?;
        let writer = Writer::start(connection)
            .map_err(|e| journal_error(JournalError::storage("could not start its writer", e)))?;
        Ok(SqliteJournal {
            writer,
            reader: Arc::new(Mutex::new(reader)),
            owner: Arc::new(owner),
            limits: self.limits,
        })
    }
}

/// The operation journal in one SQLite file (feature `journal-sqlite`): see
/// [`journal`](crate::journal). Clones share one connection, owned by one writer
/// thread that commits the writes waiting at once in one transaction (group commit):
/// one sync to disk for many operations, and each caller answered only once its write
/// is synced.
///
/// ```no_run
/// use idempotent_retry::IdempotentClient;
/// use idempotent_retry::journal::{PendingOperation, SqliteJournal};
/// use idempotent_retry::reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
///
/// # async fn run() -> Result<(), idempotent_retry::Error> {
/// let journal = SqliteJournal::open("ops.db").await?;
/// let client = IdempotentClient::builder()
///     .journal(journal)
///     // Never journalled: a resume asks for the credentials, fresh each time.
///     .resume_credentials(|_op: &PendingOperation| async {
///         let mut headers = HeaderMap::new();
///         headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer sk_live_123"));
///         headers
///     })
///     .build()?;
/// # drop(client);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SqliteJournal {
    writer: Writer,
    reader: Arc<Mutex<Connection>>,
    /// This journal's OS-locked registration, which tells other processes it lives.
    owner: Arc<owners::Owner>,
    limits: Limits,
}

impl SqliteJournal {
    /// A builder for the journal in the file at `path`.
    pub fn builder(path: impl AsRef<Path>) -> SqliteJournalBuilder {
        SqliteJournalBuilder {
            path: path.as_ref().to_owned(),
            limits: Limits::default(),
            busy_timeout: Duration::from_secs(5),
        }
    }

    /// Opens the journal at `path` with the default settings.
    ///
    /// # Errors
    ///
    /// As [`SqliteJournalBuilder::open`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, crate::Error> {
        Self::builder(path).open().await
    }
}

impl Journal for SqliteJournal {
    fn find<'a>(&'a self, id: &'a str) -> JournalFuture<'a, Option<JournalEntry>> {
        let (id, reader) = (id.to_owned(), self.reader.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                // A panic while reading leaves nothing half-written: the poison flag
                // carries no information.
                let reader = reader
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                find(&reader, &id)
            })
            .await
            .unwrap_or_else(|e| Err(JournalError::storage("the journal's reader failed", e)))
        })
    }

    fn insert<'a>(
        &'a self,
        id: &'a str,
        request: &'a RecordedRequest,
        holder: &'a str,
        lease: Duration,
    ) -> JournalFuture<'a, Inserted> {
        let (id, request, holder) = (id.to_owned(), request.clone(), holder.to_owned());
        let owner_id = self.owner.id().to_owned();
        self.writer.with(move |connection| {
            let now = now_ms();
            let inserted = connection
                .prepare_cached(
                    "INSERT INTO operations (id, key, method, url, key_header, key_value, headers, \
                     body, created_ms, state, holder, token, expires_ms, owner, secret_headers, \
                     fingerprint) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10, 1, ?11, ?12, ?13, ?14) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        id,
                        request.key,
                        request.method,
                        request.url,
                        request.key_header,
                        request.key_value,
                        encode(&request.headers),
                        &request.body[..],
                        now,
                        holder,
                        now.saturating_add(ms(lease)),
                        owner_id,
                        blob::join_names(&request.secret_headers),
                        request.fingerprint.as_deref(),
                    ])
                })
                .map_err(storage("could not record the operation"))?;
            Ok(if inserted == 1 {
                Inserted::Recorded(Lease { id, token: 1 })
            } else {
                Inserted::Exists
            })
        })
    }

    fn claim<'a>(
        &'a self,
        id: &'a str,
        holder: &'a str,
        lease: Duration,
    ) -> JournalFuture<'a, Claimed> {
        let (id, holder) = (id.to_owned(), holder.to_owned());
        let (owner_id, owners_dir) = (self.owner.id().to_owned(), self.owner.dir().to_owned());
        self.writer.with(move |connection| {
            let claim = storage("could not claim the operation");
            // Inside the writer's transaction: the read and the write are one step.
            let tx = connection;
            let now = now_ms();
            let row: Option<ClaimRow> = tx
                .query_row(
                    "SELECT state, holder, token, expires_ms, not_before_ms, owner \
                     FROM operations WHERE id = ?1",
                    [&id],
                    |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                            row.get(5)?,
                        ))
                    },
                )
                .optional()
                .map_err(&claim)?;
            // A live lease whose process is gone (its OS lock let go) is taken over now.
            let alive = |owner: &Option<String>| {
                owner
                    .as_deref()
                    .is_none_or(|owner| owner == owner_id || !owners::is_gone(&owners_dir, owner))
            };
            let claimed = match row {
                Some((PENDING, Some(other), _, expires, _, owner))
                    if expires > now && other != holder && alive(&owner) =>
                {
                    Claimed::Held {
                        holder: other,
                        remaining: since(now, expires),
                    }
                }
                Some((PENDING, _, _, _, Some(at), _)) if at > now => Claimed::NotBefore {
                    remaining: since(now, at),
                },
                Some((PENDING, _, token, _, _, _)) => {
                    let token = token.saturating_add(1);
                    tx.execute(
                        "UPDATE operations SET holder = ?2, token = ?3, expires_ms = ?4, \
                         resumes = resumes + 1, owner = ?5 WHERE id = ?1",
                        params![id, holder, token, now.saturating_add(ms(lease)), owner_id],
                    )
                    .map_err(&claim)?;
                    Claimed::Lease(Lease {
                        id,
                        token: u64::try_from(token).unwrap_or(0),
                    })
                }
                _ => Claimed::NotPending,
            };
            Ok(claimed)
        })
    }

    fn start_attempt<'a>(&'a self, lease: &'a Lease, duration: Duration) -> JournalFuture<'a, ()> {
        let lease = lease.clone();
        self.writer.with(move |connection| {
            let changed = connection
                .prepare_cached(
                    "UPDATE operations SET attempts = attempts + 1, expires_ms = ?3 \
                     WHERE id = ?1 AND token = ?2 AND state = 0",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        lease.id,
                        token(&lease),
                        now_ms().saturating_add(ms(duration))
                    ])
                })
                .map_err(storage("could not count the attempt and renew the lease"))?;
            fenced(changed as u64, &lease)
        })
    }

    fn complete<'a>(
        &'a self,
        lease: &'a Lease,
        answer: &'a RecordedAnswer,
    ) -> JournalFuture<'a, ()> {
        let (lease, answer) = (lease.clone(), answer.clone());
        self.writer.with(move |connection| {
            let changed = connection
                .prepare_cached(
                    "UPDATE operations SET state = 1, answer_status = ?3, answer_headers = ?4, \
                     answer_body = ?5, holder = NULL, closed_ms = ?6, \
                     body = CASE WHEN ?3 BETWEEN 200 AND 299 AND fingerprint IS NOT NULL \
                     THEN x'' ELSE body END \
                     WHERE id = ?1 AND token = ?2 AND state = 0",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        lease.id,
                        token(&lease),
                        answer.status,
                        encode(&answer.headers),
                        &answer.body[..],
                        now_ms(),
                    ])
                })
                .map_err(storage("could not record the answer"))?;
            fenced(changed as u64, &lease)
        })
    }

    fn release<'a>(&'a self, lease: &'a Lease, release: &'a Release) -> JournalFuture<'a, ()> {
        let (lease, release) = (lease.clone(), release.clone());
        self.writer.with(move |connection| {
            let state = if release.attention.is_some() {
                ATTENTION
            } else {
                PENDING
            };
            let not_before = release
                .not_before
                .map(|wait| now_ms().saturating_add(ms(wait)));
            let answer = release.answer.as_ref().filter(|_| state == ATTENTION);
            let changed = connection
                .prepare_cached(
                    "UPDATE operations SET attempts = attempts + ?3, holder = NULL, state = ?4, \
                     attention = ?5, not_before_ms = ?6, answer_status = ?7, \
                     answer_headers = ?8, answer_body = ?9, \
                     resumes = max(resumes - ?10, 0) \
                     WHERE id = ?1 AND token = ?2 AND state = 0",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        lease.id,
                        token(&lease),
                        release.attempts,
                        state,
                        release.attention,
                        not_before,
                        answer.map(|a| a.status),
                        answer.map(|a| encode(&a.headers)),
                        answer.map(|a| a.body.to_vec()),
                        i64::from(release.sent_nothing),
                    ])
                })
                .map_err(storage("could not release the lease"))?;
            fenced(changed as u64, &lease)
        })
    }

    fn withdraw<'a>(&'a self, lease: &'a Lease) -> JournalFuture<'a, ()> {
        let lease = lease.clone();
        self.writer.with(move |connection| {
            let changed = connection
                .prepare_cached("DELETE FROM operations WHERE id = ?1 AND token = ?2 AND state = 0")
                .and_then(|mut statement| statement.execute(params![lease.id, token(&lease)]))
                .map_err(storage("could not withdraw the operation"))?;
            fenced(changed as u64, &lease)
        })
    }

    fn pending(&self) -> JournalFuture<'_, Vec<JournalEntry>> {
        self.writer.with(move |connection| {
            let read = storage("could not list pending operations");
            let mut statement = connection
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM operations WHERE state IN (0, 2) ORDER BY created_ms, id"
                ))
                .map_err(&read)?;
            let rows = statement
                .query_map([], raw)
                .map_err(&read)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(&read)?;
            let now = now_ms();
            rows.into_iter().map(|row| entry(row, now)).collect()
        })
    }

    limits_of!();

    fn resolve<'a>(&'a self, id: &'a str, resolution: &'a Resolution) -> JournalFuture<'a, bool> {
        let (id, resolution) = (id.to_owned(), resolution.clone());
        self.writer.with(move |connection| {
            let fail = storage("could not resolve the operation");
            let tx = connection;
            let now = now_ms();
            // Open (pending or needing attention) and held by no live worker.
            let open = "id = ?1 AND state IN (0, 2) AND (holder IS NULL OR expires_ms <= ?2)";
            // Resend also reopens an operation completed with an answer that is not 2xx.
            let reopen = "id = ?1 AND (holder IS NULL OR expires_ms <= ?2) AND (state IN (0, 2) \
                 OR (state = 1 AND (answer_status < 200 OR answer_status >= 300)))";
            let changed = match &resolution {
                Resolution::Completed(answer) => tx.execute(
                    &format!(
                        "UPDATE operations SET state = 1, answer_status = ?3, \
                         answer_headers = ?4, answer_body = ?5, holder = NULL, \
                         token = token + 1, closed_ms = ?2, \
                         body = CASE WHEN ?3 BETWEEN 200 AND 299 AND fingerprint IS NOT NULL \
                     THEN x'' ELSE body END \
                         WHERE {open}"
                    ),
                    params![
                        id,
                        now,
                        answer.status,
                        encode(&answer.headers),
                        &answer.body[..]
                    ],
                ),
                Resolution::Abandoned(reason) => tx.execute(
                    &format!(
                        "UPDATE operations SET state = 3, attention = ?3, holder = NULL, \
                         token = token + 1, closed_ms = ?2 WHERE {open}"
                    ),
                    params![id, now, reason],
                ),
                Resolution::Resend => tx.execute(
                    &format!(
                        "UPDATE operations SET state = 0, attention = NULL, holder = NULL, \
                         token = token + 1, created_ms = ?2, resumes = 0, \
                         not_before_ms = NULL, closed_ms = NULL, answer_status = NULL, \
                         answer_headers = NULL, answer_body = NULL WHERE {reopen}"
                    ),
                    params![id, now],
                ),
            }
            .map_err(&fail)?;
            Ok(changed == 1)
        })
    }

    fn cancel<'a>(&'a self, id: &'a str) -> JournalFuture<'a, bool> {
        let id = id.to_owned();
        self.writer.with(move |connection| {
            let changed = connection
                .execute(
                    "UPDATE operations SET state = 3, attention = 'cancelled before any attempt', \
                     token = token + 1, closed_ms = ?2 WHERE id = ?1 AND state = 0 \
                     AND holder IS NULL AND attempts = 0 AND resumes = 0",
                    params![id, now_ms()],
                )
                .map_err(storage("could not cancel the operation"))?;
            Ok(changed == 1)
        })
    }

    fn housekeep(&self) -> JournalFuture<'_, u64> {
        let retention = ms(self.limits.completed_retention);
        let keep_answers = self.limits.keep_answers().map(ms);
        self.writer.with(move |connection| {
            let fail = storage("could not remove old operations");
            let now = now_ms();
            let removed = connection
                .execute(
                    "DELETE FROM operations WHERE state IN (1, 3, 4) AND closed_ms <= ?1",
                    [now.saturating_sub(retention)],
                )
                .map_err(&fail)?;
            if let Some(keep) = keep_answers {
                connection
                    .execute(
                        "UPDATE operations SET state = 4, answer_body = NULL, \
                         body = CASE WHEN fingerprint IS NULL THEN body ELSE x'' END \
                         WHERE state = 1 AND closed_ms <= ?1",
                        [now.saturating_sub(keep)],
                    )
                    .map_err(&fail)?;
            }
            Ok(removed as u64)
        })
    }
}
