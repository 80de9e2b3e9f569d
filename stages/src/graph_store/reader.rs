//! Reading a graph store back (`pipe search`, `pipe graph export`), with the read queries of
//! the Cypher builder.

use super::GraphBackend;
use super::cypher::{self, read};
use pipeline::index::{Fact, GraphIndex};
use pipeline::{Entity, Graph, StageError, async_trait};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Rows per page when exporting.
const PAGE: usize = 5000;

pub struct GraphReader {
    backend: Arc<dyn GraphBackend>,
}

impl GraphReader {
    pub fn new(backend: Arc<dyn GraphBackend>) -> GraphReader {
        GraphReader { backend }
    }
}

fn column(row: &mut Map<String, Value>, name: &str) -> Result<Value, StageError> {
    row.remove(name)
        .ok_or_else(|| StageError::record(format!("graph read: a row lacks column `{name}`")))
}

fn entity_of(mut row: Map<String, Value>) -> Result<Entity, StageError> {
    match column(&mut row, "entity")? {
        Value::Object(props) => Ok(cypher::entity_from_properties(props)),
        other => Err(StageError::record(format!(
            "graph read: `entity` is not a map: {other}"
        ))),
    }
}

fn text(row: &Map<String, Value>, name: &str) -> String {
    row.get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[async_trait]
impl GraphIndex for GraphReader {
    fn describe(&self) -> String {
        self.backend.describe()
    }

    async fn entities_in_chunks(&self, chunk_ids: &[String]) -> Result<Vec<Entity>, StageError> {
        if chunk_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .backend
            .read(read::entities_in_chunks(chunk_ids))
            .await?;
        rows.into_iter().map(entity_of).collect()
    }

    async fn facts_about(
        &self,
        entity_ids: &[String],
        limit: usize,
    ) -> Result<Vec<Fact>, StageError> {
        if entity_ids.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        // Outgoing and incoming separately (each strongest first), then merged: one
        // undirected pattern would not use the id index.
        let mut by_id: BTreeMap<String, Fact> = BTreeMap::new();
        for outgoing in [true, false] {
            let rows = self
                .backend
                .read(read::facts(entity_ids, outgoing, limit))
                .await?;
            for row in rows {
                let fact = Fact {
                    source_id: text(&row, "source_id"),
                    source: text(&row, "source"),
                    source_type: text(&row, "source_type"),
                    relation: text(&row, "relation"),
                    target_id: text(&row, "target_id"),
                    target: text(&row, "target"),
                    target_type: text(&row, "target_type"),
                    weight: row.get("weight").and_then(Value::as_f64).unwrap_or(0.0),
                };
                by_id.entry(text(&row, "id")).or_insert(fact);
            }
        }
        let mut facts: Vec<Fact> = by_id.into_values().collect();
        facts.sort_by(|a, b| {
            b.weight
                .total_cmp(&a.weight)
                .then_with(|| a.source.cmp(&b.source))
                .then_with(|| a.target.cmp(&b.target))
        });
        facts.truncate(limit);
        Ok(facts)
    }

    async fn export(&self) -> Result<Graph, StageError> {
        let mut graph = Graph {
            extractor: format!("export of {}", self.backend.describe()),
            ..Graph::default()
        };
        let mut after = String::new();
        loop {
            let rows = self.backend.read(read::entities_page(&after, PAGE)).await?;
            let full = rows.len() == PAGE;
            for row in rows {
                let entity = entity_of(row)?;
                after = entity.id.clone();
                graph.entities.push(entity);
            }
            if !full {
                break;
            }
        }
        let mut after = String::new();
        loop {
            let rows = self
                .backend
                .read(read::relations_page(&after, PAGE))
                .await?;
            let full = rows.len() == PAGE;
            for mut row in rows {
                let relation = cypher::relation_from_row(&mut row);
                after = relation.id.clone();
                graph.relations.push(relation);
            }
            if !full {
                break;
            }
        }
        Ok(graph)
    }
}
