//! The operation journal: exactly once across client crashes.
//!
//! The server remembers keys; without a journal, the client forgets them when its
//! process dies. With one, [`send`](crate::IdempotentRequestBuilder::send) of a request
//! that has an [`operation_id`](crate::IdempotentRequestBuilder::operation_id) first
//! records the operation durably (id, key, the exact key header, method, URL, the
//! headers that define the request, body and its fingerprint, created time), *then*
//! sends it. Run the same code again after a crash and the same id finds the record: a
//! completed operation returns its recorded answer without any I/O, a pending one is
//! re-sent with its recorded key and exactly its recorded bytes, and a different request
//! under the same id is refused before any I/O.
//!
//! A completed record shrinks: after a 2xx answer it keeps the request's fingerprint,
//! not its body; past the store's `keep_answers` (default: never), housekeeping leaves a
//! tombstone (key, fingerprint, final status and headers) until `completed_retention`,
//! and a re-run gets [`Error::AnswerExpired`](crate::Error::AnswerExpired), nothing sent.
//!
//! ```no_run
//! use idempotent_retry::IdempotentClient;
//! use idempotent_retry::journal::{MemoryJournal, PendingOperation};
//! use idempotent_retry::reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
//!
//! # async fn run() -> Result<(), idempotent_retry::Error> {
//! let client = IdempotentClient::builder()
//!     .journal(MemoryJournal::new())
//!     // Never journalled: a resume asks for the credentials, fresh each time.
//!     .resume_credentials(|_op: &PendingOperation| async {
//!         let mut headers = HeaderMap::new();
//!         headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer sk_test_123"));
//!         headers
//!     })
//!     .build()?;
//! let resp = client
//!     .post_idempotent("https://api.example/v1/charges")
//!     .bearer_auth("sk_test_123")
//!     .operation_id("order-42/charge")
//!     .json(&serde_json::json!({"amount": 4200}))
//!     .send()
//!     .await?;
//! # drop(resp);
//! # Ok(())
//! # }
//! ```
//!
//! The rules the journal keeps:
//!
//! - **Durable before the first attempt.** If the record cannot be written, nothing is
//!   sent and the error says so ([`Error::Journal`](crate::Error::Journal)).
//! - **One worker at a time.** Driving an operation takes its lease, which expires by
//!   the journal's clock unless renewed; every claim returns a fencing token, and every
//!   renew, complete and release is conditional on it (a write that matches nothing is
//!   [`JournalError::LeaseLost`], never a silent success). A worker renews before every
//!   attempt after the first, and `lease_duration` must exceed the attempt timeout, so
//!   an attempt is only sent while the lease covers it.
//! - **No secrets stored.** `Authorization`, `Proxy-Authorization`, `Cookie`, the
//!   headers named with
//!   [`sensitive_header`](crate::IdempotentClientBuilder::sensitive_header) and any
//!   header value flagged sensitive are left out of the record, and so is an answer's
//!   `Set-Cookie`. The record keeps only the *names* of the secret headers the request
//!   carried. A re-send takes their values from the request at hand, and
//!   [`resume_pending`](crate::IdempotentClient::resume_pending) from
//!   [`resume_credentials`](crate::IdempotentClientBuilder::resume_credentials)
//!   (asked afresh at each resume) or
//!   [`resume_headers`](crate::IdempotentClientBuilder::resume_headers); a resume that
//!   lacks any of them sends nothing
//!   ([`Error::CredentialsMissing`](crate::Error::CredentialsMissing)), since a
//!   request without its credential would be refused at best, and executed again in
//!   another caller's scope at worst.
//! - **An answer about the caller is not the outcome.** A resumed send (or a retry
//!   after an attempt that may have executed) answered `401` or `403` does not complete
//!   the operation: it needs attention, with the answer attached
//!   ([`recorded_answer`](crate::IdempotentClient::recorded_answer)), and the error
//!   says it may have executed. A classifier says the same of its own cases with
//!   [`Decision::Unresolved`](crate::Decision::Unresolved). After a fix,
//!   [`Resolution::Resend`] sends it again with its key; it also reopens an operation
//!   completed with an answer that is not 2xx.
//! - **Attempts counted as they start**, in the same durable write that renews the
//!   lease before each attempt, so [`PendingOperation::may_have_reached_server`] is
//!   true for an operation killed mid-attempt.
//! - **"Not executed" is true for good.** A new operation none of whose attempts could
//!   have reached the server (connections refused, an open circuit, no rate-limit
//!   turn) is withdrawn from the journal before its error returns, so no resume sends
//!   it; if the journal cannot withdraw it, the error says it may have executed.
//! - **Only a final answer completes an operation.** Anything else leaves it pending and
//!   resumable. An operation older than `max_resume_age` (by the time its next attempt
//!   could end) is never sent again: the server may have forgotten its key, so a re-send
//!   could execute it twice. It is reported
//!   ([`Error::NeedsAttention`](crate::Error::NeedsAttention)) and listed apart by
//!   [`pending`](crate::IdempotentClient::pending), for a person to decide.
//! - **The outcome is honest.** A send under a key that was recorded before (a resume)
//!   starts outcome-unknown; a failed journalled send says
//!   [`may_have_executed`](crate::Error::may_have_executed) unless no attempt could have
//!   reached the server and its record was withdrawn. A journal that fails while
//!   recording says it may have executed too: the write may have landed with its
//!   answer lost, and a resume would then send it. If recording the final answer fails after the
//!   answer arrived, `send()` still returns it, the record stays pending (a resume gets
//!   the server's replay) and a warning event says so.
//!
//! Two things to know:
//!
//! - **A dropped `send()`** (a timeout wrapper, a cancelled task, a crash) leaves its
//!   operation pending and resumable: the next `send()` with its id, or
//!   [`resume_pending`](crate::IdempotentClient::resume_pending), takes it over once its
//!   lease runs out (`lease_duration`, 30 s by default).
//! - **Rotating credentials.** Servers scope keys by their caller (Stripe by API key).
//!   A server that scopes keys by *token* sees a key re-sent under a rotated token as
//!   new, and executes the operation again: with such a server, finish or resolve every
//!   pending operation before you rotate, or resume with the old token. Servers that
//!   scope by account are safe. (The mock server's `scope_header` models both.)
//!
//! # Deploying a new request shape
//!
//! A pending operation is always re-sent with its recorded bytes, whatever the code
//! sends now, so a deploy never changes what an operation does. A `send()` under a
//! recorded id with a request of a new shape is
//! [`Error::OperationMismatch`](crate::Error::OperationMismatch), before any I/O
//! (bodies compare as JSON, numbers exactly as written; `Stripe-Account` and the
//! [`scope_header`](crate::IdempotentClientBuilder::scope_header)s must match). Before
//! such a deploy, let [`resume_pending`](crate::IdempotentClient::resume_pending)
//! finish what is pending, or give the new shape new operation ids
//! (`order-42/charge/v2`); the answers recorded under the old ids stay readable with
//! [`recorded_answer`](crate::IdempotentClient::recorded_answer).
//!
//! Stores: [`MemoryJournal`] (tests, one process, no feature), `SqliteJournal`
//! (feature `journal-sqlite`: one file, the embedded default), `PostgresJournal`
//! (feature `journal-postgres`: a fleet of workers on many machines sharing one
//! journal). The [`Journal`] trait lets you put it on your own database, and
//! `conformance::check` (feature `journal-conformance`) checks it keeps every rule.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

