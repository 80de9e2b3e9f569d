//! The knowledge-graph schema written in YAML (entity types, relation patterns, strict or
//! open), and what it becomes: the instructions at the head of every prompt and the JSON
//! Schema of the answer (sent as structured output, and checked on arrival).

use pipeline::ConfigIssue;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// What to extract.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GraphSchema {
    /// `true` (default): only these types — the answer's entity and relation `type` is one of
    /// them, and a relation whose (source type, relation, target type) matches no pattern is
    /// dropped (counted as `relations_off_schema`). `false`: the types are suggestions; the
    /// model may name others.
    #[serde(default = "strict_default")]
    pub strict: bool,
    /// Entity types. A list of names (`[Person, Spacecraft]`), a list of
    /// `{name, description, properties}`, or a map `Person: "description"` /
    /// `Spacecraft: { description: ..., properties: { callsign: "its radio name" } }`.
    pub entities: EntityTypes,
    /// Relation types as (source type, relation, target type) patterns:
    /// `"Person OPERATES Spacecraft"`, `[Person, OPERATES, Spacecraft]`, or
    /// `{ source: Person, type: OPERATES, target: Spacecraft, description: ... }`.
    #[serde(default)]
    pub relations: Vec<RelationPatternSpec>,
}

fn strict_default() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EntityTypes {
    Names(Vec<EntityTypeItem>),
    Map(BTreeMap<String, EntityTypeSpec>),
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EntityTypeItem {
    Name(String),
    Full {
        name: String,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        properties: BTreeMap<String, String>,
    },
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EntityTypeSpec {
    Description(String),
    Full {
        #[serde(default)]
        description: Option<String>,
        /// Property name -> what it holds.
        #[serde(default)]
        properties: BTreeMap<String, String>,
    },
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RelationPatternSpec {
    Text(String),
    Triple(Vec<String>),
    Full {
        source: String,
        #[serde(rename = "type")]
        relation: String,
        target: String,
        #[serde(default)]
        description: Option<String>,
    },
}

/// One entity type, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct EntityType {
    pub name: String,
    pub description: Option<String>,
    pub properties: BTreeMap<String, String>,
}

/// One relation pattern, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct RelationPattern {
    pub source: String,
    pub relation: String,
    pub target: String,
    pub description: Option<String>,
}

/// The schema after checks: what the stage works with.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub strict: bool,
    pub entity_types: Vec<EntityType>,
    pub patterns: Vec<RelationPattern>,
}

