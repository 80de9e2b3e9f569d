//! The stage traits. A stage kind is a config type (`StageConfig`) that builds one of six
//! runtime shapes: a `Source`, a `Processor`, a `BatchProcessor` (N records per call), a
//! `Sink`, an `Aggregator` (emits once its input has ended), or a stream-to-stream `Transform`.

use crate::error::{Rejected, StageError};
use crate::record::{KindSet, Record};
use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::sync::Arc;

/// Emits records. The runtime stops pulling (and drops the stream) on Ctrl-C or `--limit`.
pub trait Source: Send + Sync + 'static {
    /// The records; an `Err` item is something that could not become a record (an unreadable
    /// file): it is dead-lettered and counted, and the stream goes on.
    fn records(self: Arc<Self>) -> BoxStream<'static, Result<Record, Rejected>>;

    /// How many items the stream will yield, when known up front (for progress and ETA).
    fn size_hint(&self) -> Option<u64> {
        None
    }
}

/// One record in, zero or more out. Called concurrently (up to the stage's `concurrency`), so it
/// takes `&self`; state shared between calls needs its own synchronisation.
#[async_trait]
pub trait Processor: Send + Sync + 'static {
    async fn process(&self, record: &Record) -> Result<Vec<Record>, StageError>;

    /// CPU-heavy processors return true so that their calls are spread over worker threads
    /// instead of being interleaved on the stage's own task.
    fn cpu_bound(&self) -> bool {
        false
    }

    /// True for stages that call a provider through a [`crate::policy::CallPolicy`]: `pipe
    /// plan` then asks them to [`plan`](Processor::plan) instead of `process`.
    fn calls_remote(&self) -> bool {
        false
    }

    /// `pipe plan`: count what processing `record` would send (with `CallPolicy::plan`),
    /// without sending anything.
    async fn plan(&self, _record: &Record) -> Result<(), StageError> {
        Ok(())
    }
}

/// How a stage's input ended. Aggregators and sinks are told before they finish, so nothing
/// that only makes sense for the whole input (an entity resolution, a file renamed into place)
/// is published for part of it as if it were all.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "end", content = "reason")]
pub enum InputEnd {
    /// Everything the sources read arrived (records that failed upstream are dead-lettered,
    /// not missing). A `--limit` run is complete for the input it asked for.
    Complete,
    /// The run was stopped (Ctrl-C, SIGTERM) before the sources were exhausted.
    Interrupted,
    /// A run-fatal error stopped the run; the input is partial.
    Failed(String),
    /// The budget was reached; calls were refused and the input is partial.
    BudgetReached,
}

impl InputEnd {
    pub fn is_complete(&self) -> bool {
        matches!(self, InputEnd::Complete)
    }

    /// For messages: "complete", "interrupted", "failed: ...", "budget reached".
    pub fn describe(&self) -> String {
        match self {
            InputEnd::Complete => "complete".into(),
            InputEnd::Interrupted => "interrupted".into(),
            InputEnd::Failed(reason) => format!("failed: {reason}"),
            InputEnd::BudgetReached => "budget reached".into(),
        }
    }
}

/// What a sink did with one batch.
#[derive(Debug, Default)]
pub struct Written {
    /// Records of the batch that could not be written, by index, each with its own error;
    /// they are dead-lettered alone and the rest of the batch counts as written.
    pub failed: Vec<(usize, StageError)>,
    /// True when the written records are durable now (a committed transaction, an upsert
    /// acknowledged with `wait`); false when they become durable only at `finish` (a file
    /// renamed into place).
    pub durable: bool,
}

impl Written {
    /// Every record written and durable.
    pub fn durable() -> Written {
        Written {
            failed: Vec::new(),
            durable: true,
        }
    }

    /// Every record written; durable once `finish` succeeds.
    pub fn pending() -> Written {
        Written {
            failed: Vec::new(),
            durable: false,
        }
    }

    pub fn with_failures(mut self, failed: Vec<(usize, StageError)>) -> Written {
        self.failed = failed;
        self
    }
}

/// Receives records in batches (whatever is ready, up to `batch_size`).
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    fn batch_size(&self) -> usize {
        100
    }

    /// Writes a batch. `Ok` says per record what happened (see [`Written`]). `Err` fails the
    /// whole batch: a retryable error (a store that is restarting, a dropped connection) is
    /// retried as a unit with backoff by the runtime's policy — so writes must be idempotent,
    /// which upserts on deterministic ids are — then dead-lettered; any other error
    /// dead-letters the batch at once (class `run` stops the run).
    async fn write(&self, batch: &[Record]) -> Result<Written, StageError>;

    /// Called once after the last batch with how the input ended: flush, commit, close. A
    /// sink that publishes its output only at the end should do so only for
    /// `InputEnd::Complete` (and say where the partial output is otherwise).
    async fn finish(&self, _end: &InputEnd) -> Result<(), StageError> {
        Ok(())
    }

    /// Retry settings for batches that fail with a retryable error.
    fn retry(&self) -> crate::policy::RetrySettings {
        crate::policy::RetrySettings::for_sinks()
    }
}

