//! The runtime: one task per stage, connected by bounded channels.
//!
//! Every consumer stage owns one input channel; each producer holds a sender to it (fan-in), and
//! sends a copy to every consumer (fan-out). Records travel in small batches — staged per edge
//! and flushed when full or as soon as the producer would otherwise wait — so a hop costs one
//! channel operation per batch, not per record, while a trickle of records is never held back.
//! An edge holds at most `buffer` records in all (the producer's staged batch, the channel, and
//! the batch the consumer is taking apart), so a full edge makes its producer wait: a slow sink
//! slows the source, and the records alive at any moment stay below the sum of buffers plus
//! what the stages hold in flight. Each stage runs at most `concurrency` calls at once
//! (`ordered: true` keeps input order). Nothing is dropped: a failed record goes to the
//! dead-letter file and is counted.

pub mod dead_letter;
mod open;
pub mod report;
pub mod stats;

pub use dead_letter::DeadLetters;
pub use open::contexts_for;
pub use report::{RunReport, RunStatus, StageReport};
pub use stats::{RunStats, StageNotes, StageStats};

use crate::config::Plan;
use crate::error::{ErrorClass, Rejected, StageError};
use crate::policy::{Resources, ResourcesOptions};
use crate::record::Record;
use crate::stage::{
    Aggregator, BatchProcessor, Batching, BuildContext, BuiltStage, InputEnd, Processor, Sink,
    Source, Transform, Written,
};
use futures::FutureExt;
use futures::stream::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{Semaphore, TryAcquireError, mpsc};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("stage `{stage}` could not start: {message}")]
    Build { stage: String, message: String },
    #[error("{0}")]
    Io(String),
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub run_id: String,
    /// `.pipe/` by default.
    pub state_dir: PathBuf,
    /// Stop each source after this many records (try before you pay).
    pub limit: Option<u64>,
    /// Cancel to stop the sources and drain (Ctrl-C, SIGTERM).
    pub stop: CancellationToken,
    /// Cancel to abort (a second signal): calls and writes in flight are abandoned and their
    /// records dead-lettered, everything still queued is dead-lettered unprocessed, and the
    /// report is written — quickly, and without losing track of a record.
    pub abort: CancellationToken,
    /// `--no-cache`: do not read cached answers (fresh ones are still stored).
    pub no_cache: bool,
    /// `pipe plan`: read and prepare the input for real, count what the remote calls would
    /// cost, send nothing and write nothing.
    pub dry_run: bool,
}

impl RunOptions {
    pub fn new(state_dir: PathBuf) -> Self {
        RunOptions {
            run_id: new_run_id(),
            state_dir,
            limit: None,
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            no_cache: false,
            dry_run: false,
        }
    }
}

