//! What the rules share: the run's ids, the leases' durations, the request and answers
//! the check writes, and the checks of one journal call each rule makes.

use std::time::Duration;

use bytes::Bytes;

use crate::journal::{
    Claimed, Inserted, Journal, JournalEntry, JournalError, Lease, RecordedAnswer, RecordedRequest,
};

/// The lease the check hands out: short, so that it runs out within the check.
pub(crate) const SHORT: Duration = Duration::from_millis(80);
/// Long enough for a short lease, or a short wait, to have run out by any clock.
pub(crate) const PAST_SHORT: Duration = Duration::from_millis(160);
pub(crate) const LONG: Duration = Duration::from_secs(30);

/// The ids of one run: under a prefix of their own, so that runs sharing a database
/// never meet.
pub(crate) struct Ids(pub(crate) String);

impl Ids {
    pub(crate) fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.0)
    }
}

/// A journal's failure, named with what was asked of it.
pub(crate) fn fail(what: &str, e: JournalError) -> String {
    format!("{what}: the journal failed: {e}")
}

/// The answer the check completes operations with.
pub(crate) fn created() -> RecordedAnswer {
    RecordedAnswer {
        status: 201,
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: Bytes::from_static(b"{\"id\":1}"),
    }
}

/// An answer about the caller, not the operation.
pub(crate) fn unauthorized() -> RecordedAnswer {
    RecordedAnswer {
        status: 401,
        headers: vec![("www-authenticate".into(), b"Bearer".to_vec())],
        body: Bytes::from_static(b"{\"error\":\"expired token\"}"),
    }
}

pub(crate) fn request(key: &str) -> RecordedRequest {
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
        // Opaque to a store: kept as given, and past the body's own life.
        fingerprint: Some(Bytes::from_static(&[0x5a; 32])),
    }
}

/// A new operation under `id`, recorded with a long lease.
pub(crate) async fn recorded(journal: &dyn Journal, id: &str) -> Result<Lease, String> {
    recorded_as(journal, id, &request("k-2")).await
}

/// A new operation under `id` for `request`, recorded with a long lease.
pub(crate) async fn recorded_as(
    journal: &dyn Journal,
    id: &str,
    request: &RecordedRequest,
) -> Result<Lease, String> {
    match journal.insert(id, request, "worker-c", LONG).await {
        Ok(Inserted::Recorded(lease)) => Ok(lease),
        Ok(other) => Err(format!("a new id must be recorded, not {other:?}")),
        Err(e) => Err(format!("insert: the journal failed: {e}")),
    }
}

/// The operation under `id`, which must be found (else `missing`).
pub(crate) async fn found(
    journal: &dyn Journal,
    id: &str,
    missing: &str,
) -> Result<JournalEntry, String> {
    journal
        .find(id)
        .await
        .map_err(|e| fail("find", e))?
        .ok_or_else(|| missing.to_owned())
}

/// The lease of a claim that must succeed; `refused` says why it must, with `{other:?}`
/// standing for what the journal answered.
pub(crate) async fn claimed(
    journal: &dyn Journal,
    id: &str,
    holder: &str,
    refused: &str,
) -> Result<Lease, String> {
    match journal
        .claim(id, holder, LONG)
        .await
        .map_err(|e| fail("claim", e))?
    {
        Claimed::Lease(lease) => Ok(lease),
        other => Err(refused.replace("{other:?}", &format!("{other:?}"))),
    }
}

pub(crate) fn fenced(result: Result<(), JournalError>, what: &str) -> Result<(), String> {
    match result {
        Err(JournalError::LeaseLost { .. }) => Ok(()),
        other => Err(format!(
            "{what} with a token that is no longer the operation's must be LeaseLost, not {other:?}"
        )),
    }
}

pub(crate) async fn expect_not_pending(journal: &dyn Journal, id: &str) -> Result<(), String> {
    match journal.claim(id, "worker-z", LONG).await {
        Ok(Claimed::NotPending) => Ok(()),
        other => Err(format!(
            "an operation that is not pending must not be claimed, not {other:?}"
        )),
    }
}
