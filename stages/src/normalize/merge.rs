//! Merging normalised graph fragments by id: lists become set unions, a relation's weight is
//! the number of distinct mentions that support it, and the display name is the most frequent
//! surface form. The result does not depend on the order fragments arrive in (runs with
//! concurrency give the same graph), so the same input always gives the same graph.

use pipeline::{Entity, Graph, Mention, Relation};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Where a mention sits, for "first seen" orders that do not depend on arrival: document,
/// then position, then chunk. Fragments without mentions sort last.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position(Option<(String, u64, String)>);

impl Position {
    pub const UNKNOWN: Position = Position(None);

    fn of(mention: &Mention) -> Position {
        Position(Some((
            mention.document_id.clone(),
            mention.char_span.map_or(u64::MAX, |s| s[0]),
            mention.chunk_id.clone(),
        )))
    }

    /// The earliest of some mentions.
    pub fn first(mentions: &[Mention]) -> Position {
        mentions
            .iter()
            .map(Position::of)
            .min()
            .unwrap_or(Position::UNKNOWN)
    }

    fn is_known(&self) -> bool {
        self.0.is_some()
    }
}

/// Earlier known positions first; unknown positions last.
fn earlier(a: &Position, b: &Position) -> bool {
    order(a, b) == std::cmp::Ordering::Less
}

fn order(a: &Position, b: &Position) -> std::cmp::Ordering {
    match (a.is_known(), b.is_known()) {
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.cmp(b),
    }
}

/// Descriptions in the order they were first seen (then alphabetical).
fn ordered_descriptions(descriptions: &BTreeMap<String, Position>) -> Vec<String> {
    let mut list: Vec<(&String, &Position)> = descriptions.iter().collect();
    list.sort_by(|a, b| order(a.1, b.1).then_with(|| a.0.cmp(b.0)));
    list.into_iter().map(|(d, _)| d.clone()).collect()
}

/// What makes two supporting mentions the same support: the same characters of the same
/// document (overlapping chunks see them twice), or without a span the same chunk.
fn support_key(m: &Mention) -> (String, String, Option<[u64; 2]>) {
    match m.char_span {
        Some(span) => (m.document_id.clone(), String::new(), Some(span)),
        None => (m.document_id.clone(), m.chunk_id.clone(), None),
    }
}

/// Distinct supporting mentions (see [`support_key`]).
pub fn support_count(mentions: &[Mention]) -> usize {
    mentions
        .iter()
        .map(support_key)
        .collect::<BTreeSet<_>>()
        .len()
}

#[derive(Clone, Debug, Default)]
pub struct MergedEntity {
    pub id: String,
    pub entity_type: String,
    /// Surface form → (votes, where first seen).
    pub forms: BTreeMap<String, (u64, Position)>,
    pub descriptions: BTreeMap<String, Position>,
    pub mentions: BTreeSet<Mention>,
    pub confidence: Option<f64>,
    pub properties: BTreeMap<String, (Position, Value)>,
    pub first: Option<Position>,
}

impl MergedEntity {
    /// The most frequent surface form; ties go to the one seen first, then the smallest.
    pub fn name(&self) -> String {
        self.forms
            .iter()
            .max_by(|(a_name, (a_votes, a_pos)), (b_name, (b_votes, b_pos))| {
                a_votes
                    .cmp(b_votes)
                    // Seen first wins: an earlier position counts as greater.
                    .then_with(|| order(b_pos, a_pos))
                    .then_with(|| b_name.cmp(a_name))
            })
            .map(|(name, _)| name.clone())
            .unwrap_or_default()
    }

    /// Distinct supporting mentions (at least 1: a fragment without mentions still counts).
    pub fn support(&self) -> usize {
        self.mentions
            .iter()
            .map(support_key)
            .collect::<BTreeSet<_>>()
            .len()
            .max(1)
    }