fn type_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl GraphSchema {
    /// Resolves the YAML forms, or lists what is wrong (fields relative to `schema`).
    pub fn resolve(&self) -> Result<Resolved, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let entity_types: Vec<EntityType> = match &self.entities {
            EntityTypes::Names(items) => items
                .iter()
                .map(|item| match item {
                    EntityTypeItem::Name(name) => EntityType {
                        name: name.trim().to_string(),
                        description: None,
                        properties: BTreeMap::new(),
                    },
                    EntityTypeItem::Full {
                        name,
                        description,
                        properties,
                    } => EntityType {
                        name: name.trim().to_string(),
                        description: description.clone(),
                        properties: properties.clone(),
                    },
                })
                .collect(),
            EntityTypes::Map(map) => map
                .iter()
                .map(|(name, spec)| match spec {
                    EntityTypeSpec::Description(d) => EntityType {
                        name: name.trim().to_string(),
                        description: Some(d.clone()),
                        properties: BTreeMap::new(),
                    },
                    EntityTypeSpec::Full {
                        description,
                        properties,
                    } => EntityType {
                        name: name.trim().to_string(),
                        description: description.clone(),
                        properties: properties.clone(),
                    },
                })
                .collect(),
        };
        if entity_types.is_empty() {
            issues.push(ConfigIssue::new(
                "schema.entities",
                "needs at least one entity type",
            ));
        }
        let mut seen = BTreeSet::new();
        for t in &entity_types {
            // Types become node labels: the same rule the graph stores apply.
            if !type_name_ok(&t.name) {
                issues.push(ConfigIssue::new(
                    format!("schema.entities.{}", t.name),
                    "an entity type must match ^[A-Za-z_][A-Za-z0-9_]*$ (it becomes a node label)",
                ));
            }
            if !seen.insert(t.name.to_lowercase()) {
                issues.push(ConfigIssue::new(
                    format!("schema.entities.{}", t.name),
                    "is listed twice",
                ));
            }
            for property in t.properties.keys() {
                if !type_name_ok(property) {
                    issues.push(ConfigIssue::new(
                        format!("schema.entities.{}.properties.{property}", t.name),
                        "a property name must match ^[A-Za-z_][A-Za-z0-9_]*$",
                    ));
                }
                if matches!(
                    property.as_str(),
                    "name" | "type" | "description" | "confidence"
                ) {
                    issues.push(ConfigIssue::new(
                        format!("schema.entities.{}.properties.{property}", t.name),
                        "is a built-in field of every entity; pick another name",
                    ));
                }
            }
        }
        let mut patterns = Vec::new();
        for (i, spec) in self.relations.iter().enumerate() {
            let field = format!("schema.relations[{i}]");
            let pattern = match spec {
                RelationPatternSpec::Text(text) => {
                    let parts: Vec<&str> = text.split_whitespace().collect();
                    if parts.len() != 3 {
                        issues.push(ConfigIssue::new(
                            field,
                            format!(
                                "`{text}` is not `SourceType RELATION TargetType` (three words)"
                            ),
                        ));
                        continue;
                    }
                    RelationPattern {
                        source: parts[0].into(),
                        relation: parts[1].into(),
                        target: parts[2].into(),
                        description: None,
                    }
                }
                RelationPatternSpec::Triple(parts) => {
                    if parts.len() != 3 {
                        issues.push(ConfigIssue::new(
                            field,
                            format!(
                                "has {} items; a pattern is [source type, relation, target type]",
                                parts.len()
                            ),
                        ));
                        continue;
                    }
                    RelationPattern {
                        source: parts[0].trim().into(),
                        relation: parts[1].trim().into(),
                        target: parts[2].trim().into(),
                        description: None,
                    }
                }
                RelationPatternSpec::Full {
                    source,
                    relation,
                    target,
                    description,
                } => RelationPattern {
                    source: source.trim().into(),
                    relation: relation.trim().into(),
                    target: target.trim().into(),
                    description: description.clone(),
                },
            };
            if !type_name_ok(&pattern.relation) {
                issues.push(ConfigIssue::new(
                    format!("{field}.type"),
                    format!(
                        "`{}`: a relation type must match ^[A-Za-z_][A-Za-z0-9_]*$ (it becomes \
                         a relationship type)",
                        pattern.relation
                    ),
                ));
            }
            for (end, name) in [("source", &pattern.source), ("target", &pattern.target)] {
                if !entity_types.iter().any(|t| &t.name == name) {
                    issues.push(ConfigIssue::new(
                        format!("{field}.{end}"),
                        format!("`{name}` is not one of the entity types"),
                    ));
                }
            }
            patterns.push(pattern);
        }
        if issues.is_empty() {
            Ok(Resolved {
                strict: self.strict,
                entity_types,
                patterns,
            })
        } else {
            Err(issues)
        }
    }
}

impl Resolved {
    /// Relation type names, each once, in pattern order.
    pub fn relation_types(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in &self.patterns {
            if !out.contains(&p.relation) {
                out.push(p.relation.clone());
            }
        }
        out
    }

    /// Every declared property, with the types that declare it.
    pub fn properties(&self) -> BTreeMap<String, Vec<(String, String)>> {
        let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for t in &self.entity_types {
            for (name, what) in &t.properties {
                out.entry(name.clone())
                    .or_default()
                    .push((t.name.clone(), what.clone()));
            }
        }
        out
    }

