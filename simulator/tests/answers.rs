//! What the simulated model answers, over real loopback HTTP: schema-following
//! JSON, batched extraction, refusals, wrong JSON and repeated mistakes.

mod common;

use common::{Sim, content, start, tokens};
use pipe_simulator::{SimConfig, WrongJsonKind};
use serde_json::{Value, json};

const APOLLO: &str = "CDR: Houston, we have a problem with the O2 TANK\nCAPCOM: Roger, Apollo Thirteen. Stand by for Mission Control.";

/// A knowledge-graph extraction schema as a client would send it: `$defs`,
/// closed objects, enums, numbers.
fn kg_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["entities", "relations"],
        "properties": {
            "entities": {"type": "array", "items": {"$ref": "#/$defs/entity"}},
            "relations": {"type": "array", "items": {"$ref": "#/$defs/relation"}}
        },
        "$defs": {
            "entity": {
                "type": "object",
                "additionalProperties": false,
                "required": ["name", "type", "description", "confidence"],
                "properties": {
                    "name": {"type": "string"},
                    "type": {"type": "string", "enum": ["Person", "Spacecraft", "System", "Location", "Organization"]},
                    "description": {"type": "string"},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1}
                }
            },
            "relation": {
                "type": "object",
                "additionalProperties": false,
                "required": ["source", "target", "type"],
                "properties": {
                    "source": {"type": "string"},
                    "target": {"type": "string"},
                    "type": {"type": "string", "enum": ["REPORTS_ON", "MENTIONS", "OPERATES"]}
                }
            }
        }
    })
}

fn schema_chat(schema: &Value, user: &str, max_tokens: u64) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "max_completion_tokens": max_tokens,
        "messages": [
            {"role": "system", "content": "Extract entities and relations."},
            {"role": "user", "content": user}
        ],
        "response_format": {"type": "json_schema", "json_schema": {"name": "kg", "schema": schema}},
    })
}

async fn chat_json(sim: &Sim, body: &Value) -> Value {
    let r = sim.chat("k", body).await;
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::validator_for(schema).expect("schema compiles")
}

fn errors(schema: &Value, v: &Value) -> Vec<String> {
    validator(schema)
        .iter_errors(v)
        .map(|e| format!("{e:?}"))
        .collect()
}

fn entity_types(answer: &Value) -> Vec<(String, String)> {
    answer["entities"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("").to_string(),
                e["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn json_answers_follow_the_schema_with_extraction_content() {
    let sim = start(SimConfig::default()).await;
    let schema = kg_schema();
    let v = chat_json(&sim, &schema_chat(&schema, APOLLO, 2000)).await;
    let answer: Value = serde_json::from_str(content(&v)).expect("JSON content");
    assert!(
        errors(&schema, &answer).is_empty(),
        "{:?}",
        errors(&schema, &answer)
    );
    let types = entity_types(&answer);
    let type_of = |name: &str| {
        types
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    };
    assert_eq!(type_of("CDR"), "Person");
    assert_eq!(type_of("CAPCOM"), "Person");
    assert!(["System", "Spacecraft"].contains(&type_of("O2 TANK").as_str()));
    assert!(["Location", "Organization"].contains(&type_of("Houston").as_str()));
    for e in answer["entities"].as_array().into_iter().flatten() {
        let c = e["confidence"].as_f64().unwrap_or(-1.0);
        assert!((0.5..=1.0).contains(&c), "{c}");
    }
    let rel = &answer["relations"][0];
    assert_eq!(rel["source"], "CDR");
    assert_eq!(rel["type"], "MENTIONS");
    assert_eq!(v["usage"]["completion_tokens"], tokens(content(&v)));
}

#[tokio::test]
async fn any_supported_schema_gets_a_conforming_answer() {
    let sim = start(SimConfig::default()).await;
    let schemas = [
        json!({"type": "object", "required": ["count", "ok", "when", "tags", "meta", "maybe", "mode", "id"],
        "properties": {
            "count": {"type": "integer", "minimum": 3, "maximum": 5},
            "ok": {"type": "boolean"},
            "when": {"type": "string", "format": "date-time"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "minItems": 2, "maxItems": 3},
            "meta": {"type": "object", "additionalProperties": false, "required": ["score"],
                "properties": {"score": {"type": "number", "exclusiveMinimum": 10}}},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "string", "minLength": 12}]},
            "mode": {"const": "fast"},
            "id": {"type": "string", "format": "uuid"}
        }}),
        json!({"type": "object", "required": ["entities"], "properties": {
            "entities": {"type": "array", "maxItems": 2, "items": {"type": "string"}}}}),
        json!({"type": "object", "required": ["result"], "properties": {"result": {"type": "object",
            "required": ["entities"], "properties": {"entities": {"type": "array", "items": {
                "type": "object", "required": ["name", "aliases"], "properties": {
                    "name": {"type": "string"}, "aliases": {"type": "array", "items": {"type": "string"}}}}}}}}}),
        json!({"type": "array", "minItems": 1, "items": {"type": "integer"}}),
    ];
    for schema in &schemas {
        let v = chat_json(&sim, &schema_chat(schema, APOLLO, 2000)).await;
        let answer: Value = serde_json::from_str(content(&v)).expect("JSON content");
        let errs = errors(schema, &answer);
        assert!(errs.is_empty(), "{schema}\n{answer}\n{errs:?}");
    }
    // Entities as plain strings are the names, capped at maxItems.
    let v = chat_json(&sim, &schema_chat(&schemas[1], APOLLO, 2000)).await;
    let answer: Value = serde_json::from_str(content(&v)).expect("JSON");
    assert_eq!(answer["entities"], json!(["CDR", "Houston"]));
    // A wrapper object keeps the extraction content.
    let v = chat_json(&sim, &schema_chat(&schemas[2], APOLLO, 2000)).await;
    let answer: Value = serde_json::from_str(content(&v)).expect("JSON");
    assert_eq!(answer["result"]["entities"][2]["name"], "O2 TANK");
}

