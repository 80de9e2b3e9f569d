//! The runtime: one task per stage, connected by bounded channels.
//!
//! Every consumer stage owns one input channel of capacity `buffer`; each producer holds a
//! sender to it (fan-in), and sends a copy to every consumer (fan-out). A full channel makes its
//! producer wait, so a slow sink slows the source and the records alive at any moment stay
//! below the sum of buffers plus what the stages hold in flight. Each stage runs at most
//! `concurrency` calls at once (`ordered: true` keeps input order). Nothing is dropped: a failed
//! record goes to the dead-letter file and is counted.

pub mod dead_letter;
pub mod report;
pub mod stats;

pub use dead_letter::DeadLetters;
pub use report::{RunReport, RunStatus, StageReport};
pub use stats::{RunStats, StageStats};

use crate::config::Plan;
use crate::error::{ErrorClass, Rejected, StageError};
use crate::record::Record;
use crate::stage::{BuildContext, BuiltStage, Processor, Sink, Source, Transform};
use futures::FutureExt;
use futures::stream::{BoxStream, StreamExt};
use serde_json::Value;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
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
    /// Cancel to stop the sources and drain (Ctrl-C).
    pub stop: CancellationToken,
}

impl RunOptions {
    pub fn new(state_dir: PathBuf) -> Self {
        RunOptions {
            run_id: new_run_id(),
            state_dir,
            limit: None,
            stop: CancellationToken::new(),
        }
    }
}

/// `20261122T223045Z-3fa2`: sortable by time, unique enough for one machine.
pub fn new_run_id() -> String {
    let now = chrono::Utc::now();
    let salt = (now.timestamp_subsec_nanos() ^ std::process::id().rotate_left(16)) & 0xffff;
    format!("{}-{salt:04x}", now.format("%Y%m%dT%H%M%SZ"))
}

/// Shared stop/abort state of one run.
struct Control {
    stop: CancellationToken,
    /// Set with the first run-fatal error; processors stop calling and dead-letter what is left.
    abort: CancellationToken,
    fatal: Mutex<Option<String>>,
}

