//! Driving a taken-up operation: its attempts through the client's usual engine, each
//! counted in the journal and covered by the lease before it leaves.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tracing::{info, warn};

use super::settle::settle;
use super::take_up::Taken;
use super::{JournalSettings, LEASE_MARGIN, recorded_key};
use crate::journal::{Journal, JournalError, Lease, RecordedRequest, Release};
use crate::telemetry::TARGET;
use crate::transport::{Guard, Operation, Template};
use crate::{Error, GiveUpReason, IdempotentResponse};

/// Drives a taken-up operation's attempts under its lease, then settles its record.
pub(super) async fn drive(
    operation: Operation,
    id: &str,
    taken: Taken,
    js: &JournalSettings,
) -> Result<IdempotentResponse, Error> {
    let journal = &*js.journal;
    let Taken {
        lease,
        age,
        request,
        resumed,
    } = taken;
    // From here this worker holds the lease: every way out lets it go or completes.
    let key = match recorded_key(&request) {
        Ok(key) => key,
        Err(source) => {
            let release = journal.release(&lease, &Release::default()).await;
            if let Err(e) = release {
                warn!(target: TARGET, operation_id = %id, error = %e, "could not release the operation's lease");
            }
            return Err(Error::Journal {
                operation_id: id.to_owned(),
                key: None,
                outcome_unknown: true,
                source,
            });
        }
    };
    let max_age = journal.max_resume_age();
    if age.saturating_add(operation.timeout) > max_age {
        let reason = "older than the journal's max_resume_age";
        let release = Release {
            attention: Some(reason.into()),
            ..Release::default()
        };
        if let Err(e) = journal.release(&lease, &release).await {
            warn!(target: TARGET, operation_id = %id, error = %e, "could not mark the operation as needing attention");
        }
        warn!(target: TARGET, operation_id = %id, age_s = age.as_secs(), "operation too old to resume");
        return Err(Error::NeedsAttention {
            operation_id: id.to_owned(),
            key,
            age,
            reason: reason.into(),
            last_response: None,
        });
    }
    // A new operation sends the request at hand, which is what was recorded; a resumed
    // one is rebuilt from its record's bytes, with the values of its secrets.
    let was_resumed = resumed.is_some();
    let template = match resumed {
        Some(secrets) => {
            info!(target: TARGET, operation_id = %id, age_s = age.as_secs(), "resuming a recorded operation");
            match template_of(&request, &secrets) {
                Ok(template) => template,
                Err(source) => {
                    if let Err(e) = journal.release(&lease, &Release::default()).await {
                        warn!(target: TARGET, operation_id = %id, error = %e, "could not release the operation's lease");
                    }
                    return Err(Error::Journal {
                        operation_id: id.to_owned(),
                        key: Some(key),
                        outcome_unknown: true,
                        source,
                    });
                }
            }
        }
        None => operation.template,
    };
    let drive = Operation {
        client: operation.client,
        template,
        key,
        // A recorded key may have been sent by an earlier run.
        fresh_key: operation.fresh_key && !was_resumed,
        overrides: operation.overrides,
        timeout: operation.timeout,
    };
    let counted = AtomicU32::new(0);
    let guard = LeaseGuard {
        journal,
        lease: &lease,
        lease_duration: journal.lease_duration(),
        max_age,
        age_at_start: age,
        started: Instant::now(),
        renewed: None,
        counted: &counted,
    };
    let url = drive.template.url().clone();
    let client = drive.client.clone();
    let result = drive.run_guarded(guard).await;
    let counted = counted.into_inner();
    // An open circuit's break is a wait for every worker, as a server's Retry-After is.
    let reopens = match &result {
        Err(e) if e.is_circuit_open() => client.inner.settings.retry.origins.reopens_in(&url),
        _ => None,
    };
    let ending = Ending {
        id,
        lease: &lease,
        age,
        resumed: was_resumed,
        counted,
        reopens,
    };
    settle(result, &ending, js).await
}

/// What `settle` needs to know of a driven operation besides its result.
pub(super) struct Ending<'a> {
    pub(super) id: &'a str,
    pub(super) lease: &'a Lease,
    /// Its age when taken up.
    pub(super) age: Duration,
    /// Whether its key was recorded before this call.
    pub(super) resumed: bool,
    /// Attempts the journal counted as they started.
    pub(super) counted: u32,
    /// When an open circuit refused it: how long until the circuit lets a probe by.
    pub(super) reopens: Option<Duration>,
}

