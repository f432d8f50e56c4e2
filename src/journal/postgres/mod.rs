//! The journal in PostgreSQL (feature `journal-postgres`): one journal shared by a fleet
//! of workers on many machines.
//!
//! Every time is the database's (`now()`), the one clock the whole fleet shares. Writes
//! are committed with `synchronous_commit = on`: synced before they return. A process's
//! records, attempts and completions share commits: the writes waiting at one moment
//! are committed together, each still fenced on its own. A claim is
//! one conditional `UPDATE … RETURNING`, atomic under the row's lock; every write that
//! names a lease is conditional on its token. The schema is created and migrated under
//! a fleet-wide advisory lock, and a namespace keeps two applications' ids apart.
//!
//! Here: the builder and the statements of each [`Journal`] method. Beside it:
//! `writer.rs` (the group writer: records, attempts, completions), `connection.rs` (the
//! connections, in turn, over TLS), `schema.rs` (the table, created or migrated) and
//! `rows.rs` (rows as entries).

use std::sync::Arc;
use std::time::Duration;

mod connection;
mod rows;
mod schema;
mod writer;

use super::blob::{self, encode};
use super::{
    Claimed, Inserted, Journal, JournalEntry, JournalError, JournalFuture, Lease, Limits,
    RecordedAnswer, RecordedRequest, Release, Resolution, fenced, limit_setters, limits_of,
};
use connection::{Shared, Target, tls};
use rows::{COLUMNS, entry, millis, ms, token};
use schema::{ATTENTION, PENDING, migrate, sql};
use writer::{Record, Write, Writer};

/// Settings for a [`PostgresJournal`].
///
/// # Default
///
/// | setting | default |
/// |---|---|
/// | `lease_duration` | 30 s ([`DEFAULT_LEASE_DURATION`](super::DEFAULT_LEASE_DURATION)) |
/// | `max_resume_age` | 20 h ([`DEFAULT_MAX_RESUME_AGE`](super::DEFAULT_MAX_RESUME_AGE)) |
/// | `max_resumes` | 20 ([`DEFAULT_MAX_RESUMES`](super::DEFAULT_MAX_RESUMES)) |
/// | `completed_retention` | 7 days ([`DEFAULT_COMPLETED_RETENTION`](super::DEFAULT_COMPLETED_RETENTION)) |
/// | `keep_answers` | as long as `completed_retention`: a re-run gets the whole answer while the record is kept |
/// | `connections` | 8, used in turn for reads, claims and releases; records, attempts and completions go through one more, the group writer's |
/// | TLS | as the URL's `sslmode` says (`prefer` by default), verified against the system's roots and any `tls_root_certificate` |
/// | `namespace` | `""`: set one per application sharing a database |
///
/// ```no_run
/// use std::time::Duration;
/// use idempotent_retry::journal::PostgresJournal;
///
/// # async fn run() -> Result<(), idempotent_retry::Error> {
/// let journal = PostgresJournal::builder("postgres://app@db.internal/payments")
///     .namespace("checkout")
///     .lease_duration(Duration::from_secs(30))
///     .connect()
///     .await?;
/// # drop(journal);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct PostgresJournalBuilder {
    url: String,
    namespace: String,
    limits: Limits,
    connections: usize,
    roots: Vec<Vec<u8>>,
}

impl PostgresJournalBuilder {
    /// Keeps this application's operation ids apart from another's in the same tables.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    limit_setters!();

    /// Trusts this certificate authority (PEM) for the server's certificate, besides
    /// the system's. TLS follows the URL's `sslmode`, as libpq's does: `prefer` (the
    /// default) uses it when the server offers it, `require` insists, `disable` never.
    /// The server's certificate is always verified, its name included.
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.roots.push(pem.into());
        self
    }

    /// How many connections the journal uses in turn for reads, claims and releases (at
    /// least 1). Records, attempts and completions go through one more connection, the
    /// group writer's, on a thread of its own.
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = connections;
        self
    }

    /// Connects, and creates or checks the schema under a fleet-wide lock.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a zero lease or age;
    /// an [`Error::Journal`](crate::Error::Journal) if the database cannot be reached or
    /// has a newer schema.
    pub async fn connect(self) -> Result<PostgresJournal, crate::Error> {
        self.limits.check()?;
        let tls = tls(&self.roots).map_err(|reason| crate::Error::InvalidConfig {
            reason,
            source: None,
        })?;
        let target = Target { tls, url: self.url };
        let writer = Writer::start(target.clone(), self.namespace.clone()).map_err(|e| {
            crate::Error::Journal {
                operation_id: String::new(),
                key: None,
                outcome_unknown: false,
                source: JournalError::storage("could not start the journal's writer thread", e),
            }
        })?;
        let journal = PostgresJournal {
            writer: Arc::new(writer),
            shared: Arc::new(Shared {
                target,
                namespace: self.namespace,
                connections: (0..self.connections.max(1))
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
                next: std::sync::atomic::AtomicUsize::new(0),
            }),
            limits: self.limits,
        };
        let result = async {
            let client = journal.shared.client().await?;
            migrate(&client).await
        };
        result.await.map_err(|source| crate::Error::Journal {
            operation_id: String::new(),
            key: None,
            outcome_unknown: false,
            source,
        })?;
        Ok(journal)
    }
}

