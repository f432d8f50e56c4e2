//! The client's journalled send: record before the first attempt, hold the lease while
//! attempts go out, complete with the final answer. The attempts themselves are the
//! client's usual ones (`transport.rs`), guarded by the lease.

use crate::telemetry::TARGET;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use tracing::{info, warn};

use crate::journal::equivalent::mismatch;
use crate::journal::{
    BodySeal, Claimed, EntryState, Inserted, Journal, JournalEntry, JournalError, Lease,
    PendingOperation, RecordedAnswer, RecordedRequest, Release, ResumeReport,
};
use crate::transport::{Guard, Operation, Overrides, Template};
use crate::{Error, GiveUpReason, IdempotencyKey, IdempotentClient, IdempotentResponse};

/// Headers that are never written to a journal.
const SECRETS: [HeaderName; 3] = [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE];

/// How long a send waits between looks at an operation another worker holds.
const HELD_POLL: Duration = Duration::from_millis(50);

/// Races on one id (a record inserted or completed between our look and our write)
/// tolerated before giving up.
const MAX_RACES: u32 = 8;

/// What a lease must cover beyond an attempt's timeout: the time to record its answer.
pub(crate) const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// The values of a resumed operation's secret headers, asked for each resumed send.
pub(crate) type ResumeCredentials = Arc<
    dyn Fn(&PendingOperation) -> std::pin::Pin<Box<dyn Future<Output = HeaderMap> + Send>>
        + Send
        + Sync,
>;

/// The client's journal and what goes with it.
pub(crate) struct JournalSettings {
    pub(crate) journal: Arc<dyn Journal>,
    /// Seals the bodies written to the journal, if the caller gave a seal.
    pub(crate) seal: Option<Arc<dyn BodySeal>>,
    /// Headers left out of the record besides `Authorization`, `Proxy-Authorization`
    /// and `Cookie`.
    pub(crate) sensitive: Vec<HeaderName>,
    /// Where a resumed send finds the values of secret headers the request at hand
    /// does not carry.
    pub(crate) credentials: Option<ResumeCredentials>,
    /// Headers whose values scope an operation at its server (an account): a request
    /// under a recorded id must carry the recorded values.
    pub(crate) scope_headers: Vec<HeaderName>,
}

impl JournalSettings {
    /// Whether a header is a secret, never written to the journal: one of the three
    /// always kept out, one the caller named, or one flagged sensitive on its value.
    fn is_secret(&self, name: &HeaderName, value: &HeaderValue) -> bool {
        SECRETS.contains(name) || self.sensitive.contains(name) || value.is_sensitive()
    }

    /// A body as the journal stores it.
    fn seal(&self, body: &Bytes) -> Bytes {
        match &self.seal {
            Some(seal) => Bytes::from(seal.seal(body)),
            None => body.clone(),
        }
    }

    /// A stored body as it was given.
    fn open(&self, body: &Bytes) -> Result<Bytes, JournalError> {
        match &self.seal {
            Some(seal) => seal.open(body).map(Bytes::from).map_err(|reason| {
                JournalError::corrupt(format!("a sealed body does not open: {reason}"))
            }),
            None => Ok(body.clone()),
        }
    }

    /// An entry as read, its bodies opened.
    fn opened(&self, mut entry: JournalEntry) -> Result<JournalEntry, JournalError> {
        if self.seal.is_some() {
            entry.request.body = self.open(&entry.request.body)?;
            if let EntryState::Completed(answer) = &mut entry.state {
                answer.body = self.open(&answer.body)?;
            }
        }
        Ok(entry)
    }
}

/// Whether a send waits for an operation another live worker holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// Wait within the deadline, and take it over if its lease runs out (`send()`).
    Wait,
    /// Leave it to its worker at once (`resume_pending`).
    Leave,
}

