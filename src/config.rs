//! Settings from configuration files: [`RetryPolicy`], [`RetryBudget`] and
//! [`ClientConfig`] deserialize with serde from any format (TOML, JSON, YAML, …).
//!
//! The `Deserialize` impls are written out rather than derived for one reason: the
//! derived ones report a bad value without saying which field it was in (serde's
//! messages name the type, not the field, and JSON and YAML loaders add no key path).
//! Here every error starts with the field's path, `retry_policy.max_delay: …`, whatever
//! the format and loader, and is made where the bad value is read, so that a format
//! that points at the value (TOML's line and column) still does when the settings sit
//! deep in an application's own file.

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
use crate::{AdaptiveRateLimit, CircuitBreaker, Hedging, KeyFormat, RetryBudget, RetryPolicy};

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
/// let typo = toml::from_str::<ClientConfig>("[retry_policy]\nmax_delay = \"5 secs please\"");
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
/// | `hedging` | table, see [`Hedging`] (`delay`, required; `max_hedges`, `keyed_methods`) | none: no hedging |
/// | `adaptive_rate_limit` | table, see [`AdaptiveRateLimit`] (`max_wait`); an empty table is its defaults | none: no limiter |
/// | `circuit_breaker` | table, see [`CircuitBreaker`] (`failure_ratio`, `minimum_throughput`, `sampling_window`, `break_duration`, `half_open_probes`, `max_break_duration`); an empty table is the breaker's defaults | none: no breaker |
/// | `retry_budget` | table, see [`RetryBudget`] (`capacity`, `transient_cost`, `throttling_cost`, `success_refund`; all costs 0 turns it off) | [`RetryBudget::default`] |
/// | `sensitive_headers` | list of header names, never journalled (besides `Authorization`, `Proxy-Authorization`, `Cookie`) | `[]` |
/// | `scope_headers` | list of header names whose values scope a journalled operation (besides `Stripe-Account`) | `[]` |
///
/// The journal's own settings (lease, resume age, resumes, retention) are a
/// [`JournalConfig`](crate::journal::JournalConfig), given to the journal's builder.
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
    /// The circuit breaker per origin, if any.
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Adaptive rate limiting per origin, if any.
    pub adaptive_rate_limit: Option<AdaptiveRateLimit>,
    /// Hedging, if any.
    pub hedging: Option<Hedging>,
    /// Headers never written to a journal besides `Authorization`,
    /// `Proxy-Authorization` and `Cookie`
    /// ([`sensitive_header`](crate::IdempotentClientBuilder::sensitive_header)).
    pub sensitive_headers: Vec<HeaderName>,
    /// Headers whose values scope a journalled operation besides `Stripe-Account`
    /// ([`scope_header`](crate::IdempotentClientBuilder::scope_header)).
    pub scope_headers: Vec<HeaderName>,
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
            circuit_breaker: None,
            adaptive_rate_limit: None,
            hedging: None,
            sensitive_headers: Vec::new(),
            scope_headers: Vec::new(),
        }
    }
}

/// A settings table: its fields, how to set one from the file, and what to check once
/// all are read.
pub(crate) trait Table: Default {
    /// What it is, for "expected …" messages.
    const WHAT: &'static str;
    const FIELDS: &'static [&'static str];

    /// Reads the value of `field`, one of [`Self::FIELDS`]; `path` is the field's path
    /// from the outermost table of ours (`retry_policy.max_delay`).
    fn set<'de, A: MapAccess<'de>>(
        &mut self,
        field: &str,
        path: &str,
        map: &mut A,
    ) -> Result<(), A::Error>;

    /// Checks the whole table; the message starts with the field at fault. A table
    /// whose every value is valid on its own has nothing to check.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// `field` under `path`: `retry_policy.max_delay`, or `max_delay` at the top.
fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// `message` prefixed with `path`, as every error of ours starts.
fn at<E: de::Error>(path: &str, message: impl fmt::Display) -> E {
    if path.is_empty() {
        E::custom(message)
    } else {
        E::custom(format_args!("{path}: {message}"))
    }
}

