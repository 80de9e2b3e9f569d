//! `qdrant` sink: chunk embeddings into a Qdrant collection, over gRPC with the official client.
//!
//! At build — before any record moves, so before any token is spent — it checks the server
//! answers, creates the collection when missing (size from the upstream `embed` stage's
//! `embedding.dimensions`, or `vector_size:`), refuses a collection of another size, distance
//! or embedding model, and creates the payload indexes. Points are upserted in batches with
//! `wait: true` on ids derived from the record ids (UUIDv5), so every acknowledged batch is
//! durable and a re-run overwrites instead of adding.

use crate::provider::failed;
use connectors::qdrant::{
    self, Point, QdrantSettings, QdrantStore, VectorShape, distance_name, parse_distance, point_id,
};
use pipeline::index::{ChunkHit, VectorIndex};
use pipeline::policy::Secret;
use pipeline::{
    BuildContext, BuiltStage, ConfigIssue, InputEnd, KindSet, Payload, PayloadKind, Produces,
    Provenance, Record, Role, Sink, StageConfig, StageError, Written, async_trait,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Payload fields with a keyword index: filters by document or file, and the model facet.
const INDEXED_FIELDS: [&str; 3] = ["document_id", "source_path", "model"];

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QdrantConfig {
    /// gRPC URL of the server, e.g. `${QDRANT_URL}` = `http://127.0.0.1:6334` (6334 is
    /// Qdrant's gRPC port; 6333, its REST port, will not answer).
    pub url: String,
    /// Collection; created when missing.
    pub collection: String,
    /// API key (Qdrant Cloud), usually `${QDRANT_API_KEY}`; never logged.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Vector size when no upstream `embed` stage announces it (must agree when one does).
    #[serde(default)]
    pub vector_size: Option<u64>,
    /// `cosine` (default), `dot`, `euclid` or `manhattan`, for a collection it creates (an
    /// existing collection must have the same).
    #[serde(default = "default_distance")]
    pub distance: String,
    /// Points per upsert request.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Seconds one request may take before it fails (and its batch is retried).
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
}

fn default_distance() -> String {
    "cosine".into()
}

fn default_batch() -> usize {
    256
}

fn default_timeout() -> f64 {
    30.0
}

impl QdrantConfig {
    fn settings(&self) -> QdrantSettings {
        QdrantSettings {
            url: self.url.trim().to_string(),
            api_key: self.api_key.as_ref().map(|k| k.expose().to_string()),
            collection: self.collection.clone(),
            timeout: Duration::from_secs_f64(self.timeout_s.clamp(0.1, 3600.0)),
        }
    }

    /// A client whose server answered.
    async fn connect(&self) -> Result<QdrantStore, StageError> {
        let store = QdrantStore::new(self.settings()).map_err(|f| failed(f).error)?;
        store.health().await.map_err(|f| {
            StageError::run(format!("cannot reach Qdrant: {}", failed(f).error.message))
        })?;
        Ok(store)
    }
}

#[async_trait]
impl StageConfig for QdrantConfig {
    const KIND: &'static str = "qdrant";
    const DESCRIPTION: &'static str = "Upserts chunk embeddings into a Qdrant collection (created if missing; searchable with `pipe search`)";
    const ROLE: Role = Role::Sink;

    fn accepts() -> KindSet {
        KindSet::of(&[PayloadKind::Embedded])
    }

    fn produces() -> Produces {
        Produces::Nothing
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let url = self.url.trim();
        if url.is_empty() {
            issues.push(ConfigIssue::new(
                "url",
                "must name the Qdrant server's gRPC URL, e.g. http://127.0.0.1:6334",
            ));
        } else if !(url.starts_with("http://") || url.starts_with("https://")) {
            issues.push(ConfigIssue::new(
                "url",
                format!("`{url}` must start with http:// or https://"),
            ));
        }
        if self.collection.trim().is_empty() {
            issues.push(ConfigIssue::new("collection", "must name a collection"));
        }
        if parse_distance(&self.distance).is_none() {
            issues.push(ConfigIssue::new(
                "distance",
                format!(
                    "unknown distance `{}` (cosine, dot, euclid or manhattan)",
                    self.distance
                ),
            ));
        }
        if self.vector_size == Some(0) {
            issues.push(ConfigIssue::new("vector_size", "must be at least 1"));
        }
        if self.batch == 0 {
            issues.push(ConfigIssue::new("batch", "must be at least 1"));
        }
        if !(self.timeout_s > 0.0 && self.timeout_s.is_finite()) {
            issues.push(ConfigIssue::new("timeout_s", "must be a positive number"));
        }
        issues
    }

    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        let distance = parse_distance(&self.distance)
            .ok_or_else(|| StageError::run(format!("unknown distance `{}`", self.distance)))?;
        let announced = ctx.upstream_fact("embedding.dimensions");
        let model = ctx
            .upstream_fact("embedding.model")
            .and_then(|(_, m)| m.as_str().map(str::to_string));
        let size = match (&announced, self.vector_size) {
            (Some((stage, dims)), configured) => {
                let dims = dims.as_u64().filter(|d| *d > 0).ok_or_else(|| {
                    StageError::run(format!(
                        "stage `{stage}` published an unusable embedding.dimensions: {dims}"
                    ))
                })?;
                if let Some(configured) = configured.filter(|c| *c != dims) {
                    return Err(StageError::run(format!(
                        "vector_size is {configured} but stage `{stage}` embeds with {dims} \
                         dimensions: remove vector_size or make them agree"
                    )));
                }
                dims
            }
            (None, Some(configured)) => configured,
            (None, None) => {
                return Err(StageError::run(
                    "the vector size is unknown: put an `embed` stage upstream of this one, or \
                     set `vector_size`",
                ));
            }
        };
        let store = self.connect().await?;
        let wanted = VectorShape { size, distance };
        let where_ = format!("Qdrant collection `{}` at {}", self.collection, store.url());
        match store.vector_shape().await.map_err(|f| failed(f).error)? {
            None => {
                store
                    .create_collection(wanted)
                    .await
                    .map_err(|f| failed(f).error)?;
                ctx.notes.note(format!(
                    "created {where_} ({size} dimensions, {})",
                    distance_name(distance)
                ));
            }
            Some(found) if found != wanted => {
                return Err(StageError::run(format!(
                    "{where_} holds vectors of size {} ({}); this pipeline writes {size} ({}){}. \
                     Use another collection, or delete this one",
                    found.size,
                    distance_name(found.distance),
                    distance_name(distance),
                    model
                        .as_ref()
                        .map(|m| format!(" with model `{m}`"))
                        .unwrap_or_default()
                )));
            }
            Some(_) => {}
        }
        for field in INDEXED_FIELDS {
            store
                .keyword_index(field)
                .await
                .map_err(|f| failed(f).error)?;
        }
        if let Some(model) = &model {
            // Same size is not the same space: vectors of two models cannot be compared.
            let stored = store
                .facet("model", 10)
                .await
                .map_err(|f| failed(f).error)?;
            if let Some((other, count)) = stored.iter().find(|(m, _)| m != model) {
                return Err(StageError::run(format!(
                    "{where_} holds {count} points of embedding model `{other}`; this pipeline \
                     embeds with `{model}`. Use another collection, or delete this one"
                )));
            }
        }
        Ok(BuiltStage::Sink(Arc::new(QdrantSink {
            store,
            size: size as usize,
            model,
            batch: self.batch,
            notes: ctx.notes.clone(),
        })))
    }

    async fn open_vector_index(
        &self,
        _ctx: &BuildContext,
    ) -> Option<Result<Arc<dyn VectorIndex>, StageError>> {
        let opened = async {
            let store = self.connect().await?;
            if store
                .vector_shape()
                .await
                .map_err(|f| failed(f).error)?
                .is_none()
            {
                return Err(StageError::run(format!(
                    "Qdrant collection `{}` at {} does not exist",
                    self.collection,
                    store.url()
                )));
            }
            Ok(Arc::new(QdrantIndex { store }) as Arc<dyn VectorIndex>)
        };
        Some(opened.await)
    }
}

