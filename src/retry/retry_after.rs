//! `Retry-After` (RFC 9110, section 10.2.3): delay-seconds or an HTTP-date.

use std::time::{Duration, SystemTime};

use http::header::{DATE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};
use tracing::debug;

use crate::telemetry::TARGET;

/// The wait a non-2xx answer's `Retry-After` asks for, if it has a valid one (a 2xx
/// answer is final: there is nothing to come back for); a malformed value is ignored
/// (the backoff applies), with a debug event.
pub(crate) fn wait(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if status.is_success() {
        return None;
    }
    let value = headers.get(RETRY_AFTER)?;
    let hint = parse(value, headers.get(DATE), SystemTime::now());
    if hint.is_none() {
        debug!(target: TARGET, value = ?value, "ignoring a malformed Retry-After");
    }
    hint
}

/// The wait a `Retry-After` value asks for, from the moment its answer arrived.
///
/// Delay-seconds are that wait. An HTTP-date is read against the answer's own `Date`
/// (`date`) when it has a valid one, so that the server's clock, not ours, says how far
/// away the instant is (clock skew, and the one-second resolution of both dates, would
/// otherwise make the wait short); without one, against `now`. A date in the past means
/// "now".
///
/// `None` for anything that is neither form (negative numbers, fractions, garbage); the
/// caller then falls back to its own backoff. Numbers too large for a `u64` saturate;
/// the caller caps the wait anyway.
pub(crate) fn parse(
    value: &HeaderValue,
    date: Option<&HeaderValue>,
    now: SystemTime,
) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let secs = text.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    let reference = date
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d.trim()).ok())
        .unwrap_or(now);
    Some(at.duration_since(reference).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn parse_str(s: &str, now: SystemTime) -> Option<Duration> {
        parse(&HeaderValue::from_str(s).unwrap(), None, now)
    }

    #[test]
    fn delay_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_str("0", now), Some(Duration::ZERO));
        assert_eq!(parse_str("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_str(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_str("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn http_dates_in_all_three_formats() {
        // 1994-11-06T08:49:37Z, the example date of RFC 9110.
        let now = at(784_111_777 - 60);
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                parse_str(form, now),
                Some(Duration::from_secs(60)),
                "{form}"
            );
        }
    }

    #[test]
    fn past_dates_mean_now() {
        let now = at(784_111_777 + 3600);
        assert_eq!(
            parse_str("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn garbage_is_ignored() {
        let now = SystemTime::now();
        for bad in [
            "",
            "-1",
            "+5",
            "1.5",
            "soon",
            "5s",
            "0x10",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_str(bad, now), None, "{bad:?}");
        }
        let opaque = HeaderValue::from_bytes(b"\xff\xfe").unwrap();
        assert_eq!(parse(&opaque, None, now), None);
    }

    #[test]
    fn dates_are_read_against_the_answers_date() {
        let value = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:39 GMT");
        let date = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
        // Our clock is 0.63 s past the server's Date, or an hour off: the wait is still
        // the two seconds the server means.
        for now in [
            at(784_111_777) + Duration::from_millis(630),
            at(784_111_777 + 3600),
        ] {
            assert_eq!(
                parse(&value, Some(&date), now),
                Some(Duration::from_secs(2))
            );
        }
        // A Date that does not parse is ignored: our clock it is.
        let bad = HeaderValue::from_static("yesterday");
        assert_eq!(
            parse(&value, Some(&bad), at(784_111_778)),
            Some(Duration::from_secs(1))
        );
        // Seconds do not look at Date.
        let secs = HeaderValue::from_static("5");
        assert_eq!(
            parse(&secs, Some(&date), at(0)),
            Some(Duration::from_secs(5))
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), now in any::<u32>()) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let _ = parse(&value, None, at(u64::from(now)));
                let _ = parse(&value, Some(&value), at(u64::from(now)));
            }
        }

        #[test]
        fn seconds_round_trip(secs in any::<u64>()) {
            prop_assert_eq!(parse_str(&secs.to_string(), SystemTime::now()), Some(Duration::from_secs(secs)));
        }

        #[test]
        fn dates_round_trip(offset in 0u64..1_000_000, base in 0u64..4_000_000_000) {
            let now = at(base);
            let date = httpdate::fmt_http_date(at(base + offset));
            prop_assert_eq!(parse_str(&date, now), Some(Duration::from_secs(offset)));
        }
    }
}
