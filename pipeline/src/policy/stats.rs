//! Counters of remote calls, per stage: what the report, the progress bars and the metrics
//! endpoint show.

use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::time::Instant;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

#[derive(Debug, Default)]
pub struct CallStats {
    /// Calls asked for by the stage (one per record, plus repairs).
    pub calls: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Calls answered by an identical call that was in flight at the same time (paid once).
    pub coalesced: AtomicU64,
    /// Requests sent to the provider (first tries and retries).
    pub attempts: AtomicU64,
    pub retries: AtomicU64,
    /// Attempts answered 429.
    pub rate_limited: AtomicU64,
    pub timeouts: AtomicU64,
    /// Attempts that failed for any reason (429s and timeouts included).
    pub failed_attempts: AtomicU64,
    /// Calls refused because the budget was spent.
    pub over_budget: AtomicU64,
    pub input_tokens: AtomicU64,
    pub output_tokens: AtomicU64,
    pub cached_input_tokens: AtomicU64,
    pub cache_write_tokens: AtomicU64,
    /// Spent, in billionths of a dollar (so it can be an atomic integer).
    pub cost_nano_usd: AtomicU64,
    /// Attempts whose bill the provider did not show (a timeout after the request was sent,
    /// an unreadable answer, a call cancelled in flight), counted at their worst case
    /// (prompt + max_tokens) — included in the tokens and $ above.
    pub estimated_attempts: AtomicU64,
    pub estimated_tokens: AtomicU64,
    pub estimated_nano_usd: AtomicU64,
    /// What the response cache saved, at the same prices.
    pub saved_nano_usd: AtomicU64,
    pub in_flight: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    /// `pipe plan`: what would be sent.
    pub planned_calls: AtomicU64,
    pub planned_cached: AtomicU64,
    pub planned_input_tokens: AtomicU64,
    pub planned_max_output_tokens: AtomicU64,
    pub planned_nano_usd: AtomicU64,
    /// Why calls are waiting right now, beyond normal pacing.
    pub pauses: Pauses,
}

/// Calls that wait for a reason worth showing (a breaker open, a 429 pause, a spent daily
/// quota, the budget): what the progress line says as `paused: <reason>`.
#[derive(Debug, Default)]
pub struct Pauses {
    waiting: Mutex<Vec<(u64, String, Option<Instant>)>>,
    next: AtomicU64,
}

/// One call waiting; it stops counting when dropped.
#[derive(Debug)]
pub struct PauseGuard<'a> {
    pauses: &'a Pauses,
    id: u64,
}

impl Pauses {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, String, Option<Instant>)>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a call as paused for `reason` (until `until`, when known) while the guard lives.
    pub fn enter(&self, reason: String, until: Option<Instant>) -> PauseGuard<'_> {
        let id = self.next.fetch_add(1, Relaxed);
        self.lock().push((id, reason, until));
        PauseGuard { pauses: self, id }
    }

    /// The newest reason calls are waiting for, with the time left when known, and how many
    /// calls wait.
    pub fn current(&self) -> Option<String> {
        let waiting = self.lock();
        let (_, reason, until) = waiting.last()?;
        let mut text = reason.clone();
        if let Some(until) = until {
            let left = until
                .saturating_duration_since(Instant::now())
                .as_secs_f64();
            text.push_str(&format!(", resumes in {}", human_duration(left)));
        }
        if waiting.len() > 1 {
            text.push_str(&format!(" ({} calls waiting)", waiting.len()));
        }
        Some(text)
    }
}

fn human_duration(seconds: f64) -> String {
    match seconds {
        s if s < 90.0 => format!("{s:.0}s"),
        s if s < 5400.0 => format!("{:.0}m", s / 60.0),
        s => format!("{:.1}h", s / 3600.0),
    }
}

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        self.pauses.lock().retain(|(id, _, _)| *id != self.id);
    }
}

pub(crate) fn to_nano(usd: f64) -> u64 {
    (usd * 1e9).round().max(0.0) as u64
}

