//! Settings from configuration files: [`RetryPolicy`], [`RetryBudget`] and
//! [`ClientConfig`] deserialize with serde from any format (TOML, JSON, YAML, …).
//!
//! The `Deserialize` impls are written out rather than derived for one reason: the
//! derived ones report a bad value without saying which field it was in (serde's
//! messages name the type, not the field, and JSON and YAML loaders add no key path).
//! Here every error starts with the field's path, `retry_policy.max_delay: …`, whatever
//! the format and loader.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use http::HeaderName;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use crate::duration::parse_duration;
use crate::retry::origins::DEFAULT_MAX_ORIGINS;
use crate::settings::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_KEY_HEADER, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_SHOULD_RETRY_HEADER,
};
use crate::{KeyFormat, RetryBudget, RetryPolicy};

/// The options of an [`IdempotentClient`](crate::IdempotentClient) that can live in a
/// configuration file; apply them with
/// [`IdempotentClientBuilder::config`](crate::IdempotentClientBuilder::config).
///
/// Every field is optional in the file and defaults as the builder does. Durations are
/// strings with a unit: `"250ms"`, `"30s"`, `"5m"`, `"1h"`. Unknown fields are errors, so a
/// typo does not silently fall back to a default, and every error names the field.
///
/// ```
/// use idempotent_retry::{ClientConfig, IdempotentClient};
///
/// let config: ClientConfig = toml::from_str(r#"
///     attempt_timeout = "2s"
///     key_header = "X-Idempotency-Key"
///
///     [retry_policy]
///     max_attempts = 5
///     initial_delay = "100ms"
///     max_delay = "5s"
///     jitter = "full"
///     deadline = "30s"
///
///     [retry_budget]
///     capacity = 100
/// "#)?;
/// let client = IdempotentClient::builder().config(&config).build()?;
///
/// let typo = toml::from_str::<ClientConfig>("[retry_policy]\nmax_delay = \"5 s\"");
/// let message = typo.unwrap_err().to_string();
/// assert!(message.contains("retry_policy.max_delay"), "{message}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// | field | type | default |
/// |---|---|---|
/// | `retry_policy` | table, see [`RetryPolicy`] (`max_attempts`, `initial_delay`, `multiplier`, `max_delay`, `jitter`, `deadline`, `max_retry_after`, `throttled_initial_delay`, `jitter_seed`) | [`RetryPolicy::default`] |
/// | `attempt_timeout` | duration | `"10s"` |
/// | `max_response_bytes` | integer, bytes | `16777216` (16 MiB) |
/// | `key_header` | header name | `"Idempotency-Key"` |
/// | `key_format` | `"bare"` or `"structured_string"` | `"bare"` |
/// | `should_retry_header` | header name, `""` for none | `"Stripe-Should-Retry"` |
/// | `max_origins` | integer | `10000` |
/// | `retry_budget` | table, see [`RetryBudget`] (`capacity`, `transient_cost`, `throttling_cost`, `success_refund`; all costs 0 turns it off) | [`RetryBudget::default`] |
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The retry policy of every request (a request can override it).
    pub retry_policy: RetryPolicy,
    /// Time for one attempt, connect to last byte.
    pub attempt_timeout: Duration,
    /// The longest answer body the client reads.
    pub max_response_bytes: usize,
    /// The header the key is sent in.
    pub key_header: HeaderName,
    /// Bare key or IETF structured string.
    pub key_format: KeyFormat,
    /// The field in which a server says whether to retry; `None` reads none.
    pub should_retry_header: Option<HeaderName>,
    /// The retry budget, a bucket per origin.
    pub retry_budget: RetryBudget,
    /// Most origins whose state the client remembers.
    pub max_origins: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            retry_policy: RetryPolicy::default(),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            key_header: HeaderName::from_static(DEFAULT_KEY_HEADER),
            key_format: KeyFormat::default(),
            should_retry_header: Some(HeaderName::from_static(DEFAULT_SHOULD_RETRY_HEADER)),
            retry_budget: RetryBudget::default(),
            max_origins: DEFAULT_MAX_ORIGINS,
        }
    }
}