/// Sends `operation` under `id` through the client's journal, in three steps: take the
/// operation up (record it, or find, compare and claim it), drive its attempts under
/// the lease, and settle the record with how it ended.
pub(crate) async fn send(
    operation: Operation,
    id: String,
    held: Held,
) -> Result<IdempotentResponse, Error> {
    tracing::Span::current().record("operation_id", id.as_str());
    let client = operation.client.clone();
    let Some(js) = client.inner.settings.journal.as_deref() else {
        return Err(Error::InvalidRequest {
            key: operation.key,
            reason: "operation_id needs a journal: IdempotentClient::builder().journal(…)".into(),
            source: None,
            outcome_unknown: !operation.fresh_key,
        });
    };
    let lease_duration = js.journal.lease_duration();
    if operation.timeout.saturating_add(LEASE_MARGIN) >= lease_duration {
        return Err(Error::InvalidRequest {
            key: operation.key,
            reason: format!(
                "the attempt timeout ({:?}) and a {LEASE_MARGIN:?} margin must be shorter than \
                 the journal's lease_duration ({lease_duration:?})",
                operation.timeout
            ),
            source: None,
            outcome_unknown: !operation.fresh_key,
        });
    }
    let holder = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    match take_up(&operation, &id, &holder, held, js).await? {
        TakenUp::Drive(taken) => drive(operation, &id, taken, js).await,
        TakenUp::Answered(response) => Ok(response),
    }
}

/// What taking an operation up gives.
enum TakenUp {
    /// The lease: drive it.
    Drive(Taken),
    /// It is completed: its recorded answer, with no I/O.
    Answered(IdempotentResponse),
}

/// An operation this worker holds the lease of, ready to be driven.
struct Taken {
    lease: Lease,
    /// How old the operation was when taken up, by the journal's clock.
    age: Duration,
    /// The request as recorded.
    request: RecordedRequest,
    /// `Some`: a recorded operation taken up again, with the values of its secret
    /// headers; `None`: recorded by this call.
    resumed: Option<HeaderMap>,
}