/// The operation journal in PostgreSQL (feature `journal-postgres`): see
/// [`journal`](crate::journal). Clones share its connections and its group writer (a
/// thread of its own), through which every record, attempt and completion of the
/// process is committed, many in one transaction.
///
/// A row that another session keeps locked (an operator's open transaction) holds up
/// the group writer until it is released, and with it every journalled send of the
/// process. To bound that wait, give the sessions a `lock_timeout` or
/// `statement_timeout` in the URL (`?options=-c%20lock_timeout%3D5s`): a group that
/// times out fails each of its writes with [`JournalError`](super::JournalError), and
/// nothing is sent for an operation whose record did not commit.
///
/// ```no_run
/// use idempotent_retry::IdempotentClient;
/// use idempotent_retry::journal::{PendingOperation, PostgresJournal};
/// use idempotent_retry::reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
///
/// # async fn run() -> Result<(), idempotent_retry::Error> {
/// let journal = PostgresJournal::connect("postgres://app@db.internal/payments").await?;
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
pub struct PostgresJournal {
    shared: Arc<Shared>,
    writer: Arc<Writer>,
    limits: Limits,
}

impl PostgresJournal {
    /// A builder for the journal in the database at `url` (a `postgres://` URL or a
    /// `key=value` connection string).
    pub fn builder(url: impl Into<String>) -> PostgresJournalBuilder {
        PostgresJournalBuilder {
            url: url.into(),
            namespace: String::new(),
            limits: Limits::default(),
            connections: 8,
            roots: Vec::new(),
        }
    }

    /// Connects to the journal at `url` with the default settings.
    ///
    /// # Errors
    ///
    /// As [`PostgresJournalBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<Self, crate::Error> {
        Self::builder(url).connect().await
    }
}

