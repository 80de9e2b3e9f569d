//! The one Cypher builder behind the graph store sinks (Neo4j, FalkorDB): schema statements,
//! UNWIND-batched idempotent MERGE writes, and the read queries `pipe search` / `pipe graph
//! export` use.
//!
//! Safety: values only ever travel as parameters (`$rows`). Labels and relationship types
//! cannot be parameters, so they are [`Name`]s — validated against `^[A-Za-z_][A-Za-z0-9_]*$`
//! after a small normaliser (`space craft` → `SpaceCraft`, `works for` → `WORKS_FOR`), and
//! backtick-escaped wherever they appear. Model output is never concatenated into a query.
//!
//! Idempotence: rows MERGE on deterministic ids; list properties are set-unions (a value
//! already stored is not appended again); a relation's `weight` is the number of distinct
//! chunks supporting it (its `chunk_ids`), or — for a relation without chunk provenance —
//! the largest weight written. Writing the same graph twice leaves node and relationship
//! counts and every property unchanged.

use pipeline::{Embedded, Entity, Graph, Mention, Provenance, Relation};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Label every entity node carries (next to its type label).
pub const ENTITY_LABEL: &str = "Entity";
/// Label of chunk nodes (written when the sink receives `Embedded` records).
pub const CHUNK_LABEL: &str = "Chunk";
/// Relationship type from a chunk to the entities mentioned in it.
pub const MENTIONS: &str = "MENTIONS";
/// Longest label or relationship type accepted (bytes).
pub const MAX_NAME_LEN: usize = 128;

/// Entity and relation properties the sink owns; model-provided properties with these keys
/// are stored as `prop_<key>` instead.
const RESERVED: [&str; 12] = [
    "id",
    "name",
    "type",
    "aliases",
    "descriptions",
    "chunk_ids",
    "document_ids",
    "source_paths",
    "extractors",
    "confidence",
    "weight",
    "embedding",
];

/// Whose Cypher: the two differ in schema statements and vector values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Neo4j,
    FalkorDb,
}

/// A label or relationship type that is safe to put into a query (see [`Name::label`],
/// [`Name::relationship_type`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// A node label from an entity type: kept when it is an identifier, else words of ASCII
    /// letters and digits (split on spaces, `-`, `.`, `/`, `_`) joined in PascalCase
    /// (`space craft` → `SpaceCraft`); anything else is an error.
    pub fn label(raw: &str) -> Result<Name, String> {
        let name = normalise(raw, "type", |words| {
            words
                .iter()
                .map(|w| {
                    let mut chars = w.chars();
                    match chars.next() {
                        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                        None => String::new(),
                    }
                })
                .collect()
        })?;
        if name == CHUNK_LABEL {
            return Err(format!(
                "type `{CHUNK_LABEL}` is reserved for chunk nodes (rename the entity type)"
            ));
        }
        Ok(Name(name))
    }

    /// A relationship type, upper-cased as Cypher's convention has it (`commands` →
    /// `COMMANDS`), words joined with `_` (`works for` → `WORKS_FOR`); anything else is an
    /// error.
    pub fn relationship_type(raw: &str) -> Result<Name, String> {
        normalise(raw, "relation type", |words| {
            words
                .iter()
                .map(|w| w.to_ascii_uppercase())
                .collect::<Vec<_>>()
                .join("_")
        })
        .map(|name| Name(name.to_ascii_uppercase()))
    }

    /// A built-in name (trusted, still validated).
    fn fixed(name: &str) -> Name {
        debug_assert!(is_identifier(name));
        Name(name.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// In backticks, backticks doubled: safe in any label or type position even if the
    /// validation above were ever loosened.
    pub fn escaped(&self) -> String {
        format!("`{}`", self.0.replace('`', "``"))
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// For messages: the start of a hostile or huge name, quoted and escaped.
fn preview(raw: &str) -> String {
    let short: String = raw.chars().take(40).collect();
    if short.len() < raw.len() {
        format!("{short:?}… ({} bytes)", raw.len())
    } else {
        format!("{short:?}")
    }
}

fn normalise(raw: &str, what: &str, join: impl Fn(&[&str]) -> String) -> Result<String, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if trimmed.len() > MAX_NAME_LEN {
        return Err(format!(
            "{what} {} is longer than {MAX_NAME_LEN} bytes",
            preview(raw)
        ));
    }
    if is_identifier(trimmed) {
        return Ok(trimmed.to_string());
    }
    let words: Vec<&str> = trimmed
        .split([' ', '-', '.', '/', '_'])
        .filter(|w| !w.is_empty())
        .collect();
    let joined = join(&words);
    if !words.is_empty()
        && words
            .iter()
            .all(|w| w.chars().all(|c| c.is_ascii_alphanumeric()))
        && is_identifier(&joined)
    {
        return Ok(joined);
    }
    Err(format!(
        "{what} {} cannot be a label: only ASCII letters, digits and `_` (words separated by \
         spaces or `-` are joined), not starting with a digit",
        preview(raw)
    ))
}

/// One query and its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    pub cypher: String,
    pub params: Map<String, Value>,
}

impl Statement {
    fn new(cypher: String, params: Map<String, Value>) -> Statement {
        Statement { cypher, params }
    }

    fn with_rows(cypher: String, rows: Vec<Value>) -> Statement {
        let mut params = Map::new();
        params.insert("rows".into(), Value::Array(rows));
        Statement::new(cypher, params)
    }

    pub fn into_pair(self) -> (String, Map<String, Value>) {
        (self.cypher, self.params)
    }
}

/// How writes are shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    /// Link each entity to `Chunk` nodes of the chunks that mention it (`MENTIONS` edges).
    pub chunk_mentions: bool,
    /// Most rows in one UNWIND statement (a label with more rows gets several statements).
    pub rows_per_statement: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            chunk_mentions: false,
            rows_per_statement: 1000,
        }
    }
}

