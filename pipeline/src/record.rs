//! Records: what flows along the edges of a pipeline.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Payload kinds, so `pipe validate` can check that one stage's output fits the next one's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadKind {
    Document,
    Chunk,
    Json,
    /// Entities and relations as an extractor found them (names, not ids yet).
    Extraction,
    /// Normalised entities and relations: deterministic ids, ready for a graph store.
    Graph,
    /// A text with its embedding vector.
    Embedded,
}

impl PayloadKind {
    pub const ALL: [PayloadKind; 6] = [
        PayloadKind::Document,
        PayloadKind::Chunk,
        PayloadKind::Json,
        PayloadKind::Extraction,
        PayloadKind::Graph,
        PayloadKind::Embedded,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PayloadKind::Document => "Document",
            PayloadKind::Chunk => "Chunk",
            PayloadKind::Json => "Json",
            PayloadKind::Extraction => "Extraction",
            PayloadKind::Graph => "Graph",
            PayloadKind::Embedded => "Embedded",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of payload kinds (what a stage accepts, or what may arrive on an edge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KindSet(u8);

impl KindSet {
    pub const EMPTY: KindSet = KindSet(0);
    pub const ANY: KindSet = KindSet(0b11_1111);

    pub fn of(kinds: &[PayloadKind]) -> KindSet {
        KindSet(kinds.iter().fold(0, |acc, k| acc | k.bit()))
    }
    pub fn contains(self, kind: PayloadKind) -> bool {
        self.0 & kind.bit() != 0
    }
    pub fn is_subset_of(self, other: KindSet) -> bool {
        self.0 & !other.0 == 0
    }
    pub fn union(self, other: KindSet) -> KindSet {
        KindSet(self.0 | other.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn kinds(self) -> impl Iterator<Item = PayloadKind> {
        PayloadKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

impl fmt::Display for KindSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == KindSet::ANY {
            return f.write_str("any");
        }
        let names: Vec<&str> = self.kinds().map(PayloadKind::name).collect();
        f.write_str(&names.join(" | "))
    }
}

/// Where a record came from. Kept on every derived record so a fact in the graph can be traced
/// back to the file, the chunk and the characters it was read from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Id of the document this record derives from.
    pub document_id: String,
    /// Path of the source file (relative to the source's root), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_path: Option<String>,
    /// blake3 of the source file's bytes, so a changed file is recognised as new input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// 1-based line in the source file, for sources with one record per line (JSONL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_index: Option<u32>,
    /// Character (not byte) span of this record's text inside the document text, end exclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub char_span: Option<[u64; 2]>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub text: String,
    /// Source format (text, markdown, srt, vtt, json, jsonl, pdf, generated ...).
    pub format: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub text: String,
    /// Token count by the chunker's tokenizer.
    pub tokens: u32,
    pub tokenizer: String,
    /// A short text situating the chunk in its document (contextual retrieval), written by
    /// `contextualize`; embedded in front of `text`, never part of `text` (spans stay exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

impl Chunk {
    /// What to embed or index: the context (when there is one), then the chunk.
    pub fn text_for_retrieval(&self) -> std::borrow::Cow<'_, str> {
        match &self.context {
            Some(context) if !context.trim().is_empty() => {
                std::borrow::Cow::Owned(format!("{}\n\n{}", context.trim(), self.text))
            }
            _ => std::borrow::Cow::Borrowed(&self.text),
        }
    }
}

/// Where a fact was read: the document, the chunk, and (when the mention was found verbatim
/// in the chunk) its characters in the document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mention {
    pub document_id: String,
    /// Id of the chunk record the fact was extracted from.
    pub chunk_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_path: Option<String>,
    /// Character (not byte) span of the mention inside the document text, end exclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub char_span: Option<[u64; 2]>,
}

/// An entity (a graph node).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    /// Deterministic id (from the normalised name and type); empty before `normalize`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub name: String,
    /// Entity type, as the schema names it (becomes the node label).
    #[serde(rename = "type")]
    pub entity_type: String,
    /// Other names it was seen under.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Descriptions, merged from every mention (distinct, in first-seen order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descriptions: Vec<String>,
    /// Further properties (schema-defined).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub properties: serde_json::Map<String, serde_json::Value>,
    /// The extractor's confidence (0..1), when it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<Mention>,
}

/// A relation (a graph edge) between two entities.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Relation {
    /// Deterministic id (from source, type and target ids); empty before `normalize`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Before `normalize`: the source entity's name as extracted; after: its id.
    pub source: String,
    pub target: String,
    /// Relation type, as the schema names it (becomes the relationship type).
    #[serde(rename = "type")]
    pub relation_type: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descriptions: Vec<String>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub properties: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// How strongly it is supported: the number of distinct mentions (co-occurrences for
    /// `nlp_extract`).
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<Mention>,
}

fn one() -> f64 {
    1.0
}

/// Entities and relations: an extractor's answer for one chunk (`Extraction`), or a normalised
/// fragment of the knowledge graph (`Graph`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// What produced it (`kg_extract:gpt-4o-mini`, `nlp_extract`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub extractor: String,
    #[serde(default)]
    pub entities: Vec<Entity>,
    #[serde(default)]
    pub relations: Vec<Relation>,
}