#[cfg(any(feature = "journal-sqlite", feature = "journal-postgres"))]
mod blob;
mod config;
#[cfg(feature = "journal-conformance")]
pub mod conformance;
pub(crate) mod equivalent;
mod memory;
#[cfg(feature = "journal-sqlite")]
mod owners;
#[cfg(feature = "journal-postgres")]
mod postgres;
#[cfg(feature = "journal-sqlite")]
mod sqlite;

pub use config::JournalConfig;
pub use memory::MemoryJournal;
#[cfg(feature = "journal-postgres")]
pub use postgres::{PostgresJournal, PostgresJournalBuilder};
/// The `rusqlite` this crate builds (0.40, SQLite bundled). Only one crate in a build
/// may link SQLite (`links = "sqlite3"`), so an application that needs SQLite itself
/// uses this one rather than another version.
#[cfg(feature = "journal-sqlite")]
pub use rusqlite;
#[cfg(feature = "journal-sqlite")]
pub use sqlite::{SqliteJournal, SqliteJournalBuilder};

/// A journal's answer, boxed so that [`Journal`] can be used as `dyn Journal`.
pub type JournalFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, JournalError>> + Send + 'a>>;

/// Where operations are recorded before they are sent. Implement it to keep the
/// journal in your own database; every method must be atomic, and every write that
/// names a [`Lease`] must apply only if the operation's current token is that lease's
/// (else [`JournalError::LeaseLost`]). `journal::conformance::check` (feature
/// `journal-conformance`) checks every rule against yours, in your tests.
///
/// Times (`created`, lease expiry, age) are the journal's own clock: the database's,
/// when it has one that every worker shares.
pub trait Journal: Send + Sync + 'static {
    /// The operation recorded under `id`, if any.
    fn find<'a>(&'a self, id: &'a str) -> JournalFuture<'a, Option<JournalEntry>>;

    /// Records a new operation and gives its lease to `holder` in the same step, durably
    /// (synced to disk) before it returns; [`Inserted::Exists`] if `id` is taken.
    fn insert<'a>(
        &'a self,
        id: &'a str,
        request: &'a RecordedRequest,
        holder: &'a str,
        lease: Duration,
    ) -> JournalFuture<'a, Inserted>;

    /// Gives the lease of a pending operation to `holder` if nobody holds it or its
    /// lease ran out, and its *not before* instant has passed, with a new token.
    fn claim<'a>(
        &'a self,
        id: &'a str,
        holder: &'a str,
        lease: Duration,
    ) -> JournalFuture<'a, Claimed>;

    /// Counts one attempt that starts now and extends the lease by `duration` from now,
    /// in one durable write, before the attempt leaves: an operation killed mid-attempt
    /// is never listed as unsent.
    fn start_attempt<'a>(&'a self, lease: &'a Lease, duration: Duration) -> JournalFuture<'a, ()>;

    /// Records the final answer and lets the lease go. After a 2xx answer a store may
    /// drop the request's body if the request has a fingerprint (nothing sends it
    /// again, and the fingerprint stands for it); it keeps every other field, and the
    /// whole body of a request without one.
    fn complete<'a>(
        &'a self,
        lease: &'a Lease,
        answer: &'a RecordedAnswer,
    ) -> JournalFuture<'a, ()>;

    /// Lets the lease go, the operation still pending (or needing attention, if
    /// `release.attention` says why, with `release.answer` attached).
    fn release<'a>(&'a self, lease: &'a Lease, release: &'a Release) -> JournalFuture<'a, ()>;

    /// Deletes an operation none of whose attempts could have reached the server (every
    /// one refused before a byte was sent), as if it had never been recorded, so that
    /// the error that says "not executed" stays true: no resume can send it later.
    /// Conditional on the lease, like every write that names one.
    fn withdraw<'a>(&'a self, lease: &'a Lease) -> JournalFuture<'a, ()>;

    /// Every operation that is not completed (pending, or needing attention), oldest
    /// first.
    fn pending(&self) -> JournalFuture<'_, Vec<JournalEntry>>;

    /// How long a claim holds an operation unless renewed. It must exceed the attempt
    /// timeout (plus a second to record the answer): a worker renews before each
    /// attempt, so an attempt only goes out while the lease covers it.
    fn lease_duration(&self) -> Duration {
        DEFAULT_LEASE_DURATION
    }

    /// The oldest an operation may be when its next attempt could end: past it, it is
    /// never sent again automatically (the server may have forgotten its key).
    fn max_resume_age(&self) -> Duration {
        DEFAULT_MAX_RESUME_AGE
    }

    /// How many times an operation may be taken up again without a final answer;
    /// past it, it needs a person's attention rather than more sends.
    fn max_resumes(&self) -> u32 {
        DEFAULT_MAX_RESUMES
    }

    /// A person's decision on an operation that is not completed (pending, or needing
    /// attention) and that no live worker holds; [`Resolution::Resend`] also applies to
    /// an operation completed with an answer that is not 2xx (a 401 from an expired
    /// credential, a 404 from a wrong base URL). `false` if there was none such.
    fn resolve<'a>(&'a self, id: &'a str, resolution: &'a Resolution) -> JournalFuture<'a, bool>;

    /// Abandons a pending operation of which no attempt ever started: its recorder let
    /// it go having made none, and no worker took it up since. `false` otherwise (an
    /// attempt may have reached the server: resolve it instead, knowing that).
    fn cancel<'a>(&'a self, id: &'a str) -> JournalFuture<'a, bool>;

    /// Deletes completed and abandoned operations (and tombstones) closed more than
    /// [`completed_retention`](Self::completed_retention) ago that no worker holds;
    /// returns how many. A store with a `keep_answers` setting also turns an operation
    /// completed longer ago than that into a tombstone
    /// ([`EntryState::AnswerExpired`]: the answer's body and the request's go, the key,
    /// fingerprint, final status and headers stay). The client calls it from
    /// [`resume_pending`](crate::IdempotentClient::resume_pending), so the journal never
    /// grows without bound.
    fn housekeep(&self) -> JournalFuture<'_, u64>;

    /// How long a completed operation is kept: the longest time after its answer that
    /// its id may be run again and get that answer back without I/O. After it, the id
    /// is forgotten, and running it again is a new operation with a new key.
    fn completed_retention(&self) -> Duration {
        DEFAULT_COMPLETED_RETENTION
    }
}

