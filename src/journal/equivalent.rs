//! Whether a request sent under a recorded operation id is the recorded one: the same
//! method, URL and key, the same body (JSON compared as JSON, numbers exactly as
//! written), and the same values of the headers that scope an operation (an account
//! header such as `Stripe-Account`: another account's answer must never be returned).
//!
//! Bodies compare by their fingerprint, a SHA-256 of the body, so a completed record can
//! drop its body and still tell a re-run of the same request from another request.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::HeaderName;
use http::header::CONTENT_TYPE;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::RecordedRequest;
use crate::IdempotencyKey;

/// Why the request at hand (`now`) is not the recorded one, if it is not.
pub(crate) fn mismatch(
    recorded: &RecordedRequest,
    now: &RecordedRequest,
    caller_key: Option<&IdempotencyKey>,
    scope_headers: &[HeaderName],
) -> Option<String> {
    if recorded.method != now.method {
        return Some(format!(
            "method {} is recorded, not {}",
            recorded.method, now.method
        ));
    }
    if recorded.url != now.url {
        return Some(format!("URL {} is recorded, not {}", recorded.url, now.url));
    }
    if caller_key.is_some_and(|key| key.as_str() != recorded.key) {
        return Some("the key given is not the recorded one".into());
    }
    for name in scope_headers {
        if values(recorded, name) != values(now, name) {
            return Some(format!("header {name} differs from the recorded one"));
        }
    }
    if fingerprint_of(recorded) != fingerprint_of(now) {
        return Some("the body differs from the recorded one".into());
    }
    None
}

/// The values of one header of a recorded request, in order.
fn values<'r>(request: &'r RecordedRequest, name: &HeaderName) -> Vec<&'r [u8]> {
    request
        .headers
        .iter()
        .filter(|(n, _)| n.as_str() == name.as_str())
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// A request's fingerprint: the one recorded with it, or else (a record written before
/// fingerprints were) the one its body gives.
fn fingerprint_of(request: &RecordedRequest) -> Bytes {
    request
        .fingerprint
        .clone()
        .unwrap_or_else(|| fingerprint(request))
}

/// The fingerprint of a request's body: SHA-256 of the body read as JSON when the
/// request says it is JSON and it parses (key order and spacing aside, numbers exactly
/// as written), else of its bytes. Two bodies have the same fingerprint exactly when
/// they are the same request body.
pub(crate) fn fingerprint(request: &RecordedRequest) -> Bytes {
    let mut hasher = Sha256::new();
    match is_json(request).then(|| Canonical::of(&request.body)) {
        Some(Some(json)) => {
            hasher.update(b"json\0");
            json.feed(&mut hasher);
        }
        _ => {
            hasher.update(b"bytes\0");
            hasher.update(&request.body);
        }
    }
    Bytes::copy_from_slice(&hasher.finalize())
}

/// Whether the request's `Content-Type` says JSON.
fn is_json(request: &RecordedRequest) -> bool {
    request.headers.iter().any(|(n, v)| {
        n.as_str() == CONTENT_TYPE.as_str()
            && std::str::from_utf8(v)
                .is_ok_and(|v| v.trim_start().to_ascii_lowercase().contains("json"))
    })
}

/// JSON with its numbers kept as written: `20.0`, `20` and `19.999999999999999` are
/// three different amounts, and an integer beyond `u64` keeps every digit. (serde_json
/// would read numbers as `f64`, under which the first three are one.)
#[derive(Debug, PartialEq, Eq)]
enum Canonical {
    Object(BTreeMap<String, Canonical>),
    Array(Vec<Canonical>),
    String(String),
    /// A number, `true`, `false` or `null`, as its text.
    Scalar(String),
}

impl Canonical {
    fn of(bytes: &[u8]) -> Option<Self> {
        let raw: &RawValue = serde_json::from_slice(bytes).ok()?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: &RawValue) -> Option<Self> {
        let text = raw.get().trim();
        Some(match text.as_bytes().first()? {
            b'{' => {
                let fields: BTreeMap<String, &RawValue> = serde_json::from_str(text).ok()?;
                Self::Object(
                    fields
                        .into_iter()
                        .map(|(k, v)| Some((k, Self::from_raw(v)?)))
                        .collect::<Option<_>>()?,
                )
            }
            b'[' => {
                let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
                Self::Array(
                    items
                        .into_iter()
                        .map(Self::from_raw)
                        .collect::<Option<_>>()?,
                )
            }
            b'"' => Self::String(serde_json::from_str(text).ok()?),
            _ => Self::Scalar(text.to_owned()),
        })
    }

