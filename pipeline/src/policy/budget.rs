//! The run's budget: `budget: { max_usd, max_tokens }`. A call is admitted only if what has
//! been spent plus what calls in flight may still spend, plus this call's own worst case,
//! fits. When it does not fit only because of calls in flight, it waits for them to settle
//! (they usually spend far less than their worst case). When what has been *spent* plus this
//! call's worst case is over, the run stops (sources stop, the rest drains) and says why;
//! refused records are dead-lettered with the reason, so a re-run with a larger budget picks
//! them up (and the response cache makes the finished ones free).

use super::stats::to_nano;
use std::sync::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Stop admitting calls once this many dollars are spent (estimated for calls in flight).
    pub max_usd: Option<f64>,
    /// Stop admitting calls once this many tokens (input + output) are spent.
    pub max_tokens: Option<u64>,
}

#[derive(Debug, Default)]
struct Spent {
    nano_usd: u64,
    tokens: u64,
    reserved_nano_usd: u64,
    reserved_tokens: u64,
    in_flight: u64,
    exhausted: Option<String>,
}

#[derive(Debug)]
pub struct Budget {
    spec: BudgetSpec,
    spent: Mutex<Spent>,
    settled: Notify,
    stop: CancellationToken,
}

/// What an admitted call may spend. It records what the call spends as it goes; when it is
/// dropped — finished, failed, or cancelled mid-flight — that replaces the reservation.
#[derive(Debug)]
pub struct Admission<'a> {
    budget: &'a Budget,
    nano_usd: u64,
    tokens: u64,
    spent_nano_usd: u64,
    spent_tokens: u64,
}

impl Admission<'_> {
    /// Adds spending of this call (each attempt's bill, as it comes).
    pub fn spend(&mut self, usd: f64, tokens: u64) {
        self.spent_nano_usd += to_nano(usd);
        self.spent_tokens += tokens;
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let mut s = self.budget.lock();
        s.reserved_nano_usd = s.reserved_nano_usd.saturating_sub(self.nano_usd);
        s.reserved_tokens = s.reserved_tokens.saturating_sub(self.tokens);
        s.in_flight = s.in_flight.saturating_sub(1);
        s.nano_usd += self.spent_nano_usd;
        s.tokens += self.spent_tokens;
        drop(s);
        self.budget.settled.notify_waiters();
    }
}

/// Why an admission waits (for the progress line).
pub const WAITING_FOR_IN_FLIGHT: &str = "budget: waiting for calls in flight to settle";

impl Budget {
    pub fn new(spec: BudgetSpec, stop: CancellationToken) -> Budget {
        Budget {
            spec,
            spent: Mutex::new(Spent::default()),
            settled: Notify::new(),
            stop,
        }
    }

    pub fn spec(&self) -> &BudgetSpec {
        &self.spec
    }

