//! `pipe schema`: a JSON Schema of the pipeline YAML, for editor completion and checking
//! (e.g. `# yaml-language-server: $schema=pipe.schema.json`). Each stage's `config` is checked
//! against its own kind's schema.

use crate::config::{ResourcesSpec, StageHeader};
use crate::registry::Registry;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

pub fn pipeline_schema(registry: &Registry) -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let resources = generator.subschema_for::<ResourcesSpec>();
    let budget = generator.subschema_for::<crate::policy::BudgetSpec>();
    let mut stage = schemars::schema_for!(StageHeader).to_value();
    let kinds = registry.schema_refs(&mut generator);
    let mut defs = generator.take_definitions(true);

    let names: Vec<&str> = kinds.iter().map(|(k, _)| *k).collect();
    if let Some(obj) = stage.as_object_mut() {
        obj.remove("$schema");
        obj.remove("title");
        if let Some(kind) = obj.get_mut("properties").and_then(|p| p.get_mut("kind")) {
            kind["enum"] = json!(names);
        }
        let per_kind: Vec<Value> = kinds
            .iter()
            .map(|(kind, schema)| {
                json!({
                    "if": { "properties": { "kind": { "const": kind } }, "required": ["kind"] },
                    "then": { "properties": { "config": schema.clone().to_value() } }
                })
            })
            .collect();
        obj.insert("allOf".into(), Value::Array(per_kind));
    }
    defs.insert("Stage".into(), stage);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "pipe pipeline",
        "type": "object",
        "additionalProperties": false,
        "required": ["stages"],
        "properties": {
            "description": { "type": "string" },
            "resources": resources.to_value(),
            "budget": budget.to_value(),
            "stages": { "type": "array", "minItems": 1, "items": { "$ref": "#/$defs/Stage" } }
        },
        "$defs": Value::Object(defs),
    })
}

/// One config field of a kind, for `pipe list-stages`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDoc {
    pub name: String,
    pub type_name: String,
    pub required: bool,
    pub default: Option<String>,
    pub description: String,
}

/// The fields of a kind's `config`, read off its JSON Schema (so docs and checks never drift).
pub fn config_fields(registry: &Registry, kind: &str) -> Vec<FieldDoc> {
    let Some(schema) = registry.config_schema(kind) else {
        return Vec::new();
    };
    let schema = schema.to_value();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema["properties"].as_object() else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, prop)| FieldDoc {
            name: name.clone(),
            type_name: type_name(prop, &schema),
            required: required.contains(&name.as_str()),
            default: prop.get("default").map(|d| d.to_string()),
            description: prop["description"]
                .as_str()
                .unwrap_or("")
                .replace('\n', " "),
        })
        .collect()
}

fn type_name(prop: &Value, root: &Value) -> String {
    if let Some(c) = prop.get("const") {
        return c
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| c.to_string());
    }
    if let Some(r) = prop.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        let target = &root["$defs"][name];
        return match target.get("enum").and_then(Value::as_array) {
            Some(values) => values
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("|"),
            None => type_name(target, root),
        };
    }
    if let Some(values) = prop.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
            .collect::<Vec<_>>()
            .join("|");
    }
    if let Some(variants) = prop
        .get("oneOf")
        .or_else(|| prop.get("anyOf"))
        .and_then(Value::as_array)
    {
        let names: Vec<String> = variants
            .iter()
            .map(|v| type_name(v, root))
            .filter(|n| n != "null")
            .collect();
        return names.join("|");
    }
    match &prop["type"] {
        Value::String(t) if t == "array" => format!("list of {}", type_name(&prop["items"], root)),
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join("|"),
        _ => "any".into(),
    }
}