/// Deserializes a [`Table`] found at `path` from a map: unknown and repeated fields are
/// errors, and so is a table that fails its check.
///
/// Every message is made where the error happens, never by rewrapping an error on its
/// way out: a format that points at the offending value (TOML's line and column, with
/// the value underlined) attaches that place as the error leaves the value, and a
/// rewrapped error would point at the enclosing table instead.
pub(crate) fn table<'de, T: Table, D: Deserializer<'de>>(
    deserializer: D,
    path: &str,
) -> Result<T, D::Error> {
    struct TableVisitor<'p, T>(&'p str, PhantomData<T>);

    impl<'de, T: Table> Visitor<'de> for TableVisitor<'_, T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(T::WHAT)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            let path = self.0;
            let mut table = T::default();
            let mut seen = Vec::with_capacity(T::FIELDS.len());
            while let Some(key) = map.next_key::<String>()? {
                let Some(&field) = T::FIELDS.iter().find(|f| **f == key) else {
                    let unknown: A::Error = de::Error::unknown_field(&key, T::FIELDS);
                    return Err(at(path, unknown));
                };
                if seen.contains(&field) {
                    let duplicate: A::Error = de::Error::duplicate_field(field);
                    return Err(at(path, duplicate));
                }
                seen.push(field);
                table.set(field, &join(path, field), &mut map)?;
            }
            table
                .check()
                .map_err(|problem| de::Error::custom(join(path, &problem)))?;
            Ok(table)
        }
    }

    // Read as whatever the file holds, so that a value where a table belongs
    // (`retry_policy = 3`) reaches the visitor, whose refusal names the path.
    deserializer.deserialize_any(Prefixed::new(path, TableVisitor(path, PhantomData)))
}

/// Reads the next value of `map`, found at `path`: a plain value, or a nested table of
/// ours. Its errors start with `path`.
pub(crate) fn value<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    map: &mut A,
    path: &str,
) -> Result<T, A::Error> {
    map.next_value_seed(AtPath(path, PhantomData))
}

/// `T` deserialized with every error its visitor makes prefixed with the path.
struct AtPath<'p, T>(&'p str, PhantomData<T>);

impl<'de, T: Deserialize<'de>> de::DeserializeSeed<'de> for AtPath<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        T::deserialize(PathDeserializer {
            inner: deserializer,
            path: self.0,
        })
    }
}

/// A deserializer that hands the format a [`Prefixed`] visitor.
struct PathDeserializer<'p, D> {
    inner: D,
    path: &'p str,
}

/// Forwards `deserialize_*` methods to the inner deserializer with the visitor wrapped.
macro_rules! forward_prefixed {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method($($arg,)* Prefixed::new(self.path, visitor))
        }
    )*};
}