struct QdrantSink {
    store: QdrantStore,
    size: usize,
    /// The upstream embedding model, when announced: points of another are refused.
    model: Option<String>,
    batch: usize,
    notes: pipeline::runtime::StageNotes,
}

/// The payload of a chunk's point (see the graph contract).
fn payload(record: &Record, text: &str, context: Option<&str>, model: &str) -> Map<String, Value> {
    let p = &record.provenance;
    let mut map = Map::new();
    map.insert("record_id".into(), json!(record.id));
    map.insert("text".into(), json!(text));
    if let Some(context) = context {
        map.insert("context".into(), json!(context));
    }
    map.insert("document_id".into(), json!(p.document_id));
    if let Some(path) = &p.source_path {
        map.insert("source_path".into(), json!(path));
    }
    if let Some(index) = p.chunk_index {
        map.insert("chunk_index".into(), json!(index));
    }
    if let Some(span) = p.char_span {
        map.insert("char_span".into(), json!(span));
    }
    if let Some(hash) = &p.content_hash {
        map.insert("content_hash".into(), json!(hash));
    }
    map.insert("model".into(), json!(model));
    map
}

impl QdrantSink {
    fn point(&self, record: &Record) -> Result<Point, StageError> {
        let Payload::Embedded(embedded) = &record.payload else {
            return Err(StageError::record(format!(
                "qdrant takes Embedded records, not {}",
                record.payload.kind().name()
            )));
        };
        if embedded.vector.len() != self.size {
            return Err(StageError::record(format!(
                "vector of {} dimensions for a collection of {}",
                embedded.vector.len(),
                self.size
            )));
        }
        if embedded.vector.iter().any(|x| !x.is_finite()) {
            return Err(StageError::record(
                "vector holds a value that is not a number",
            ));
        }
        if let Some(model) = self.model.as_ref().filter(|m| **m != embedded.model) {
            return Err(StageError::record(format!(
                "vector of model `{}` for a collection of `{model}`",
                embedded.model
            )));
        }
        Ok(Point {
            id: point_id(&record.id),
            vector: embedded.vector.clone(),
            payload: payload(
                record,
                &embedded.text,
                embedded.context.as_deref(),
                &embedded.model,
            ),
        })
    }
}

