//! Named rate limiters: requests and tokens per minute (and per day), shared by every stage
//! that names the limit.
//!
//! Each dimension is a token bucket refilled continuously at `limit / period`, holding at
//! most `burst_seconds` of refill — the short-window shape providers enforce. A caller
//! *reserves* what it needs: the level may go below zero, and the caller sleeps until its
//! share has been refilled. Reservations are therefore served in arrival order with exact
//! spacing and no thundering herd of waiters re-checking a shared level.
//!
//! Why not `governor`: it has no way to give tokens back (reconciling an estimate with the
//! billed usage), to lower its state to what the server reports, or to pause on a 429 —
//! the three things that let `pipe` run at the provider's limit without 429 storms.

use super::ServerLimits;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Share of the provider's burst window the limiter lets out back to back. A request reaches
/// the provider some milliseconds after it is let through, and while the provider's bucket
/// is still full those milliseconds of refill are wasted there but not here; spending the
/// whole window at once would then meet a 429 at the end of the burst. Steady-state pacing
/// (the refill rate) is unaffected: only the one-off burst is 10 % smaller.
const BURST_SHARE: f64 = 0.9;

/// How long a caller may have to wait before the limiter mentions it in the log.
const LONG_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    Requests,
    Tokens,
}

#[derive(Debug)]
struct Bucket {
    /// Per minute or per day, as configured (for messages).
    limit: u64,
    per_second: f64,
    capacity: f64,
    level: f64,
    last: Instant,
    /// Learned from the server's headers rather than configured.
    learned: bool,
}

impl Bucket {
    fn new(limit: u64, period: Duration, burst: Duration, now: Instant) -> Bucket {
        let per_second = limit as f64 / period.as_secs_f64();
        let capacity = (per_second * burst.as_secs_f64()).max(1.0);
        Bucket {
            limit,
            per_second,
            capacity,
            level: capacity,
            last: now,
            learned: false,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + dt * self.per_second).min(self.capacity);
        self.last = now;
    }

    /// Takes `amount` (possibly into debt) and says how long until the debt is repaid.
    fn reserve(&mut self, amount: f64, now: Instant) -> Duration {
        self.refill(now);
        self.level -= amount;
        self.wait(now)
    }

    fn wait(&self, _now: Instant) -> Duration {
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.level / self.per_second)
        }
    }

    fn give_back(&mut self, amount: f64, now: Instant) {
        self.refill(now);
        self.level = (self.level + amount).min(self.capacity);
    }
}

/// What a limit allows; built from `resources.limits.<name>`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LimitSettings {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub rpd: Option<u64>,
    pub tpd: Option<u64>,
    /// Seconds of refill that may be spent back to back (the provider's short window).
    pub burst_seconds: f64,
    /// `true`: the provider's token limit counts `max_tokens` when the request arrives (OpenAI);
    /// `false`: it counts the output actually generated (reconciled after the answer).
    pub reserve_max_tokens: bool,
}

#[derive(Debug)]
struct State {
    requests_per_minute: Option<Bucket>,
    tokens_per_minute: Option<Bucket>,
    requests_per_day: Option<Bucket>,
    tokens_per_day: Option<Bucket>,
    /// A 429 with the account's state paused everyone until then.
    paused_until: Option<Instant>,
    /// Tokens reserved so far (monotonic), to tell which debits a server snapshot has not seen.
    reserved_tokens_total: f64,
    reserved_requests_total: f64,
}

/// One reservation: what was taken, so the answer can be reconciled against it.
#[derive(Clone, Copy, Debug)]
pub struct Reservation {
    pub tokens: u64,
    sent_at: Instant,
    requests_total_at_send: f64,
    tokens_total_at_send: f64,
}

/// A named limiter. Cloning its `Arc` shares it; it is never copied.
#[derive(Debug)]
pub struct RateLimiter {
    pub name: String,
    settings: LimitSettings,
    state: Mutex<State>,
}

