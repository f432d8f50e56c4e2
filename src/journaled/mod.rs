//! The client's journalled send: record before the first attempt, hold the lease while
//! attempts go out, complete with the final answer. The attempts themselves are the
//! client's usual ones (`transport.rs`), guarded by the lease. One file per step:
//! [`take_up`] (record, or find, compare and claim), [`drive`] (the attempts under the
//! lease), [`settle`] (write how it ended); [`resume`] runs what the journal holds.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderName, HeaderValue, Version};

use crate::journal::{
    BodySeal, EntryState, Journal, JournalEntry, JournalError, PendingOperation, RecordedAnswer,
    RecordedRequest,
};
use crate::transport::Operation;
use crate::{Error, IdempotencyKey, IdempotentResponse};

mod drive;
mod resume;
mod settle;
mod take_up;

use drive::drive;
pub(crate) use resume::{pending, recorded_answer, resume_pending};
use take_up::{TakenUp, take_up};

/// Headers that are never written to a journal.
pub(super) const SECRETS: [HeaderName; 3] = [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE];

/// How long a send waits between looks at an operation another worker holds.
pub(super) const HELD_POLL: Duration = Duration::from_millis(50);

/// Races on one id (a record inserted or completed between our look and our write)
/// tolerated before giving up.
pub(super) const MAX_RACES: u32 = 8;

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
    pub(super) fn is_secret(&self, name: &HeaderName, value: &HeaderValue) -> bool {
        SECRETS.contains(name) || self.sensitive.contains(name) || value.is_sensitive()
    }

    /// A body as the journal stores it.
    pub(super) fn seal(&self, body: &Bytes) -> Bytes {
        match &self.seal {
            Some(seal) => Bytes::from(seal.seal(body)),
            None => body.clone(),
        }
    }

    /// A stored body as it was given.
    pub(super) fn open(&self, body: &Bytes) -> Result<Bytes, JournalError> {
        match &self.seal {
            Some(seal) => seal.open(body).map(Bytes::from).map_err(|reason| {
                JournalError::corrupt(format!("a sealed body does not open: {reason}"))
            }),
            None => Ok(body.clone()),
        }
    }

    /// An entry as read, its bodies opened.
    pub(super) fn opened(&self, mut entry: JournalEntry) -> Result<JournalEntry, JournalError> {
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
    let Some(js) = client.inner.journal.as_deref() else {
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

pub(super) fn recorded_key(request: &RecordedRequest) -> Result<IdempotencyKey, JournalError> {
    IdempotencyKey::parse(&request.key)
        .map_err(|_| JournalError::corrupt(format!("recorded key {:?}", request.key)))
}

/// A completed operation's recorded answer, as `send()` returns it: no attempt made.
pub(super) fn answer_of(
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
