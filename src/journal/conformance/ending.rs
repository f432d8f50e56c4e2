//! The rules for operations that end other than by completing: attention (and a
//! person's resolution), `Resend`, a take-up that sent nothing, withdrawal, cancel.

use super::support::{
    Ids, claimed, expect_not_pending, fail, found, recorded, request, unauthorized,
};
use crate::journal::{EntryState, Journal, Lease, RecordedAnswer, Release, Resolution};

/// An operation that needs attention is never claimed again, is listed by `pending`
/// with the answer that caused it, and a person resolves it.
pub(super) async fn attention(
    journal: &dyn Journal,
    ids: &Ids,
    lease: &Lease,
) -> Result<(), String> {
    let unauthorized = unauthorized();
    let release = Release {
        attention: Some("checked by a person".into()),
        answer: Some(unauthorized.clone()),
        ..Release::default()
    };
    journal
        .release(lease, &release)
        .await
        .map_err(|e| fail("release", e))?;
    expect_not_pending(journal, &ids.id("wait")).await?;
    let pending = journal.pending().await.map_err(|e| fail("pending", e))?;
    let listed = pending.iter().find(|e| e.id == ids.id("wait"));
    if !listed.is_some_and(|e| matches!(e.state, EntryState::NeedsAttention(_))) {
        return Err("pending must list an operation that needs attention".into());
    }
    if listed.and_then(|e| e.answer.as_ref()) != Some(&unauthorized) {
        return Err("an operation that needs attention must keep the answer that caused it".into());
    }
    if pending.iter().any(|e| e.id == ids.id("op")) {
        return Err("pending must not list a completed operation".into());
    }
    let resolved = journal
        .resolve(
            &ids.id("wait"),
            &Resolution::Abandoned("by the check".into()),
        )
        .await
        .map_err(|e| fail("resolve", e))?;
    if !resolved {
        return Err("resolve must apply to an operation that needs attention".into());
    }
    let entry = found(
        journal,
        &ids.id("wait"),
        "an abandoned operation must be found",
    )
    .await?;
    if !matches!(entry.state, EntryState::Abandoned(_)) {
        return Err(format!("resolve must abandon it, not {:?}", entry.state));
    }
    if journal
        .resolve(&ids.id("op"), &Resolution::Resend)
        .await
        .map_err(|e| fail("resolve", e))?
    {
        return Err("Resend must not apply to an operation completed with a 2xx answer".into());
    }
    Ok(())
}

/// `Resend` reopens an operation completed with an answer that is not 2xx, under its
/// key.
pub(super) async fn resending(
    journal: &dyn Journal,
    ids: &Ids,
    answer: &RecordedAnswer,
) -> Result<(), String> {
    let lease = recorded(journal, &ids.id("404")).await?;
    journal
        .complete(&lease, &unauthorized())
        .await
        .map_err(|e| fail("complete", e))?;
    if !journal
        .resolve(&ids.id("404"), &Resolution::Resend)
        .await
        .map_err(|e| fail("resolve", e))?
    {
        return Err("Resend must reopen an operation completed with a 401".into());
    }
    let entry = found(
        journal,
        &ids.id("404"),
        "a reopened operation must be found",
    )
    .await?;
    if entry.state != EntryState::Pending || entry.request != request("k-2") {
        return Err(format!(
            "Resend must leave it pending under its key, its body whole, not {:?}",
            entry.state
        ));
    }
    let lease = claimed(
        journal,
        &ids.id("404"),
        "worker-d",
        "a reopened operation must be claimed, not {other:?}",
    )
    .await?;
    journal
        .complete(&lease, answer)
        .await
        .map_err(|e| fail("complete", e))?;
    Ok(())
}

/// A take-up that sent nothing is no resume.
pub(super) async fn quiet_take_up(journal: &dyn Journal, ids: &Ids) -> Result<(), String> {
    let lease = recorded(journal, &ids.id("quiet")).await?;
    journal
        .release(&lease, &Release::default())
        .await
        .map_err(|e| fail("release", e))?;
    let lease = claimed(
        journal,
        &ids.id("quiet"),
        "worker-e",
        "a released operation must be claimed, not {other:?}",
    )
    .await?;
    let quiet = Release {
        sent_nothing: true,
        ..Release::default()
    };
    journal
        .release(&lease, &quiet)
        .await
        .map_err(|e| fail("release", e))?;
    let resumes = journal
        .find(&ids.id("quiet"))
        .await
        .map_err(|e| fail("find", e))?
        .map(|e| e.resumes);
    if resumes != Some(0) {
        return Err(format!(
            "a release that sent nothing must not count as a resume (0), not {resumes:?}"
        ));
    }
    journal
        .resolve(
            &ids.id("quiet"),
            &Resolution::Abandoned("by the check".into()),
        )
        .await
        .map_err(|e| fail("resolve", e))?;
    Ok(())
}

/// A withdrawn operation goes, as if never recorded; a held one is not resolved under
/// its worker's feet.
pub(super) async fn withdrawing(
    journal: &dyn Journal,
    ids: &Ids,
    answer: &RecordedAnswer,
) -> Result<(), String> {
    let lease = recorded(journal, &ids.id("withdrawn")).await?;
    journal
        .withdraw(&lease)
        .await
        .map_err(|e| fail("withdraw", e))?;
    if journal
        .find(&ids.id("withdrawn"))
        .await
        .map_err(|e| fail("find", e))?
        .is_some()
    {
        return Err("a withdrawn operation must not be found".into());
    }
    // A held operation is not resolved under its worker's feet.
    let held = recorded(journal, &ids.id("held")).await?;
    if journal
        .resolve(&ids.id("held"), &Resolution::Resend)
        .await
        .map_err(|e| fail("resolve", e))?
    {
        return Err("resolve must not apply to an operation a live worker holds".into());
    }
    journal
        .complete(&held, answer)
        .await
        .map_err(|e| fail("complete", e))?;
    Ok(())
}

/// `cancel` applies only to what no attempt ever left.
pub(super) async fn cancelling(journal: &dyn Journal, ids: &Ids) -> Result<(), String> {
    let lease = recorded(journal, &ids.id("cancel")).await?;
    if journal
        .cancel(&ids.id("cancel"))
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
        .cancel(&ids.id("cancel"))
        .await
        .map_err(|e| fail("cancel", e))?
    {
        return Err("cancel must apply to an operation released with no attempt".into());
    }
    let lease = recorded(journal, &ids.id("tried")).await?;
    let tried = Release {
        attempts: 1,
        ..Release::default()
    };
    journal
        .release(&lease, &tried)
        .await
        .map_err(|e| fail("release", e))?;
    if journal
        .cancel(&ids.id("tried"))
        .await
        .map_err(|e| fail("cancel", e))?
    {
        return Err("cancel must not apply to an operation an attempt may have reached".into());
    }
    journal
        .resolve(
            &ids.id("tried"),
            &Resolution::Abandoned("by the check".into()),
        )
        .await
        .map_err(|e| fail("resolve", e))?;
    Ok(())
}
