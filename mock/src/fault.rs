//! Fault injection: what can go wrong on the wire, scripted or drawn at random.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{DATE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use serde::Deserialize;

use super::response::{Body, Dropped, problem};
use super::socket::Sabotage;
use crate::parse_duration;
use crate::rng::SplitMix64;

/// Something that goes wrong with one POST/PATCH request.
///
/// *Before processing* faults answer without executing anything. *After processing*
/// faults let the operation execute and store its result, then spoil the answer: that
/// is the lost-response case idempotency keys exist for. Faults change what goes on the
/// wire; they never make a stored key execute again.
///
/// The status faults take an [`http::StatusCode`], re-exported as
/// [`mock::StatusCode`](crate::StatusCode):
///
/// ```
/// use idempotent_retry_mock::{Fault, MockServer, StatusCode};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let server = MockServer::start().await;
/// server.inject(Fault::StatusBeforeProcessing(StatusCode::SERVICE_UNAVAILABLE), 1);
/// // From a number: `StatusCode::from_u16` refuses what is not a status (below 100,
/// // above 999).
/// let bad_gateway = StatusCode::from_u16(502).expect("a valid status");
/// server.inject(Fault::StatusAfterProcessing(bad_gateway), 1);
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this status (a `problem+json` body) without executing.
    StatusBeforeProcessing(StatusCode),
    /// Execute and store, then answer with this status instead of the result.
    StatusAfterProcessing(StatusCode),
    /// Execute and store, then wait this long before answering (the client times out).
    DelayAfterProcessing(Duration),
    /// Close the connection without answering and without executing.
    DropBeforeProcessing,
    /// Execute and store, then close the connection without answering.
    DropAfterProcessing,
    /// Answer `429 Too Many Requests` with `Retry-After` (whole seconds, rounded up),
    /// without executing.
    RateLimited {
        /// The wait the server asks for.
        retry_after: Duration,
    },
    /// Wait this long before processing (a stalled server or a slow queue), then go on
    /// as usual. A client that gives up meanwhile and closes the connection cancels the
    /// request before it executes.
    DelayBeforeProcessing(Duration),
    /// Close the connection with a reset (TCP RST, "connection reset by peer") without
    /// answering and without executing.
    ResetBeforeProcessing,
    /// Execute and store, then reset the connection (TCP RST) instead of answering.
    ResetAfterProcessing,
    /// Execute and store, then send the answer's head and about half its body, and
    /// close: the declared `Content-Length` is never reached.
    TruncateAfterProcessing,
    /// Execute and store, then send bytes that are not HTTP instead of the answer.
    GarbageAfterProcessing,
}

impl Fault {
    /// One of each kind, with the parameters the random plan uses by default: 503
    /// before, 500 after, `delay` before and after, drops, resets, 429 asking for
    /// `retry_after`, a truncated answer and garbage.
    #[must_use]
    pub fn all_kinds(delay: Duration, retry_after: Duration) -> [Fault; 11] {
        [
            Fault::StatusBeforeProcessing(StatusCode::SERVICE_UNAVAILABLE),
            Fault::StatusAfterProcessing(StatusCode::INTERNAL_SERVER_ERROR),
            Fault::DelayAfterProcessing(delay),
            Fault::DropBeforeProcessing,
            Fault::DropAfterProcessing,
            Fault::RateLimited { retry_after },
            Fault::DelayBeforeProcessing(delay),
            Fault::ResetBeforeProcessing,
            Fault::ResetAfterProcessing,
            Fault::TruncateAfterProcessing,
            Fault::GarbageAfterProcessing,
        ]
    }

