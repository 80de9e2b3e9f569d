//! Test-only stage kinds, registered from outside the core like any third-party stage:
//! `numbers` (source), `probe` (processor with a behaviour), `collect` (sink that remembers).
#![allow(dead_code)]

use pipeline::config::{Env, Locator};
use pipeline::futures::stream::{self, BoxStream, StreamExt};
use pipeline::runtime::{self, RunOptions, RunReport};
use pipeline::{
    BatchProcessor, Batching, BuildContext, BuiltStage, Document, InputEnd, KindSet, Payload,
    PayloadKind, Processor, Produces, Provenance, Record, Registry, Rejected, Role, Sink, Source,
    StageConfig, StageError, Written, async_trait,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

/// Shared observations, keyed by a name each test picks (tests run in parallel).
#[derive(Default)]
pub struct Probe {
    pub collected: Mutex<Vec<Record>>,
    pub created: AtomicU64,
    pub consumed: AtomicU64,
    /// Largest `created - consumed` seen by the source: records alive in the pipeline.
    pub max_alive: AtomicU64,
    pub in_flight: AtomicI64,
    pub max_in_flight: AtomicI64,
    /// Sink write attempts (retries included).
    pub write_attempts: AtomicU64,
    /// Batch sizes a batch processor was called with.
    pub batches: Mutex<Vec<usize>>,
    /// How an aggregator was told its input ended.
    pub ends: Mutex<Vec<InputEnd>>,
}

static PROBES: LazyLock<Mutex<HashMap<String, Arc<Probe>>>> = LazyLock::new(Default::default);

pub fn probe(name: &str) -> Arc<Probe> {
    PROBES
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .clone()
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NumbersConfig {
    pub count: u64,
    #[serde(default)]
    pub prefix: String,
    pub probe: String,
}

#[async_trait]
impl StageConfig for NumbersConfig {
    const KIND: &'static str = "numbers";
    const DESCRIPTION: &'static str = "test source";
    const ROLE: Role = Role::Source;
    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Document]))
    }
    async fn build(&self, _: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Source(Arc::new(Numbers {
            count: self.count,
            prefix: self.prefix.clone(),
            probe: probe(&self.probe),
        })))
    }
}

struct Numbers {
    count: u64,
    prefix: String,
    probe: Arc<Probe>,
}

impl Source for Numbers {
    fn records(self: Arc<Self>) -> BoxStream<'static, Result<Record, Rejected>> {
        stream::iter(0..self.count)
            .map(move |i| {
                let created = self.probe.created.fetch_add(1, SeqCst) + 1;
                let alive = created - self.probe.consumed.load(SeqCst);
                self.probe.max_alive.fetch_max(alive, SeqCst);
                let id = format!("{}{i}", self.prefix);
                Ok(Record::new(
                    id.clone(),
                    Provenance {
                        document_id: id.clone(),
                        ..Default::default()
                    },
                    Payload::Document(Document {
                        text: id,
                        format: "test".into(),
                    }),
                ))
            })
            .boxed()
    }
}

#[derive(Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    Noop,
    /// Sleeps 0..8 ms, derived from the record id, so calls finish out of order.
    Jitter,
    /// Record error for every record whose number is a multiple of `n`.
    FailEvery,
    /// Run-fatal error at record number `n`.
    FatalAt,
    /// Panics at record number `n`.
    PanicAt,
    /// Sleeps `n` ms (an I/O-bound call).
    Sleep,
    /// `n` outputs per record (ids `<id>.<k>`), as a chunker gives many chunks per document.
    Explode,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    pub behaviour: Behaviour,
    #[serde(default)]
    pub n: u64,
    pub probe: String,
}

#[async_trait]
impl StageConfig for ProbeConfig {
    const KIND: &'static str = "probe";
    const DESCRIPTION: &'static str = "test processor";
    const ROLE: Role = Role::Processor;
    fn accepts() -> KindSet {
        KindSet::ANY
    }
    fn produces() -> Produces {
        Produces::SameAsInput
    }
    async fn build(&self, _: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Processor(Arc::new(ProbeProcessor {
            behaviour: self.behaviour,
            n: self.n,
            probe: probe(&self.probe),
        })))
    }
}

