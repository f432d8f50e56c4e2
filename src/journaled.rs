//! The client's journalled send: record before the first attempt, hold the lease while
//! attempts go out, complete with the final answer. The attempts themselves are the
//! client's usual ones (`transport.rs`), guarded by the lease.

use crate::telemetry::TARGET;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use tracing::{info, warn};

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

/// Headers for a resumed operation's secrets, by its URL.
pub(crate) type ResumeHeaders = Arc<dyn Fn(&reqwest::Url) -> HeaderMap + Send + Sync>;

/// The client's journal and what goes with it.
pub(crate) struct JournalSettings {
    pub(crate) journal: Arc<dyn Journal>,
    /// Seals the bodies written to the journal, if the caller gave a seal.
    pub(crate) seal: Option<Arc<dyn BodySeal>>,
    /// Headers left out of the record besides `Authorization`, `Proxy-Authorization`
    /// and `Cookie`.
    pub(crate) sensitive: Vec<HeaderName>,
    pub(crate) resume_headers: Option<ResumeHeaders>,
}

impl JournalSettings {
    fn is_secret(&self, name: &HeaderName) -> bool {
        SECRETS.contains(name) || self.sensitive.contains(name)
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

/// Sends `operation` under `id` through the client's journal.
pub(crate) async fn send(
    operation: Operation,
    id: String,
    held: Held,
) -> Result<IdempotentResponse, Error> {
    let client = operation.client.clone();
    let settings = &client.inner.settings;
    let Some(js) = settings.journal.as_deref() else {
        return Err(Error::InvalidRequest {
            key: operation.key,
            reason: "operation_id needs a journal: IdempotentClient::builder().journal(…)".into(),
            source: None,
            outcome_unknown: !operation.fresh_key,
        });
    };
    let journal = &*js.journal;
    let lease_duration = journal.lease_duration();
    if operation.timeout + LEASE_MARGIN >= lease_duration {
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
    let record = record_of(&operation, js);
    // What the journal is given: the record itself, or a copy with its body sealed.
    let sealed = js.seal.is_some().then(|| RecordedRequest {
        body: js.seal(&record.body),
        ..record.clone()
    });
    let holder = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let policy = *Overrides::policy(operation.overrides.as_deref(), settings);
    let deadline = Instant::now().checked_add(policy.deadline);
    let journal_error = |key: Option<&IdempotencyKey>, outcome_unknown: bool| {
        let id = id.clone();
        let key = key.cloned();
        move |source| Error::Journal {
            operation_id: id,
            key,
            outcome_unknown,
            source,
        }
    };
    let caller_key = (!operation.fresh_key).then(|| operation.key.clone());

    let mut races = 0;
    // Set once the id is known to be taken: waiting on another worker then only reads.
    let mut taken = false;
    let (lease, entry_age, request, resumed) = loop {
        let unknown = caller_key.is_some();
        // A new operation is the common case: one durable write records it and takes
        // its lease. Only an id already taken is read back.
        if !taken {
            let stored = sealed.as_ref().unwrap_or(&record);
            let inserted = journal
                .insert(&id, stored, &holder, lease_duration)
                .await
                .map_err(journal_error(Some(&operation.key), unknown))?;
            if let Inserted::Recorded(lease) = inserted {
                info!(target: TARGET, operation_id = %id, "operation recorded");
                break (lease, Duration::ZERO, record, false);
            }
            taken = true;
        }
        let found = journal
            .find(&id)
            .await
            .map_err(journal_error(Some(&operation.key), true))?;
        let found = found
            .map(|entry| js.opened(entry))
            .transpose()
            .map_err(journal_error(Some(&operation.key), true))?;
        let Some(entry) = found else {
            // Removed between the two steps (housekeeping): record it again.
            taken = false;
            races += 1;
            if races > MAX_RACES {
                return Err(journal_error(Some(&operation.key), true)(
                    JournalError::corrupt("the operation id keeps changing under us"),
                ));
            }
            continue;
        };
        let key = recorded_key(&entry.request).map_err(journal_error(None, true))?;
        if let Some(reason) = mismatch(&entry.request, &record, caller_key.as_ref()) {
            return Err(Error::OperationMismatch {
                operation_id: id,
                key,
                reason,
            });
        }
        match &entry.state {
            EntryState::Completed(answer) => {
                return answer_of(&entry.request, answer, key).map_err(journal_error(None, true));
            }
            EntryState::NeedsAttention(reason) => {
                return Err(Error::NeedsAttention {
                    operation_id: id,
                    key,
                    age: entry.age,
                    reason: reason.clone(),
                });
            }
            EntryState::Abandoned(reason) => {
                return Err(Error::Abandoned {
                    operation_id: id,
                    key,
                    reason: reason.clone(),
                });
            }
            _ => {}
        }
        let claimed = journal
            .claim(&id, &holder, lease_duration)
            .await
            .map_err(journal_error(Some(&key), true))?;
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
                    .map_err(journal_error(Some(&key), true))?;
                warn!(target: TARGET, operation_id = %id, %reason, "operation needs attention");
                return Err(Error::NeedsAttention {
                    operation_id: id,
                    key,
                    age: entry.age,
                    reason,
                });
            }
            Claimed::Lease(lease) => break (lease, entry.age, entry.request, true),
            Claimed::NotBefore { remaining } => {
                return Err(Error::Failed {
                    key,
                    attempts: 0,
                    reason: GiveUpReason::NotYet,
                    outcome_unknown: true,
                    last_response: None,
                    source: None,
                    retry_after: Some(remaining),
                    retry_at: std::time::SystemTime::now().checked_add(remaining),
                });
            }
            Claimed::Held { remaining, .. } => {
                let wait = remaining.min(HELD_POLL);
                if held == Held::Leave || deadline.is_some_and(|d| Instant::now() + wait >= d) {
                    return Err(Error::Failed {
                        key,
                        attempts: 0,
                        reason: GiveUpReason::LeaseHeld,
                        outcome_unknown: true,
                        last_response: None,
                        source: None,
                        retry_after: None,
                        retry_at: None,
                    });
                }
                tokio::time::sleep(wait).await;
            }
            _ => {
                races += 1;
                if races > MAX_RACES {
                    return Err(journal_error(Some(&key), true)(JournalError::corrupt(
                        "the operation keeps changing state under us",
                    )));
                }
            }
        }
    };

    // From here this worker holds the lease: every way out lets it go or completes.
    let key = recorded_key(&request).map_err(journal_error(None, true))?;
    let max_age = journal.max_resume_age();
    if entry_age + operation.timeout > max_age {
        let reason = "older than the journal's max_resume_age";
        let release = Release {
            attention: Some(reason.into()),
            ..Release::default()
        };
        if let Err(e) = journal.release(&lease, &release).await {
            warn!(target: TARGET, operation_id = %id, error = %e, "could not mark the operation as needing attention");
        }
        warn!(target: TARGET, operation_id = %id, age_s = entry_age.as_secs(), "operation too old to resume");
        return Err(Error::NeedsAttention {
            operation_id: id,
            key,
            age: entry_age,
            reason: reason.into(),
        });
    }
    if resumed {
        info!(target: TARGET, operation_id = %id, age_s = entry_age.as_secs(), "resuming a recorded operation");
    }
    // A new operation sends the request at hand, which is what was recorded; a resumed
    // one is rebuilt from its record's bytes, with the secrets at hand.
    let template = if resumed {
        template_of(&request, &operation.template, js).map_err(journal_error(Some(&key), true))?
    } else {
        operation.template
    };
    let drive = Operation {
        client: client.clone(),
        template,
        key,
        // A recorded key may have been sent by an earlier run.
        fresh_key: operation.fresh_key && !resumed,
        overrides: operation.overrides,
        timeout: operation.timeout,
    };
    let guard = LeaseGuard {
        journal,
        lease: &lease,
        lease_duration,
        max_age,
        age_at_start: entry_age,
        started: Instant::now(),
    };
    let result = drive.run_guarded(guard).await;
    match &result {
        Ok(response) => {
            let answer = RecordedAnswer {
                status: response.status().as_u16(),
                headers: response
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect(),
                body: js.seal(&response.body),
            };
            let completed = journal.complete(&lease, &answer).await;
            if completed.is_ok() {
                info!(target: TARGET, operation_id = %id, status = answer.status, "operation completed");
            }
            if let Err(e) = completed {
                warn!(target: TARGET,
                    operation_id = %id,
                    error = %e,
                    "the final answer could not be recorded: the operation stays pending, and a resume gets the server's replay"
                );
            }
        }
        Err(e) => {
            let reason = match e {
                Error::Failed { reason, .. } => Some(*reason),
                _ => None,
            };
            if reason != Some(GiveUpReason::LeaseLost) {
                let attention = match (reason, e) {
                    (Some(GiveUpReason::TooOld), _) => {
                        Some("older than the journal's max_resume_age".to_owned())
                    }
                    (_, Error::ResponseTooLarge { limit, .. }) => Some(format!(
                        "its answer is longer than the {limit} bytes the client reads"
                    )),
                    _ => None,
                };
                let release = Release {
                    attempts: e.attempts(),
                    attention,
                    // No path sends it before the wait the server asked for.
                    not_before: e.retry_after().filter(|wait| !wait.is_zero()),
                };
                if let Err(e) = journal.release(&lease, &release).await {
                    warn!(target: TARGET, operation_id = %id, error = %e, "could not release the operation's lease");
                }
            }
        }
    }
    result
}

/// Keeps the lease while attempts go out: renews it before every attempt after the
/// first, and stops an operation that grew too old to send.
struct LeaseGuard<'a> {
    journal: &'a dyn Journal,
    lease: &'a Lease,
    lease_duration: Duration,
    max_age: Duration,
    age_at_start: Duration,
    started: Instant,
}