    pub fn is_limited(&self) -> bool {
        self.spec.max_usd.is_some() || self.spec.max_tokens.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spent> {
        self.spent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the run stopped admitting calls, once it has.
    pub fn exhausted(&self) -> Option<String> {
        self.lock().exhausted.clone()
    }

    /// Whether a call of this worst case would have to wait for calls in flight right now.
    pub fn would_wait(&self, max_usd: f64, max_tokens: u64) -> bool {
        let s = self.lock();
        s.exhausted.is_none() && !self.fits(&s, to_nano(max_usd), max_tokens, true)
    }

    fn fits(&self, s: &Spent, nano: u64, tokens: u64, with_in_flight: bool) -> bool {
        let (reserved_nano, reserved_tokens) = if with_in_flight {
            (s.reserved_nano_usd, s.reserved_tokens)
        } else {
            (0, 0)
        };
        let usd_ok = self
            .spec
            .max_usd
            .is_none_or(|max| s.nano_usd + reserved_nano + nano <= to_nano(max));
        let tokens_ok = self
            .spec
            .max_tokens
            .is_none_or(|max| s.tokens + reserved_tokens + tokens <= max);
        usd_ok && tokens_ok
    }

    /// Admits a call that may cost up to `max_usd` and `max_tokens`, waiting while it only
    /// fails to fit because of calls in flight. `Err` (and the run stops) once what has been
    /// spent leaves no room for it.
    pub async fn admit(&self, max_usd: f64, max_tokens: u64) -> Result<Admission<'_>, String> {
        let nano = to_nano(max_usd);
        loop {
            let settled = self.settled.notified();
            {
                let mut s = self.lock();
                if let Some(reason) = &s.exhausted {
                    return Err(reason.clone());
                }
                if self.fits(&s, nano, max_tokens, true) {
                    s.reserved_nano_usd += nano;
                    s.reserved_tokens += max_tokens;
                    s.in_flight += 1;
                    return Ok(Admission {
                        budget: self,
                        nano_usd: nano,
                        tokens: max_tokens,
                        spent_nano_usd: 0,
                        spent_tokens: 0,
                    });
                }
                if !self.fits(&s, nano, max_tokens, false) || s.in_flight == 0 {
                    let reason = self.reached(&s, nano, max_tokens);
                    tracing::warn!("{reason}");
                    s.exhausted = Some(reason.clone());
                    drop(s);
                    self.stop.cancel();
                    self.settled.notify_waiters();
                    return Err(reason);
                }
            }
            settled.await;
        }
    }

    fn reached(&self, s: &Spent, nano: u64, tokens: u64) -> String {
        let over_usd = self
            .spec
            .max_usd
            .is_some_and(|max| s.nano_usd + nano > to_nano(max));
        if over_usd || self.spec.max_tokens.is_none() {
            format!(
                "budget reached: ${:.4} spent of max_usd ${:.4}, and the next call may cost up to \
                 ${:.4}; no new calls are admitted",
                s.nano_usd as f64 / 1e9,
                self.spec.max_usd.unwrap_or_default(),
                nano as f64 / 1e9
            )
        } else {
            format!(
                "budget reached: {} tokens spent of max_tokens {}, and the next call may use up \
                 to {tokens}; no new calls are admitted",
                s.tokens,
                self.spec.max_tokens.unwrap_or_default(),
            )
        }
    }

    pub fn spent(&self) -> (f64, u64) {
        let s = self.lock();
        (s.nano_usd as f64 / 1e9, s.tokens)
    }

    /// (usd, tokens) reserved by calls in flight.
    pub fn reserved(&self) -> (f64, u64) {
        let s = self.lock();
        (s.reserved_nano_usd as f64 / 1e9, s.reserved_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    fn usd(max: f64) -> BudgetSpec {
        BudgetSpec {
            max_usd: Some(max),
            max_tokens: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn spent_plus_the_next_worst_case_over_the_budget_stops_the_run() {
        let stop = CancellationToken::new();
        let b = Budget::new(usd(1.0), stop.clone());
        let mut a = b.admit(0.4, 100).await.unwrap();
        a.spend(0.7, 500);
        drop(a);
        assert_eq!(b.spent(), (0.7, 500));
        assert!(!stop.is_cancelled());
        // 0.7 spent: a 0.4 worst case can never fit.
        let e = b.admit(0.4, 100).await.unwrap_err();
        assert!(e.contains("budget reached: $0.7000 spent"), "{e}");
        assert!(stop.is_cancelled());
        // Once reached, it stays reached: the run is stopping.
        assert!(
            b.admit(0.01, 1)
                .await
                .unwrap_err()
                .contains("budget reached")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_only_lacks_room_because_of_calls_in_flight_waits_for_them() {
        let stop = CancellationToken::new();
        let b = std::sync::Arc::new(Budget::new(usd(1.0), stop.clone()));
        let first = b.admit(0.4, 100).await.unwrap();
        let second = b.admit(0.4, 100).await.unwrap();
        assert!(b.would_wait(0.4, 100));
        let third = {
            let b = b.clone();
            tokio::spawn(async move {
                let a = b.admit(0.4, 100).await.map(|_| ());
                (a, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!third.is_finished(), "it waits, it does not stop the run");
        assert!(!stop.is_cancelled());
        // The first call spends 0.1 of its 0.4: room for the third.
        let mut first = first;
        first.spend(0.1, 50);
        let settled_at = Instant::now();
        drop(first);
        let (admitted, at) = third.await.unwrap();
        assert!(admitted.is_ok());
        assert_eq!(at, settled_at);
        assert!(!stop.is_cancelled());
        drop(second);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_call_gives_its_reservation_back() {
        let b = Budget::new(usd(1.0), CancellationToken::new());
        {
            let mut a = b.admit(0.9, 100).await.unwrap();
            a.spend(0.05, 10);
            assert_eq!(b.reserved().1, 100);
        }
        assert_eq!(b.reserved(), (0.0, 0));
        assert_eq!(b.spent(), (0.05, 10));
        assert!(b.admit(0.9, 100).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn token_budget() {
        let b = Budget::new(
            BudgetSpec {
                max_usd: None,
                max_tokens: Some(1000),
            },
            CancellationToken::new(),
        );
        let mut a = b.admit(0.0, 900).await.unwrap();
        a.spend(0.0, 300);
        drop(a);
        let _held = b.admit(0.0, 700).await.unwrap();
        let e = b.admit(0.0, 701).await.unwrap_err();
        assert!(e.contains("300 tokens spent of max_tokens 1000"), "{e}");
    }
}