    fn absorb(&mut self, other: MergedEntity) {
        for (form, (votes, pos)) in other.forms {
            let entry = self.forms.entry(form).or_insert((0, pos.clone()));
            entry.0 += votes;
            if earlier(&pos, &entry.1) {
                entry.1 = pos;
            }
        }
        for (description, pos) in other.descriptions {
            let entry = self.descriptions.entry(description).or_insert(pos.clone());
            if earlier(&pos, entry) {
                *entry = pos;
            }
        }
        self.mentions.extend(other.mentions);
        self.confidence = max_confidence(self.confidence, other.confidence);
        for (key, (pos, value)) in other.properties {
            match self.properties.get(&key) {
                Some((held, _)) if !earlier(&pos, held) => {}
                _ => {
                    self.properties.insert(key, (pos, value));
                }
            }
        }
        self.first = match (self.first.take(), other.first) {
            (Some(a), Some(b)) => Some(if earlier(&b, &a) { b } else { a }),
            (a, b) => a.or(b),
        };
    }

    pub fn to_entity(&self) -> Entity {
        let name = self.name();
        Entity {
            id: self.id.clone(),
            aliases: self.forms.keys().filter(|f| **f != name).cloned().collect(),
            name,
            entity_type: self.entity_type.clone(),
            descriptions: ordered_descriptions(&self.descriptions),
            properties: self
                .properties
                .iter()
                .map(|(k, (_, v))| (k.clone(), v.clone()))
                .collect::<Map<String, Value>>(),
            confidence: self.confidence,
            mentions: self.mentions.iter().cloned().collect(),
        }
    }
}

fn max_confidence(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Clone, Debug, Default)]
pub struct MergedRelation {
    pub id: String,
    pub source: String,
    pub target: String,
    pub relation_type: String,
    pub descriptions: BTreeMap<String, Position>,
    pub mentions: BTreeSet<Mention>,
    /// Summed weights of fragments that came without mentions.
    pub unsupported_weight: f64,
    pub confidence: Option<f64>,
    pub properties: BTreeMap<String, (Position, Value)>,
}

impl MergedRelation {
    /// Distinct supporting mentions, plus the weights of fragments without any.
    pub fn weight(&self) -> f64 {
        let supported = self
            .mentions
            .iter()
            .map(support_key)
            .collect::<BTreeSet<_>>()
            .len();
        supported as f64 + self.unsupported_weight
    }

    fn absorb(&mut self, other: MergedRelation) {
        for (description, pos) in other.descriptions {
            let entry = self.descriptions.entry(description).or_insert(pos.clone());
            if earlier(&pos, entry) {
                *entry = pos;
            }
        }
        self.mentions.extend(other.mentions);
        self.unsupported_weight += other.unsupported_weight;
        self.confidence = max_confidence(self.confidence, other.confidence);
        for (key, (pos, value)) in other.properties {
            match self.properties.get(&key) {
                Some((held, _)) if !earlier(&pos, held) => {}
                _ => {
                    self.properties.insert(key, (pos, value));
                }
            }
        }
    }

    pub fn to_relation(&self) -> Relation {
        Relation {
            id: self.id.clone(),
            source: self.source.clone(),
            target: self.target.clone(),
            relation_type: self.relation_type.clone(),
            descriptions: ordered_descriptions(&self.descriptions),
            properties: self
                .properties
                .iter()
                .map(|(k, (_, v))| (k.clone(), v.clone()))
                .collect::<Map<String, Value>>(),
            confidence: self.confidence,
            weight: self.weight(),
            mentions: self.mentions.iter().cloned().collect(),
        }
    }
}

/// The id of a normalised relation (see the graph contract).
pub fn relation_id(source: &str, relation_type: &str, target: &str) -> String {
    pipeline::record::stable_id(&[
        b"relation",
        source.as_bytes(),
        relation_type.as_bytes(),
        target.as_bytes(),
    ])
}

/// Normalised fragments merged by id.
#[derive(Debug, Default)]
pub struct GraphMerge {
    pub entities: BTreeMap<String, MergedEntity>,
    pub relations: BTreeMap<String, MergedRelation>,
    pub extractors: BTreeSet<String>,
}

impl GraphMerge {
    pub fn new() -> GraphMerge {
        GraphMerge::default()
    }

