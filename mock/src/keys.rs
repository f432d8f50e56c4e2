//! The key book of proxy mode: for each key (in each scope), what was forwarded to the
//! upstream and what it answered, and a verdict on whether the upstream honoured the
//! key. Bounded: at most `max_keys` keys and [`MAX_EXCHANGES`] exchanges a key.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

/// Exchanges kept per key; later ones are counted, not kept.
pub(crate) const MAX_EXCHANGES: usize = 64;

/// What the upstream did with one key, as [`MockServer::keys`](crate::MockServer::keys)
/// and `GET /__admin/keys` report it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyReport {
    /// The key, as sent.
    pub key: String,
    /// The scope it was sent in: the scope header's scheme and a digest, never the
    /// credential.
    pub scope: String,
    /// Each request forwarded with it, in order.
    pub exchanges: Vec<Exchange>,
    /// Whether the upstream honoured the key.
    pub verdict: Verdict,
}

/// One request forwarded to the upstream, and what came of it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct Exchange {
    /// Milliseconds since the server started, when the request was forwarded.
    pub at_ms: u64,
    /// A digest of the request's body.
    pub body_digest: String,
    /// The upstream's status; `None` when it gave no answer.
    pub status: Option<u16>,
    /// A digest of the upstream's answer body.
    pub answer_digest: Option<String>,
    /// The upstream's `Idempotent-Replayed` header, if it sent one.
    pub replayed: Option<String>,
    /// The resource the answer names, at the server's id pointer (`--id-pointer /id`).
    pub resource_id: Option<String>,
    /// The fault applied to this exchange, if any (`drop_after_processing`, ...).
    pub fault: Option<String>,
    /// Why there is no answer (the upstream unreachable, too slow, too long).
    pub error: Option<String>,
}

/// Whether the upstream honoured a key.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Verdict {
    /// Every answer carries the same status class and the same resource.
    Consistent,
    /// Two different successful answers: the upstream executed the key twice.
    Diverged,
    /// Too few answers to say, or answers of different classes that do not prove a
    /// second execution (a `409` beside a `201`).
    Unknown,
}

/// The key book.
#[derive(Debug)]
pub(crate) struct KeyBook {
    started: Instant,
    max_keys: usize,
    keys: BTreeMap<(String, String), Vec<Exchange>>,
}

/// A short, stable digest of some bytes, for read-back (not for security): 16 hex
/// digits, the first 8 of which tell two apart in a report.
pub(crate) fn digest(bytes: &[u8]) -> String {
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(bytes);
    format!("{hash:016x}")
}

/// The resource an answer body names at `pointer`: a string as it is, anything else as
/// JSON text.
pub(crate) fn resource_id(body: &Bytes, pointer: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    match value.pointer(pointer)? {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

impl KeyBook {
    pub(crate) fn new(max_keys: usize) -> Self {
        Self {
            started: Instant::now(),
            max_keys,
            keys: BTreeMap::new(),
        }
    }

    /// Records an exchange forwarded at `forwarded`, under a key in a scope; past
    /// `max_keys` keys, a new key is not recorded, and past [`MAX_EXCHANGES`], neither
    /// is a key's exchange.
    pub(crate) fn record(
        &mut self,
        key: String,
        scope: String,
        forwarded: Instant,
        mut exchange: Exchange,
    ) {
        let since = forwarded.saturating_duration_since(self.started);
        exchange.at_ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        let full = self.keys.len() >= self.max_keys;
        match self.keys.entry((key, scope)) {
            Entry::Occupied(mut exchanges) if exchanges.get().len() < MAX_EXCHANGES => {
                exchanges.get_mut().push(exchange);
            }
            Entry::Vacant(slot) if !full => {
                slot.insert(vec![exchange]);
            }
            Entry::Occupied(_) | Entry::Vacant(_) => {}
        }
    }

    /// Every key's report, in key order.
    pub(crate) fn reports(&self) -> Vec<KeyReport> {
        self.keys
            .iter()
            .map(|((key, scope), exchanges)| KeyReport {
                key: key.clone(),
                scope: scope.clone(),
                verdict: verdict(exchanges),
                exchanges: exchanges.clone(),
            })
            .collect()
    }

    /// Keys whose upstream answered twice with different successes.
    pub(crate) fn diverged(&self) -> usize {
        self.keys
            .values()
            .filter(|exchanges| verdict(exchanges) == Verdict::Diverged)
            .count()
    }

    pub(crate) fn clear(&mut self) {
        self.keys.clear();
    }
}

/// The verdict on one key's exchanges: diverged when two successful answers name two
/// resources (or, without an id pointer, differ in body); consistent when every answer
/// has one status class and one resource; unknown otherwise.
fn verdict(exchanges: &[Exchange]) -> Verdict {
    let answers: Vec<&Exchange> = exchanges.iter().filter(|e| e.status.is_some()).collect();
    let identity = |e: &Exchange| e.resource_id.clone().or_else(|| e.answer_digest.clone());
    let mut successes = answers
        .iter()
        .filter(|e| e.status.is_some_and(|s| (200..300).contains(&s)))
        .map(|e| identity(e));
    if let Some(first) = successes.next() {
        if successes.any(|other| other != first) {
            return Verdict::Diverged;
        }
    }
    if answers.len() < 2 {
        return Verdict::Unknown;
    }
    let class = |e: &&Exchange| e.status.map(|s| s / 100);
    let same_class = answers.iter().all(|e| class(e) == class(&answers[0]));
    let same_id = answers
        .iter()
        .all(|e| e.resource_id == answers[0].resource_id);
    if same_class && same_id {
        Verdict::Consistent
    } else {
        Verdict::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, id: &str) -> Exchange {
        Exchange {
            at_ms: 0,
            body_digest: digest(b"{}"),
            status: Some(status),
            answer_digest: Some(digest(id.as_bytes())),
            replayed: None,
            resource_id: Some(id.into()),
            fault: None,
            error: None,
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(&[answer(201, "a")]), Verdict::Unknown);
        assert_eq!(
            verdict(&[answer(201, "a"), answer(201, "a")]),
            Verdict::Consistent
        );
        assert_eq!(
            verdict(&[answer(201, "a"), answer(201, "b")]),
            Verdict::Diverged
        );
        assert_eq!(
            verdict(&[answer(201, "a"), answer(409, "")]),
            Verdict::Unknown,
            "a 409 beside the success proves no second execution"
        );
        let lost = Exchange {
            status: None,
            error: Some("refused".into()),
            ..answer(0, "")
        };
        assert_eq!(verdict(&[lost, answer(201, "a")]), Verdict::Unknown);
    }

    #[test]
    fn the_book_is_bounded() {
        let mut book = KeyBook::new(2);
        let now = Instant::now();
        for key in ["k1", "k2", "k3"] {
            book.record(key.into(), "s".into(), now, answer(201, key));
        }
        assert_eq!(book.reports().len(), 2);
        for _ in 0..MAX_EXCHANGES + 5 {
            book.record("k1".into(), "s".into(), now, answer(201, "k1"));
        }
        assert_eq!(book.reports()[0].exchanges.len(), MAX_EXCHANGES);
    }

    #[test]
    fn a_resource_id_at_a_pointer() {
        let body = Bytes::from_static(br#"{"id":"ord_1","n":{"x":7}}"#);
        assert_eq!(resource_id(&body, "/id"), Some("ord_1".into()));
        assert_eq!(resource_id(&body, "/n/x"), Some("7".into()));
        assert_eq!(resource_id(&body, "/missing"), None);
        assert_eq!(resource_id(&Bytes::from_static(b"not json"), "/id"), None);
    }
}
