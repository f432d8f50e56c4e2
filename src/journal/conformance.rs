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

use std::time::Duration;

use bytes::Bytes;

use super::{
    Claimed, EntryState, Inserted, Journal, JournalError, Lease, RecordedAnswer, RecordedRequest,
    Release, Resolution,
};

/// The lease the check hands out: short, so that it runs out within the check.
const SHORT: Duration = Duration::from_millis(80);
/// Long enough for a short lease, or a short wait, to have run out by any clock.
const PAST_SHORT: Duration = Duration::from_millis(160);
const LONG: Duration = Duration::from_secs(30);

/// Runs every rule against `journal`; the error names the first one broken.
///
/// # Errors
///
/// A sentence naming the rule that does not hold, or the journal's own error.
pub async fn check(journal: &dyn Journal) -> Result<(), String> {
    let run = format!("conformance-{}", uuid::Uuid::new_v4().simple());
    let id = |name: &str| format!("{run}-{name}");
    let fail = |what: &str, e: JournalError| format!("{what}: the journal failed: {e}");

    // Recording: one write records the operation and gives its lease.
    let original = request("k-1");
    let first = match journal
        .insert(&id("op"), &original, "worker-a", SHORT)
        .await
        .map_err(|e| fail("insert", e))?
    {
        Inserted::Recorded(lease) => lease,
        other => return Err(format!("a new id must be recorded, not {other:?}")),
    };
    let again = journal
        .insert(&id("op"), &request("k-other"), "worker-b", LONG)
        .await
        .map_err(|e| fail("insert", e))?;
    if again != Inserted::Exists {
        return Err(format!("a taken id must be Exists, not {again:?}"));
    }
    let entry = journal
        .find(&id("op"))
        .await
        .map_err(|e| fail("find", e))?
        .ok_or("a recorded operation must be found")?;
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
        .find(&id("missing"))
        .await
        .map_err(|e| fail("find", e))?
        .is_some()
    {
        return Err("an id never recorded must not be found".into());
    }

    // Leases: a live one is not taken; a run-out one is, with a greater token.
    match journal
        .claim(&id("op"), "worker-b", LONG)
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
        .start_attempt(&first, SHORT)
        .await
        .map_err(|e| fail("starting an attempt under one's own lease", e))?;
    let attempts = journal
        .find(&id("op"))
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
        .claim(&id("op"), "worker-b", LONG)
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

    // Fencing: every write naming the old token is refused, and changes nothing.
    let answer = RecordedAnswer {
        status: 201,
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: Bytes::from_static(b"{\"id\":1}"),
    };
    fenced(journal.start_attempt(&first, LONG).await, "start_attempt")?;
    fenced(journal.withdraw(&first).await, "withdraw")?;
    fenced(journal.complete(&first, &answer).await, "complete")?;
    fenced(
        journal.release(&first, &Release::default()).await,
        "release",
    )?;
    let entry = journal
        .find(&id("op"))
        .await
        .map_err(|e| fail("find", e))?
        .ok_or("the operation must still be found")?;
    if entry.state != EntryState::Pending || entry.holder.as_deref() != Some("worker-b") {
        return Err("a fenced-off write must change nothing".into());
    }

    // Completing: the answer is kept, the lease let go, and nothing claims it again.
    journal
        .complete(&second, &answer)
        .await
        .map_err(|e| fail("complete", e))?;
    let entry = journal
        .find(&id("op"))
        .await
        .map_err(|e| fail("find", e))?
        .ok_or("a completed operation must be found")?;
    if entry.state != EntryState::Completed(answer.clone()) {
        return Err(format!(
            "complete must keep the answer, not {:?}",
            entry.state
        ));
    }
    expect_not_pending(journal, &id("op")).await?;
    fenced(
        journal.release(&second, &Release::default()).await,
        "release after complete",
    )?;

    // Releasing: attempts add up; a wait holds every claim until it passes.
    let lease = recorded(journal, &id("wait")).await?;
    let release = Release {
        attempts: 2,
        not_before: Some(SHORT),
        ..Release::default()
    };
    journal
        .release(&lease, &release)
        .await
        .map_err(|e| fail("release", e))?;
    let entry = journal
        .find(&id("wait"))
        .await
        .map_err(|e| fail("find", e))?
        .ok_or("a released operation must be found")?;
    if entry.attempts != 2 || entry.holder.is_some() || entry.not_before.is_none() {
        return Err(format!(
            "a release must add its attempts (2, got {}), free the lease and keep the wait",
            entry.attempts
        ));
    }
    match journal
        .claim(&id("wait"), "worker-c", LONG)
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
    let lease = match journal
        .claim(&id("wait"), "worker-c", LONG)
        .await
        .map_err(|e| fail("claim", e))?
    {
        Claimed::Lease(lease) => lease,
        other => {
            return Err(format!(
                "a claim after the wait must succeed, not {other:?}"
            ));
        }
    };

    // Attention: never claimed again; listed by pending with the answer that caused
    // it; a person resolves it.
    let unauthorized = RecordedAnswer {
        status: 401,
        headers: vec![("www-authenticate".into(), b"Bearer".to_vec())],
        body: Bytes::from_static(b"{\"error\":\"expired token\"}"),
    };
    let release = Release {
        attention: Some("checked by a person".into()),
        answer: Some(unauthorized.clone()),
        ..Release::default()
    };
    journal
        .release(&lease, &release)
        .await
        .map_err(|e| fail("release", e))?;
    expect_not_pending(journal, &id("wait")).await?;
    let pending = journal.pending().await.map_err(|e| fail("pending", e))?;
    let listed = pending.iter().find(|e| e.id == id("wait"));
    if !listed.is_some_and(|e| matches!(e.state, EntryState::NeedsAttention(_))) {
        return Err("pending must list an operation that needs attention".into());
    }
    if listed.and_then(|e| e.answer.as_ref()) != Some(&unauthorized) {
        return Err("an operation that needs attention must keep the answer that caused it".into());
    }
    if pending.iter().any(|e| e.id == id("op")) {
        return Err("pending must not list a completed operation".into());
    }
    let resolved = journal
        .resolve(&id("wait"), &Resolution::Abandoned("by the check".into()))
        .await
        .map_err(|e| fail("resolve", e))?;
    if !resolved {
        return Err("resolve must apply to an operation that needs attention".into());
    }
    let entry = journal
        .find(&id("wait"))
        .await
        .map_err(|e| fail("find", e))?
        .ok_or("an abandoned operation must be found")?;
    if !matches!(entry.state, EntryState::Abandoned(_)) {
        return Err(format!("resolve must abandon it, not {:?}", entry.state));
    }
    if journal
        .resolve(&id("op"), &Resolution::Resend)
        .await
        .map_err(|e| fail("resolve", e))?
    {
        return Err("Resend must not apply to an operation completed with a 2xx answer".into());
    }
    // Resend reopens an operation completed with an answer that is not 2xx.
    let lease = recorded(journal, &id("404")).await?;
    journal
        .complete(&lease, &unauthorized)
        .await
        .map_err(|e| fail("complete", e))?;
    if !journal
        .resolve(&id("404"), &Resolution::Resend)
        .await
        .map_err(|e| fail("resolve", e))?
    {
        return Err("Resend must reopen an operation completed with a 401".into());
    }
    let entry = journal
        .find(&id("404"))
        .await
        .map_err(|e| fail("find", e))?
        .ok_or("a reopened operation must be found")?;
    if entry.state != EntryState::Pending || entry.request.key != "k-2" {
        return Err(format!(
            "Resend must leave it pending under its key, not {:?}",
            entry.state
        ));
    }
    let lease = match journal
        .claim(&id("404"), "worker-d", LONG)
        .await
        .map_err(|e| fail("claim", e))?
    {
        Claimed::Lease(lease) => lease,
        other => {
            return Err(format!(
                "a reopened operation must be claimed, not {other:?}"
            ));
        }
    };
    journal
        .complete(&lease, &answer)
        .await
        .map_err(|e| fail("complete", e))?;
    // A take-up that sent nothing is no resume.
    let lease = recorded(journal, &id("quiet")).await?;
    journal
        .release(&lease, &Release::default())
        .await
        .map_err(|e| fail("release", e))?;
    let lease = match journal
        .claim(&id("quiet"), "worker-e", LONG)
        .await
        .map_err(|e| fail("claim", e))?
    {
        Claimed::Lease(lease) => lease,
        other => {
            return Err(format!(
                "a released operation must be claimed, not {other:?}"
            ));
        }
    };
    let quiet = Release {
        sent_nothing: true,
        ..Release::default()
    };
    journal
        .release(&lease, &quiet)
        .await
        .map_err(|e| fail("release", e))?;
    let resumes = journal
        .find(&id("quiet"))
        .await
        .map_err(|e| fail("find", e))?
        .map(|e| e.resumes);
    if resumes != Some(0) {
        return Err(format!(
            "a release that sent nothing must not count as a resume (0), not {resumes:?}"
        ));
    }
    journal
        .resolve(&id("quiet"), &Resolution::Abandoned("by the check".into()))
        .await
        .map_err(|e| fail("resolve", e))?;
    // Withdraw: the operation goes, as if never recorded.
    let lease = recorded(journal, &id("withdrawn")).await?;
    journal
        .withdraw(&lease)
        .await
        .map_err(|e| fail("withdraw", e))?;
    if journal
        .find(&id("withdrawn"))
        .await
        .map_err(|e| fail("find", e))?
        .is_some()
    {
        return Err("a withdrawn operation must not be found".into());
    }
    // A held operation is not resolved under its worker's feet.
    let held = recorded(journal, &id("held")).await?;
    if journal
        .resolve(&id("held"), &Resolution::Resend)
        .await
        .map_err(|e| fail("resolve", e))?
    {
        return Err("resolve must not apply to an operation a live worker holds".into());
    }
    journal
        .complete(&held, &answer)
        .await
        .map_err(|e| fail("complete", e))?;
    // Cancel: only what no attempt ever left.
    let lease = recorded(journal, &id("cancel")).await?;
    if journal
        .cancel(&id("cancel"))
        .await
        .map_err(|e| fail("cancel", e))?
    {
        return Err("cancel must not apply to an operation a worker holds".into());
    }
    journal
        .release(&lease, &Release::default())
        .await
        .map_err(|e| fail("release", e))?;
    if !journal
        .cancel(&id("cancel"))
        .await
        .map_err(|e| fail("cancel", e))?
    {
        return Err("cancel must apply to an operation released with no attempt".into());
    }
    let lease = recorded(journal, &id("tried")).await?;
    let tried = Release {
        attempts: 1,
        ..Release::default()
    };
    journal
        .release(&lease, &tried)
        .await
        .map_err(|e| fail("release", e))?;
    if journal
        .cancel(&id("tried"))
        .await
        .map_err(|e| fail("cancel", e))?
    {
        return Err("cancel must not apply to an operation an attempt may have reached".into());
    }
    journal
        .resolve(&id("tried"), &Resolution::Abandoned("by the check".into()))
        .await
        .map_err(|e| fail("resolve", e))?;
    journal
        .housekeep()
        .await
        .map_err(|e| fail("housekeep", e))?;
    Ok(())
}

