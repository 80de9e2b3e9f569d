//! From a model's answer to extraction records: items per chunk, provenance (where in the
//! document each name is found), the schema's rules, and the highest-confidence merge.

use super::schema::Resolved;
use pipeline::{Entity, Graph, Mention, Record, Relation};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One item of the answer's `chunks` array.
#[derive(Clone, Debug, Deserialize)]
pub struct AnswerChunk {
    pub chunk_id: Value,
    #[serde(default)]
    pub entities: Vec<AnswerEntity>,
    #[serde(default)]
    pub relations: Vec<AnswerRelation>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AnswerEntity {
    pub name: String,
    #[serde(rename = "type")]
    pub entity_type: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub confidence: Option<f64>,
    #[serde(default)]
    pub properties: Option<Map<String, Value>>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AnswerRelation {
    pub source: String,
    #[serde(rename = "type")]
    pub relation_type: String,
    pub target: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub confidence: Option<f64>,
}

#[derive(Deserialize)]
struct Answer {
    chunks: Vec<AnswerChunk>,
}

/// The items of an answer already checked against the answer schema.
pub fn parse(text: &str) -> Result<Vec<AnswerChunk>, String> {
    serde_json::from_str::<Answer>(text.trim())
        .map(|a| a.chunks)
        .map_err(|e| format!("answer does not have the expected shape: {e}"))
}

/// An id as the model wrote it ("c3", or 3 when it dropped the quotes).
pub fn id_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.trim().to_string(),
        other => other.to_string(),
    }
}

/// Names compared the way a reader would: case and runs of whitespace do not matter.
pub fn fold(name: &str) -> String {
    name.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Counts of what was left out of an answer, for the stage notes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Entities with an empty name, or (strict) a type outside the schema.
    pub invalid_entities: u64,
    /// Relations without a type.
    pub invalid_relations: u64,
    /// Relations whose source or target is not an entity of the same chunk.
    pub dangling_relations: u64,
    /// Strict schemas: relations that match no (source type, relation, target type) pattern.
    pub relations_off_schema: u64,
}

/// Gives every entity named in several places of one answer (overlapping pages, the same
/// name twice in a chunk) the type, description, properties and confidence of its most
/// confident occurrence: the answer with the highest confidence wins. Ties keep the first.
pub fn merge_by_confidence(items: &mut [AnswerChunk]) {
    let mut best: BTreeMap<String, AnswerEntity> = BTreeMap::new();
    for item in items.iter() {
        for e in &item.entities {
            let key = fold(&e.name);
            let better = match best.get(&key) {
                None => true,
                Some(b) => e.confidence.unwrap_or(-1.0) > b.confidence.unwrap_or(-1.0),
            };
            if better {
                best.insert(key, e.clone());
            }
        }
    }
    for item in items.iter_mut() {
        for e in &mut item.entities {
            if let Some(b) = best.get(&fold(&e.name)) {
                e.entity_type = b.entity_type.clone();
                e.description = b.description.clone();
                e.properties = b.properties.clone();
                e.confidence = b.confidence;
            }
        }
    }
}

/// A chunk to attribute an answer to.
pub struct ChunkRef<'a> {
    pub record: &'a Record,
    pub text: &'a str,
}

/// Where a name occurs in the chunk: char offsets inside the chunk text. Exact match first,
/// then ignoring case and with any whitespace between the words.
fn occurrences(text: &str, name: &str, limit: usize) -> Vec<(usize, usize)> {
    let words: Vec<String> = name.split_whitespace().map(regex::escape).collect();
    if words.is_empty() {
        return Vec::new();
    }
    let pattern = format!("(?i){}", words.join(r"\s+"));
    let Ok(re) = regex::Regex::new(&pattern) else {
        return Vec::new();
    };
    let mut exact: Vec<(usize, usize)> = text
        .match_indices(name.trim())
        .take(limit)
        .map(|(at, m)| (at, at + m.len()))
        .collect();
    if exact.is_empty() {
        exact = re
            .find_iter(text)
            .take(limit)
            .map(|m| (m.start(), m.end()))
            .collect();
    }
    exact
}

fn char_offset(text: &str, byte: usize) -> u64 {
    text[..byte].chars().count() as u64
}

