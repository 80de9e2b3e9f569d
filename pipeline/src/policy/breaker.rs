//! Circuit breaker per provider: after `failures` consecutive failed attempts the provider is
//! opened — calls wait (nothing is dropped) — for `cooldown`; then one probe at a time is let
//! through (half-open). A probe that succeeds closes it; one that fails opens it again, for
//! twice as long (up to `max_cooldown`).
//!
//! A provider starts *unproven*: its first request goes alone, and the rest wait for its
//! answer, so a wrong key or URL costs one request, not one per concurrency slot. A run-fatal
//! answer (401/403) halts the breaker: calls still waiting fail at once instead of sending.

use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSettings {
    pub failures: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 10,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(120),
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
    probe_in_flight: bool,
    times_opened: u64,
    /// No request has been answered yet.
    unproven: bool,
    /// Set by a run-fatal answer: nothing is sent any more.
    halted: Option<String>,
}

#[derive(Debug)]
pub struct Breaker {
    pub name: String,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
    changed: Notify,
}

/// Permission to make one attempt; says whether it is the half-open probe.
#[derive(Debug)]
pub struct Pass {
    probe: bool,
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
                probe_in_flight: false,
                times_opened: 0,
                unproven: true,
                halted: None,
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
    /// `Err` once halted by a run-fatal answer.
    pub async fn pass(&self) -> Result<Pass, String> {
        loop {
            let notified = self.changed.notified();
            let wait_until = {
                let mut s = self.lock();
                if let Some(reason) = &s.halted {
                    return Err(reason.clone());
                }
                match s.state {
                    BreakerState::Closed => return Ok(Pass { probe: false }),
                    BreakerState::Open if Instant::now() >= s.open_until => {
                        s.state = BreakerState::HalfOpen;
                        s.probe_in_flight = true;
                        tracing::info!("provider `{}`: half-open, sending a probe", self.name);
                        return Ok(Pass { probe: true });
                    }
                    BreakerState::HalfOpen if !s.probe_in_flight => {
                        s.probe_in_flight = true;
                        return Ok(Pass { probe: true });
                    }
                    BreakerState::Open => Some(s.open_until),
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

    /// The attempt behind `pass` reached the provider and was answered.
    pub fn succeeded(&self, pass: Pass) {
        let mut s = self.lock();
        s.consecutive_failures = 0;
        let first = std::mem::take(&mut s.unproven);
        if pass.probe || s.state != BreakerState::Closed {
            if s.state != BreakerState::Closed && !first {
                tracing::info!("provider `{}`: closed again, calls resume", self.name);
            }
            s.state = BreakerState::Closed;
            s.probe_in_flight = false;
            s.cooldown = self.settings.cooldown;
            drop(s);
            self.changed.notify_waiters();
        }
    }

    /// The attempt failed in a way that says the provider is unwell (5xx, timeout, refused
    /// connection). Errors about the record itself and 429s (the limiter's business) are not
    /// reported here.
    pub fn failed(&self, pass: Pass) {
        let mut s = self.lock();
        s.consecutive_failures += 1;
        let trip = if pass.probe && s.unproven {
            // No answer yet at all: let the next caller probe, open only on the usual count.
            s.probe_in_flight = false;
            s.consecutive_failures >= self.settings.failures
        } else if pass.probe {
            s.cooldown = (s.cooldown * 2).min(self.settings.max_cooldown);
            true
        } else {
            s.state == BreakerState::Closed && s.consecutive_failures >= self.settings.failures
        };
        if trip {
            s.state = BreakerState::Open;
            s.probe_in_flight = false;
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
        } else if pass.probe {
            drop(s);
            self.changed.notify_waiters();
        }
    }

    /// A run-fatal answer (401/403): nothing more is sent to this provider.
    pub fn halt(&self, reason: &str) {
        self.lock().halted = Some(reason.to_string());
        self.changed.notify_waiters();
    }

    /// The attempt ended without telling anything about the provider's health (a 429, a
    /// record-level error): a probe slot is freed for the next caller.
    pub fn neutral(&self, pass: Pass) {
        if pass.probe {
            let mut s = self.lock();
            s.probe_in_flight = false;
            drop(s);
            self.changed.notify_waiters();
        }
    }

    /// The provider answered in a way that says the account works (a 429, a 400 about one
    /// record): the others need not wait for a success to start.
    pub fn reachable(&self, pass: Pass) {
        let mut s = self.lock();
        if s.unproven && pass.probe {
            s.unproven = false;
            s.state = BreakerState::Closed;
            s.probe_in_flight = false;
            drop(s);
            self.changed.notify_waiters();
        } else {
            drop(s);
            self.neutral(pass);
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
        Breaker::new(
            "p",
            BreakerSettings {
                failures: 3,
                cooldown: Duration::from_secs(1),
                max_cooldown: Duration::from_secs(4),
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_and_closes() {
        let b = breaker();
        for _ in 0..3 {
            let p = b.pass().await.unwrap();
            b.failed(p);
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
            b.failed(p);
        }
        let probe = b.pass().await.unwrap();
        b.failed(probe);
        let start = Instant::now();
        let probe = b.pass().await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(2));
        b.succeeded(probe);
        assert_eq!(b.times_opened(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_request_goes_alone_and_a_halt_stops_the_waiters() {
        let b = std::sync::Arc::new(unproven());
        let first = b.pass().await.unwrap();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.pass().await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "others wait for the first answer");
        b.halt("HTTP 401: bad key");
        b.neutral(first);
        assert_eq!(waiter.await.unwrap(), Err("HTTP 401: bad key".to_string()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_failure_does_not_open_it() {
        let b = unproven();
        let first = b.pass().await.unwrap();
        b.failed(first);
        // The next caller probes at once, no cooldown.
        let start = Instant::now();
        let second = b.pass().await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        b.succeeded(second);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn successes_reset_the_count() {
        let b = breaker();
        for _ in 0..10 {
            let p = b.pass().await.unwrap();
            b.failed(p);
            let p = b.pass().await.unwrap();
            b.succeeded(p);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
