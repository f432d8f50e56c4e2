//! A conformance check for any [`Journal`]: the rules the client relies on for
//! exactly-once, exercised through the trait alone (feature `journal-conformance`, for
//! your `[dev-dependencies]`). Run it in your tests against your own journal; it takes
//! about half a second (it waits for short leases to run out).
//!
//! ```
//! use idempotent_retry::journal::{MemoryJournal, conformance};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! conformance::check(&MemoryJournal::new()).await.expect("a journal keeps every rule");
//! # }
//! ```
//!
//! It writes operations under ids that start with `conformance-` and a random suffix,
//! so it can run against a database other tests share; they are left completed or
//! abandoned, for housekeeping to remove.

mod ending;
mod support;

use super::{
    Claimed, EntryState, Inserted, Journal, Lease, RecordedAnswer, RecordedRequest, Release,
};
use ending::{attention, cancelling, quiet_take_up, resending, withdrawing};
use support::{
    Ids, LONG, PAST_SHORT, SHORT, claimed, created, expect_not_pending, fail, fenced, found,
    recorded, recorded_as, request,
};

/// Runs every rule against `journal`; the error names the first one broken.
///
/// # Errors
///
/// A sentence naming the rule that does not hold, or the journal's own error.
pub async fn check(journal: &dyn Journal) -> Result<(), String> {
    let ids = Ids(format!("conformance-{}", uuid::Uuid::new_v4().simple()));
    let answer = created();
    let first = recording(journal, &ids).await?;
    let second = leases(journal, &ids, &first).await?;
    fencing(journal, &ids, &first, &answer).await?;
    completing(journal, &ids, &second, &answer).await?;
    unfingerprinted(journal, &ids, &answer).await?;
    let lease = releasing(journal, &ids).await?;
    attention(journal, &ids, &lease).await?;
    resending(journal, &ids, &answer).await?;
    quiet_take_up(journal, &ids).await?;
    withdrawing(journal, &ids, &answer).await?;
    cancelling(journal, &ids).await?;
    journal
        .housekeep()
        .await
        .map_err(|e| fail("housekeep", e))?;
    Ok(())
}

/// One write records the operation and gives its lease; a taken id is not recorded
/// again; `find` returns the request exactly, and nothing for an unknown id.
async fn recording(journal: &dyn Journal, ids: &Ids) -> Result<Lease, String> {
    let original = request("k-1");
    let first = match journal
        .insert(&ids.id("op"), &original, "worker-a", SHORT)
        .await
        .map_err(|e| fail("insert", e))?
    {
        Inserted::Recorded(lease) => lease,
        other => return Err(format!("a new id must be recorded, not {other:?}")),
    };
    let again = journal
        .insert(&ids.id("op"), &request("k-other"), "worker-b", LONG)
        .await
        .map_err(|e| fail("insert", e))?;
    if again != Inserted::Exists {
        return Err(format!("a taken id must be Exists, not {again:?}"));
    }
    let entry = found(journal, &ids.id("op"), "a recorded operation must be found").await?;
    if entry.request != original {
        return Err("find must return the request exactly as recorded".into());
    }
    if entry.state != EntryState::Pending || entry.holder.as_deref() != Some("worker-a") {
        return Err(format!(
            "a new operation is pending and held by its recorder, not {:?} held by {:?}",
            entry.state, entry.holder
        ));
    }
    if journal
        .find(&ids.id("missing"))
        .await
        .map_err(|e| fail("find", e))?
        .is_some()
    {
        return Err("an id never recorded must not be found".into());
    }
    Ok(first)
}

/// A live lease is not taken; `start_attempt` counts the attempt before it leaves; a
/// run-out lease is taken, with a greater token.
async fn leases(journal: &dyn Journal, ids: &Ids, first: &Lease) -> Result<Lease, String> {
    match journal
        .claim(&ids.id("op"), "worker-b", LONG)
        .await
        .map_err(|e| fail("claim", e))?
    {
        Claimed::Held { holder, .. } if holder == "worker-a" => {}
        other => {
            return Err(format!(
                "a live lease must be Held by its holder, not {other:?}"
            ));
        }
    }
    journal
        .start_attempt(first, SHORT)
        .await
        .map_err(|e| fail("starting an attempt under one's own lease", e))?;
    let attempts = journal
        .find(&ids.id("op"))
        .await
        .map_err(|e| fail("find", e))?
        .map(|e| e.attempts);
    if attempts != Some(1) {
        return Err(format!(
            "start_attempt must count the attempt before it leaves (1), not {attempts:?}"
        ));
    }
    tokio::time::sleep(PAST_SHORT).await;
    let second = match journal
        .claim(&ids.id("op"), "worker-b", LONG)
        .await
        .map_err(|e| fail("claim", e))?
    {
        Claimed::Lease(lease) if lease.token > first.token => lease,
        other => {
            return Err(format!(
                "a run-out lease must be taken with a greater token than {}, not {other:?}",
                first.token
            ));
        }
    };
    Ok(second)
}

