//! A journal in memory: for tests, and for one process that only needs exactly-once
//! across its own retries and restarts of its tasks (not of the process).

use std::collections::HashMap;

use bytes::Bytes;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Stands for "never" where an instant must be stored: a century.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now` plus `wait`, a wait beyond a century taken as a century (which no clock
/// overflows): a server's huge `Retry-After` or a huge lease is "never", not a panic.
fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait.min(FAR_FUTURE)).unwrap_or(now)
}

use super::{
    Claimed, EntryState, Inserted, Journal, JournalEntry, JournalError, JournalFuture, Lease,
    Limits, RecordedAnswer, RecordedRequest, Release, Resolution, limits_of,
};

/// One operation's row.
#[derive(Debug)]
struct Row {
    request: RecordedRequest,
    state: EntryState,
    created: Instant,
    attempts: u32,
    holder: Option<String>,
    token: u64,
    expires: Instant,
    not_before: Option<Instant>,
    resumes: u32,
    /// When it was completed or abandoned, for housekeeping.
    closed: Option<Instant>,
    /// The answer that made it need attention, if one did.
    answer: Option<RecordedAnswer>,
}

/// A [`Journal`] in memory, shared by its clones. Its clock is the process's monotonic
/// clock. Nothing survives the process: use it in tests (it implements every rule the
/// durable stores do, leases and fencing included), or where a crash of the process
/// need not be survived.
///
/// ```
/// use idempotent_retry::IdempotentClient;
/// use idempotent_retry::journal::MemoryJournal;
///
/// let journal = MemoryJournal::new();
/// let client = IdempotentClient::builder().journal(journal.clone()).build()?;
/// # drop(client);
/// # Ok::<(), idempotent_retry::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryJournal {
    rows: Arc<Mutex<HashMap<String, Row>>>,
    limits: Limits,
}

impl MemoryJournal {
    /// An empty journal, with a 30 s lease and a 20 h `max_resume_age`.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a claim holds an operation unless renewed (default 30 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry::journal::MemoryJournal;
    /// let journal = MemoryJournal::new().lease_duration(Duration::from_secs(5));
    /// # drop(journal);
    /// ```
    #[must_use]
    pub fn lease_duration(mut self, duration: Duration) -> Self {
        self.limits.lease_duration = duration;
        self
    }

    /// The oldest an operation may be when its next attempt could end (default 20 h).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry::journal::MemoryJournal;
    /// let journal = MemoryJournal::new().max_resume_age(Duration::from_secs(3600));
    /// # drop(journal);
    /// ```
    #[must_use]
    pub fn max_resume_age(mut self, age: Duration) -> Self {
        self.limits.max_resume_age = age;
        self
    }

    /// How many times an operation may be taken up again without a final answer
    /// (default 20).
    ///
    /// ```
    /// use idempotent_retry::journal::MemoryJournal;
    /// let journal = MemoryJournal::new().max_resumes(5);
    /// # drop(journal);
    /// ```
    #[must_use]
    pub fn max_resumes(mut self, resumes: u32) -> Self {
        self.limits.max_resumes = resumes;
        self
    }

    /// How long a completed operation is kept (default 7 days).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry::journal::MemoryJournal;
    /// let journal = MemoryJournal::new().completed_retention(Duration::from_secs(86_400));
    /// # drop(journal);
    /// ```
    #[must_use]
    pub fn completed_retention(mut self, retention: Duration) -> Self {
        self.limits.completed_retention = retention;
        self
    }

    /// How long a completed operation keeps its answer's body (default: as long as
    /// it is kept). After it, housekeeping leaves a tombstone (key, fingerprint, final
    /// status and headers), and a later `send()` with its id is
    /// [`Error::AnswerExpired`](crate::Error::AnswerExpired).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry::journal::MemoryJournal;
    /// let journal = MemoryJournal::new().keep_answers(Duration::from_secs(3600));
    /// # drop(journal);
    /// ```
    #[must_use]
    pub fn keep_answers(mut self, keep: Duration) -> Self {
        self.limits.keep_answers = Some(keep);
        self
    }

    /// Takes every setting a [`JournalConfig`](super::JournalConfig) holds.
    ///
    /// ```
    /// use idempotent_retry::journal::{JournalConfig, MemoryJournal};
    /// let config: JournalConfig = serde_json::from_str(r#"{"lease_duration": "5s"}"#)?;
    /// let journal = MemoryJournal::new().config(&config);
    /// # drop(journal);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    #[must_use]
    pub fn config(mut self, config: &super::JournalConfig) -> Self {
        self.limits = config.into();
        self
    }

