//! The contract between the engine and a front end: the front end sends one attempt
//! and says what its answer is ([`Transport`]); the engine decides everything else and
//! says how the operation ended ([`Ending`]).

use std::time::Duration;

use super::classify::Outcome;
use crate::GiveUpReason;

/// An attempt that borrows nothing, so that others can run beside it.
pub(crate) type Detached<A> = std::pin::Pin<Box<dyn Future<Output = A> + Send + 'static>>;

/// A front end's way of sending one attempt of an operation.
pub(crate) trait Transport {
    /// What one attempt gives back: an answer, or why there is none.
    type Answer;

    /// Sends one attempt, bounded by `timeout`.
    fn send(&mut self, timeout: Duration) -> impl Future<Output = Self::Answer> + Send;

    /// May the attempt numbered `made + 1` be sent, with this timeout? A wrapper around
    /// another transport answers here (the journal's lease, `journaled/lease.rs`,
    /// renews the lease and checks the operation's age); the reason ends the operation
    /// before the attempt. A plain front end always may.
    fn before_attempt(
        &mut self,
        made: u32,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), GiveUpReason>> + Send {
        let _ = (made, timeout);
        std::future::ready(Ok(()))
    }

    /// May a hedge start now, with this timeout? Asked without waiting, so a transport
    /// answers from what it knows (the journal's lease: whether it covers the hedge and
    /// a margin, by the worker's own clock). A plain front end always may.
    fn may_hedge(&self, timeout: Duration) -> bool {
        let _ = timeout;
        true
    }

    /// One attempt as a future that borrows nothing (`hedge`: the attempt is a hedge,
    /// which may go through its own connection pool), so that a hedge can race it;
    /// `None` for a front end that does not hedge.
    fn detached(&self, timeout: Duration, hedge: bool) -> Option<Detached<Self::Answer>> {
        let _ = (timeout, hedge);
        None
    }

    /// The answer as the engine judges it; `None` for an answer that is not the
    /// engine's to judge (another middleware layer's own error): it ends the
    /// operation, which may have executed, since nothing says how far the attempt got.
    fn outcome(answer: &Self::Answer) -> Option<Outcome<'_>>;
}

/// How an operation ended, with its last answer.
pub(crate) enum End<A> {
    /// A final answer, for the caller.
    Done(A),
    /// No further attempt, for this reason; the last answer, if an attempt was made.
    GaveUp(GiveUpReason, Option<A>),
    /// An answer that was not the engine's to judge, for the front end to pass on.
    Passed(A),
}

/// An operation's end and what the caller needs to know about it.
pub(crate) struct Ending<A> {
    pub(crate) end: End<A>,
    /// Attempts made, the first one included.
    pub(crate) attempts: u32,
    /// Whether some attempt may have executed on the server.
    pub(crate) outcome_unknown: bool,
    /// Hedges started, counted in `attempts` too.
    pub(crate) hedges: u32,
}
