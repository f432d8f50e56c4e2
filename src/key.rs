//! Idempotency keys: minting, validation, and how they go on the wire.

use std::fmt;
use std::str::FromStr;

use http::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Longest key we accept, in bytes (the same bound the mock server enforces).
pub(crate) const MAX_KEY_LEN: usize = 255;

/// The key that identifies one logical operation across all of its attempts.
///
/// A key is 1 to 255 visible ASCII characters (`0x21..=0x7E`). Keys minted by the client
/// with [`IdempotencyKey::new_v4`] are random UUIDv4 strings drawn from the operating
/// system's CSPRNG (through the `uuid` crate's `v4` feature, which uses `getrandom`).
///
/// Keys serialize as plain strings, so an operation whose outcome is unknown can be
/// persisted and resumed later with
/// [`IdempotentRequestBuilder::idempotency_key`](crate::IdempotentRequestBuilder::idempotency_key).
///
/// ```
/// use idempotent_retry::IdempotencyKey;
///
/// let minted = IdempotencyKey::new_v4();
/// assert_eq!(minted.as_str().len(), 36);
///
/// let stored: IdempotencyKey = "order-1234-attempt".parse()?;
/// assert_eq!(stored.to_string(), "order-1234-attempt");
///
/// assert!(IdempotencyKey::parse("").is_err());
/// assert!(IdempotencyKey::parse("has space").is_err());
/// # Ok::<(), idempotent_retry::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(Box<str>);

impl IdempotencyKey {
    /// Mints a new random key: a UUIDv4 from the OS CSPRNG, in hyphenated lower case.
    #[must_use]
    pub fn new_v4() -> Self {
        let mut buf = uuid::Uuid::encode_buffer();
        let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        Self(Box::from(&*text))
    }

    /// Validates a caller-supplied key (for example one you persisted earlier).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] if the key is empty, longer than 255 bytes, or contains
    /// anything but visible ASCII (`0x21..=0x7E`: no spaces, control characters or
    /// non-ASCII).
    pub fn parse(key: &str) -> Result<Self, Error> {
        validate(key)?;
        Ok(Self(Box::from(key)))
    }

    /// The key as text, exactly as it is sent in the bare header form.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The header value for this key in the chosen form, or why it cannot be sent so.
    pub(crate) fn header_value(&self, format: KeyFormat) -> Result<HeaderValue, String> {
        let value = match format {
            KeyFormat::Bare => HeaderValue::from_str(&self.0),
            KeyFormat::StructuredString => {
                if let Some(bad) = self.0.chars().find(|c| matches!(c, '"' | '\\')) {
                    return Err(format!(
                        "the key contains {bad:?}, which the structured-string form \
                         cannot carry; use the bare form or a key without it"
                    ));
                }
                HeaderValue::from_str(&format!("\"{}\"", self.0))
            }
        };
        // Unreachable in practice: validation admits only 0x21..=0x7E, all legal here.
        value.map_err(|_| "the key is not a valid header value".to_owned())
    }
}

fn validate(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidKey {
            reason: "key is empty".to_owned(),
        });
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidKey {
            reason: format!("key is {} bytes long; at most {MAX_KEY_LEN}", key.len()),
        });
    }
    if let Some((at, byte)) = key
        .bytes()
        .enumerate()
        .find(|(_, b)| !(0x21..=0x7E).contains(b))
    {
        return Err(Error::InvalidKey {
            reason: format!(
                "byte 0x{byte:02X} at position {at} is not visible ASCII (0x21..=0x7E)"
            ),
        });
    }
    Ok(())
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&&*self.0).finish()
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for IdempotencyKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Error> {
        validate(&s)?;
        Ok(Self(s.into_boxed_str()))
    }
}

impl TryFrom<&str> for IdempotencyKey {
    type Error = Error;

    fn try_from(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> String {
        key.0.into_string()
    }
}

/// How the key is written into its header.
///
/// # Default
///
/// [`KeyFormat::Bare`], which is what Stripe and most APIs expect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyFormat {
    /// The key as is: `Idempotency-Key: 8e03978e-40d5-43e8-bc93-6894a57f9324`.
    #[default]
    Bare,
    /// An RFC 8941 structured-field string, as in the IETF draft
    /// "The Idempotency-Key HTTP Header Field": `Idempotency-Key: "8e03978e-…"`.
    /// Keys containing `"` or `\` are rejected before any I/O in this form.
    StructuredString,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn minted_keys_are_uuid_v4() {
        let key = IdempotencyKey::new_v4();
        let uuid = uuid::Uuid::parse_str(key.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert_ne!(key, IdempotencyKey::new_v4());
    }

    #[test]
    fn rejects_bad_keys() {
        let long = "a".repeat(256);
        for bad in [
            "",
            " ",
            "a b",
            "tab\there",
            "new\nline",
            "caf\u{e9}",
            "\u{7f}",
            &long,
        ] {
            assert!(
                matches!(IdempotencyKey::parse(bad), Err(Error::InvalidKey { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn accepts_edges() {
        IdempotencyKey::parse(&"~".repeat(255)).unwrap();
        IdempotencyKey::parse("!").unwrap();
        IdempotencyKey::parse("with\"quote\\and-backslash").unwrap();
    }

    #[test]
    fn structured_form_quotes_and_rejects_unquotable() {
        let key = IdempotencyKey::parse("abc").unwrap();
        assert_eq!(
            key.header_value(KeyFormat::StructuredString).unwrap(),
            "\"abc\""
        );
        assert_eq!(key.header_value(KeyFormat::Bare).unwrap(), "abc");
        let quoted = IdempotencyKey::parse("a\"b").unwrap();
        assert!(quoted.header_value(KeyFormat::StructuredString).is_err());
        assert!(quoted.header_value(KeyFormat::Bare).is_ok());
    }

    #[test]
    fn serde_round_trip_validates() {
        let key = IdempotencyKey::new_v4();
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{key}\""));
        let back: IdempotencyKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, key);
        assert!(serde_json::from_str::<IdempotencyKey>("\"\"").is_err());
        assert!(serde_json::from_str::<IdempotencyKey>("\"a b\"").is_err());
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_visible_ascii(s in "\\PC{0,300}") {
            let valid = !s.is_empty()
                && s.len() <= MAX_KEY_LEN
                && s.bytes().all(|b| (0x21..=0x7E).contains(&b));
            prop_assert_eq!(IdempotencyKey::parse(&s).is_ok(), valid);
        }

        #[test]
        fn valid_keys_round_trip(s in "[!-~]{1,255}") {
            let key = IdempotencyKey::parse(&s).unwrap();
            prop_assert_eq!(key.as_str(), s.as_str());
            let value = key.header_value(KeyFormat::Bare).unwrap();
            prop_assert_eq!(value.to_str().unwrap(), s.as_str());
        }
    }
}
