//! The checks of the suite, one method each.

use std::time::Duration;

use bytes::Bytes;

use super::{Check, CheckResult, Outcome, Run, Seen, identity};
use crate::{Fault, MockServer};

/// Tries at a key still in flight (`409`) before a check gives up waiting.
const IN_FLIGHT_TRIES: u32 = 20;
const IN_FLIGHT_WAIT: Duration = Duration::from_millis(50);

impl Run {
    /// The same request twice, one after the other: the same status and resource.
    pub(super) async fn replay(&self) -> CheckResult {
        let key = self.key("replay");
        let first = self.send(Some(&key)).await;
        let second = self.settled(&self.url, &key, &self.settings.body).await;
        let (first, second) = match (first, second) {
            (Ok(first), Ok(second)) => (first, second),
            (Err(e), _) | (_, Err(e)) => return Self::result(Check::Replay, Outcome::Fail, e),
        };
        let evidence = format!("first: {first}; again: {second}");
        let same = first.status == second.status && first.identity == second.identity;
        let outcome = if first.success() && same {
            Outcome::Pass
        } else {
            Outcome::Fail
        };
        let note = if second.replayed {
            ""
        } else {
            " (no Idempotent-Replayed header: reported, not required)"
        };
        Self::result(Check::Replay, outcome, format!("{evidence}{note}"))
    }

    /// The same request again until the key is no longer in flight (`409`).
    async fn settled(&self, url: &str, key: &str, body: &Bytes) -> Result<Seen, String> {
        let mut seen = self.send_to(url, Some(key), body, None).await?;
        for _ in 0..IN_FLIGHT_TRIES {
            if seen.status != 409 {
                break;
            }
            tokio::time::sleep(IN_FLIGHT_WAIT).await;
            seen = self.send_to(url, Some(key), body, None).await?;
        }
        Ok(seen)
    }

    /// The first answer lost after the server processed it (a proxy drops it), the
    /// retry with the same key: the same resource as the lost answer named.
    pub(super) async fn lost_answer(&self) -> CheckResult {
        let fail = |evidence: String| Self::result(Check::LostAnswer, Outcome::Fail, evidence);
        let mut proxy = MockServer::builder().upstream(self.settings.upstream.clone());
        if let Some(pointer) = &self.settings.id_pointer {
            proxy = proxy.id_pointer(pointer.clone());
        }
        let proxy = match proxy.start().await {
            Ok(proxy) => proxy,
            Err(e) => return fail(format!("could not start the proxy: {e}")),
        };
        proxy.inject(Fault::DropAfterProcessing, 1);
        let url = format!("{}{}", proxy.uri(), self.path);
        let key = self.key("lost-answer");
        if self
            .send_to(&url, Some(&key), &self.settings.body, None)
            .await
            .is_ok()
        {
            return fail("the proxy did not lose the first answer".into());
        }
        let retry = match self.settled(&url, &key, &self.settings.body).await {
            Ok(retry) => retry,
            Err(e) => return fail(e),
        };
        let lost = proxy
            .keys()
            .into_iter()
            .find(|k| k.key == key)
            .and_then(|k| k.exchanges.into_iter().next());
        let Some(lost) = lost.filter(|l| l.status.is_some()) else {
            return fail("the server gave no answer to the first request".into());
        };
        let lost_identity = identity(lost.resource_id, &lost.answer_digest.unwrap_or_default());
        let evidence = format!(
            "lost: {} {lost_identity}; retry: {retry}",
            lost.status.unwrap_or_default()
        );
        let same = retry.success() && retry.identity == lost_identity;
        Self::result(
            Check::LostAnswer,
            if same { Outcome::Pass } else { Outcome::Fail },
            evidence,
        )
    }

    /// Several requests with one key at once: at most one resource among the
    /// successes; the others the same answer, or `409`.
    pub(super) async fn concurrent(&self) -> CheckResult {
        let key = self.key("concurrent");
        let sends = (0..self.settings.concurrency).map(|_| self.send(Some(&key)));
        let seen: Vec<Result<Seen, String>> = futures_join(sends).await;
        let mut resources: Vec<&str> = seen
            .iter()
            .filter_map(|s| s.as_ref().ok())
            .filter(|s| s.success())
            .map(|s| s.identity.as_str())
            .collect();
        resources.sort_unstable();
        resources.dedup();
        let statuses: Vec<String> = seen
            .iter()
            .map(|s| match s {
                Ok(s) => s.status.to_string(),
                Err(_) => "none".into(),
            })
            .collect();
        let evidence = format!(
            "{} at once: statuses [{}]; resources {resources:?}",
            seen.len(),
            statuses.join(", ")
        );
        let outcome = if resources.len() <= 1 {
            Outcome::Pass
        } else {
            Outcome::Fail
        };
        Self::result(Check::ConcurrentDuplicates, outcome, evidence)
    }

