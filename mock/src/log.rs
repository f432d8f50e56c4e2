//! The request log: what each request carried, bounded in entries and in bytes.
//!
//! Headers and bodies are copied out of hyper's buffers: a slice would keep the whole
//! read buffer of its connection alive for as long as the entry lives.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};
use http::{HeaderMap, Method};

/// What replaces a credential in the log unless the server was told to keep it.
const REDACTED: &str = "[redacted]";

/// One request the server received (admin requests excluded).
///
/// It is kept compact (headers as one block of text, the route's name shared with the
/// route), since a test server may log 100,000 of them.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReceivedRequest {
    /// The method.
    pub method: Method,
    /// The URL path.
    pub path: String,
    /// The idempotency key as sent (decoded from the structured form), if any.
    pub key: Option<String>,
    /// When it arrived.
    pub at: Instant,
    route: Option<Arc<str>>,
    since_start: Duration,
    body: Bytes,
    body_truncated: bool,
    query: Option<Box<str>>,
    /// `name: value` lines, names lower case.
    headers: Box<str>,
}

impl ReceivedRequest {
    /// The name of the route that answered it; `None` without routes or when none
    /// matched.
    #[must_use]
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// How long after the server started it arrived.
    #[must_use]
    pub fn since_start(&self) -> Duration {
        self.since_start
    }

    /// The body as received, cut at the log's byte bound (see
    /// [`body_truncated`](Self::body_truncated)); empty when the request ended before
    /// its body was read (a body over `max_body_bytes`, a client gone mid-body).
    #[must_use]
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Whether [`body`](Self::body) is only the start of what was received.
    #[must_use]
    pub fn body_truncated(&self) -> bool {
        self.body_truncated
    }

    /// The query string, if any.
    #[must_use]
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The request's headers in the order received, names lower case (values that are
    /// not UTF-8 have their bad bytes replaced). `Authorization` and
    /// `Proxy-Authorization` read `[redacted]` unless the server was built with
    /// `log_credentials(true)`.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .lines()
            .filter_map(|line| line.split_once(": "))
    }

    /// The first value of header `name` (any case), if present.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The body as text (invalid UTF-8 replaced).
    #[must_use]
    pub fn body_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// What the entry counts against the log's byte bound.
    fn weight(&self) -> usize {
        self.path.len()
            + self.query.as_ref().map_or(0, |q| q.len())
            + self.key.as_ref().map_or(0, String::len)
            + self.headers.len()
            + self.body.len()
    }

    /// One line for messages: when, method, path, key and body.
    pub(crate) fn line(&self) -> String {
        let mut line = format!(
            "+{}ms {} {}",
            self.since_start.as_millis(),
            self.method,
            self.path
        );
        if let Some(query) = &self.query {
            let _ = write!(line, "?{query}");
        }
        if let Some(key) = &self.key {
            let _ = write!(line, " key={key}");
        }
        if !self.body.is_empty() {
            let _ = write!(line, " body={}", self.body_text());
        }
        line
    }

    /// The entry as `GET /__admin/requests` lists it.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut headers = serde_json::Map::new();
        for (name, value) in self.headers() {
            headers
                .entry(name)
                .or_insert_with(|| serde_json::Value::from(value));
        }
        serde_json::json!({
            "method": self.method.as_str(),
            "path": self.path,
            "query": self.query,
            "key": self.key,
            "route": self.route(),
            "ms": u64::try_from(self.since_start.as_millis()).unwrap_or(u64::MAX),
            "headers": headers,
            "body": self.body_text(),
            "body_truncated": self.body_truncated,
        })
    }
}

/// What a request gives the log.
pub(crate) struct Entry<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) key: Option<std::borrow::Cow<'a, str>>,
    pub(crate) route: Option<&'a Arc<str>>,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a [u8],
}

/// The last requests, oldest first, within `max_entries` and `max_bytes`.
#[derive(Debug)]
pub(crate) struct Log {
    entries: VecDeque<ReceivedRequest>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
    credentials: bool,
    started: Instant,
}

