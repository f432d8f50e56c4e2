//! The idempotency store: what the mock server remembers about each key, decided under
//! one lock so that two requests with one key can never both execute.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

/// A key within its caller's scope (the `Authorization` header value): one caller can
/// never reach another's stored response, even with a guessed key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ScopedKey {
    pub(crate) scope: Option<Bytes>,
    pub(crate) key: Box<str>,
}

/// A response kept for replay. Its body is always JSON: the content type is implied,
/// which saves a header map per stored key.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) status: StatusCode,
    /// A route's headers, as rendered; empty for the built-in answer, whose JSON
    /// content type is implied (which saves a header map per stored key).
    pub(crate) headers: Box<[(HeaderName, HeaderValue)]>,
    pub(crate) body: Bytes,
}

#[derive(Debug)]
enum State {
    InFlight,
    Done(Arc<Stored>),
}

#[derive(Debug)]
struct Entry {
    fingerprint: u64,
    /// Position in `order`, to tell a live queue entry from one left behind by removal.
    seq: u64,
    created: Instant,
    state: State,
    /// Times this key executed, carried over when an expired key executes again.
    executions: u64,
}

/// What to do with a request that carries a key.
#[derive(Debug)]
pub(crate) enum Begin {
    /// First sight of the key (or it expired): it is now in flight; execute, then
    /// [`Store::complete`] with this key.
    Execute(Arc<ScopedKey>),
    /// Completed earlier with the same fingerprint: answer this again.
    Replay(Arc<Stored>),
    /// Another request with this key is executing.
    InFlight,
    /// The key was used for a different request (method, path or body).
    Mismatch,
    /// Every stored key is in flight and the store is at its bound.
    Full,
}

#[derive(Debug)]
pub(crate) struct Store {
    map: HashMap<Arc<ScopedKey>, Entry>,
    /// Keys in creation order. With one TTL for all, the front is both the oldest and
    /// the first to expire, so eviction is a pop from the front.
    order: VecDeque<(Arc<ScopedKey>, u64)>,
    next_seq: u64,
    ttl: Duration,
    capacity: usize,
    /// Live entries per key text (by its hash), all scopes together: a count above one
    /// is the rare case where one key text lives in two scopes, the only case in which
    /// executions are summed across scopes.
    texts: HashMap<u64, u32>,
}

/// The hash of a key's text, for [`Store::texts`].
fn text_hash(key: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key)
}