/// Seals the bodies the journal stores (requests and answers: card numbers, personal
/// data) and opens them when they are read back. Give one to
/// [`IdempotentClientBuilder::seal_bodies`](crate::IdempotentClientBuilder::seal_bodies):
/// an authenticated cipher of your choice (AES-GCM, ChaCha20-Poly1305) with a key from
/// your secret store. The journal itself never sees a plain body then; method, URL,
/// headers other than secrets, and the key stay readable, for `pending()` and people.
pub trait BodySeal: Send + Sync + 'static {
    /// The sealed form of `plain`.
    fn seal(&self, plain: &[u8]) -> Vec<u8>;

    /// `plain` again from its sealed form, or why it cannot be opened (a wrong key, a
    /// tampered record): the operation is then refused, never sent with a wrong body.
    ///
    /// # Errors
    ///
    /// Why the sealed bytes cannot be opened.
    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, String>;
}

/// Whether `resolution` may be applied to an operation in `state` (held by no live
/// worker): any to one that is open (pending or needing attention), and
/// [`Resolution::Resend`] to one completed with an answer that is not 2xx too.
pub(crate) fn resolvable(state: &EntryState, resolution: &Resolution) -> bool {
    match state {
        EntryState::Pending | EntryState::NeedsAttention(_) => true,
        EntryState::Completed(answer) => {
            matches!(resolution, Resolution::Resend) && !(200..300).contains(&answer.status)
        }
        EntryState::Abandoned(_) | EntryState::AnswerExpired { .. } => false,
    }
}