/// `20261122T223045.123Z-3fa2`: sortable by time (to the millisecond, so runs started in the
/// same second still list in order), unique enough for one machine.
pub fn new_run_id() -> String {
    let now = chrono::Utc::now();
    let salt = (now.timestamp_subsec_nanos() ^ std::process::id().rotate_left(16)) & 0xffff;
    format!("{}-{salt:04x}", now.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// Shared stop/abort state of one run.
struct Control {
    stop: CancellationToken,
    /// Mirrors `stop`, cheap enough to read once per record.
    stopping: AtomicBool,
    /// Set with the first run-fatal error; processors stop calling and dead-letter what is left.
    aborted: AtomicBool,
    fatal: Mutex<Option<String>>,
    /// A source stopped before its end because the run was stopping.
    sources_cut: AtomicBool,
    budget: Arc<crate::policy::Budget>,
    abort: CancellationToken,
    /// Cancelled by a second signal (it is a child of `abort`) or with the first run-fatal
    /// error: calls not yet answered are dropped (a call waiting for a slot would otherwise
    /// still be sent to a provider that refuses them all). One token, so a call watches one.
    calls_stopped: CancellationToken,
}

impl Control {
    /// How the input of a stage whose producers have all finished ended.
    fn input_end(&self) -> InputEnd {
        if self.aborted.load(Relaxed) {
            InputEnd::Failed(self.fatal().unwrap_or_default())
        } else if self.budget.exhausted().is_some() {
            InputEnd::BudgetReached
        } else if self.sources_cut.load(Relaxed) {
            InputEnd::Interrupted
        } else {
            InputEnd::Complete
        }
    }

    fn fail(&self, message: String) {
        if let Ok(mut fatal) = self.fatal.lock()
            && fatal.is_none()
        {
            tracing::error!("{message}");
            *fatal = Some(message);
        }
        self.aborted.store(true, Relaxed);
        self.stopping.store(true, Relaxed);
        self.stop.cancel();
        self.calls_stopped.cancel();
    }

    /// Why a call was dropped once `calls_stopped` is cancelled.
    fn call_stopped_error(&self) -> StageError {
        if self.abort.is_cancelled() {
            StageError::record(ABORTED)
        } else {
            StageError::record(format!(
                "not finished: the run was stopped ({})",
                self.fatal().unwrap_or_default()
            ))
        }
    }

    fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }
}

/// What every stage task shares.
#[derive(Clone)]
struct StageCtx {
    stats: Arc<StageStats>,
    dead_letters: Arc<DeadLetters>,
    control: Arc<Control>,
}

impl StageCtx {
    fn dead_letter(&self, error: &StageError, subject: Value) {
        self.stats.dead_lettered.fetch_add(1, Relaxed);
        if let Err(e) = self
            .dead_letters
            .write(&self.stats.id, &self.stats.kind, error, subject)
        {
            // The record would be lost without trace: that is a run failure, never a shrug.
            self.control.fail(format!(
                "cannot write dead letter to {}: {e}",
                self.dead_letters.path().display()
            ));
        }
    }

    fn dead_letter_record(&self, error: &StageError, record: &Record) {
        let subject = serde_json::to_value(record).unwrap_or_else(|e| {
            Value::String(format!("<unserialisable record {}: {e}>", record.id))
        });
        self.dead_letter(error, subject);
    }

    fn failed(&self, error: &StageError) {
        self.stats.failed.fetch_add(1, Relaxed);
        if error.class == ErrorClass::Run {
            self.control.fail(format!(
                "stage `{}` stopped the run: {}",
                self.stats.id, error.message
            ));
        }
    }
}

/// Records per batch on an edge into a consumer with this `buffer`, and the record permits of
/// its channel, chosen so that staged batch + channel + the batch being taken apart <= `buffer`
/// (exact for buffer >= 3; smaller buffers behave as 3). The budget is in records, not
/// batches: a producer that flushes one record at a time still gets the whole buffer.
fn edge_shape(buffer: usize) -> (usize, usize) {
    let batch = (buffer / 4).clamp(1, 128);
    let permits = buffer.saturating_sub(2 * batch).max(batch);
    (batch, permits)
}

/// One edge: the records staged for a consumer, and its channel. The channel itself is
/// unbounded; `permits` (one per record) is what bounds it.
struct Edge {
    tx: mpsc::UnboundedSender<Vec<Record>>,
    permits: Arc<Semaphore>,
    to: Arc<StageStats>,
    staged: Vec<Record>,
    batch: usize,
}

/// Senders into every consumer of one stage.
struct Outputs {
    edges: Vec<Edge>,
    /// Records pushed since the count was last published (once per batch, not per record).
    unpublished: u64,
}

impl Outputs {
    /// Stages one record for every consumer (a clone for all but the last). Returns true when
    /// a batch is full: the caller must then [`send_full`](Self::send_full) before staging
    /// more. Synchronous on purpose: a record that only joins a batch builds no future.
    fn stage(&mut self, record: Record, ctx: &StageCtx) -> bool {
        let Some((last, rest)) = self.edges.split_last_mut() else {
            // Validation refuses unconsumed outputs; should one slip through, it is still not
            // dropped silently.
            let error = StageError::record("stage has no consumers for its output");
            ctx.dead_letter_record(&error, &record);
            return false;
        };
        let mut full = false;
        for edge in rest {
            edge.staged.push(record.clone());
            full |= edge.staged.len() >= edge.batch;
        }
        last.staged.push(record);
        self.unpublished += 1;
        full | (last.staged.len() >= last.batch)
    }

    /// Sends every full batch, waiting while a consumer's channel is full: this wait is the
    /// backpressure. Returns at once when every consumer has room.
    async fn send_full(&mut self, ctx: &StageCtx) {
        self.publish(ctx);
        for edge in &mut self.edges {
            while edge.staged.len() >= edge.batch {
                if !edge.try_send(ctx) {
                    edge.send(ctx).await;
                }
            }
        }
    }

    /// Stages one record and sends what is full.
    async fn push(&mut self, record: Record, ctx: &StageCtx) {
        if self.stage(record, ctx) {
            self.send_full(ctx).await;
        }
    }

    /// Sends whatever is staged. Called whenever the stage is about to wait for work, so a
    /// staged record never waits for a batch to fill.
    async fn flush(&mut self, ctx: &StageCtx) {
        self.publish(ctx);
        for edge in &mut self.edges {
            while !edge.staged.is_empty() {
                if !edge.try_send(ctx) {
                    edge.send(ctx).await;
                }
            }
        }
    }

    /// Publishes the count of records pushed (once per batch, not per record).
    fn publish(&mut self, ctx: &StageCtx) {
        ctx.stats
            .emitted
            .fetch_add(std::mem::take(&mut self.unpublished), Relaxed);
    }
}

impl Edge {
    /// Takes the next batch from the front of what is staged (a record with many outputs can
    /// stage more than one batch; a send never asks for more permits than a batch).
    fn take_batch(&mut self) -> Vec<Record> {
        if self.staged.len() <= self.batch {
            std::mem::replace(&mut self.staged, Vec::with_capacity(self.batch))
        } else {
            let rest = self.staged.split_off(self.batch);
            std::mem::replace(&mut self.staged, rest)
        }
    }

    fn next_batch_len(&self) -> u32 {
        self.staged.len().min(self.batch) as u32
    }

    /// Sends the next batch if the consumer has room now (the common case, with no future
    /// built); false if the caller must wait in [`send`](Self::send).
    fn try_send(&mut self, ctx: &StageCtx) -> bool {
        let acquired = self
            .permits
            .try_acquire_many(self.next_batch_len())
            .map(|permit| permit.forget());
        match acquired {
            Ok(()) => {
                let batch = self.take_batch();
                self.enqueue(batch, ctx);
                true
            }
            Err(TryAcquireError::Closed) => {
                let batch = self.take_batch();
                self.consumer_gone(batch, ctx);
                true
            }
            Err(TryAcquireError::NoPermits) => false,
        }
    }

    /// Sends the next batch, waiting for room: this wait is the backpressure. The consumer
    /// returns the permits when it takes a batch; it closes the semaphore if it goes away, so
    /// this never hangs.
    async fn send(&mut self, ctx: &StageCtx) {
        let acquired =
            (self.permits.acquire_many(self.next_batch_len()).await).map(|permit| permit.forget());
        let batch = self.take_batch();
        match acquired {
            Ok(()) => self.enqueue(batch, ctx),
            Err(_) => self.consumer_gone(batch, ctx),
        }
    }

    /// Puts a batch whose permits are taken on the channel.
    fn enqueue(&mut self, batch: Vec<Record>, ctx: &StageCtx) {
        let n = batch.len() as u64;
        let enqueued = self.to.enqueued.fetch_add(n, Relaxed) + n;
        match self.tx.send(batch) {
            Ok(()) => {
                let depth = enqueued.saturating_sub(self.to.received.load(Relaxed));
                self.to.max_queue_depth.fetch_max(depth, Relaxed);
            }
            Err(mpsc::error::SendError(batch)) => {
                self.to.enqueued.fetch_sub(n, Relaxed);
                self.consumer_gone(batch, ctx);
            }
        }
    }

    fn consumer_gone(&self, batch: Vec<Record>, ctx: &StageCtx) {
        let error = StageError::record(format!(
            "downstream stage `{}` is no longer running",
            self.to.id
        ));
        for record in &batch {
            ctx.dead_letter_record(&error, record);
        }
    }
}

/// The receiving end of an edge: returns permits as batches are taken, and closes them when
/// the consumer stops, so producers fail fast instead of waiting forever.
struct Inbox {
    rx: mpsc::UnboundedReceiver<Vec<Record>>,
    permits: Arc<Semaphore>,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.permits.close();
    }
}

/// A stage's input: batches from its channel, taken apart into records (counted per batch).
/// Its own type rather than a stream chain, so taking a ready record is a plain call.
struct Input {
    inbox: Inbox,
    current: std::vec::IntoIter<Record>,
    stats: Arc<StageStats>,
}

impl Input {
    fn new(inbox: Inbox, stats: Arc<StageStats>) -> Self {
        Input {
            inbox,
            current: Vec::new().into_iter(),
            stats,
        }
    }

    /// Starts on a batch taken from the channel: its room goes back to the producers.
    fn take_apart(&mut self, batch: Vec<Record>) {
        self.inbox.permits.add_permits(batch.len());
        self.stats.received.fetch_add(batch.len() as u64, Relaxed);
        self.current = batch.into_iter();
    }

