//! `falkordb` sink: the knowledge graph into FalkorDB over the Redis protocol — the shared
//! Cypher builder (UNWIND-batched idempotent MERGE), one query per UNWIND statement, one
//! round trip per batch, indexes and unique constraints created at build after a health
//! check. Also reads the graph back (`pipe search`, `pipe graph export`).

use crate::graph_store::cypher::{
    self, Dialect, SchemaOptions, SchemaStep, Statement, WriteOptions,
};
use crate::graph_store::{ChunkNodes, GraphBackend, GraphReader, GraphSink, stage_error};
use connectors::{FalkorClient, QueryStats};
use pipeline::index::GraphIndex;
use pipeline::policy::Secret;
use pipeline::{
    BuildContext, BuiltStage, ConfigIssue, KindSet, PayloadKind, Produces, Role, StageConfig,
    StageError, async_trait,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FalkorDbConfig {
    /// `redis://host:port` (with a password: `redis://:password@host:port`), usually
    /// `${FALKORDB_URL}`; never logged with its password.
    pub url: Secret,
    /// Graph (Redis key) to write to.
    #[serde(default = "default_graph")]
    pub graph: String,
    /// Records per write (one round trip; one query per label / relationship type).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Most rows in one UNWIND query.
    #[serde(default = "default_rows")]
    pub rows_per_query: usize,
    /// `Chunk` nodes (from `Embedded` records, with a vector index) and `MENTIONS` edges
    /// from the chunks to the entities read in them: `auto` (when an embedding stage is
    /// upstream), `always`, `never`.
    #[serde(default)]
    pub chunk_nodes: ChunkNodes,
    /// Count a batch as committed only once FalkorDB has fsynced it to its append-only file
    /// (`WAITAOF`; the server needs `appendonly yes`). Off: committed when acknowledged.
    #[serde(default)]
    pub fsync: bool,
}

fn default_graph() -> String {
    "pipe".into()
}

fn default_batch() -> usize {
    500
}

fn default_rows() -> usize {
    5000
}

impl FalkorDbConfig {
    async fn connect(&self) -> Result<FalkorClient, StageError> {
        FalkorClient::connect(self.url.expose(), &self.graph)
            .await
            .map_err(stage_error)
    }
}

#[async_trait]
impl StageConfig for FalkorDbConfig {
    const KIND: &'static str = "falkordb";
    const DESCRIPTION: &'static str =
        "Writes the knowledge graph (and chunk nodes) to FalkorDB with idempotent batched MERGE";
    const ROLE: Role = Role::Sink;
    // FalkorDB runs one graph's writes one at a time: a second batch in flight overlaps
    // encoding and the round trip with the server's work, more only queue.
    const DEFAULT_CONCURRENCY: usize = 2;

    fn accepts() -> KindSet {
        KindSet::of(&[PayloadKind::Graph, PayloadKind::Embedded])
    }

    fn produces() -> Produces {
        Produces::Nothing
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let url = self.url.expose().trim();
        if url.is_empty() {
            issues.push(ConfigIssue::new(
                "url",
                "is empty (set FALKORDB_URL, e.g. redis://127.0.0.1:6379)",
            ));
        } else if !["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            issues.push(ConfigIssue::new(
                "url",
                format!(
                    "must start with redis:// or rediss:// (got {})",
                    connectors::falkordb::redact_url(url)
                ),
            ));
        }
        if self.graph.trim().is_empty() {
            issues.push(ConfigIssue::new("graph", "must name a graph"));
        }
        if self.batch == 0 {
            issues.push(ConfigIssue::new("batch", "must be at least 1"));
        }
        if self.rows_per_query == 0 {
            issues.push(ConfigIssue::new("rows_per_query", "must be at least 1"));
        }
        issues
    }

    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        let client = self.connect().await?;
        if self.fsync && !client.appends_to_aof() {
            return Err(StageError::run(format!(
                "stage `{}`: `fsync: true` needs FalkorDB's append-only file, but {} runs with \
                 appendonly no (start it with --appendonly yes, or drop `fsync`)",
                ctx.stage_id,
                client.describe()
            )));
        }
        let chunks = self.chunk_nodes.plan(ctx);
        create_schema(
            &client,
            &SchemaOptions {
                chunks: chunks.enabled,
                vector_dimensions: chunks.dimensions,
            },
        )
        .await?;
        ctx.notes.note(format!(
            "FalkorDB {}: {}",
            client.describe(),
            if self.fsync {
                "each batch committed once fsynced to the AOF"
            } else if client.appends_to_aof() {
                "each batch committed when acknowledged (the server appends to its AOF)"
            } else {
                "each batch committed when acknowledged (in memory: the server keeps no AOF)"
            }
        ));
        let backend = Arc::new(FalkorBackend {
            client,
            fsync: self.fsync,
        });
        Ok(BuiltStage::Sink(Arc::new(GraphSink::new(
            backend,
            &ctx.stage_id,
            self.batch,
            WriteOptions {
                chunk_mentions: chunks.enabled,
                rows_per_statement: self.rows_per_query,
            },
            chunks.dimensions,
            ctx.notes.clone(),
        ))))
    }

    async fn open_graph_index(
        &self,
        _ctx: &BuildContext,
    ) -> Option<Result<Arc<dyn GraphIndex>, StageError>> {
        Some(self.connect().await.map(|client| {
            Arc::new(GraphReader::new(Arc::new(FalkorBackend {
                client,
                fsync: false,
            }))) as Arc<dyn GraphIndex>
        }))
    }
}

/// Indexes (FalkorDB has no `IF NOT EXISTS`: "already indexed" counts as done) and unique
/// constraints.
pub async fn create_schema(
    client: &FalkorClient,
    options: &SchemaOptions,
) -> Result<(), StageError> {
    for step in cypher::schema(Dialect::FalkorDb, options) {
        let done = match &step {
            SchemaStep::Cypher(cypher) => client.create_index(cypher).await.map(|_| ()),
            SchemaStep::UniqueConstraint { label, property } => {
                client
                    .create_unique_node_constraint(label.as_str(), property)
                    .await
            }
        };
        done.map_err(|f| {
            let mut error = stage_error(f);
            error.message = format!("creating the graph schema ({step:?}): {}", error.message);
            error
        })?;
    }
    Ok(())
}

/// Statements over one FalkorDB connection.
pub struct FalkorBackend {
    pub client: FalkorClient,
    pub fsync: bool,
}

#[async_trait]
impl GraphBackend for FalkorBackend {
    fn dialect(&self) -> Dialect {
        Dialect::FalkorDb
    }

    fn describe(&self) -> String {
        format!("falkordb {}", self.client.describe())
    }

    async fn write(&self, statements: Vec<Statement>) -> Result<Option<QueryStats>, StageError> {
        let pairs: Vec<(String, Map<String, Value>)> =
            statements.into_iter().map(Statement::into_pair).collect();
        let results = self
            .client
            .write(&pairs, self.fsync)
            .await
            .map_err(stage_error)?;
        let mut stats = QueryStats::default();
        for result in &results {
            stats.add(&result.stats);
        }
        Ok(Some(stats))
    }

    async fn read(&self, statement: Statement) -> Result<Vec<Map<String, Value>>, StageError> {
        self.client
            .ro_query(&statement.cypher, &statement.params)
            .await
            .map(|result| result.records())
            .map_err(stage_error)
    }
}