impl Control {
    fn fail(&self, message: String) {
        if let Ok(mut fatal) = self.fatal.lock()
            && fatal.is_none()
        {
            tracing::error!("{message}");
            *fatal = Some(message);
        }
        self.abort.cancel();
        self.stop.cancel();
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

/// Senders into every consumer of one stage.
struct Outputs {
    targets: Vec<(mpsc::Sender<Record>, Arc<StageStats>)>,
}

impl Outputs {
    /// Sends one record to every consumer (a clone to all but the last), waiting while a
    /// consumer's buffer is full: this wait is the backpressure.
    async fn send(&self, record: Record, ctx: &StageCtx) {
        let Some(((last_tx, last_stats), rest)) = self.targets.split_last() else {
            return;
        };
        for (tx, stats) in rest {
            Self::send_one(tx, stats, record.clone(), ctx).await;
        }
        Self::send_one(last_tx, last_stats, record, ctx).await;
        ctx.stats.emitted.fetch_add(1, Relaxed);
    }

    async fn send_one(
        tx: &mpsc::Sender<Record>,
        to: &Arc<StageStats>,
        record: Record,
        ctx: &StageCtx,
    ) {
        to.enqueued.fetch_add(1, Relaxed);
        match tx.send(record).await {
            Ok(()) => {
                let depth = (tx.max_capacity() - tx.capacity()) as u64;
                to.max_queue_depth.fetch_max(depth, Relaxed);
            }
            Err(mpsc::error::SendError(record)) => {
                to.enqueued.fetch_sub(1, Relaxed);
                let error = StageError::record(format!(
                    "downstream stage `{}` is no longer running",
                    to.id
                ));
                ctx.dead_letter_record(&error, &record);
            }
        }
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
    nodes: Vec<BuiltNode>,
    stats: Arc<RunStats>,
    control: Arc<Control>,
    dead_letters: Arc<DeadLetters>,
    run_dir: PathBuf,
    pipeline: String,
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
    let control = Arc::new(Control {
        stop: options.stop.clone(),
        abort: CancellationToken::new(),
        fatal: Mutex::new(None),
    });
    let pools: BTreeMap<String, Arc<Semaphore>> = plan
        .pools
        .iter()
        .map(|(name, spec)| (name.clone(), Arc::new(Semaphore::new(spec.max_concurrency))))
        .collect();
    let started = Instant::now();
    let mut nodes = Vec::with_capacity(plan.stages.len());
    let mut all_stats = Vec::with_capacity(plan.stages.len());
    for planned in plan.stages {
        let ctx = BuildContext {
            stage_id: planned.id.clone(),
            base_dir: plan.base_dir.clone(),
            state_dir: options.state_dir.clone(),
            run_dir: run_dir.clone(),
        };
        let stage = planned
            .config
            .build(&ctx)
            .await
            .map_err(|e| RunError::Build {
                stage: planned.id.clone(),
                message: e.message,
            })?;
        let stats = Arc::new(StageStats::new(&planned.id, &planned.kind, planned.role));
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

    /// Runs to completion (or to a drained stop) and writes the report.
    pub async fn run(self) -> Result<RunReport, RunError> {
        let PreparedRun {
            nodes,
            stats,
            control,
            dead_letters,
            run_dir,
            pipeline,
            limit,
            started_at,
        } = self;
        // One input channel per consuming stage.
        let mut senders: Vec<Option<mpsc::Sender<Record>>> = Vec::with_capacity(nodes.len());
        let mut receivers: Vec<Option<mpsc::Receiver<Record>>> = Vec::with_capacity(nodes.len());
        for node in &nodes {
            if matches!(node.stage, BuiltStage::Source(_)) {
                senders.push(None);
                receivers.push(None);
            } else {
                let (tx, rx) = mpsc::channel(node.buffer);
                senders.push(Some(tx));
                receivers.push(Some(rx));
            }
        }
        let mut tasks = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.into_iter().enumerate() {
            let outputs = Outputs {
                targets: node
                    .consumers
                    .iter()
                    .filter_map(|&c| Some((senders[c].clone()?, stats.stages[c].clone())))
                    .collect(),
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
        if let Err(e) = dead_letters.flush() {
            control.fail(format!(
                "cannot flush dead letters to {}: {e}",
                dead_letters.path().display()
            ));
        }
        stats.dead_letters.store(dead_letters.count(), Relaxed);
        let error = control.fatal();
        let status = if error.is_some() {
            RunStatus::Failed
        } else if control.stop.is_cancelled() {
            RunStatus::Interrupted
        } else {
            RunStatus::Completed
        };
        let finished_at = chrono::Utc::now();
        let report = RunReport {
            run_id: stats.run_id.clone(),
            pipeline,
            status,
            error,
            started_at: started_at.to_rfc3339(),
            finished_at: finished_at.to_rfc3339(),
            duration_s: stats.started.elapsed().as_secs_f64(),
            limit,
            stages: RunReport::stage_reports(&stats),
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

async fn run_source(source: Arc<dyn Source>, outputs: Outputs, ctx: StageCtx, limit: Option<u64>) {
    let mut stream = source.records();
    let mut emitted: u64 = 0;
    loop {
        if limit.is_some_and(|l| emitted >= l) {
            break;
        }
        let item = tokio::select! {
            biased;
            _ = ctx.control.stop.cancelled() => break,
            item = stream.next() => item,
        };
        let Some(item) = item else { break };
        ctx.stats.received.fetch_add(1, Relaxed);
        match item {
            Ok(record) => {
                outputs.send(record, &ctx).await;
                emitted += 1;
            }
            Err(Rejected { subject, error }) => {
                ctx.failed(&error);
                ctx.dead_letter(&error, subject);
            }
        }
    }
}

/// Runs one call, turning a panic into a record error (the record is dead-lettered, the run
/// goes on). CPU-bound stages run on a worker thread of their own.
async fn call_processor(
    processor: Arc<dyn Processor>,
    record: &Record,
) -> Result<Vec<Record>, StageError> {
    if processor.cpu_bound() {
        let owned = record.clone();
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
    let message = panic
        .as_ref()
        .and_then(|p| {
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
        })
        .unwrap_or_else(|| "unknown panic".into());
    StageError::record(format!("stage panicked: {message}"))
}

async fn run_processor(
    processor: Arc<dyn Processor>,
    rx: mpsc::Receiver<Record>,
    outputs: Outputs,
    ctx: StageCtx,
    concurrency: usize,
    ordered: bool,
    pool: Option<Arc<Semaphore>>,
) {
    let calls = ReceiverStream::new(rx).map(|record| {
        ctx.stats.received.fetch_add(1, Relaxed);
        let processor = processor.clone();
        let ctx = ctx.clone();
        let pool = pool.clone();
        async move {
            if ctx.control.abort.is_cancelled() {
                let reason = ctx.control.fatal().unwrap_or_default();
                return (
                    record,
                    Err(StageError::record(format!(
                        "not processed: the run was stopped ({reason})"
                    ))),
                );
            }
            let _permit = match pool {
                Some(pool) => pool.acquire_owned().await.ok(),
                None => None,
            };
            ctx.stats.in_flight.fetch_add(1, Relaxed);
            let result = call_processor(processor, &record).await;
            ctx.stats.in_flight.fetch_sub(1, Relaxed);
            (record, result)
        }
    });
    let mut results: BoxStream<'_, (Record, Result<Vec<Record>, StageError>)> = if ordered {
        calls.buffered(concurrency).boxed()
    } else {
        calls.buffer_unordered(concurrency).boxed()
    };
    while let Some((record, result)) = results.next().await {
        match result {
            Ok(out) => {
                for r in out {
                    outputs.send(r, &ctx).await;
                }
            }
            Err(error) => {
                ctx.failed(&error);
                ctx.dead_letter_record(&error, &record);
            }
        }
    }
}

async fn run_sink(
    sink: Arc<dyn Sink>,
    rx: mpsc::Receiver<Record>,
    ctx: StageCtx,
    concurrency: usize,
    pool: Option<Arc<Semaphore>>,
) {
    let batch_size = sink.batch_size().max(1);
    let writes = ReceiverStream::new(rx)
        .ready_chunks(batch_size)
        .map(|batch| {
            ctx.stats.received.fetch_add(batch.len() as u64, Relaxed);
            let sink = sink.clone();
            let ctx = ctx.clone();
            let pool = pool.clone();
            async move {
                let _permit = match pool {
                    Some(pool) => pool.acquire_owned().await.ok(),
                    None => None,
                };
                ctx.stats.in_flight.fetch_add(batch.len() as i64, Relaxed);
                let result = AssertUnwindSafe(sink.write(&batch))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| Err(panic_error(Some(panic))));
                ctx.stats.in_flight.fetch_sub(batch.len() as i64, Relaxed);
                (batch, result)
            }
        });
    let mut results = writes.buffer_unordered(concurrency);
    while let Some((batch, result)) = results.next().await {
        match result {
            Ok(()) => {
                ctx.stats.emitted.fetch_add(batch.len() as u64, Relaxed);
            }
            Err(error) => {
                ctx.failed(&error);
                for record in &batch {
                    ctx.dead_letter_record(&error, record);
                }
            }
        }
    }
    if let Err(e) = sink.finish().await {
        ctx.control.fail(format!(
            "sink `{}` could not finish: {}",
            ctx.stats.id, e.message
        ));
    }
}

async fn run_transform(
    transform: Arc<dyn Transform>,
    rx: mpsc::Receiver<Record>,
    outputs: Outputs,
    ctx: StageCtx,
) {
    let counter = ctx.stats.clone();
    let input = ReceiverStream::new(rx)
        .inspect(move |_| {
            counter.received.fetch_add(1, Relaxed);
        })
        .boxed();
    let mut output = transform.transform(input);
    while let Some(item) = output.next().await {
        match item {
            Ok(record) => outputs.send(record, &ctx).await,
            Err(Rejected { subject, error }) => {
                ctx.failed(&error);
                ctx.dead_letter(&error, subject);
            }
        }
    }
}
