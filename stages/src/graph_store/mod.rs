//! What the graph store sinks (`neo4j`, `falkordb`) share: the Cypher builder, the sink that
//! turns batches of `Graph` (and `Embedded`) records into UNWIND statements with per-record
//! outcomes, and the reader behind `pipe search` / `pipe graph export`. Each store only says
//! how to run statements ([`GraphBackend`]) and how to create its schema.

pub mod cypher;
mod reader;
mod sink;

pub use reader::GraphReader;
pub use sink::GraphSink;

use connectors::{Failure, FailureClass, QueryStats};
use cypher::{Dialect, Statement};
use pipeline::{BuildContext, StageError, async_trait};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Runs statements against one store.
#[async_trait]
pub trait GraphBackend: Send + Sync + 'static {
    fn dialect(&self) -> Dialect;
    /// Where it writes, for messages (no credentials).
    fn describe(&self) -> String;
    /// Runs one batch's statements in order; `Ok` once the store has committed them. The
    /// counters, when the store reports them.
    async fn write(&self, statements: Vec<Statement>) -> Result<Option<QueryStats>, StageError>;
    /// A read query: rows as column → value.
    async fn read(&self, statement: Statement) -> Result<Vec<Map<String, Value>>, StageError>;
}

/// Whether the sink writes `Chunk` nodes and links entities to them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChunkNodes {
    /// When an embedding stage is upstream of the sink (it then receives `Embedded` records).
    #[default]
    Auto,
    /// `Chunk` nodes from `Embedded` records, `MENTIONS` edges from every entity to the
    /// chunks it was read in.
    Always,
    /// Entities only; an `Embedded` record is dead-lettered.
    Never,
}

/// What the sink decided at build about chunk nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlan {
    pub enabled: bool,
    /// Embedding size published by the upstream embedding stage (for the vector index).
    pub dimensions: Option<usize>,
}

impl ChunkNodes {
    pub fn plan(self, ctx: &BuildContext) -> ChunkPlan {
        let dimensions = ctx
            .upstream_fact("embedding.dimensions")
            .and_then(|(_, v)| v.as_u64())
            .map(|d| d as usize);
        let enabled = match self {
            ChunkNodes::Auto => dimensions.is_some(),
            ChunkNodes::Always => true,
            ChunkNodes::Never => false,
        };
        ChunkPlan {
            enabled,
            dimensions: if enabled { dimensions } else { None },
        }
    }
}

/// A connector failure in the runtime's terms.
pub fn stage_error(failure: Failure) -> StageError {
    match failure.class {
        FailureClass::Retryable { retry_after } => {
            StageError::retryable(failure.message, retry_after.map(|d| d.as_secs_f64()))
        }
        FailureClass::Record => StageError::record(failure.message),
        FailureClass::Run => StageError::run(failure.message),
    }
}