    fn rows(&self) -> MutexGuard<'_, HashMap<String, Row>> {
        // Every critical section leaves the map consistent: a poisoned lock carries no
        // information.
        self.rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The row a lease names, if the lease is still its own.
    fn leased<'a>(
        rows: &'a mut HashMap<String, Row>,
        lease: &Lease,
    ) -> Result<&'a mut Row, JournalError> {
        rows.get_mut(&lease.id)
            .filter(|row| row.token == lease.token && row.state == EntryState::Pending)
            .ok_or_else(|| JournalError::lease_lost(lease.id.clone()))
    }
}

impl Row {
    /// Completed with `answer`. After a 2xx answer nothing sends the request again (any
    /// other may be reopened by [`Resolution::Resend`]): its body goes where its
    /// fingerprint stands for it.
    fn completed(&mut self, answer: &RecordedAnswer, now: Instant) {
        self.state = EntryState::Completed(answer.clone());
        self.closed = Some(now);
        if (200..300).contains(&answer.status) {
            self.drop_body();
        }
    }

    /// A completed operation's tombstone: its final status and headers, no bodies.
    fn expire(&mut self) {
        if let EntryState::Completed(answer) = &mut self.state {
            self.state = EntryState::AnswerExpired {
                status: answer.status,
                headers: std::mem::take(&mut answer.headers),
            };
            self.drop_body();
        }
    }

    /// The request's body dropped, if its fingerprint stands for it (a record without
    /// one, from a writer that does not compute it, keeps its body to compare with).
    fn drop_body(&mut self) {
        if self.request.fingerprint.is_some() {
            self.request.body = Bytes::new();
        }
    }
}

fn entry(id: &str, row: &Row, now: Instant) -> JournalEntry {
    JournalEntry {
        id: id.to_owned(),
        request: row.request.clone(),
        state: row.state.clone(),
        age: now.saturating_duration_since(row.created),
        attempts: row.attempts,
        holder: row.holder.clone().filter(|_| row.expires > now),
        not_before: row.not_before.filter(|at| *at > now).map(|at| at - now),
        resumes: row.resumes,
        answer: row.answer.clone(),
    }
}

impl Journal for MemoryJournal {
    fn find<'a>(&'a self, id: &'a str) -> JournalFuture<'a, Option<JournalEntry>> {
        let now = Instant::now();
        let found = self.rows().get(id).map(|row| entry(id, row, now));
        Box::pin(async move { Ok(found) })
    }

