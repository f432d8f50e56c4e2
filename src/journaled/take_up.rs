//! Taking an operation up: recording it (the common case, one durable write that also
//! takes its lease), or finding the one recorded under its id, comparing it with the
//! request at hand, answering from the record when it is closed, finding the values of
//! its secret headers, and claiming it.

use std::time::{Duration, Instant};

use http::HeaderMap;
use tracing::{info, warn};

use super::record::{answer_of, opened_answer, record_of, recorded_key};
use super::secrets::secrets_for;
use super::settings::{HELD_POLL, Held, JournalSettings, MAX_RACES};
use crate::journal::equivalent::mismatch;
use crate::journal::{
    Claimed, EntryState, Inserted, JournalEntry, JournalError, Lease, RecordedAnswer,
    RecordedRequest, Release,
};
use crate::operation::Operation;
use crate::retry::settings::Overrides;
use crate::telemetry::TARGET;
use crate::{Error, GiveUpReason, IdempotencyKey, IdempotentResponse};

/// What taking an operation up gives.
pub(super) enum TakenUp {
    /// The lease: drive it.
    Drive(Taken),
    /// It is completed: its recorded answer, with no I/O.
    Answered(IdempotentResponse),
}

/// An operation this worker holds the lease of, ready to be driven.
pub(super) struct Taken {
    pub(super) lease: Lease,
    /// How old the operation was when taken up, by the journal's clock.
    pub(super) age: Duration,
    /// The request as recorded.
    pub(super) request: RecordedRequest,
    /// `Some`: a recorded operation taken up again, with the values of its secret
    /// headers; `None`: recorded by this call.
    pub(super) resumed: Option<HeaderMap>,
}

/// Records the operation, or takes up the one recorded under `id`: compared with the
/// request at hand, answered from the record when it is closed, its secrets found,
/// then claimed (waiting while a live worker holds it, if `held` says so).
pub(super) async fn take_up(
    operation: &Operation,
    id: &str,
    holder: &str,
    held: Held,
    js: &JournalSettings,
) -> Result<TakenUp, Error> {
    let mut look = Look::new(operation, id, holder, held, js);
    // Set once the id is known to be taken: waiting on another worker then only reads.
    let mut taken = false;
    loop {
        // A new operation is the common case: one durable write records it and takes
        // its lease. Only an id already taken is read back.
        if !taken {
            if let Some(lease) = look.record().await? {
                return Ok(TakenUp::Drive(Taken {
                    lease,
                    age: Duration::ZERO,
                    request: look.record,
                    resumed: None,
                }));
            }
            taken = true;
        }
        let Some(entry) = look.find().await? else {
            // Removed between the two steps (housekeeping, a withdrawal): record it again.
            taken = false;
            look.race("the operation id keeps changing under us", &operation.key)?;
            continue;
        };
        match look.claim(entry).await? {
            Step::Done(taken_up) => return Ok(taken_up),
            Step::Wait(wait) => tokio::time::sleep(wait).await,
            Step::Again => {}
        }
    }
}

/// What one look at a recorded operation leads to.
#[allow(clippy::large_enum_variant)] // Transient: one per look, returned at once.
enum Step {
    /// Taken up, or answered from the record.
    Done(TakenUp),
    /// Another worker holds it: look again after this wait.
    Wait(Duration),
    /// It changed state between our look and our write: look again now.
    Again,
}

/// A take-up in progress: the request at hand, its record, and what its looks found.
struct Look<'a> {
    operation: &'a Operation,
    id: &'a str,
    holder: &'a str,
    held: Held,
    js: &'a JournalSettings,
    record: RecordedRequest,
    /// What the journal is given, when the caller seals bodies: a copy of the record
    /// with its body sealed.
    sealed: Option<RecordedRequest>,
    /// Past it, a send stops waiting for another worker.
    deadline: Option<Instant>,
    /// The key the caller gave, which a recorded operation must carry.
    caller_key: Option<IdempotencyKey>,
    races: u32,
    /// The secrets' values, once found: a provider is not asked again at each look
    /// while another worker holds the operation.
    secrets: Option<HeaderMap>,
}