/// A write that names a lease: it applied (to exactly one operation), or the lease is no
/// longer the operation's.
#[cfg(any(feature = "journal-sqlite", feature = "journal-postgres"))]
pub(crate) fn fenced(changed: u64, lease: &Lease) -> Result<(), JournalError> {
    if changed == 1 {
        Ok(())
    } else {
        Err(JournalError::lease_lost(lease.id.clone()))
    }
}

/// The limits every store carries, the trait's defaults unless set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) lease_duration: Duration,
    pub(crate) max_resume_age: Duration,
    pub(crate) max_resumes: u32,
    pub(crate) completed_retention: Duration,
    pub(crate) keep_answers: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        (&JournalConfig::default()).into()
    }
}

impl Limits {
    /// How long a completed record keeps its answer's body before housekeeping leaves
    /// only its tombstone; `None` when it keeps it until the record is removed.
    pub(crate) fn keep_answers(&self) -> Option<Duration> {
        self.keep_answers
            .filter(|keep| *keep < self.completed_retention)
    }

    /// Whether `keep_answers` is longer than `completed_retention`: an answer cannot be
    /// kept past its record.
    pub(crate) fn answers_outlive_records(&self) -> bool {
        self.keep_answers
            .is_some_and(|keep| keep > self.completed_retention)
    }

    /// Why these limits cannot work, if they cannot.
    #[cfg(any(feature = "journal-sqlite", feature = "journal-postgres"))]
    pub(crate) fn check(&self) -> Result<(), crate::Error> {
        if self.lease_duration.is_zero() || self.max_resume_age.is_zero() {
            return Err(crate::Error::InvalidConfig {
                reason: "lease_duration and max_resume_age must be greater than zero".into(),
                source: None,
            });
        }
        if self.answers_outlive_records() {
            return Err(crate::Error::InvalidConfig {
                reason: "keep_answers must not exceed completed_retention".into(),
                source: None,
            });
        }
        Ok(())
    }
}