impl CallStats {
    pub fn cost_usd(&self) -> f64 {
        self.cost_nano_usd.load(Relaxed) as f64 / 1e9
    }

    pub fn tokens(&self) -> u64 {
        self.input_tokens.load(Relaxed) + self.output_tokens.load(Relaxed)
    }

    /// Why this stage's calls are paused right now, if they are.
    pub fn paused(&self) -> Option<String> {
        self.pauses.current()
    }

    pub fn is_used(&self) -> bool {
        self.calls.load(Relaxed) > 0 || self.planned_calls.load(Relaxed) > 0
    }

    pub(crate) fn observe_latency(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            if secs <= *bound {
                count.fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_micros
            .fetch_add(latency.as_micros() as u64, Relaxed);
    }

    /// Cumulative bucket counts (Prometheus style), total count, and sum in seconds.
    pub fn latency_histogram(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(&self.latency_buckets)
            .map(|(b, c)| (*b, c.load(Relaxed)))
            .collect();
        (
            buckets,
            self.latency_count.load(Relaxed),
            self.latency_sum_micros.load(Relaxed) as f64 / 1e6,
        )
    }

    pub fn report(&self) -> CallReport {
        let load = |a: &AtomicU64| a.load(Relaxed);
        CallReport {
            calls: load(&self.calls),
            cache_hits: load(&self.cache_hits),
            cache_misses: load(&self.cache_misses),
            coalesced: load(&self.coalesced),
            attempts: load(&self.attempts),
            retries: load(&self.retries),
            rate_limited: load(&self.rate_limited),
            timeouts: load(&self.timeouts),
            failed_attempts: load(&self.failed_attempts),
            over_budget: load(&self.over_budget),
            input_tokens: load(&self.input_tokens),
            output_tokens: load(&self.output_tokens),
            cached_input_tokens: load(&self.cached_input_tokens),
            cache_write_tokens: load(&self.cache_write_tokens),
            cost_usd: load(&self.cost_nano_usd) as f64 / 1e9,
            saved_by_cache_usd: load(&self.saved_nano_usd) as f64 / 1e9,
            estimated: EstimatedReport {
                attempts: load(&self.estimated_attempts),
                tokens: load(&self.estimated_tokens),
                cost_usd: load(&self.estimated_nano_usd) as f64 / 1e9,
            },
        }
    }

    pub fn plan_report(&self) -> PlanReport {
        let load = |a: &AtomicU64| a.load(Relaxed);
        PlanReport {
            calls: load(&self.planned_calls),
            cached: load(&self.planned_cached),
            input_tokens: load(&self.planned_input_tokens),
            max_output_tokens: load(&self.planned_max_output_tokens),
            max_cost_usd: load(&self.planned_nano_usd) as f64 / 1e9,
        }
    }
}

/// The `calls` section of a stage in report.json.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct CallReport {
    pub calls: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Calls answered by an identical call in flight at the same time (paid once).
    pub coalesced: u64,
    pub attempts: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub timeouts: u64,
    pub failed_attempts: u64,
    pub over_budget: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
    pub saved_by_cache_usd: f64,
    /// The part of the tokens and $ above that is an estimate, not a bill.
    pub estimated: EstimatedReport,
}

/// Attempts the provider bills without saying how much (a timeout after sending, an
/// unreadable answer, a call cancelled in flight): counted at their worst case, prompt +
/// max_tokens, so spending is never under-reported.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct EstimatedReport {
    pub attempts: u64,
    pub tokens: u64,
    pub cost_usd: f64,
}

/// What `pipe plan` says about one stage.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PlanReport {
    /// Calls the stage would make for its input.
    pub calls: u64,
    /// Of those, answered by the response cache (free).
    pub cached: u64,
    /// Prompt tokens of the calls that would be sent.
    pub input_tokens: u64,
    /// `max_tokens` summed over the calls that would be sent (the most output could cost).
    pub max_output_tokens: u64,
    /// Input at full price plus output at `max_tokens`: an upper bound.
    pub max_cost_usd: f64,
}