impl<'a> Look<'a> {
    fn new(
        operation: &'a Operation,
        id: &'a str,
        holder: &'a str,
        held: Held,
        js: &'a JournalSettings,
    ) -> Self {
        let record = record_of(operation, js);
        let sealed = js.seal.is_some().then(|| RecordedRequest {
            body: js.seal(&record.body),
            fingerprint: record.fingerprint.as_ref().map(|f| js.seal(f)),
            ..record.clone()
        });
        let settings = &operation.client.inner.settings.retry;
        let policy = Overrides::policy(operation.overrides.as_deref(), settings);
        Self {
            operation,
            id,
            holder,
            held,
            js,
            record,
            sealed,
            deadline: Instant::now().checked_add(policy.deadline),
            caller_key: (!operation.fresh_key).then(|| operation.key.clone()),
            races: 0,
            secrets: None,
        }
    }

    /// The error for a journal failure from here on. Every one may leave a record
    /// behind (an ambiguous commit: the write may have landed though its answer was
    /// lost), which a resume would send.
    fn journal_error(&self, key: Option<&IdempotencyKey>) -> impl FnOnce(JournalError) -> Error {
        let id = self.id.to_owned();
        let key = key.cloned();
        move |source| Error::Journal {
            operation_id: id,
            key,
            outcome_unknown: true,
            source,
        }
    }

    /// Counts a race on the id (it changed between our look and our write); past
    /// [`MAX_RACES`], the error saying what keeps changing.
    fn race(&mut self, what: &str, key: &IdempotencyKey) -> Result<(), Error> {
        self.races += 1;
        if self.races > MAX_RACES {
            return Err(self.journal_error(Some(key))(JournalError::corrupt(what)));
        }
        Ok(())
    }

    /// Records the operation with this worker's lease; `None` if the id is taken.
    async fn record(&self) -> Result<Option<Lease>, Error> {
        let journal = &*self.js.journal;
        let stored = self.sealed.as_ref().unwrap_or(&self.record);
        let inserted = journal
            .insert(self.id, stored, self.holder, journal.lease_duration())
            .await
            .map_err(self.journal_error(Some(&self.operation.key)))?;
        let Inserted::Recorded(lease) = inserted else {
            return Ok(None);
        };
        info!(target: TARGET, operation_id = %self.id, "operation recorded");
        Ok(Some(lease))
    }

    /// The operation recorded under the id, its bodies opened; `None` if there is none.
    async fn find(&self) -> Result<Option<JournalEntry>, Error> {
        let error = || self.journal_error(Some(&self.operation.key));
        let found = self.js.journal.find(self.id).await.map_err(error())?;
        found
            .map(|entry| self.js.opened(entry))
            .transpose()
            .map_err(error())
    }

    /// Takes up a recorded operation: compared with the request at hand, answered from
    /// the record when it is closed, its secrets found, then claimed.
    async fn claim(&mut self, entry: JournalEntry) -> Result<Step, Error> {
        let key = recorded_key(&entry.request).map_err(self.journal_error(None))?;
        let scope = &self.js.scope_headers;
        let caller_key = self.caller_key.as_ref();
        if let Some(reason) = mismatch(&entry.request, &self.record, caller_key, scope) {
            return Err(Error::OperationMismatch {
                operation_id: self.id.to_owned(),
                key,
                reason,
            });
        }
        if let Some(response) = closed(&entry, &key, self.js)? {
            return Ok(Step::Done(TakenUp::Answered(response)));
        }
        let secrets = match self.secrets.take() {
            Some(secrets) => secrets,
            None => secrets_for(&entry, self.operation.template.headers(), self.js)
                .await
                .map_err(|headers| Error::CredentialsMissing {
                    operation_id: self.id.to_owned(),
                    key: key.clone(),
                    headers,
                })?,
        };
        let journal = &*self.js.journal;
        let claimed = journal
            .claim(self.id, self.holder, journal.lease_duration())
            .await
            .map_err(self.journal_error(Some(&key)))?;
        self.claimed(claimed, entry, key, secrets).await
    }