    /// The fault's name, as `POST /__admin/faults` and the request log line spell it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Fault::StatusBeforeProcessing(_) => "status_before_processing",
            Fault::StatusAfterProcessing(_) => "status_after_processing",
            Fault::DelayAfterProcessing(_) => "delay_after_processing",
            Fault::DropBeforeProcessing => "drop_before_processing",
            Fault::DropAfterProcessing => "drop_after_processing",
            Fault::RateLimited { .. } => "rate_limited",
            Fault::DelayBeforeProcessing(_) => "delay_before_processing",
            Fault::ResetBeforeProcessing => "reset_before_processing",
            Fault::ResetAfterProcessing => "reset_after_processing",
            Fault::TruncateAfterProcessing => "truncate_after_processing",
            Fault::GarbageAfterProcessing => "garbage_after_processing",
        }
    }

    /// The fault sorted by when it acts. Every kind is named here, so a new kind does
    /// not compile until it is given its phase.
    pub(crate) fn phase(&self) -> Phase {
        match *self {
            Fault::StatusBeforeProcessing(status) => Phase::Before(Before::Status(status)),
            Fault::DropBeforeProcessing => Phase::Before(Before::Drop),
            Fault::RateLimited { retry_after } => Phase::Before(Before::RateLimited(retry_after)),
            Fault::DelayBeforeProcessing(delay) => Phase::Before(Before::Delay(delay)),
            Fault::ResetBeforeProcessing => Phase::Before(Before::Reset),
            Fault::StatusAfterProcessing(status) => Phase::After(After::Status(status)),
            Fault::DelayAfterProcessing(delay) => Phase::After(After::Delay(delay)),
            Fault::DropAfterProcessing => Phase::After(After::Drop),
            Fault::ResetAfterProcessing => Phase::After(After::Reset),
            Fault::TruncateAfterProcessing => Phase::After(After::Truncate),
            Fault::GarbageAfterProcessing => Phase::After(After::Garbage),
        }
    }
}

/// `rate` spread evenly over every kind of [`Fault::all_kinds`], with the parameters
/// the random plan uses by default (2 s delays, `Retry-After: 1`).
pub(crate) fn spread(rate: f64) -> Vec<(Fault, f64)> {
    let kinds = Fault::all_kinds(Duration::from_secs(2), Duration::from_secs(1));
    let each = rate / kinds.len() as f64;
    kinds.into_iter().map(|f| (f, each)).collect()
}

/// When a fault acts: before the operation executes, or after, on its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Before(Before),
    After(After),
}

/// A fault that acts before the operation: most answer in its place, and it does not
/// execute; a delay only holds it up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Before {
    Status(StatusCode),
    Drop,
    RateLimited(Duration),
    Delay(Duration),
    Reset,
}

impl Before {
    /// Holds the request up for a delay (`None`: go on), or the answer instead of the
    /// operation's; `dates` writes `Retry-After` as an HTTP-date with a `Date` beside
    /// it.
    pub(crate) async fn act(
        self,
        dates: bool,
        sabotage: &Sabotage,
    ) -> Option<Result<Response<Body>, Dropped>> {
        Some(match self {
            Before::Delay(delay) => {
                tokio::time::sleep(delay).await;
                return None;
            }
            Before::Reset => {
                sabotage.reset();
                Err(Dropped)
            }
            Before::Status(status) => Ok(problem(
                status,
                "Injected fault",
                "status before processing",
            )),
            Before::Drop => Err(Dropped),
            Before::RateLimited(retry_after) => {
                let mut response = problem(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests",
                    "injected rate limit; retry after the time in Retry-After",
                );
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                let headers = response.headers_mut();
                if dates {
                    // Both in whole seconds, so the date is exactly `secs` after `Date`.
                    let now = SystemTime::now();
                    let whole = now - Duration::from_nanos(u64::from(now_subsec(now)));
                    let at = whole + Duration::from_secs(secs);
                    for (name, time) in [(DATE, whole), (RETRY_AFTER, at)] {
                        if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(time)) {
                            headers.insert(name, value);
                        }
                    }
                } else {
                    headers.insert(RETRY_AFTER, HeaderValue::from(secs));
                }
                Ok(response)
            }
        })
    }
}

/// The sub-second part of `time` (zero before the epoch, which no test clock is).
fn now_subsec(time: SystemTime) -> u32 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// A fault that lets the operation execute and be stored, then spoils its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum After {
    Status(StatusCode),
    Delay(Duration),
    Drop,
    Reset,
    Truncate,
    Garbage,
}

