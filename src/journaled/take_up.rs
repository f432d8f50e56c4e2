//! Taking an operation up: recording it (the common case, one durable write that also
//! takes its lease), or finding the one recorded under its id, comparing it with the
//! request at hand, answering from the record when it is closed, finding the values of
//! its secret headers, and claiming it.

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use tracing::{info, warn};

use super::{HELD_POLL, Held, JournalSettings, MAX_RACES, answer_of, recorded_key};
use crate::journal::equivalent::mismatch;
use crate::journal::{
    Claimed, EntryState, Inserted, JournalEntry, JournalError, Lease, PendingOperation,
    RecordedAnswer, RecordedRequest, Release,
};
use crate::telemetry::TARGET;
use crate::retry::settings::Overrides;
use crate::transport::Operation;
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
    let journal = &*js.journal;
    let lease_duration = journal.lease_duration();
    let settings = &operation.client.inner.settings;
    let record = record_of(operation, js);
    // What the journal is given: the record itself, or a copy with its body sealed.
    let sealed = js.seal.is_some().then(|| RecordedRequest {
        body: js.seal(&record.body),
        ..record.clone()
    });
    let policy = *Overrides::policy(operation.overrides.as_deref(), &settings.retry);
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
    let mut found_secrets: Option<HeaderMap> = None;
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
        // Found once: a provider is not asked again at each look while another
        // worker holds the operation.
        let secrets = match found_secrets.take() {
            Some(secrets) => secrets,
            None => secrets_for(&entry, operation.template.headers(), js)
                .await
                .map_err(|headers| Error::CredentialsMissing {
                    operation_id: id.to_owned(),
                    key: key.clone(),
                    headers,
                })?,
        };
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
                found_secrets = Some(secrets);
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
