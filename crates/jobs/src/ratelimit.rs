//! Per-owner token buckets: `per_minute` requests a minute, bursts up to the same number.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

pub struct RateLimiter {
    per_minute: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: per_minute.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `owner`; `Err(seconds)` to wait if there is none.
    pub fn check(&self, owner: &str) -> Result<(), u32> {
        self.check_at(owner, Instant::now())
    }

    fn check_at(&self, owner: &str, now: Instant) -> Result<(), u32> {
        let mut b = self.buckets.lock().expect("rate limiter");
        if b.len() > 50_000 {
            // Forget idle owners rather than grow without bound.
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * self.per_minute / 60.0
                    < self.per_minute
            });
        }
        let (tokens, at) = b.entry(owner.to_string()).or_insert((self.per_minute, now));
        let refill = now.duration_since(*at).as_secs_f64() * self.per_minute / 60.0;
        *tokens = (*tokens + refill).min(self.per_minute);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) * 60.0 / self.per_minute).ceil().max(1.0) as u32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills() {
        let r = RateLimiter::new(3);
        let t = Instant::now();
        for _ in 0..3 {
            r.check_at("a", t).unwrap();
        }
        assert_eq!(r.check_at("a", t), Err(20));
        r.check_at("b", t).unwrap();
        r.check_at("a", t + Duration::from_secs(21)).unwrap();
        assert!(r.check_at("a", t + Duration::from_secs(21)).is_err());
    }
}