impl After {
    /// The fault's name, as `POST /__admin/faults` spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            After::Status(_) => "status_after_processing",
            After::Delay(_) => "delay_after_processing",
            After::Drop => "drop_after_processing",
            After::Reset => "reset_after_processing",
            After::Truncate => "truncate_after_processing",
            After::Garbage => "garbage_after_processing",
        }
    }

    /// What becomes of the answer the request earned.
    pub(crate) async fn spoil(
        self,
        earned: Response<Body>,
        sabotage: &Sabotage,
    ) -> Result<Response<Body>, Dropped> {
        match self {
            After::Reset => {
                sabotage.reset();
                Err(Dropped)
            }
            After::Truncate => Ok(super::response::truncated(earned)),
            After::Garbage => {
                sabotage.garbage();
                Ok(earned)
            }
            After::Status(status) => Ok(problem(
                status,
                "Injected fault",
                "status after processing: the operation did run",
            )),
            After::Delay(delay) => {
                tokio::time::sleep(delay).await;
                Ok(earned)
            }
            After::Drop => Err(Dropped),
        }
    }
}

/// Faults drawn at random, each with its own probability per request, from a seed.
#[derive(Clone, Debug)]
pub(crate) struct RandomFaults {
    rng: SplitMix64,
    /// Cumulative probabilities: a draw below `bound` picks `fault`.
    table: Vec<(f64, Fault)>,
}

impl RandomFaults {
    /// `None` with a reason when a rate is not in `[0, 1]` or they add up past 1.
    pub(crate) fn new(seed: u64, rates: &[(Fault, f64)]) -> Result<Self, String> {
        let mut total = 0.0;
        let mut table = Vec::with_capacity(rates.len());
        for (fault, rate) in rates {
            if !(0.0..=1.0).contains(rate) {
                return Err(format!(
                    "fault rate {rate} for {fault:?} is not between 0 and 1"
                ));
            }
            total += rate;
            table.push((total, fault.clone()));
        }
        if total > 1.0 + 1e-9 {
            return Err(format!("fault rates add up to {total}, more than 1"));
        }
        Ok(Self {
            rng: SplitMix64::new(seed),
            table,
        })
    }

    pub(crate) fn draw(&mut self) -> Option<Fault> {
        let u = self.rng.unit();
        self.table
            .iter()
            .find(|(bound, _)| u < *bound)
            .map(|(_, fault)| fault.clone())
    }
}

/// Scripted faults first, in order; then the random plan, if any.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub(crate) scripted: VecDeque<Fault>,
    pub(crate) random: Option<RandomFaults>,
}

impl Faults {
    pub(crate) fn inject(&mut self, fault: Fault, times: usize) {
        self.scripted.extend(std::iter::repeat_n(fault, times));
    }

    pub(crate) fn next(&mut self) -> Option<Fault> {
        self.scripted
            .pop_front()
            .or_else(|| self.random.as_mut().and_then(RandomFaults::draw))
    }
}

/// The body of `POST /__admin/faults`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultRequest {
    /// The route the fault is aimed at (a name or `METHOD path`); none: any request.
    pub(crate) route: Option<String>,
    fault: String,
    #[serde(default = "one")]
    times: usize,
    status: Option<u16>,
    delay: Option<String>,
    retry_after: Option<String>,
}

fn one() -> usize {
    1
}

/// Most faults one admin call may queue, so a typo cannot allocate without limit.
const MAX_TIMES: usize = 1_000_000;