/// How a [`BatchProcessor`] groups its input into calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Most records per call.
    pub max_records: usize,
    /// Most total [`BatchProcessor::weight`] per call (e.g. tokens); a record heavier than
    /// this goes alone.
    pub max_weight: Option<u64>,
    /// Longest a started batch waits for more records before it is sent part-full.
    pub max_wait: std::time::Duration,
}

/// Several records in, one result per record out: for calls that take a batch (N chunks per
/// model call, N texts per embedding request). Called concurrently (up to the stage's
/// `concurrency` batches in flight), with the same pools, ordering and panic isolation as a
/// [`Processor`]; a failed item is dead-lettered alone.
#[async_trait]
pub trait BatchProcessor: Send + Sync + 'static {
    fn batching(&self) -> Batching;

    /// A record's share of `Batching::max_weight` (default 1).
    fn weight(&self, _record: &Record) -> u64 {
        1
    }

    /// Exactly one result per input record, in input order.
    async fn process_batch(&self, batch: &[Record]) -> Vec<Result<Vec<Record>, StageError>>;

    /// See [`Processor::calls_remote`].
    fn calls_remote(&self) -> bool {
        false
    }

    /// `pipe plan`: count what processing `batch` would send, without sending anything.
    async fn plan_batch(&self, _batch: &[Record]) -> Result<(), StageError> {
        Ok(())
    }
}

/// What an [`Aggregator`] hands back when its input has ended.
#[derive(Debug, Default)]
pub struct Finished {
    /// Records to pass downstream.
    pub emit: Vec<Record>,
    /// Records it will not pass on, each with the reason (dead-lettered and counted).
    pub dead_letter: Vec<(Record, StageError)>,
}

/// Sees every record, then is told how the input ended, and only then emits: for steps that
/// need the whole input (entity resolution across a run, global dedupe, top-k).
#[async_trait]
pub trait Aggregator: Send + 'static {
    /// One input record, in arrival order. An error dead-letters that record.
    async fn add(&mut self, record: &Record) -> Result<(), StageError>;

    /// Called once, after the last record, with how the input ended.
    async fn finish(&mut self, end: &InputEnd) -> Finished;
}

/// Escape hatch for stages that need the whole stream (windowing, dedupe, reordering).
pub trait Transform: Send + Sync + 'static {
    fn transform(
        self: Arc<Self>,
        input: BoxStream<'static, Record>,
    ) -> BoxStream<'static, Result<Record, Rejected>>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Source,
    Processor,
    Sink,
    Transform,
    /// A [`BatchProcessor`]: like a processor, N records per call.
    Batch,
    /// An [`Aggregator`]: emits once its input has ended.
    Aggregate,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Processor => "processor",
            Role::Sink => "sink",
            Role::Transform => "transform",
            Role::Batch => "batch processor",
            Role::Aggregate => "aggregator",
        }
    }
}

/// What a stage emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Produces {
    Nothing,
    Kinds(KindSet),
    /// Passes its input kinds through (filters, dedupe, no-ops).
    SameAsInput,
}

pub enum BuiltStage {
    Source(Arc<dyn Source>),
    Processor(Arc<dyn Processor>),
    Sink(Arc<dyn Sink>),
    Transform(Arc<dyn Transform>),
    Batch(Arc<dyn BatchProcessor>),
    Aggregate(Box<dyn Aggregator>),
}

impl BuiltStage {
    pub fn role(&self) -> Role {
        match self {
            BuiltStage::Source(_) => Role::Source,
            BuiltStage::Processor(_) => Role::Processor,
            BuiltStage::Sink(_) => Role::Sink,
            BuiltStage::Transform(_) => Role::Transform,
            BuiltStage::Batch(_) => Role::Batch,
            BuiltStage::Aggregate(_) => Role::Aggregate,
        }
    }
}

/// What a stage may use while it is built.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// The run's shared limits, providers, response cache and budget.
    pub resources: Arc<crate::policy::Resources>,
    /// This stage's call counters (report, progress, metrics).
    pub calls: Arc<crate::policy::CallStats>,
    /// Named counts and notes the stage reports about its work (report, end of run).
    pub notes: crate::runtime::StageNotes,
    /// `pipe plan`: nothing will be sent, so credentials may be missing.
    pub dry_run: bool,
    pub stage_id: String,
    /// Directory of the pipeline file: relative paths in stage configs resolve against it.
    pub base_dir: PathBuf,
    /// `.pipe/` (or `--state-dir`): caches, journals.
    pub state_dir: PathBuf,
    /// `.pipe/runs/<run-id>/`: this run's report and dead letters.
    pub run_dir: PathBuf,
    /// Ids of the stages upstream of this one, nearest first (direct inputs, then theirs).
    pub upstream: Vec<String>,
    /// What stages built earlier published about themselves (see [`BuildContext::publish`]).
    pub facts: Facts,
}