    /// The next record if one is ready now: `None` if not yet, `Some(None)` at the end.
    fn ready(&mut self) -> Option<Option<Record>> {
        loop {
            if let Some(record) = self.current.next() {
                return Some(Some(record));
            }
            match self.inbox.rx.try_recv() {
                Ok(batch) => self.take_apart(batch),
                Err(mpsc::error::TryRecvError::Empty) => return None,
                Err(mpsc::error::TryRecvError::Disconnected) => return Some(None),
            }
        }
    }

    /// The next record, waiting for one; `None` at the end.
    async fn next(&mut self) -> Option<Record> {
        std::future::poll_fn(|cx| self.poll_record(cx)).await
    }

    fn poll_record(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Record>> {
        loop {
            if let Some(record) = self.current.next() {
                return std::task::Poll::Ready(Some(record));
            }
            match std::task::ready!(self.inbox.rx.poll_recv(cx)) {
                Some(batch) => self.take_apart(batch),
                None => return std::task::Poll::Ready(None),
            }
        }
    }
}

impl futures::Stream for Input {
    type Item = Record;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Record>> {
        self.get_mut().poll_record(cx)
    }
}

struct BuiltNode {
    stage: BuiltStage,
    concurrency: usize,
    ordered: bool,
    pool: Option<Arc<Semaphore>>,
    buffer: usize,
    consumers: Vec<usize>,
    ctx: StageCtx,
}

/// A pipeline whose stages are built (connected, opened) and ready to run.
pub struct PreparedRun {
    resources: Arc<Resources>,
    dry_run: bool,
    nodes: Vec<BuiltNode>,
    stats: Arc<RunStats>,
    control: Arc<Control>,
    dead_letters: Arc<DeadLetters>,
    run_dir: PathBuf,
    pipeline: String,
    skipped: Vec<crate::config::SkippedStage>,
    limit: Option<u64>,
    started_at: chrono::DateTime<chrono::Utc>,
}

/// Builds every stage (in topological order). A stage that fails to build stops here, before
/// any record moves.
pub async fn prepare(plan: Plan, options: RunOptions) -> Result<PreparedRun, RunError> {
    let run_dir = options.state_dir.join("runs").join(&options.run_id);
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| RunError::Io(format!("cannot create {}: {e}", run_dir.display())))?;
    // Absolute, so paths in the report work from any directory.
    let run_dir = std::path::absolute(&run_dir).unwrap_or(run_dir);
    let dead_letters = Arc::new(DeadLetters::new(&run_dir.join("dead_letters.jsonl")));
    let pools: BTreeMap<String, Arc<Semaphore>> = plan
        .pools
        .iter()
        .map(|(name, spec)| (name.clone(), Arc::new(Semaphore::new(spec.max_concurrency))))
        .collect();
    let resources = Arc::new(
        Resources::new(
            &plan.limits,
            &plan.providers,
            ResourcesOptions {
                // Only pipelines that call providers get (and create) a response cache.
                cache_path: (!plan.providers.is_empty())
                    .then(|| options.state_dir.join("cache.sqlite")),
                no_cache: options.no_cache,
                budget: plan.budget.clone(),
                stop: options.stop.clone(),
            },
        )
        .map_err(RunError::Io)?,
    );
    let control = Arc::new(Control {
        stop: options.stop.clone(),
        stopping: AtomicBool::new(false),
        aborted: AtomicBool::new(false),
        fatal: Mutex::new(None),
        sources_cut: AtomicBool::new(false),
        budget: resources.budget().clone(),
        abort: options.abort.clone(),
        calls_stopped: options.abort.child_token(),
    });
    let started = Instant::now();
    for skipped in &plan.skipped {
        tracing::info!(
            "stage `{}` ({}) is off for this run: {}",
            skipped.id,
            skipped.kind,
            skipped.reason
        );
    }
    let mut nodes = Vec::with_capacity(plan.stages.len());
    let mut all_stats = Vec::with_capacity(plan.stages.len());
    let upstream = plan.upstream_ids();
    let facts = crate::stage::Facts::default();
    for (index, planned) in plan.stages.into_iter().enumerate() {
        let stats = Arc::new(StageStats::new(&planned.id, &planned.kind, planned.role));
        let ctx = BuildContext {
            stage_id: planned.id.clone(),
            base_dir: plan.base_dir.clone(),
            state_dir: options.state_dir.clone(),
            run_dir: run_dir.clone(),
            resources: resources.clone(),
            calls: stats.calls.clone(),
            notes: stats.notes.clone(),
            dry_run: options.dry_run,
            upstream: upstream[index].clone(),
            facts: facts.clone(),
        };
        let stage = if options.dry_run && planned.role == crate::stage::Role::Sink {
            // A plan writes nothing: sinks are not even opened.
            BuiltStage::Sink(Arc::new(Discard))
        } else {
            let built = planned
                .config
                .build(&ctx)
                .await
                .map_err(|e| RunError::Build {
                    stage: planned.id.clone(),
                    message: e.message,
                })?;
            match built {
                BuiltStage::Processor(p) if options.dry_run && p.calls_remote() => {
                    BuiltStage::Processor(Arc::new(Planner(p)))
                }
                BuiltStage::Batch(p) if options.dry_run && p.calls_remote() => {
                    BuiltStage::Batch(Arc::new(BatchPlanner(p)))
                }
                other => other,
            }
        };
        if let BuiltStage::Source(source) = &stage {
            let expected = source.size_hint().unwrap_or(0);
            let expected =
                options.limit.map_or(
                    expected,
                    |l| if expected == 0 { l } else { expected.min(l) },
                );
            stats.expected.store(expected, Relaxed);
        }
        all_stats.push(stats.clone());
        nodes.push(BuiltNode {
            stage,
            concurrency: planned.concurrency,
            ordered: planned.ordered,
            pool: planned.pool.as_ref().and_then(|p| pools.get(p).cloned()),
            buffer: planned.buffer,
            consumers: planned.consumers,
            ctx: StageCtx {
                stats,
                dead_letters: dead_letters.clone(),
                control: control.clone(),
            },
        });
    }
    Ok(PreparedRun {
        resources,
        dry_run: options.dry_run,
        nodes,
        stats: Arc::new(RunStats {
            run_id: options.run_id.clone(),
            started,
            stages: all_stats,
            dead_letters: Default::default(),
        }),
        control,
        dead_letters,
        run_dir,
        pipeline: plan.file.display().to_string(),
        skipped: plan.skipped,
        limit: options.limit,
        started_at: chrono::Utc::now(),
    })
}