/// An ordered set of strings (first-seen order), for list properties.
#[derive(Clone, Debug, Default, PartialEq)]
struct StringSet(Vec<String>);

impl StringSet {
    fn insert(&mut self, value: &str) {
        if !value.is_empty() && !self.0.iter().any(|v| v == value) {
            self.0.push(value.to_string());
        }
    }

    fn extend<'a>(&mut self, values: impl IntoIterator<Item = &'a str>) {
        for value in values {
            self.insert(value);
        }
    }

    fn to_json(&self) -> Value {
        Value::Array(self.0.iter().cloned().map(Value::String).collect())
    }
}

/// Where a fact was read, as list properties.
#[derive(Clone, Debug, Default, PartialEq)]
struct Provenances {
    chunk_ids: StringSet,
    document_ids: StringSet,
    source_paths: StringSet,
    extractors: StringSet,
}

impl Provenances {
    fn of(mentions: &[Mention], record: &Provenance, extractor: &str) -> Provenances {
        let mut p = Provenances::default();
        for mention in mentions {
            p.chunk_ids.insert(&mention.chunk_id);
            p.document_ids.insert(&mention.document_id);
            if let Some(path) = &mention.source_path {
                p.source_paths.insert(path);
            }
        }
        if mentions.is_empty() {
            p.document_ids.insert(&record.document_id);
            if let Some(path) = &record.source_path {
                p.source_paths.insert(path);
            }
        }
        p.extractors.insert(extractor);
        p
    }

    fn merge(&mut self, other: &Provenances) {
        self.chunk_ids
            .extend(other.chunk_ids.0.iter().map(String::as_str));
        self.document_ids
            .extend(other.document_ids.0.iter().map(String::as_str));
        self.source_paths
            .extend(other.source_paths.0.iter().map(String::as_str));
        self.extractors
            .extend(other.extractors.0.iter().map(String::as_str));
    }

    fn write_into(&self, row: &mut Map<String, Value>) {
        row.insert("chunk_ids".into(), self.chunk_ids.to_json());
        row.insert("document_ids".into(), self.document_ids.to_json());
        row.insert("source_paths".into(), self.source_paths.to_json());
        row.insert("extractors".into(), self.extractors.to_json());
    }
}