impl ChunkRef<'_> {
    fn mention(&self, span: Option<(usize, usize)>) -> Mention {
        let provenance = &self.record.provenance;
        let start = provenance.char_span.map(|s| s[0]);
        Mention {
            document_id: provenance.document_id.clone(),
            chunk_id: self.record.id.clone(),
            source_path: provenance.source_path.clone(),
            char_span: match (span, start) {
                (Some((from, to)), Some(base)) => Some([
                    base + char_offset(self.text, from),
                    base + char_offset(self.text, to),
                ]),
                // No document position for the chunk: positions inside the chunk would be
                // mistaken for document positions, so none is given.
                _ => None,
            },
        }
    }
}

/// The shortest stretch of the chunk that names both ends of a relation.
fn relation_span(text: &str, source: &str, target: &str) -> Option<(usize, usize)> {
    let a = occurrences(text, source, 64);
    let b = occurrences(text, target, 64);
    let mut best: Option<(usize, usize)> = None;
    for &(s1, e1) in &a {
        for &(s2, e2) in &b {
            let window = (s1.min(s2), e1.max(e2));
            if best.is_none_or(|(s, e)| window.1 - window.0 < e - s) {
                best = Some(window);
            }
        }
    }
    best
}

fn clean(text: Option<&str>) -> Option<String> {
    text.map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

fn push_distinct(list: &mut Vec<String>, value: Option<String>) {
    if let Some(v) = value
        && !list.contains(&v)
    {
        list.push(v);
    }
}

fn max_confidence(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// The extraction of one chunk from its items (usually one; a model that wrote the same id
/// twice gets both read).
pub fn build(
    items: &[&AnswerChunk],
    chunk: &ChunkRef<'_>,
    schema: &Resolved,
    extractor: &str,
) -> (Graph, Dropped) {
    let mut dropped = Dropped::default();
    let mut entities: Vec<Entity> = Vec::new();
    // fold(name) -> index in `entities`.
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    for e in items.iter().flat_map(|i| &i.entities) {
        let name = e.name.split_whitespace().collect::<Vec<_>>().join(" ");
        if name.is_empty() {
            dropped.invalid_entities += 1;
            continue;
        }
        let entity_type = match schema.entity_type(&e.entity_type) {
            Some(t) => t.name.clone(),
            None if schema.strict => {
                dropped.invalid_entities += 1;
                continue;
            }
            None => e.entity_type.trim().to_string(),
        };
        if entity_type.is_empty() {
            dropped.invalid_entities += 1;
            continue;
        }
        let properties: Map<String, Value> = e
            .properties
            .iter()
            .flatten()
            .filter(|(_, v)| !v.is_null() && v.as_str().is_none_or(|s| !s.trim().is_empty()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let key = fold(&name);
        if let Some(&at) = by_name.get(&key) {
            // The same name twice in one chunk: one entity, descriptions merged.
            let existing = &mut entities[at];
            push_distinct(&mut existing.descriptions, clean(e.description.as_deref()));
            existing.confidence = max_confidence(existing.confidence, e.confidence);
            for (k, v) in properties {
                existing.properties.entry(k).or_insert(v);
            }
            continue;
        }
        let span = occurrences(chunk.text, &name, 1).first().copied();
        by_name.insert(key, entities.len());
        entities.push(Entity {
            id: String::new(),
            name,
            entity_type,
            aliases: Vec::new(),
            descriptions: clean(e.description.as_deref()).into_iter().collect(),
            properties,
            confidence: e.confidence,
            mentions: vec![chunk.mention(span)],
        });
    }
    let mut relations: Vec<Relation> = Vec::new();
    for r in items.iter().flat_map(|i| &i.relations) {
        let (Some(&s), Some(&t)) = (by_name.get(&fold(&r.source)), by_name.get(&fold(&r.target)))
        else {
            dropped.dangling_relations += 1;
            continue;
        };
        let (source, target) = (&entities[s], &entities[t]);
        let relation_type = match schema.relation_type(&r.relation_type) {
            Some(known) => known.to_string(),
            None if schema.strict => {
                dropped.relations_off_schema += 1;
                continue;
            }
            None => r.relation_type.trim().to_string(),
        };
        if relation_type.is_empty() {
            dropped.invalid_relations += 1;
            continue;
        }
        if schema.strict && !schema.allows(&source.entity_type, &relation_type, &target.entity_type)
        {
            dropped.relations_off_schema += 1;
            continue;
        }
        let (source_name, target_name) = (source.name.clone(), target.name.clone());
        if let Some(existing) = relations.iter_mut().find(|x| {
            x.source == source_name && x.target == target_name && x.relation_type == relation_type
        }) {
            push_distinct(&mut existing.descriptions, clean(r.description.as_deref()));
            existing.confidence = max_confidence(existing.confidence, r.confidence);
            continue;
        }
        let span = relation_span(chunk.text, &source_name, &target_name);
        relations.push(Relation {
            id: String::new(),
            source: source_name,
            target: target_name,
            relation_type,
            descriptions: clean(r.description.as_deref()).into_iter().collect(),
            properties: Map::new(),
            confidence: r.confidence,
            weight: 1.0,
            mentions: vec![chunk.mention(span)],
        });
    }
    (
        Graph {
            extractor: extractor.to_string(),
            entities,
            relations,
        },
        dropped,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kg_extract::schema::GraphSchema;
    use pipeline::{Chunk, Payload, Provenance};
    use serde_json::json;

    fn schema(strict: bool) -> Resolved {
        let s: GraphSchema = serde_json::from_value(json!({
            "strict": strict,
            "entities": { "Person": "someone", "Spacecraft": "a craft" },
            "relations": ["Person FLIES Spacecraft"]
        }))
        .unwrap();
        s.resolve().unwrap()
    }

    fn chunk(text: &str, start: u64) -> Record {
        Record::new(
            "chunk-1".into(),
            Provenance {
                document_id: "doc".into(),
                source_path: Some("day.txt".into()),
                char_span: Some([start, start + text.chars().count() as u64]),
                chunk_index: Some(3),
                ..Default::default()
            },
            Payload::Chunk(Chunk {
                text: text.into(),
                tokens: 10,
                tokenizer: "cl100k_base".into(),
                context: None,
            }),
        )
    }

    fn items(value: Value) -> Vec<AnswerChunk> {
        parse(&json!({ "chunks": value }).to_string()).unwrap()
    }

    #[test]
    fn provenance_points_at_the_name_in_the_document() {
        let text = "Jim Lovell: Houston, the ODYSSEY   is venting.";
        let record = chunk(text, 1000);
        let answer = items(json!([{ "chunk_id": "c1",
            "entities": [
                { "name": "Jim Lovell", "type": "person", "description": "the commander" },
                { "name": "Odyssey", "type": "Spacecraft", "description": "" },
                { "name": "Aquarius", "type": "Spacecraft" }],
            "relations": [{ "source": "jim lovell", "type": "flies", "target": "odyssey", "description": "he flies it" }] }]));
        let refs: Vec<&AnswerChunk> = answer.iter().collect();
        let (graph, dropped) = build(
            &refs,
            &ChunkRef {
                record: &record,
                text,
            },
            &schema(true),
            "kg_extract:test",
        );
        assert_eq!(dropped, Dropped::default());
        assert_eq!(graph.extractor, "kg_extract:test");
        let lovell = &graph.entities[0];
        assert_eq!(lovell.entity_type, "Person", "schema spelling");
        assert_eq!(lovell.descriptions, ["the commander"]);
        assert_eq!(lovell.mentions[0].chunk_id, "chunk-1");
        assert_eq!(lovell.mentions[0].document_id, "doc");
        assert_eq!(lovell.mentions[0].char_span, Some([1000, 1010]));
        // Case-insensitive: "ODYSSEY" in the text for "Odyssey".
        let odyssey = &graph.entities[1];
        assert!(odyssey.descriptions.is_empty());
        assert_eq!(odyssey.mentions[0].char_span, Some([1000 + 25, 1000 + 32]));
        // Not in the text: document and chunk, no span.
        assert_eq!(graph.entities[2].mentions[0].char_span, None);
        assert_eq!(graph.entities[2].mentions[0].chunk_id, "chunk-1");
        let r = &graph.relations[0];
        assert_eq!(
            (
                r.source.as_str(),
                r.relation_type.as_str(),
                r.target.as_str()
            ),
            ("Jim Lovell", "FLIES", "Odyssey")
        );
        assert_eq!(r.mentions[0].char_span, Some([1000, 1032]));
        assert_eq!(r.weight, 1.0);
    }

    #[test]
    fn multibyte_text_gives_char_not_byte_offsets() {
        let text = "Ünïcode prelude — then Houston speaks.";
        let record = chunk(text, 5);
        let answer = items(json!([{ "chunk_id": "c1",
            "entities": [{ "name": "houston", "type": "Person", "description": "ground" }],
            "relations": [] }]));
        let refs: Vec<&AnswerChunk> = answer.iter().collect();
        let (graph, _) = build(
            &refs,
            &ChunkRef {
                record: &record,
                text,
            },
            &schema(true),
            "x",
        );
        let span = graph.entities[0].mentions[0].char_span.unwrap();
        let chars: Vec<char> = text.chars().collect();
        let found: String = chars[(span[0] - 5) as usize..(span[1] - 5) as usize]
            .iter()
            .collect();
        assert_eq!(found, "Houston");
    }

    #[test]
    fn strict_schemas_drop_what_fits_no_pattern_and_say_so() {
        let text = "Lovell flies Odyssey with Haise.";
        let record = chunk(text, 0);
        let answer = items(json!([{ "chunk_id": "c1",
            "entities": [
                { "name": "Lovell", "type": "Person" }, { "name": "Odyssey", "type": "Spacecraft" },
                { "name": "Haise", "type": "Alien" }, { "name": "  ", "type": "Person" }],
            "relations": [
                { "source": "Odyssey", "type": "FLIES", "target": "Lovell" },
                { "source": "Lovell", "type": "LIKES", "target": "Odyssey" },
                { "source": "Lovell", "type": "FLIES", "target": "Nobody" },
                { "source": "Lovell", "type": "FLIES", "target": "Odyssey" }] }]));
        let refs: Vec<&AnswerChunk> = answer.iter().collect();
        let c = ChunkRef {
            record: &record,
            text,
        };
        let (graph, dropped) = build(&refs, &c, &schema(true), "x");
        assert_eq!(graph.entities.len(), 2);
        assert_eq!(graph.relations.len(), 1);
        assert_eq!(
            dropped,
            Dropped {
                invalid_entities: 2,
                invalid_relations: 0,
                dangling_relations: 1,
                relations_off_schema: 2
            }
        );
        // Open: other types are kept; only dangling relations and empty names go.
        let (graph, dropped) = build(&refs, &c, &schema(false), "x");
        assert_eq!(graph.entities.len(), 3);
        assert_eq!(graph.entities[2].entity_type, "Alien");
        assert_eq!(graph.relations.len(), 3);
        assert_eq!(dropped.dangling_relations, 1);
        assert_eq!(dropped.invalid_entities, 1);
    }

    #[test]
    fn the_most_confident_answer_wins_across_pages_of_a_call() {
        let mut answer = items(json!([
            { "chunk_id": "c1", "entities": [
                { "name": "Aquarius", "type": "Person", "description": "a crew member?", "confidence": 0.4 }],
              "relations": [] },
            { "chunk_id": "c2", "entities": [
                { "name": "AQUARIUS", "type": "Spacecraft", "description": "the lunar module", "confidence": 0.95 },
                { "name": "Aquarius", "type": "Person", "description": "again", "confidence": 0.3 }],
              "relations": [] }]));
        merge_by_confidence(&mut answer);
        for item in &answer {
            for e in &item.entities {
                assert_eq!(e.entity_type, "Spacecraft");
                assert_eq!(e.description.as_deref(), Some("the lunar module"));
                assert_eq!(e.confidence, Some(0.95));
            }
        }
        // In c2 the two occurrences become one entity.
        let text = "Aquarius is the LM";
        let record = chunk(text, 0);
        let refs = vec![&answer[1]];
        let (graph, _) = build(
            &refs,
            &ChunkRef {
                record: &record,
                text,
            },
            &schema(true),
            "x",
        );
        assert_eq!(graph.entities.len(), 1);
        assert_eq!(graph.entities[0].name, "AQUARIUS");
    }
}