/// A text and its embedding. The record keeps the id of the record that was embedded (a
/// chunk's id), so stores can link vectors, chunks and the graph's mentions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Embedded {
    /// The original text (a chunk's `text`).
    pub text: String,
    /// The chunk's context, when `contextualize` wrote one (it was embedded with the text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    pub vector: Vec<f32>,
    /// Embedding model (or `hashing-<dim>` for the feature-hashing fallback).
    pub model: String,
}

/// Typed payloads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    Document(Document),
    Chunk(Chunk),
    Json { value: serde_json::Value },
    Extraction(Graph),
    Graph(Graph),
    Embedded(Embedded),
}

impl Payload {
    pub fn kind(&self) -> PayloadKind {
        match self {
            Payload::Document(_) => PayloadKind::Document,
            Payload::Chunk(_) => PayloadKind::Chunk,
            Payload::Json { .. } => PayloadKind::Json,
            Payload::Extraction(_) => PayloadKind::Extraction,
            Payload::Graph(_) => PayloadKind::Graph,
            Payload::Embedded(_) => PayloadKind::Embedded,
        }
    }

    /// The record's text, for payloads that have one.
    pub fn text(&self) -> Option<&str> {
        match self {
            Payload::Document(d) => Some(&d.text),
            Payload::Chunk(c) => Some(&c.text),
            Payload::Embedded(e) => Some(&e.text),
            Payload::Json { .. } | Payload::Extraction(_) | Payload::Graph(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Stable, content-derived id: the same input always yields the same id, so sinks can
    /// upsert (at-least-once delivery + idempotent sinks = exactly one copy).
    pub id: String,
    pub provenance: Provenance,
    pub payload: Payload,
}

impl Record {
    pub fn new(id: String, provenance: Provenance, payload: Payload) -> Self {
        Record {
            id,
            provenance,
            payload,
        }
    }
}

/// Content-derived ids: blake3 over the parts (length-prefixed so ("ab","c") != ("a","bc")),
/// shortened to 128 bits of hex.
pub fn stable_id(parts: &[&[u8]]) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let hash = hasher.finalize();
    hash.to_hex()[..32].to_string()
}

/// Full blake3 hex of some bytes (content hashes in provenance).
pub fn content_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_id_is_deterministic_and_length_prefixed() {
        assert_eq!(stable_id(&[b"a", b"b"]), stable_id(&[b"a", b"b"]));
        assert_ne!(stable_id(&[b"ab", b"c"]), stable_id(&[b"a", b"bc"]));
        assert_eq!(stable_id(&[b"x"]).len(), 32);
    }

    #[test]
    fn kind_sets() {
        let dc = KindSet::of(&[PayloadKind::Document, PayloadKind::Chunk]);
        assert!(KindSet::of(&[PayloadKind::Chunk]).is_subset_of(dc));
        assert!(!KindSet::of(&[PayloadKind::Json]).is_subset_of(dc));
        assert_eq!(dc.to_string(), "Document | Chunk");
        assert_eq!(KindSet::ANY.to_string(), "any");
    }

    #[test]
    fn payload_serialises_with_kind_tag() {
        let p = Payload::Chunk(Chunk {
            text: "hi".into(),
            tokens: 1,
            tokenizer: "cl100k_base".into(),
            context: None,
        });
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["kind"], "chunk");
        assert_eq!(v["text"], "hi");
    }
}