impl Journal for PostgresJournal {
    fn find<'a>(&'a self, id: &'a str) -> JournalFuture<'a, Option<JournalEntry>> {
        Box::pin(async move {
            let client = self.shared.client().await?;
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {COLUMNS} FROM idempotent_retry_operations \
                         WHERE namespace = $1 AND id = $2"
                    ),
                    &[&self.shared.namespace.as_str(), &id],
                )
                .await
                .map_err(sql("could not read an operation"))?;
            row.as_ref().map(entry).transpose()
        })
    }

    fn insert<'a>(
        &'a self,
        id: &'a str,
        request: &'a RecordedRequest,
        holder: &'a str,
        lease: Duration,
    ) -> JournalFuture<'a, Inserted> {
        Box::pin(async move {
            // PostgreSQL's text holds no NUL character: refused here, before the write
            // joins a group it would make fail.
            let texts = [
                id,
                &request.key,
                &request.method,
                &request.url,
                &request.key_header,
                holder,
            ];
            if texts.iter().any(|text| text.contains('\0')) {
                return Err(JournalError::Storage {
                    reason: format!(
                        "operation {id:?}: PostgreSQL cannot store a NUL character in its id, key, method, URL or holder"
                    ),
                    source: None,
                });
            }
            let recorded = self
                .writer
                .write(Write::Record(Record {
                    id: id.to_owned(),
                    key: request.key.clone(),
                    method: request.method.clone(),
                    url: request.url.clone(),
                    key_header: request.key_header.clone(),
                    key_value: request.key_value.clone(),
                    headers: encode(&request.headers),
                    body: request.body.to_vec(),
                    holder: holder.to_owned(),
                    lease_ms: ms(lease) as f64,
                    secret_headers: blob::join_names(&request.secret_headers),
                    fingerprint: request.fingerprint.as_ref().map(|f| f.to_vec()),
                }))
                .await?;
            Ok(if recorded {
                Inserted::Recorded(Lease {
                    id: id.to_owned(),
                    token: 1,
                })
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
        Box::pin(async move {
            let client = self.shared.client().await?;
            let claim = sql("could not claim the operation");
            // One statement: the row's lock makes the test and the take atomic.
            let taken = client
                .query_opt(
                    "UPDATE idempotent_retry_operations SET holder = $3, token = token + 1, \
                     resumes = resumes + 1, expires_at = now() + $4::float8 * interval '1 millisecond' \
                     WHERE namespace = $1 AND id = $2 AND state + 0 = 0 \
                     AND (holder IS NULL OR expires_at <= now() OR holder = $3) \
                     AND (not_before IS NULL OR not_before <= now()) \
                     RETURNING token",
                    &[&self.shared.namespace.as_str(), &id, &holder, &(ms(lease) as f64)],
                )
                .await
                .map_err(&claim)?;
            if let Some(row) = taken {
                let token: i64 = row.try_get(0).map_err(&claim)?;
                return Ok(Claimed::Lease(Lease {
                    id: id.to_owned(),
                    token: u64::try_from(token).unwrap_or(0),
                }));
            }
            // Not taken: say why.
            let why = client
                .query_opt(
                    "SELECT state, CASE WHEN expires_at > now() THEN holder END, \
                     (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::BIGINT, \
                     (EXTRACT(EPOCH FROM (not_before - now())) * 1000)::BIGINT \
                     FROM idempotent_retry_operations WHERE namespace = $1 AND id = $2",
                    &[&self.shared.namespace.as_str(), &id],
                )
                .await
                .map_err(&claim)?;
            let Some(row) = why else {
                return Ok(Claimed::NotPending);
            };
            let state: i16 = row.try_get(0).map_err(&claim)?;
            let other: Option<String> = row.try_get(1).map_err(&claim)?;
            let expires: Option<i64> = row.try_get(2).map_err(&claim)?;
            let wait: Option<i64> = row.try_get(3).map_err(&claim)?;
            Ok(match (state, other, millis(wait)) {
                (PENDING, Some(holder), _) => Claimed::Held {
                    holder,
                    remaining: millis(expires).unwrap_or_default(),
                },
                (PENDING, None, Some(remaining)) => Claimed::NotBefore { remaining },
                _ => Claimed::NotPending,
            })
        })
    }

    fn start_attempt<'a>(&'a self, lease: &'a Lease, duration: Duration) -> JournalFuture<'a, ()> {
        Box::pin(async move {
            let counted = self
                .writer
                .write(Write::Attempt {
                    id: lease.id.clone(),
                    token: token(lease),
                    lease_ms: ms(duration) as f64,
                })
                .await?;
            fenced(u64::from(counted), lease)
        })
    }

    fn complete<'a>(
        &'a self,
        lease: &'a Lease,
        answer: &'a RecordedAnswer,
    ) -> JournalFuture<'a, ()> {
        Box::pin(async move {
            let recorded = self
                .writer
                .write(Write::Complete {
                    id: lease.id.clone(),
                    token: token(lease),
                    status: i32::from(answer.status),
                    headers: encode(&answer.headers),
                    body: answer.body.to_vec(),
                })
                .await?;
            fenced(u64::from(recorded), lease)
        })
    }

    fn release<'a>(&'a self, lease: &'a Lease, release: &'a Release) -> JournalFuture<'a, ()> {
        Box::pin(async move {
            let client = self.shared.client().await?;
            let state = if release.attention.is_some() {
                ATTENTION
            } else {
                PENDING
            };
            let wait = release.not_before.map(|wait| ms(wait) as f64);
            let answer = release.answer.as_ref().filter(|_| state == ATTENTION);
            let changed = client
                .execute(
                    "UPDATE idempotent_retry_operations SET attempts = attempts + $4, \
                     holder = NULL, state = $5, attention = $6, \
                     not_before = now() + $7::float8 * interval '1 millisecond', \
                     answer_status = $8, answer_headers = $9, answer_body = $10, \
                     resumes = GREATEST(resumes - $11, 0) \
                     WHERE namespace = $1 AND id = $2 AND token = $3 AND state + 0 = 0",
                    &[
                        &self.shared.namespace.as_str(),
                        &lease.id,
                        &token(lease),
                        &i64::from(release.attempts),
                        &state,
                        &release.attention,
                        &wait,
                        &answer.map(|a| i32::from(a.status)),
                        &answer.map(|a| encode(&a.headers)),
                        &answer.map(|a| &a.body[..]),
                        &i64::from(release.sent_nothing),
                    ],
                )
                .await
                .map_err(sql("could not release the lease"))?;
            fenced(changed, lease)
        })
    }

    fn withdraw<'a>(&'a self, lease: &'a Lease) -> JournalFuture<'a, ()> {
        Box::pin(async move {
            let client = self.shared.client().await?;
            let changed = client
                .execute(
                    "DELETE FROM idempotent_retry_operations \
                     WHERE namespace = $1 AND id = $2 AND token = $3 AND state + 0 = 0",
                    &[&self.shared.namespace.as_str(), &lease.id, &token(lease)],
                )
                .await
                .map_err(sql("could not withdraw the operation"))?;
            fenced(changed, lease)
        })
    }

    fn pending(&self) -> JournalFuture<'_, Vec<JournalEntry>> {
        Box::pin(async move {
            let client = self.shared.client().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM idempotent_retry_operations \
                         WHERE namespace = $1 AND state IN (0, 2) ORDER BY created_at, id"
                    ),
                    &[&self.shared.namespace.as_str()],
                )
                .await
                .map_err(sql("could not list pending operations"))?;
            rows.iter().map(entry).collect()
        })
    }

    limits_of!();

    fn resolve<'a>(&'a self, id: &'a str, resolution: &'a Resolution) -> JournalFuture<'a, bool> {
        Box::pin(async move {
            let client = self.shared.client().await?;
            let fail = sql("could not resolve the operation");
            // Open (pending or needing attention) and held by no live worker.
            let open = "namespace = $1 AND id = $2 AND state + 0 IN (0, 2) \
                        AND (holder IS NULL OR expires_at <= now())";
            // Resend also reopens an operation completed with an answer that is not 2xx.
            let reopen = "namespace = $1 AND id = $2 AND (holder IS NULL OR expires_at <= now()) \
                          AND (state + 0 IN (0, 2) OR (state + 0 = 1 \
                          AND (answer_status < 200 OR answer_status >= 300)))";
            let changed = match resolution {
                Resolution::Completed(answer) => {
                    client
                        .execute(
                            &format!(
                                "UPDATE idempotent_retry_operations SET state = 1, \
                                 answer_status = $3, answer_headers = $4, answer_body = $5, \
                                 holder = NULL, token = token + 1, closed_at = now(), \
                                 body = CASE WHEN $3 BETWEEN 200 AND 299 AND fingerprint IS NOT NULL \
                                 THEN ''::bytea ELSE body END WHERE {open}"
                            ),
                            &[
                                &self.shared.namespace.as_str(),
                                &id,
                                &i32::from(answer.status),
                                &encode(&answer.headers),
                                &&answer.body[..],
                            ],
                        )
                        .await
                }
                Resolution::Abandoned(reason) => {
                    client
                        .execute(
                            &format!(
                                "UPDATE idempotent_retry_operations SET state = 3, \
                                 attention = $3, holder = NULL, token = token + 1, \
                                 closed_at = now() WHERE {open}"
                            ),
                            &[&self.shared.namespace.as_str(), &id, reason],
                        )
                        .await
                }
                Resolution::Resend => {
                    client
                        .execute(
                            &format!(
                                "UPDATE idempotent_retry_operations SET state = 0, \
                                 attention = NULL, holder = NULL, token = token + 1, \
                                 created_at = now(), resumes = 0, not_before = NULL, \
                                 closed_at = NULL, answer_status = NULL, answer_headers = NULL, \
                                 answer_body = NULL WHERE {reopen}"
                            ),
                            &[&self.shared.namespace.as_str(), &id],
                        )
                        .await
                }
            }
            .map_err(&fail)?;
            Ok(changed == 1)
        })
    }

    fn cancel<'a>(&'a self, id: &'a str) -> JournalFuture<'a, bool> {
        Box::pin(async move {
            let client = self.shared.client().await?;
            let changed = client
                .execute(
                    "UPDATE idempotent_retry_operations SET state = 3, \
                     attention = 'cancelled before any attempt', token = token + 1, \
                     closed_at = now() WHERE namespace = $1 AND id = $2 AND state + 0 = 0 \
                     AND holder IS NULL AND attempts = 0 AND resumes = 0",
                    &[&self.shared.namespace.as_str(), &id],
                )
                .await
                .map_err(sql("could not cancel the operation"))?;
            Ok(changed == 1)
        })
    }

    fn housekeep(&self) -> JournalFuture<'_, u64> {
        Box::pin(async move {
            let client = self.shared.client().await?;
            let fail = sql("could not remove old operations");
            let namespace = self.shared.namespace.as_str();
            let retention = ms(self.limits.completed_retention) as f64;
            let removed = client
                .execute(
                    "DELETE FROM idempotent_retry_operations WHERE namespace = $1 \
                     AND state IN (1, 3, 4) \
                     AND closed_at <= now() - $2::float8 * interval '1 millisecond'",
                    &[&namespace, &retention],
                )
                .await
                .map_err(&fail)?;
            if let Some(keep) = self.limits.keep_answers() {
                client
                    .execute(
                        "UPDATE idempotent_retry_operations SET state = 4, answer_body = NULL, \
                         body = CASE WHEN fingerprint IS NULL THEN body ELSE ''::bytea END WHERE namespace = $1 AND state = 1 \
                         AND closed_at <= now() - $2::float8 * interval '1 millisecond'",
                        &[&namespace, &(ms(keep) as f64)],
                    )
                    .await
                    .map_err(&fail)?;
            }
            Ok(removed)
        })
    }
}
