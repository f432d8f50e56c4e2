//! The retry engine, one file per job, shared by every front end (the client's own
//! transport and the reqwest-middleware layer). It knows no front end: it reads
//! [`settings::RetrySettings`] and drives a [`transport::Transport`].
//!
//! - [`transport`]: the contract with a front end, and how an operation ended;
//! - [`settings`]: what the engine reads, and what one request overrides;
//! - [`engine`]: one operation's state and its attempt loop, which asks, in turn,
//!   [`admission`] (the origin's breaker and rate limiter), [`race`] (a hedged attempt),
//!   [`judge`] (one answer: the decision, what the origin is told) and [`schedule`]
//!   (the next attempt: backoff, `Retry-After`, deadline, budget, hook);
//! - [`policy`]: what the caller asks for (attempts, delays, deadline);
//! - [`backoff`]: the delay before each retry, from the policy;
//! - [`classify`]: the *decision*, whether an attempt's outcome is worth another;
//! - [`retry_after`]: the server's own say on the delay;
//! - [`budget`]: the *rate cap*, a token bucket per origin;
//! - [`breaker`]: the circuit breaker of an origin, which stops sends to a sick one;
//! - [`hedging`]: a second attempt with the same key beside a slow one;
//! - [`limiter`]: the adaptive rate limiter of an origin, which slows sends to a
//!   throttling one;
//! - [`origins`]: the per-origin state (budget, circuit, limiter, hedge bucket),
//!   bounded and shared by a client's clones.

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