fn request(key: &str) -> RecordedRequest {
    RecordedRequest {
        method: "POST".into(),
        url: "http://127.0.0.1:9/v1/charges".into(),
        key: key.into(),
        key_header: "idempotency-key".into(),
        key_value: key.as_bytes().to_vec(),
        headers: vec![
            ("content-type".into(), b"application/json".to_vec()),
            ("x-bytes".into(), vec![0x80, 0xff]),
        ],
        secret_headers: vec!["authorization".into(), "x-api-key".into()],
        body: Bytes::from_static(b"{\"amount\":100}"),
    }
}

/// A new operation under `id`, recorded with a long lease.
async fn recorded(journal: &dyn Journal, id: &str) -> Result<Lease, String> {
    match journal.insert(id, &request("k-2"), "worker-c", LONG).await {
        Ok(Inserted::Recorded(lease)) => Ok(lease),
        Ok(other) => Err(format!("a new id must be recorded, not {other:?}")),
        Err(e) => Err(format!("insert: the journal failed: {e}")),
    }
}

fn fenced(result: Result<(), JournalError>, what: &str) -> Result<(), String> {
    match result {
        Err(JournalError::LeaseLost { .. }) => Ok(()),
        other => Err(format!(
            "{what} with a token that is no longer the operation's must be LeaseLost, not {other:?}"
        )),
    }
}

async fn expect_not_pending(journal: &dyn Journal, id: &str) -> Result<(), String> {
    match journal.claim(id, "worker-z", LONG).await {
        Ok(Claimed::NotPending) => Ok(()),
        other => Err(format!(
            "an operation that is not pending must not be claimed, not {other:?}"
        )),
    }
}