struct ProbeProcessor {
    behaviour: Behaviour,
    n: u64,
    probe: Arc<Probe>,
}

fn number(record: &Record) -> u64 {
    let digits: String = record.id.chars().filter(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}

#[async_trait]
impl Processor for ProbeProcessor {
    async fn process(&self, record: &Record) -> Result<Vec<Record>, StageError> {
        let now = self.probe.in_flight.fetch_add(1, SeqCst) + 1;
        self.probe.max_in_flight.fetch_max(now, SeqCst);
        let n = number(record);
        let result = match self.behaviour {
            Behaviour::Noop => Ok(vec![record.clone()]),
            Behaviour::Jitter => {
                let ms =
                    pipeline::record::stable_id(&[record.id.as_bytes()]).as_bytes()[0] as u64 % 8;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(vec![record.clone()])
            }
            Behaviour::FailEvery if n.is_multiple_of(self.n) => Err(StageError::record(format!(
                "{} is a multiple of {}",
                n, self.n
            ))),
            Behaviour::FatalAt if n == self.n => Err(StageError::run("credentials rejected (401)")),
            Behaviour::PanicAt if n == self.n => panic!("boom at {n}"),
            Behaviour::Sleep => {
                tokio::time::sleep(Duration::from_millis(self.n)).await;
                Ok(vec![record.clone()])
            }
            Behaviour::Explode => Ok((0..self.n)
                .map(|k| {
                    let mut out = record.clone();
                    out.id = format!("{}.{k}", record.id);
                    out
                })
                .collect()),
            _ => Ok(vec![record.clone()]),
        };
        self.probe.in_flight.fetch_sub(1, SeqCst);
        result
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectConfig {
    pub probe: String,
    #[serde(default = "one")]
    pub batch: usize,
    /// Busy work per record, in microseconds: a sink slower than the source.
    #[serde(default)]
    pub slow_us: u64,
    /// Async wait per batch, in milliseconds (an I/O-bound store).
    #[serde(default)]
    pub wait_ms: u64,
    /// Records whose number is a multiple of this fail alone (per-record outcome).
    #[serde(default)]
    pub fail_every: Option<u64>,
    /// The first this-many write attempts fail with a retryable error (a store restarting).
    #[serde(default)]
    pub transient_failures: u64,
}

fn one() -> usize {
    1
}

#[async_trait]
impl StageConfig for CollectConfig {
    const KIND: &'static str = "collect";
    const DESCRIPTION: &'static str = "test sink";
    const ROLE: Role = Role::Sink;
    fn accepts() -> KindSet {
        KindSet::ANY
    }
    fn produces() -> Produces {
        Produces::Nothing
    }
    async fn build(&self, _: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Sink(Arc::new(Collect {
            probe: probe(&self.probe),
            batch: self.batch,
            slow: Duration::from_micros(self.slow_us),
            wait: Duration::from_millis(self.wait_ms),
            fail_every: self.fail_every,
            transient_failures: AtomicU64::new(self.transient_failures),
        })))
    }
}

struct Collect {
    probe: Arc<Probe>,
    batch: usize,
    slow: Duration,
    wait: Duration,
    fail_every: Option<u64>,
    transient_failures: AtomicU64,
}

#[async_trait]
impl Sink for Collect {
    fn batch_size(&self) -> usize {
        self.batch
    }
    async fn write(&self, batch: &[Record]) -> Result<Written, StageError> {
        self.probe.write_attempts.fetch_add(1, SeqCst);
        if !self.wait.is_zero() {
            tokio::time::sleep(self.wait).await;
        }
        let transient = self
            .transient_failures
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if transient {
            return Err(StageError::retryable("store restarting", Some(0.01)));
        }
        let mut failed = Vec::new();
        for (index, record) in batch.iter().enumerate() {
            if let Some(every) = self.fail_every
                && number(record).is_multiple_of(every)
            {
                failed.push((index, StageError::record(format!("{} refused", record.id))));
                continue;
            }
            if !self.slow.is_zero() {
                let until = std::time::Instant::now() + self.slow;
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            self.probe.collected.lock().unwrap().push(record.clone());
            self.probe.consumed.fetch_add(1, SeqCst);
        }
        Ok(Written::durable().with_failures(failed))
    }
}

pub fn registry() -> Registry {
    let mut registry = stages::builtin_registry();
    registry
        .register::<NumbersConfig>()
        .register::<ProbeConfig>()
        .register::<CollectConfig>()
        .register::<WindowConfig>()
        .register::<BatcherConfig>()
        .register::<GatherConfig>();
    registry
}

/// `batcher`: a batch processor that passes records on, `size` per call; records whose number
/// is a multiple of `fail_every` fail alone; a batch holding record `panic_at` panics.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatcherConfig {
    pub probe: String,
    pub size: usize,
    #[serde(default)]
    pub max_weight: Option<u64>,
    #[serde(default)]
    pub max_wait_ms: u64,
    #[serde(default)]
    pub fail_every: Option<u64>,
    #[serde(default)]
    pub panic_at: Option<u64>,
    /// Async wait per call, in milliseconds.
    #[serde(default)]
    pub wait_ms: u64,
}

#[async_trait]
impl StageConfig for BatcherConfig {
    const KIND: &'static str = "batcher";
    const DESCRIPTION: &'static str = "test batch processor";
    const ROLE: Role = Role::Batch;
    fn accepts() -> KindSet {
        KindSet::ANY
    }
    fn produces() -> Produces {
        Produces::SameAsInput
    }
    async fn build(&self, _: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Batch(Arc::new(Batcher {
            probe: probe(&self.probe),
            batching: Batching {
                max_records: self.size,
                max_weight: self.max_weight,
                max_wait: Duration::from_millis(self.max_wait_ms),
            },
            fail_every: self.fail_every,
            panic_at: self.panic_at,
            wait: Duration::from_millis(self.wait_ms),
        })))
    }
}

struct Batcher {
    probe: Arc<Probe>,
    batching: Batching,
    fail_every: Option<u64>,
    panic_at: Option<u64>,
    wait: Duration,
}

#[async_trait]
impl BatchProcessor for Batcher {
    fn batching(&self) -> Batching {
        self.batching
    }
    /// Weight = the record's number + 1 (so tests can shape batches by weight).
    fn weight(&self, record: &Record) -> u64 {
        number(record) + 1
    }
    async fn process_batch(&self, batch: &[Record]) -> Vec<Result<Vec<Record>, StageError>> {
        self.probe.batches.lock().unwrap().push(batch.len());
        if !self.wait.is_zero() {
            tokio::time::sleep(self.wait).await;
        }
        if let Some(at) = self.panic_at
            && batch.iter().any(|r| number(r) == at)
        {
            panic!("batch with {at} exploded");
        }
        batch
            .iter()
            .map(|r| match self.fail_every {
                Some(every) if number(r).is_multiple_of(every) => {
                    Err(StageError::record(format!("{} is bad", r.id)))
                }
                _ => Ok(vec![r.clone()]),
            })
            .collect()
    }
}

/// `gather`: an aggregator that emits one Json record `{ids: [...]}` when its input is
/// complete, and dead-letters what it holds otherwise.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatherConfig {
    pub probe: String,
}

