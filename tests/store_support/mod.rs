//! Test-only stage kinds for the store tests, registered like any outside crate's stages:
//! `toy_embed` (chunk → embedding by hashed words, with `open_embedder` for `pipe search`),
//! `toy_extract` (chunk → graph of the names it is told to look for, ids as `normalize`
//! makes them), `vectors` (a source of embeddings, announcing model and size like `embed`).
//! They stand in for the `embed` / extraction stages the stores are fed by, not for the stores.
#![allow(dead_code)]

use pipeline::futures::stream::{self, BoxStream, StreamExt};
use pipeline::index::TextEmbedder;
use pipeline::record::stable_id;
use pipeline::{
    BuildContext, BuiltStage, Embedded, Entity, Graph, KindSet, Mention, Payload, PayloadKind,
    Processor, Produces, Provenance, Record, Registry, Rejected, Relation, Role, Source,
    StageConfig, StageError, async_trait,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub fn register(registry: &mut Registry) {
    registry
        .register::<ToyEmbedConfig>()
        .register::<ToyExtractConfig>()
        .register::<VectorsConfig>();
}

/// Hashed bag of lowercase words, L2-normalised: texts sharing words are close.
pub fn toy_vector(text: &str, dims: usize) -> Vec<f32> {
    let mut v = vec![0f32; dims];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
    {
        let word = word.to_lowercase();
        let hash = stable_id(&[word.as_bytes()]);
        let index = u64::from_str_radix(&hash[..16], 16).unwrap() as usize % dims;
        v[index] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToyEmbedConfig {
    pub dims: usize,
}

impl ToyEmbedConfig {
    fn model(&self) -> String {
        format!("toy-hash-{}", self.dims)
    }
}

#[async_trait]
impl StageConfig for ToyEmbedConfig {
    const KIND: &'static str = "toy_embed";
    const DESCRIPTION: &'static str = "test embedder";
    const ROLE: Role = Role::Processor;
    fn accepts() -> KindSet {
        KindSet::of(&[PayloadKind::Chunk])
    }
    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Embedded]))
    }
    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        ctx.publish("embedding.model", serde_json::json!(self.model()));
        ctx.publish("embedding.dimensions", serde_json::json!(self.dims));
        Ok(BuiltStage::Processor(Arc::new(ToyEmbed {
            dims: self.dims,
            model: self.model(),
        })))
    }
    async fn open_embedder(
        &self,
        _ctx: &BuildContext,
    ) -> Option<Result<Arc<dyn TextEmbedder>, StageError>> {
        Some(Ok(Arc::new(ToyEmbed {
            dims: self.dims,
            model: self.model(),
        })))
    }
}

struct ToyEmbed {
    dims: usize,
    model: String,
}

#[async_trait]
impl Processor for ToyEmbed {
    async fn process(&self, record: &Record) -> Result<Vec<Record>, StageError> {
        let Payload::Chunk(chunk) = &record.payload else {
            return Err(StageError::record("not a chunk"));
        };
        Ok(vec![Record::new(
            record.id.clone(),
            record.provenance.clone(),
            Payload::Embedded(Embedded {
                text: chunk.text.clone(),
                context: chunk.context.clone(),
                vector: toy_vector(&chunk.text_for_retrieval(), self.dims),
                model: self.model.clone(),
            }),
        )])
    }
}

#[async_trait]
impl TextEmbedder for ToyEmbed {
    fn model(&self) -> String {
        self.model.clone()
    }
    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, StageError> {
        Ok(toy_vector(text, self.dims))
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToyExtractConfig {
    /// name → entity type, found verbatim in chunks.
    pub names: BTreeMap<String, String>,
}

#[async_trait]
impl StageConfig for ToyExtractConfig {
    const KIND: &'static str = "toy_extract";
    const DESCRIPTION: &'static str = "test extractor (already normalised)";
    const ROLE: Role = Role::Processor;
    fn accepts() -> KindSet {
        KindSet::of(&[PayloadKind::Chunk])
    }
    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Graph]))
    }
    async fn build(&self, _: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Processor(Arc::new(ToyExtract {
            names: self.names.clone(),
        })))
    }
}

struct ToyExtract {
    names: BTreeMap<String, String>,
}

pub fn entity_id(name: &str, kind: &str) -> String {
    stable_id(&[b"entity", kind.as_bytes(), name.as_bytes()])
}