/// Records the operation, or takes up the one recorded under `id`: compared with the
/// request at hand, answered from the record when it is closed, its secrets found,
/// then claimed (waiting while a live worker holds it, if `held` says so).
async fn take_up(
    operation: &Operation,
    id: &str,
    holder: &str,
    held: Held,
    js: &JournalSettings,
) -> Result<TakenUp, Error> {
    let journal = &*js.journal;
    let lease_duration = journal.lease_duration();
    let settings = &operation.client.inner.settings;
    let record = record_of(operation, js);
    // What the journal is given: the record itself, or a copy with its body sealed.
    let sealed = js.seal.is_some().then(|| RecordedRequest {
        body: js.seal(&record.body),
        ..record.clone()
    });
    let policy = *Overrides::policy(operation.overrides.as_deref(), settings);
    let deadline = Instant::now().checked_add(policy.deadline);
    let caller_key = (!operation.fresh_key).then(|| operation.key.clone());
    let journal_error = |key: Option<&IdempotencyKey>| {
        let id = id.to_owned();
        let key = key.cloned();
        // Every failure from here may leave a record behind (an ambiguous commit: the
        // write may have landed though its answer was lost), which a resume would send.
        move |source| Error::Journal {
            operation_id: id,
            key,
            outcome_unknown: true,
            source,
        }
    };

    let mut races = 0;
    // Set once the id is known to be taken: waiting on another worker then only reads.
    let mut taken = false;
    loop {
        // A new operation is the common case: one durable write records it and takes
        // its lease. Only an id already taken is read back.
        if !taken {
            let stored = sealed.as_ref().unwrap_or(&record);
            let inserted = journal
                .insert(id, stored, holder, lease_duration)
                .await
                .map_err(journal_error(Some(&operation.key)))?;
            if let Inserted::Recorded(lease) = inserted {
                info!(target: TARGET, operation_id = %id, "operation recorded");
                return Ok(TakenUp::Drive(Taken {
                    lease,
                    age: Duration::ZERO,
                    request: record,
                    resumed: None,
                }));
            }
            taken = true;
        }
        let found = journal
            .find(id)
            .await
            .map_err(journal_error(Some(&operation.key)))?;
        let found = found
            .map(|entry| js.opened(entry))
            .transpose()
            .map_err(journal_error(Some(&operation.key)))?;
        let Some(entry) = found else {
            // Removed between the two steps (housekeeping, a withdrawal): record it again.
            taken = false;
            races += 1;
            if races > MAX_RACES {
                return Err(journal_error(Some(&operation.key))(JournalError::corrupt(
                    "the operation id keeps changing under us",
                )));
            }
            continue;
        };
        let key = recorded_key(&entry.request).map_err(journal_error(None))?;
        let scope = &js.scope_headers;
        if let Some(reason) = mismatch(&entry.request, &record, caller_key.as_ref(), scope) {
            return Err(Error::OperationMismatch {
                operation_id: id.to_owned(),
                key,
                reason,
            });
        }
        if let Some(response) = closed(&entry, &key, js)? {
            return Ok(TakenUp::Answered(response));
        }
        let secrets = secrets_for(&entry, operation.template.headers(), js)
            .await
            .map_err(|headers| Error::CredentialsMissing {
                operation_id: id.to_owned(),
                key: key.clone(),
                headers,
            })?;
        let claimed = journal
            .claim(id, holder, lease_duration)
            .await
            .map_err(journal_error(Some(&key)))?;
        match claimed {
            Claimed::Lease(lease) if entry.resumes >= journal.max_resumes() => {
                let reason = format!(
                    "taken up {} times without a final answer",
                    entry.resumes + 1
                );
                let release = Release {
                    attention: Some(reason.clone()),
                    ..Release::default()
                };
                journal
                    .release(&lease, &release)
                    .await
                    .map_err(journal_error(Some(&key)))?;
                warn!(target: TARGET, operation_id = %id, %reason, "operation needs attention");
                return Err(Error::NeedsAttention {
                    operation_id: id.to_owned(),
                    key,
                    age: entry.age,
                    reason,
                    last_response: None,
                });
            }
            Claimed::Lease(lease) => {
                return Ok(TakenUp::Drive(Taken {
                    lease,
                    age: entry.age,
                    request: entry.request,
                    resumed: Some(secrets),
                }));
            }
            Claimed::NotBefore { remaining } => {
                return Err(not_sent(key, GiveUpReason::NotYet, Some(remaining)));
            }
            Claimed::Held { remaining, .. } => {
                let wait = remaining.min(HELD_POLL);
                if held == Held::Leave || deadline.is_some_and(|d| Instant::now() + wait >= d) {
                    return Err(not_sent(key, GiveUpReason::LeaseHeld, None));
                }
                tokio::time::sleep(wait).await;
            }
            _ => {
                races += 1;
                if races > MAX_RACES {
                    return Err(journal_error(Some(&key))(JournalError::corrupt(
                        "the operation keeps changing state under us",
                    )));
                }
            }
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
    }
}

/// A recorded answer as a response, its body opened, if it reads.
fn opened_answer(
    request: &RecordedRequest,
    answer: &RecordedAnswer,
    key: &IdempotencyKey,
    js: &JournalSettings,
) -> Option<IdempotentResponse> {
    let body = js.open(&answer.body).ok()?;
    let answer = RecordedAnswer {
        body,
        ..answer.clone()
    };
    answer_of(request, &answer, key.clone()).ok()
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

/// The values of a recorded operation's secret headers: from the request at hand, and
/// for those it lacks, from the client's resume credentials (asked only then). `Err`
/// with the names that have no value anywhere.
async fn secrets_for(
    entry: &JournalEntry,
    at_hand: &HeaderMap,
    js: &JournalSettings,
) -> Result<HeaderMap, Vec<String>> {
    let mut secrets = HeaderMap::new();
    let mut missing = Vec::new();
    for name in &entry.request.secret_headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            missing.push(name.clone());
            continue;
        };
        let values: Vec<&HeaderValue> = at_hand.get_all(&name).iter().collect();
        if values.is_empty() {
            missing.push(name.as_str().to_owned());
        }
        for value in values {
            secrets.append(name.clone(), value.clone());
        }
    }
    if missing.is_empty() {
        return Ok(secrets);
    }
    let Some(credentials) = &js.credentials else {
        return Err(missing);
    };
    let given = credentials(&PendingOperation::from(entry.clone())).await;
    let mut still = Vec::new();
    for name in missing {
        let values: Vec<&HeaderValue> = given.get_all(name.as_str()).iter().collect();
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) if !values.is_empty() => {
                for value in values {
                    secrets.append(header.clone(), value.clone());
                }
            }
            _ => still.push(name),
        }
    }
    if still.is_empty() {
        Ok(secrets)
    } else {
        Err(still)
    }
}