/// The setters of [`Limits`] on a store's builder (a `limits` field), alike on every
/// store.
#[cfg(any(feature = "journal-sqlite", feature = "journal-postgres"))]
macro_rules! limit_setters {
    () => {
        /// How long a claim holds an operation unless renewed (default 30 s). It must
        /// exceed the client's attempt timeout by more than a second.
        pub fn lease_duration(mut self, duration: std::time::Duration) -> Self {
            self.limits.lease_duration = duration;
            self
        }

        /// The oldest an operation may be when its next attempt could end (default
        /// 20 h).
        pub fn max_resume_age(mut self, age: std::time::Duration) -> Self {
            self.limits.max_resume_age = age;
            self
        }

        /// How many times an operation may be taken up again without a final answer
        /// (default 20).
        pub fn max_resumes(mut self, resumes: u32) -> Self {
            self.limits.max_resumes = resumes;
            self
        }

        /// How long a completed operation is kept, its answer ready without I/O
        /// (default 7 days).
        pub fn completed_retention(mut self, retention: std::time::Duration) -> Self {
            self.limits.completed_retention = retention;
            self
        }

        /// How long a completed operation keeps its answer's body (default: as long as
        /// `completed_retention`). After it, housekeeping leaves a tombstone (key,
        /// fingerprint, final status and headers) until `completed_retention`, and a
        /// later `send()` with its id is
        /// [`Error::AnswerExpired`](crate::Error::AnswerExpired). It must not exceed
        /// `completed_retention`.
        pub fn keep_answers(mut self, keep: std::time::Duration) -> Self {
            self.limits.keep_answers = Some(keep);
            self
        }

        /// Takes every setting a [`JournalConfig`](crate::journal::JournalConfig)
        /// holds, for example one read from a configuration file. Later calls still
        /// change single settings.
        pub fn config(mut self, config: &crate::journal::JournalConfig) -> Self {
            self.limits = config.into();
            self
        }
    };
}
#[cfg(any(feature = "journal-sqlite", feature = "journal-postgres"))]
pub(crate) use limit_setters;

/// A store's answers to the [`Journal`] methods that read its [`Limits`] (a `limits`
/// field).
macro_rules! limits_of {
    () => {
        fn lease_duration(&self) -> std::time::Duration {
            self.limits.lease_duration
        }

        fn max_resume_age(&self) -> std::time::Duration {
            self.limits.max_resume_age
        }

        fn max_resumes(&self) -> u32 {
            self.limits.max_resumes
        }

        fn completed_retention(&self) -> std::time::Duration {
            self.limits.completed_retention
        }
    };
}
pub(crate) use limits_of;

/// The default retention of completed operations: a week, far beyond any server's key
/// lifetime, so a re-run of the application within it never reaches the server.
pub const DEFAULT_COMPLETED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a person decided about an operation the client would not send on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolution {
    /// It did run (the server says so): this is its answer, which a later `send()` with
    /// its id returns without I/O.
    Completed(RecordedAnswer),
    /// Never send it; a later `send()` with its id is
    /// [`Error::Abandoned`](crate::Error::Abandoned).
    Abandoned(String),
    /// Send it again, as recorded and with its key (the server has no trace of it, or
    /// the person accepts the risk): pending anew, its age and resumes counted from now.
    /// It also reopens an operation completed with an answer that is not 2xx (an
    /// expired credential's 401, a wrong base URL's 404): the next send goes out with
    /// the same key, so a server that did execute it replays its answer.
    Resend,
}

/// The default number of resumes: enough to ride out hours of restarts and outages,
/// few enough that an operation no server will ever answer stops being sent.
pub const DEFAULT_MAX_RESUMES: u32 = 20;

/// The default lease: long enough for a 10 s attempt and its answer's record, short
/// enough that a dead worker's operations are taken over within half a minute.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(30);

/// The default oldest resumable age: 20 hours, below the 24 hours for which Stripe
/// keeps keys (the IETF draft leaves it to the server; 24 h is the common choice), so
/// that a resume never reaches a server that has forgotten the key.
pub const DEFAULT_MAX_RESUME_AGE: Duration = Duration::from_secs(20 * 3600);