    /// What a claim's answer leads to: the lease (unless the operation was taken up
    /// too often), a wait for the server's not-before or for another worker, or a race.
    async fn claimed(
        &mut self,
        claimed: Claimed,
        entry: JournalEntry,
        key: IdempotencyKey,
        secrets: HeaderMap,
    ) -> Result<Step, Error> {
        match claimed {
            Claimed::Lease(lease) if entry.resumes >= self.js.journal.max_resumes() => {
                Err(self.too_often(&lease, &entry, key).await)
            }
            Claimed::Lease(lease) => Ok(Step::Done(TakenUp::Drive(Taken {
                lease,
                age: entry.age,
                request: entry.request,
                resumed: Some(secrets),
            }))),
            Claimed::NotBefore { remaining } => {
                Err(not_sent(key, GiveUpReason::NotYet, Some(remaining)))
            }
            Claimed::Held { remaining, .. } => {
                let wait = remaining.min(HELD_POLL);
                let late = self.deadline.is_some_and(|d| Instant::now() + wait >= d);
                if self.held == Held::Leave || late {
                    return Err(not_sent(key, GiveUpReason::LeaseHeld, None));
                }
                self.secrets = Some(secrets);
                Ok(Step::Wait(wait))
            }
            _ => {
                self.race("the operation keeps changing state under us", &key)?;
                Ok(Step::Again)
            }
        }
    }

    /// Leaves an operation taken up too often without a final answer needing attention.
    async fn too_often(&self, lease: &Lease, entry: &JournalEntry, key: IdempotencyKey) -> Error {
        let reason = format!(
            "taken up {} times without a final answer",
            entry.resumes + 1
        );
        let release = Release {
            attention: Some(reason.clone()),
            ..Release::default()
        };
        if let Err(e) = self.js.journal.release(lease, &release).await {
            return self.journal_error(Some(&key))(e);
        }
        warn!(target: TARGET, operation_id = %self.id, %reason, "operation needs attention");
        Error::NeedsAttention {
            operation_id: self.id.to_owned(),
            key,
            age: entry.age,
            reason,
            last_response: None,
        }
    }
}

/// What `send()` returns for a recorded operation that is closed: a completed one's
/// recorded answer (no I/O), or the error of one needing attention or abandoned;
/// `Ok(None)` for one still pending.
fn closed(
    entry: &JournalEntry,
    key: &IdempotencyKey,
    js: &JournalSettings,
) -> Result<Option<IdempotentResponse>, Error> {
    let id = &entry.id;
    match &entry.state {
        EntryState::Pending => Ok(None),
        EntryState::Completed(answer) => answer_of(&entry.request, answer, key.clone())
            .map(Some)
            .map_err(|source| Error::Journal {
                operation_id: id.clone(),
                key: Some(key.clone()),
                outcome_unknown: true,
                source,
            }),
        EntryState::NeedsAttention(reason) => Err(Error::NeedsAttention {
            operation_id: id.clone(),
            key: key.clone(),
            age: entry.age,
            reason: reason.clone(),
            last_response: entry
                .answer
                .as_ref()
                .and_then(|a| opened_answer(&entry.request, a, key, js))
                .map(Box::new),
        }),
        EntryState::Abandoned(reason) => Err(Error::Abandoned {
            operation_id: id.clone(),
            key: key.clone(),
            reason: reason.clone(),
        }),
        EntryState::AnswerExpired { status, headers } => Err(expired(entry, key, *status, headers)),
    }
}

/// The error for a completed operation past `keep_answers`; a status or header the
/// record cannot hold as one is corruption.
fn expired(
    entry: &JournalEntry,
    key: &IdempotencyKey,
    status: u16,
    headers: &[(String, Vec<u8>)],
) -> Error {
    let answer = RecordedAnswer {
        status,
        headers: headers.to_vec(),
        body: bytes::Bytes::new(),
    };
    match answer_of(&entry.request, &answer, key.clone()) {
        Ok(response) => Error::AnswerExpired {
            operation_id: entry.id.clone(),
            key: key.clone(),
            status: response.status,
            headers: Box::new(response.headers),
        },
        Err(source) => Error::Journal {
            operation_id: entry.id.clone(),
            key: Some(key.clone()),
            outcome_unknown: true,
            source,
        },
    }
}

/// An operation that was not sent by this call, its record left as it was.
fn not_sent(key: IdempotencyKey, reason: GiveUpReason, wait: Option<Duration>) -> Error {
    Error::Failed {
        key,
        attempts: 0,
        reason,
        outcome_unknown: true,
        last_response: None,
        source: None,
        retry_after: wait,
        retry_at: wait.and_then(|w| std::time::SystemTime::now().checked_add(w)),
    }
}
