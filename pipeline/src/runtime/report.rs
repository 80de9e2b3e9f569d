//! `.pipe/runs/<run-id>/report.json`: what every stage did in one run.

use super::stats::RunStats;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every source was read to its end (or to `--limit`) and everything drained.
    Completed,
    /// Stopped early by Ctrl-C; what was in flight was drained and flushed.
    Interrupted,
    /// A run-fatal error stopped it (see `error`).
    Failed,
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
    pub started_at: String,
    pub finished_at: String,
    pub duration_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    pub stages: Vec<StageReport>,
    pub dead_letters: DeadLetterReport,
}

impl RunReport {
    pub(crate) fn stage_reports(stats: &RunStats) -> Vec<StageReport> {
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
