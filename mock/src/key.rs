//! The idempotency key rule the server enforces: 1 to 255 visible ASCII characters.
//!
//! The client crate enforces the same rule on the keys it sends; a test in this crate
//! runs both over one table of good and bad keys, so the two cannot drift apart.

/// The header the server reads keys from unless told otherwise.
pub(crate) const DEFAULT_KEY_HEADER: &str = "idempotency-key";

/// Longest key accepted, in bytes.
const MAX_KEY_LEN: usize = 255;

/// A key that passed the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Key(Box<str>);

impl Key {
    /// The key, or why it breaks the rule (the text of the `400` the server answers).
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("invalid idempotency key: key is empty".to_owned());
        }
        if text.len() > MAX_KEY_LEN {
            return Err(format!(
                "invalid idempotency key: key is {} bytes long; at most {MAX_KEY_LEN}",
                text.len()
            ));
        }
        if let Some((at, byte)) = text
            .bytes()
            .enumerate()
            .find(|(_, b)| !(0x21..=0x7E).contains(b))
        {
            return Err(format!(
                "invalid idempotency key: byte 0x{byte:02X} at position {at} is not \
                 visible ASCII (0x21..=0x7E)"
            ));
        }
        Ok(Self(Box::from(text)))
    }

    /// The key as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's text, without copying it.
    pub(crate) fn into_boxed_str(self) -> Box<str> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_and_its_messages() {
        assert_eq!(
            Key::parse("a").map(|k| k.as_str().to_owned()),
            Ok("a".into())
        );
        assert!(Key::parse(&"k".repeat(255)).is_ok());
        let long = Key::parse(&"k".repeat(256)).unwrap_err();
        assert!(long.contains("256 bytes long; at most 255"), "{long}");
        assert!(Key::parse("").unwrap_err().contains("key is empty"));
        let space = Key::parse("a b").unwrap_err();
        assert!(space.contains("byte 0x20 at position 1"), "{space}");
        assert!(Key::parse("é").is_err());
    }
}