/// What is recorded of a request: exactly the bytes every re-send uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The method, such as `POST`.
    pub method: String,
    /// The full URL.
    pub url: String,
    /// The idempotency key.
    pub key: String,
    /// The key header's name, as sent.
    pub key_header: String,
    /// The key header's value, byte for byte (it may be a structured string).
    pub key_value: Vec<u8>,
    /// The headers that define the request, in order, without the key header and
    /// without secrets.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The names (never the values) of the secret headers the request carried, in
    /// lower case: a re-send goes out only when each has a value at hand.
    pub secret_headers: Vec<String>,
    /// The body. Empty in a record completed with a 2xx answer: a store may drop it
    /// then, since nothing sends it again, and the fingerprint stands for it.
    pub body: Bytes,
    /// The body's fingerprint (SHA-256; a JSON body read as JSON, so key order and
    /// spacing do not count), computed by the client when it records the operation and
    /// sealed like the body when bodies are sealed. A later `send()` under the same id
    /// compares it, not the body, with the request at hand. `None` in a record written
    /// before fingerprints were: the body's own is computed then.
    pub fingerprint: Option<Bytes>,
}

/// A final answer as recorded: what a later `send()` with the same id returns without
/// any I/O.
#[derive(Clone, PartialEq, Eq)]
pub struct RecordedAnswer {
    /// The status code.
    pub status: u16,
    /// The headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Bytes,
}

impl std::fmt::Debug for RecordedAnswer {
    /// Header values as text where they are (as `http` shows them), not as byte arrays.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, String)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value).into_owned()))
            .collect();
        f.debug_struct("RecordedAnswer")
            .field("status", &self.status)
            .field("headers", &headers)
            .field("body", &self.body)
            .finish()
    }
}

/// Where an operation stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryState {
    /// Not finished: it may be sent again (by the worker that holds its lease).
    Pending,
    /// Finished, with its final answer.
    Completed(RecordedAnswer),
    /// Never to be sent automatically again, for this reason; a person decides.
    NeedsAttention(String),
    /// Closed by a person without an answer, for this reason: never sent again.
    Abandoned(String),
    /// Completed, and past the store's `keep_answers`: a tombstone that keeps the final
    /// status and headers (and the request's key and fingerprint), not the answer's
    /// body. A later `send()` with its id is
    /// [`Error::AnswerExpired`](crate::Error::AnswerExpired): never sent again, never
    /// under a new key.
    AnswerExpired {
        /// The final answer's status code.
        status: u16,
        /// The final answer's headers, in order.
        headers: Vec<(String, Vec<u8>)>,
    },
}

/// One operation in the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// The caller's operation id.
    pub id: String,
    /// The request as recorded.
    pub request: RecordedRequest,
    /// Where it stands.
    pub state: EntryState,
    /// How long ago it was recorded, by the journal's clock.
    pub age: Duration,
    /// Attempts made so far, across every worker that drove it.
    pub attempts: u32,
    /// Who holds its lease, if the lease has not run out.
    pub holder: Option<String>,
    /// How long until it may be sent again, when a server asked for a wait
    /// (`Retry-After`) that the last worker did not sit out.
    pub not_before: Option<Duration>,
    /// How many times a worker took it up again after the one that recorded it.
    pub resumes: u32,
    /// For an operation needing attention because of an answer (a resumed send answered
    /// 401 or 403, or an answer a classifier called
    /// [`Unresolved`](crate::Decision::Unresolved)): that answer.
    pub answer: Option<RecordedAnswer>,
}

/// What a worker that lets an operation go says of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Release {
    /// Attempts it made that [`Journal::start_attempt`] did not count (hedges, which
    /// start beside a counted attempt).
    pub attempts: u32,
    /// Why no automatic send may happen again, if so: the operation then needs a
    /// person's attention.
    pub attention: Option<String>,
    /// No send before this long from now (the journal's clock): the wait the server
    /// asked for.
    pub not_before: Option<Duration>,
    /// With `attention`: the answer that made the operation need it, kept for a person.
    pub answer: Option<RecordedAnswer>,
    /// The worker sent nothing while it held the operation (a circuit open, no
    /// rate-limit turn, no budget): its take-up does not count toward
    /// [`max_resumes`](Journal::max_resumes), which counts take-ups that sent.
    pub sent_nothing: bool,
}