/// Drives a taken-up operation's attempts under its lease, then settles its record.
async fn drive(
    operation: Operation,
    id: &str,
    taken: Taken,
    js: &JournalSettings,
) -> Result<IdempotentResponse, Error> {
    let journal = &*js.journal;
    let Taken {
        lease,
        age,
        request,
        resumed,
    } = taken;
    // From here this worker holds the lease: every way out lets it go or completes.
    let key = match recorded_key(&request) {
        Ok(key) => key,
        Err(source) => {
            let release = journal.release(&lease, &Release::default()).await;
            if let Err(e) = release {
                warn!(target: TARGET, operation_id = %id, error = %e, "could not release the operation's lease");
            }
            return Err(Error::Journal {
                operation_id: id.to_owned(),
                key: None,
                outcome_unknown: true,
                source,
            });
        }
    };
    let max_age = journal.max_resume_age();
    if age.saturating_add(operation.timeout) > max_age {
        let reason = "older than the journal's max_resume_age";
        let release = Release {
            attention: Some(reason.into()),
            ..Release::default()
        };
        if let Err(e) = journal.release(&lease, &release).await {
            warn!(target: TARGET, operation_id = %id, error = %e, "could not mark the operation as needing attention");
        }
        warn!(target: TARGET, operation_id = %id, age_s = age.as_secs(), "operation too old to resume");
        return Err(Error::NeedsAttention {
            operation_id: id.to_owned(),
            key,
            age,
            reason: reason.into(),
            last_response: None,
        });
    }
    // A new operation sends the request at hand, which is what was recorded; a resumed
    // one is rebuilt from its record's bytes, with the values of its secrets.
    let was_resumed = resumed.is_some();
    let template = match resumed {
        Some(secrets) => {
            info!(target: TARGET, operation_id = %id, age_s = age.as_secs(), "resuming a recorded operation");
            match template_of(&request, &secrets) {
                Ok(template) => template,
                Err(source) => {
                    if let Err(e) = journal.release(&lease, &Release::default()).await {
                        warn!(target: TARGET, operation_id = %id, error = %e, "could not release the operation's lease");
                    }
                    return Err(Error::Journal {
                        operation_id: id.to_owned(),
                        key: Some(key),
                        outcome_unknown: true,
                        source,
                    });
                }
            }
        }
        None => operation.template,
    };
    let drive = Operation {
        client: operation.client,
        template,
        key,
        // A recorded key may have been sent by an earlier run.
        fresh_key: operation.fresh_key && !was_resumed,
        overrides: operation.overrides,
        timeout: operation.timeout,
    };
    let counted = AtomicU32::new(0);
    let guard = LeaseGuard {
        journal,
        lease: &lease,
        lease_duration: journal.lease_duration(),
        max_age,
        age_at_start: age,
        started: Instant::now(),
        renewed: None,
        counted: &counted,
    };
    let url = drive.template.url().clone();
    let client = drive.client.clone();
    let result = drive.run_guarded(guard).await;
    let counted = counted.into_inner();
    // An open circuit's break is a wait for every worker, as a server's Retry-After is.
    let reopens = match &result {
        Err(e) if e.is_circuit_open() => client.inner.settings.origins.reopens_in(&url),
        _ => None,
    };
    let ending = Ending {
        id,
        lease: &lease,
        age,
        resumed: was_resumed,
        counted,
        reopens,
    };
    settle(result, &ending, js).await
}

