//! Per-origin state, shared by a client and its clones: the retry budget, circuit,
//! rate limiter and hedge bucket of each origin (scheme, host and port of the URL the
//! caller gave). Bounded, so that a client that meets millions of hosts does not grow
//! without end: past `max_origins`, an idle entry goes first (a full bucket, a closed
//! circuit or none, a limiter that is not throttling: forgetting it forgets nothing),
//! then the one whose budget has the most tokens (the least to remember), and an
//! origin whose circuit is not closed (a sick one, or one opened by hand) or whose
//! limiter is throttling only when every entry of its shard is such.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::breaker::{Circuit, CircuitBreaker, CircuitState};
use super::budget::{RetryBudget, TokenBucket};
use super::limiter::Limiter;
use crate::GiveUpReason;

/// Shards of the table: operations to different origins rarely share a lock, and none
/// is global.
const SHARDS: usize = 16;

/// Default bound on the origins remembered.
pub(crate) const DEFAULT_MAX_ORIGINS: usize = 10_000;

/// What the client remembers of one origin.
#[derive(Debug)]
pub(crate) struct OriginState {
    pub(crate) budget: TokenBucket,
    /// Hedges this origin may still take, and its hedge figures.
    pub(crate) hedges: super::hedging::HedgeBucket,
    /// The origin's circuit: made on first use when the client has a breaker, or by a
    /// manual open.
    circuit: OnceLock<Circuit>,
    /// The origin's rate limiter: made on first use when the client has one.
    limiter: OnceLock<Limiter>,
    /// The origin, for the circuit's events and `circuits()`.
    name: Box<str>,
    /// Operations stopped before an attempt, by reason.
    refused_circuit_open: AtomicU64,
    refused_rate_limited: AtomicU64,
    refused_budget_exhausted: AtomicU64,
}

impl OriginState {
    /// The circuit, made now (with `breaker`) if there is none yet.
    pub(crate) fn circuit(&self, breaker: Option<&CircuitBreaker>) -> &Circuit {
        self.circuit
            .get_or_init(|| Circuit::new(breaker.cloned(), &self.name, Instant::now()))
    }