/// An operation that is not completed, as [`pending`](crate::IdempotentClient::pending)
/// lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingOperation {
    /// The caller's operation id.
    pub id: String,
    /// Its key.
    pub key: String,
    /// Its method.
    pub method: String,
    /// Its URL.
    pub url: String,
    /// How long ago it was recorded, by the journal's clock.
    pub age: Duration,
    /// Attempts started so far, counted as each started (before it left), so an
    /// operation killed mid-attempt shows it.
    pub attempts: u32,
    /// Whether some attempt may have reached the server: `attempts > 0`. When `false`,
    /// no byte of it was ever sent.
    pub may_have_reached_server: bool,
    /// `Some(why)` when it must not be sent automatically again; a person decides.
    pub needs_attention: Option<String>,
    /// The answer that made it need attention, if an answer did (a resumed send's 401).
    pub last_status: Option<u16>,
    /// The names of the secret headers a re-send needs (values are never stored).
    pub secret_headers: Vec<String>,
    /// The worker driving it now, if any.
    pub holder: Option<String>,
    /// How long until it may be sent again, when a server asked for a wait.
    pub not_before: Option<Duration>,
}

impl From<JournalEntry> for PendingOperation {
    fn from(entry: JournalEntry) -> Self {
        Self {
            id: entry.id,
            key: entry.request.key,
            method: entry.request.method,
            url: entry.request.url,
            age: entry.age,
            attempts: entry.attempts,
            may_have_reached_server: entry.attempts > 0,
            last_status: entry.answer.as_ref().map(|a| a.status),
            secret_headers: entry.request.secret_headers,
            not_before: entry.not_before,
            needs_attention: match entry.state {
                EntryState::NeedsAttention(reason) => Some(reason),
                _ => None,
            },
            holder: entry.holder,
        }
    }
}

/// What [`resume_pending`](crate::IdempotentClient::resume_pending) did, by operation
/// id.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ResumeReport {
    /// Operations that got their final answer now.
    pub completed: Vec<String>,
    /// Operations still pending, with the error that ended this try (resume again
    /// later; [`Error::retry_at`](crate::Error::retry_at) says when, if the server did).
    pub still_pending: Vec<(String, crate::Error)>,
    /// Operations that must not be sent automatically: a person decides.
    pub needs_attention: Vec<String>,
    /// Operations another worker was driving, left to it.
    pub held_elsewhere: Vec<String>,
    /// Completed operations removed by housekeeping, past their retention.
    pub removed: u64,
}

/// The right to drive one operation, until its expiry by the journal's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The operation's id.
    pub id: String,
    /// The fencing token: every claim gets a greater one, and a write naming an older
    /// one is refused.
    pub token: u64,
}

/// What [`Journal::insert`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inserted {
    /// Recorded, and the lease is the caller's.
    Recorded(Lease),
    /// An operation with this id exists already; nothing was written.
    Exists,
}

/// What [`Journal::claim`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claimed {
    /// The lease is the caller's.
    Lease(Lease),
    /// Another worker holds a lease that has not run out: for about this long.
    Held {
        /// The worker that holds it.
        holder: String,
        /// Until its lease runs out, unless renewed.
        remaining: Duration,
    },
    /// The operation is not pending (completed, needing attention, or unknown).
    NotPending,
    /// A server asked for a wait that has not passed: no worker may send it before.
    NotBefore {
        /// What is left of the wait.
        remaining: Duration,
    },
}

/// A journal's own failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The store could not be read or written (a full disk, a read-only file, a
    /// database that is down).
    #[error("the journal could not be used: {reason}")]
    #[non_exhaustive]
    Storage {
        /// What failed.
        reason: String,
        /// The store's own error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// What the store holds is not a journal this version can read (another file, a
    /// newer schema, a damaged record).
    #[error("the journal holds something it cannot read: {reason}")]
    #[non_exhaustive]
    Corrupt {
        /// What is wrong.
        reason: String,
    },
    /// A write named a lease that is no longer the operation's: another worker took it
    /// over after it ran out.
    #[error("the lease on operation {id:?} was lost to another worker")]
    #[non_exhaustive]
    LeaseLost {
        /// The operation's id.
        id: String,
    },
}

impl JournalError {
    /// A [`Storage`](Self::Storage) error with its cause.
    pub fn storage(
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Storage {
            reason: reason.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A [`Corrupt`](Self::Corrupt) error.
    pub fn corrupt(reason: impl Into<String>) -> Self {
        Self::Corrupt {
            reason: reason.into(),
        }
    }

    /// A [`LeaseLost`](Self::LeaseLost) error.
    pub fn lease_lost(id: impl Into<String>) -> Self {
        Self::LeaseLost { id: id.into() }
    }
}