/// What `settle` needs to know of a driven operation besides its result.
struct Ending<'a> {
    id: &'a str,
    lease: &'a Lease,
    /// Its age when taken up.
    age: Duration,
    /// Whether its key was recorded before this call.
    resumed: bool,
    /// Attempts the journal counted as they started.
    counted: u32,
    /// When an open circuit refused it: how long until the circuit lets a probe by.
    reopens: Option<Duration>,
}

/// Writes how a driven operation ended: a final answer completes it; an answer about
/// the caller (a resumed send's 401 or 403, or one the classifier called
/// [`Unresolved`](crate::Decision::Unresolved)) leaves it needing attention with the
/// answer; an end no attempt of which could have reached the server withdraws the
/// record (so "not executed" stays true); anything else lets the lease go, pending.
async fn settle(
    result: Result<IdempotentResponse, Error>,
    ending: &Ending<'_>,
    js: &JournalSettings,
) -> Result<IdempotentResponse, Error> {
    let (id, lease) = (ending.id, ending.lease);
    let journal = &*js.journal;
    let response = match result {
        Ok(response) if about_the_caller(&response, ending.resumed) => {
            let reason = format!(
                "a re-sent attempt was answered {}: an answer about the caller's credentials, \
                 not the operation's outcome",
                response.status()
            );
            return Err(attention(response, reason, ending, js).await);
        }
        Ok(response) => response,
        Err(Error::Failed {
            reason: GiveUpReason::Unresolved,
            last_response: Some(response),
            ..
        }) => {
            let reason = format!(
                "the classifier called its {} answer unresolved",
                response.status()
            );
            return Err(attention(*response, reason, ending, js).await);
        }
        Err(e) => return Err(let_go(e, ending, js).await),
    };
    let answer = answer_to_record(&response, js);
    match journal.complete(lease, &answer).await {
        Ok(()) => {
            info!(target: TARGET, operation_id = %id, status = answer.status, "operation completed");
        }
        Err(e) => {
            warn!(target: TARGET,
                operation_id = %id,
                error = %e,
                "the final answer could not be recorded: the operation stays pending, and a resume gets the server's replay"
            );
        }
    }
    Ok(response)
}

/// Whether a final answer is about the caller rather than the operation: a 401 or 403
/// to an attempt that is not the key's first (a resume, or a retry after an attempt
/// that may have executed). Recording it as the outcome would hide an execution.
fn about_the_caller(response: &IdempotentResponse, resumed: bool) -> bool {
    let status = response.status();
    (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN)
        && (resumed || response.attempts() > 1)
}

/// Leaves the operation needing attention with `response` attached; the error says
/// so, and that it may have executed.
async fn attention(
    response: IdempotentResponse,
    reason: String,
    ending: &Ending<'_>,
    js: &JournalSettings,
) -> Error {
    let id = ending.id;
    let release = Release {
        attempts: response.attempts().saturating_sub(ending.counted),
        attention: Some(reason.clone()),
        answer: Some(answer_to_record(&response, js)),
        ..Release::default()
    };
    if let Err(e) = js.journal.release(ending.lease, &release).await {
        warn!(target: TARGET, operation_id = %id, error = %e, "could not mark the operation as needing attention");
    }
    warn!(target: TARGET, operation_id = %id, status = response.status().as_u16(), %reason, "operation needs attention");
    Error::NeedsAttention {
        operation_id: id.to_owned(),
        key: response.idempotency_key().clone(),
        age: ending.age,
        reason,
        last_response: Some(Box::new(response)),
    }
}