impl PreparedRun {
    /// Live counters (for progress bars).
    pub fn stats(&self) -> Arc<RunStats> {
        self.stats.clone()
    }

    pub fn run_dir(&self) -> &std::path::Path {
        &self.run_dir
    }

    /// The run's shared limits, cache and budget (for metrics).
    pub fn resources(&self) -> Arc<Resources> {
        self.resources.clone()
    }

    /// Runs to completion (or to a drained stop) and writes the report.
    pub async fn run(self) -> Result<RunReport, RunError> {
        let PreparedRun {
            resources,
            dry_run,
            nodes,
            stats,
            control,
            dead_letters,
            run_dir,
            pipeline,
            skipped,
            limit,
            started_at,
        } = self;
        // One input channel per consuming stage.
        type Entry = (mpsc::UnboundedSender<Vec<Record>>, Arc<Semaphore>, usize);
        let mut senders: Vec<Option<Entry>> = Vec::with_capacity(nodes.len());
        let mut receivers: Vec<Option<Inbox>> = Vec::with_capacity(nodes.len());
        for node in &nodes {
            if matches!(node.stage, BuiltStage::Source(_)) {
                senders.push(None);
                receivers.push(None);
            } else {
                let (batch, permits) = edge_shape(node.buffer);
                let permits = Arc::new(Semaphore::new(permits));
                let (tx, rx) = mpsc::unbounded_channel();
                senders.push(Some((tx, permits.clone(), batch)));
                receivers.push(Some(Inbox { rx, permits }));
            }
        }
        let stop_watch = {
            let control = control.clone();
            tokio::spawn(async move {
                control.stop.cancelled().await;
                control.stopping.store(true, Relaxed);
                control.abort.cancelled().await;
                control.fail("aborted by a second signal: work in flight was abandoned".into());
            })
        };
        let mut tasks = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.into_iter().enumerate() {
            let outputs = Outputs {
                edges: node
                    .consumers
                    .iter()
                    .filter_map(|&c| {
                        let (tx, permits, batch) = senders[c].clone()?;
                        Some(Edge {
                            tx,
                            permits,
                            to: stats.stages[c].clone(),
                            staged: Vec::with_capacity(batch),
                            batch,
                        })
                    })
                    .collect(),
                unpublished: 0,
            };
            let input = receivers[i].take();
            let started = stats.started;
            let finished_stats = node.ctx.stats.clone();
            let task = async move {
                match (node.stage, input) {
                    (BuiltStage::Source(source), _) => {
                        run_source(source, outputs, node.ctx, limit).await
                    }
                    (BuiltStage::Processor(p), Some(rx)) => {
                        run_processor(
                            p,
                            rx,
                            outputs,
                            node.ctx,
                            node.concurrency,
                            node.ordered,
                            node.pool,
                        )
                        .await
                    }
                    (BuiltStage::Batch(p), Some(rx)) => {
                        run_batch(
                            p,
                            rx,
                            outputs,
                            node.ctx,
                            node.concurrency,
                            node.ordered,
                            node.pool,
                        )
                        .await
                    }
                    (BuiltStage::Aggregate(a), Some(rx)) => {
                        run_aggregate(a, rx, outputs, node.ctx).await
                    }
                    (BuiltStage::Sink(sink), Some(rx)) => {
                        run_sink(sink, rx, node.ctx, node.concurrency, node.pool).await
                    }
                    (BuiltStage::Transform(t), Some(rx)) => {
                        run_transform(t, rx, outputs, node.ctx).await
                    }
                    (_, None) => {}
                }
                finished_stats.mark_finished(started);
            };
            tasks.push(tokio::spawn(task));
        }
        // Only the producers' clones keep the channels open from here on.
        drop(senders);
        for task in tasks {
            if let Err(e) = task.await {
                control.fail(format!("a stage task crashed: {e}"));
            }
        }
        stop_watch.abort();
        if let Err(e) = dead_letters.flush() {
            control.fail(format!(
                "cannot flush dead letters to {}: {e}",
                dead_letters.path().display()
            ));
        }
        stats.dead_letters.store(dead_letters.count(), Relaxed);
        let mut error = control.fatal();
        let budget_reached = resources.budget().exhausted();
        let stages = RunReport::stage_reports(&stats, dry_run);
        let mut status = if error.is_some() {
            RunStatus::Failed
        } else if budget_reached.is_some() {
            RunStatus::BudgetReached
        } else if control.stop.is_cancelled() {
            RunStatus::Interrupted
        } else {
            RunStatus::Completed
        };
        // A stage that let nothing through did not do its job, whatever else finished: a run
        // that ends "completed" with every record dead-lettered hides it (an empty graph).
        if status == RunStatus::Completed
            && let Some(stage) = stages
                .iter()
                .find(|s| s.received > 0 && s.failed == s.received)
        {
            status = RunStatus::Failed;
            error = Some(format!(
                "stage `{}`: every one of its {} records failed, nothing got through (the \
                 reasons are in the dead letters: {})",
                stage.id,
                stage.received,
                dead_letters.path().display()
            ));
        }
        let finished_at = chrono::Utc::now();
        let report = RunReport {
            run_id: stats.run_id.clone(),
            pipeline,
            status,
            error: error.or(budget_reached),
            plan: dry_run,
            started_at: started_at.to_rfc3339(),
            finished_at: finished_at.to_rfc3339(),
            duration_s: stats.started.elapsed().as_secs_f64(),
            limit,
            stages,
            skipped,
            totals: report::Totals::of(&stats, &resources),
            dead_letters: report::DeadLetterReport {
                path: (dead_letters.count() > 0).then(|| dead_letters.path().display().to_string()),
                count: dead_letters.count(),
            },
        };
        let path = run_dir.join("report.json");
        report
            .write(&path)
            .map_err(|e| RunError::Io(format!("cannot write {}: {e}", path.display())))?;
        Ok(report)
    }
}

