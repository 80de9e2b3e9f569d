//! Token-bucket rate limiting with OpenAI-like short windows.
//!
//! Each bucket refills at `limit / 60` per second and holds at most
//! `limit / 60 * burst_seconds`. A request larger than that capacity but not
//! larger than the per-minute `limit` is still legal, as on the real API: it is
//! admitted once the bucket is full and leaves the bucket in debt (below
//! zero), so the average rate never exceeds the limit. Only a request larger
//! than the whole per-minute limit can never be admitted.

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

    /// `None` = can never be admitted (bigger than the per-minute limit).
    /// A request bigger than the burst capacity needs a full bucket.
    fn wait_for(&self, amount: f64) -> Option<Duration> {
        if amount > self.limit as f64 {
            return None;
        }
        let needed = amount.min(self.capacity);
        if self.level >= needed {
            Some(Duration::ZERO)
        } else {
            Some(Duration::from_secs_f64((needed - self.level) / self.rate))
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

    /// The same bucket under a new limit: the level (debt included) is kept,
    /// capped at the new capacity.
    fn relimit(&self, limit: u64, burst_seconds: f64, now: Instant) -> Self {
        let mut b = Bucket::new(limit, burst_seconds, now);
        let mut old = self.clone();
        old.refill(now);
        b.level = old.level.min(b.capacity);
        b
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
    /// Time until the request could be admitted (for `too_large`: until the
    /// bucket is full, which does not help).
    pub retry_after: Duration,
    /// "requests" or "tokens".
    pub which: &'static str,
    pub limit: u64,
    pub requested: u64,
    /// The request is bigger than the per-minute limit: it can never be admitted.
    pub too_large: bool,
}

#[derive(Debug, Clone)]
pub struct Limiter {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    burst_seconds: f64,
    /// What the headers describe, when it is not what is enforced
    /// (`headers_window_seconds`): buckets of that window, debited alike.
    shown: Option<Box<Limiter>>,
}

impl Limiter {
    pub fn new(rpm: Option<u64>, tpm: Option<u64>, burst_seconds: f64, now: Instant) -> Self {
        Self {
            requests: rpm.map(|l| Bucket::new(l, burst_seconds, now)),
            tokens: tpm.map(|l| Bucket::new(l, burst_seconds, now)),
            burst_seconds,
            shown: None,
        }
    }

    pub fn from_config(config: &crate::config::SimConfig, now: Instant) -> Self {
        let mut limiter = Limiter::new(config.rpm, config.tpm, config.burst_seconds, now);
        limiter.shown = config
            .headers_window_seconds
            .map(|w| Box::new(Limiter::new(config.rpm, config.tpm, w, now)));
        limiter
    }

    /// Applies new limits (a schedule phase). An unchanged limit keeps its
    /// bucket; a changed one keeps its level up to the new capacity; a newly
    /// limited dimension starts full.
    pub fn set_limits(&mut self, rpm: Option<u64>, tpm: Option<u64>, now: Instant) {
        let burst = self.burst_seconds;
        let update = |bucket: &mut Option<Bucket>, limit: Option<u64>| {
            *bucket = match (bucket.take(), limit) {
                (_, None) => None,
                (Some(b), Some(l)) if b.limit == l => Some(b),
                (Some(b), Some(l)) => Some(b.relimit(l, burst, now)),
                (None, Some(l)) => Some(Bucket::new(l, burst, now)),
            };
        };
        update(&mut self.requests, rpm);
        update(&mut self.tokens, tpm);
        if let Some(shown) = self.shown.as_mut() {
            shown.set_limits(rpm, tpm, now);
        }
    }

    /// The configured limits, `(rpm, tpm)`.
    pub fn limits(&self) -> (Option<u64>, Option<u64>) {
        (
            self.requests.as_ref().map(|b| b.limit),
            self.tokens.as_ref().map(|b| b.limit),
        )
    }

    /// What the headers say: the enforced buckets, or the ones they describe instead.
    pub fn peek(&mut self, now: Instant) -> Snapshot {
        self.refill(now);
        if let Some(shown) = self.shown.as_mut() {
            return shown.peek(now);
        }
        Snapshot {
            requests: self.requests.as_ref().map(Bucket::snap),
            tokens: self.tokens.as_ref().map(Bucket::snap),
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(b) = self.requests.as_mut() {
            b.refill(now);
        }
        if let Some(b) = self.tokens.as_mut() {
            b.refill(now);
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
                // A request that can never pass outranks any wait.
                let worse = denied
                    .as_ref()
                    .is_none_or(|d| (too_large, wait) > (d.too_large, d.retry_after));
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
        self.debit(tokens);
        if let Some(shown) = self.shown.as_mut() {
            shown.debit(tokens);
        }
        Ok(self.peek(now))
    }

    fn debit(&mut self, tokens: u64) {
        if let Some(b) = self.requests.as_mut() {
            b.level -= 1.0;
        }
        if let Some(b) = self.tokens.as_mut() {
            b.level -= tokens as f64;
        }
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

    #[test]
    fn headers_can_describe_a_wider_window_than_the_one_enforced() {
        let now = Instant::now();
        let config = crate::config::SimConfig {
            rpm: Some(600),
            headers_window_seconds: Some(60.0),
            ..Default::default()
        };
        // 600 rpm enforced per second (10 at once), described as a minute (600).
        let mut l = Limiter::from_config(&config, now);
        assert_eq!(l.peek(now).requests.map(|r| r.remaining), Some(600));
        for _ in 0..10 {
            assert!(l.try_acquire(0, now).is_ok());
        }
        let (d, snap) = l
            .try_acquire(0, now)
            .expect_err("the second's 10 are spent");
        assert_eq!(d.retry_after, Duration::from_millis(100));
        let shown = snap.requests.unwrap();
        assert_eq!(
            (shown.remaining, shown.reset),
            (590, Duration::from_secs(1))
        );
    }

    #[test]
    fn larger_than_burst_waits_for_a_full_bucket_then_goes_into_debt() {
        let now = Instant::now();
        // 6000 TPM, 1 s burst: capacity 100 tokens, refill 100/s.
        let mut l = Limiter::new(None, Some(6000), 1.0, now);
        let (d, _) = l
            .try_acquire(6001, now)
            .expect_err("above the minute limit");
        assert!(d.too_large);
        assert!(l.try_acquire(500, now).is_ok(), "a full bucket admits 500");
        assert_eq!(l.peek(now).tokens.map(|t| t.remaining), Some(0));
        // 400 in debt + 10 needed: 4.1 s.
        let (d, _) = l.try_acquire(10, now).expect_err("in debt");
        assert!(!d.too_large);
        assert_eq!(d.retry_after, Duration::from_millis(4100));
        // A large request waits for the full bucket, not for its own size.
        let (d, _) = l
            .try_acquire(500, now + Duration::from_millis(4500))
            .expect_err("half full");
        assert_eq!(d.retry_after, Duration::from_millis(500));
        assert!(l.try_acquire(500, now + Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn new_limits_keep_the_level_up_to_the_new_capacity() {
        let now = Instant::now();
        let mut l = Limiter::new(Some(600), None, 1.0, now);
        assert!(l.try_acquire(0, now).is_ok());
        l.set_limits(Some(120), Some(6000), now);
        let s = l.peek(now);
        assert_eq!(s.requests.map(|r| (r.limit, r.remaining)), Some((120, 2)));
        assert_eq!(s.tokens.map(|t| t.remaining), Some(100));
        assert_eq!(l.limits(), (Some(120), Some(6000)));
    }
}
