//! The retry engine, one file per job, shared by every front end (the client's own
//! transport and the reqwest-middleware layer):
//!
//! - [`policy`]: what the caller asks for (attempts, delays, deadline);
//! - [`backoff`]: the delay before each retry, from the policy;
//! - [`classify`]: the *decision*, whether an attempt's outcome is worth another;
//! - [`retry_after`]: the server's own say on the delay;
//! - [`budget`]: the *rate cap*, a token bucket per origin;
//! - [`breaker`]: the circuit breaker of an origin, which stops sends to a sick one;
//! - [`hedging`]: a second attempt with the same key beside a slow one;
//! - [`limiter`]: the adaptive rate limiter of an origin, which slows sends to a
//!   throttling one;
//! - [`origins`]: the per-origin state (budget and circuit), bounded and shared by a
//!   client's clones;
//! - [`engine`]: one operation's bookkeeping, which puts the four together, decides
//!   after each attempt, reports every decision, and runs the attempt loop for any
//!   front end that can send one attempt.

pub(crate) mod admission;
pub(crate) mod backoff;
pub(crate) mod breaker;
pub(crate) mod budget;
pub(crate) mod classify;
pub(crate) mod engine;
pub(crate) mod hedging;
pub(crate) mod judge;
pub(crate) mod limiter;
pub(crate) mod origins;
pub(crate) mod policy;
pub(crate) mod race;
pub(crate) mod retry_after;
pub(crate) mod schedule;
pub(crate) mod settings;
pub(crate) mod transport;