async fn run_source(
    source: Arc<dyn Source>,
    mut outputs: Outputs,
    ctx: StageCtx,
    limit: Option<u64>,
) {
    let mut stream = source.records();
    let mut emitted: u64 = 0;
    loop {
        if limit.is_some_and(|l| emitted >= l) {
            break;
        }
        if ctx.control.stopping.load(Relaxed) {
            // Stopped before the end, unless the end was already there.
            if !matches!(stream.next().now_or_never(), Some(None)) {
                ctx.control.sources_cut.store(true, Relaxed);
            }
            break;
        }
        // Take what is ready; before waiting for more, send what is staged.
        let item = match stream.next().now_or_never() {
            Some(item) => item,
            None => {
                outputs.flush(&ctx).await;
                tokio::select! {
                    biased;
                    _ = ctx.control.stop.cancelled() => {
                        ctx.control.sources_cut.store(true, Relaxed);
                        break;
                    }
                    item = stream.next() => item,
                }
            }
        };
        let Some(item) = item else { break };
        ctx.stats.received.fetch_add(1, Relaxed);
        match item {
            Ok(record) => {
                if outputs.stage(record, &ctx) {
                    outputs.send_full(&ctx).await;
                }
                emitted += 1;
            }
            Err(Rejected { subject, error }) => {
                ctx.failed(&error);
                ctx.dead_letter(&error, subject);
            }
        }
    }
    drop(stream);
    outputs.flush(&ctx).await;
}

/// `pipe plan`'s stand-in for every sink: takes records, writes nothing.
struct Discard;

#[async_trait::async_trait]
impl Sink for Discard {
    async fn write(&self, _batch: &[Record]) -> Result<Written, StageError> {
        Ok(Written::durable())
    }
}

/// `pipe plan`'s wrapper of a stage that calls a provider: counts what each call would cost
/// and passes nothing on (what a model would answer is not known before it is asked).
struct Planner(Arc<dyn Processor>);

#[async_trait::async_trait]
impl Processor for Planner {
    async fn process(&self, record: &Record) -> Result<Vec<Record>, StageError> {
        self.0.plan(record).await?;
        Ok(Vec::new())
    }
}

/// [`Planner`] for batch processors: the batches are formed as in a run, then counted.
struct BatchPlanner(Arc<dyn BatchProcessor>);

#[async_trait::async_trait]
impl BatchProcessor for BatchPlanner {
    fn batching(&self) -> Batching {
        self.0.batching()
    }

    fn weight(&self, record: &Record) -> u64 {
        self.0.weight(record)
    }

    async fn process_batch(&self, batch: &[Record]) -> Vec<Result<Vec<Record>, StageError>> {
        match self.0.plan_batch(batch).await {
            Ok(()) => batch.iter().map(|_| Ok(Vec::new())).collect(),
            Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
        }
    }
}

/// Runs one call, turning a panic into a record error (the record is dead-lettered, the run
/// goes on). CPU-bound stages run on a worker thread of their own.
async fn call_processor(
    processor: &Arc<dyn Processor>,
    record: &Record,
) -> Result<Vec<Record>, StageError> {
    if processor.cpu_bound() {
        let owned = record.clone();
        let processor = processor.clone();
        let handle = tokio::spawn(async move { processor.process(&owned).await });
        return handle
            .await
            .unwrap_or_else(|e| Err(panic_error(e.try_into_panic().ok())));
    }
    AssertUnwindSafe(processor.process(record))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(panic_error(Some(panic))))
}

fn panic_error(panic: Option<Box<dyn std::any::Any + Send>>) -> StageError {
    StageError::record(format!("stage panicked: {}", panic_message(panic)))
}

fn panic_message(panic: Option<Box<dyn std::any::Any + Send>>) -> String {
    panic
        .as_ref()
        .and_then(|p| {
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
        })
        .unwrap_or_else(|| "unknown panic".into())
}

/// Calls in progress: completion order, or input order for `ordered: true`.
enum Pending<F: std::future::Future> {
    Unordered(futures::stream::FuturesUnordered<F>),
    Ordered(futures::stream::FuturesOrdered<F>),
}

impl<F: std::future::Future> Pending<F> {
    fn new(ordered: bool) -> Self {
        if ordered {
            Pending::Ordered(Default::default())
        } else {
            Pending::Unordered(Default::default())
        }
    }

    fn len(&self) -> usize {
        match self {
            Pending::Unordered(p) => p.len(),
            Pending::Ordered(p) => p.len(),
        }
    }

    fn push(&mut self, future: F) {
        match self {
            Pending::Unordered(p) => p.push(future),
            Pending::Ordered(p) => p.push_back(future),
        }
    }

    async fn next(&mut self) -> Option<F::Output> {
        match self {
            Pending::Unordered(p) => p.next().await,
            Pending::Ordered(p) => p.next().await,
        }
    }
}

/// A stage's calls in flight. While the stage waits to deliver downstream (a full edge), the
/// calls keep being polled — see [`InFlight::drive_while`] — so they finish and give back what
/// they hold (a provider's concurrency slot, a pool permit, the breaker's probe, a budget
/// reservation) instead of pinning it while this stage waits. A stage downstream that shares
/// the provider or the pool can then always run, and the pipeline cannot deadlock on them.
struct InFlight<F: std::future::Future> {
    pending: Pending<F>,
    /// Calls that finished while the stage was waiting downstream, in delivery order.
    parked: VecDeque<F::Output>,
}

impl<F: std::future::Future> InFlight<F> {
    fn new(ordered: bool) -> Self {
        InFlight {
            pending: Pending::new(ordered),
            parked: VecDeque::new(),
        }
    }

    /// Calls started and not yet delivered (parked ones count: they hold their results).
    fn len(&self) -> usize {
        self.pending.len() + self.parked.len()
    }

    /// A call that finishes on its first poll may skip the queue, unless order must be kept
    /// behind calls still running or parked.
    fn may_complete_inline(&self) -> bool {
        matches!(self.pending, Pending::Unordered(_)) || self.len() == 0
    }

    /// Awaits `work` while driving the calls in flight; what finishes meanwhile is parked.
    async fn drive_while<W: std::future::Future>(&mut self, work: W) -> W::Output {
        let mut work = std::pin::pin!(work);
        loop {
            if self.pending.len() == 0 {
                return work.await;
            }
            tokio::select! {
                biased;
                out = &mut work => return out,
                done = self.pending.next() => {
                    if let Some(done) = done {
                        self.parked.push_back(done);
                    }
                }
            }
        }
    }
}

// Lives for one loop turn on the stack: boxing the record would cost an allocation per record.
#[allow(clippy::large_enum_variant)]
enum Event<T> {
    Done(Option<T>),
    Input(Option<Record>),
    Timer,
}

/// Passes on the outputs of one record, or dead-letters it; true when a batch is full and the
/// stage must `send_full` (driving its calls in flight meanwhile) before staging more. Every
/// output is staged even past a full batch (they are in memory already); the sends that
/// follow take them a batch at a time. Synchronous, so a record costs no future here.
fn stage_outputs(
    record: Record,
    result: Result<Vec<Record>, StageError>,
    outputs: &mut Outputs,
    ctx: &StageCtx,
) -> bool {
    match result {
        Ok(out) => {
            let mut full = false;
            for r in out {
                full |= outputs.stage(r, ctx);
            }
            full
        }
        Err(error) => {
            ctx.failed(&error);
            ctx.dead_letter_record(&error, &record);
            false
        }
    }
}