#[async_trait]
impl Processor for ToyExtract {
    async fn process(&self, record: &Record) -> Result<Vec<Record>, StageError> {
        let Payload::Chunk(chunk) = &record.payload else {
            return Err(StageError::record("not a chunk"));
        };
        let start = record.provenance.char_span.map_or(0, |s| s[0]);
        let mention = |offset: Option<usize>| Mention {
            document_id: record.provenance.document_id.clone(),
            chunk_id: record.id.clone(),
            source_path: record.provenance.source_path.clone(),
            char_span: offset.map(|o| [start + o as u64, start + o as u64]),
        };
        let mut entities: Vec<Entity> = Vec::new();
        for (name, kind) in &self.names {
            if let Some(byte) = chunk.text.find(name.as_str()) {
                let chars = chunk.text[..byte].chars().count();
                let mut m = mention(Some(chars));
                m.char_span = m
                    .char_span
                    .map(|[s, _]| [s, s + name.chars().count() as u64]);
                entities.push(Entity {
                    id: entity_id(name, kind),
                    name: name.clone(),
                    entity_type: kind.clone(),
                    mentions: vec![m],
                    ..Default::default()
                });
            }
        }
        let mut relations = Vec::new();
        for (i, a) in entities.iter().enumerate() {
            for b in &entities[i + 1..] {
                relations.push(Relation {
                    id: stable_id(&[b"relation", a.id.as_bytes(), b"CO_OCCURS", b.id.as_bytes()]),
                    source: a.id.clone(),
                    target: b.id.clone(),
                    relation_type: "CO_OCCURS".into(),
                    weight: 1.0,
                    mentions: vec![mention(None)],
                    ..Default::default()
                });
            }
        }
        Ok(vec![Record::new(
            stable_id(&[record.id.as_bytes(), b"toy_extract"]),
            record.provenance.clone(),
            Payload::Graph(Graph {
                extractor: "toy_extract".into(),
                entities,
                relations,
            }),
        )])
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VectorsConfig {
    pub count: u64,
    pub dims: usize,
    #[serde(default = "default_model")]
    pub model: String,
    /// Pause before each record (a run that lasts).
    #[serde(default)]
    pub interval_ms: u64,
}

fn default_model() -> String {
    "test-model".into()
}

/// The vector of record `i`: distinct directions, so each record is its own nearest.
pub fn test_vector(i: u64, dims: usize) -> Vec<f32> {
    (0..dims)
        .map(|j| ((i as f32 + 1.0) * (j as f32 + 1.0) * 0.7).sin())
        .collect()
}

pub fn test_record_id(i: u64) -> String {
    format!("chunk-{i:05}")
}

#[async_trait]
impl StageConfig for VectorsConfig {
    const KIND: &'static str = "vectors";
    const DESCRIPTION: &'static str = "test source of embeddings";
    const ROLE: Role = Role::Source;
    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Embedded]))
    }
    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        ctx.publish("embedding.model", serde_json::json!(self.model));
        ctx.publish("embedding.dimensions", serde_json::json!(self.dims));
        Ok(BuiltStage::Source(Arc::new(Vectors {
            count: self.count,
            dims: self.dims,
            model: self.model.clone(),
            interval: Duration::from_millis(self.interval_ms),
        })))
    }
}

struct Vectors {
    count: u64,
    dims: usize,
    model: String,
    interval: Duration,
}

impl Source for Vectors {
    fn records(self: Arc<Self>) -> BoxStream<'static, Result<Record, Rejected>> {
        stream::iter(0..self.count)
            .then(move |i| {
                let this = self.clone();
                async move {
                    if !this.interval.is_zero() {
                        tokio::time::sleep(this.interval).await;
                    }
                    Ok(Record::new(
                        test_record_id(i),
                        Provenance {
                            document_id: format!("doc-{}", i % 7),
                            source_path: Some(format!("day{:02}.txt", i % 7 + 1)),
                            chunk_index: Some(i as u32),
                            char_span: Some([i * 100, i * 100 + 99]),
                            ..Default::default()
                        },
                        Payload::Embedded(Embedded {
                            text: format!("text of chunk {i}"),
                            context: (i % 2 == 0).then(|| format!("context {i}")),
                            vector: test_vector(i, this.dims),
                            model: this.model.clone(),
                        }),
                    ))
                }
            })
            .boxed()
    }

    fn size_hint(&self) -> Option<u64> {
        Some(self.count)
    }
}
