//! Circuit breaker per provider: after `failures` consecutive failed attempts the provider is
//! opened — calls wait (nothing is dropped) — for `cooldown`; then one probe at a time is let
//! through (half-open). A probe that succeeds closes it; one that fails opens it again, for
//! twice as long (up to `max_cooldown`).
//!
//! A provider starts *unproven*: its first [`FIRST_SCOUTS`] requests go as scouts, and the
//! rest wait for an answer — or for [`FIRST_ANSWER_GRACE`], since a wrong key, URL or quota is
//! answered within that and a good answer can take seconds — so a wrong key or URL costs a few
//! requests, not one per concurrency slot, and a working provider costs no round trip at the
//! start. (With a known rate limit the limiter sends them at its steady rate, not as a burst.)
//! A provider whose limit is told where to start (`initial_concurrency`) sends that many
//! scouts: the user said it takes them, and holding a known capacity to 8 for the first half
//! second costs every run more than the extra 401s (unbilled) cost a run with a wrong key.
//! A run-fatal answer (401/403) halts the breaker: calls still waiting fail at once instead of
//! sending.
//!
//! A provider whose every attempt has failed for `unreachable_after` (unreachable, timing out,
//! overloaded) halts it too: the run ends with that error instead of probing forever. That
//! time runs from when the first failed attempt was sent (or the last answer, if later), not
//! from when it failed: a provider that hangs fails each attempt only at its timeout (minutes
//! for a long answer), and counted from the first failure the run would go on for a timeout,
//! `unreachable_after` and a probe's timeout after that.
//!
//! A [`Pass`] dropped unused (its call was cancelled) frees the probe slot it held.

use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long the others wait for an unproven provider's first answer: errors about the account
/// (401, 403, 404, `insufficient_quota`) and refused connections come back well within it,
/// while a model's answer takes as long as it generates.
pub const FIRST_ANSWER_GRACE: Duration = Duration::from_millis(500);

/// Requests an unproven provider may have out before its first answer. One would make every
/// run wait a round trip before its second request; a few cost little more when the key is
/// wrong (each is answered 401, unbilled), and the run's start loses almost nothing.
pub const FIRST_SCOUTS: u32 = 8;

#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSettings {
    pub failures: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
    /// Every attempt failing for this long halts the breaker (the run ends).
    pub unreachable_after: Duration,
    /// Requests an unproven provider may have out before its first answer.
    pub scouts: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 10,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(120),
            unreachable_after: Duration::from_secs(300),
            scouts: FIRST_SCOUTS,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    open_until: Instant,
    cooldown: Duration,
    /// Probes out: the half-open probe, or an unproven provider's scouts.
    probes_in_flight: u32,
    times_opened: u64,
    /// No request has been answered yet.
    unproven: bool,
    /// When an unproven provider's first request went out.
    first_sent: Option<Instant>,
    /// Set by a run-fatal answer: nothing is sent any more.
    halted: Option<String>,
    /// Since when every attempt has failed (none answered since), and the last error.
    failing_since: Option<Instant>,
    /// When the provider last answered (anything that shows it reachable).
    last_answered: Option<Instant>,
    last_error: String,
}

impl Inner {
    /// Probes that may be out at once: an unproven provider's scouts, else the one probe.
    fn probes_allowed(&self, scouts: u32) -> u32 {
        if self.unproven && self.times_opened == 0 {
            scouts.max(1)
        } else {
            1
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    pub name: String,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
    changed: Notify,
}

/// Permission to make one attempt; says whether it is the half-open probe. Dropped without
/// an outcome (the call was cancelled), it frees the probe slot for the next caller.
#[derive(Debug)]
pub struct Pass<'a> {
    breaker: &'a Breaker,
    probe: bool,
    done: bool,
    /// When the attempt went out: when the pass was given, until [`Pass::sent_now`].
    sent: Instant,
}

impl Pass<'_> {
    /// The attempt goes out now (after waiting for its slot and the rate), which is when a
    /// failure it meets began.
    pub fn sent_now(&mut self) {
        self.sent = Instant::now();
    }

