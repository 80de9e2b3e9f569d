//! The run's budget: `budget: { max_usd, max_tokens }`. A call is admitted only if what has
//! been spent plus what calls in flight may still spend, plus this call's own estimate, fits.
//! The first refusal stops the run (sources stop, the rest drains) and says why; refused
//! records are dead-lettered with the reason, so a re-run with a larger budget picks them up
//! (and the response cache makes the finished ones free).

use super::stats::to_nano;
use std::sync::Mutex;
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
    exhausted: Option<String>,
}

#[derive(Debug)]
pub struct Budget {
    spec: BudgetSpec,
    spent: Mutex<Spent>,
    stop: CancellationToken,
}

/// What an admitted call may spend; settled with the real figures.
#[derive(Debug)]
pub struct Admission {
    nano_usd: u64,
    tokens: u64,
}

impl Budget {
    pub fn new(spec: BudgetSpec, stop: CancellationToken) -> Budget {
        Budget {
            spec,
            spent: Mutex::new(Spent::default()),
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

    pub fn admit(&self, max_usd: f64, max_tokens: u64) -> Result<Admission, String> {
        let mut s = self.lock();
        if let Some(reason) = &s.exhausted {
            return Err(reason.clone());
        }
        let nano = to_nano(max_usd);
        let over_usd = self
            .spec
            .max_usd
            .is_some_and(|max| s.nano_usd + s.reserved_nano_usd + nano > to_nano(max));
        let over_tokens = self
            .spec
            .max_tokens
            .is_some_and(|max| s.tokens + s.reserved_tokens + max_tokens > max);
        if over_usd || over_tokens {
            let reason = if over_usd {
                format!(
                    "budget reached: ${:.4} spent of max_usd ${:.4} (plus ${:.4} in flight); \
                     no new calls are admitted",
                    s.nano_usd as f64 / 1e9,
                    self.spec.max_usd.unwrap_or_default(),
                    s.reserved_nano_usd as f64 / 1e9
                )
            } else {
                format!(
                    "budget reached: {} tokens spent of max_tokens {} (plus {} in flight); \
                     no new calls are admitted",
                    s.tokens,
                    self.spec.max_tokens.unwrap_or_default(),
                    s.reserved_tokens
                )
            };
            tracing::warn!("{reason}");
            s.exhausted = Some(reason.clone());
            drop(s);
            self.stop.cancel();
            return Err(reason);
        }
        s.reserved_nano_usd += nano;
        s.reserved_tokens += max_tokens;
        Ok(Admission {
            nano_usd: nano,
            tokens: max_tokens,
        })
    }

    /// Replaces the admitted estimate with what was spent (also for failed attempts).
    pub fn settle(&self, admission: Admission, spent_usd: f64, spent_tokens: u64) {
        let mut s = self.lock();
        s.reserved_nano_usd = s.reserved_nano_usd.saturating_sub(admission.nano_usd);
        s.reserved_tokens = s.reserved_tokens.saturating_sub(admission.tokens);
        s.nano_usd += to_nano(spent_usd);
        s.tokens += spent_tokens;
    }

    pub fn spent(&self) -> (f64, u64) {
        let s = self.lock();
        (s.nano_usd as f64 / 1e9, s.tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_until_the_estimate_would_not_fit_then_stops_the_run() {
        let stop = CancellationToken::new();
        let b = Budget::new(
            BudgetSpec {
                max_usd: Some(1.0),
                max_tokens: None,
            },
            stop.clone(),
        );
        let a = b.admit(0.4, 100).unwrap();
        let c = b.admit(0.4, 100).unwrap();
        // 0.8 in flight: a third 0.4 would not fit.
        assert!(b.admit(0.4, 100).is_err());
        assert!(stop.is_cancelled());
        b.settle(a, 0.1, 50);
        b.settle(c, 0.1, 50);
        // Once reached, it stays reached: the run is stopping.
        assert!(b.admit(0.01, 1).unwrap_err().contains("budget reached"));
        assert_eq!(b.spent(), (0.2, 100));
    }

    #[test]
    fn token_budget() {
        let b = Budget::new(
            BudgetSpec {
                max_usd: None,
                max_tokens: Some(1000),
            },
            CancellationToken::new(),
        );
        let a = b.admit(0.0, 900).unwrap();
        b.settle(a, 0.0, 300);
        b.admit(0.0, 700).unwrap();
        assert!(b.admit(0.0, 1).is_err());
    }
}