/// Keeps the lease while attempts go out: before every attempt, counts it and renews
/// the lease in one durable write, then sends only if, by this worker's own clock from
/// before that write, the lease covers the attempt and a margin; stops an operation
/// grown too old to send. A hedge starts only under the same cover.
struct LeaseGuard<'a> {
    journal: &'a dyn Journal,
    lease: &'a Lease,
    lease_duration: Duration,
    max_age: Duration,
    age_at_start: Duration,
    started: Instant,
    /// When the last successful renewal was asked for.
    renewed: Option<Instant>,
    /// Attempts counted by the journal.
    counted: &'a AtomicU32,
}

impl LeaseGuard<'_> {
    /// Whether an attempt with this timeout, starting now, ends within the lease (and a
    /// margin to record its answer) and within the operation's resumable age.
    fn covers(&self, timeout: Duration) -> bool {
        let needed = timeout.saturating_add(LEASE_MARGIN);
        let young = self
            .age_at_start
            .saturating_add(self.started.elapsed())
            .saturating_add(timeout)
            <= self.max_age;
        young
            && self
                .renewed
                .is_some_and(|at| at.elapsed().saturating_add(needed) <= self.lease_duration)
    }
}

impl Guard for LeaseGuard<'_> {
    async fn before_attempt(&mut self, _made: u32, timeout: Duration) -> Result<(), GiveUpReason> {
        if self
            .age_at_start
            .saturating_add(self.started.elapsed())
            .saturating_add(timeout)
            > self.max_age
        {
            return Err(GiveUpReason::TooOld);
        }
        let asked = Instant::now();
        match self
            .journal
            .start_attempt(self.lease, self.lease_duration)
            .await
        {
            Ok(()) => {
                self.renewed = Some(asked);
                self.counted.fetch_add(1, Ordering::Relaxed);
            }
            Err(JournalError::LeaseLost { .. }) => {
                warn!(target: TARGET, operation_id = %self.lease.id, "lease lost to another worker");
                return Err(GiveUpReason::LeaseLost);
            }
            Err(e) => {
                warn!(target: TARGET, operation_id = %self.lease.id, error = %e, "could not count the attempt and renew the lease");
                return Err(GiveUpReason::JournalFailed);
            }
        }
        if !self.covers(timeout) {
            warn!(target: TARGET, operation_id = %self.lease.id, "the lease no longer covers the attempt: the journal was too slow");
            return Err(GiveUpReason::JournalFailed);
        }
        Ok(())
    }

    fn may_hedge(&self, timeout: Duration) -> bool {
        self.covers(timeout)
    }
}

/// What every re-send of `request` sends: exactly its recorded bytes, with the values
/// of its secret headers.
pub(super) fn template_of(
    request: &RecordedRequest,
    secrets: &HeaderMap,
) -> Result<Template, JournalError> {
    let method = Method::from_bytes(request.method.as_bytes())
        .map_err(|_| JournalError::corrupt(format!("method {:?}", request.method)))?;
    let url = reqwest::Url::parse(&request.url)
        .map_err(|e| JournalError::corrupt(format!("URL {:?}: {e}", request.url)))?;
    let mut built = reqwest::Request::new(method, url);
    let headers = built.headers_mut();
    let header = |name: &str, value: &[u8]| -> Result<(HeaderName, HeaderValue), JournalError> {
        Ok((
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| JournalError::corrupt(format!("header name {name:?}")))?,
            HeaderValue::from_bytes(value)
                .map_err(|_| JournalError::corrupt(format!("a value of header {name}")))?,
        ))
    };
    for (name, value) in &request.headers {
        let (name, value) = header(name, value)?;
        headers.append(name, value);
    }
    let (name, value) = header(&request.key_header, &request.key_value)?;
    headers.insert(name, value);
    for (name, value) in secrets {
        headers.append(name.clone(), value.clone());
    }
    let body = (!request.body.is_empty()).then(|| request.body.clone());
    Ok(Template::new(built, body))
}