    /// Adds a normalised fragment (entity ids set, relation ends are entity ids). Each
    /// fragment entity votes for its name with its number of distinct mentions: exact within
    /// one fragment, and across fragments each one votes for its own most frequent form.
    pub fn add(&mut self, graph: &Graph) {
        if !graph.extractor.is_empty() {
            self.extractors.insert(graph.extractor.clone());
        }
        for entity in &graph.entities {
            let first = Position::first(&entity.mentions);
            let mut forms = BTreeMap::new();
            let votes = entity
                .mentions
                .iter()
                .map(support_key)
                .collect::<BTreeSet<_>>()
                .len()
                .max(1) as u64;
            forms.insert(entity.name.clone(), (votes, first.clone()));
            for alias in &entity.aliases {
                forms.entry(alias.clone()).or_insert((0, first.clone()));
            }
            let incoming = MergedEntity {
                id: entity.id.clone(),
                entity_type: entity.entity_type.clone(),
                forms,
                descriptions: entity
                    .descriptions
                    .iter()
                    .map(|d| (d.clone(), first.clone()))
                    .collect(),
                mentions: entity.mentions.iter().cloned().collect(),
                confidence: entity.confidence,
                properties: entity
                    .properties
                    .iter()
                    .map(|(k, v)| (k.clone(), (first.clone(), v.clone())))
                    .collect(),
                first: Some(first),
            };
            match self.entities.get_mut(&entity.id) {
                Some(held) => held.absorb(incoming),
                None => {
                    self.entities.insert(entity.id.clone(), incoming);
                }
            }
        }
        for relation in &graph.relations {
            let first = Position::first(&relation.mentions);
            let incoming = MergedRelation {
                id: relation.id.clone(),
                source: relation.source.clone(),
                target: relation.target.clone(),
                relation_type: relation.relation_type.clone(),
                descriptions: relation
                    .descriptions
                    .iter()
                    .map(|d| (d.clone(), first.clone()))
                    .collect(),
                mentions: relation.mentions.iter().cloned().collect(),
                unsupported_weight: if relation.mentions.is_empty() {
                    relation.weight
                } else {
                    0.0
                },
                confidence: relation.confidence,
                properties: relation
                    .properties
                    .iter()
                    .map(|(k, v)| (k.clone(), (first.clone(), v.clone())))
                    .collect(),
            };
            match self.relations.get_mut(&relation.id) {
                Some(held) => held.absorb(incoming),
                None => {
                    self.relations.insert(relation.id.clone(), incoming);
                }
            }
        }
    }

    /// Folds entity `from` into `into` (same id afterwards: `into`'s), re-points the
    /// relations touching it, merges relations that become the same, and drops the ones that
    /// become loops. `symmetric` relation types get their ends ordered by id. Returns the
    /// number of relations dropped as loops.
    pub fn merge_entities(&mut self, merges: &[(String, String)], symmetric: &[String]) -> usize {
        if merges.is_empty() {
            return 0;
        }
        let target_of: BTreeMap<&str, &str> = merges
            .iter()
            .map(|(from, into)| (from.as_str(), into.as_str()))
            .collect();
        for (from, into) in merges {
            if from == into {
                continue;
            }
            if let Some(mut absorbed) = self.entities.remove(from) {
                absorbed.id = into.clone();
                if let Some(held) = self.entities.get_mut(into) {
                    held.absorb(absorbed);
                } else {
                    self.entities.insert(into.clone(), absorbed);
                }
            }
        }
        let relations = std::mem::take(&mut self.relations);
        let mut loops = 0;
        for (_, mut relation) in relations {
            if let Some(into) = target_of.get(relation.source.as_str()) {
                relation.source = into.to_string();
            }
            if let Some(into) = target_of.get(relation.target.as_str()) {
                relation.target = into.to_string();
            }
            if relation.source == relation.target {
                loops += 1;
                continue;
            }
            if symmetric.contains(&relation.relation_type) && relation.source > relation.target {
                std::mem::swap(&mut relation.source, &mut relation.target);
            }
            relation.id = relation_id(&relation.source, &relation.relation_type, &relation.target);
            match self.relations.get_mut(&relation.id) {
                Some(held) => held.absorb(relation),
                None => {
                    self.relations.insert(relation.id.clone(), relation);
                }
            }
        }
        loops
    }

    /// The merged graph: entities and relations in id order.
    pub fn to_graph(&self) -> Graph {
        Graph {
            extractor: self
                .extractors
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(","),
            entities: self
                .entities
                .values()
                .map(MergedEntity::to_entity)
                .collect(),
            relations: self
                .relations
                .values()
                .map(MergedRelation::to_relation)
                .collect(),
        }
    }
}