fn max_confidence(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn json_number(f: Option<f64>) -> Value {
    f.and_then(serde_json::Number::from_f64)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

#[derive(Clone, Debug)]
struct EntityRow {
    id: String,
    name: String,
    label: Name,
    aliases: StringSet,
    descriptions: StringSet,
    provenance: Provenances,
    confidence: Option<f64>,
    properties: Map<String, Value>,
}

impl EntityRow {
    fn merge(&mut self, other: EntityRow) {
        // The later fragment names the entity (as a later MERGE would).
        self.name = other.name;
        self.aliases
            .extend(other.aliases.0.iter().map(String::as_str));
        self.descriptions
            .extend(other.descriptions.0.iter().map(String::as_str));
        self.provenance.merge(&other.provenance);
        self.confidence = max_confidence(self.confidence, other.confidence);
        self.properties.extend(other.properties);
    }

    fn to_json(&self) -> Value {
        let mut row = Map::new();
        row.insert("id".into(), json!(self.id));
        row.insert("name".into(), json!(self.name));
        row.insert("type".into(), json!(self.label.as_str()));
        row.insert("aliases".into(), self.aliases.to_json());
        row.insert("descriptions".into(), self.descriptions.to_json());
        self.provenance.write_into(&mut row);
        row.insert("confidence".into(), json_number(self.confidence));
        row.insert("properties".into(), Value::Object(self.properties.clone()));
        Value::Object(row)
    }
}

#[derive(Clone, Debug)]
struct RelationRow {
    id: String,
    source: String,
    target: String,
    descriptions: StringSet,
    provenance: Provenances,
    weight: f64,
    confidence: Option<f64>,
    properties: Map<String, Value>,
}

impl RelationRow {
    fn merge(&mut self, other: RelationRow) {
        self.descriptions
            .extend(other.descriptions.0.iter().map(String::as_str));
        self.provenance.merge(&other.provenance);
        self.weight = self.weight.max(other.weight);
        self.confidence = max_confidence(self.confidence, other.confidence);
        self.properties.extend(other.properties);
    }

    fn to_json(&self) -> Value {
        let mut row = Map::new();
        row.insert("id".into(), json!(self.id));
        row.insert("source".into(), json!(self.source));
        row.insert("target".into(), json!(self.target));
        row.insert("descriptions".into(), self.descriptions.to_json());
        self.provenance.write_into(&mut row);
        row.insert("weight".into(), json_number(Some(self.weight)));
        row.insert("confidence".into(), json_number(self.confidence));
        row.insert("properties".into(), Value::Object(self.properties.clone()));
        Value::Object(row)
    }
}

/// Model-provided properties as a store can hold them: scalars and lists of one scalar type
/// stay; anything nested becomes its JSON text; nulls are left out; keys the sink owns become
/// `prop_<key>`; backticks and NULs in keys become `_`.
fn storable_properties(properties: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in properties {
        let mut key = key.replace(['`', '\0'], "_");
        if key.is_empty() {
            key = "_".into();
        }
        if RESERVED.contains(&key.as_str()) {
            key = format!("prop_{key}");
        }
        let value = match value {
            Value::Null => continue,
            Value::Bool(_) | Value::Number(_) | Value::String(_) => value.clone(),
            Value::Array(items) if homogeneous_scalars(items) => value.clone(),
            Value::Array(_) | Value::Object(_) => Value::String(value.to_string()),
        };
        out.insert(key, value);
    }
    out
}

fn homogeneous_scalars(items: &[Value]) -> bool {
    let kind = |v: &Value| match v {
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        _ => 0,
    };
    match items.first() {
        None => true,
        Some(first) => kind(first) != 0 && items.iter().all(|v| kind(v) == kind(first)),
    }
}

/// A string FalkorDB cannot take (it has no escape for NUL).
fn find_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(find_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || find_nul(v)),
        _ => false,
    }
}

/// The rows of one write batch, grouped per label / relationship type, with rows for the same
/// id merged (so a statement never touches one node twice).
#[derive(Debug)]
pub struct GraphWrite {
    dialect: Dialect,
    entities: BTreeMap<Name, BTreeMap<String, EntityRow>>,
    /// Entity id → the label its row is filed under.
    entity_labels: BTreeMap<String, Name>,
    relations: BTreeMap<Name, BTreeMap<String, RelationRow>>,
    chunks: BTreeMap<String, Value>,
}

/// Rows in a [`GraphWrite`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowCounts {
    pub entities: usize,
    pub relations: usize,
    pub chunks: usize,
}

