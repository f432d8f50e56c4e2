//! Settling a driven operation's record with how it ended: completed with a final
//! answer; needing attention with an answer about the caller; withdrawn when no attempt
//! could have reached the server; else released, still pdriven.

use http::StatusCode;
use http::header::SET_COOKIE;
use tracing::{info, warn};

use std::time::Duration;

use super::settings::JournalSettings;
use crate::journal::{Lease, RecordedAnswer, Release};
use crate::telemetry::TARGET;
use crate::{Error, GiveUpReason, IdempotentResponse};

/// What settling needs to know of a driven operation besides its result.
pub(super) struct Driven<'a> {
    pub(super) id: &'a str,
    pub(super) lease: Lease,
    /// Its age when taken up.
    pub(super) age: Duration,
    /// Whether its key was recorded before this call.
    pub(super) resumed: bool,
    /// Attempts the journal counted as they started.
    pub(super) counted: u32,
    /// When an open circuit refused it: how long until the circuit lets a probe by.
    pub(super) reopens: Option<Duration>,
}

/// Writes how a driven operation ended: a final answer completes it; an answer about
/// the caller (a resumed send's 401 or 403, or one the classifier called
/// [`Unresolved`](crate::Decision::Unresolved)) leaves it needing attention with the
/// answer; an end no attempt of which could have reached the server withdraws the
/// record (so "not executed" stays true); anything else lets the lease go, pdriven.
pub(super) async fn settle(
    result: Result<IdempotentResponse, Error>,
    driven: &Driven<'_>,
    js: &JournalSettings,
) -> Result<IdempotentResponse, Error> {
    let (id, lease) = (driven.id, &driven.lease);
    let journal = &*js.journal;
    let response = match result {
        Ok(response) if about_the_caller(&response, driven.resumed) => {
            let reason = format!(
                "a re-sent attempt was answered {}: an answer about the caller's credentials, \
                 not the operation's outcome",
                response.status()
            );
            return Err(attention(response, reason, driven, js).await);
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
            return Err(attention(*response, reason, driven, js).await);
        }
        Err(e) => return Err(let_go(e, driven, js).await),
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
    driven: &Driven<'_>,
    js: &JournalSettings,
) -> Error {
    let id = driven.id;
    let release = Release {
        attempts: response.attempts().saturating_sub(driven.counted),
        attention: Some(reason.clone()),
        answer: Some(answer_to_record(&response, js)),
        ..Release::default()
    };
    if let Err(e) = js.journal.release(&driven.lease, &release).await {
        warn!(target: TARGET, operation_id = %id, error = %e, "could not mark the operation as needing attention");
    }
    warn!(target: TARGET, operation_id = %id, status = response.status().as_u16(), %reason, "operation needs attention");
    Error::NeedsAttention {
        operation_id: id.to_owned(),
        key: response.idempotency_key().clone(),
        age: driven.age,
        reason,
        last_response: Some(Box::new(response)),
    }
}

/// Lets the lease of an operation that ended without a final answer go: withdrawn when
/// no attempt could have reached the server, else pending (or needing attention, for
/// an answer too large or an operation grown too old), with the server's wait or the
/// open circuit's.
async fn let_go(e: Error, driven: &Driven<'_>, js: &JournalSettings) -> Error {
    let (id, lease, counted) = (driven.id, &driven.lease, driven.counted);
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
            .or(driven.reopens),
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