impl Log {
    pub(crate) fn new(max_entries: usize, max_bytes: usize, credentials: bool) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
            credentials,
            started: Instant::now(),
        }
    }

    /// Whether anything is kept at all.
    pub(crate) fn is_on(&self) -> bool {
        self.max_entries > 0 && self.max_bytes > 0
    }

    /// Keeps a copy of the request, dropping the oldest entries past either bound.
    pub(crate) fn push(&mut self, entry: &Entry<'_>, at: Instant) {
        if !self.is_on() {
            return;
        }
        // Sized for the usual case, values in UTF-8, so the text is allocated once.
        let size = entry
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 3)
            .sum();
        let mut headers = String::with_capacity(size);
        // Pushed piece by piece: `write!` and a lossy conversion of every value cost
        // more than the rest of the entry (callgrind, the memory bench's profile mode).
        for (name, value) in entry.headers {
            headers.push_str(name.as_str());
            headers.push_str(": ");
            if !self.credentials && (name == AUTHORIZATION || name == PROXY_AUTHORIZATION) {
                headers.push_str(REDACTED);
            } else if let Ok(text) = value.to_str() {
                headers.push_str(text);
            } else {
                headers.push_str(&String::from_utf8_lossy(value.as_bytes()));
            }
            headers.push('\n');
        }
        let mut received = ReceivedRequest {
            method: entry.method.clone(),
            path: entry.path.to_owned(),
            key: entry.key.as_deref().map(str::to_owned),
            route: entry.route.cloned(),
            at,
            since_start: at.saturating_duration_since(self.started),
            body: Bytes::new(),
            body_truncated: false,
            query: entry.query.map(Box::from),
            headers: headers.into_boxed_str(),
        };
        let room = self.max_bytes.saturating_sub(received.weight());
        received.body_truncated = entry.body.len() > room;
        received.body = Bytes::copy_from_slice(&entry.body[..entry.body.len().min(room)]);
        let weight = received.weight();
        while !self.entries.is_empty()
            && (self.entries.len() >= self.max_entries || self.bytes + weight > self.max_bytes)
        {
            if let Some(oldest) = self.entries.pop_front() {
                self.bytes -= oldest.weight();
            }
        }
        self.bytes += weight;
        self.entries.push_back(received);
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &ReceivedRequest> {
        self.entries.iter()
    }

    /// Forgets every entry; times stay relative to the server's start.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Entry<'a> {
        Entry {
            method: &Method::POST,
            path: "/p",
            query: None,
            key: Some("k".into()),
            route: None,
            headers,
            body,
        }
    }

    #[test]
    fn the_log_stays_within_its_byte_bound_and_cuts_a_body_that_cannot_fit() {
        let headers = HeaderMap::new();
        let mut log = Log::new(1_000, 100, false);
        for _ in 0..10 {
            log.push(&entry(&headers, &[b'x'; 40]), Instant::now());
        }
        // Each entry weighs 2 + 1 + 40 = 43 bytes (no headers): two fit in 100.
        assert_eq!(log.entries().count(), 2);
        assert!(log.bytes <= 100);
        log.push(&entry(&headers, &[b'y'; 500]), Instant::now());
        let last = log.entries().last().unwrap();
        assert!(last.body_truncated);
        assert_eq!(last.body.len(), 97);
        assert_eq!(log.entries().count(), 1);
    }

    #[test]
    fn credentials_are_redacted_unless_asked_for() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, "Bearer sk_live_secret".parse().unwrap());
        headers.insert("x-trace", "t1".parse().unwrap());
        let mut log = Log::new(10, 10_000, false);
        log.push(&entry(&headers, b""), Instant::now());
        let first = log.entries().next().unwrap();
        assert_eq!(first.header("Authorization"), Some(REDACTED));
        assert_eq!(first.header("x-trace"), Some("t1"));
        let mut log = Log::new(10, 10_000, true);
        log.push(&entry(&headers, b""), Instant::now());
        let first = log.entries().next().unwrap();
        assert_eq!(first.header("authorization"), Some("Bearer sk_live_secret"));
    }
}