impl RateLimiter {
    pub fn new(name: &str, settings: LimitSettings) -> RateLimiter {
        let now = Instant::now();
        let burst = Duration::from_secs_f64(settings.burst_seconds.max(0.001));
        let minute = Duration::from_secs(60);
        let day = Duration::from_secs(86_400);
        let burst = burst.mul_f64(BURST_SHARE);
        let state = State {
            requests_per_minute: settings.rpm.map(|l| Bucket::new(l, minute, burst, now)),
            tokens_per_minute: settings.tpm.map(|l| Bucket::new(l, minute, burst, now)),
            // A daily quota may be spent at any pace within the day.
            requests_per_day: settings.rpd.map(|l| Bucket::new(l, day, day, now)),
            tokens_per_day: settings.tpd.map(|l| Bucket::new(l, day, day, now)),
            paused_until: None,
            reserved_tokens_total: 0.0,
            reserved_requests_total: 0.0,
        };
        RateLimiter {
            name: name.to_string(),
            settings,
            state: Mutex::new(state),
        }
    }

    /// No request or token numbers are known: only adaptive concurrency can pace calls.
    pub fn knows_limits(&self) -> bool {
        let s = self.lock();
        s.requests_per_minute.is_some() || s.tokens_per_minute.is_some()
    }

