//! Durations as people write them in flags and configuration files: `250ms`, `30s`.

use std::time::Duration;

/// Parses a duration as people write it: `250ms`, `1.5s`, `5 s`, `2h 30m`, `1d`, through
/// the `humantime` crate (units `ns`, `us`, `ms`, `s`/`sec`, `m`/`min`, `h`, `d`, `w`,
/// and their longer spellings; spans may be summed and a number may have a fraction).
///
/// ```
/// use std::time::Duration;
/// use idempotent_retry_mock::parse_duration;
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("2h 30m"), Ok(Duration::from_secs(9000)));
/// let err = parse_duration("5").unwrap_err();
/// assert!(err.contains("time unit needed"), "{err}");
/// ```
///
/// # Errors
///
/// For anything else, a message quoting the text, saying what is wrong with it (no
/// unit, an unknown unit, not a number, too large) and showing valid forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{text:?} is not a duration: {e}; write a number and a unit, as in 250ms, 1.5s or 2h 30m")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_as_people_write_them() {
        for (text, expected) in [
            ("0ms", Duration::ZERO),
            (" 90s ", Duration::from_secs(90)),
            ("5m", Duration::from_secs(300)),
            ("1.5s", Duration::from_millis(1500)),
            ("5 s", Duration::from_secs(5)),
            ("5sec", Duration::from_secs(5)),
            ("2h 30m", Duration::from_secs(9000)),
            ("1d", Duration::from_secs(86_400)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn each_mistake_is_named_with_a_valid_form() {
        for (bad, says) in [
            ("5", "time unit needed"),
            ("5 S", "unknown time unit \"S\""),
            ("soon", "expected number"),
            ("-5s", "expected number"),
            ("", "value was empty"),
            ("99999999999999999999h", "too large"),
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
            assert!(
                err.starts_with(&format!("{bad:?} is not a duration")),
                "{err}"
            );
            assert!(err.ends_with("as in 250ms, 1.5s or 2h 30m"), "{err}");
        }
    }

    proptest! {
        #[test]
        fn durations_never_panic_and_round_trip(text in "\\PC{0,20}", n in 0u32..100_000, unit in 0usize..4) {
            let _ = parse_duration(&text);
            let (suffix, per) = [("ms", 1u64), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)][unit];
            let parsed = parse_duration(&format!("{n}{suffix}")).unwrap();
            prop_assert_eq!(parsed, Duration::from_millis(u64::from(n) * per));
        }
    }
}