/// Lets the lease of an operation that ended without a final answer go: withdrawn when
/// no attempt could have reached the server, else pending (or needing attention, for
/// an answer too large or an operation grown too old), with the server's wait or the
/// open circuit's.
async fn let_go(e: Error, ending: &Ending<'_>, js: &JournalSettings) -> Error {
    let (id, lease, counted) = (ending.id, ending.lease, ending.counted);
    let journal = &*js.journal;
    let reason = match &e {
        Error::Failed { reason, .. } => Some(*reason),
        _ => None,
    };
    if reason == Some(GiveUpReason::LeaseLost) {
        // Another worker drives it now: whatever this one was told, it may execute.
        return e.into_outcome_unknown();
    }
    if !e.may_have_executed() {
        // Every attempt was refused before a byte left (or none was made): the record
        // goes, so that no resume sends what the caller was told never ran.
        return match journal.withdraw(lease).await {
            Ok(()) => {
                info!(target: TARGET, operation_id = %id, "operation withdrawn: no attempt reached the server");
                e
            }
            Err(source) => {
                warn!(target: TARGET, operation_id = %id, error = %source, "could not withdraw the operation: it stays pending and may be resumed");
                e.into_outcome_unknown()
            }
        };
    }
    let attention = match (reason, &e) {
        (Some(GiveUpReason::TooOld), _) => {
            Some("older than the journal's max_resume_age".to_owned())
        }
        (_, Error::ResponseTooLarge { limit, .. }) => Some(format!(
            "its answer is longer than the {limit} bytes the client reads"
        )),
        _ => None,
    };
    let release = Release {
        attempts: e.attempts().saturating_sub(counted),
        attention,
        // No path sends it before the wait the server asked for, nor before the
        // origin's open circuit lets a probe through.
        not_before: e
            .retry_after()
            .filter(|wait| !wait.is_zero())
            .or(ending.reopens),
        answer: None,
        sent_nothing: counted == 0 && e.attempts() == 0,
    };
    if let Err(source) = journal.release(lease, &release).await {
        warn!(target: TARGET, operation_id = %id, error = %source, "could not release the operation's lease");
    }
    e
}

/// An answer as the journal stores it, its body sealed if the client seals.
fn answer_to_record(response: &IdempotentResponse, js: &JournalSettings) -> RecordedAnswer {
    RecordedAnswer {
        status: response.status().as_u16(),
        headers: response
            .headers()
            .iter()
            .filter(|(name, _)| **name != SET_COOKIE)
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        body: js.seal(&response.body),
    }
}

/// Keeps the lease while attempts go out: before every attempt, counts it and renews
/// the lease in one durable write, then sends only if, by this worker's own clock from
/// before that write, the lease covers the attempt and a margin; stops an operation
/// grown too old to send. A hedge starts only under the same cover.
struct LeaseGuard<'a> {
    journal: &'a dyn Journal,
    lease: &'a Lease,
    lease_duration: Duration,
    max_age: Duration,
    age_at_start: Duration,
    started: Instant,
    /// When the last successful renewal was asked for.
    renewed: Option<Instant>,
    /// Attempts counted by the journal.
    counted: &'a AtomicU32,
}

impl LeaseGuard<'_> {
    /// Whether an attempt with this timeout, starting now, ends within the lease (and a
    /// margin to record its answer) and within the operation's resumable age.
    fn covers(&self, timeout: Duration) -> bool {
        let needed = timeout.saturating_add(LEASE_MARGIN);
        let young = self
            .age_at_start
            .saturating_add(self.started.elapsed())
            .saturating_add(timeout)
            <= self.max_age;
        young
            && self
                .renewed
                .is_some_and(|at| at.elapsed().saturating_add(needed) <= self.lease_duration)
    }
}

impl Guard for LeaseGuard<'_> {
    async fn before_attempt(&mut self, _made: u32, timeout: Duration) -> Result<(), GiveUpReason> {
        if self
            .age_at_start
            .saturating_add(self.started.elapsed())
            .saturating_add(timeout)
            > self.max_age
        {
            return Err(GiveUpReason::TooOld);
        }
        let asked = Instant::now();
        match self
            .journal
            .start_attempt(self.lease, self.lease_duration)
            .await
        {
            Ok(()) => {
                self.renewed = Some(asked);
                self.counted.fetch_add(1, Ordering::Relaxed);
            }
            Err(JournalError::LeaseLost { .. }) => {
                warn!(target: TARGET, operation_id = %self.lease.id, "lease lost to another worker");
                return Err(GiveUpReason::LeaseLost);
            }
            Err(e) => {
                warn!(target: TARGET, operation_id = %self.lease.id, error = %e, "could not count the attempt and renew the lease");
                return Err(GiveUpReason::JournalFailed);
            }
        }
        if !self.covers(timeout) {
            warn!(target: TARGET, operation_id = %self.lease.id, "the lease no longer covers the attempt: the journal was too slow");
            return Err(GiveUpReason::JournalFailed);
        }
        Ok(())
    }

    fn may_hedge(&self, timeout: Duration) -> bool {
        self.covers(timeout)
    }
}