/// Every write naming the old token is refused, and changes nothing.
async fn fencing(
    journal: &dyn Journal,
    ids: &Ids,
    first: &Lease,
    answer: &RecordedAnswer,
) -> Result<(), String> {
    fenced(journal.start_attempt(first, LONG).await, "start_attempt")?;
    fenced(journal.withdraw(first).await, "withdraw")?;
    fenced(journal.complete(first, answer).await, "complete")?;
    fenced(journal.release(first, &Release::default()).await, "release")?;
    let entry = found(journal, &ids.id("op"), "the operation must still be found").await?;
    if entry.state != EntryState::Pending || entry.holder.as_deref() != Some("worker-b") {
        return Err("a fenced-off write must change nothing".into());
    }
    Ok(())
}

/// The answer is kept, the lease let go, and nothing claims it again.
async fn completing(
    journal: &dyn Journal,
    ids: &Ids,
    second: &Lease,
    answer: &RecordedAnswer,
) -> Result<(), String> {
    journal
        .complete(second, answer)
        .await
        .map_err(|e| fail("complete", e))?;
    let entry = found(
        journal,
        &ids.id("op"),
        "a completed operation must be found",
    )
    .await?;
    if entry.state != EntryState::Completed(answer.clone()) {
        return Err(format!(
            "complete must keep the answer, not {:?}",
            entry.state
        ));
    }
    // A store may drop the body after a 2xx answer; the rest stays, fingerprint first.
    let original = request("k-1");
    let kept = RecordedRequest {
        body: original.body.clone(),
        ..entry.request.clone()
    };
    if kept != original || !(entry.request.body.is_empty() || entry.request.body == original.body) {
        return Err("complete must keep the request (its body may go), fingerprint and all".into());
    }
    expect_not_pending(journal, &ids.id("op")).await?;
    fenced(
        journal.release(second, &Release::default()).await,
        "release after complete",
    )?;
    Ok(())
}

/// A record without a fingerprint (from a writer that computes none) keeps its body
/// when it completes: a later call compares its own body with it.
async fn unfingerprinted(
    journal: &dyn Journal,
    ids: &Ids,
    answer: &RecordedAnswer,
) -> Result<(), String> {
    let original = RecordedRequest {
        fingerprint: None,
        ..request("k-plain")
    };
    let id = ids.id("plain");
    let lease = recorded_as(journal, &id, &original).await?;
    journal
        .complete(&lease, answer)
        .await
        .map_err(|e| fail("complete", e))?;
    let entry = found(journal, &id, "a completed operation must be found").await?;
    if entry.request != original {
        return Err("complete must keep a body that no fingerprint stands for".into());
    }
    Ok(())
}

/// Attempts add up; a wait holds every claim until it passes. Gives the lease taken
/// after the wait.
async fn releasing(journal: &dyn Journal, ids: &Ids) -> Result<Lease, String> {
    let lease = recorded(journal, &ids.id("wait")).await?;
    let release = Release {
        attempts: 2,
        not_before: Some(SHORT),
        ..Release::default()
    };
    journal
        .release(&lease, &release)
        .await
        .map_err(|e| fail("release", e))?;
    let entry = found(
        journal,
        &ids.id("wait"),
        "a released operation must be found",
    )
    .await?;
    if entry.attempts != 2 || entry.holder.is_some() || entry.not_before.is_none() {
        return Err(format!(
            "a release must add its attempts (2, got {}), free the lease and keep the wait",
            entry.attempts
        ));
    }
    match journal
        .claim(&ids.id("wait"), "worker-c", LONG)
        .await
        .map_err(|e| fail("claim", e))?
    {
        Claimed::NotBefore { .. } => {}
        other => {
            return Err(format!(
                "a claim inside a wait must be NotBefore, not {other:?}"
            ));
        }
    }
    tokio::time::sleep(PAST_SHORT).await;
    let lease = claimed(
        journal,
        &ids.id("wait"),
        "worker-c",
        "a claim after the wait must succeed, not {other:?}",
    )
    .await?;
    Ok(lease)
}