fn batch_schema() -> Value {
    json!({
        "type": "object", "additionalProperties": false, "required": ["chunks"],
        "properties": {"chunks": {"type": "array", "items": {
            "type": "object", "additionalProperties": false,
            "required": ["chunk_id", "entities", "relations"],
            "properties": {
                "chunk_id": {"type": "string"},
                "entities": {"type": "array", "items": {"type": "object", "additionalProperties": false,
                    "required": ["name", "type"], "properties": {
                        "name": {"type": "string"},
                        "type": {"type": "string", "enum": ["crew_member", "hardware", "place"]}}}},
                "relations": {"type": "array", "items": {"type": "object", "additionalProperties": false,
                    "required": ["source", "target", "type"], "properties": {
                        "source": {"type": "string"}, "target": {"type": "string"}, "type": {"type": "string"}}}}
            }}}}
    })
}

fn blocks(chunks: &[(&str, &str)]) -> String {
    let mut s = String::from("Extract from each chunk.\n");
    for (id, text) in chunks {
        s.push_str(&format!("<chunk id=\"{id}\">\n{text}\n</chunk>\n"));
    }
    s
}

#[tokio::test]
async fn batched_chunks_get_one_item_each_with_their_own_entities() {
    let sim = start(SimConfig::default()).await;
    let schema = batch_schema();
    let chunks = [
        ("c-1", "CDR: Houston, we have a problem."),
        ("c-2", "LMP: The O2 TANK pressure is dropping."),
        (
            "c-3",
            "CAPCOM: Copy, Aquarius. Mission Control is looking at it.",
        ),
    ];
    let v = chat_json(&sim, &schema_chat(&schema, &blocks(&chunks), 4000)).await;
    let batch: Value = serde_json::from_str(content(&v)).expect("JSON");
    assert!(errors(&schema, &batch).is_empty());
    let items = batch["chunks"].as_array().expect("chunks");
    assert_eq!(items.len(), 3);
    for (item, (id, _)) in items.iter().zip(&chunks) {
        assert_eq!(item["chunk_id"], *id);
    }
    let names =
        |item: &Value| -> Vec<String> { entity_types(item).into_iter().map(|(n, _)| n).collect() };
    assert_eq!(names(&items[0]), ["CDR", "Houston"]);
    assert_eq!(names(&items[1]), ["LMP", "O2 TANK"]);
    assert!(!names(&items[1]).contains(&"Houston".to_string()));
    assert_eq!(entity_types(&items[1])[1].1, "hardware");
    assert_eq!(entity_types(&items[0])[0].1, "crew_member");
    // Each chunk alone gives exactly its item of the batch.
    for (i, chunk) in chunks.iter().enumerate() {
        let v = chat_json(&sim, &schema_chat(&schema, &blocks(&[*chunk]), 4000)).await;
        let alone: Value = serde_json::from_str(content(&v)).expect("JSON");
        assert_eq!(alone["chunks"][0], items[i], "chunk {}", chunk.0);
    }
}