/// A settings table: its fields, how to set one from the file, and what to check once
/// all are read.
trait Table: Default {
    /// What it is, for "expected …" messages.
    const WHAT: &'static str;
    const FIELDS: &'static [&'static str];

    /// Reads the value of `field`, one of [`Self::FIELDS`].
    fn set<'de, A: MapAccess<'de>>(&mut self, field: &str, map: &mut A) -> Result<(), A::Error>;

    /// Checks the whole table; the message names the field at fault.
    fn check(&self) -> Result<(), String>;
}

/// Deserializes a [`Table`] from a map: unknown and repeated fields are errors, and so
/// is a table that fails its check.
fn table<'de, T: Table, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
    struct TableVisitor<T>(PhantomData<T>);

    impl<'de, T: Table> Visitor<'de> for TableVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(T::WHAT)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            let mut table = T::default();
            let mut seen = Vec::with_capacity(T::FIELDS.len());
            while let Some(key) = map.next_key::<String>()? {
                let Some(&field) = T::FIELDS.iter().find(|f| **f == key) else {
                    return Err(de::Error::unknown_field(&key, T::FIELDS));
                };
                if seen.contains(&field) {
                    return Err(de::Error::duplicate_field(field));
                }
                seen.push(field);
                table.set(field, &mut map)?;
            }
            table.check().map_err(de::Error::custom)?;
            Ok(table)
        }
    }

    deserializer.deserialize_map(TableVisitor(PhantomData))
}

/// The next value of `map`, any error prefixed with the field's name (nested tables
/// prefix theirs, so the message carries the whole path).
fn value<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    map: &mut A,
    field: &str,
) -> Result<T, A::Error> {
    map.next_value()
        .map_err(|e| de::Error::custom(format_args!("{field}{}{e}", separator(&e))))
}

/// `.` before a nested field's path, `: ` before a message.
fn separator(error: &impl fmt::Display) -> &'static str {
    let text = error.to_string();
    let nested = text
        .split_once(": ")
        .is_some_and(|(path, _)| !path.is_empty() && path.chars().all(is_path_char));
    if nested { "." } else { ": " }
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'
}

/// A field name outside a table's list. The table's reader refuses those before it
/// calls `set`; `set` refuses them too rather than guess.
fn unknown<E: de::Error>(field: &str, expected: &'static [&'static str]) -> E {
    E::unknown_field(field, expected)
}

/// A duration written as text with a unit.
struct DurationText(Duration);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = DurationText;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"250ms\" or \"30s\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<DurationText, E> {
                parse_duration(text).map(DurationText).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

/// A header name, read from the text of `field`.
fn header_name<E: de::Error>(field: &str, name: String) -> Result<HeaderName, E> {
    HeaderName::try_from(name.as_str())
        .map_err(|e| E::custom(format_args!("{field}: {name:?} is not a header name: {e}")))
}

fn duration<'de, A: MapAccess<'de>>(map: &mut A, field: &str) -> Result<Duration, A::Error> {
    value::<DurationText, A>(map, field).map(|d| d.0)
}

impl Table for RetryPolicy {
    const WHAT: &'static str = "a retry policy table";
    const FIELDS: &'static [&'static str] = &[
        "max_attempts",
        "initial_delay",
        "multiplier",
        "max_delay",
        "jitter",
        "deadline",
        "max_retry_after",
        "throttled_initial_delay",
        "jitter_seed",
    ];

    fn set<'de, A: MapAccess<'de>>(&mut self, field: &str, map: &mut A) -> Result<(), A::Error> {
        // Every field named: a new one does not compile until it is read here.
        let RetryPolicy {
            max_attempts,
            initial_delay,
            multiplier,
            max_delay,
            jitter,
            deadline,
            max_retry_after,
            throttled_initial_delay,
            seed,
        } = self;
        match field {
            "max_attempts" => *max_attempts = value(map, field)?,
            "initial_delay" => *initial_delay = duration(map, field)?,
            "multiplier" => *multiplier = value(map, field)?,
            "max_delay" => *max_delay = duration(map, field)?,
            "jitter" => *jitter = value(map, field)?,
            "deadline" => *deadline = duration(map, field)?,
            "max_retry_after" => *max_retry_after = duration(map, field)?,
            "throttled_initial_delay" => *throttled_initial_delay = duration(map, field)?,
            "jitter_seed" => *seed = Some(value(map, field)?),
            other => return Err(unknown(other, Self::FIELDS)),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        self.field_problem()
            .map_or(Ok(()), |problem| Err(problem.to_owned()))
    }
}

