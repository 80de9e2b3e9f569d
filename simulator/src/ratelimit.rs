//! Token-bucket rate limiting with OpenAI-like short windows.

use std::time::{Duration, Instant};

/// One bucket: `limit` per minute, refilled continuously at `limit / 60` per
/// second, holding at most `limit / 60 * burst_seconds`.
#[derive(Debug, Clone)]
pub struct Bucket {
    limit: u64,
    capacity: f64,
    level: f64,
    rate: f64,
    last: Instant,
}

/// What a bucket advertises in headers.
#[derive(Debug, Clone, Copy)]
pub struct BucketSnap {
    pub limit: u64,
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

impl Bucket {
    pub fn new(limit: u64, burst_seconds: f64, now: Instant) -> Self {
        let rate = limit as f64 / 60.0;
        let capacity = (rate * burst_seconds).max(1.0);
        Self {
            limit,
            capacity,
            level: capacity,
            rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + dt * self.rate).min(self.capacity);
        self.last = now;
    }

    /// `None` = can never be admitted (bigger than the burst capacity).
    fn wait_for(&self, amount: f64) -> Option<Duration> {
        if amount > self.capacity {
            None
        } else if self.level >= amount {
            Some(Duration::ZERO)
        } else {
            Some(Duration::from_secs_f64((amount - self.level) / self.rate))
        }
    }

    fn time_to_full(&self) -> Duration {
        Duration::from_secs_f64(((self.capacity - self.level) / self.rate).max(0.0))
    }

    fn snap(&self) -> BucketSnap {
        BucketSnap {
            limit: self.limit,
            remaining: self.level.max(0.0).floor() as u64,
            reset: self.time_to_full(),
        }
    }
}

/// Snapshot of both buckets (`None` where unlimited).
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub requests: Option<BucketSnap>,
    pub tokens: Option<BucketSnap>,
}

/// Why a request was refused.
#[derive(Debug, Clone)]
pub struct Denied {
    pub retry_after: Duration,
    /// "requests" or "tokens".
    pub which: &'static str,
    pub limit: u64,
    pub requested: u64,
    /// The request can never fit in the burst window.
    pub too_large: bool,
}

#[derive(Debug, Clone)]
pub struct Limiter {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

impl Limiter {
    pub fn new(rpm: Option<u64>, tpm: Option<u64>, burst_seconds: f64, now: Instant) -> Self {
        Self {
            requests: rpm.map(|l| Bucket::new(l, burst_seconds, now)),
            tokens: tpm.map(|l| Bucket::new(l, burst_seconds, now)),
        }
    }

    pub fn peek(&mut self, now: Instant) -> Snapshot {
        if let Some(b) = self.requests.as_mut() {
            b.refill(now);
        }
        if let Some(b) = self.tokens.as_mut() {
            b.refill(now);
        }
        Snapshot {
            requests: self.requests.as_ref().map(Bucket::snap),
            tokens: self.tokens.as_ref().map(Bucket::snap),
        }
    }

    /// Atomically admits one request debiting `tokens`, or refuses it without
    /// debiting anything.
    pub fn try_acquire(
        &mut self,
        tokens: u64,
        now: Instant,
    ) -> Result<Snapshot, (Denied, Snapshot)> {
        let snap = self.peek(now);
        let mut denied: Option<Denied> = None;
        let checks = [
            (self.requests.as_ref(), 1u64, "requests"),
            (self.tokens.as_ref(), tokens, "tokens"),
        ];
        for (bucket, amount, which) in checks {
            let Some(b) = bucket else { continue };
            let (wait, too_large) = match b.wait_for(amount as f64) {
                Some(w) => (w, false),
                None => (b.time_to_full(), true),
            };
            if wait > Duration::ZERO || too_large {
                let wait = if too_large {
                    wait.max(Duration::from_secs(1))
                } else {
                    wait
                };
                let worse = denied.as_ref().is_none_or(|d| wait > d.retry_after);
                if worse {
                    denied = Some(Denied {
                        retry_after: wait,
                        which,
                        limit: b.limit,
                        requested: amount,
                        too_large,
                    });
                }
            }
        }
        if let Some(d) = denied {
            return Err((d, snap));
        }
        if let Some(b) = self.requests.as_mut() {
            b.level -= 1.0;
        }
        if let Some(b) = self.tokens.as_mut() {
            b.level -= tokens as f64;
        }
        Ok(Snapshot {
            requests: self.requests.as_ref().map(Bucket::snap),
            tokens: self.tokens.as_ref().map(Bucket::snap),
        })
    }
}

/// Formats a duration the way OpenAI's `x-ratelimit-reset-*` headers do:
/// `"120ms"`, `"1s"`, `"1.5s"`, `"6m0s"`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let total_s = ms as f64 / 1000.0;
    let fmt_s = |s: f64| {
        let t = format!("{s:.3}");
        let t = t.trim_end_matches('0').trim_end_matches('.');
        format!("{t}s")
    };
    if ms < 60_000 {
        fmt_s(total_s)
    } else {
        let m = (ms / 60_000) as u64;
        let rest = (ms % 60_000) as f64 / 1000.0;
        format!("{m}m{}", fmt_s(rest))
    }
}

/// Formats `unix_secs` as an RFC 3339 UTC timestamp (`2024-05-01T12:00:00Z`).
pub fn rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let sod = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_format() {
        assert_eq!(format_reset(Duration::from_millis(120)), "120ms");
        assert_eq!(format_reset(Duration::from_secs(1)), "1s");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn rfc3339_known() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn bucket_burst() {
        let now = Instant::now();
        let mut l = Limiter::new(Some(120), None, 1.0, now);
        assert!(l.try_acquire(0, now).is_ok());
        assert!(l.try_acquire(0, now).is_ok());
        let (d, _) = l.try_acquire(0, now).expect_err("third must be refused");
        assert_eq!(d.which, "requests");
        assert_eq!(d.retry_after, Duration::from_millis(500));
        assert!(l.try_acquire(0, now + Duration::from_millis(500)).is_ok());
    }
}