    /// Counts an operation this origin's state stopped.
    pub(crate) fn count_refusal(&self, reason: GiveUpReason) {
        let counter = match reason {
            GiveUpReason::CircuitOpen => &self.refused_circuit_open,
            GiveUpReason::RateLimited => &self.refused_rate_limited,
            GiveUpReason::BudgetExhausted => &self.refused_budget_exhausted,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The figures of `origin_stats`.
    fn stats(&self, now: Instant) -> OriginStats {
        let (hedges_sent, hedges_won) = self.hedges.figures();
        OriginStats {
            retry_tokens: self.budget.available(),
            circuit: self
                .existing_circuit()
                .map_or(CircuitState::Closed, |c| c.state(now)),
            rate_limit: self.limiter.get().and_then(Limiter::rate),
            refused_circuit_open: self.refused_circuit_open.load(Ordering::Relaxed),
            refused_rate_limited: self.refused_rate_limited.load(Ordering::Relaxed),
            refused_budget_exhausted: self.refused_budget_exhausted.load(Ordering::Relaxed),
            hedges_sent,
            hedges_won,
        }
    }

    /// The rate limiter, made now if there is none yet.
    pub(crate) fn limiter(&self) -> &Limiter {
        self.limiter.get_or_init(|| Limiter::new(Instant::now()))
    }

    /// The circuit, if one was made.
    pub(crate) fn existing_circuit(&self) -> Option<&Circuit> {
        self.circuit.get()
    }

    /// How much forgetting this origin would lose, the least first: 0, nothing (a full
    /// bucket, a closed circuit or none, a limiter that is not throttling); 1, a budget
    /// being spent; 2, what must hold while it lasts (a circuit that is not closed, by
    /// a breaker or by hand; a limiter's learned rate).
    fn keep_rank(&self, now: Instant) -> u8 {
        let circuit_held = self
            .circuit
            .get()
            .is_some_and(|c| c.state(now) != CircuitState::Closed);
        let throttling = self.limiter.get().and_then(Limiter::rate).is_some();
        if circuit_held || throttling {
            2
        } else {
            u8::from(self.budget.is_below_full())
        }
    }
}

/// What a client holds back of one origin now, for metrics and health pages
/// ([`IdempotentClient::origin_stats`](crate::IdempotentClient::origin_stats)).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OriginStats {
    /// Tokens in the origin's retry budget.
    pub retry_tokens: u32,
    /// The state of its circuit ([`CircuitState::Closed`] without one).
    pub circuit: CircuitState,
    /// The adaptive rate limiter's rate, attempts per second; `None` while it is off
    /// (no limiter, or the origin never throttled).
    pub rate_limit: Option<f64>,
    /// Operations stopped before an attempt because the circuit was open.
    pub refused_circuit_open: u64,
    /// Operations stopped because the rate limiter had no turn within `max_wait`.
    pub refused_rate_limited: u64,
    /// Operations stopped because the retry budget could not pay for a retry.
    pub refused_budget_exhausted: u64,
    /// Hedges sent ([`Hedging`](crate::Hedging)).
    pub hedges_sent: u64,
    /// Hedges whose answer won over the attempt they hedged.
    pub hedges_won: u64,
}

type Shard = RwLock<HashMap<Box<str>, Arc<OriginState>>>;

/// Every origin's state, behind sharded locks held only for a lookup.
#[derive(Debug)]
pub(crate) struct Origins {
    shards: Box<[Shard]>,
    /// Most entries in one shard: `max_origins` spread over the shards, rounded up.
    per_shard: usize,
    budget: RetryBudget,
    /// How many buckets are below capacity: none while nothing has failed.
    below_full: Arc<AtomicUsize>,
    /// Set once any circuit was made: until then, a client without a breaker need not
    /// look its origins up for circuits.
    any_circuit: std::sync::atomic::AtomicBool,
}

impl Origins {
    pub(crate) fn new(budget: RetryBudget, max_origins: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            per_shard: max_origins.div_ceil(SHARDS).max(1),
            budget,
            below_full: Arc::default(),
            any_circuit: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether any origin may have a circuit.
    pub(crate) fn any_circuit(&self) -> bool {
        self.any_circuit.load(Ordering::Acquire)
    }

    /// Notes that circuits exist from now on.
    fn note_circuit(&self) {
        self.any_circuit.store(true, Ordering::Release);
    }

    /// The state of `url`'s origin if the client has met it, without making one.
    fn peek(&self, url: &reqwest::Url) -> Option<Arc<OriginState>> {
        let key = origin(url);
        read(&self.shards[shard_of(&key)]).get(&*key).cloned()
    }

    /// The state of `url`'s origin's circuit; reading it makes nothing.
    pub(crate) fn circuit_state(&self, url: &reqwest::Url) -> CircuitState {
        self.peek(url)
            .and_then(|o| o.existing_circuit().map(|c| c.state(Instant::now())))
            .unwrap_or(CircuitState::Closed)
    }

    /// How long until `url`'s origin's open circuit lets a probe through, when it is
    /// open for a known time (a breaker's break; a circuit opened by hand has none).
    pub(crate) fn reopens_in(&self, url: &reqwest::Url) -> Option<Duration> {
        self.peek(url)?
            .existing_circuit()?
            .reopens_in(Instant::now())
    }

    /// Opens `url`'s origin's circuit until [`close_circuit`](Self::close_circuit).
    pub(crate) fn open_circuit(&self, url: &reqwest::Url, breaker: Option<&CircuitBreaker>) {
        self.note_circuit();
        self.get(url).circuit(breaker).open_by_hand();
    }

    /// Closes `url`'s origin's circuit, if it has one.
    pub(crate) fn close_circuit(&self, url: &reqwest::Url) {
        if let Some(circuit) = self
            .peek(url)
            .as_deref()
            .and_then(OriginState::existing_circuit)
        {
            circuit.close();
        }
    }

    /// The figures of `url`'s origin; an origin never met reads as new (and is not made).
    pub(crate) fn stats(&self, url: &reqwest::Url) -> OriginStats {
        match self.peek(url) {
            Some(state) => state.stats(Instant::now()),
            None => OriginStats {
                retry_tokens: self.budget.capacity,
                circuit: CircuitState::Closed,
                rate_limit: None,
                refused_circuit_open: 0,
                refused_rate_limited: 0,
                refused_budget_exhausted: 0,
                hedges_sent: 0,
                hedges_won: 0,
            },
        }
    }

    /// Every origin that has a circuit, with its state, sorted by origin.
    pub(crate) fn circuits(&self) -> Vec<(String, CircuitState)> {
        let now = Instant::now();
        let mut all = Vec::new();
        for shard in &*self.shards {
            for state in read(shard).values() {
                if let Some(circuit) = state.existing_circuit() {
                    all.push((state.name.to_string(), circuit.state(now)));
                }
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Whether some origin's bucket is below capacity. While none is (nothing has
    /// failed), a refund has nowhere to go and needs no lookup.
    pub(crate) fn any_below_full(&self) -> bool {
        self.below_full.load(Ordering::Acquire) > 0
    }

    /// The budget's settings.
    pub(crate) fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// The state of `url`'s origin, made (with a full bucket) on first use.
    pub(crate) fn get(&self, url: &reqwest::Url) -> Arc<OriginState> {
        let key = origin(url);
        let shard = &self.shards[shard_of(&key)];
        if let Some(state) = read(shard).get(&*key) {
            return state.clone();
        }
        let mut map = write(shard);
        if let Some(state) = map.get(&*key) {
            return state.clone();
        }
        if map.len() >= self.per_shard {
            // The one whose loss forgets least (see the module's docs); among budgets
            // being spent, the one with the most tokens.
            let now = Instant::now();
            let idle = map
                .iter()
                .min_by_key(|(_, state)| {
                    let tokens = state.budget.available();
                    (state.keep_rank(now), u32::MAX - tokens)
                })
                .map(|(key, _)| key.clone());
            if let Some(idle) = idle {
                if let Some(forgotten) = map.remove(&idle) {
                    forgotten.budget.detach();
                }
            }
        }
        let state = Arc::new(OriginState {
            budget: TokenBucket::new(self.budget.capacity, self.below_full.clone()),
            circuit: OnceLock::new(),
            limiter: OnceLock::new(),
            hedges: super::hedging::HedgeBucket::new(),
            refused_circuit_open: AtomicU64::new(0),
            refused_rate_limited: AtomicU64::new(0),
            refused_budget_exhausted: AtomicU64::new(0),
            name: key.as_ref().into(),
        });
        map.insert(key.into(), state.clone());
        state
    }

    /// Origins remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }
}

/// `scheme://host[:port]`, a slice of the URL itself when it has no user info (the
/// default port is already left out by the URL's own normal form).
fn origin(url: &reqwest::Url) -> std::borrow::Cow<'_, str> {
    if url.username().is_empty() && url.password().is_none() {
        std::borrow::Cow::Borrowed(&url[..url::Position::AfterPort])
    } else {
        std::borrow::Cow::Owned(url.origin().ascii_serialization())
    }
}

/// The shard of an origin: FNV-1a over its text, which only has to spread origins over
/// the shards (the maps inside keep std's flood-resistant hasher).
fn shard_of(key: &str) -> usize {
    let hash = crate::rng::fnv1a(key.as_bytes());
    // The remainder of a division by SHARDS always fits in a usize.
    (hash % SHARDS as u64) as usize
}

/// Locks for reading, recovering from poison: every critical section here leaves the
/// map consistent, so a poison flag carries no information.
fn read(shard: &Shard) -> RwLockReadGuard<'_, HashMap<Box<str>, Arc<OriginState>>> {
    shard
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(shard: &Shard) -> RwLockWriteGuard<'_, HashMap<Box<str>, Arc<OriginState>>> {
    shard
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> reqwest::Url {
        text.parse().unwrap()
    }

    #[test]
    fn one_state_per_origin() {
        let origins = Origins::new(RetryBudget::new(), 100);
        let a = origins.get(&url("https://api.example.com/v1/charges?x=1"));
        let same = origins.get(&url("https://api.example.com:443/v1/refunds"));
        let other_port = origins.get(&url("https://api.example.com:8443/v1/charges"));
        let other_host = origins.get(&url("https://files.example.com/v1/charges"));
        let with_user = origins.get(&url("https://me:pw@api.example.com/v1"));
        assert!(Arc::ptr_eq(&a, &same));
        assert!(
            Arc::ptr_eq(&a, &with_user),
            "user info is not part of the origin"
        );
        assert!(!Arc::ptr_eq(&a, &other_port));
        assert!(!Arc::ptr_eq(&a, &other_host));
        assert_eq!(origins.len(), 3);
    }

    #[test]
    fn bounded_and_the_idle_go_first() {
        let origins = Origins::new(RetryBudget::new().capacity(10), 4 * SHARDS);
        // A sick origin: its bucket drained.
        let sick = url("http://sick.example/");
        assert!(origins.get(&sick).budget.try_withdraw(10));
        for n in 0..1_000 {
            origins.get(&url(&format!("http://host-{n}.example/")));
        }
        assert!(origins.len() <= 4 * SHARDS, "{}", origins.len());
        // A thousand idle origins came and went; the drained bucket is still drained.
        assert!(!origins.get(&sick).budget.try_withdraw(1));
    }

    #[test]
    fn an_open_circuit_and_a_throttling_limiter_outlast_busy_budgets() {
        let origins = Origins::new(RetryBudget::new().capacity(10), 4 * SHARDS);
        let opened = url("http://opened.example/");
        origins.open_circuit(&opened, None);
        let throttled = url("http://throttled.example/");
        let now = Instant::now();
        origins.get(&throttled).limiter().update(true, now);
        assert!(origins.get(&throttled).limiter().rate().is_some());
        // Origins whose budgets are being spent (full buckets would go first anyway).
        for n in 0..1_000 {
            let busy = origins.get(&url(&format!("http://busy-{n}.example/")));
            assert!(busy.budget.try_withdraw(1));
        }
        assert!(origins.len() <= 4 * SHARDS, "{}", origins.len());
        assert_eq!(origins.circuit_state(&opened), CircuitState::Open);
        let kept = origins
            .peek(&throttled)
            .expect("the throttling origin is kept");
        assert!(kept.limiter().rate().is_some(), "its learned rate too");
    }
}