/// Forwards `deserialize_*` methods to the inner deserializer's `deserialize_any`.
macro_rules! forward_any {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.deserialize_any(Prefixed::new(self.path, visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for PathDeserializer<'_, D> {
    type Error = D::Error;

    // Numbers, booleans and text are read as whatever the file holds (configuration
    // formats describe themselves): a value of the wrong type then reaches the visitor,
    // whose error names the path, instead of being refused by the format first.
    forward_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32
        deserialize_f64 deserialize_char deserialize_str deserialize_string
        deserialize_identifier
    }

    forward_prefixed! {
        deserialize_any(); deserialize_bytes(); deserialize_byte_buf(); deserialize_option();
        deserialize_unit(); deserialize_seq(); deserialize_map(); deserialize_ignored_any();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A visitor whose errors start with the path of the value it reads. A map is passed
/// through as is: a nested table of ours prefixes its own errors, deeper and more
/// precisely.
struct Prefixed<'p, V> {
    path: &'p str,
    inner: V,
}

impl<'p, V> Prefixed<'p, V> {
    fn new(path: &'p str, inner: V) -> Self {
        Self { path, inner }
    }
}

/// Forwards `visit_*` methods of one argument, prefixing their errors.
macro_rules! visit_prefixed {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            let path = self.path;
            self.inner.$method::<E>(v).map_err(|e| at(path, e))
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Prefixed<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    visit_prefixed! {
        visit_bool(bool); visit_i64(i64); visit_u64(u64); visit_f64(f64);
        visit_str(&str); visit_borrowed_str(&'de str); visit_string(String);
        visit_bytes(&[u8]); visit_byte_buf(Vec<u8>);
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        let path = self.path;
        self.inner.visit_unit::<E>().map_err(|e| at(path, e))
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        let path = self.path;
        self.inner.visit_none::<E>().map_err(|e| at(path, e))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        let path = self.path;
        self.inner.visit_some(d).map_err(|e| at(path, e))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let path = self.path;
        self.inner.visit_seq(seq).map_err(|e| at(path, e))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(map)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        let path = self.path;
        self.inner.visit_enum(data).map_err(|e| at(path, e))
    }
}

/// A field name outside a table's list. The table's reader refuses those before it
/// calls `set`; `set` refuses them too rather than guess.
pub(crate) fn unknown<E: de::Error>(field: &str, expected: &'static [&'static str]) -> E {
    E::unknown_field(field, expected)
}

/// A setting written as text, read through [`Text`].
trait FromText: Sized {
    /// What the text should be, for "expected …" messages.
    const EXPECTING: &'static str;

    fn from_text(text: &str) -> Result<Self, String>;
}

impl FromText for Duration {
    const EXPECTING: &'static str = "a duration such as \"250ms\" or \"30s\"";

    fn from_text(text: &str) -> Result<Self, String> {
        parse_duration(text)
    }
}

/// A header name; the empty text is `None` (for a field where that means "none").
impl FromText for Option<HeaderName> {
    const EXPECTING: &'static str = "a header name";

    fn from_text(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Ok(None);
        }
        HeaderName::try_from(name)
            .map(Some)
            .map_err(|e| format!("{name:?} is not a header name: {e}"))
    }
}

/// A `T` read from text; its error made by the visitor, where the value is.
struct Text<T>(T);

impl<'de, T: FromText> Deserialize<'de> for Text<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<T>(PhantomData<T>);

        impl<T: FromText> Visitor<'_> for TextVisitor<T> {
            type Value = Text<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Text<T>, E> {
                T::from_text(text).map(Text).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(TextVisitor(PhantomData))
    }
}

pub(crate) fn duration<'de, A: MapAccess<'de>>(
    map: &mut A,
    path: &str,
) -> Result<Duration, A::Error> {
    value::<Text<Duration>, A>(map, path).map(|d| d.0)
}

/// A header name that must be given (the empty text is not one).
fn header_name<'de, A: MapAccess<'de>>(map: &mut A, path: &str) -> Result<HeaderName, A::Error> {
    value::<Text<Option<HeaderName>>, A>(map, path)?
        .0
        .ok_or_else(|| at(path, "\"\" is not a header name: it is empty"))
}

/// A list of header names, none of them empty.
fn header_names<'de, A: MapAccess<'de>>(
    map: &mut A,
    path: &str,
) -> Result<Vec<HeaderName>, A::Error> {
    value::<Vec<Text<Option<HeaderName>>>, A>(map, path)?
        .into_iter()
        .map(|name| {
            name.0
                .ok_or_else(|| at(path, "\"\" is not a header name: it is empty"))
        })
        .collect()
}

/// A nested table of ours at `path`.
struct Nested<'p, T>(&'p str, PhantomData<T>);

impl<'de, T: Table> de::DeserializeSeed<'de> for Nested<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        table(deserializer, self.0)
    }
}