#[async_trait]
impl Sink for QdrantSink {
    fn batch_size(&self) -> usize {
        self.batch
    }

    async fn write(&self, batch: &[Record]) -> Result<Written, StageError> {
        let mut failed_records = Vec::new();
        let mut points = Vec::with_capacity(batch.len());
        for (index, record) in batch.iter().enumerate() {
            match self.point(record) {
                Ok(point) => points.push(point),
                Err(e) => failed_records.push((index, e)),
            }
        }
        if !points.is_empty() {
            // One request for the batch, acknowledged once applied (`wait`); an error fails the
            // batch as a unit (a retryable one is retried by the runtime: same ids, same points).
            self.store
                .upsert(points)
                .await
                .map_err(|f| failed(f).error)?;
        }
        Ok(Written::durable().with_failures(failed_records))
    }

    async fn finish(&self, _end: &InputEnd) -> Result<(), StageError> {
        // Every acknowledged batch is already durable; say what the collection holds.
        match self.store.count().await {
            Ok(count) => self.notes.note(format!(
                "Qdrant collection `{}` at {}: {count} points",
                self.store.collection(),
                self.store.url()
            )),
            Err(f) => tracing::warn!("cannot count the Qdrant points: {}", f.message),
        }
        Ok(())
    }
}

struct QdrantIndex {
    store: QdrantStore,
}

fn hit(found: qdrant::ScoredPayload) -> ChunkHit {
    let p = &found.payload;
    let text = |key: &str| p.get(key).and_then(Value::as_str).map(str::to_string);
    ChunkHit {
        id: text("record_id").unwrap_or_default(),
        score: found.score,
        text: text("text").unwrap_or_default(),
        context: text("context"),
        provenance: Provenance {
            document_id: text("document_id").unwrap_or_default(),
            source_path: text("source_path"),
            content_hash: text("content_hash"),
            line: None,
            chunk_index: p
                .get("chunk_index")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok()),
            char_span: p
                .get("char_span")
                .and_then(|v| serde_json::from_value::<[u64; 2]>(v.clone()).ok()),
        },
    }
}

#[async_trait]
impl VectorIndex for QdrantIndex {
    fn describe(&self) -> String {
        format!(
            "Qdrant collection `{}` at {}",
            self.store.collection(),
            self.store.url()
        )
    }

