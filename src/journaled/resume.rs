//! What the journal holds, for the client: the pending operations, a recorded answer,
//! and resuming every pending operation.

use std::pin::Pin;
use std::task::Poll;

use http::HeaderMap;
use tracing::warn;

use super::record::{recorded_key, template_of};
use super::send;
use super::settings::{Held, JournalSettings};
use crate::journal::{EntryState, JournalEntry, PendingOperation, RecordedAnswer, ResumeReport};
use crate::operation::Operation;
use crate::telemetry::TARGET;
use crate::{Error, GiveUpReason, IdempotentClient};

/// Whether a client has a journal, for `pending` and `resume_pending`.
fn settings_of(client: &IdempotentClient) -> Result<&JournalSettings, Error> {
    client
        .inner
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

/// Sends every pending operation that no worker holds again, oldest first, up to the
/// client's `resume_concurrency` at once, each with its recorded key and bytes and the
/// values of its secret headers from the client's resume credentials, each under its
/// own lease and inside an operation span of its own.
pub(crate) async fn resume_pending(client: &IdempotentClient) -> Result<ResumeReport, Error> {
    let js = settings_of(client)?;
    let entries = listed(js).await?;
    let mut report = ResumeReport::default();
    match js.journal.housekeep().await {
        Ok(removed) => report.removed = removed,
        Err(e) => warn!(target: TARGET, error = %e, "could not remove old completed operations"),
    }
    let resumes = entries
        .into_iter()
        .map(|entry| resume_one(client, js, entry));
    at_most(js.resume_concurrency, resumes, |resumed| match resumed {
        Resumed::Completed(id) => report.completed.push(id),
        Resumed::Attention(id) => report.needs_attention.push(id),
        Resumed::HeldElsewhere(id) => report.held_elsewhere.push(id),
        Resumed::StillPending(id, error) => report.still_pending.push((id, error)),
    })
    .await;
    Ok(report)
}

/// How one resumed operation ended, for the report.
enum Resumed {
    Completed(String),
    Attention(String),
    HeldElsewhere(String),
    StillPending(String, Error),
}

/// Runs `futures` in their order, at most `limit` at a time, and hands each output to
/// `each` as it comes.
async fn at_most<F: Future>(
    limit: usize,
    mut futures: impl Iterator<Item = F>,
    mut each: impl FnMut(F::Output),
) {
    let mut running: Vec<Pin<Box<F>>> = Vec::with_capacity(limit);
    loop {
        while running.len() < limit.max(1) {
            match futures.next() {
                Some(future) => running.push(Box::pin(future)),
                None => break,
            }
        }
        if running.is_empty() {
            return;
        }
        let output = std::future::poll_fn(|cx| {
            for i in 0..running.len() {
                if let Poll::Ready(output) = running[i].as_mut().poll(cx) {
                    drop(running.swap_remove(i));
                    return Poll::Ready(output);
                }
            }
            Poll::Pending
        })
        .await;
        each(output);
    }
}

/// Resumes one listed operation. One unreadable record holds up no other.
async fn resume_one(
    client: &IdempotentClient,
    js: &JournalSettings,
    entry: JournalEntry,
) -> Resumed {
    use tracing::Instrument;
    let id = entry.id.clone();
    let entry = match js.opened(entry) {
        Ok(entry) => entry,
        Err(e) => {
            warn!(target: TARGET, operation_id = %id, error = %e, "a recorded operation cannot be read: it needs attention");
            return Resumed::Attention(id);
        }
    };
    if let EntryState::NeedsAttention(_) = entry.state {
        return Resumed::Attention(id);
    }
    let operation = match operation_of(client, &entry) {
        Ok(operation) => operation,
        Err(error) => return Resumed::StillPending(id, error),
    };
    let template = &operation.template;
    let span = crate::telemetry::operation_span(template.method(), template.url());
    // A holder that is gone is taken over by the claim; a live one keeps it.
    match send(operation, id.clone(), Held::Leave)
        .instrument(span)
        .await
    {
        Ok(_) => Resumed::Completed(id),
        Err(Error::NeedsAttention { .. }) => Resumed::Attention(id),
        Err(Error::Failed {
            reason: GiveUpReason::LeaseHeld | GiveUpReason::LeaseLost,
            ..
        }) => Resumed::HeldElsewhere(id),
        Err(e) => Resumed::StillPending(id, e),
    }
}

/// A recorded operation as one to send again: its recorded key and bytes (the values
/// of its secrets are found when it is taken up).
fn operation_of(client: &IdempotentClient, entry: &JournalEntry) -> Result<Operation, Error> {
    let built = recorded_key(&entry.request)
        .and_then(|key| Ok((key, template_of(&entry.request, &HeaderMap::new())?)));
    let (key, template) = built.map_err(|source| Error::Journal {
        operation_id: entry.id.clone(),
        key: None,
        outcome_unknown: true,
        source,
    })?;
    Ok(Operation {
        client: client.clone(),
        template,
        key,
        fresh_key: false,
        overrides: None,
        timeout: client.inner.settings.attempt_timeout,
    })
}
