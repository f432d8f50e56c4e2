//! The lease around the engine's transport: before every attempt, the attempt is
//! counted and the lease renewed in one durable write, and the attempt goes only if, by
//! this worker's own clock from before that write, the lease covers it and a margin. An
//! operation grown too old to send stops. A hedge starts only under the same cover.

use std::time::{Duration, Instant};

use tracing::warn;

use super::settings::LEASE_MARGIN;
use crate::GiveUpReason;
use crate::journal::{Journal, JournalError, Lease};
use crate::retry::classify::Outcome;
use crate::retry::transport::{Detached, Transport};
use crate::telemetry::TARGET;

/// A transport whose attempts go out only under the operation's lease.
pub(super) struct Leased<'a, T> {
    inner: T,
    journal: &'a dyn Journal,
    lease: &'a Lease,
    lease_duration: Duration,
    max_age: Duration,
    age_at_start: Duration,
    started: Instant,
    /// When the last successful renewal was asked for.
    renewed: Option<Instant>,
    /// Attempts the journal counted as they started.
    pub(super) counted: u32,
}

impl<'a, T> Leased<'a, T> {
    /// `inner` under `lease`, for an operation `age` old now.
    pub(super) fn new(inner: T, journal: &'a dyn Journal, lease: &'a Lease, age: Duration) -> Self {
        Self {
            inner,
            journal,
            lease,
            lease_duration: journal.lease_duration(),
            max_age: journal.max_resume_age(),
            age_at_start: age,
            started: Instant::now(),
            renewed: None,
            counted: 0,
        }
    }

    /// Whether an attempt with this timeout, starting now, ends within the operation's
    /// resumable age.
    fn young_enough(&self, timeout: Duration) -> bool {
        self.age_at_start
            .saturating_add(self.started.elapsed())
            .saturating_add(timeout)
            <= self.max_age
    }

    /// Whether an attempt with this timeout, starting now, ends within the lease (and a
    /// margin to record its answer) and within the operation's resumable age.
    fn covers(&self, timeout: Duration) -> bool {
        let needed = timeout.saturating_add(LEASE_MARGIN);
        self.young_enough(timeout)
            && self
                .renewed
                .is_some_and(|at| at.elapsed().saturating_add(needed) <= self.lease_duration)
    }

    /// Counts the attempt about to start and renews the lease, in one durable write.
    async fn count_and_renew(&mut self) -> Result<(), GiveUpReason> {
        let asked = Instant::now();
        match self
            .journal
            .start_attempt(self.lease, self.lease_duration)
            .await
        {
            Ok(()) => {
                self.renewed = Some(asked);
                self.counted += 1;
                Ok(())
            }
            Err(JournalError::LeaseLost { .. }) => {
                warn!(target: TARGET, operation_id = %self.lease.id, "lease lost to another worker");
                Err(GiveUpReason::LeaseLost)
            }
            Err(e) => {
                warn!(target: TARGET, operation_id = %self.lease.id, error = %e, "could not count the attempt and renew the lease");
                Err(GiveUpReason::JournalFailed)
            }
        }
    }
}

impl<T: Transport + Send> Transport for Leased<'_, T> {
    type Answer = T::Answer;

    fn send(&mut self, timeout: Duration) -> impl Future<Output = Self::Answer> + Send {
        self.inner.send(timeout)
    }

    async fn before_attempt(&mut self, made: u32, timeout: Duration) -> Result<(), GiveUpReason> {
        if !self.young_enough(timeout) {
            return Err(GiveUpReason::TooOld);
        }
        self.count_and_renew().await?;
        if !self.covers(timeout) {
            warn!(target: TARGET, operation_id = %self.lease.id, "the lease no longer covers the attempt: the journal was too slow");
            return Err(GiveUpReason::JournalFailed);
        }
        self.inner.before_attempt(made, timeout).await
    }

    fn may_hedge(&self, timeout: Duration) -> bool {
        self.covers(timeout) && self.inner.may_hedge(timeout)
    }

    fn detached(&self, timeout: Duration, hedge: bool) -> Option<Detached<Self::Answer>> {
        self.inner.detached(timeout, hedge)
    }

    fn outcome(answer: &Self::Answer) -> Option<Outcome<'_>> {
        T::outcome(answer)
    }
}