/// The record of an operation: its template's bytes, secrets left out.
fn record_of(operation: &Operation, js: &JournalSettings) -> RecordedRequest {
    let settings = &operation.client.inner.settings;
    let template = &operation.template;
    let headers = template.headers();
    let key_value = headers
        .get(&settings.key_header)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let mut secret_headers: Vec<String> = Vec::new();
    for (name, value) in headers {
        if js.is_secret(name, value) && !secret_headers.iter().any(|n| n == name.as_str()) {
            secret_headers.push(name.as_str().to_owned());
        }
    }
    RecordedRequest {
        method: template.method().as_str().to_owned(),
        url: template.url().as_str().to_owned(),
        key: operation.key.as_str().to_owned(),
        key_header: settings.key_header.as_str().to_owned(),
        key_value,
        headers: headers
            .iter()
            .filter(|(name, value)| **name != settings.key_header && !js.is_secret(name, value))
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        secret_headers,
        body: template.body().cloned().unwrap_or_default(),
    }
}

/// What every re-send of `request` sends: exactly its recorded bytes, with the values
/// of its secret headers.
fn template_of(request: &RecordedRequest, secrets: &HeaderMap) -> Result<Template, JournalError> {
    let method = Method::from_bytes(request.method.as_bytes())
        .map_err(|_| JournalError::corrupt(format!("method {:?}", request.method)))?;
    let url = reqwest::Url::parse(&request.url)
        .map_err(|e| JournalError::corrupt(format!("URL {:?}: {e}", request.url)))?;
    let mut built = reqwest::Request::new(method, url);
    let headers = built.headers_mut();
    let header = |name: &str, value: &[u8]| -> Result<(HeaderName, HeaderValue), JournalError> {
        Ok((
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| JournalError::corrupt(format!("header name {name:?}")))?,
            HeaderValue::from_bytes(value)
                .map_err(|_| JournalError::corrupt(format!("a value of header {name}")))?,
        ))
    };
    for (name, value) in &request.headers {
        let (name, value) = header(name, value)?;
        headers.append(name, value);
    }
    let (name, value) = header(&request.key_header, &request.key_value)?;
    headers.insert(name, value);
    for (name, value) in secrets {
        headers.append(name.clone(), value.clone());
    }
    let body = (!request.body.is_empty()).then(|| request.body.clone());
    Ok(Template::new(built, body))
}

fn recorded_key(request: &RecordedRequest) -> Result<IdempotencyKey, JournalError> {
    IdempotencyKey::parse(&request.key)
        .map_err(|_| JournalError::corrupt(format!("recorded key {:?}", request.key)))
}

/// A completed operation's recorded answer, as `send()` returns it: no attempt made.
fn answer_of(
    request: &RecordedRequest,
    answer: &RecordedAnswer,
    key: IdempotencyKey,
) -> Result<IdempotentResponse, JournalError> {
    let status = http::StatusCode::from_u16(answer.status)
        .map_err(|_| JournalError::corrupt(format!("status {}", answer.status)))?;
    let url = reqwest::Url::parse(&request.url)
        .map_err(|e| JournalError::corrupt(format!("URL {:?}: {e}", request.url)))?;
    let mut headers = HeaderMap::with_capacity(answer.headers.len());
    for (name, value) in &answer.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| JournalError::corrupt(format!("answer header {name:?}")))?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| JournalError::corrupt(format!("a value of answer header {name}")))?;
        headers.append(name, value);
    }
    Ok(IdempotentResponse {
        status,
        version: Version::HTTP_11,
        headers,
        url,
        body: answer.body.clone(),
        key,
        attempts: 0,
        hedges: 0,
    })
}

