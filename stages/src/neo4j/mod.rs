//! `neo4j` sink: the knowledge graph into Neo4j with neo4rs — the shared Cypher builder
//! (UNWIND-batched idempotent MERGE), one transaction per batch over a connection pool,
//! constraints and indexes (`IF NOT EXISTS`, a vector index for chunk embeddings) created at
//! build after a health check. Also reads the graph back (`pipe search`, `pipe graph export`).

use crate::graph_store::cypher::{
    self, Dialect, SchemaOptions, SchemaStep, Statement, WriteOptions,
};
use crate::graph_store::{ChunkNodes, GraphBackend, GraphReader, GraphSink, stage_error};
use connectors::{Neo4jClient, Neo4jSettings, QueryStats};
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
pub struct Neo4jConfig {
    /// `neo4j://host:7687`, `bolt://host:7687` or `neo4j+s://…`, usually `${NEO4J_URI}`.
    pub uri: String,
    /// Usually `${NEO4J_USER:-neo4j}`.
    #[serde(default = "default_user")]
    pub user: String,
    /// Usually `${NEO4J_PASSWORD}`; never logged.
    pub password: Secret,
    /// Database (default: the server's default database).
    #[serde(default)]
    pub database: Option<String>,
    /// Records per write (one transaction).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Most rows in one UNWIND statement.
    #[serde(default = "default_rows")]
    pub rows_per_query: usize,
    /// Most pooled connections.
    #[serde(default = "default_connections")]
    pub max_connections: usize,
    /// `Chunk` nodes (from `Embedded` records, with a vector index) and `MENTIONS` edges
    /// from the chunks to the entities read in them: `auto` (when an embedding stage is
    /// upstream), `always`, `never`.
    #[serde(default)]
    pub chunk_nodes: ChunkNodes,
}

fn default_user() -> String {
    "neo4j".into()
}

fn default_batch() -> usize {
    500
}

fn default_rows() -> usize {
    5000
}

fn default_connections() -> usize {
    8
}

impl Neo4jConfig {
    async fn connect(&self) -> Result<Neo4jClient, StageError> {
        let settings = Neo4jSettings {
            uri: self.uri.trim().to_string(),
            user: self.user.clone(),
            password: self.password.expose().to_string(),
            database: self.database.clone().filter(|d| !d.trim().is_empty()),
            max_connections: self.max_connections,
        };
        Neo4jClient::connect(&settings).await.map_err(stage_error)
    }
}

#[async_trait]
impl StageConfig for Neo4jConfig {
    const KIND: &'static str = "neo4j";
    const DESCRIPTION: &'static str = "Writes the knowledge graph (and chunk nodes with embeddings) to Neo4j, one transaction per batch";
    const ROLE: Role = Role::Sink;
    // Concurrent MERGE transactions on shared nodes wait on each other's locks (deadlocks are
    // transient and retried); a few in flight keep the pool busy without piling up.
    const DEFAULT_CONCURRENCY: usize = 2;

    fn accepts() -> KindSet {
        KindSet::of(&[PayloadKind::Graph, PayloadKind::Embedded])
    }

    fn produces() -> Produces {
        Produces::Nothing
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let uri = self.uri.trim();
        if uri.is_empty() {
            issues.push(ConfigIssue::new(
                "uri",
                "is empty (set NEO4J_URI, e.g. neo4j://localhost:7687)",
            ));
        } else if ![
            "neo4j://",
            "neo4j+s://",
            "neo4j+ssc://",
            "bolt://",
            "bolt+s://",
            "bolt+ssc://",
        ]
        .iter()
        .any(|scheme| uri.starts_with(scheme))
        {
            issues.push(ConfigIssue::new(
                "uri",
                format!(
                    "must start with neo4j:// or bolt:// (got {})",
                    connectors::neo4j::redact_uri(uri)
                ),
            ));
        }
        if self.password.expose().is_empty() {
            issues.push(ConfigIssue::new(
                "password",
                "is empty (set NEO4J_PASSWORD)",
            ));
        }
        if self.batch == 0 {
            issues.push(ConfigIssue::new("batch", "must be at least 1"));
        }
        if self.rows_per_query == 0 {
            issues.push(ConfigIssue::new("rows_per_query", "must be at least 1"));
        }
        if self.max_connections == 0 {
            issues.push(ConfigIssue::new("max_connections", "must be at least 1"));
        }
        issues
    }

    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        let client = self.connect().await?;
        let chunks = self.chunk_nodes.plan(ctx);
        create_schema(
            &client,
            &SchemaOptions {
                chunks: chunks.enabled,
                vector_dimensions: chunks.dimensions,
            },
        )
        .await?;
        let backend = Arc::new(Neo4jBackend { client });
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
            Arc::new(GraphReader::new(Arc::new(Neo4jBackend { client }))) as Arc<dyn GraphIndex>
        }))
    }
}

/// Constraints and indexes, each `IF NOT EXISTS`, each in its own transaction.
pub async fn create_schema(
    client: &Neo4jClient,
    options: &SchemaOptions,
) -> Result<(), StageError> {
    for step in cypher::schema(Dialect::Neo4j, options) {
        if let SchemaStep::Cypher(cypher) = &step {
            client.run_schema(cypher).await.map_err(|f| {
                let mut error = stage_error(f);
                error.message = format!("creating the graph schema ({cypher}): {}", error.message);
                error
            })?;
        }
    }
    Ok(())
}

/// Statements over a pool of Bolt connections.
pub struct Neo4jBackend {
    pub client: Neo4jClient,
}

#[async_trait]
impl GraphBackend for Neo4jBackend {
    fn dialect(&self) -> Dialect {
        Dialect::Neo4j
    }

    fn describe(&self) -> String {
        format!("neo4j {}", self.client.describe())
    }

    async fn write(&self, statements: Vec<Statement>) -> Result<Option<QueryStats>, StageError> {
        let pairs: Vec<(String, Map<String, Value>)> =
            statements.into_iter().map(Statement::into_pair).collect();
        self.client.write(&pairs).await.map_err(stage_error)?;
        // neo4rs 0.8 does not hand out the transaction's counters.
        Ok(None)
    }

    async fn read(&self, statement: Statement) -> Result<Vec<Map<String, Value>>, StageError> {
        self.client
            .read(&statement.cypher, &statement.params)
            .await
            .map_err(stage_error)
    }
}