impl Store {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            ttl,
            capacity: capacity.max(1),
            texts: HashMap::new(),
        }
    }

    /// Removes `key`'s entry, keeping the count of its text.
    fn remove(&mut self, key: &ScopedKey) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        let hash = text_hash(&key.key);
        if let Some(count) = self.texts.get_mut(&hash) {
            *count -= 1;
            if *count == 0 {
                self.texts.remove(&hash);
            }
        }
        Some(entry)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Forgets every completed key. Keys in flight stay until their operation
    /// completes: forgetting one would let its retry execute a second time, unseen.
    pub(crate) fn clear(&mut self) {
        self.map
            .retain(|_, entry| matches!(entry.state, State::InFlight));
        let map = &self.map;
        self.order
            .retain(|(key, seq)| map.get(&**key).is_some_and(|e| e.seq == *seq));
        self.texts.clear();
        for key in self.map.keys() {
            *self.texts.entry(text_hash(&key.key)).or_default() += 1;
        }
    }

    fn expired(&self, entry: &Entry, now: Instant) -> bool {
        matches!(entry.state, State::Done(_))
            && now.saturating_duration_since(entry.created) >= self.ttl
    }

    /// Decides, atomically for `key`, what a request with this fingerprint gets.
    pub(crate) fn begin(&mut self, key: ScopedKey, fingerprint: u64, now: Instant) -> Begin {
        let mut executions = 0;
        if let Some(entry) = self.map.get(&key) {
            if !self.expired(entry, now) {
                if entry.fingerprint != fingerprint {
                    return Begin::Mismatch;
                }
                return match &entry.state {
                    State::InFlight => Begin::InFlight,
                    State::Done(stored) => Begin::Replay(stored.clone()),
                };
            }
            executions = self.remove(&key).map_or(0, |e| e.executions);
        }
        if !self.make_room() {
            return Begin::Full;
        }
        let key = Arc::new(key);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((key.clone(), seq));
        *self.texts.entry(text_hash(&key.key)).or_default() += 1;
        self.map.insert(
            key.clone(),
            Entry {
                fingerprint,
                seq,
                created: now,
                state: State::InFlight,
                executions,
            },
        );
        Begin::Execute(key)
    }

    /// Stores the result of an execution that [`Store::begin`] allowed; returns how many
    /// times the key has now executed.
    pub(crate) fn complete(&mut self, key: &ScopedKey, stored: Arc<Stored>) -> u64 {
        match self.map.get_mut(key) {
            Some(entry) => {
                entry.state = State::Done(stored);
                entry.executions += 1;
                entry.executions
            }
            None => 1,
        }
    }

    /// Lets go of a key that [`Store::begin`] put in flight but that will not execute
    /// (its request matched no route, or named a field it lacks): nothing is stored,
    /// and the key may be used again.
    pub(crate) fn abandon(&mut self, key: &ScopedKey) {
        if self
            .map
            .get(key)
            .is_some_and(|e| matches!(e.state, State::InFlight))
        {
            self.remove(key);
        }
    }

    /// Every scope in which a key with `key`'s text executed, with its executions, when
    /// it lives in more than one scope; `None` in the common case of one scope (a map
    /// lookup, no scan).
    pub(crate) fn across_scopes(&self, key: &ScopedKey) -> Option<Vec<(Option<Bytes>, u64)>> {
        if self.texts.get(&text_hash(&key.key)).is_none_or(|n| *n < 2) {
            return None;
        }
        let scopes: Vec<(Option<Bytes>, u64)> = self
            .map
            .iter()
            .filter(|(k, e)| k.key == key.key && e.executions > 0)
            .map(|(k, e)| (k.scope.clone(), e.executions))
            .collect();
        (scopes.len() > 1).then_some(scopes)
    }

    /// Executions of every stored key with this text, all scopes together.
    pub(crate) fn executions_for(&self, key: &str) -> u64 {
        self.map
            .iter()
            .filter(|(k, _)| &*k.key == key)
            .map(|(_, e)| e.executions)
            .sum()
    }

    /// Evicts until one more key fits: the front of `order` first, which is the oldest
    /// and so the most expired. In-flight keys are never evicted: forgetting one would
    /// let its retry execute a second time. `false` if only in-flight keys remain.
    fn make_room(&mut self) -> bool {
        // Entries whose key was removed and stored again are stale: drop them for free.
        while let Some((key, seq)) = self.order.front() {
            if self.map.get(&**key).is_some_and(|e| e.seq == *seq) {
                break;
            }
            self.order.pop_front();
        }
        let mut rotations = self.order.len();
        while self.map.len() >= self.capacity {
            let Some((key, seq)) = self.order.pop_front() else {
                return false;
            };
            match self.map.get(&key) {
                Some(entry) if entry.seq == seq && matches!(entry.state, State::InFlight) => {
                    if rotations == 0 {
                        self.order.push_front((key, seq));
                        return false;
                    }
                    rotations -= 1;
                    self.order.push_back((key, seq));
                }
                Some(entry) if entry.seq == seq => {
                    self.remove(&key);
                }
                _ => {}
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scope: Option<&'static str>, k: &str) -> ScopedKey {
        ScopedKey {
            scope: scope.map(|s| Bytes::from_static(s.as_bytes())),
            key: k.into(),
        }
    }

    fn stored(body: &'static str) -> Arc<Stored> {
        Arc::new(Stored {
            headers: Box::default(),
            status: StatusCode::CREATED,
            body: Bytes::from_static(body.as_bytes()),
        })
    }

    #[test]
    fn first_executes_then_in_flight_then_replays() {
        let mut store = Store::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let k = key(None, "a");
        assert!(matches!(store.begin(k.clone(), 1, now), Begin::Execute(_)));
        assert!(matches!(store.begin(k.clone(), 1, now), Begin::InFlight));
        assert!(matches!(store.begin(k.clone(), 2, now), Begin::Mismatch));
        store.complete(&k, stored("x"));
        match store.begin(k.clone(), 1, now) {
            Begin::Replay(s) => assert_eq!(s.body, "x"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(store.begin(k.clone(), 2, now), Begin::Mismatch));
    }

    #[test]
    fn scopes_are_separate() {
        let mut store = Store::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        assert!(matches!(
            store.begin(key(Some("Bearer a"), "k"), 1, now),
            Begin::Execute(_)
        ));
        assert!(matches!(
            store.begin(key(Some("Bearer b"), "k"), 1, now),
            Begin::Execute(_)
        ));
        assert!(matches!(
            store.begin(key(None, "k"), 1, now),
            Begin::Execute(_)
        ));
    }

    #[test]
    fn a_key_text_executed_in_two_scopes_is_seen_across_them() {
        let mut store = Store::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let (a, b) = (key(Some("Bearer a"), "k"), key(Some("Bearer b"), "k"));
        store.begin(a.clone(), 1, now);
        assert_eq!(store.complete(&a, stored("x")), 1);
        assert_eq!(store.across_scopes(&a), None, "one scope");
        store.begin(b.clone(), 1, now);
        assert_eq!(store.complete(&b, stored("y")), 1, "once in its own scope");
        let mut across = store.across_scopes(&b).unwrap();
        across.sort();
        assert_eq!(
            across,
            [
                (Some(Bytes::from_static(b"Bearer a")), 1),
                (Some(Bytes::from_static(b"Bearer b")), 1)
            ]
        );
        // Forgotten in one scope: nothing left to compare.
        store.abandon(&a);
        store.clear();
        assert_eq!(store.across_scopes(&b), None);
        assert!(store.texts.is_empty());
    }

    #[test]
    fn clearing_keeps_the_keys_in_flight() {
        let mut store = Store::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let (done, running) = (key(None, "done"), key(None, "running"));
        store.begin(done.clone(), 1, now);
        store.complete(&done, stored("x"));
        store.begin(running.clone(), 1, now);
        store.clear();
        assert_eq!(store.len(), 1);
        assert!(matches!(
            store.begin(running.clone(), 1, now),
            Begin::InFlight
        ));
        assert_eq!(store.complete(&running, stored("y")), 1);
        assert!(matches!(store.begin(running, 1, now), Begin::Replay(_)));
        assert!(matches!(store.begin(done, 1, now), Begin::Execute(_)));
    }

    #[test]
    fn expired_keys_execute_again_but_in_flight_ones_never_expire() {
        let mut store = Store::new(Duration::from_secs(10), 10);
        let t0 = Instant::now();
        let (done, running) = (key(None, "done"), key(None, "running"));
        store.begin(done.clone(), 1, t0);
        store.complete(&done, stored("x"));
        store.begin(running.clone(), 1, t0);
        let later = t0 + Duration::from_secs(11);
        assert!(matches!(
            store.begin(done.clone(), 1, later),
            Begin::Execute(_)
        ));
        assert_eq!(
            store.complete(&done, stored("y")),
            2,
            "the re-execution is counted"
        );
        assert_eq!(store.executions_for("done"), 2);
        assert!(matches!(
            store.begin(running.clone(), 1, later),
            Begin::InFlight
        ));
    }

    #[test]
    fn bound_evicts_oldest_completed_and_never_in_flight() {
        let mut store = Store::new(Duration::from_secs(3600), 3);
        let now = Instant::now();
        let keys: Vec<_> = (0..3).map(|i| key(None, &format!("k{i}"))).collect();
        for k in &keys {
            store.begin(k.clone(), 1, now);
        }
        // All three in flight: no room, and none of them is forgotten.
        assert!(matches!(store.begin(key(None, "new"), 1, now), Begin::Full));
        assert_eq!(store.len(), 3);
        store.complete(&keys[1], stored("1"));
        store.complete(&keys[2], stored("2"));
        // k0 is oldest but in flight: k1 goes instead.
        assert!(matches!(
            store.begin(key(None, "new"), 1, now),
            Begin::Execute(_)
        ));
        assert_eq!(store.len(), 3);
        assert!(matches!(
            store.begin(keys[0].clone(), 1, now),
            Begin::InFlight
        ));
        assert!(matches!(
            store.begin(keys[2].clone(), 1, now),
            Begin::Replay(_)
        ));
    }

    #[test]
    fn many_keys_stay_within_the_bound() {
        let mut store = Store::new(Duration::from_secs(3600), 100);
        let now = Instant::now();
        for i in 0..10_000 {
            let k = key(None, &i.to_string());
            assert!(matches!(store.begin(k.clone(), 1, now), Begin::Execute(_)));
            store.complete(&k, stored("x"));
            assert!(store.len() <= 100);
            assert!(
                store.order.len() <= 200,
                "queue grows: {}",
                store.order.len()
            );
        }
    }
}