impl<'de> Deserialize<'de> for RetryPolicy {
    /// From a table whose fields are those of the builder methods (`jitter_seed` for
    /// [`RetryPolicy::jitter_seed`]), every one optional; see [`ClientConfig`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        table(deserializer)
    }
}

impl Table for RetryBudget {
    const WHAT: &'static str = "a retry budget table";
    const FIELDS: &'static [&'static str] = &[
        "capacity",
        "transient_cost",
        "throttling_cost",
        "success_refund",
    ];

    fn set<'de, A: MapAccess<'de>>(&mut self, field: &str, map: &mut A) -> Result<(), A::Error> {
        // Every field named: a new one does not compile until it is read here.
        let RetryBudget {
            capacity,
            transient_cost,
            throttling_cost,
            success_refund,
        } = self;
        let slot = match field {
            "capacity" => capacity,
            "transient_cost" => transient_cost,
            "throttling_cost" => throttling_cost,
            "success_refund" => success_refund,
            other => return Err(unknown(other, Self::FIELDS)),
        };
        *slot = value(map, field)?;
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl<'de> Deserialize<'de> for RetryBudget {
    /// From a table with `capacity`, `transient_cost`, `throttling_cost` and `success_refund`
    /// (token counts), every one optional; see [`ClientConfig`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        table(deserializer)
    }
}