    pub fn reserves_max_tokens(&self) -> bool {
        self.settings.reserve_max_tokens
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the buckets half-updated in a way that
        // matters (each field is updated in one assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until one request costing `tokens` may be sent, and takes it.
    pub async fn acquire(&self, tokens: u64) -> Reservation {
        let wait = {
            let now = Instant::now();
            let mut guard = self.lock();
            let s = &mut *guard;
            let mut wait = Duration::ZERO;
            for bucket in [&mut s.requests_per_minute, &mut s.requests_per_day]
                .into_iter()
                .flatten()
            {
                wait = wait.max(bucket.reserve(1.0, now));
            }
            for bucket in [&mut s.tokens_per_minute, &mut s.tokens_per_day]
                .into_iter()
                .flatten()
            {
                wait = wait.max(bucket.reserve(tokens as f64, now));
            }
            s.reserved_requests_total += 1.0;
            s.reserved_tokens_total += tokens as f64;
            wait
        };
        if wait >= LONG_WAIT {
            tracing::warn!(
                limit = %self.name,
                "rate limit `{}` is spent: waiting {:.0}s for capacity",
                self.name,
                wait.as_secs_f64()
            );
        }
        tokio::time::sleep(wait).await;
        // A 429 may have paused the limiter while this caller slept.
        loop {
            let paused_until = self.lock().paused_until;
            match paused_until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
        let s = self.lock();
        Reservation {
            tokens,
            sent_at: Instant::now(),
            requests_total_at_send: s.reserved_requests_total,
            tokens_total_at_send: s.reserved_tokens_total,
        }
    }

    /// Corrects the token debit once the provider has said what it billed.
    /// `counted` is what the provider's limiter counted for the call.
    pub fn reconcile(&self, reservation: &Reservation, counted: u64) {
        let delta = reservation.tokens as f64 - counted as f64;
        if delta == 0.0 {
            return;
        }
        let now = Instant::now();
        let mut guard = self.lock();
        let s = &mut *guard;
        s.reserved_tokens_total -= delta;
        for bucket in [&mut s.tokens_per_minute, &mut s.tokens_per_day]
            .into_iter()
            .flatten()
        {
            bucket.give_back(delta, now);
        }
    }

    /// Brings the limiter in line with what the server reported in a response's headers:
    /// learns limits it was not told, adopts lower ones, and lowers its levels when the server
    /// has less left than we think (another process on the same account, a lower real limit).
    pub fn observe(&self, reservation: &Reservation, server: &ServerLimits) {
        if server.is_empty() {
            return;
        }
        let now = Instant::now();
        let burst = Duration::from_secs_f64(self.settings.burst_seconds.max(0.001) * BURST_SHARE);
        let mut s = self.lock();
        let unseen_requests = s.reserved_requests_total - reservation.requests_total_at_send;
        let unseen_tokens = s.reserved_tokens_total - reservation.tokens_total_at_send;
        let since = now.saturating_duration_since(reservation.sent_at);
        let name = self.name.clone();
        sync_bucket(
            &name,
            Dimension::Requests,
            &mut s.requests_per_minute,
            server.limit_requests,
            server.remaining_requests,
            unseen_requests,
            since,
            burst,
            now,
        );
        sync_bucket(
            &name,
            Dimension::Tokens,
            &mut s.tokens_per_minute,
            server.limit_tokens,
            server.remaining_tokens,
            unseen_tokens,
            since,
            burst,
            now,
        );
    }

    /// A 429 carrying the account's state: nobody sends until `wait` has passed, and the
    /// exhausted dimension starts from empty after it.
    pub fn pause(&self, wait: Duration, which: Option<Dimension>) {
        let now = Instant::now();
        let until = now + wait;
        let mut s = self.lock();
        if s.paused_until.is_none_or(|p| p < until) {
            s.paused_until = Some(until);
        }
        let buckets = match which {
            Some(Dimension::Requests) => vec![&mut s.requests_per_minute],
            Some(Dimension::Tokens) => vec![&mut s.tokens_per_minute],
            None => vec![],
        };
        for bucket in buckets.into_iter().flatten() {
            bucket.refill(now);
            bucket.level = bucket.level.min(0.0);
        }
        tracing::debug!(limit = %self.name, "rate limit `{}` paused for {:.2}s after a 429", self.name, wait.as_secs_f64());
    }

    /// Current (requests, tokens) levels, for tests and metrics.
    pub fn levels(&self) -> (Option<f64>, Option<f64>) {
        let now = Instant::now();
        let mut s = self.lock();
        let level = |b: &mut Option<Bucket>| {
            b.as_mut().map(|b| {
                b.refill(now);
                b.level
            })
        };
        let requests = level(&mut s.requests_per_minute);
        let tokens = level(&mut s.tokens_per_minute);
        (requests, tokens)
    }

    /// Requests admitted so far (each attempt is one).
    pub fn admitted_requests(&self) -> u64 {
        self.lock().reserved_requests_total as u64
    }

    /// Limits in force per minute (configured or learned).
    pub fn per_minute(&self) -> (Option<u64>, Option<u64>) {
        let s = self.lock();
        (
            s.requests_per_minute.as_ref().map(|b| b.limit),
            s.tokens_per_minute.as_ref().map(|b| b.limit),
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn sync_bucket(
    name: &str,
    dimension: Dimension,
    bucket: &mut Option<Bucket>,
    server_limit: Option<u64>,
    server_remaining: Option<u64>,
    unseen: f64,
    since: Duration,
    burst: Duration,
    now: Instant,
) {
    let what = match dimension {
        Dimension::Requests => "requests",
        Dimension::Tokens => "tokens",
    };
    if let Some(limit) = server_limit.filter(|l| *l > 0) {
        match bucket {
            None => {
                tracing::info!(
                    "rate limit `{name}`: learned {limit} {what}/min from the provider's headers"
                );
                let mut learned = Bucket::new(limit, Duration::from_secs(60), burst, now);
                learned.learned = true;
                *bucket = Some(learned);
            }
            Some(b) if limit < b.limit => {
                tracing::warn!(
                    "rate limit `{name}`: the provider allows {limit} {what}/min, fewer than the \
                     {} configured; using {limit}",
                    b.limit
                );
                b.refill(now);
                let fresh = Bucket::new(limit, Duration::from_secs(60), burst, now);
                b.limit = limit;
                b.per_second = fresh.per_second;
                b.capacity = fresh.capacity;
                b.level = b.level.min(b.capacity);
            }
            _ => {}
        }
    }
    let (Some(b), Some(remaining)) = (bucket.as_mut(), server_remaining) else {
        return;
    };
    // What the server had left when it answered, carried forward to now: refilled since, and
    // minus what we reserved after this call (which the server had not seen yet).
    b.refill(now);
    let implied = remaining as f64 + since.as_secs_f64() * b.per_second - unseen;
    // Only ever lower: a higher server figure may just be a wider window than ours.
    if implied < b.level - 1.0 {
        b.level = implied;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rpm: Option<u64>, tpm: Option<u64>) -> RateLimiter {
        RateLimiter::new(
            "test",
            LimitSettings {
                rpm,
                tpm,
                burst_seconds: 1.0,
                reserve_max_tokens: true,
                ..Default::default()
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_at_the_rate_after_the_burst() {
        // 600 rpm = 10/s, burst of 0.9 s = 9 at once, then one every 100 ms.
        let l = limiter(Some(600), None);
        let start = Instant::now();
        for _ in 0..9 {
            l.acquire(0).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        for i in 1..=5u64 {
            l.acquire(0).await;
            let expected = Duration::from_millis(100 * i);
            let got = start.elapsed();
            assert!(
                got >= expected && got < expected + Duration::from_millis(2),
                "{got:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_bind_when_calls_are_large() {
        // 60k tpm = 1000 tokens/s; 800-token calls: the 900-token burst holds one, then one
        // per 0.8 s.
        let l = limiter(None, Some(60_000));
        let start = Instant::now();
        l.acquire(800).await;
        l.acquire(800).await;
        l.acquire(800).await;
        let got = start.elapsed().as_secs_f64();
        assert!((got - 1.5).abs() < 0.01, "{got}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_daily_quota_is_spent_at_any_pace_then_waits() {
        let l = RateLimiter::new(
            "daily",
            LimitSettings {
                rpd: Some(3),
                burst_seconds: 1.0,
                ..Default::default()
            },
        );
        let start = Instant::now();
        for _ in 0..3 {
            l.acquire(0).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        // The fourth waits for a third of a day's refill, not a minute's.
        assert!(
            tokio::time::timeout(Duration::from_secs(3 * 3600), l.acquire(0))
                .await
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reconcile_gives_unused_tokens_back() {
        let l = limiter(None, Some(60_000));
        let r = l.acquire(900).await;
        assert!(l.levels().1.unwrap().abs() < 1e-6);
        l.reconcile(&r, 400);
        assert!((l.levels().1.unwrap() - 500.0).abs() < 1e-6);
        // And takes more when the provider counted more than estimated.
        let r = l.acquire(100).await;
        l.reconcile(&r, 300);
        assert!((l.levels().1.unwrap() - 200.0).abs() < 1e-6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_caller_until_the_reset() {
        let l = std::sync::Arc::new(limiter(Some(6000), None));
        let start = Instant::now();
        l.pause(Duration::from_secs(2), Some(Dimension::Requests));
        let mut waiters = Vec::new();
        for _ in 0..3 {
            let l = l.clone();
            waiters.push(tokio::spawn(async move {
                l.acquire(0).await;
                Instant::now()
            }));
        }
        for w in waiters {
            let at = w.await.unwrap();
            assert!(at.duration_since(start) >= Duration::from_secs(2));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn headers_teach_unknown_limits_and_lower_the_level() {
        let l = limiter(None, None);
        assert!(!l.knows_limits());
        let r = l.acquire(100).await;
        l.observe(
            &r,
            &ServerLimits {
                limit_requests: Some(1200),
                remaining_requests: Some(3),
                ..Default::default()
            },
        );
        assert!(l.knows_limits());
        assert_eq!(l.per_minute(), (Some(1200), None));
        // The server had 3 left; our fresh bucket thought 18: it now believes the server.
        let level = l.levels().0.unwrap();
        assert!((level - 3.0).abs() < 1e-6, "{level}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_does_not_forget_later_reservations() {
        let l = limiter(Some(600), None);
        let first = l.acquire(0).await;
        for _ in 0..4 {
            l.acquire(0).await;
        }
        // Our bucket (9) has 4 left. The server saw only the first call and has 6 left; our 4
        // later calls still count against that: 2 left, not 6.
        l.observe(
            &first,
            &ServerLimits {
                limit_requests: Some(600),
                remaining_requests: Some(6),
                ..Default::default()
            },
        );
        let level = l.levels().0.unwrap();
        assert!((level - 2.0).abs() < 1e-6, "{level}");
    }
}