    fn finish(mut self) -> bool {
        self.done = true;
        self.probe
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.release_probe();
        }
    }
}

impl Breaker {
    pub fn new(name: &str, settings: BreakerSettings) -> Breaker {
        let cooldown = settings.cooldown;
        Breaker {
            name: name.to_string(),
            settings,
            inner: Mutex::new(Inner {
                state: BreakerState::HalfOpen,
                consecutive_failures: 0,
                open_until: Instant::now(),
                cooldown,
                probes_in_flight: 0,
                times_opened: 0,
                unproven: true,
                first_sent: None,
                halted: None,
                failing_since: None,
                last_answered: None,
                last_error: String::new(),
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    pub fn times_opened(&self) -> u64 {
        self.lock().times_opened
    }

    /// Waits while the breaker is open (or a probe is out), then lets the caller through.
    /// `Err` once halted by a run-fatal answer, or when the provider has failed every attempt
    /// for `unreachable_after`.
    pub async fn pass(&self) -> Result<Pass<'_>, String> {
        let pass = |probe| Pass {
            breaker: self,
            probe,
            done: false,
            sent: Instant::now(),
        };
        loop {
            let notified = self.changed.notified();
            let wait_until = {
                let mut s = self.lock();
                if let Some(reason) = &s.halted {
                    return Err(reason.clone());
                }
                let now = Instant::now();
                let give_up_at = s.failing_since.map(|t| t + self.settings.unreachable_after);
                if s.state == BreakerState::Open && give_up_at.is_some_and(|at| now >= at) {
                    let reason = self.unreachable(&s);
                    s.halted = Some(reason.clone());
                    drop(s);
                    self.changed.notify_waiters();
                    return Err(reason);
                }
                match s.state {
                    BreakerState::Closed => return Ok(pass(false)),
                    BreakerState::Open if now >= s.open_until => {
                        s.state = BreakerState::HalfOpen;
                        s.probes_in_flight = 1;
                        tracing::info!("provider `{}`: half-open, sending a probe", self.name);
                        return Ok(pass(true));
                    }
                    BreakerState::HalfOpen
                        if s.probes_in_flight < s.probes_allowed(self.settings.scouts) =>
                    {
                        s.probes_in_flight += 1;
                        if s.unproven && s.times_opened == 0 {
                            s.first_sent.get_or_insert(now);
                        }
                        return Ok(pass(true));
                    }
                    // The first request has not failed fast: the provider takes requests.
                    BreakerState::HalfOpen
                        if s.unproven
                            && s.first_sent.is_some_and(|t| now >= t + FIRST_ANSWER_GRACE) =>
                    {
                        s.state = BreakerState::Closed;
                        drop(s);
                        self.changed.notify_waiters();
                        return Ok(pass(false));
                    }
                    BreakerState::HalfOpen if s.unproven && s.first_sent.is_some() => {
                        s.first_sent.map(|t| t + FIRST_ANSWER_GRACE)
                    }
                    BreakerState::Open => Some(match give_up_at {
                        Some(at) => s.open_until.min(at),
                        None => s.open_until,
                    }),
                    BreakerState::HalfOpen => None,
                }
            };
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn unreachable(&self, s: &Inner) -> String {
        let failing_for = s.failing_since.map_or(Duration::ZERO, |t| t.elapsed());
        format!(
            "provider `{}` failed every attempt for {:.0}s (unreachable_after_s: {:.0}); last error: {}",
            self.name,
            failing_for.as_secs_f64(),
            self.settings.unreachable_after.as_secs_f64(),
            s.last_error
        )
    }

    /// Why calls wait here now, and until when: the breaker is open after failures. `None`
    /// when calls go through (or wait only for the first answer of an unproven provider).
    pub fn pause_reason(&self) -> Option<(String, Instant)> {
        let s = self.lock();
        (s.state == BreakerState::Open && s.halted.is_none()).then(|| {
            (
                format!(
                    "provider `{}` is failing ({} failures in a row; last: {}), next probe",
                    self.name, s.consecutive_failures, s.last_error
                ),
                s.open_until,
            )
        })
    }

    fn release_probe(&self) {
        let mut s = self.lock();
        s.probes_in_flight = s.probes_in_flight.saturating_sub(1);
        drop(s);
        self.changed.notify_waiters();
    }

    /// The attempt behind `pass` reached the provider and was answered.
    pub fn succeeded(&self, pass: Pass<'_>) {
        let probe = pass.finish();
        let mut s = self.lock();
        s.consecutive_failures = 0;
        s.failing_since = None;
        s.last_answered = Some(Instant::now());
        let first = std::mem::take(&mut s.unproven);
        if probe || s.state != BreakerState::Closed {
            if s.state != BreakerState::Closed && !first {
                tracing::info!("provider `{}`: closed again, calls resume", self.name);
            }
            s.state = BreakerState::Closed;
            s.probes_in_flight = 0;
            s.cooldown = self.settings.cooldown;
            drop(s);
            self.changed.notify_waiters();
        }
    }

    /// The attempt failed in a way that says the provider is unwell (5xx, timeout, refused
    /// connection). Errors about the record itself and 429s (the limiter's business) are not
    /// reported here. `Err` with the reason when the provider has now failed every attempt
    /// for `unreachable_after`: the breaker is halted.
    pub fn failed(&self, pass: Pass<'_>, error: &str) -> Result<(), String> {
        let sent = pass.sent;
        let probe = pass.finish();
        let mut s = self.lock();
        let now = Instant::now();
        s.consecutive_failures += 1;
        s.last_error = error.to_string();
        // Failing since this attempt went out, unless the provider answered after that.
        let began = s.last_answered.map_or(sent, |answered| answered.max(sent));
        let since = *s.failing_since.get_or_insert(began);
        // One attempt alone may outlast `unreachable_after` (a long timeout): a second one
        // must fail too before the run ends.
        if s.halted.is_none()
            && s.consecutive_failures >= 2
            && now >= since + self.settings.unreachable_after
        {
            let reason = self.unreachable(&s);
            tracing::error!("{reason}");
            s.halted = Some(reason.clone());
            drop(s);
            self.changed.notify_waiters();
            return Err(reason);
        }
        let trip = if probe && s.unproven {
            // No answer yet at all: let the next caller probe, open only on the usual count.
            s.probes_in_flight = s.probes_in_flight.saturating_sub(1);
            s.consecutive_failures >= self.settings.failures
        } else if probe && s.state == BreakerState::HalfOpen {
            s.cooldown = (s.cooldown * 2).min(self.settings.max_cooldown);
            true
        } else {
            // A scout answered after another one proved the provider: an ordinary failure.
            s.state == BreakerState::Closed && s.consecutive_failures >= self.settings.failures
        };
        if trip {
            s.first_sent = None;
            s.state = BreakerState::Open;
            s.probes_in_flight = 0;
            s.open_until = Instant::now() + s.cooldown;
            s.times_opened += 1;
            tracing::warn!(
                "provider `{}`: {} failures in a row, pausing its calls for {:.0}s",
                self.name,
                s.consecutive_failures,
                s.cooldown.as_secs_f64()
            );
            drop(s);
            self.changed.notify_waiters();
        } else if probe {
            drop(s);
            self.changed.notify_waiters();
        }
        Ok(())
    }

    /// A run-fatal answer (401/403): nothing more is sent to this provider.
    pub fn halt(&self, reason: &str) {
        self.lock().halted = Some(reason.to_string());
        self.changed.notify_waiters();
    }

    /// The attempt ended without telling anything about the provider's health (a 429, a
    /// record-level error): a probe slot is freed for the next caller.
    pub fn neutral(&self, pass: Pass<'_>) {
        if pass.finish() {
            self.release_probe();
        }
    }

    /// The provider answered in a way that says the account works (a 429, a 400 about one
    /// record): the others need not wait for a success to start.
    pub fn reachable(&self, pass: Pass<'_>) {
        let probe = pass.finish();
        let mut s = self.lock();
        s.failing_since = None;
        s.last_answered = Some(Instant::now());
        if s.unproven && probe {
            s.unproven = false;
            s.state = BreakerState::Closed;
            s.probes_in_flight = 0;
            drop(s);
            self.changed.notify_waiters();
        } else if probe {
            drop(s);
            self.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A breaker whose provider has answered once already.
    fn breaker() -> Breaker {
        let b = unproven();
        let first = futures::executor::block_on(b.pass()).unwrap();
        b.succeeded(first);
        b
    }

    fn unproven() -> Breaker {
        with_scouts(FIRST_SCOUTS)
    }

    fn with_scouts(scouts: u32) -> Breaker {
        Breaker::new(
            "p",
            BreakerSettings {
                failures: 3,
                cooldown: Duration::from_secs(1),
                max_cooldown: Duration::from_secs(4),
                unreachable_after: Duration::from_secs(60),
                scouts,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_and_closes() {
        let b = breaker();
        for _ in 0..3 {
            let p = b.pass().await.unwrap();
            b.failed(p, "HTTP 503").unwrap();
        }
        assert_eq!(b.state(), BreakerState::Open);
        let start = Instant::now();
        let probe = b.pass().await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(1));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // While the probe is out, others wait.
        assert!(
            tokio::time::timeout(Duration::from_secs(10), b.pass())
                .await
                .is_err()
        );
        b.succeeded(probe);
        assert_eq!(b.state(), BreakerState::Closed);
        let _ = b.pass().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_doubles_the_cooldown() {
        let b = breaker();
        for _ in 0..3 {
            let p = b.pass().await.unwrap();
            b.failed(p, "HTTP 503").unwrap();
        }
        let probe = b.pass().await.unwrap();
        b.failed(probe, "HTTP 503").unwrap();
        let start = Instant::now();
        let probe = b.pass().await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(2));
        b.succeeded(probe);
        assert_eq!(b.times_opened(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_scouts_go_and_a_halt_stops_the_waiters() {
        let b = std::sync::Arc::new(unproven());
        let start = Instant::now();
        let mut scouts = Vec::new();
        for _ in 0..FIRST_SCOUTS {
            scouts.push(b.pass().await.unwrap());
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the scouts go at once");
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.pass().await.map(|_| ()) })
        };
        tokio::time::sleep(FIRST_ANSWER_GRACE - Duration::from_millis(1)).await;
        assert!(!waiter.is_finished(), "others wait for the first answer");
        b.halt("HTTP 401: bad key");
        for scout in scouts {
            b.neutral(scout);
        }
        assert_eq!(waiter.await.unwrap(), Err("HTTP 401: bad key".to_string()));
    }

    #[tokio::test(start_paused = true)]
    async fn as_many_scouts_as_told_go_at_once_and_no_more() {
        let b = std::sync::Arc::new(with_scouts(40));
        let start = Instant::now();
        let scouts: Vec<_> = futures::future::join_all((0..40).map(|_| b.pass())).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "all 40 scouts go at once");
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.pass().await.map(|p| p.finish()) })
        };
        tokio::time::sleep(FIRST_ANSWER_GRACE - Duration::from_millis(1)).await;
        assert!(!waiter.is_finished(), "the 41st waits for the first answer");
        b.succeeded(scouts.into_iter().next().unwrap().unwrap());
        assert_eq!(waiter.await.unwrap(), Ok(false), "an answer lets it go");
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_request_that_has_not_failed_fast_lets_the_others_go() {
        let b = std::sync::Arc::new(unproven());
        let start = Instant::now();
        let scouts: Vec<_> = futures::future::join_all((0..FIRST_SCOUTS).map(|_| b.pass())).await;
        let next = tokio::time::timeout(Duration::from_secs(10), b.pass())
            .await
            .expect("the others go after the grace, without the first answer")
            .unwrap();
        assert_eq!(start.elapsed(), FIRST_ANSWER_GRACE);
        assert_eq!(b.state(), BreakerState::Closed);
        for scout in scouts {
            b.succeeded(scout.unwrap());
        }
        b.succeeded(next);
        // Only the very first request gets the grace: a never-answered provider that opened
        // probes alone until a probe is answered.
        let b = unproven();
        for _ in 0..3 {
            let p = b.pass().await.unwrap();
            b.failed(p, "HTTP 503").unwrap();
        }
        assert_eq!(b.state(), BreakerState::Open);
        let _probe = b.pass().await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(10), b.pass())
                .await
                .is_err(),
            "the half-open probe goes alone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_failure_does_not_open_it() {
        let b = unproven();
        let mut scouts = Vec::new();
        for _ in 0..FIRST_SCOUTS {
            scouts.push(b.pass().await.unwrap());
        }
        b.failed(scouts.pop().unwrap(), "HTTP 503").unwrap();
        // The next caller takes the failed scout's place at once, no cooldown.
        let start = Instant::now();
        let next = b.pass().await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        b.succeeded(next);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_scout_failing_after_another_proved_the_provider_is_an_ordinary_failure() {
        let b = unproven();
        let first = b.pass().await.unwrap();
        let late = b.pass().await.unwrap();
        b.succeeded(first);
        assert_eq!(b.state(), BreakerState::Closed);
        b.failed(late, "HTTP 503").unwrap();
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "one failure does not open it"
        );
        assert_eq!(b.times_opened(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn successes_reset_the_count() {
        let b = breaker();
        for _ in 0..10 {
            let p = b.pass().await.unwrap();
            b.failed(p, "HTTP 503").unwrap();
            let p = b.pass().await.unwrap();
            b.succeeded(p);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_whose_call_is_dropped_frees_the_slot() {
        let b = std::sync::Arc::new(breaker());
        for _ in 0..3 {
            let p = b.pass().await.unwrap();
            b.failed(p, "HTTP 503").unwrap();
        }
        // The probe's call is cancelled mid-flight (its future dropped).
        let call = {
            let b = b.clone();
            tokio::spawn(async move {
                let _probe = b.pass().await.unwrap();
                tokio::time::sleep(Duration::from_secs(3600)).await;
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        call.abort();
        let _ = call.await;
        // The next caller may probe at once instead of waiting forever.
        let next = tokio::time::timeout(Duration::from_millis(10), b.pass()).await;
        assert!(next.is_ok_and(|p| p.is_ok()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_failing_every_attempt_for_too_long_halts_it() {
        let b = std::sync::Arc::new(breaker());
        let start = Instant::now();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                loop {
                    let p = b.pass().await?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    b.failed(p, "connection refused")?;
                }
                #[allow(unreachable_code)]
                Ok::<(), String>(())
            })
        };
        let reason = waiter.await.unwrap().unwrap_err();
        assert!(
            reason.contains("failed every attempt for 60s (unreachable_after_s: 60)")
                && reason.contains("connection refused"),
            "{reason}"
        );
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_secs(60) && elapsed < Duration::from_secs(61),
            "{elapsed:?}"
        );
        // Everyone else is told at once.
        assert_eq!(b.pass().await.unwrap_err(), reason);
        // One success in between starts the clock again.
        let b = breaker();
        let p = b.pass().await.unwrap();
        b.failed(p, "HTTP 503").unwrap();
        tokio::time::sleep(Duration::from_secs(40)).await;
        let p = b.pass().await.unwrap();
        b.succeeded(p);
        let p = b.pass().await.unwrap();
        b.failed(p, "HTTP 503").unwrap();
        tokio::time::sleep(Duration::from_secs(40)).await;
        let p = b.pass().await.unwrap();
        assert!(b.failed(p, "HTTP 503").is_ok());
    }
}