    /// Feeds the value to a hash, each part tagged and each text and list preceded by
    /// its length: no two values feed the same bytes.
    fn feed(&self, hasher: &mut Sha256) {
        match self {
            Self::String(s) => tagged(hasher, b's', s.as_bytes()),
            Self::Scalar(s) => tagged(hasher, b'n', s.as_bytes()),
            Self::Object(fields) => {
                hasher.update([b'o']);
                hasher.update((fields.len() as u64).to_le_bytes());
                for (name, value) in fields {
                    tagged(hasher, b'k', name.as_bytes());
                    value.feed(hasher);
                }
            }
            Self::Array(items) => {
                hasher.update([b'a']);
                hasher.update((items.len() as u64).to_le_bytes());
                for item in items {
                    item.feed(hasher);
                }
            }
        }
    }
}

/// A tag, a length and the bytes, into a hash.
fn tagged(hasher: &mut Sha256, tag: u8, bytes: &[u8]) {
    hasher.update([tag]);
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn json(body: &str) -> RecordedRequest {
        RecordedRequest {
            method: "POST".into(),
            url: "http://127.0.0.1:9/v1/charges".into(),
            key: "k".into(),
            key_header: "idempotency-key".into(),
            key_value: b"k".to_vec(),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            secret_headers: Vec::new(),
            body: Bytes::copy_from_slice(body.as_bytes()),
            fingerprint: None,
        }
    }

    #[test]
    fn json_bodies_compare_by_content_with_numbers_as_written() {
        let same = |a: &str, b: &str| mismatch(&json(a), &json(b), None, &[]).is_none();
        assert!(same(
            r#"{"a": 1, "b": [true, null]}"#,
            r#"{"b":[true,null],"a":1}"#
        ));
        assert!(
            same(r#"{"s": "\u00e9"}"#, r#"{"s": "é"}"#),
            "escapes are read"
        );
        assert!(!same(
            r#"{"amount": 19.999999999999999}"#,
            r#"{"amount": 20.0}"#
        ));
        assert!(!same(r#"{"amount": 20}"#, r#"{"amount": 20.0}"#));
        assert!(!same(
            r#"{"n": 123456789012345678901234567890}"#,
            r#"{"n": 123456789012345678901234567891}"#
        ));
        assert!(!same(r#"{"a": 1}"#, r#"{"a": 1, "b": 2}"#));
        assert!(!same(r#"[1, 2]"#, r#"[2, 1]"#));
        assert!(!same(r#"{"a": 1"#, r#"{"a": 1}"#), "not JSON: bytes differ");
    }

    #[test]
    fn a_completed_record_compares_by_its_fingerprint_alone() {
        let shrunk = |body: &str| {
            let mut request = json(body);
            request.fingerprint = Some(fingerprint(&request));
            request.body = Bytes::new();
            request
        };
        let recorded = shrunk(r#"{"amount": 20, "currency": "eur"}"#);
        let rerun = json(r#"{"currency":"eur","amount":20}"#);
        assert!(mismatch(&recorded, &rerun, None, &[]).is_none());
        let other = json(r#"{"currency":"eur","amount":20.0}"#);
        assert!(mismatch(&recorded, &other, None, &[]).is_some());
        assert!(
            mismatch(&recorded, &json(""), None, &[]).is_some(),
            "the dropped body is not read as an empty one"
        );
    }

    #[test]
    fn json_and_bytes_fingerprints_never_meet() {
        let mut bytes = json(r#"{"a":1}"#);
        bytes.headers.clear();
        assert_ne!(fingerprint(&bytes), fingerprint(&json(r#"{"a":1}"#)));
        assert_eq!(fingerprint(&json("[1]")).len(), 32);
        assert_ne!(
            fingerprint(&json(r#"["ab"]"#)),
            fingerprint(&json(r#"["a","b"]"#))
        );
        assert_ne!(
            fingerprint(&json(r#"{"a":"1"}"#)),
            fingerprint(&json(r#"{"a":1}"#))
        );
    }

    #[test]
    fn a_scope_header_must_match() {
        let account = |value: &str| {
            let mut request = json("{}");
            request
                .headers
                .push(("stripe-account".into(), value.as_bytes().to_vec()));
            request
        };
        let scope = [HeaderName::from_static("stripe-account")];
        let refused = mismatch(&account("acct_1"), &account("acct_2"), None, &scope);
        assert!(refused.is_some_and(|r| r.contains("stripe-account")));
        assert!(mismatch(&account("acct_1"), &account("acct_1"), None, &scope).is_none());
        assert!(mismatch(&account("acct_1"), &json("{}"), None, &scope).is_some());
        assert!(mismatch(&account("acct_1"), &account("acct_2"), None, &[]).is_none());
    }
}
