//! What the mock server reads off the wire: the key header (bare or structured
//! string), the body it echoes, and the request's fingerprint.

use std::borrow::Cow;
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::Value;
use serde_json::value::RawValue;

use super::template::form_to_json;
use crate::key::Key;

/// The key from its header, bare or as an RFC 8941 string (`"…"`, with `\"` and `\\`).
pub(crate) fn decode_key(value: &HeaderValue) -> Result<Key, String> {
    let bytes = value.as_bytes();
    let text = match bytes {
        [b'"', inner @ .., b'"'] => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.iter();
            while let Some(&b) = chars.next() {
                let c = match b {
                    b'\\' => match chars.next() {
                        Some(&e @ (b'"' | b'\\')) => e,
                        _ => return Err("bad escape in structured-string key".into()),
                    },
                    b'"' => return Err("unescaped quote in structured-string key".into()),
                    other => other,
                };
                out.push(char::from(c));
            }
            Cow::Owned(out)
        }
        // Borrowed, without a copy, when the bytes are UTF-8 (every valid key is).
        _ => String::from_utf8_lossy(bytes),
    };
    Key::parse(&text)
}

/// What the created resource echoes of the request body.
#[derive(Debug)]
pub(crate) enum Echo {
    /// The body itself, validated as JSON: echoed as it came, with no parse tree and no
    /// copy (replays, which echo nothing, pay only the validation).
    Json(Bytes),
    /// Anything else, converted.
    Value(Value),
}

impl Echo {
    /// The created resource: `{"body":…,"id":…,"path":…}`.
    pub(crate) fn created(&self, id: u64, path: &str) -> Bytes {
        let value;
        let echo: &[u8] = match self {
            // Validated JSON: its bytes go in as they are, with no UTF-8 check again.
            Echo::Json(raw) => raw,
            Echo::Value(v) => {
                value = v.to_string();
                value.as_bytes()
            }
        };
        let digits = id.checked_ilog10().unwrap_or(0) as usize + 1;
        // Sized exactly for the usual path (nothing to escape): the answer is stored for
        // the key's lifetime, so no spare capacity.
        let mut text = Vec::with_capacity(25 + echo.len() + digits + path.len());
        text.extend_from_slice(br#"{"body":"#);
        text.extend_from_slice(echo);
        text.extend_from_slice(br#","id":"#);
        // Writing to a `Vec` cannot fail, nor can serializing a number or a string.
        let _ = serde_json::to_writer(&mut text, &id);
        text.extend_from_slice(br#","path":"#);
        let _ = serde_json::to_writer(&mut text, path);
        text.push(b'}');
        Bytes::from(text)
    }
}

/// What the created resource echoes: JSON as JSON, forms as an object, other text as a
/// string (or as JSON if it is JSON), nothing as `null`.
pub(crate) fn echo_body(headers: &HeaderMap, body: &Bytes) -> Result<Echo, String> {
    let raw_json = || {
        serde_json::from_slice::<&RawValue>(body)
            .map(|raw| Echo::Json(body.slice_ref(raw.get().as_bytes())))
    };
    if body.is_empty() {
        return Ok(Echo::Value(Value::Null));
    }
    match body_kind(headers) {
        BodyKind::Json => raw_json().map_err(|e| format!("the body is not valid JSON: {e}")),
        BodyKind::Form => Ok(Echo::Value(Value::Object(
            form_pairs(body)?
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ))),
        BodyKind::Other => Ok(raw_json().unwrap_or_else(|_| {
            Echo::Value(Value::String(String::from_utf8_lossy(body).into_owned()))
        })),
    }
}

/// The body as JSON for a route's templates: JSON as it is, a form nested by its
/// brackets, other text as a string (or as JSON if it is JSON), nothing as `null`.
pub(crate) fn body_json(headers: &HeaderMap, body: &Bytes) -> Result<Value, String> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    match body_kind(headers) {
        BodyKind::Json => {
            serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))
        }
        BodyKind::Form => Ok(form_to_json(form_pairs(body)?)),
        BodyKind::Other => Ok(serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))),
    }
}

/// How a request body is written, by its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    Json,
    Form,
    Other,
}

fn body_kind(headers: &HeaderMap) -> BodyKind {
    let media_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map_or("", str::trim);
    // Media types are case-insensitive; compared without making a lower-case copy.
    let ends_with_json = media_type.len() >= 5
        && media_type.is_char_boundary(media_type.len() - 5)
        && media_type[media_type.len() - 5..].eq_ignore_ascii_case("+json");
    if media_type.eq_ignore_ascii_case("application/json") || ends_with_json {
        BodyKind::Json
    } else if media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        BodyKind::Form
    } else {
        BodyKind::Other
    }
}

/// A form body's name-value pairs, in order.
fn form_pairs(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    serde_urlencoded::from_bytes(body).map_err(|e| format!("the body is not a valid form: {e}"))
}

pub(crate) fn fingerprint(method: &Method, path: &str, body: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    method.as_str().hash(&mut hasher);
    path.hash(&mut hasher);
    body.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn media_types_are_read_without_regard_to_case() {
        for (written, kind) in [
            ("application/json", BodyKind::Json),
            ("Application/JSON; charset=utf-8", BodyKind::Json),
            ("application/merge-patch+JSON", BodyKind::Json),
            (" application/x-www-form-urlencoded ", BodyKind::Form),
            ("APPLICATION/X-WWW-FORM-URLENCODED", BodyKind::Form),
            ("text/plain", BodyKind::Other),
            ("json", BodyKind::Other),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_bytes(written.as_bytes()).unwrap(),
            );
            assert_eq!(body_kind(&headers), kind, "{written}");
        }
        assert_eq!(body_kind(&HeaderMap::new()), BodyKind::Other);
    }

    fn decode(bytes: &[u8]) -> Option<Result<Key, String>> {
        HeaderValue::from_bytes(bytes).ok().map(|v| decode_key(&v))
    }

    #[test]
    fn decodes_both_forms() {
        assert_eq!(decode(b"abc").unwrap().unwrap().as_str(), "abc");
        assert_eq!(decode(b"\"abc\"").unwrap().unwrap().as_str(), "abc");
        assert_eq!(
            decode(b"\"a\\\"b\\\\c\"").unwrap().unwrap().as_str(),
            "a\"b\\c"
        );
        for bad in [&b"\"\""[..], b"\"a\\x\"", b"\"a\"b\"", b"\"a\\\"", b""] {
            assert!(
                decode(bad).unwrap().is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Structured-string encoding as a client would do it, escapes included.
    fn quote(key: &str) -> String {
        let mut out = String::from("\"");
        for c in key.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }

    proptest! {
        // Fuzzing by property: arbitrary bytes never panic the decoder, and whatever it
        // accepts is a valid key.
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(Ok(key)) = decode(&bytes) {
                prop_assert!(Key::parse(key.as_str()).is_ok());
            }
        }

        #[test]
        fn quoted_keys_round_trip(key in "[!-~]{1,200}") {
            let decoded = decode(quote(&key).as_bytes()).unwrap().unwrap();
            prop_assert_eq!(decoded.as_str(), key.as_str());
        }

        #[test]
        fn echo_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200), kind in 0usize..4) {
            let content_type = ["application/json", "application/x-www-form-urlencoded", "text/plain", "application/problem+json; charset=utf-8"][kind];
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            let _ = echo_body(&headers, &Bytes::from(body));
        }
    }
}