#[async_trait]
impl StageConfig for GatherConfig {
    const KIND: &'static str = "gather";
    const DESCRIPTION: &'static str = "test aggregator";
    const ROLE: Role = Role::Aggregate;
    fn accepts() -> KindSet {
        KindSet::ANY
    }
    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Json]))
    }
    async fn build(&self, _: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Aggregate(Box::new(Gather {
            probe: probe(&self.probe),
            held: Vec::new(),
        })))
    }
}

struct Gather {
    probe: Arc<Probe>,
    held: Vec<Record>,
}

#[async_trait]
impl pipeline::Aggregator for Gather {
    async fn add(&mut self, record: &Record) -> Result<(), StageError> {
        self.held.push(record.clone());
        Ok(())
    }
    async fn finish(&mut self, end: &InputEnd) -> pipeline::Finished {
        self.probe.ends.lock().unwrap().push(end.clone());
        let held = std::mem::take(&mut self.held);
        if !end.is_complete() {
            let error = StageError::record(format!("not gathered: input {}", end.describe()));
            return pipeline::Finished {
                emit: Vec::new(),
                dead_letter: held.into_iter().map(|r| (r, error.clone())).collect(),
            };
        }
        let mut ids: Vec<String> = held.into_iter().map(|r| r.id).collect();
        ids.sort_by_key(|id| {
            id.chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
                .parse::<u64>()
                .unwrap_or(0)
        });
        pipeline::Finished {
            emit: vec![Record::new(
                "gathered".into(),
                Provenance::default(),
                Payload::Json {
                    value: serde_json::json!({ "ids": ids }),
                },
            )],
            dead_letter: Vec::new(),
        }
    }
}