fn nested<'de, T: Table, A: MapAccess<'de>>(map: &mut A, path: &str) -> Result<T, A::Error> {
    map.next_value_seed(Nested(path, PhantomData))
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

    fn set<'de, A: MapAccess<'de>>(
        &mut self,
        field: &str,
        path: &str,
        map: &mut A,
    ) -> Result<(), A::Error> {
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
            "max_attempts" => *max_attempts = value(map, path)?,
            "initial_delay" => *initial_delay = duration(map, path)?,
            "multiplier" => *multiplier = value(map, path)?,
            "max_delay" => *max_delay = duration(map, path)?,
            "jitter" => *jitter = value(map, path)?,
            "deadline" => *deadline = duration(map, path)?,
            "max_retry_after" => *max_retry_after = duration(map, path)?,
            "throttled_initial_delay" => *throttled_initial_delay = duration(map, path)?,
            "jitter_seed" => *seed = Some(value(map, path)?),
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
        table(deserializer, "")
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

    fn set<'de, A: MapAccess<'de>>(
        &mut self,
        field: &str,
        path: &str,
        map: &mut A,
    ) -> Result<(), A::Error> {
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
        *slot = value(map, path)?;
        Ok(())
    }
}

impl<'de> Deserialize<'de> for RetryBudget {
    /// From a table with `capacity`, `transient_cost`, `throttling_cost` and `success_refund`
    /// (token counts), every one optional; see [`ClientConfig`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        table(deserializer, "")
    }
}

impl Table for CircuitBreaker {
    const WHAT: &'static str = "a circuit breaker table";
    const FIELDS: &'static [&'static str] = &[
        "failure_ratio",
        "minimum_throughput",
        "sampling_window",
        "break_duration",
        "half_open_probes",
        "max_break_duration",
    ];

    fn set<'de, A: MapAccess<'de>>(
        &mut self,
        field: &str,
        path: &str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        // Every field named: a new one does not compile until it is read here.
        let CircuitBreaker {
            failure_ratio,
            minimum_throughput,
            sampling_window,
            break_duration,
            half_open_probes,
            max_break_duration,
        } = self;
        match field {
            "failure_ratio" => *failure_ratio = value(map, path)?,
            "minimum_throughput" => *minimum_throughput = value(map, path)?,
            "sampling_window" => *sampling_window = duration(map, path)?,
            "break_duration" => *break_duration = duration(map, path)?,
            "half_open_probes" => *half_open_probes = value(map, path)?,
            "max_break_duration" => *max_break_duration = duration(map, path)?,
            other => return Err(unknown(other, Self::FIELDS)),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        self.problem().map_or(Ok(()), Err)
    }
}

impl<'de> Deserialize<'de> for CircuitBreaker {
    /// From a table whose fields are those of the builder methods, every one optional.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        table(deserializer, "")
    }
}