#[tokio::test]
async fn anthropic_follows_a_schema_written_in_the_prompt() {
    let sim = start(SimConfig::default()).await;
    let schema = kg_schema();
    let body = json!({
        "model": "claude-haiku-4-5", "max_tokens": 2000,
        "system": format!("Extract entities. Answer with JSON valid against this JSON Schema:\n{schema}"),
        "messages": [{"role": "user", "content": APOLLO}]
    });
    let r = sim.messages("k", &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    let answer: Value =
        serde_json::from_str(v["content"][0]["text"].as_str().unwrap_or("")).expect("JSON text");
    assert!(errors(&schema, &answer).is_empty(), "{answer}");
    assert_eq!(entity_types(&answer)[0], ("CDR".into(), "Person".into()));
}

#[tokio::test]
async fn refusals_are_billed_and_deterministic_per_body() {
    let sim = start(SimConfig {
        fault_refusal: 1.0,
        seed: Some(3),
        ..SimConfig::default()
    })
    .await;
    let body = schema_chat(&kg_schema(), APOLLO, 500);
    let v = chat_json(&sim, &body).await;
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["content"], Value::Null);
    assert_eq!(msg["refusal"], "I'm sorry, but I can't help with that.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let refusal_tokens = tokens("I'm sorry, but I can't help with that.");
    assert_eq!(v["usage"]["completion_tokens"], refusal_tokens);
    let stats = sim.stats().await;
    assert_eq!(stats["billed"]["requests"], 1);
    assert_eq!(stats["billed"]["completion_tokens"], refusal_tokens);
    assert_eq!(
        stats["billed"]["prompt_tokens"],
        v["usage"]["prompt_tokens"]
    );

    let m = json!({"model": "claude", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    let v: Value = sim.messages("k", &m).await.json().await.expect("json");
    assert_eq!(v["stop_reason"], "refusal");
    assert_eq!(
        v["content"][0]["text"],
        "I'm sorry, but I can't help with that."
    );

    // Half the bodies refuse; the same body always gets the same outcome.
    sim.configure(&SimConfig {
        fault_refusal: 0.5,
        seed: Some(3),
        ..SimConfig::default()
    })
    .await;
    let mut refused = Vec::new();
    for i in 0..40 {
        let body = common::simple_chat(&format!("request {i}"));
        let v = chat_json(&sim, &body).await;
        refused.push(v["choices"][0]["message"]["refusal"].is_string());
    }
    let n = refused.iter().filter(|r| **r).count();
    assert!((8..=32).contains(&n), "{n} of 40 refused");
    for (i, was) in refused.iter().enumerate().take(10) {
        let v = chat_json(&sim, &common::simple_chat(&format!("request {i}"))).await;
        assert_eq!(v["choices"][0]["message"]["refusal"].is_string(), *was);
    }
}

async fn wrong(sim: &Sim, kind: WrongJsonKind, body: &Value) -> Value {
    sim.configure(&SimConfig {
        fault_wrong_json: 1.0,
        wrong_json_kinds: vec![kind],
        seed: Some(11),
        ..SimConfig::default()
    })
    .await;
    chat_json(sim, body).await
}

fn has_required_error(schema: &Value, v: &Value) -> bool {
    validator(schema).iter_errors(v).any(|e| {
        matches!(
            e.kind(),
            jsonschema::error::ValidationErrorKind::Required { .. }
        )
    })
}

#[tokio::test]
async fn wrong_json_comes_in_each_kind() {
    let sim = start(SimConfig::default()).await;
    let schema = kg_schema();
    let body = schema_chat(&schema, APOLLO, 2000);

    let v = wrong(&sim, WrongJsonKind::MissingField, &body).await;
    let answer: Value = serde_json::from_str(content(&v)).expect("still JSON");
    assert!(has_required_error(&schema, &answer), "{answer}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let v = wrong(&sim, WrongJsonKind::WrongType, &body).await;
    let answer: Value = serde_json::from_str(content(&v)).expect("still JSON");
    assert!(!errors(&schema, &answer).is_empty(), "{answer}");
    assert!(!has_required_error(&schema, &answer), "{answer}");

    let v = wrong(&sim, WrongJsonKind::Prose, &body).await;
    let text = content(&v);
    assert!(text.starts_with("Here is the JSON you asked for:\n```json\n"));
    assert!(serde_json::from_str::<Value>(text).is_err());
    let inner = text
        .trim_start_matches("Here is the JSON you asked for:\n```json\n")
        .trim_end_matches("\n```");
    let answer: Value = serde_json::from_str(inner).expect("fenced JSON");
    assert!(errors(&schema, &answer).is_empty());

    let body = schema_chat(&schema, APOLLO, 300);
    let v = wrong(&sim, WrongJsonKind::Truncated, &body).await;
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 300);
    assert_eq!(tokens(content(&v)), 300);
    assert!(serde_json::from_str::<Value>(content(&v)).is_err());

    // Without a schema (json_object) the extraction shape is made wrong.
    let plain = json!({"model": "m", "messages": [{"role": "user", "content": APOLLO}],
        "response_format": {"type": "json_object"}});
    let v = wrong(&sim, WrongJsonKind::MissingField, &plain).await;
    let answer: Value = serde_json::from_str(content(&v)).expect("still JSON");
    let lacks = |list: &str, keys: &[&str]| {
        answer[list]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| keys.iter().any(|k| x.get(*k).is_none()))
    };
    let lost = answer.get("entities").is_none()
        || answer.get("relations").is_none()
        || lacks("entities", &["name", "type"])
        || lacks("relations", &["source", "target", "type"]);
    assert!(lost, "{answer}");

    // Billed like any answer.
    let stats = sim.stats().await;
    assert!(stats["billed"]["requests"].as_u64().unwrap_or(0) >= 1);
}

#[tokio::test]
async fn a_repair_turn_can_repeat_the_same_mistake() {
    let sim = start(SimConfig::default()).await;
    let schema = kg_schema();
    let first = schema_chat(&schema, APOLLO, 1500);
    for kind in WrongJsonKind::ALL {
        let v = wrong(&sim, kind, &first).await;
        let bad = content(&v).to_string();
        let mut repair = first.clone();
        if let Some(msgs) = repair["messages"].as_array_mut() {
            msgs.push(json!({"role": "assistant", "content": bad}));
            msgs.push(json!({"role": "user", "content": "That was not valid against the schema. Answer again."}));
        }
        // Always repeated.
        sim.configure(&SimConfig {
            repeat_mistake: 1.0,
            ..SimConfig::default()
        })
        .await;
        let v = chat_json(&sim, &repair).await;
        let again = content(&v);
        let parsed = serde_json::from_str::<Value>(again);
        match kind {
            WrongJsonKind::MissingField => {
                assert!(has_required_error(&schema, &parsed.expect("JSON")))
            }
            WrongJsonKind::WrongType => {
                let p = parsed.expect("JSON");
                assert!(!errors(&schema, &p).is_empty() && !has_required_error(&schema, &p));
            }
            WrongJsonKind::Prose => assert!(again.starts_with("Here is the JSON")),
            WrongJsonKind::Truncated => {
                assert!(parsed.is_err());
                assert_eq!(v["choices"][0]["finish_reason"], "length");
            }
        }
        // Never repeated: the repair works, and answers the original text.
        sim.configure(&SimConfig::default()).await;
        let v = chat_json(&sim, &repair).await;
        let fixed: Value = serde_json::from_str(content(&v)).expect("valid JSON");
        assert!(errors(&schema, &fixed).is_empty(), "{kind:?}: {fixed}");
        let clean: Value =
            serde_json::from_str(content(&chat_json(&sim, &first).await)).expect("JSON");
        assert_eq!(fixed, clean);
    }
}

#[tokio::test]
async fn anthropic_mistakes_repairs_and_truncation() {
    let sim = start(SimConfig::default()).await;
    let schema = kg_schema();
    let ask = format!("{APOLLO}\n\nAnswer with JSON valid against this JSON Schema: {schema}");
    let first = json!({"model": "claude-haiku-4-5", "max_tokens": 1500,
        "messages": [{"role": "user", "content": ask}]});
    let text = |v: &Value| v["content"][0]["text"].as_str().unwrap_or("").to_string();
    let send = |body: Value| {
        let sim = sim.clone();
        async move {
            let r = sim.messages("k", &body).await;
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.expect("json")
        }
    };
    sim.configure(&SimConfig {
        fault_wrong_json: 1.0,
        wrong_json_kinds: vec![WrongJsonKind::Truncated],
        ..SimConfig::default()
    })
    .await;
    let v = send(first.clone()).await;
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 1500);
    let bad = text(&v);
    assert!(serde_json::from_str::<Value>(&bad).is_err());

    // The repair turn (schema only in the original request) repeats the cut-off answer.
    let mut repair = first.clone();
    if let Some(msgs) = repair["messages"].as_array_mut() {
        msgs.push(json!({"role": "assistant", "content": bad}));
        msgs.push(
            json!({"role": "user", "content": "Your answer was cut off. Answer again, shorter."}),
        );
    }
    sim.configure(&SimConfig {
        repeat_mistake: 1.0,
        ..SimConfig::default()
    })
    .await;
    let v = send(repair.clone()).await;
    assert_eq!(v["stop_reason"], "max_tokens");
    // Without repeats the repair answers the original text, against the schema.
    sim.configure(&SimConfig::default()).await;
    let v = send(repair).await;
    assert_eq!(v["stop_reason"], "end_turn");
    let fixed: Value = serde_json::from_str(&text(&v)).expect("valid JSON");
    assert!(errors(&schema, &fixed).is_empty(), "{fixed}");
    assert_eq!(entity_types(&fixed)[0], ("CDR".into(), "Person".into()));
    // The schema's own words are instructions, not content.
    let names: Vec<String> = entity_types(&fixed).into_iter().map(|(n, _)| n).collect();
    for word in ["Answer", "JSON", "Person", "Spacecraft"] {
        assert!(!names.iter().any(|n| n.contains(word)), "{names:?}");
    }
}