/// Build-time facts stages publish for the stages downstream of them: the embedding stage
/// says its model and dimensions, so a vector store can create (or check) its collection
/// before any record moves.
#[derive(Clone, Debug, Default)]
pub struct Facts(
    Arc<std::sync::Mutex<std::collections::BTreeMap<(String, String), serde_json::Value>>>,
);

impl BuildContext {
    /// Publishes `key` = `value` for the stages downstream of this one.
    pub fn publish(&self, key: &str, value: serde_json::Value) {
        self.facts
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((self.stage_id.clone(), key.to_string()), value);
    }

    /// The nearest upstream stage's `key`, with that stage's id.
    pub fn upstream_fact(&self, key: &str) -> Option<(String, serde_json::Value)> {
        let facts = self.facts.0.lock().unwrap_or_else(|p| p.into_inner());
        self.upstream.iter().find_map(|stage| {
            facts
                .get(&(stage.clone(), key.to_string()))
                .map(|v| (stage.clone(), v.clone()))
        })
    }
}

impl BuildContext {
    /// A context with nothing shared (tests, tools building one stage).
    pub fn standalone(stage_id: &str, dir: &std::path::Path) -> BuildContext {
        BuildContext {
            resources: Arc::new(crate::policy::Resources::empty()),
            calls: Default::default(),
            notes: Default::default(),
            dry_run: false,
            stage_id: stage_id.to_string(),
            base_dir: dir.to_path_buf(),
            state_dir: dir.join(".pipe"),
            run_dir: dir.join(".pipe"),
            upstream: Vec::new(),
            facts: Facts::default(),
        }
    }

    /// The policy through which this stage calls provider `name` (see [`crate::policy`]).
    pub fn call_policy(&self, name: &str) -> Result<crate::policy::CallPolicy, StageError> {
        self.resources.policy(name, self.calls.clone())
    }

    /// The provider's settings as written under `resources.providers`.
    pub fn provider(&self, name: &str) -> Result<&crate::policy::ProviderSpec, StageError> {
        self.resources.provider_spec(name).ok_or_else(|| {
            StageError::run(format!(
                "unknown provider `{name}` (declare it under `resources.providers`)"
            ))
        })
    }

    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = PathBuf::from(path);
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }
}

/// A problem `validate()` found, naming the field (dotted path inside the stage's `config`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    pub field: String,
    pub message: String,
}

impl ConfigIssue {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigIssue {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A stage kind: its YAML `config` type. Write `#[serde(deny_unknown_fields)]` on it, doc
/// comments on its fields (they become `pipe list-stages` and `pipe schema` text), and register
/// it with `registry.register::<MyConfig>()`.
#[async_trait]
pub trait StageConfig: DeserializeOwned + schemars::JsonSchema + Send + Sync + 'static {
    /// The `kind:` name in YAML.
    const KIND: &'static str;
    /// One line for `pipe list-stages`.
    const DESCRIPTION: &'static str;
    const ROLE: Role;
    /// `concurrency` when the YAML does not give one. Stages that wait on remote calls set
    /// it high: the named limit, not this number, is what paces them.
    const DEFAULT_CONCURRENCY: usize = crate::config::DEFAULT_CONCURRENCY;

    /// Payload kinds it accepts (ignored for sources).
    fn accepts() -> KindSet {
        KindSet::EMPTY
    }

    fn produces() -> Produces;

    /// Providers (from `resources.providers`) this config names, as (dotted field, name),
    /// so `pipe validate` can check them.
    fn providers(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Pure checks (no I/O) beyond what the types say; run by `pipe validate`.
    fn validate(&self) -> Vec<ConfigIssue> {
        Vec::new()
    }

    /// May do I/O: open files, connect, create collections, health-check. Every stage is
    /// built before any record moves, so a store that is unreachable or misconfigured stops
    /// the run here, before a single token is spent.
    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError>;

    /// Sinks whose vectors can be searched (`pipe search`): open the store for reading.
    async fn open_vector_index(
        &self,
        _ctx: &BuildContext,
    ) -> Option<Result<Arc<dyn crate::index::VectorIndex>, StageError>> {
        None
    }

    /// Sinks whose graph can be read back (`pipe search`, `pipe graph export`).
    async fn open_graph_index(
        &self,
        _ctx: &BuildContext,
    ) -> Option<Result<Arc<dyn crate::index::GraphIndex>, StageError>> {
        None
    }

    /// Embedding stages: the embedder, to embed a question the way the chunks were embedded.
    async fn open_embedder(
        &self,
        _ctx: &BuildContext,
    ) -> Option<Result<Arc<dyn crate::index::TextEmbedder>, StageError>> {
        None
    }
}
