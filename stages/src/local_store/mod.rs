//! `local_store` sink: the knowledge graph and the chunk vectors in one SQLite file under
//! `.pipe/` (default `.pipe/store.sqlite`), so a pipeline ends somewhere searchable with no
//! server at all. Accepts `Graph` (from `normalize`) and `Embedded` (from `embed`) records;
//! `pipe search` and `pipe graph export` read it back.

mod db;

pub use db::{Counts, StoreDb, VectorModel, normalised};

use db::Item;
use pipeline::index::{ChunkHit, Fact, GraphIndex, VectorIndex};
use pipeline::{
    BuildContext, BuiltStage, ConfigIssue, Entity, Graph, InputEnd, KindSet, Payload, PayloadKind,
    Produces, Record, Role, Sink, StageConfig, StageError, Written, async_trait,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalStoreConfig {
    /// SQLite file. Default: `store.sqlite` in the state directory (`.pipe/store.sqlite`, or
    /// under `--state-dir`); a relative path is relative to the pipeline file.
    #[serde(default)]
    pub path: Option<String>,
    /// Records per transaction.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// When the store already holds vectors of another embedding model (or size): delete them
    /// and start over, instead of refusing to start.
    #[serde(default)]
    pub replace_vectors: bool,
}

fn default_batch() -> usize {
    256
}

impl LocalStoreConfig {
    /// Where the store lives for this pipeline.
    pub fn store_path(&self, ctx: &BuildContext) -> PathBuf {
        match &self.path {
            Some(path) => ctx.resolve(path),
            None => ctx.state_dir.join("store.sqlite"),
        }
    }

    async fn open_index(&self, ctx: &BuildContext) -> Result<Arc<LocalIndex>, StageError> {
        let path = self.store_path(ctx);
        let db = blocking({
            let path = path.clone();
            move || StoreDb::open(&path, false)
        })
        .await?;
        Ok(Arc::new(LocalIndex {
            db: Arc::new(Mutex::new(db)),
            path,
        }))
    }
}

/// Runs a blocking SQLite call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StageError> + Send + 'static,
) -> Result<T, StageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StageError::run(format!("local store task failed: {e}")))?
}

/// The embedding model the store's vectors are of: what the upstream `embed` stage said at
/// build, else what the store already holds, else the first vector written.
#[derive(Clone, Debug, PartialEq, Eq)]
struct VectorSpec {
    model: String,
    dims: usize,
}

#[async_trait]
impl StageConfig for LocalStoreConfig {
    const KIND: &'static str = "local_store";
    const DESCRIPTION: &'static str = "Embedded store (one SQLite file): the graph and the chunk vectors, searchable with `pipe search`";
    const ROLE: Role = Role::Sink;
    // One writer per SQLite file: more would only queue on its lock.
    const DEFAULT_CONCURRENCY: usize = 1;

    fn accepts() -> KindSet {
        KindSet::of(&[PayloadKind::Graph, PayloadKind::Embedded])
    }

