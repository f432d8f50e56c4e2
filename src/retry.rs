//! The loop that ties decision, delay and rate cap together for one operation.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version, header::RETRY_AFTER};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::classify::{Attempt, Decision, Outcome, default_classifier};
use crate::client::Inner;
use crate::{Error, GiveUpReason, IdempotencyKey, IdempotentResponse, RetryPolicy};

/// A complete response to one attempt: headers and the whole body.
struct Received {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    url: reqwest::Url,
    body: Bytes,
}

impl Received {
    fn into_response(self, key: IdempotencyKey, attempts: u32) -> IdempotentResponse {
        IdempotentResponse {
            status: self.status,
            version: self.version,
            headers: self.headers,
            url: self.url,
            body: self.body,
            key,
            attempts,
        }
    }
}

type AttemptResult = Result<Received, reqwest::Error>;

/// One attempt: an answer counts only once its last byte arrived, so a connection lost
/// mid-body is a lost response like any other. `request.timeout` bounds all of it.
async fn execute(http: &reqwest::Client, request: reqwest::Request) -> AttemptResult {
    let mut response = http.execute(request).await?;
    let status = response.status();
    let version = response.version();
    let headers = std::mem::take(response.headers_mut());
    let url = response.url().clone();
    let body = response.bytes().await?;
    Ok(Received {
        status,
        version,
        headers,
        url,
        body,
    })
}

/// Runs one operation. `template` already carries the key header and has a replayable
/// body; `policy` and `timeout` are validated.
pub(crate) async fn run(
    inner: &Inner,
    template: reqwest::Request,
    key: IdempotencyKey,
    policy: RetryPolicy,
    timeout: Duration,
) -> Result<IdempotentResponse, Error> {
    let deadline = Instant::now().checked_add(policy.deadline);
    let method = template.method().clone();
    let mut backoff = Backoff::new(&policy);
    let mut attempts: u32 = 0;
    let mut outcome_unknown = false;
    let mut last: Option<AttemptResult> = None;

    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let attempt_timeout = remaining.map_or(timeout, |r| r.min(timeout));
        if let (Some(previous), true) = (last.take(), attempt_timeout.is_zero()) {
            // The sleep was checked against the deadline, but timers may overshoot.
            let reason = GiveUpReason::DeadlineExceeded;
            warn!(attempts, %reason, outcome_unknown, "giving up");
            return Err(give_up(key, attempts, reason, outcome_unknown, previous));
        }
        let Some(mut request) = template.try_clone() else {
            // `send` checked that the body is replayable before calling us.
            return Err(Error::InvalidRequest {
                key,
                reason: "the body cannot be replayed".into(),
                source: None,
            });
        };
        *request.timeout_mut() = Some(attempt_timeout);
        let result = execute(&inner.http, request).await;
        attempts += 1;

        let attempt = Attempt {
            method: &method,
            key: &key,
            number: attempts,
            outcome: match &result {
                Ok(r) => Outcome::Response {
                    status: r.status,
                    headers: &r.headers,
                },
                Err(e) => Outcome::Error(e),
            },
        };
        let decision = match &inner.classifier {
            Some(classifier) => classifier.classify(&attempt),
            None => default_classifier(&attempt),
        };
        debug!(
            attempt = attempts,
            status = attempt.status().map(|s| s.as_u16()),
            error = attempt.error().map(tracing::field::display),
            ?decision,
            "attempt finished"
        );
        let executed = attempt.may_have_executed();
        let timed_out = attempt.is_timeout();

        outcome_unknown |= executed;
        if decision == Decision::Final {
            if let Ok(received) = result {
                inner.budget.deposit();
                return Ok(received.into_response(key, attempts));
            }
        }

        // Advance the schedule on every retry, even when Retry-After overrides it, so the
        // n-th retry always draws the n-th delay.
        let backoff_delay = backoff.next_delay();
        let delay = match result
            .as_ref()
            .ok()
            .and_then(|r| r.headers.get(RETRY_AFTER))
        {
            Some(value) => crate::retry_after::parse(value, SystemTime::now())
                .map_or(backoff_delay, |hint| hint.min(policy.max_retry_after)),
            None => backoff_delay,
        };
        let stop = if decision == Decision::Final {
            Some(GiveUpReason::NotRetryable)
        } else if attempts >= policy.max_attempts {
            Some(GiveUpReason::AttemptsExhausted)
        } else if deadline
            .is_some_and(|d| Instant::now().checked_add(delay).is_none_or(|end| end >= d))
        {
            Some(GiveUpReason::DeadlineExceeded)
        } else if !inner.budget.try_withdraw(timed_out) {
            Some(GiveUpReason::BudgetExhausted)
        } else {
            None
        };
        if let Some(reason) = stop {
            // Fields, not the error's Display: that names the key, which stays at debug.
            warn!(attempts, %reason, outcome_unknown, "giving up");
            return Err(give_up(key, attempts, reason, outcome_unknown, result));
        }

        if let Some(hook) = &inner.on_retry {
            hook(&attempt, delay);
        }
        info!(
            attempt = attempts,
            status = attempt.status().map(|s| s.as_u16()),
            error = attempt.error().map(tracing::field::display),
            delay_ms = delay.as_millis() as u64,
            "retrying"
        );
        last = Some(result);
        tokio::time::sleep(delay).await;
    }
}

fn give_up(
    key: IdempotencyKey,
    attempts: u32,
    reason: GiveUpReason,
    outcome_unknown: bool,
    last: AttemptResult,
) -> Error {
    let (last_response, source) = match last {
        Ok(received) => (
            Some(Box::new(received.into_response(key.clone(), attempts))),
            None,
        ),
        Err(e) => (None, Some(e)),
    };
    Error::Failed {
        key,
        attempts,
        reason,
        outcome_unknown,
        last_response,
        source,
    }
}