/// Runs `work` unless the run is aborted first; then the work is dropped (whatever it held is
/// released) and its record(s) get the reason instead.
async fn abortable<T>(
    control: &Control,
    work: impl std::future::Future<Output = Result<T, StageError>>,
) -> Result<T, StageError> {
    tokio::select! {
        biased;
        result = work => result,
        _ = control.abort.cancelled() => Err(StageError::record(ABORTED)),
    }
}

const ABORTED: &str =
    "aborted by a second signal before this record was finished (re-run to process it)";

/// A processor's work on one record, dropped when the run is aborted or has failed (whatever
/// it held is released; nothing more is sent); its record(s) get the reason instead.
async fn unless_stopped<T>(
    control: &Control,
    work: impl std::future::Future<Output = Result<T, StageError>>,
) -> Result<T, StageError> {
    tokio::select! {
        biased;
        result = work => result,
        _ = control.calls_stopped.cancelled() => Err(control.call_stopped_error()),
    }
}

fn not_processed(ctx: &StageCtx) -> StageError {
    let reason = ctx.control.fatal().unwrap_or_default();
    StageError::record(format!("not processed: the run was stopped ({reason})"))
}

async fn acquire_pool(pool: &Option<Arc<Semaphore>>) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match pool {
        Some(pool) => pool.clone().acquire_owned().await.ok(),
        None => None,
    }
}

async fn run_processor(
    processor: Arc<dyn Processor>,
    rx: Inbox,
    mut outputs: Outputs,
    ctx: StageCtx,
    concurrency: usize,
    ordered: bool,
    pool: Option<Arc<Semaphore>>,
) {
    // The per-record futures borrow the stage's state instead of cloning Arcs for each record.
    let (processor, ctx_ref, pool) = (&processor, &ctx, &pool);
    let call = move |record: Record| {
        Box::pin(async move {
            if ctx_ref.control.aborted.load(Relaxed) {
                return (record, Err(not_processed(ctx_ref)));
            }
            let result = unless_stopped(&ctx_ref.control, async {
                let _permit = acquire_pool(pool).await;
                call_processor(processor, &record).await
            })
            .await;
            (record, result)
        })
    };
    let mut input = Input::new(rx, ctx.stats.clone());
    let mut input_done = false;
    let mut in_flight = InFlight::new(ordered);
    loop {
        // What finished while this stage waited downstream goes first (in order).
        if let Some((record, result)) = in_flight.parked.pop_front() {
            if stage_outputs(record, result, &mut outputs, &ctx) {
                in_flight.drive_while(outputs.send_full(&ctx)).await;
            }
            continue;
        }
        // Start calls while there is room and input is ready right now.
        while !input_done && in_flight.len() < concurrency {
            match input.ready() {
                None => break,
                Some(None) => input_done = true,
                Some(Some(record)) => {
                    let mut future = call(record);
                    if in_flight.may_complete_inline()
                        && let Some((record, result)) = future.as_mut().now_or_never()
                    {
                        if stage_outputs(record, result, &mut outputs, &ctx) {
                            in_flight.drive_while(outputs.send_full(&ctx)).await;
                        }
                        continue;
                    }
                    in_flight.pending.push(future);
                }
            }
        }
        if !in_flight.parked.is_empty() {
            continue;
        }
        if in_flight.pending.len() > 0 {
            if let Some(Some((record, result))) = in_flight.pending.next().now_or_never() {
                if stage_outputs(record, result, &mut outputs, &ctx) {
                    in_flight.drive_while(outputs.send_full(&ctx)).await;
                }
                continue;
            }
        } else if input_done {
            break;
        }
        // Nothing ready: send what is staged, then wait for a call to finish or, if there is
        // room, for more input. (The in-flight gauge is refreshed here, not per call.)
        ctx.stats.in_flight.store(in_flight.len() as i64, Relaxed);
        in_flight.drive_while(outputs.flush(&ctx)).await;
        if !in_flight.parked.is_empty() {
            continue;
        }
        let room = !input_done && in_flight.len() < concurrency;
        let event = tokio::select! {
            done = in_flight.pending.next(), if in_flight.pending.len() > 0 => Event::Done(done),
            record = input.next(), if room => Event::Input(record),
            else => continue,
        };
        match event {
            Event::Done(Some((record, result))) => {
                if stage_outputs(record, result, &mut outputs, &ctx) {
                    in_flight.drive_while(outputs.send_full(&ctx)).await;
                }
            }
            Event::Done(None) | Event::Timer => {}
            Event::Input(None) => input_done = true,
            Event::Input(Some(record)) => in_flight.pending.push(call(record)),
        }
    }
    ctx.stats.in_flight.store(0, Relaxed);
    outputs.flush(&ctx).await;
}

/// The batch a [`BatchProcessor`] stage is filling.
struct Filling {
    records: Vec<Record>,
    weight: u64,
    /// When the batch must go even if it is not full.
    due: Option<tokio::time::Instant>,
    /// A record that did not fit (weight): it starts the next batch.
    carry: Option<(Record, u64)>,
}

impl Filling {
    fn new() -> Self {
        Filling {
            records: Vec::new(),
            weight: 0,
            due: None,
            carry: None,
        }
    }

    fn is_full(&self, batching: &Batching) -> bool {
        self.carry.is_some()
            || self.records.len() >= batching.max_records.max(1)
            || batching
                .max_weight
                .is_some_and(|max| self.weight >= max && !self.records.is_empty())
    }

    fn add(&mut self, record: Record, weight: u64, batching: &Batching) {
        let over = batching
            .max_weight
            .is_some_and(|max| self.weight + weight > max);
        if over && !self.records.is_empty() {
            self.carry = Some((record, weight));
            return;
        }
        if self.records.is_empty() {
            self.due = Some(tokio::time::Instant::now() + batching.max_wait);
        }
        self.records.push(record);
        self.weight += weight;
    }

    /// Takes the batch to send; the carried record (if any) starts the next one.
    fn take(&mut self, batching: &Batching) -> Vec<Record> {
        let batch = std::mem::take(&mut self.records);
        self.weight = 0;
        self.due = None;
        if let Some((record, weight)) = self.carry.take() {
            self.add(record, weight, batching);
        }
        batch
    }
}

type Outcomes = Vec<(Record, Result<Vec<Record>, StageError>)>;