impl GraphWrite {
    pub fn new(dialect: Dialect) -> GraphWrite {
        GraphWrite {
            dialect,
            entities: BTreeMap::new(),
            entity_labels: BTreeMap::new(),
            relations: BTreeMap::new(),
            chunks: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entities.is_empty() && self.relations.is_empty() && self.chunks.is_empty()
    }

    pub fn counts(&self) -> RowCounts {
        RowCounts {
            entities: self.entities.values().map(BTreeMap::len).sum(),
            relations: self.relations.values().map(BTreeMap::len).sum(),
            chunks: self.chunks.len(),
        }
    }

    /// Adds a normalised graph fragment, or nothing: every entity and relation is checked
    /// first, and one bad label or id rejects the whole record (with the reason).
    pub fn add_graph(&mut self, graph: &Graph, provenance: &Provenance) -> Result<(), String> {
        let entities = graph
            .entities
            .iter()
            .map(|e| self.entity_row(e, provenance, &graph.extractor))
            .collect::<Result<Vec<_>, _>>()?;
        let relations = graph
            .relations
            .iter()
            .map(|r| {
                self.relation_row(r, provenance, &graph.extractor)
                    .map(|row| (row, r))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let relations = relations
            .into_iter()
            .map(|(row, r)| Name::relationship_type(&r.relation_type).map(|t| (t, row)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("relation: {e}"))?;
        for row in entities {
            let label = self
                .entity_labels
                .entry(row.id.clone())
                .or_insert_with(|| row.label.clone())
                .clone();
            let rows = self.entities.entry(label).or_default();
            match rows.get_mut(&row.id) {
                Some(existing) => existing.merge(row),
                None => {
                    rows.insert(row.id.clone(), row);
                }
            }
        }
        for (relation_type, row) in relations {
            let rows = self.relations.entry(relation_type).or_default();
            match rows.get_mut(&row.id) {
                Some(existing) => existing.merge(row),
                None => {
                    rows.insert(row.id.clone(), row);
                }
            }
        }
        Ok(())
    }

    fn entity_row(
        &self,
        entity: &Entity,
        provenance: &Provenance,
        extractor: &str,
    ) -> Result<EntityRow, String> {
        let who = preview(&entity.name);
        if entity.id.trim().is_empty() {
            return Err(format!(
                "entity {who} has no id: graph stores take normalised graphs (put `normalize` \
                 before the sink)"
            ));
        }
        let label = Name::label(&entity.entity_type).map_err(|e| format!("entity {who}: {e}"))?;
        let mut aliases = StringSet::default();
        aliases.extend(entity.aliases.iter().map(String::as_str));
        let mut descriptions = StringSet::default();
        descriptions.extend(entity.descriptions.iter().map(String::as_str));
        let row = EntityRow {
            id: entity.id.clone(),
            name: entity.name.clone(),
            label,
            aliases,
            descriptions,
            provenance: Provenances::of(&entity.mentions, provenance, extractor),
            confidence: entity.confidence.filter(|c| c.is_finite()),
            properties: storable_properties(&entity.properties),
        };
        if self.dialect == Dialect::FalkorDb && find_nul(&row.to_json()) {
            return Err(format!(
                "entity {who} holds a NUL character, which FalkorDB cannot store"
            ));
        }
        Ok(row)
    }

    fn relation_row(
        &self,
        relation: &Relation,
        provenance: &Provenance,
        extractor: &str,
    ) -> Result<RelationRow, String> {
        let who = format!(
            "{} -[{}]-> {}",
            preview(&relation.source),
            preview(&relation.relation_type),
            preview(&relation.target)
        );
        if relation.id.trim().is_empty()
            || relation.source.trim().is_empty()
            || relation.target.trim().is_empty()
        {
            return Err(format!(
                "relation {who} lacks an id or an end: graph stores take normalised graphs (put \
                 `normalize` before the sink)"
            ));
        }
        let mut descriptions = StringSet::default();
        descriptions.extend(relation.descriptions.iter().map(String::as_str));
        let row = RelationRow {
            id: relation.id.clone(),
            source: relation.source.clone(),
            target: relation.target.clone(),
            descriptions,
            provenance: Provenances::of(&relation.mentions, provenance, extractor),
            weight: if relation.weight.is_finite() {
                relation.weight
            } else {
                1.0
            },
            confidence: relation.confidence.filter(|c| c.is_finite()),
            properties: storable_properties(&relation.properties),
        };
        if self.dialect == Dialect::FalkorDb && find_nul(&row.to_json()) {
            return Err(format!(
                "relation {who} holds a NUL character, which FalkorDB cannot store"
            ));
        }
        Ok(row)
    }

    /// Adds a chunk node from an embedded chunk (`id` = the chunk record's id).
    /// `dimensions`: the vector index's size, when there is one (a vector of another size is
    /// an error, not a silently unindexed node).
    pub fn add_chunk(
        &mut self,
        id: &str,
        embedded: &Embedded,
        provenance: &Provenance,
        dimensions: Option<usize>,
    ) -> Result<(), String> {
        if let Some(dimensions) = dimensions
            && embedded.vector.len() != dimensions
        {
            return Err(format!(
                "embedding has {} dimensions, the chunk vector index {dimensions}",
                embedded.vector.len()
            ));
        }
        if embedded.vector.iter().any(|x| !x.is_finite()) {
            return Err("embedding holds a non-finite number".into());
        }
        let row = json!({
            "id": id,
            "text": embedded.text,
            "context": embedded.context,
            "document_id": provenance.document_id,
            "source_path": provenance.source_path,
            "chunk_index": provenance.chunk_index,
            "char_span": provenance.char_span,
            "model": embedded.model,
            "embedding": embedded.vector,
        });
        if self.dialect == Dialect::FalkorDb && find_nul(&row) {
            return Err("chunk text holds a NUL character, which FalkorDB cannot store".into());
        }
        self.chunks.insert(id.to_string(), row);
        Ok(())
    }

    /// The write as statements: chunk nodes, then entities (one statement per label), then
    /// relationships (one per type); each at most `rows_per_statement` rows.
    pub fn statements(&self, options: &WriteOptions) -> Vec<Statement> {
        let per = options.rows_per_statement.max(1);
        let mut out = Vec::new();
        let chunk_rows: Vec<Value> = self.chunks.values().cloned().collect();
        for rows in chunk_rows.chunks(per) {
            out.push(Statement::with_rows(
                chunk_cypher(self.dialect),
                rows.to_vec(),
            ));
        }
        for (label, rows) in &self.entities {
            let ids: Vec<Value> = rows.keys().map(|id| json!({ "id": id })).collect();
            let rows: Vec<Value> = rows.values().map(EntityRow::to_json).collect();
            let label_cypher = entity_label_cypher(label);
            let cypher = entity_cypher(label, options.chunk_mentions);
            for (ids, part) in ids.chunks(per).zip(rows.chunks(per)) {
                out.push(Statement::with_rows(label_cypher.clone(), ids.to_vec()));
                out.push(Statement::with_rows(cypher.clone(), part.to_vec()));
            }
        }
        for (relation_type, rows) in &self.relations {
            let rows: Vec<Value> = rows.values().map(RelationRow::to_json).collect();
            let cypher = relation_cypher(relation_type);
            for part in rows.chunks(per) {
                out.push(Statement::with_rows(cypher.clone(), part.to_vec()));
            }
        }
        out
    }
}

/// List properties merged as set-unions: `(stored + new values not yet stored)`.
const ENTITY_LISTS: [&str; 6] = [
    "aliases",
    "descriptions",
    "chunk_ids",
    "document_ids",
    "source_paths",
    "extractors",
];
const RELATION_LISTS: [&str; 5] = [
    "descriptions",
    "chunk_ids",
    "document_ids",
    "source_paths",
    "extractors",
];

/// `coalesce(n.x, []) AS old_x, …`: stored lists read before anything is set (FalkorDB
/// evaluates a SET against the values the query started with).
fn old_lists(var: &str, lists: &[&str]) -> String {
    lists
        .iter()
        .map(|l| format!("coalesce({var}.{l}, []) AS old_{l}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn union(list: &str) -> String {
    format!("old_{list} + [x IN row.{list} WHERE NOT x IN old_{list}]")
}

/// Keeps the larger of the stored and the new value (idempotent; a null never wins).
fn keep_max(var: &str, property: &str) -> String {
    format!(
        "CASE WHEN row.{property} IS NULL THEN {var}.{property} \
         WHEN {var}.{property} IS NULL OR row.{property} > {var}.{property} THEN row.{property} \
         ELSE {var}.{property} END"
    )
}

/// Before [`entity_cypher`]: the type label on entity nodes stored without it (a relation's
/// end written before its entity). Setting a label on a stored node is slow on FalkorDB (its
/// cost grew with the graph: 10 ms per 900 nodes at first, 40 ms at 4,500), where creating
/// the node with the label costs next to nothing; so only the nodes that lack it get it here.
pub fn entity_label_cypher(label: &Name) -> String {
    format!(
        "UNWIND $rows AS row\n\
         MATCH (n:{entity} {{id: row.id}})\n\
         WHERE NOT n:{label}\n\
         SET n:{label}",
        entity = Name::fixed(ENTITY_LABEL).escaped(),
        label = label.escaped(),
    )
}

/// Entity nodes with one type label, created with it: after [`entity_label_cypher`], every
/// stored node of these ids has the label, so the MERGE on both labels finds it.
pub fn entity_cypher(label: &Name, chunk_mentions: bool) -> String {
    let entity = Name::fixed(ENTITY_LABEL).escaped();
    let mut sets = vec![
        "n += row.properties".to_string(),
        "n.name = row.name".to_string(),
        "n.type = row.type".to_string(),
    ];
    sets.extend(ENTITY_LISTS.iter().map(|l| format!("n.{l} = {}", union(l))));
    sets.push(format!("n.confidence = {}", keep_max("n", "confidence")));
    let mut cypher = format!(
        "UNWIND $rows AS row\n\
         MERGE (n:{entity}:{label} {{id: row.id}})\n\
         WITH n, row, {olds}\n\
         SET {sets}",
        label = label.escaped(),
        olds = old_lists("n", &ENTITY_LISTS),
        sets = sets.join(",\n    "),
    );
    if chunk_mentions {
        cypher.push_str(&format!(
            "\nWITH n, row\n\
             UNWIND row.chunk_ids AS chunk_id\n\
             MERGE (c:{chunk} {{id: chunk_id}})\n\
             MERGE (c)-[:{mentions}]->(n)",
            chunk = Name::fixed(CHUNK_LABEL).escaped(),
            mentions = Name::fixed(MENTIONS).escaped(),
        ));
    }
    cypher
}

/// Relationships of one type. Their ends are MERGEd on `Entity {id}`, so a relation whose
/// entity arrives in a later batch is not lost: the node is created with its id and filled
/// in when the entity's row is written.
pub fn relation_cypher(relation_type: &Name) -> String {
    let entity = Name::fixed(ENTITY_LABEL).escaped();
    let merged: Vec<String> = RELATION_LISTS
        .iter()
        .map(|l| format!("{} AS {l}", union(l)))
        .collect();
    let mut sets = vec!["r += row.properties".to_string()];
    sets.extend(RELATION_LISTS.iter().map(|l| format!("r.{l} = {l}")));
    sets.push(
        "r.weight = CASE WHEN size(chunk_ids) > 0 THEN toFloat(size(chunk_ids)) \
         WHEN r.weight IS NULL OR row.weight > r.weight THEN row.weight ELSE r.weight END"
            .to_string(),
    );
    sets.push(format!("r.confidence = {}", keep_max("r", "confidence")));
    format!(
        "UNWIND $rows AS row\n\
         MERGE (s:{entity} {{id: row.source}})\n\
         MERGE (t:{entity} {{id: row.target}})\n\
         MERGE (s)-[r:{rel} {{id: row.id}}]->(t)\n\
         WITH r, row, {olds}\n\
         WITH r, row, {merged}\n\
         SET {sets}",
        rel = relation_type.escaped(),
        olds = old_lists("r", &RELATION_LISTS),
        merged = merged.join(", "),
        sets = sets.join(",\n    "),
    )
}

/// Chunk nodes with their text, provenance and embedding.
pub fn chunk_cypher(dialect: Dialect) -> String {
    let embedding = match dialect {
        // FalkorDB indexes only its own float32 vector type.
        Dialect::FalkorDb => "vecf32(row.embedding)",
        Dialect::Neo4j => "row.embedding",
    };
    format!(
        "UNWIND $rows AS row\n\
         MERGE (c:{chunk} {{id: row.id}})\n\
         SET c.text = row.text, c.context = row.context, c.document_id = row.document_id,\n    \
         c.source_path = row.source_path, c.chunk_index = row.chunk_index,\n    \
         c.char_span = row.char_span, c.model = row.model, c.embedding = {embedding}",
        chunk = Name::fixed(CHUNK_LABEL).escaped(),
    )
}

/// What the schema should hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchemaOptions {
    /// Chunk nodes are written: unique `Chunk.id` too.
    pub chunks: bool,
    /// Size of the chunk embeddings, for a vector index (cosine).
    pub vector_dimensions: Option<usize>,
}

/// One schema step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemaStep {
    /// A Cypher statement (Neo4j: `IF NOT EXISTS`; FalkorDB: "already indexed" is success).
    Cypher(String),
    /// FalkorDB's unique constraint is a command of its own (`GRAPH.CONSTRAINT CREATE`).
    UniqueConstraint { label: Name, property: String },
}

/// Constraints and indexes, created before any record moves.
pub fn schema(dialect: Dialect, options: &SchemaOptions) -> Vec<SchemaStep> {
    let entity = Name::fixed(ENTITY_LABEL);
    let chunk = Name::fixed(CHUNK_LABEL);
    let mut steps = Vec::new();
    match dialect {
        Dialect::Neo4j => {
            steps.push(SchemaStep::Cypher(format!(
                "CREATE CONSTRAINT pipe_entity_id IF NOT EXISTS FOR (n:{}) REQUIRE n.id IS UNIQUE",
                entity.escaped()
            )));
            steps.push(SchemaStep::Cypher(format!(
                "CREATE INDEX pipe_entity_name IF NOT EXISTS FOR (n:{}) ON (n.name)",
                entity.escaped()
            )));
            if options.chunks {
                steps.push(SchemaStep::Cypher(format!(
                    "CREATE CONSTRAINT pipe_chunk_id IF NOT EXISTS FOR (n:{}) REQUIRE n.id IS UNIQUE",
                    chunk.escaped()
                )));
                if let Some(dimensions) = options.vector_dimensions {
                    steps.push(SchemaStep::Cypher(format!(
                        "CREATE VECTOR INDEX pipe_chunk_embedding IF NOT EXISTS FOR (n:{}) ON \
                         (n.embedding) OPTIONS {{indexConfig: {{`vector.dimensions`: {dimensions}, \
                         `vector.similarity_function`: 'cosine'}}}}",
                        chunk.escaped()
                    )));
                }
            }
        }
        Dialect::FalkorDb => {
            steps.push(SchemaStep::Cypher(format!(
                "CREATE INDEX FOR (n:{}) ON (n.id)",
                entity.escaped()
            )));
            steps.push(SchemaStep::UniqueConstraint {
                label: entity.clone(),
                property: "id".into(),
            });
            steps.push(SchemaStep::Cypher(format!(
                "CREATE INDEX FOR (n:{}) ON (n.name)",
                entity.escaped()
            )));
            if options.chunks {
                steps.push(SchemaStep::Cypher(format!(
                    "CREATE INDEX FOR (n:{}) ON (n.id)",
                    chunk.escaped()
                )));
                steps.push(SchemaStep::UniqueConstraint {
                    label: chunk.clone(),
                    property: "id".into(),
                });
                if let Some(dimensions) = options.vector_dimensions {
                    steps.push(SchemaStep::Cypher(format!(
                        "CREATE VECTOR INDEX FOR (n:{}) ON (n.embedding) OPTIONS \
                         {{dimension: {dimensions}, similarityFunction: 'cosine'}}",
                        chunk.escaped()
                    )));
                }
            }
        }
    }
    steps
}

/// Read queries (`pipe search`, `pipe graph export`); the same text for both dialects.
pub mod read {
    use super::*;

    fn params(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// Entities with a mention in any of the chunks: one `entity` column of properties.
    pub fn entities_in_chunks(chunk_ids: &[String]) -> Statement {
        Statement::new(
            format!(
                "MATCH (n:{}) WHERE any(c IN n.chunk_ids WHERE c IN $chunk_ids)\n\
                 RETURN properties(n) AS entity ORDER BY n.id",
                Name::fixed(ENTITY_LABEL).escaped()
            ),
            params(&[("chunk_ids", json!(chunk_ids))]),
        )
    }

    /// Relations leaving (`outgoing`) or entering the entities, strongest first.
    pub fn facts(entity_ids: &[String], outgoing: bool, limit: usize) -> Statement {
        let entity = Name::fixed(ENTITY_LABEL).escaped();
        let (s, t) = if outgoing {
            (
                format!("(s:{entity} {{id: entity_id}})"),
                format!("(t:{entity})"),
            )
        } else {
            (
                format!("(s:{entity})"),
                format!("(t:{entity} {{id: entity_id}})"),
            )
        };
        Statement::new(
            format!(
                "UNWIND $ids AS entity_id\n\
                 MATCH {s}-[r]->{t}\n\
                 RETURN r.id AS id, s.id AS source_id, s.name AS source, s.type AS source_type,\n    \
                 type(r) AS relation, t.id AS target_id, t.name AS target, t.type AS target_type,\n    \
                 r.weight AS weight\n\
                 ORDER BY weight DESC, id LIMIT $limit"
            ),
            params(&[("ids", json!(entity_ids)), ("limit", json!(limit))]),
        )
    }

    /// A page of entities after id `after` (keyset paging), in id order.
    pub fn entities_page(after: &str, page: usize) -> Statement {
        Statement::new(
            format!(
                "MATCH (n:{}) WHERE n.id > $after\n\
                 RETURN properties(n) AS entity ORDER BY n.id LIMIT $page",
                Name::fixed(ENTITY_LABEL).escaped()
            ),
            params(&[("after", json!(after)), ("page", json!(page))]),
        )
    }

    /// A page of relations between entities after relation id `after`, in id order.
    pub fn relations_page(after: &str, page: usize) -> Statement {
        let entity = Name::fixed(ENTITY_LABEL).escaped();
        Statement::new(
            format!(
                "MATCH (s:{entity})-[r]->(t:{entity}) WHERE r.id > $after\n\
                 RETURN r.id AS id, type(r) AS type, s.id AS source, t.id AS target,\n    \
                 properties(r) AS relation ORDER BY r.id LIMIT $page"
            ),
            params(&[("after", json!(after)), ("page", json!(page))]),
        )
    }
}

/// A stored entity node's properties back as an [`Entity`] (mentions from `chunk_ids`; the
/// document is known per mention only when the entity has one document).
pub fn entity_from_properties(mut props: Map<String, Value>) -> Entity {
    let strings = |v: Option<Value>| -> Vec<String> {
        match v {
            Some(Value::Array(items)) => items
                .into_iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    };
    let string = |v: Option<Value>| v.and_then(|v| v.as_str().map(str::to_string));
    let id = string(props.remove("id")).unwrap_or_default();
    let name = string(props.remove("name")).unwrap_or_default();
    let entity_type = string(props.remove("type")).unwrap_or_default();
    let aliases = strings(props.remove("aliases"));
    let descriptions = strings(props.remove("descriptions"));
    let chunk_ids = strings(props.remove("chunk_ids"));
    let document_ids = strings(props.remove("document_ids"));
    let source_paths = strings(props.remove("source_paths"));
    props.remove("extractors");
    let confidence = props.remove("confidence").and_then(|v| v.as_f64());
    let single = |list: &[String]| (list.len() == 1).then(|| list[0].clone());
    let mentions = chunk_ids
        .into_iter()
        .map(|chunk_id| Mention {
            document_id: single(&document_ids).unwrap_or_default(),
            chunk_id,
            source_path: single(&source_paths),
            char_span: None,
        })
        .collect();
    Entity {
        id,
        name,
        entity_type,
        aliases,
        descriptions,
        properties: props,
        confidence,
        mentions,
    }
}

/// A stored relationship back as a [`Relation`] (columns `id`, `type`, `source`, `target`,
/// `relation` = its properties).
pub fn relation_from_row(row: &mut Map<String, Value>) -> Relation {
    let mut take = |key: &str| match row.remove(key) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    let id = take("id");
    let relation_type = take("type");
    let source = take("source");
    let target = take("target");
    let mut props = match row.remove("relation") {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let weight = props
        .remove("weight")
        .and_then(|v| v.as_f64())
        .unwrap_or(1.0);
    // The list and confidence properties read like an entity's.
    let fields = entity_from_properties(props);
    Relation {
        id,
        source,
        target,
        relation_type,
        descriptions: fields.descriptions,
        properties: fields.properties,
        confidence: fields.confidence,
        weight,
        mentions: fields.mentions,
    }
}

#[cfg(test)]
mod tests;
