//! Reading back what a pipeline wrote. `pipe search` and `pipe graph export` open the stores a
//! pipeline's own sinks write to (and embed a question with the pipeline's own embedder), by
//! asking each stage config: a sink kind that can be read back implements
//! [`StageConfig::open_vector_index`](crate::StageConfig::open_vector_index) /
//! [`open_graph_index`](crate::StageConfig::open_graph_index), an embedding stage
//! [`open_embedder`](crate::StageConfig::open_embedder). Vendor clients stay in the stage
//! crates; these are the vendor-neutral shapes.

use crate::error::StageError;
use crate::record::{Entity, Graph, Provenance};
use async_trait::async_trait;
use serde::Serialize;

/// A chunk found by vector search.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChunkHit {
    /// The chunk's record id (also what graph mentions point at).
    pub id: String,
    /// Similarity (higher is closer; cosine for the built-in stores).
    pub score: f32,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    pub provenance: Provenance,
}

/// One relation with both ends named, for display.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fact {
    pub source_id: String,
    pub source: String,
    pub source_type: String,
    pub relation: String,
    pub target_id: String,
    pub target: String,
    pub target_type: String,
    pub weight: f64,
}

#[async_trait]
pub trait VectorIndex: Send + Sync {
    /// Where it reads from, for messages ("qdrant http://…/collections/apollo").
    fn describe(&self) -> String;
    /// The `k` chunks nearest to `vector`, closest first.
    async fn nearest(&self, vector: &[f32], k: usize) -> Result<Vec<ChunkHit>, StageError>;
    /// Embedding models of the stored vectors, when the store records them (empty: unknown).
    /// `pipe search` refuses to compare a question embedded with another model.
    async fn models(&self) -> Result<Vec<String>, StageError> {
        Ok(Vec::new())
    }
}

#[async_trait]
pub trait GraphIndex: Send + Sync {
    fn describe(&self) -> String;
    /// Entities with a mention in any of these chunks.
    async fn entities_in_chunks(&self, chunk_ids: &[String]) -> Result<Vec<Entity>, StageError>;
    /// Relations touching any of these entities, strongest (weight) first, at most `limit`.
    async fn facts_about(
        &self,
        entity_ids: &[String],
        limit: usize,
    ) -> Result<Vec<Fact>, StageError>;
    /// The whole graph (`pipe graph export`).
    async fn export(&self) -> Result<Graph, StageError>;
}

#[async_trait]
pub trait TextEmbedder: Send + Sync {
    /// Model name as stored with the vectors (a mismatch with the index is an error).
    fn model(&self) -> String;
    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, StageError>;
    /// One vector per text, in order. Embedders that take batches (a provider's request, a
    /// model's forward pass) override this; the default asks one text at a time.
    async fn embed_texts(&self, texts: &[String]) -> Vec<Result<Vec<f32>, StageError>> {
        let mut vectors = Vec::with_capacity(texts.len());
        for text in texts {
            vectors.push(self.embed_query(text).await);
        }
        vectors
    }
}