async fn run_batch(
    processor: Arc<dyn BatchProcessor>,
    rx: Inbox,
    mut outputs: Outputs,
    ctx: StageCtx,
    concurrency: usize,
    ordered: bool,
    pool: Option<Arc<Semaphore>>,
) {
    let batching = processor.batching();
    let (processor_ref, ctx_ref, pool_ref) = (&processor, &ctx, &pool);
    let call = move |batch: Vec<Record>| {
        Box::pin(async move {
            if ctx_ref.control.aborted.load(Relaxed) {
                let error = not_processed(ctx_ref);
                return batch
                    .into_iter()
                    .map(|r| (r, Err(error.clone())))
                    .collect::<Outcomes>();
            }
            let results = unless_stopped(&ctx_ref.control, async {
                let _permit = acquire_pool(pool_ref).await;
                Ok(AssertUnwindSafe(processor_ref.process_batch(&batch))
                    .catch_unwind()
                    .await)
            })
            .await;
            let results = match results {
                Err(aborted) => batch.iter().map(|_| Err(aborted.clone())).collect(),
                Ok(results) => match results {
                    Ok(results) if results.len() == batch.len() => results,
                    Ok(results) => {
                        let error = StageError::record(format!(
                            "stage returned {} results for a batch of {} records (a bug in the \
                         stage: every record needs exactly one)",
                            results.len(),
                            batch.len()
                        ));
                        batch.iter().map(|_| Err(error.clone())).collect()
                    }
                    Err(panic) => {
                        let error = panic_error(Some(panic));
                        batch.iter().map(|_| Err(error.clone())).collect()
                    }
                },
            };
            batch.into_iter().zip(results).collect::<Outcomes>()
        })
    };
    let mut input = Input::new(rx, ctx.stats.clone());
    let mut input_done = false;
    let mut filling = Filling::new();
    let mut in_flight = InFlight::new(ordered);
    loop {
        if let Some(outcomes) = in_flight.parked.pop_front() {
            for (record, result) in outcomes {
                if stage_outputs(record, result, &mut outputs, &ctx) {
                    in_flight.drive_while(outputs.send_full(&ctx)).await;
                }
            }
            continue;
        }
        // Fill the batch from what is ready now.
        while !input_done && !filling.is_full(&batching) {
            match input.ready() {
                None => break,
                Some(None) => input_done = true,
                Some(Some(record)) => {
                    let weight = processor.weight(&record);
                    filling.add(record, weight, &batching);
                }
            }
        }
        let has_batch = !filling.records.is_empty();
        let due = has_batch
            && (filling.is_full(&batching)
                || input_done
                || filling
                    .due
                    .is_some_and(|d| d <= tokio::time::Instant::now()));
        if due && in_flight.len() < concurrency {
            let batch = filling.take(&batching);
            in_flight.pending.push(call(batch));
            continue;
        }
        if in_flight.pending.len() > 0 {
            if let Some(Some(outcomes)) = in_flight.pending.next().now_or_never() {
                in_flight.parked.push_back(outcomes);
                continue;
            }
        } else if input_done && !has_batch {
            break;
        }
        let records_in_flight: usize = in_flight.len() * batching.max_records.max(1);
        ctx.stats
            .in_flight
            .store(records_in_flight.min(i64::MAX as usize) as i64, Relaxed);
        in_flight.drive_while(outputs.flush(&ctx)).await;
        if !in_flight.parked.is_empty() {
            continue;
        }
        let read_more = !input_done && !filling.is_full(&batching);
        let timer = match filling.due {
            Some(at) if has_batch && !due && in_flight.len() < concurrency => Some(at),
            _ => None,
        };
        let event = tokio::select! {
            done = in_flight.pending.next(), if in_flight.pending.len() > 0 => Event::Done(done),
            record = input.next(), if read_more => Event::Input(record),
            _ = tokio::time::sleep_until(timer.unwrap_or_else(tokio::time::Instant::now)), if timer.is_some() => Event::Timer,
            else => continue,
        };
        match event {
            Event::Done(Some(outcomes)) => in_flight.parked.push_back(outcomes),
            Event::Done(None) | Event::Timer => {}
            Event::Input(None) => input_done = true,
            Event::Input(Some(record)) => {
                let weight = processor.weight(&record);
                filling.add(record, weight, &batching);
            }
        }
    }
    ctx.stats.in_flight.store(0, Relaxed);
    outputs.flush(&ctx).await;
}

async fn run_aggregate(
    mut aggregator: Box<dyn Aggregator>,
    rx: Inbox,
    mut outputs: Outputs,
    ctx: StageCtx,
) {
    let mut input = Input::new(rx, ctx.stats.clone());
    let mut held: i64 = 0;
    while let Some(record) = input.next().await {
        let added = AssertUnwindSafe(aggregator.add(&record))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(panic_error(Some(panic))));
        match added {
            Ok(()) => {
                held += 1;
                ctx.stats.in_flight.store(held, Relaxed);
            }
            Err(error) => {
                ctx.failed(&error);
                ctx.dead_letter_record(&error, &record);
            }
        }
    }
    drop(input);
    let end = ctx.control.input_end();
    let finished = AssertUnwindSafe(aggregator.finish(&end))
        .catch_unwind()
        .await;
    ctx.stats.in_flight.store(0, Relaxed);
    let finished = match finished {
        Ok(finished) => finished,
        Err(panic) => {
            // What it held is gone: say so loudly rather than end as if nothing happened.
            ctx.control.fail(format!(
                "stage `{}` panicked while finishing; the {held} records it had taken in were \
                 not passed on: {}",
                ctx.stats.id,
                panic_message(Some(panic))
            ));
            return;
        }
    };
    for (record, error) in finished.dead_letter {
        ctx.failed(&error);
        ctx.dead_letter_record(&error, &record);
    }
    for record in finished.emit {
        outputs.push(record, &ctx).await;
    }
    outputs.flush(&ctx).await;
}