    /// The same key with another body: refused, `422` per the IETF draft.
    pub(super) async fn mismatch(&self) -> CheckResult {
        let key = self.key("mismatch");
        let first = match self.send(Some(&key)).await {
            Ok(first) => first,
            Err(e) => return Self::result(Check::PayloadMismatch, Outcome::Fail, e),
        };
        let other = other_body(&self.settings.body);
        let second = match self.settled(&self.url, &key, &other).await {
            Ok(second) => second,
            Err(e) => return Self::result(Check::PayloadMismatch, Outcome::Fail, e),
        };
        let evidence = format!("first: {first}; other body: {second}");
        let (outcome, note) = match second.status {
            422 => (Outcome::Pass, ""),
            400..=499 => (Outcome::Pass, " (a 4xx, not the draft's 422)"),
            _ if second.success() && second.identity == first.identity => {
                (Outcome::Fail, " (answered with the first answer)")
            }
            _ => (Outcome::Fail, ""),
        };
        Self::result(Check::PayloadMismatch, outcome, format!("{evidence}{note}"))
    }

    /// A request without the key: reported (`400` if the server requires keys).
    pub(super) async fn missing_key(&self) -> CheckResult {
        match self.send(None).await {
            Ok(seen) if seen.status == 400 => Self::result(
                Check::MissingKey,
                Outcome::Pass,
                format!("{seen}: required"),
            ),
            Ok(seen) if seen.success() => Self::result(
                Check::MissingKey,
                Outcome::Pass,
                format!("{seen}: not required"),
            ),
            Ok(seen) => Self::result(Check::MissingKey, Outcome::Fail, seen.to_string()),
            Err(e) => Self::result(Check::MissingKey, Outcome::Fail, e),
        }
    }

    /// The same key under another `Authorization`: not the first caller's resource.
    pub(super) async fn scope(&self) -> CheckResult {
        let has_authorization = self.headers.contains_key(http::header::AUTHORIZATION);
        let Some(other) = self.settings.other_authorization.as_deref() else {
            return Self::result(
                Check::Scope,
                Outcome::NotApplicable,
                "needs --header Authorization:... and --other-authorization",
            );
        };
        if !has_authorization {
            return Self::result(
                Check::Scope,
                Outcome::NotApplicable,
                "needs --header Authorization:... beside --other-authorization",
            );
        }
        let key = self.key("scope");
        let first = self.send(Some(&key)).await;
        let body = &self.settings.body;
        let second = self.send_to(&self.url, Some(&key), body, Some(other)).await;
        let (first, second) = match (first, second) {
            (Ok(first), Ok(second)) => (first, second),
            (Err(e), _) | (_, Err(e)) => return Self::result(Check::Scope, Outcome::Fail, e),
        };
        let evidence = format!("first caller: {first}; other caller: {second}");
        let leaked = second.success() && second.identity == first.identity;
        let outcome = if leaked { Outcome::Fail } else { Outcome::Pass };
        Self::result(Check::Scope, outcome, evidence)
    }

    /// A key over 255 characters, and one with a control character: each refused with
    /// `400`.
    pub(super) async fn malformed(&self) -> CheckResult {
        let long = "k".repeat(256);
        let control = format!("{}\tkey", self.key("malformed"));
        let mut seen = Vec::new();
        for key in [&long, &control] {
            match self.send(Some(key)).await {
                Ok(answer) => seen.push(answer),
                Err(e) => return Self::result(Check::MalformedKey, Outcome::Fail, e),
            }
        }
        let evidence = format!("256 characters: {}; a tab inside: {}", seen[0], seen[1]);
        let outcome = if seen.iter().all(|s| s.status == 400) {
            Outcome::Pass
        } else {
            Outcome::Fail
        };
        Self::result(Check::MalformedKey, outcome, evidence)
    }
}

/// The body with one thing changed: a JSON object gains a field, anything else a
/// trailing space.
fn other_body(body: &Bytes) -> Bytes {
    if let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice(body) {
        object.insert("idempotency_check".into(), serde_json::Value::from(1));
        return Bytes::from(serde_json::Value::Object(object).to_string());
    }
    let mut other = body.to_vec();
    other.push(b' ');
    Bytes::from(other)
}

/// Runs every future at once, and gives their outputs in order.
async fn futures_join<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