/// Whether a client has a journal, for `pending` and `resume_pending`.
fn settings_of(client: &IdempotentClient) -> Result<&JournalSettings, Error> {
    client
        .inner
        .settings
        .journal
        .as_deref()
        .ok_or_else(|| Error::InvalidConfig {
            reason: "this client has no journal: IdempotentClient::builder().journal(…)".into(),
            source: None,
        })
}

/// The answer recorded for `id`: a completed operation's, or the one attached to an
/// operation that needs attention; its body opened.
pub(crate) async fn recorded_answer(
    client: &IdempotentClient,
    id: &str,
) -> Result<Option<RecordedAnswer>, Error> {
    let js = settings_of(client)?;
    let journal_error = |source| Error::Journal {
        operation_id: id.to_owned(),
        key: None,
        outcome_unknown: true,
        source,
    };
    let Some(entry) = js.journal.find(id).await.map_err(journal_error)? else {
        return Ok(None);
    };
    let answer = match entry.state {
        EntryState::Completed(answer) => Some(answer),
        _ => entry.answer,
    };
    answer
        .map(|answer| {
            Ok(RecordedAnswer {
                body: js.open(&answer.body)?,
                ..answer
            })
        })
        .transpose()
        .map_err(journal_error)
}

/// The journal's operations that are not completed, oldest first.
pub(crate) async fn pending(client: &IdempotentClient) -> Result<Vec<PendingOperation>, Error> {
    let entries = listed(settings_of(client)?).await?;
    Ok(entries.into_iter().map(PendingOperation::from).collect())
}

/// Every operation that is not completed, as the journal lists it.
async fn listed(js: &JournalSettings) -> Result<Vec<JournalEntry>, Error> {
    js.journal.pending().await.map_err(|source| Error::Journal {
        operation_id: String::new(),
        key: None,
        outcome_unknown: true,
        source,
    })
}

/// Sends every pending operation that no worker holds again, one at a time, each with
/// its recorded key and bytes and the values of its secret headers from the client's
/// resume credentials, each inside an operation span of its own.
pub(crate) async fn resume_pending(client: &IdempotentClient) -> Result<ResumeReport, Error> {
    use tracing::Instrument;
    let js = settings_of(client)?;
    let entries = listed(js).await?;
    let mut report = ResumeReport::default();
    match js.journal.housekeep().await {
        Ok(removed) => report.removed = removed,
        Err(e) => warn!(target: TARGET, error = %e, "could not remove old completed operations"),
    }
    for entry in entries {
        let id = entry.id.clone();
        let entry = match js.opened(entry) {
            Ok(entry) => entry,
            Err(e) => {
                // One unreadable record holds up no other.
                warn!(target: TARGET, operation_id = %id, error = %e, "a recorded operation cannot be read: it needs attention");
                report.needs_attention.push(id);
                continue;
            }
        };
        if let EntryState::NeedsAttention(_) = entry.state {
            report.needs_attention.push(id);
            continue;
        }
        let built = recorded_key(&entry.request)
            .and_then(|key| Ok((key, template_of(&entry.request, &HeaderMap::new())?)));
        let (key, template) = match built {
            Ok(built) => built,
            Err(source) => {
                let error = Error::Journal {
                    operation_id: id.clone(),
                    key: None,
                    outcome_unknown: true,
                    source,
                };
                report.still_pending.push((id, error));
                continue;
            }
        };
        let span = crate::telemetry::operation_span(template.method(), template.url());
        let operation = Operation {
            client: client.clone(),
            template,
            key,
            fresh_key: false,
            overrides: None,
            timeout: client.inner.settings.attempt_timeout,
        };
        // A holder that is gone is taken over by the claim; a live one keeps it.
        match send(operation, id.clone(), Held::Leave)
            .instrument(span)
            .await
        {
            Ok(_) => report.completed.push(id),
            Err(Error::NeedsAttention { .. }) => report.needs_attention.push(id),
            Err(Error::Failed {
                reason: GiveUpReason::LeaseHeld | GiveUpReason::LeaseLost,
                ..
            }) => report.held_elsewhere.push(id),
            Err(e) => report.still_pending.push((id, e)),
        }
    }
    Ok(report)
}