async fn run_sink(
    sink: Arc<dyn Sink>,
    rx: Inbox,
    ctx: StageCtx,
    concurrency: usize,
    pool: Option<Arc<Semaphore>>,
) {
    let batch_size = sink.batch_size().max(1);
    let retry = sink.retry();
    let (sink, ctx_ref, pool, retry) = (&sink, &ctx, &pool, &retry);
    let writes = Input::new(rx, ctx.stats.clone())
        .ready_chunks(batch_size)
        .map(move |batch| {
            let ctx = ctx_ref;
            async move {
                let _permit = acquire_pool(pool).await;
                ctx.stats.in_flight.fetch_add(batch.len() as i64, Relaxed);
                let result = abortable(
                    &ctx.control,
                    crate::policy::write_with_retries(
                        retry,
                        || ctx.control.aborted.load(Relaxed),
                        |attempt, error| {
                            ctx.stats.retries.fetch_add(1, Relaxed);
                            tracing::warn!(
                                "stage `{}`: writing {} records failed (attempt {attempt}), \
                             retrying: {}",
                                ctx.stats.id,
                                batch.len(),
                                error.message
                            );
                        },
                        || async {
                            AssertUnwindSafe(sink.write(&batch))
                                .catch_unwind()
                                .await
                                .unwrap_or_else(|panic| Err(panic_error(Some(panic))))
                        },
                    ),
                )
                .await;
                ctx.stats.in_flight.fetch_sub(batch.len() as i64, Relaxed);
                (batch, result)
            }
        });
    let mut results = writes.buffer_unordered(concurrency);
    // Written, but durable only once `finish` succeeds on a complete input.
    let mut awaiting_finish: u64 = 0;
    while let Some((batch, result)) = results.next().await {
        match result {
            Ok(written) => {
                let mut failed = vec![false; batch.len()];
                for (index, error) in written.failed {
                    match failed.get_mut(index) {
                        Some(flag) if !*flag => {
                            *flag = true;
                            ctx.failed(&error);
                            ctx.dead_letter_record(&error, &batch[index]);
                        }
                        _ => tracing::warn!(
                            "stage `{}` reported a failure for record {index} of a batch of {}",
                            ctx.stats.id,
                            batch.len()
                        ),
                    }
                }
                let ok = failed.iter().filter(|f| !**f).count() as u64;
                ctx.stats.emitted.fetch_add(ok, Relaxed);
                if written.durable {
                    ctx.stats.committed.fetch_add(ok, Relaxed);
                } else {
                    awaiting_finish += ok;
                }
            }
            Err(error) => {
                ctx.failed(&error);
                for record in &batch {
                    ctx.dead_letter_record(&error, record);
                }
            }
        }
    }
    drop(results);
    let end = ctx.control.input_end();
    match sink.finish(&end).await {
        Ok(()) if end.is_complete() => {
            ctx.stats.committed.fetch_add(awaiting_finish, Relaxed);
        }
        Ok(()) => {}
        Err(e) => ctx.control.fail(format!(
            "sink `{}` could not finish: {}",
            ctx.stats.id, e.message
        )),
    }
}

/// A transform's input: the stage's inbox behind a lock, so that what the transform did not
/// take before it ended (or panicked) can still be found and dead-lettered.
struct SharedInput {
    inbox: Inbox,
    /// The rest of the batch last taken from the channel.
    current: VecDeque<Record>,
}

async fn run_transform(
    transform: Arc<dyn Transform>,
    rx: Inbox,
    mut outputs: Outputs,
    ctx: StageCtx,
) {
    let shared = Arc::new(Mutex::new(SharedInput {
        inbox: rx,
        current: VecDeque::new(),
    }));
    let input = {
        let shared = shared.clone();
        let stats = ctx.stats.clone();
        futures::stream::poll_fn(move |cx| {
            let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
            let s = &mut *guard;
            loop {
                if let Some(record) = s.current.pop_front() {
                    return std::task::Poll::Ready(Some(record));
                }
                match s.inbox.rx.poll_recv(cx) {
                    std::task::Poll::Ready(Some(batch)) => {
                        s.inbox.permits.add_permits(batch.len());
                        stats.received.fetch_add(batch.len() as u64, Relaxed);
                        s.current.extend(batch);
                    }
                    other => return other.map(|_| None),
                }
            }
        })
        .boxed()
    };
    let mut output = transform.transform(input);
    let mut panicked = None;
    loop {
        // A panic inside the transform's stream ends the stage; both polls are guarded.
        let ready = std::panic::catch_unwind(AssertUnwindSafe(|| output.next().now_or_never()));
        let item = match ready {
            Ok(Some(item)) => item,
            Ok(None) => {
                outputs.flush(&ctx).await;
                let next = tokio::select! {
                    biased;
                    next = AssertUnwindSafe(output.next()).catch_unwind() => next,
                    _ = ctx.control.abort.cancelled() => break,
                };
                match next {
                    Ok(item) => item,
                    Err(panic) => {
                        panicked = Some(panic_message(Some(panic)));
                        break;
                    }
                }
            }
            Err(panic) => {
                panicked = Some(panic_message(Some(panic)));
                break;
            }
        };
        let Some(item) = item else { break };
        match item {
            Ok(record) => outputs.push(record, &ctx).await,
            Err(Rejected { subject, error }) => {
                ctx.failed(&error);
                ctx.dead_letter(&error, subject);
            }
        }
    }
    drop(output);
    outputs.flush(&ctx).await;
    // Whatever is still queued for the transform would be lost: dead-letter it. Closing the
    // permits first makes producers that are still sending dead-letter their records too.
    let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
    let s = &mut *guard;
    s.inbox.permits.close();
    s.inbox.rx.close();
    let reason = match &panicked {
        Some(message) => format!(
            "stage `{}` panicked before taking this record: {message}",
            ctx.stats.id
        ),
        None => format!("stage `{}` ended before taking this record", ctx.stats.id),
    };
    let error = StageError::record(reason);
    let mut left: Vec<Record> = s.current.drain(..).collect();
    while let Ok(batch) = s.inbox.rx.try_recv() {
        ctx.stats.received.fetch_add(batch.len() as u64, Relaxed);
        left.extend(batch);
    }
    drop(guard);
    for record in &left {
        ctx.failed(&error);
        ctx.dead_letter_record(&error, record);
    }
    if let Some(message) = panicked {
        ctx.control
            .fail(format!("stage `{}` panicked: {message}", ctx.stats.id));
    } else if !left.is_empty() {
        tracing::warn!(
            "stage `{}` ended with {} records still queued for it; they are dead-lettered",
            ctx.stats.id,
            left.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::edge_shape;

    #[test]
    fn an_edge_never_holds_more_than_its_buffer() {
        for buffer in 3..=4096 {
            let (batch, permits) = edge_shape(buffer);
            // Staged batch + channel + the batch the consumer is taking apart.
            assert!(
                batch + permits + batch <= buffer,
                "buffer {buffer}: {batch} + {permits}"
            );
            // A full batch always fits in the channel, or its producer would wait forever.
            assert!(batch >= 1 && permits >= batch, "buffer {buffer}");
        }
        assert_eq!(edge_shape(256), (64, 128));
    }
}