    fn insert<'a>(
        &'a self,
        id: &'a str,
        request: &'a RecordedRequest,
        holder: &'a str,
        lease: Duration,
    ) -> JournalFuture<'a, Inserted> {
        let now = Instant::now();
        let mut rows = self.rows();
        let inserted = if rows.contains_key(id) {
            Inserted::Exists
        } else {
            rows.insert(
                id.to_owned(),
                Row {
                    request: request.clone(),
                    state: EntryState::Pending,
                    created: now,
                    attempts: 0,
                    holder: Some(holder.to_owned()),
                    token: 1,
                    expires: later(now, lease),
                    not_before: None,
                    resumes: 0,
                    closed: None,
                    answer: None,
                },
            );
            Inserted::Recorded(Lease {
                id: id.to_owned(),
                token: 1,
            })
        };
        Box::pin(async move { Ok(inserted) })
    }

    fn claim<'a>(
        &'a self,
        id: &'a str,
        holder: &'a str,
        lease: Duration,
    ) -> JournalFuture<'a, Claimed> {
        let now = Instant::now();
        let mut rows = self.rows();
        let claimed = match rows.get_mut(id) {
            Some(row) if row.state == EntryState::Pending => match &row.holder {
                Some(other) if row.expires > now && other != holder => Claimed::Held {
                    holder: other.clone(),
                    remaining: row.expires - now,
                },
                _ if row.not_before.is_some_and(|at| at > now) => Claimed::NotBefore {
                    remaining: row.not_before.map_or(Duration::ZERO, |at| at - now),
                },
                _ => {
                    row.token += 1;
                    row.resumes += 1;
                    row.holder = Some(holder.to_owned());
                    row.expires = later(now, lease);
                    Claimed::Lease(Lease {
                        id: id.to_owned(),
                        token: row.token,
                    })
                }
            },
            _ => Claimed::NotPending,
        };
        Box::pin(async move { Ok(claimed) })
    }

    fn start_attempt<'a>(&'a self, lease: &'a Lease, duration: Duration) -> JournalFuture<'a, ()> {
        let now = Instant::now();
        let mut rows = self.rows();
        let started = Self::leased(&mut rows, lease).map(|row| {
            row.attempts = row.attempts.saturating_add(1);
            row.expires = later(now, duration);
        });
        Box::pin(async move { started })
    }

    fn complete<'a>(
        &'a self,
        lease: &'a Lease,
        answer: &'a RecordedAnswer,
    ) -> JournalFuture<'a, ()> {
        let mut rows = self.rows();
        let completed = Self::leased(&mut rows, lease).map(|row| {
            row.completed(answer, Instant::now());
            row.holder = None;
        });
        Box::pin(async move { completed })
    }

    fn release<'a>(&'a self, lease: &'a Lease, release: &'a Release) -> JournalFuture<'a, ()> {
        let now = Instant::now();
        let mut rows = self.rows();
        let released = Self::leased(&mut rows, lease).map(|row| {
            row.attempts = row.attempts.saturating_add(release.attempts);
            row.holder = None;
            // A wait beyond a century is a wait without end, as far as sends go.
            row.not_before = release.not_before.map(|wait| later(now, wait));
            if release.sent_nothing {
                // This take-up sent nothing: it is no resume.
                row.resumes = row.resumes.saturating_sub(1);
            }
            if let Some(reason) = &release.attention {
                row.state = EntryState::NeedsAttention(reason.clone());
                row.answer = release.answer.clone();
            }
        });
        Box::pin(async move { released })
    }

    fn withdraw<'a>(&'a self, lease: &'a Lease) -> JournalFuture<'a, ()> {
        let mut rows = self.rows();
        let withdrawn = Self::leased(&mut rows, lease).map(|_| ());
        if withdrawn.is_ok() {
            rows.remove(&lease.id);
        }
        Box::pin(async move { withdrawn })
    }

    fn pending(&self) -> JournalFuture<'_, Vec<JournalEntry>> {
        let now = Instant::now();
        let mut pending: Vec<JournalEntry> = self
            .rows()
            .iter()
            .filter(|(_, row)| {
                !matches!(
                    row.state,
                    EntryState::Completed(_)
                        | EntryState::Abandoned(_)
                        | EntryState::AnswerExpired { .. }
                )
            })
            .map(|(id, row)| entry(id, row, now))
            .collect();
        pending.sort_by(|a, b| b.age.cmp(&a.age).then_with(|| a.id.cmp(&b.id)));
        Box::pin(async move { Ok(pending) })
    }

    limits_of!();

    fn resolve<'a>(&'a self, id: &'a str, resolution: &'a Resolution) -> JournalFuture<'a, bool> {
        let now = Instant::now();
        let mut rows = self.rows();
        let resolved = match rows.get_mut(id) {
            Some(row)
                if super::resolvable(&row.state, resolution)
                    && !(row.holder.is_some() && row.expires > now) =>
            {
                row.token += 1;
                row.holder = None;
                match resolution {
                    Resolution::Completed(answer) => row.completed(answer, now),
                    Resolution::Abandoned(reason) => {
                        row.state = EntryState::Abandoned(reason.clone());
                        row.closed = Some(now);
                    }
                    Resolution::Resend => {
                        row.state = EntryState::Pending;
                        row.created = now;
                        row.resumes = 0;
                        row.not_before = None;
                        row.closed = None;
                        row.answer = None;
                    }
                }
                true
            }
            _ => false,
        };
        Box::pin(async move { Ok(resolved) })
    }

    fn cancel<'a>(&'a self, id: &'a str) -> JournalFuture<'a, bool> {
        let now = Instant::now();
        let mut rows = self.rows();
        let cancelled = match rows.get_mut(id) {
            Some(row)
                if row.state == EntryState::Pending
                    && row.holder.is_none()
                    && row.attempts == 0
                    && row.resumes == 0 =>
            {
                row.token += 1;
                row.state = EntryState::Abandoned("cancelled before any attempt".into());
                row.closed = Some(now);
                true
            }
            _ => false,
        };
        Box::pin(async move { Ok(cancelled) })
    }

    fn housekeep(&self) -> JournalFuture<'_, u64> {
        let now = Instant::now();
        let retention = self.limits.completed_retention;
        let keep_answers = self.limits.keep_answers();
        let mut rows = self.rows();
        let before = rows.len();
        rows.retain(|_, row| {
            row.closed
                .is_none_or(|closed| now.saturating_duration_since(closed) < retention)
        });
        let removed = (before - rows.len()) as u64;
        if let Some(keep) = keep_answers {
            rows.values_mut()
                .filter(|row| {
                    row.closed
                        .is_some_and(|closed| now.saturating_duration_since(closed) >= keep)
                })
                .for_each(Row::expire);
        }
        Box::pin(async move { Ok(removed) })
    }
}
