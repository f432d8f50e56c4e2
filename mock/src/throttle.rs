//! A route's rate limit: a token bucket of `per_second` tokens a second holding at most
//! `burst`; a request that finds it empty is answered `429` before anything else,
//! with the IETF `RateLimit-Policy` and `RateLimit` fields and, unless turned off,
//! `Retry-After`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderValue, Response, StatusCode};

use super::response::{Body, problem};
use super::shared::lock;

/// A route's limit and its bucket.
#[derive(Debug)]
pub(crate) struct Throttle {
    per_second: u32,
    burst: u32,
    retry_after: bool,
    /// Tokens, and when they were counted.
    bucket: Mutex<(f64, Instant)>,
}

impl Throttle {
    /// The limit, or why not: a zero rate or a zero burst would refuse every request.
    pub(crate) fn new(per_second: u32, burst: u32, retry_after: bool) -> Result<Self, String> {
        if per_second == 0 || burst == 0 {
            return Err("rate_limit: per_second and burst must be at least 1".to_owned());
        }
        Ok(Self {
            per_second,
            burst,
            retry_after,
            bucket: Mutex::new((f64::from(burst), Instant::now())),
        })
    }

    /// Takes a token for a request at `now`, or gives the `429` to answer instead.
    pub(crate) fn admit(&self, now: Instant) -> Option<Response<Body>> {
        let rate = f64::from(self.per_second);
        let wait = {
            let mut bucket = lock(&self.bucket);
            let (tokens, at) = *bucket;
            let tokens = (tokens + now.saturating_duration_since(at).as_secs_f64() * rate)
                .min(f64::from(self.burst));
            if tokens >= 1.0 {
                *bucket = (tokens - 1.0, now);
                return None;
            }
            *bucket = (tokens, now);
            Duration::from_secs_f64((1.0 - tokens) / rate)
        };
        Some(self.refusal(wait))
    }

    /// The `429` for a request that must wait `wait` for a token.
    fn refusal(&self, wait: Duration) -> Response<Body> {
        // Whole seconds, rounded up, as the fields carry them.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let window = self.burst.div_ceil(self.per_second);
        let mut answer = problem(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            &format!(
                "rate limit of {} per second (burst {}) reached; retry in {seconds} s",
                self.per_second, self.burst
            ),
        );
        let headers = answer.headers_mut();
        let policy = format!("\"default\";q={};w={window}", self.burst);
        let state = format!("\"default\";r=0;t={seconds}");
        for (name, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.insert(name, value);
            }
        }
        if self.retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_then_one_per_tick() {
        let throttle = Throttle::new(10, 3, true).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(throttle.admit(t0).is_none());
        }
        let refused = throttle.admit(t0).expect("the burst is spent");
        assert_eq!(refused.status(), 429);
        let headers = refused.headers();
        assert_eq!(headers["ratelimit-policy"], "\"default\";q=3;w=1");
        assert_eq!(headers["ratelimit"], "\"default\";r=0;t=1");
        assert_eq!(headers["retry-after"], "1");
        // A tenth of a second later, one token.
        let later = t0 + Duration::from_millis(100);
        assert!(throttle.admit(later).is_none());
        assert!(throttle.admit(later).is_some());
    }

    #[test]
    fn retry_after_can_be_left_out_and_zero_is_refused() {
        let throttle = Throttle::new(1, 1, false).unwrap();
        let t0 = Instant::now();
        assert!(throttle.admit(t0).is_none());
        let refused = throttle.admit(t0).unwrap();
        assert!(refused.headers().get("retry-after").is_none());
        assert!(refused.headers().get("ratelimit").is_some());
        assert!(Throttle::new(0, 1, true).is_err());
        assert!(Throttle::new(1, 0, true).is_err());
    }
}
