//! The stage traits. A stage kind is a config type (`StageConfig`) that builds one of four
//! runtime shapes: a `Source`, a `Processor`, a `Sink`, or a stream-to-stream `Transform`.

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

/// Receives records in batches (whatever is ready, up to `batch_size`).
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    fn batch_size(&self) -> usize {
        100
    }

    /// Writes a batch. On error the whole batch is dead-lettered with the error, so a sink that
    /// can tell which record was bad should write the others and fail only that one.
    async fn write(&self, batch: &[Record]) -> Result<(), StageError>;

    /// Called once after the last batch (normal end and Ctrl-C drain): flush, commit, close.
    async fn finish(&self) -> Result<(), StageError> {
        Ok(())
    }
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
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Processor => "processor",
            Role::Sink => "sink",
            Role::Transform => "transform",
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
}

impl BuiltStage {
    pub fn role(&self) -> Role {
        match self {
            BuiltStage::Source(_) => Role::Source,
            BuiltStage::Processor(_) => Role::Processor,
            BuiltStage::Sink(_) => Role::Sink,
            BuiltStage::Transform(_) => Role::Transform,
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
    /// `pipe plan`: nothing will be sent, so credentials may be missing.
    pub dry_run: bool,
    pub stage_id: String,
    /// Directory of the pipeline file: relative paths in stage configs resolve against it.
    pub base_dir: PathBuf,
    /// `.pipe/` (or `--state-dir`): caches, journals.
    pub state_dir: PathBuf,
    /// `.pipe/runs/<run-id>/`: this run's report and dead letters.
    pub run_dir: PathBuf,
}

impl BuildContext {
    /// A context with nothing shared (tests, tools building one stage).
    pub fn standalone(stage_id: &str, dir: &std::path::Path) -> BuildContext {
        BuildContext {
            resources: Arc::new(crate::policy::Resources::empty()),
            calls: Default::default(),
            dry_run: false,
            stage_id: stage_id.to_string(),
            base_dir: dir.to_path_buf(),
            state_dir: dir.join(".pipe"),
            run_dir: dir.join(".pipe"),
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

    /// May do I/O: open files, connect, create collections, health-check.
    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError>;
}