impl Guard for LeaseGuard<'_> {
    async fn before_attempt(&mut self, made: u32, timeout: Duration) -> Result<(), GiveUpReason> {
        if self.age_at_start + self.started.elapsed() + timeout > self.max_age {
            return Err(GiveUpReason::TooOld);
        }
        if made > 0 {
            match self.journal.renew(self.lease, self.lease_duration).await {
                Ok(()) => {}
                Err(JournalError::LeaseLost { .. }) => {
                    warn!(target: TARGET, operation_id = %self.lease.id, "lease lost to another worker");
                    return Err(GiveUpReason::LeaseLost);
                }
                Err(e) => {
                    warn!(target: TARGET, operation_id = %self.lease.id, error = %e, "could not renew the lease");
                    return Err(GiveUpReason::JournalFailed);
                }
            }
        }
        Ok(())
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
    RecordedRequest {
        method: template.method().as_str().to_owned(),
        url: template.url().as_str().to_owned(),
        key: operation.key.as_str().to_owned(),
        key_header: settings.key_header.as_str().to_owned(),
        key_value,
        headers: headers
            .iter()
            .filter(|(name, _)| **name != settings.key_header && !js.is_secret(name))
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        body: template.body().cloned().unwrap_or_default(),
    }
}

/// What every re-send of `request` sends: exactly its recorded bytes, with the secrets
/// of the request at hand (`current`) or of the resume callback.
fn template_of(
    request: &RecordedRequest,
    current: &Template,
    js: &JournalSettings,
) -> Result<Template, JournalError> {
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
    for (name, value) in current.headers() {
        if js.is_secret(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let body = (!request.body.is_empty()).then(|| request.body.clone());
    Ok(Template::new(built, body))
}

/// A template for resuming a recorded operation with nothing at hand: its secrets come
/// from the client's `resume_headers`.
fn resume_template(
    request: &RecordedRequest,
    js: &JournalSettings,
) -> Result<Template, JournalError> {
    let url = reqwest::Url::parse(&request.url)
        .map_err(|e| JournalError::corrupt(format!("URL {:?}: {e}", request.url)))?;
    let mut secrets = reqwest::Request::new(Method::GET, url.clone());
    if let Some(resume_headers) = &js.resume_headers {
        for (name, value) in resume_headers(&url) {
            if let Some(name) = name {
                secrets.headers_mut().append(name, value);
            }
        }
    }
    template_of(request, &Template::new(secrets, None), js)
}

/// Why the request at hand is not the recorded one, if it is not.
fn mismatch(
    recorded: &RecordedRequest,
    now: &RecordedRequest,
    caller_key: Option<&IdempotencyKey>,
) -> Option<String> {
    if recorded.method != now.method {
        return Some(format!(
            "method {} is recorded, not {}",
            recorded.method, now.method
        ));
    }
    if recorded.url != now.url {
        return Some(format!("URL {} is recorded, not {}", recorded.url, now.url));
    }
    if caller_key.is_some_and(|key| key.as_str() != recorded.key) {
        return Some("the key given is not the recorded one".into());
    }
    if !same_body(recorded, now) {
        return Some("the body differs from the recorded one".into());
    }
    None
}

/// Bodies compare as JSON when both are JSON (key order and spacing aside), else as
/// bytes.
fn same_body(recorded: &RecordedRequest, now: &RecordedRequest) -> bool {
    if recorded.body == now.body {
        return true;
    }
    let is_json = |r: &RecordedRequest| {
        r.headers.iter().any(|(n, v)| {
            n.as_str() == CONTENT_TYPE.as_str()
                && std::str::from_utf8(v)
                    .is_ok_and(|v| v.trim_start().to_ascii_lowercase().contains("json"))
        })
    };
    if !(is_json(recorded) && is_json(now)) {
        return false;
    }
    let parse = |b: &Bytes| serde_json::from_slice::<serde_json::Value>(b).ok();
    matches!((parse(&recorded.body), parse(&now.body)), (Some(a), Some(b)) if a == b)
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
/// its recorded key and bytes and the secrets of `resume_headers`.
pub(crate) async fn resume_pending(client: &IdempotentClient) -> Result<ResumeReport, Error> {
    let js = settings_of(client)?;
    let entries = listed(js).await?;
    let mut report = ResumeReport::default();
    match js.journal.housekeep().await {
        Ok(removed) => report.removed = removed,
        Err(e) => warn!(target: TARGET, error = %e, "could not remove old completed operations"),
    }
    for entry in entries {
        let entry = match js.opened(entry) {
            Ok(entry) => entry,
            Err(source) => {
                return Err(Error::Journal {
                    operation_id: String::new(),
                    key: None,
                    outcome_unknown: true,
                    source,
                });
            }
        };
        if let EntryState::NeedsAttention(_) = entry.state {
            report.needs_attention.push(entry.id);
            continue;
        }
        let key = match recorded_key(&entry.request) {
            Ok(key) => key,
            Err(source) => {
                let error = Error::Journal {
                    operation_id: entry.id.clone(),
                    key: None,
                    outcome_unknown: true,
                    source,
                };
                report.still_pending.push((entry.id, error));
                continue;
            }
        };
        let template = match resume_template(&entry.request, js) {
            Ok(template) => template,
            Err(source) => {
                let error = Error::Journal {
                    operation_id: entry.id.clone(),
                    key: Some(key),
                    outcome_unknown: true,
                    source,
                };
                report.still_pending.push((entry.id, error));
                continue;
            }
        };
        let operation = Operation {
            client: client.clone(),
            template,
            key,
            fresh_key: false,
            overrides: None,
            timeout: client.inner.settings.attempt_timeout,
        };
        // A holder that is gone is taken over by the claim; a live one keeps it.
        match send(operation, entry.id.clone(), Held::Leave).await {
            Ok(_) => report.completed.push(entry.id),
            Err(Error::NeedsAttention { .. }) => report.needs_attention.push(entry.id),
            Err(Error::Failed {
                reason: GiveUpReason::LeaseHeld | GiveUpReason::LeaseLost,
                ..
            }) => report.held_elsewhere.push(entry.id),
            Err(e) => report.still_pending.push((entry.id, e)),
        }
    }
    Ok(report)
}
