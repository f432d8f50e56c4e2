//! Settings from configuration files: [`RetryPolicy`], [`RetryBudget`] and
//! [`ClientConfig`] deserialize with serde from any format (TOML, JSON, YAML, …).
//!
//! The `Deserialize` impls are written out rather than derived, over `table.rs`, so
//! that every error starts with the field's path (`retry_policy.max_delay: …`), which
//! the derived ones do not say.

use std::time::Duration;

use http::HeaderName;
use serde::de::{Deserialize, Deserializer, MapAccess};

use crate::journaled::settings::DEFAULT_RESUME_CONCURRENCY;
use crate::retry::origins::DEFAULT_MAX_ORIGINS;
use crate::settings::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_KEY_HEADER, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_SHOULD_RETRY_HEADER,
};
use crate::table::{
    Table, duration, header_name, header_names, nested, optional_header_name, table, unknown, value,
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
/// | `resume_concurrency` | integer, at least 1: pending operations `resume_pending` sends at once | `16` |
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
    /// Pending operations `resume_pending` sends at once
    /// ([`resume_concurrency`](crate::IdempotentClientBuilder::resume_concurrency)).
    pub resume_concurrency: usize,
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
            resume_concurrency: DEFAULT_RESUME_CONCURRENCY,
        }
    }
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
        "resume_concurrency",
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
            resume_concurrency,
        } = self;
        match field {
            "retry_policy" => *retry_policy = nested(map, path)?,
            "attempt_timeout" => *attempt_timeout = duration(map, path)?,
            "max_response_bytes" => *max_response_bytes = value(map, path)?,
            "key_header" => *key_header = header_name(map, path)?,
            "key_format" => *key_format = value(map, path)?,
            "should_retry_header" => {
                *should_retry_header = optional_header_name(map, path)?;
            }
            "retry_budget" => *retry_budget = nested(map, path)?,
            "max_origins" => *max_origins = value(map, path)?,
            "circuit_breaker" => *circuit_breaker = Some(nested(map, path)?),
            "adaptive_rate_limit" => *adaptive_rate_limit = Some(nested(map, path)?),
            "hedging" => *hedging = Some(nested(map, path)?),
            "sensitive_headers" => *sensitive_headers = header_names(map, path)?,
            "scope_headers" => *scope_headers = header_names(map, path)?,
            "resume_concurrency" => *resume_concurrency = value(map, path)?,
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
        if self.resume_concurrency == 0 {
            return Err("resume_concurrency: must be at least 1".to_owned());
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