impl FaultRequest {
    /// The fault and how many times to inject it, or why the request is wrong.
    pub(crate) fn into_fault(self) -> Result<(Fault, usize), String> {
        if self.times > MAX_TIMES {
            return Err(format!("times is {}; at most {MAX_TIMES}", self.times));
        }
        let status = || -> Result<StatusCode, String> {
            let code = self
                .status
                .ok_or_else(|| format!("{} needs \"status\"", self.fault))?;
            super::response::final_status(code)
                .ok_or_else(|| format!("status {code} is not a final HTTP status (200..=999)"))
        };
        let duration = |field: &Option<String>, name: &str| -> Result<Duration, String> {
            let text = field
                .as_deref()
                .ok_or_else(|| format!("{} needs \"{name}\"", self.fault))?;
            parse_duration(text).map_err(|e| format!("{name}: {e}"))
        };
        let fault = match self.fault.as_str() {
            "status_before_processing" => Fault::StatusBeforeProcessing(status()?),
            "status_after_processing" => Fault::StatusAfterProcessing(status()?),
            "delay_after_processing" => {
                Fault::DelayAfterProcessing(duration(&self.delay, "delay")?)
            }
            "drop_before_processing" => Fault::DropBeforeProcessing,
            "drop_after_processing" => Fault::DropAfterProcessing,
            "delay_before_processing" => {
                Fault::DelayBeforeProcessing(duration(&self.delay, "delay")?)
            }
            "reset_before_processing" => Fault::ResetBeforeProcessing,
            "reset_after_processing" => Fault::ResetAfterProcessing,
            "truncate_after_processing" => Fault::TruncateAfterProcessing,
            "garbage_after_processing" => Fault::GarbageAfterProcessing,
            "rate_limited" => Fault::RateLimited {
                retry_after: duration(&self.retry_after, "retry_after")?,
            },
            other => {
                return Err(format!(
                    "unknown fault {other:?}; expected one of status_before_processing, \
                     status_after_processing, delay_before_processing, delay_after_processing, \
                     drop_before_processing, drop_after_processing, reset_before_processing, \
                     reset_after_processing, truncate_after_processing, \
                     garbage_after_processing, rate_limited"
                ));
            }
        };
        Ok((fault, self.times))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Result<(Fault, usize), String> {
        serde_json::from_str::<FaultRequest>(json)
            .map_err(|e| e.to_string())?
            .into_fault()
    }

    #[test]
    fn admin_json_for_every_kind() {
        assert_eq!(
            request(r#"{"fault": "drop_after_processing", "times": 2}"#),
            Ok((Fault::DropAfterProcessing, 2))
        );
        assert_eq!(
            request(r#"{"fault": "status_after_processing", "status": 503, "times": 1}"#),
            Ok((
                Fault::StatusAfterProcessing(StatusCode::SERVICE_UNAVAILABLE),
                1
            ))
        );
        assert_eq!(
            request(r#"{"fault": "delay_after_processing", "delay": "500ms"}"#),
            Ok((Fault::DelayAfterProcessing(Duration::from_millis(500)), 1))
        );
        assert_eq!(
            request(r#"{"fault": "rate_limited", "retry_after": "1s", "times": 3}"#),
            Ok((
                Fault::RateLimited {
                    retry_after: Duration::from_secs(1)
                },
                3
            ))
        );
        assert_eq!(
            request(r#"{"fault": "status_before_processing", "status": 502}"#),
            Ok((Fault::StatusBeforeProcessing(StatusCode::BAD_GATEWAY), 1))
        );
        assert_eq!(
            request(r#"{"fault": "drop_before_processing"}"#),
            Ok((Fault::DropBeforeProcessing, 1))
        );
        assert_eq!(
            request(r#"{"fault": "delay_before_processing", "delay": "40ms"}"#),
            Ok((Fault::DelayBeforeProcessing(Duration::from_millis(40)), 1))
        );
        for (name, fault) in [
            ("reset_before_processing", Fault::ResetBeforeProcessing),
            ("reset_after_processing", Fault::ResetAfterProcessing),
            ("truncate_after_processing", Fault::TruncateAfterProcessing),
            ("garbage_after_processing", Fault::GarbageAfterProcessing),
        ] {
            let json = format!(r#"{{"fault": "{name}", "times": 2}}"#);
            assert_eq!(request(&json), Ok((fault, 2)));
        }
    }

    #[test]
    fn admin_json_errors_say_what_is_wrong() {
        for (json, needle) in [
            (r#"{"fault": "explode"}"#, "unknown fault"),
            (
                r#"{"fault": "status_after_processing"}"#,
                "needs \"status\"",
            ),
            (
                r#"{"fault": "status_after_processing", "status": 99}"#,
                "not a final",
            ),
            (
                r#"{"fault": "delay_after_processing", "delay": "soon"}"#,
                "delay",
            ),
            (r#"{"fault": "rate_limited"}"#, "retry_after"),
            (
                r#"{"fault": "drop_after_processing", "times": 99999999}"#,
                "at most",
            ),
            (
                r#"{"fault": "drop_after_processing", "color": "red"}"#,
                "unknown field",
            ),
            (r#"{"times": 1}"#, "missing field"),
            (r#"[1, 2]"#, "invalid type"),
        ] {
            let err = request(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn scripted_faults_come_first_and_in_order() {
        let mut faults = Faults {
            random: Some(RandomFaults::new(1, &[(Fault::DropBeforeProcessing, 1.0)]).unwrap()),
            ..Faults::default()
        };
        faults.inject(Fault::DropAfterProcessing, 2);
        faults.inject(Fault::StatusBeforeProcessing(StatusCode::BAD_GATEWAY), 1);
        assert_eq!(faults.next(), Some(Fault::DropAfterProcessing));
        assert_eq!(faults.next(), Some(Fault::DropAfterProcessing));
        assert_eq!(
            faults.next(),
            Some(Fault::StatusBeforeProcessing(StatusCode::BAD_GATEWAY))
        );
        assert_eq!(faults.next(), Some(Fault::DropBeforeProcessing));
    }

    #[test]
    fn random_plan_is_seeded_and_follows_rates() {
        let rates = [
            (Fault::DropBeforeProcessing, 0.2),
            (Fault::DropAfterProcessing, 0.1),
        ];
        let draws = |seed| {
            let mut plan = RandomFaults::new(seed, &rates).unwrap();
            (0..10_000).map(|_| plan.draw()).collect::<Vec<_>>()
        };
        let a = draws(9);
        assert_eq!(a, draws(9));
        assert_ne!(a, draws(10));
        let before = a
            .iter()
            .filter(|f| **f == Some(Fault::DropBeforeProcessing))
            .count();
        let after = a
            .iter()
            .filter(|f| **f == Some(Fault::DropAfterProcessing))
            .count();
        assert!((1_800..2_200).contains(&before), "{before}");
        assert!((850..1_150).contains(&after), "{after}");
        assert!(
            RandomFaults::new(
                1,
                &[
                    (Fault::DropAfterProcessing, 0.7),
                    (Fault::DropBeforeProcessing, 0.7)
                ]
            )
            .is_err()
        );
        assert!(RandomFaults::new(1, &[(Fault::DropAfterProcessing, -0.1)]).is_err());
    }
}

#[cfg(test)]
mod fuzz_by_property {
    use super::*;
    use proptest::prelude::*;

    fn field() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u16>().prop_map(serde_json::Value::from),
            "[a-z_]{0,30}".prop_map(serde_json::Value::from),
            "[0-9]{1,12}(ms|s|m|h|d|)".prop_map(serde_json::Value::from),
        ]
    }

    proptest! {
        #[test]
        fn admin_json_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(request) = serde_json::from_slice::<FaultRequest>(&bytes) {
                let _ = request.into_fault();
            }
        }

        #[test]
        fn admin_json_never_panics_on_near_misses(
            fault in prop_oneof![
                Just("status_before_processing"), Just("status_after_processing"),
                Just("delay_after_processing"), Just("drop_before_processing"),
                Just("drop_after_processing"), Just("rate_limited"), Just("bogus"),
                Just("delay_before_processing"), Just("reset_after_processing"),
            ],
            fields in proptest::collection::vec((prop_oneof![Just("times"), Just("status"), Just("delay"), Just("retry_after"), Just("other")], field()), 0..5),
        ) {
            let mut object = serde_json::Map::new();
            object.insert("fault".into(), fault.into());
            for (name, value) in fields {
                object.insert(name.into(), value);
            }
            let text = serde_json::Value::Object(object).to_string();
            if let Ok(request) = serde_json::from_str::<FaultRequest>(&text) {
                if let Ok((_, times)) = request.into_fault() {
                    prop_assert!(times <= MAX_TIMES);
                }
            }
        }
    }
}
