//! Live counters per stage, shared by the runtime, the progress display and the report.

use crate::stage::Role;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct StageStats {
    pub id: String,
    pub kind: String,
    pub role: Role,
    /// Records taken from the input channel (for sources: items pulled from the stream).
    pub received: AtomicU64,
    /// Records sent downstream (for sinks: records written).
    pub emitted: AtomicU64,
    /// Calls that returned an error.
    pub failed: AtomicU64,
    /// Records (or source items) written to the dead-letter file by this stage.
    pub dead_lettered: AtomicU64,
    /// Calls running now.
    pub in_flight: AtomicI64,
    /// Records put into this stage's input channel by its producers.
    pub enqueued: AtomicU64,
    pub max_queue_depth: AtomicU64,
    /// Items a source expects to emit, when known (0 = unknown).
    pub expected: AtomicU64,
    /// Remote calls made through the policy stack (zero for local stages).
    pub calls: std::sync::Arc<crate::policy::CallStats>,
    /// Sinks: records durably committed (at write for durable writes, at a successful
    /// `finish` of a complete input for the others).
    pub committed: AtomicU64,
    /// Sinks: batches written again after a retryable error.
    pub retries: AtomicU64,
    /// What the stage itself reports (named counts and notes), see [`StageNotes`].
    pub notes: StageNotes,
    /// Nanoseconds from run start until the stage finished (0 = still running).
    finished_after_ns: AtomicU64,
}

/// Named counts and one-line notes a stage reports about its own work ("empty extractions",
/// "extractor: nlp_extract"): shown in the report and at the end of the run. Shared with the
/// stage through its `BuildContext`.
#[derive(Debug, Default, Clone)]
pub struct StageNotes(std::sync::Arc<std::sync::Mutex<NotesInner>>);

#[derive(Debug, Default)]
struct NotesInner {
    counts: std::collections::BTreeMap<String, u64>,
    lines: Vec<String>,
}

impl StageNotes {
    fn lock(&self) -> std::sync::MutexGuard<'_, NotesInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `n` to the count called `name`.
    pub fn count(&self, name: &str, n: u64) {
        *self.lock().counts.entry(name.to_string()).or_default() += n;
    }

    /// A line for the report and the end-of-run summary (repeated lines are kept once).
    pub fn note(&self, line: impl Into<String>) {
        let line = line.into();
        let mut inner = self.lock();
        if !inner.lines.contains(&line) {
            inner.lines.push(line);
        }
    }

    pub fn counts(&self) -> std::collections::BTreeMap<String, u64> {
        self.lock().counts.clone()
    }

    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }
}

impl StageStats {
    pub fn new(id: &str, kind: &str, role: Role) -> Self {
        StageStats {
            id: id.to_string(),
            kind: kind.to_string(),
            role,
            received: AtomicU64::new(0),
            emitted: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            enqueued: AtomicU64::new(0),
            max_queue_depth: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            calls: Default::default(),
            committed: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            notes: StageNotes::default(),
            finished_after_ns: AtomicU64::new(0),
        }
    }

    /// Records waiting in the input channel right now.
    pub fn queued(&self) -> u64 {
        self.enqueued
            .load(Relaxed)
            .saturating_sub(self.received.load(Relaxed))
    }

    /// Items this stage has dealt with: passed on (or written), or dead-lettered.
    pub fn done(&self) -> u64 {
        match self.role {
            Role::Source => self.emitted.load(Relaxed) + self.dead_lettered.load(Relaxed),
            _ => self
                .received
                .load(Relaxed)
                .saturating_sub(self.in_flight.load(Relaxed).max(0) as u64),
        }
    }

    pub fn mark_finished(&self, run_started: Instant) {
        let ns = run_started.elapsed().as_nanos().max(1) as u64;
        let _ = self
            .finished_after_ns
            .compare_exchange(0, ns, Relaxed, Relaxed);
    }

    pub fn finished_after(&self) -> Option<Duration> {
        match self.finished_after_ns.load(Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }
}

/// Everything the progress display needs.
#[derive(Debug)]
pub struct RunStats {
    pub run_id: String,
    pub started: Instant,
    /// In topological order.
    pub stages: Vec<std::sync::Arc<StageStats>>,
    pub dead_letters: AtomicU64,
}
