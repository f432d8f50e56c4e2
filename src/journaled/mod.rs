//! The client's journalled send: record before the first attempt, hold the lease while
//! attempts go out, complete with the final answer. The attempts themselves are the
//! client's usual ones (`operation.rs`), through a transport wrapped in the lease
//! ([`lease`]). One file per step of [`send`]: [`take_up`] (record, or find, compare and
//! claim), [`drive`] (check the age, rebuild a resumed request, then the attempts under
//! the lease), [`settle`] (write how it ended); [`resume`] runs what the journal holds.

mod drive;
mod lease;
mod record;
mod resume;
mod secrets;
pub(crate) mod settings;
mod settle;
mod take_up;

pub(crate) use resume::{pending, recorded_answer, resume_pending};

use crate::operation::Operation;
use crate::{Error, IdempotentResponse};
use settings::{Held, JournalSettings, LEASE_MARGIN};

/// Sends `operation` under `id` through the client's journal, in four steps: take the
/// operation up (record it, or find, compare and claim it), make it ready (its age
/// checked, a resumed one's request rebuilt from the record), drive its attempts under
/// the lease, and settle the record with how it ended.
pub(crate) async fn send(
    operation: Operation,
    id: String,
    held: Held,
) -> Result<IdempotentResponse, Error> {
    tracing::Span::current().record("operation_id", id.as_str());
    let client = operation.client.clone();
    let js = journal_of(&operation, client.inner.journal.as_deref())?;
    let holder = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let taken = match take_up::take_up(&operation, &id, &holder, held, js).await? {
        take_up::TakenUp::Drive(taken) => taken,
        take_up::TakenUp::Answered(response) => return Ok(response),
    };
    let ready = drive::ready(operation, &id, taken, js).await?;
    let (result, driven) = drive::drive(ready, &id, js).await;
    settle::settle(result, &driven, js).await
}

/// The client's journal settings, if a send under an operation id can use them: the
/// client has a journal, and an attempt's timeout and a margin fit in its lease.
fn journal_of<'a>(
    operation: &Operation,
    js: Option<&'a JournalSettings>,
) -> Result<&'a JournalSettings, Error> {
    let refused = |reason: String| Error::InvalidRequest {
        key: operation.key.clone(),
        reason,
        source: None,
        outcome_unknown: !operation.fresh_key,
    };
    let Some(js) = js else {
        return Err(refused(
            "operation_id needs a journal: IdempotentClient::builder().journal(…)".into(),
        ));
    };
    let lease_duration = js.journal.lease_duration();
    if operation.timeout.saturating_add(LEASE_MARGIN) >= lease_duration {
        return Err(refused(format!(
            "the attempt timeout ({:?}) and a {LEASE_MARGIN:?} margin must be shorter than \
             the journal's lease_duration ({lease_duration:?})",
            operation.timeout
        )));
    }
    Ok(js)
}