    fn produces() -> Produces {
        Produces::Nothing
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.path.as_ref().is_some_and(|p| p.trim().is_empty()) {
            issues.push(ConfigIssue::new(
                "path",
                "must name a file (or be left out)",
            ));
        }
        if self.batch == 0 {
            issues.push(ConfigIssue::new("batch", "must be at least 1"));
        }
        issues
    }

    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        let path = self.store_path(ctx);
        let upstream = upstream_vectors(ctx)?;
        let replace = self.replace_vectors;
        let (db, spec, note) = blocking({
            let path = path.clone();
            move || {
                let db = StoreDb::open(&path, true)?;
                let stored = db.vector_models()?;
                let mut note = None;
                let spec = match upstream {
                    Some(spec) => {
                        let other: Vec<&VectorModel> = stored
                            .iter()
                            .filter(|m| m.model != spec.model || m.dims != spec.dims)
                            .collect();
                        if let Some(first) = other.first() {
                            if !replace {
                                return Err(StageError::run(format!(
                                    "local store {} holds {} vectors of model `{}` ({} dimensions); \
                                     this pipeline embeds with `{}` ({} dimensions). Vectors of two \
                                     models cannot be searched together: set `replace_vectors: true` \
                                     on this stage to delete the old ones, or give it another `path`",
                                    path.display(),
                                    first.count,
                                    first.model,
                                    first.dims,
                                    spec.model,
                                    spec.dims
                                )));
                            }
                            let removed = db.remove_other_vectors(&spec.model, spec.dims)?;
                            note = Some(format!(
                                "replaced {removed} vectors of another model (`{}`) in {}",
                                first.model,
                                path.display()
                            ));
                        }
                        Some(spec)
                    }
                    None => match stored.as_slice() {
                        [only] => Some(VectorSpec {
                            model: only.model.clone(),
                            dims: only.dims,
                        }),
                        _ => None,
                    },
                };
                Ok((db, spec, note))
            }
        })
        .await?;
        if let Some(note) = note {
            tracing::warn!("stage `{}`: {note}", ctx.stage_id);
            ctx.notes.note(note);
        }
        Ok(BuiltStage::Sink(Arc::new(LocalStoreSink {
            db: Arc::new(Mutex::new(db)),
            path,
            batch: self.batch,
            spec: Mutex::new(spec),
            notes: ctx.notes.clone(),
        })))
    }

    async fn open_vector_index(
        &self,
        ctx: &BuildContext,
    ) -> Option<Result<Arc<dyn VectorIndex>, StageError>> {
        Some(
            self.open_index(ctx)
                .await
                .map(|index| index as Arc<dyn VectorIndex>),
        )
    }

    async fn open_graph_index(
        &self,
        ctx: &BuildContext,
    ) -> Option<Result<Arc<dyn GraphIndex>, StageError>> {
        Some(
            self.open_index(ctx)
                .await
                .map(|index| index as Arc<dyn GraphIndex>),
        )
    }
}

/// `embedding.model` and `embedding.dimensions` of the nearest upstream embedding stage.
fn upstream_vectors(ctx: &BuildContext) -> Result<Option<VectorSpec>, StageError> {
    let model = ctx.upstream_fact("embedding.model");
    let dims = ctx.upstream_fact("embedding.dimensions");
    match (model, dims) {
        (Some((_, model)), Some((stage, dims))) => {
            let model = model.as_str().map(str::to_string);
            let dims = dims.as_u64().and_then(|d| usize::try_from(d).ok());
            match (model, dims) {
                (Some(model), Some(dims)) if dims > 0 => Ok(Some(VectorSpec { model, dims })),
                _ => Err(StageError::run(format!(
                    "stage `{stage}` published an unusable embedding.model / \
                     embedding.dimensions build fact"
                ))),
            }
        }
        _ => Ok(None),
    }
}

struct LocalStoreSink {
    db: Arc<Mutex<StoreDb>>,
    path: PathBuf,
    batch: usize,
    spec: Mutex<Option<VectorSpec>>,
    notes: pipeline::runtime::StageNotes,
}

impl LocalStoreSink {
    /// Checks one record and turns it into what the database writes.
    fn item(&self, record: &Record) -> Result<Item, StageError> {
        match &record.payload {
            Payload::Graph(graph) => {
                db::check_graph(graph).map_err(StageError::record)?;
                Ok(Item::Graph(graph.clone()))
            }
            Payload::Embedded(embedded) => {
                let normalised = normalised(&embedded.vector).ok_or_else(|| {
                    StageError::record(format!(
                        "the vector of {} is zero or not a number: it cannot be searched",
                        record.id
                    ))
                })?;
                let mut spec = self.spec.lock().unwrap_or_else(|p| p.into_inner());
                match spec.as_ref() {
                    Some(s) if s.model != embedded.model || s.dims != normalised.len() => {
                        return Err(StageError::record(format!(
                            "vector of model `{}` ({} dimensions) for a store of `{}` ({} \
                             dimensions) at {}",
                            embedded.model,
                            normalised.len(),
                            s.model,
                            s.dims,
                            self.path.display()
                        )));
                    }
                    Some(_) => {}
                    None => {
                        *spec = Some(VectorSpec {
                            model: embedded.model.clone(),
                            dims: normalised.len(),
                        })
                    }
                }
                Ok(Item::Vector {
                    id: record.id.clone(),
                    provenance: record.provenance.clone(),
                    embedded: pipeline::Embedded {
                        vector: Vec::new(),
                        ..embedded.clone()
                    },
                    normalised,
                })
            }
            other => Err(StageError::record(format!(
                "local_store takes Graph and Embedded records, not {}",
                other.kind().name()
            ))),
        }
    }
}

