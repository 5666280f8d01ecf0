//! A token bucket: a connection's message rate, a user's wrong pickup codes.

use std::time::Instant;

/// `rate` tokens per second, up to `burst` (both given at each use, so a bucket is
/// only its level and when it was last refilled).
#[derive(Debug, Clone)]
pub struct Bucket {
    pub(super) tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(burst: u32, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    pub fn refill(&mut self, now: Instant, rate: f64, burst: u32) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(f64::from(burst));
        self.at = now;
    }

    /// Take one token if there is one.
    pub fn take(&mut self, now: Instant, rate: f64, burst: u32) -> bool {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
