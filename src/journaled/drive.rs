//! Driving a taken-up operation: made ready (its recorded key read, its age checked
//! against the journal's `max_resume_age`, a resumed one's request rebuilt from the
//! record's bytes), then its attempts through the client's usual engine, each counted
//! in the journal and covered by the lease before it leaves.

use std::time::Duration;

use tracing::{info, warn};

use super::lease::Leased;
use super::record::{recorded_key, template_of};
use super::settings::JournalSettings;
use super::settle::Driven;
use super::take_up::Taken;
use crate::journal::{Lease, Release};
use crate::operation::Operation;
use crate::telemetry::TARGET;
use crate::{Error, IdempotencyKey, IdempotentResponse};

/// A taken-up operation ready to be driven: the operation as it will be sent, and its
/// lease.
pub(super) struct Ready {
    operation: Operation,
    lease: Lease,
    /// Its age when taken up.
    age: Duration,
    /// Whether its key was recorded before this call.
    resumed: bool,
}

/// Makes a taken-up operation ready, or lets its lease go with the reason it cannot be
/// sent: a record that does not read, or an operation too old to resume.
pub(super) async fn ready(
    operation: Operation,
    id: &str,
    taken: Taken,
    js: &JournalSettings,
) -> Result<Ready, Error> {
    let Taken {
        lease,
        age,
        request,
        resumed,
    } = taken;
    // From here this worker holds the lease: every way out lets it go or completes.
    let held = &lease;
    let corrupt = |key, source| async move {
        release(js, held, id, Release::default()).await;
        Error::Journal {
            operation_id: id.to_owned(),
            key,
            outcome_unknown: true,
            source,
        }
    };
    let key = match recorded_key(&request) {
        Ok(key) => key,
        Err(source) => return Err(corrupt(None, source).await),
    };
    if age.saturating_add(operation.timeout) > js.journal.max_resume_age() {
        return Err(too_old(js, &lease, id, key, age).await);
    }
    // A new operation sends the request at hand, which is what was recorded; a resumed
    // one is rebuilt from its record's bytes, with the values of its secrets.
    let was_resumed = resumed.is_some();
    let template = match resumed {
        None => operation.template,
        Some(secrets) => {
            info!(target: TARGET, operation_id = %id, age_s = age.as_secs(), "resuming a recorded operation");
            match template_of(&request, &secrets) {
                Ok(template) => template,
                Err(source) => return Err(corrupt(Some(key), source).await),
            }
        }
    };
    let operation = Operation {
        template,
        key,
        // A recorded key may have been sent by an earlier run.
        fresh_key: operation.fresh_key && !was_resumed,
        ..operation
    };
    Ok(Ready {
        operation,
        lease,
        age,
        resumed: was_resumed,
    })
}

/// Leaves an operation too old to resume needing attention: its last attempt would end
/// past the journal's `max_resume_age`, when the server may have forgotten its key.
async fn too_old(
    js: &JournalSettings,
    lease: &Lease,
    id: &str,
    key: IdempotencyKey,
    age: Duration,
) -> Error {
    let reason = "older than the journal's max_resume_age";
    let attention = Release {
        attention: Some(reason.into()),
        ..Release::default()
    };
    if let Err(e) = js.journal.release(lease, &attention).await {
        warn!(target: TARGET, operation_id = %id, error = %e, "could not mark the operation as needing attention");
    }
    warn!(target: TARGET, operation_id = %id, age_s = age.as_secs(), "operation too old to resume");
    Error::NeedsAttention {
        operation_id: id.to_owned(),
        key,
        age,
        reason: reason.into(),
        last_response: None,
    }
}

/// Lets the lease go with `release`, logging a failure (the lease then runs out).
async fn release(js: &JournalSettings, lease: &Lease, id: &str, release: Release) {
    if let Err(e) = js.journal.release(lease, &release).await {
        warn!(target: TARGET, operation_id = %id, error = %e, "could not release the operation's lease");
    }
}

/// Drives a ready operation's attempts through the client's engine, with the lease
/// around its transport: the result, and what settling it needs to know.
pub(super) async fn drive<'a>(
    ready: Ready,
    id: &'a str,
    js: &JournalSettings,
) -> (Result<IdempotentResponse, Error>, Driven<'a>) {
    let Ready {
        operation,
        lease,
        age,
        resumed,
    } = ready;
    let (engine, sender) = operation.start();
    let mut leased = Leased::new(sender, &*js.journal, &lease, age);
    let ending = engine.run(&mut leased, operation.timeout).await;
    let counted = leased.counted;
    let url = operation.template.url().clone();
    let client = operation.client.clone();
    let result = operation.finish(ending);
    // An open circuit's break is a wait for every worker, as a server's Retry-After is.
    let reopens = match &result {
        Err(e) if e.is_circuit_open() => client.inner.settings.retry.origins.reopens_in(&url),
        _ => None,
    };
    let driven = Driven {
        id,
        lease,
        age,
        resumed,
        counted,
        reopens,
    };
    (result, driven)
}