#[async_trait]
impl Sink for LocalStoreSink {
    fn batch_size(&self) -> usize {
        self.batch
    }

    async fn write(&self, batch: &[Record]) -> Result<Written, StageError> {
        let mut failed = Vec::new();
        let mut items = Vec::with_capacity(batch.len());
        for (index, record) in batch.iter().enumerate() {
            match self.item(record) {
                Ok(item) => items.push((index, item)),
                Err(e) => failed.push((index, e)),
            }
        }
        let db = self.db.clone();
        let refused = blocking(move || {
            let mut db = db.lock().unwrap_or_else(|p| p.into_inner());
            db.write(items)
        })
        .await?;
        failed.extend(refused);
        // Committed (synchronous = FULL) before `write` returns.
        Ok(Written::durable().with_failures(failed))
    }

    async fn finish(&self, _end: &InputEnd) -> Result<(), StageError> {
        // Every batch is committed as it is written: nothing to publish at the end, only to say
        // what the store now holds.
        let db = self.db.clone();
        let (counts, models) = blocking(move || {
            let db = db.lock().unwrap_or_else(|p| p.into_inner());
            Ok((db.counts()?, db.vector_models()?))
        })
        .await?;
        let vectors = match models.as_slice() {
            [] => "no vectors".to_string(),
            models => models
                .iter()
                .map(|m| format!("{} vectors of {} ({} d)", m.count, m.model, m.dims))
                .collect::<Vec<_>>()
                .join(", "),
        };
        self.notes.note(format!(
            "store {}: {} entities, {} relations, {}",
            self.path.display(),
            counts.entities,
            counts.relations,
            vectors
        ));
        Ok(())
    }
}

/// Reads a store back for `pipe search` / `pipe graph export`.
pub struct LocalIndex {
    db: Arc<Mutex<StoreDb>>,
    path: PathBuf,
}

impl LocalIndex {
    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&StoreDb) -> Result<T, StageError> + Send + 'static,
    ) -> Result<T, StageError> {
        let db = self.db.clone();
        blocking(move || {
            let db = db.lock().unwrap_or_else(|p| p.into_inner());
            f(&db)
        })
        .await
    }
}

#[async_trait]
impl VectorIndex for LocalIndex {
    fn describe(&self) -> String {
        format!("local store {}", self.path.display())
    }

    async fn nearest(&self, vector: &[f32], k: usize) -> Result<Vec<ChunkHit>, StageError> {
        let vector = vector.to_vec();
        self.with_db(move |db| db.nearest(&vector, k)).await
    }

    async fn models(&self) -> Result<Vec<String>, StageError> {
        self.with_db(|db| Ok(db.vector_models()?.into_iter().map(|m| m.model).collect()))
            .await
    }
}

#[async_trait]
impl GraphIndex for LocalIndex {
    fn describe(&self) -> String {
        format!("local store {}", self.path.display())
    }

    async fn entities_in_chunks(&self, chunk_ids: &[String]) -> Result<Vec<Entity>, StageError> {
        let chunk_ids = chunk_ids.to_vec();
        self.with_db(move |db| db.entities_in_chunks(&chunk_ids))
            .await
    }

    async fn facts_about(
        &self,
        entity_ids: &[String],
        limit: usize,
    ) -> Result<Vec<Fact>, StageError> {
        let entity_ids = entity_ids.to_vec();
        self.with_db(move |db| db.facts_about(&entity_ids, limit))
            .await
    }

    async fn export(&self) -> Result<Graph, StageError> {
        self.with_db(|db| db.export()).await
    }
}

#[cfg(test)]
mod tests;
