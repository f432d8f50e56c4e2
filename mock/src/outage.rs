//! An outage of the whole server for a while: every request (the admin API aside) is
//! answered with one status, or has its connection dropped, without executing. For
//! testing what a client does while a dependency is down, and after it comes back.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;

/// What the server does to every request during an outage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outage {
    /// Answer with this status (a `problem+json` body), executing nothing.
    Status(StatusCode),
    /// Close the connection without answering, executing nothing.
    Drop,
}

/// An outage as `POST /__admin/outage` and a stub file's `[outage]` table write it:
/// `status = 503` or `drop = true`, and a `duration`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutageSpec {
    status: Option<u16>,
    #[serde(default)]
    drop: bool,
    duration: String,
}

impl OutageSpec {
    /// The outage and its duration, or what is wrong with them.
    pub(crate) fn resolve(self) -> Result<(Outage, Duration), String> {
        let duration =
            crate::parse_duration(&self.duration).map_err(|e| format!("duration: {e}"))?;
        let outage = match (self.status, self.drop) {
            (Some(code), false) => {
                Outage::Status(super::response::final_status(code).ok_or_else(|| {
                    format!("status {code} is not a final HTTP status (200..=999)")
                })?)
            }
            (None, true) => Outage::Drop,
            _ => return Err("give either \"status\" or \"drop\": true".to_owned()),
        };
        Ok((outage, duration))
    }
}

/// The outage in force, if any: lock-free, read by every request.
#[derive(Debug)]
pub(crate) struct OutageWindow {
    /// When the server started: `until` counts from it.
    start: Instant,
    /// Nanoseconds after `start` when the outage ends; 0: none.
    until: AtomicU64,
    /// The status to answer; 0: drop the connection.
    status: AtomicU16,
}

impl OutageWindow {
    pub(crate) fn new(start: Instant) -> Self {
        Self {
            start,
            until: AtomicU64::new(0),
            status: AtomicU16::new(0),
        }
    }

    /// Starts `outage` now, for `duration` (zero ends any outage).
    pub(crate) fn begin(&self, outage: Outage, duration: Duration) {
        let status = match outage {
            Outage::Status(status) => status.as_u16(),
            Outage::Drop => 0,
        };
        let until = Instant::now()
            .saturating_duration_since(self.start)
            .saturating_add(duration);
        // Written status first: a request that sees the new end sees its status (a
        // request racing the change may see the old one, as on a real server).
        self.status.store(status, Ordering::Release);
        let until = if duration.is_zero() {
            0
        } else {
            u64::try_from(until.as_nanos()).unwrap_or(u64::MAX)
        };
        self.until.store(until, Ordering::Release);
    }

    /// The outage in force now, if any.
    pub(crate) fn now(&self) -> Option<Outage> {
        let until = self.until.load(Ordering::Acquire);
        if until == 0 {
            return None;
        }
        let elapsed = Instant::now().saturating_duration_since(self.start);
        if u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX) >= until {
            return None;
        }
        match StatusCode::from_u16(self.status.load(Ordering::Acquire)) {
            Ok(status) => Some(Outage::Status(status)),
            Err(_) => Some(Outage::Drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_holds_for_its_duration_and_zero_ends_it() {
        let window = OutageWindow::new(Instant::now());
        assert_eq!(window.now(), None);
        window.begin(
            Outage::Status(StatusCode::SERVICE_UNAVAILABLE),
            Duration::from_secs(60),
        );
        assert_eq!(
            window.now(),
            Some(Outage::Status(StatusCode::SERVICE_UNAVAILABLE))
        );
        window.begin(Outage::Drop, Duration::from_secs(60));
        assert_eq!(window.now(), Some(Outage::Drop));
        window.begin(Outage::Drop, Duration::ZERO);
        assert_eq!(window.now(), None);
        // One that already ended.
        window.begin(Outage::Drop, Duration::from_nanos(1));
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(window.now(), None);
    }
}