impl Table for AdaptiveRateLimit {
    const WHAT: &'static str = "an adaptive rate limit table";
    const FIELDS: &'static [&'static str] = &["max_wait"];

    fn set<'de, A: MapAccess<'de>>(
        &mut self,
        field: &str,
        path: &str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        // Every field named: a new one does not compile until it is read here.
        let AdaptiveRateLimit { max_wait } = self;
        match field {
            "max_wait" => *max_wait = duration(map, path)?,
            other => return Err(unknown(other, Self::FIELDS)),
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for AdaptiveRateLimit {
    /// From a table with `max_wait`, optional.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        table(deserializer, "")
    }
}

impl Table for Hedging {
    const WHAT: &'static str = "a hedging table";
    const FIELDS: &'static [&'static str] = &["delay", "max_hedges", "keyed_methods"];

    fn set<'de, A: MapAccess<'de>>(
        &mut self,
        field: &str,
        path: &str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        // Every field named: a new one does not compile until it is read here.
        let Hedging {
            delay,
            max_hedges,
            keyed_methods,
        } = self;
        match field {
            "delay" => *delay = duration(map, path)?,
            "max_hedges" => *max_hedges = value(map, path)?,
            "keyed_methods" => *keyed_methods = value(map, path)?,
            other => return Err(unknown(other, Self::FIELDS)),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        // The delay against the attempt timeout is for `build`, which knows both.
        self.problem(None).map_or(Ok(()), Err)
    }
}

impl<'de> Deserialize<'de> for Hedging {
    /// From a table with `delay` (required), `max_hedges` and `keyed_methods`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        table(deserializer, "")
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
        "circuit_breaker",
        "adaptive_rate_limit",
        "hedging",
        "sensitive_headers",
        "scope_headers",
    ];

    fn set<'de, A: MapAccess<'de>>(
        &mut self,
        field: &str,
        path: &str,
        map: &mut A,
    ) -> Result<(), A::Error> {
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
            circuit_breaker,
            adaptive_rate_limit,
            hedging,
            sensitive_headers,
            scope_headers,
        } = self;
        match field {
            "retry_policy" => *retry_policy = nested(map, path)?,
            "attempt_timeout" => *attempt_timeout = duration(map, path)?,
            "max_response_bytes" => *max_response_bytes = value(map, path)?,
            "key_header" => *key_header = header_name(map, path)?,
            "key_format" => *key_format = value(map, path)?,
            "should_retry_header" => {
                *should_retry_header = value::<Text<Option<HeaderName>>, A>(map, path)?.0;
            }
            "retry_budget" => *retry_budget = nested(map, path)?,
            "max_origins" => *max_origins = value(map, path)?,
            "circuit_breaker" => *circuit_breaker = Some(nested(map, path)?),
            "adaptive_rate_limit" => *adaptive_rate_limit = Some(nested(map, path)?),
            "hedging" => *hedging = Some(nested(map, path)?),
            "sensitive_headers" => *sensitive_headers = header_names(map, path)?,
            "scope_headers" => *scope_headers = header_names(map, path)?,
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
        table(deserializer, "")
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
                },
                "circuit_breaker": {
                    "failure_ratio": 0.25, "minimum_throughput": 8, "sampling_window": "20s",
                    "break_duration": "2s", "half_open_probes": 3, "max_break_duration": "30s"
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
        let breaker = CircuitBreaker::new()
            .failure_ratio(0.25)
            .minimum_throughput(8)
            .sampling_window(Duration::from_secs(20))
            .break_duration(Duration::from_secs(2))
            .half_open_probes(3)
            .max_break_duration(Duration::from_secs(30));
        assert_eq!(config.circuit_breaker, Some(breaker));
        let defaults = parse(r#"{"circuit_breaker": {}, "adaptive_rate_limit": {}}"#).unwrap();
        assert_eq!(defaults.circuit_breaker, Some(CircuitBreaker::new()));
        assert_eq!(defaults.adaptive_rate_limit, Some(AdaptiveRateLimit::new()));
        let hedging =
            parse(r#"{"hedging": {"delay": "150ms", "max_hedges": 2, "keyed_methods": true}}"#)
                .unwrap()
                .hedging;
        let expected = Hedging::after(Duration::from_millis(150))
            .max_hedges(2)
            .keyed_methods(true);
        assert_eq!(hedging, Some(expected));
        let limit = parse(r#"{"adaptive_rate_limit": {"max_wait": "250ms"}}"#).unwrap();
        let expected = AdaptiveRateLimit::new().max_wait(Duration::from_millis(250));
        assert_eq!(limit.adaptive_rate_limit, Some(expected));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"attempt_timeout": "5"}"#,
                "attempt_timeout: \"5\" is not a duration: time unit needed",
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
                r#"{"retry_policy": {"max_delay": "5 lightyears"}}"#,
                "retry_policy.max_delay: \"5 lightyears\" is not a duration: unknown time unit \"lightyears\"",
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
                r#"{"circuit_breaker": {"failure_ratio": 2}}"#,
                "circuit_breaker.failure_ratio must be in (0, 1], got 2",
            ),
            (
                r#"{"hedging": {"max_hedges": 1}}"#,
                "hedging.delay must be more than zero",
            ),
            (
                r#"{"circuit_breaker": {"break_duration": "soon"}}"#,
                "circuit_breaker.break_duration: \"soon\" is not a duration",
            ),
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
