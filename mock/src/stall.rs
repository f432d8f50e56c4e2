//! Stalls: a share of the requests the server processes wait a while before they are
//! processed, the tail latency of a server with a slow queue or a slow disk. Drawn from
//! the server's seed, so a run can be repeated.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::shared::lock;
use crate::rng::SplitMix64;

/// Mixed into the server's seed, so that stalls draw apart from the fault plan.
const SALT: u64 = 0x57A1_1ED5_EED0_0001;

/// The stall setting in force: lock-free to read while it is off.
#[derive(Debug)]
pub(crate) struct Stalls {
    on: AtomicBool,
    plan: Mutex<Plan>,
    stalled: AtomicU64,
}

#[derive(Debug)]
struct Plan {
    share: f64,
    duration: Duration,
    rng: SplitMix64,
}

impl Stalls {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            on: AtomicBool::new(false),
            plan: Mutex::new(Plan {
                share: 0.0,
                duration: Duration::ZERO,
                rng: SplitMix64::new(seed ^ SALT),
            }),
            stalled: AtomicU64::new(0),
        }
    }

    /// From now on `share` of the requests wait `duration` before processing; a zero
    /// share or duration ends stalls.
    pub(crate) fn set(&self, share: f64, duration: Duration) -> Result<(), String> {
        check(share)?;
        let mut plan = lock(&self.plan);
        plan.share = share;
        plan.duration = duration;
        self.on
            .store(share > 0.0 && !duration.is_zero(), Ordering::Release);
        Ok(())
    }

    /// How long this request waits before processing, if it is one that stalls.
    pub(crate) fn draw(&self) -> Option<Duration> {
        if !self.on.load(Ordering::Acquire) {
            return None;
        }
        let mut plan = lock(&self.plan);
        if plan.rng.unit() >= plan.share {
            return None;
        }
        self.stalled.fetch_add(1, Ordering::AcqRel);
        Some(plan.duration)
    }

    /// Requests stalled so far.
    pub(crate) fn stalled(&self) -> u64 {
        self.stalled.load(Ordering::Acquire)
    }

    /// Forgets the count; the setting and the draws go on.
    pub(crate) fn reset_count(&self) {
        self.stalled.store(0, Ordering::Release);
    }
}

/// Stalls as `POST /__admin/stall` and a stub file's `[stall]` table write them:
/// `share = 0.02`, `duration = "1s"`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StallSpec {
    share: f64,
    duration: String,
}

impl StallSpec {
    /// The share and the duration, or what is wrong with them.
    pub(crate) fn resolve(self) -> Result<(f64, Duration), String> {
        check(self.share)?;
        let duration =
            crate::parse_duration(&self.duration).map_err(|e| format!("duration: {e}"))?;
        Ok((self.share, duration))
    }
}

/// A share must be a probability.
pub(crate) fn check(share: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&share) {
        Ok(())
    } else {
        Err(format!("stall share {share} is not between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_draws_stall_and_the_same_seed_stalls_the_same_requests() {
        let pattern = |seed| {
            let stalls = Stalls::new(seed);
            stalls.set(0.25, Duration::from_millis(7)).unwrap();
            (0..4000)
                .map(|_| stalls.draw().is_some())
                .collect::<Vec<_>>()
        };
        let first = pattern(3);
        assert_eq!(first, pattern(3), "seeded");
        assert_ne!(first, pattern(4));
        let stalled = first.iter().filter(|s| **s).count();
        assert!((900..1100).contains(&stalled), "{stalled} of 4000 at 25 %");

        let stalls = Stalls::new(1);
        assert_eq!(stalls.draw(), None, "off by default");
        stalls.set(1.0, Duration::from_millis(7)).unwrap();
        assert_eq!(stalls.draw(), Some(Duration::from_millis(7)));
        assert_eq!(stalls.stalled(), 1);
        stalls.set(0.0, Duration::from_millis(7)).unwrap();
        assert_eq!(stalls.draw(), None, "a zero share ends them");
        assert!(stalls.set(1.5, Duration::from_millis(7)).is_err());
        assert!(stalls.set(f64::NAN, Duration::from_millis(7)).is_err());
    }
}