    /// The schema's type for `name` (case-insensitive), as the schema spells it.
    pub fn entity_type(&self, name: &str) -> Option<&EntityType> {
        self.entity_types
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name.trim()))
    }

    /// Whether (source type, relation, target type) is one of the patterns.
    pub fn allows(&self, source: &str, relation: &str, target: &str) -> bool {
        self.patterns.iter().any(|p| {
            p.source.eq_ignore_ascii_case(source)
                && p.relation.eq_ignore_ascii_case(relation)
                && p.target.eq_ignore_ascii_case(target)
        })
    }

    /// The relation type as the schema spells it.
    pub fn relation_type(&self, name: &str) -> Option<&str> {
        self.patterns
            .iter()
            .find(|p| p.relation.eq_ignore_ascii_case(name.trim()))
            .map(|p| p.relation.as_str())
    }

    /// The part of the system prompt that describes the schema (stable for the whole run).
    pub fn describe(&self) -> String {
        let mut text = String::from("Entity types:\n");
        for t in &self.entity_types {
            text.push_str(&format!("- {}", t.name));
            if let Some(d) = &t.description {
                text.push_str(&format!(": {}", d.trim()));
            }
            text.push('\n');
            for (property, what) in &t.properties {
                text.push_str(&format!("  - property `{property}`: {}\n", what.trim()));
            }
        }
        if !self.patterns.is_empty() {
            text.push_str("\nRelation types (source type, RELATION, target type):\n");
            for p in &self.patterns {
                text.push_str(&format!("- ({}, {}, {})", p.source, p.relation, p.target));
                if let Some(d) = &p.description {
                    text.push_str(&format!(": {}", d.trim()));
                }
                text.push('\n');
            }
        }
        if self.strict {
            text.push_str(
                "\nUse only these entity types and only these relation patterns; leave out \
                 anything that fits none of them.\n",
            );
        } else {
            text.push_str(
                "\nPrefer these types. When none fits, use a short new type name in \
                 UpperCamelCase for entities and UPPER_SNAKE_CASE for relations.\n",
            );
        }
        text
    }

    /// JSON Schema of the answer for a call. OpenAI's strict structured output accepts it
    /// (every object closed, every property required; optional values are nullable).
    /// `max_entities` / `max_relations` bound the lists per chunk (`maxItems`: a grammar-
    /// constrained local model cannot run on listing the same names until `max_tokens`).
    pub fn answer_schema(
        &self,
        with_confidence: bool,
        max_entities: Option<u32>,
        max_relations: Option<u32>,
    ) -> Value {
        let string = json!({ "type": "string" });
        let entity_type = if self.strict {
            json!({ "type": "string", "enum": self.entity_types.iter().map(|t| &t.name).collect::<Vec<_>>() })
        } else {
            string.clone()
        };
        let relation_types = self.relation_types();
        let relation_type = if self.strict && !relation_types.is_empty() {
            json!({ "type": "string", "enum": relation_types })
        } else {
            string.clone()
        };
        let mut entity_props = serde_json::Map::new();
        entity_props.insert("name".into(), string.clone());
        entity_props.insert("type".into(), entity_type);
        entity_props.insert("description".into(), string.clone());
        let mut relation_props = serde_json::Map::new();
        relation_props.insert("source".into(), string.clone());
        relation_props.insert("type".into(), relation_type);
        relation_props.insert("target".into(), string.clone());
        relation_props.insert("description".into(), string.clone());
        if with_confidence {
            let confidence = json!({ "type": "number", "minimum": 0, "maximum": 1 });
            entity_props.insert("confidence".into(), confidence.clone());
            relation_props.insert("confidence".into(), confidence);
        }
        let properties = self.properties();
        if !properties.is_empty() {
            let mut props = serde_json::Map::new();
            for (name, declared_by) in &properties {
                let what: Vec<String> = declared_by
                    .iter()
                    .map(|(t, w)| format!("{t}: {w}"))
                    .collect();
                props.insert(
                    name.clone(),
                    json!({ "type": ["string", "null"], "description": what.join("; ") }),
                );
            }
            let names: Vec<&String> = properties.keys().collect();
            entity_props.insert(
                "properties".into(),
                json!({ "type": "object", "additionalProperties": false,
                        "required": names, "properties": props }),
            );
        }
        let closed = |props: serde_json::Map<String, Value>| {
            let required: Vec<String> = props.keys().cloned().collect();
            json!({ "type": "object", "additionalProperties": false,
                    "required": required, "properties": props })
        };
        let list = |items: Value, max: Option<u32>| {
            let mut array = json!({ "type": "array", "items": items });
            if let Some(max) = max {
                array["maxItems"] = json!(max);
            }
            array
        };
        let chunk = closed(serde_json::Map::from_iter([
            ("chunk_id".to_string(), string.clone()),
            (
                "entities".to_string(),
                list(closed(entity_props), max_entities),
            ),
            (
                "relations".to_string(),
                list(closed(relation_props), max_relations),
            ),
        ]));
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["chunks"],
            "properties": { "chunks": { "type": "array", "items": chunk } }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(yaml: serde_json::Value) -> GraphSchema {
        serde_json::from_value(yaml).unwrap()
    }

    #[test]
    fn every_yaml_form_resolves_to_the_same_types() {
        let names = schema(json!({ "entities": ["Person", "Spacecraft"],
            "relations": ["Person OPERATES Spacecraft"] }))
        .resolve()
        .unwrap();
        let map = schema(json!({ "entities": { "Person": "a person", "Spacecraft": { "description": "a craft", "properties": { "callsign": "radio name" } } },
            "relations": [["Person", "OPERATES", "Spacecraft"]] }))
        .resolve()
        .unwrap();
        let full = schema(
            json!({ "entities": [{ "name": "Person" }, { "name": "Spacecraft" }],
            "relations": [{ "source": "Person", "type": "OPERATES", "target": "Spacecraft" }] }),
        )
        .resolve()
        .unwrap();
        for r in [&names, &map, &full] {
            let types: Vec<&str> = r.entity_types.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(types, ["Person", "Spacecraft"]);
            assert_eq!(r.patterns.len(), 1);
            assert!(r.allows("person", "operates", "SPACECRAFT"));
            assert!(!r.allows("Spacecraft", "OPERATES", "Person"));
        }
        assert_eq!(
            map.entity_type("spacecraft").unwrap().properties["callsign"],
            "radio name"
        );
    }

    #[test]
    fn bad_schemas_name_the_field() {
        let issues = schema(json!({ "entities": ["Person", "space craft", "person"],
            "relations": ["Person OPERATES", ["Person", "BAD-TYPE", "Ship"]] }))
        .resolve()
        .unwrap_err();
        let fields: Vec<&str> = issues.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "schema.entities.space craft",
                "schema.entities.person",
                "schema.relations[0]",
                "schema.relations[1].type",
                "schema.relations[1].target"
            ],
            "{issues:?}"
        );
        let empty = schema(json!({ "entities": [] })).resolve().unwrap_err();
        assert_eq!(empty[0].field, "schema.entities");
    }

    #[test]
    fn the_answer_schema_is_strict_compatible_and_enumerates_types_when_strict() {
        let strict = schema(json!({ "entities": { "Person": { "properties": { "role": "job" } }, "System": "hardware" },
            "relations": ["Person OPERATES System"] }))
        .resolve()
        .unwrap();
        let answer = strict.answer_schema(true, Some(5), None);
        assert!(crate::provider::strict_compatible(&answer), "{answer}");
        let entity = &answer["properties"]["chunks"]["items"]["properties"]["entities"]["items"];
        assert_eq!(
            entity["properties"]["type"]["enum"],
            json!(["Person", "System"])
        );
        let mut required: Vec<&str> = entity["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        required.sort();
        assert_eq!(
            required,
            ["confidence", "description", "name", "properties", "type"]
        );
        let chunk = &answer["properties"]["chunks"]["items"]["properties"];
        assert_eq!(chunk["entities"]["maxItems"], 5);
        assert!(chunk["relations"].get("maxItems").is_none());
        assert_eq!(
            entity["properties"]["properties"]["properties"]["role"]["type"],
            json!(["string", "null"])
        );
        let mut open = strict.clone();
        open.strict = false;
        let answer = open.answer_schema(false, None, None);
        let entity = &answer["properties"]["chunks"]["items"]["properties"]["entities"]["items"];
        assert!(entity["properties"]["type"].get("enum").is_none());
        assert!(entity["properties"].get("confidence").is_none());
        assert!(jsonschema::validator_for(&answer).is_ok());
    }
}
