//! `.pipe/runs/<run-id>/report.json`: what every stage did in one run.

use super::stats::RunStats;
use crate::policy::{CallReport, PlanReport};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every source was read to its end (or to `--limit`) and everything drained.
    Completed,
    /// Stopped early by Ctrl-C or SIGTERM; what was in flight was drained and flushed.
    Interrupted,
    /// A run-fatal error stopped it (see `error`).
    Failed,
    /// The budget was spent: no new calls were admitted, the rest was dead-lettered with
    /// the reason (see `error`); a re-run with a larger budget finishes it.
    BudgetReached,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Serialize)]
pub struct StageReport {
    pub id: String,
    pub kind: String,
    pub role: crate::stage::Role,
    #[serde(rename = "in")]
    pub received: u64,
    pub out: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    pub wall_time_s: f64,
    pub max_queue_depth: u64,
    /// Sinks: records durably committed (see `Written::durable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub committed: Option<u64>,
    /// Sinks: batch writes retried after a retryable store error.
    #[serde(skip_serializing_if = "is_zero")]
    pub retries: u64,
    /// Named counts the stage reported (e.g. `empty_extractions`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub counts: std::collections::BTreeMap<String, u64>,
    /// Notes the stage reported (e.g. which extractor ran).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Remote calls (stages that call a provider).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<CallReport>,
    /// `pipe plan`: what the stage would send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanReport>,
}

/// Sums over every stage that calls a provider.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub calls: u64,
    pub attempts: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub rate_limited: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BudgetReport {
    pub max_usd: Option<f64>,
    pub max_tokens: Option<u64>,
    pub spent_usd: f64,
    pub spent_tokens: u64,
    pub reached: bool,
}

impl Totals {
    pub(crate) fn of(stats: &RunStats, resources: &crate::policy::Resources) -> Totals {
        let mut t = Totals::default();
        for s in &stats.stages {
            let c = s.calls.report();
            t.calls += c.calls;
            t.attempts += c.attempts;
            t.cache_hits += c.cache_hits;
            t.cache_misses += c.cache_misses;
            t.rate_limited += c.rate_limited;
            t.input_tokens += c.input_tokens;
            t.output_tokens += c.output_tokens;
            t.cost_usd += c.cost_usd;
        }
        let budget = resources.budget();
        if budget.is_limited() {
            let (spent_usd, spent_tokens) = budget.spent();
            let spec = budget.spec();
            t.budget = Some(BudgetReport {
                max_usd: spec.max_usd,
                max_tokens: spec.max_tokens,
                spent_usd,
                spent_tokens,
                reached: budget.exhausted().is_some(),
            });
        }
        t
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DeadLetterReport {
    /// Present only when something was dead-lettered.
    pub path: Option<String>,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub pipeline: String,
    pub status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `pipe plan`: nothing was sent or written; stages carry `plan` estimates.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub plan: bool,
    pub started_at: String,
    pub finished_at: String,
    pub duration_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    pub stages: Vec<StageReport>,
    /// Stages `when:` / `unless:` turned off for this run, with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<crate::config::SkippedStage>,
    /// Remote calls, tokens and cost over all stages.
    pub totals: Totals,
    pub dead_letters: DeadLetterReport,
}

impl RunReport {
    pub(crate) fn stage_reports(stats: &RunStats, dry_run: bool) -> Vec<StageReport> {
        stats
            .stages
            .iter()
            .map(|s| StageReport {
                id: s.id.clone(),
                kind: s.kind.clone(),
                role: s.role,
                received: s.received.load(Relaxed),
                out: s.emitted.load(Relaxed),
                failed: s.failed.load(Relaxed),
                dead_lettered: s.dead_lettered.load(Relaxed),
                wall_time_s: s
                    .finished_after()
                    .unwrap_or_else(|| stats.started.elapsed())
                    .as_secs_f64(),
                max_queue_depth: s.max_queue_depth.load(Relaxed),
                committed: (s.role == crate::stage::Role::Sink).then(|| s.committed.load(Relaxed)),
                retries: s.retries.load(Relaxed),
                counts: s.notes.counts(),
                notes: s.notes.lines(),
                calls: (s.calls.calls.load(Relaxed) > 0).then(|| s.calls.report()),
                plan: (dry_run && s.calls.planned_calls.load(Relaxed) > 0)
                    .then(|| s.calls.plan_report()),
            })
            .collect()
    }

    /// Written to a temporary name and renamed, so a reader never sees half a report.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text + "\n")?;
        std::fs::rename(&tmp, path)
    }
}