    async fn nearest(&self, vector: &[f32], k: usize) -> Result<Vec<ChunkHit>, StageError> {
        let found = self
            .store
            .nearest(vector, k as u64)
            .await
            .map_err(|f| failed(f).error)?;
        Ok(found.into_iter().map(hit).collect())
    }

    async fn models(&self) -> Result<Vec<String>, StageError> {
        let models = self
            .store
            .facet("model", 10)
            .await
            .map_err(|f| failed(f).error)?;
        Ok(models.into_iter().map(|(m, _)| m).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> QdrantConfig {
        serde_json::from_value(serde_yaml_value(yaml)).unwrap()
    }

    fn serde_yaml_value(json: &str) -> Value {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn config_problems_are_named_by_field() {
        let c = config(
            r#"{"url": "", "collection": " ", "distance": "hamming", "batch": 0,
                "vector_size": 0, "timeout_s": 0}"#,
        );
        let fields: Vec<String> = c.validate().into_iter().map(|i| i.field).collect();
        assert_eq!(
            fields,
            vec![
                "url",
                "collection",
                "distance",
                "vector_size",
                "batch",
                "timeout_s"
            ]
        );
        let c = config(r#"{"url": "localhost:6334", "collection": "c"}"#);
        assert_eq!(
            c.validate()[0].message,
            "`localhost:6334` must start with http:// or https://"
        );
        let c = config(r#"{"url": "http://127.0.0.1:6334", "collection": "c"}"#);
        assert!(c.validate().is_empty());
        assert_eq!(c.batch, 256);
        assert_eq!(c.distance, "cosine");
    }

    #[test]
    fn the_api_key_is_not_in_debug_output() {
        let c = config(
            r#"{"url": "http://127.0.0.1:6334", "collection": "c", "api_key": "sk-secret-1"}"#,
        );
        assert!(!format!("{c:?}").contains("sk-secret-1"));
        assert!(!format!("{:?}", c.settings()).contains("sk-secret-1"));
    }

    #[test]
    fn payload_carries_text_and_provenance() {
        let record = Record::new(
            "chunk-7".into(),
            Provenance {
                document_id: "doc-1".into(),
                source_path: Some("day03.txt".into()),
                chunk_index: Some(7),
                char_span: Some([10, 90]),
                ..Default::default()
            },
            Payload::Embedded(pipeline::Embedded {
                text: "Houston, we've had a problem.".into(),
                context: Some("Day 3, the accident".into()),
                vector: vec![0.5, 0.5],
                model: "m".into(),
            }),
        );
        let p = payload(
            &record,
            "Houston, we've had a problem.",
            Some("Day 3, the accident"),
            "m",
        );
        assert_eq!(
            Value::Object(p),
            json!({
                "record_id": "chunk-7", "text": "Houston, we've had a problem.",
                "context": "Day 3, the accident", "document_id": "doc-1",
                "source_path": "day03.txt", "chunk_index": 7, "char_span": [10, 90], "model": "m"
            })
        );
        let back = hit(qdrant::ScoredPayload {
            score: 0.5,
            payload: payload(&record, "Houston, we've had a problem.", None, "m"),
        });
        assert_eq!(back.id, "chunk-7");
        assert_eq!(back.provenance, record.provenance);
        assert_eq!(back.context, None);
    }

    #[tokio::test]
    async fn an_unreachable_server_stops_the_build_naming_its_url() {
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let c = config(&format!(
            r#"{{"url": "{url}", "collection": "c", "vector_size": 4, "timeout_s": 2}}"#
        ));
        let dir = tempfile::tempdir().unwrap();
        let error = match c
            .build(&BuildContext::standalone("vectors", dir.path()))
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("built against nothing"),
        };
        assert_eq!(error.class, pipeline::ErrorClass::Run);
        assert!(error.message.starts_with("cannot reach Qdrant"), "{error}");
        assert!(error.message.contains(&url), "{error}");
    }

    #[tokio::test]
    async fn an_unknown_vector_size_stops_the_build() {
        let c = config(r#"{"url": "http://127.0.0.1:1", "collection": "c"}"#);
        let dir = tempfile::tempdir().unwrap();
        let error = match c
            .build(&BuildContext::standalone("vectors", dir.path()))
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("built without a size"),
        };
        assert!(error.message.contains("vector size is unknown"), "{error}");
    }
}