/// Loads YAML text and runs it to the end; the state dir is a fresh temp dir.
pub async fn run_yaml(yaml: &str) -> (RunReport, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let report = run_yaml_in(yaml, state.path(), None).await;
    (report, state)
}

pub async fn run_yaml_in(yaml: &str, state_dir: &std::path::Path, limit: Option<u64>) -> RunReport {
    let locator = Locator {
        file: Arc::from("test.yaml"),
        overrides: Vec::new(),
    };
    let plan = pipeline::config::load_str(yaml, &locator, &registry(), &Env::default())
        .unwrap_or_else(|d| panic!("invalid test pipeline:\n{d}"));
    let mut options = RunOptions::new(state_dir.to_path_buf());
    options.limit = limit;
    let prepared = runtime::prepare(plan, options).await.unwrap();
    prepared.run().await.unwrap()
}

pub fn stage<'a>(report: &'a RunReport, id: &str) -> &'a pipeline::runtime::StageReport {
    report
        .stages
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no stage {id}"))
}

/// `window`: a stream-to-stream transform grouping `size` records into one Json record listing
/// their ids; a record whose id is `reject` comes out as a rejection instead.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    pub size: usize,
    #[serde(default)]
    pub reject: Option<String>,
    /// Stop after emitting this many windows (ends early, leaving input behind).
    #[serde(default)]
    pub stop_after: Option<usize>,
    /// Panic when asked for the window after this many.
    #[serde(default)]
    pub panic_after: Option<usize>,
}

#[async_trait]
impl StageConfig for WindowConfig {
    const KIND: &'static str = "window";
    const DESCRIPTION: &'static str = "test transform";
    const ROLE: Role = Role::Transform;
    fn accepts() -> KindSet {
        KindSet::ANY
    }
    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Json]))
    }
    async fn build(&self, _: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Transform(Arc::new(Window {
            size: self.size,
            reject: self.reject.clone(),
            stop_after: self.stop_after,
            panic_after: self.panic_after,
        })))
    }
}

struct Window {
    size: usize,
    reject: Option<String>,
    stop_after: Option<usize>,
    panic_after: Option<usize>,
}

impl pipeline::Transform for Window {
    fn transform(
        self: Arc<Self>,
        input: BoxStream<'static, Record>,
    ) -> BoxStream<'static, Result<Record, Rejected>> {
        let this = self.clone();
        // Ending early takes only the records of the windows it emits; the rest stays queued.
        let input = match self.stop_after {
            Some(n) => input.take(n * self.size).boxed(),
            None => input,
        };
        let rejected = input.map(move |r| {
            if this.reject.as_deref() == Some(r.id.as_str()) {
                Err(Rejected::new(
                    serde_json::json!({ "id": r.id }),
                    StageError::record("rejected by window"),
                ))
            } else {
                Ok(r)
            }
        });
        let size = self.size;
        let rejected = rejected.chunks(size).flat_map(|items| {
            let mut out: Vec<Result<Record, Rejected>> = Vec::new();
            let mut ids = Vec::new();
            for item in items {
                match item {
                    Ok(r) => ids.push(r.id),
                    Err(e) => out.push(Err(e)),
                }
            }
            if !ids.is_empty() {
                let id = ids.join("+");
                out.push(Ok(Record::new(
                    id.clone(),
                    Provenance {
                        document_id: id,
                        ..Default::default()
                    },
                    Payload::Json {
                        value: serde_json::json!({ "ids": ids }),
                    },
                )));
            }
            stream::iter(out)
        });
        let panic_after = self.panic_after;
        rejected
            .enumerate()
            .map(move |(i, item)| {
                if panic_after.is_some_and(|n| i >= n) {
                    panic!("window {i} exploded");
                }
                item
            })
            .boxed()
    }
}
