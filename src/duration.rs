//! Durations as people write them in flags and configuration files: `250ms`, `30s`.

use std::time::Duration;

/// Parses `250ms`, `2s`, `5m`, `24h` (a whole number and a unit).
///
/// ```
/// use std::time::Duration;
/// use idempotent_retry::parse_duration;
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
/// assert!(parse_duration("soon").is_err());
/// ```
///
/// # Errors
///
/// A message saying what is wrong, for anything else.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit; use ms, s, m or h"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let per_unit = match unit {
        "ms" => Duration::from_millis(1),
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(format!("{text:?} has an unknown unit; use ms, s, m or h")),
    };
    u32::try_from(n)
        .ok()
        .and_then(|n| per_unit.checked_mul(n))
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 90s "), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        for bad in ["", "ms", "5", "5 s", "-5s", "1.5s", "5d", "99999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
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