impl Table for ClientConfig {
    const WHAT: &'static str = "a client configuration table";
    const FIELDS: &'static [&'static str] = &[
        "retry_policy",
        "attempt_timeout",
        "max_response_bytes",
        "key_header",
        "key_format",
        "should_retry_header",
        "retry_budget",
        "max_origins",
    ];

    fn set<'de, A: MapAccess<'de>>(&mut self, field: &str, map: &mut A) -> Result<(), A::Error> {
        // Every field named: a new one does not compile until it is read here.
        let ClientConfig {
            retry_policy,
            attempt_timeout,
            max_response_bytes,
            key_header,
            key_format,
            should_retry_header,
            retry_budget,
            max_origins,
        } = self;
        match field {
            "retry_policy" => *retry_policy = value(map, field)?,
            "attempt_timeout" => *attempt_timeout = duration(map, field)?,
            "max_response_bytes" => *max_response_bytes = value(map, field)?,
            "key_header" => *key_header = header_name(field, value(map, field)?)?,
            "key_format" => *key_format = value(map, field)?,
            "should_retry_header" => {
                let name: String = value(map, field)?;
                *should_retry_header = match name.is_empty() {
                    true => None,
                    false => Some(header_name(field, name)?),
                };
            }
            "retry_budget" => *retry_budget = value(map, field)?,
            "max_origins" => *max_origins = value(map, field)?,
            other => return Err(unknown(other, Self::FIELDS)),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        if self.attempt_timeout.is_zero() {
            return Err("attempt_timeout: must be greater than zero".to_owned());
        }
        if self.max_origins == 0 {
            return Err("max_origins: must be at least 1".to_owned());
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for ClientConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        table(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Jitter;

    fn parse(text: &str) -> Result<ClientConfig, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn an_empty_table_is_the_defaults() {
        assert_eq!(parse("{}").unwrap(), ClientConfig::default());
    }

    #[test]
    fn every_field_is_read() {
        let config = parse(
            r#"{
                "retry_policy": {
                    "max_attempts": 7, "initial_delay": "20ms", "multiplier": 3.0,
                    "max_delay": "2s", "jitter": "decorrelated", "deadline": "1m",
                    "max_retry_after": "3s", "throttled_initial_delay": "700ms",
                    "jitter_seed": 42
                },
                "attempt_timeout": "1500ms",
                "max_response_bytes": 4096,
                "key_header": "X-Request-Key",
                "key_format": "structured_string",
                "should_retry_header": "",
                "max_origins": 7,
                "retry_budget": {
                    "capacity": 50, "transient_cost": 2, "throttling_cost": 4, "success_refund": 3
                }
            }"#,
        )
        .unwrap();
        let policy = RetryPolicy::exponential()
            .max_attempts(7)
            .initial_delay(Duration::from_millis(20))
            .multiplier(3.0)
            .max_delay(Duration::from_secs(2))
            .jitter(Jitter::Decorrelated)
            .deadline(Duration::from_secs(60))
            .max_retry_after(Duration::from_secs(3))
            .throttled_initial_delay(Duration::from_millis(700))
            .jitter_seed(42);
        assert_eq!(config.retry_policy, policy);
        assert_eq!(config.attempt_timeout, Duration::from_millis(1500));
        assert_eq!(config.max_response_bytes, 4096);
        assert_eq!(config.key_header, "x-request-key");
        assert_eq!(config.key_format, KeyFormat::StructuredString);
        assert_eq!(config.should_retry_header, None);
        assert_eq!(config.max_origins, 7);
        let budget = RetryBudget::new()
            .capacity(50)
            .transient_cost(2)
            .throttling_cost(4)
            .success_refund(3);
        assert_eq!(config.retry_budget, budget);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"attempt_timeout": "5"}"#,
                "attempt_timeout: \"5\" has no unit",
            ),
            (
                r#"{"attempt_timeout": 5}"#,
                "attempt_timeout: invalid type: integer `5`",
            ),
            (
                r#"{"attempt_timeout": "0s"}"#,
                "attempt_timeout: must be greater than zero",
            ),
            (
                r#"{"retry_policy": {"max_delay": "5 s"}}"#,
                "retry_policy.max_delay: \"5 s\" has an unknown unit",
            ),
            (
                r#"{"retry_policy": {"max_attempts": -1}}"#,
                "retry_policy.max_attempts: invalid value: integer `-1`",
            ),
            (
                r#"{"retry_policy": {"max_attempts": 0}}"#,
                "retry_policy.max_attempts: must be at least 1",
            ),
            (
                r#"{"retry_policy": {"initial_delay": "10s", "max_delay": "1s"}}"#,
                "retry_policy.initial_delay: must not exceed max_delay",
            ),
            (
                r#"{"retry_policy": {"jitter": "fuzzy"}}"#,
                "retry_policy.jitter: unknown variant `fuzzy`",
            ),
            (
                r#"{"retry_policy": {"max_atempts": 3}}"#,
                "retry_policy: unknown field `max_atempts`, expected one of",
            ),
            (
                r#"{"retry_budget": {"capacity": "lots"}}"#,
                "retry_budget.capacity: invalid type: string \"lots\"",
            ),
            (
                r#"{"key_header": "bad header"}"#,
                "key_header: \"bad header\" is not a header name",
            ),
            (
                r#"{"should_retry_header": "bad header"}"#,
                "should_retry_header: \"bad header\" is not a header name",
            ),
            (
                r#"{"key_header": ""}"#,
                "key_header: \"\" is not a header name",
            ),
            (r#"{"max_origins": 0}"#, "max_origins: must be at least 1"),
            (
                r#"{"key_format": "quoted"}"#,
                "key_format: unknown variant `quoted`",
            ),
            (
                r#"{"timeout": "1s"}"#,
                "unknown field `timeout`, expected one of",
            ),
            (
                r#"{"attempt_timeout": "1s", "attempt_timeout": "2s"}"#,
                "duplicate field `attempt_timeout`",
            ),
            (
                r#"{"retry_policy": 3}"#,
                "retry_policy: invalid type: integer `3`, expected a retry policy table",
            ),
        ];
        for (text, expected) in cases {
            let message = parse(text).unwrap_err();
            assert!(
                message.starts_with(expected),
                "{text}\n  gave {message:?}\n  wanted {expected:?}"
            );
        }
    }
}
