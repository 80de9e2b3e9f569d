//! The `falkordb` sink against a real FalkorDB (`eval "$(scripts/falkordb.sh start)"` sets
//! FALKORDB_URL; every test says "skipped" loudly when it is not set): idempotent re-writes,
//! hostile labels and values, a server killed mid-run, chunk nodes with a vector index, the
//! read-back used by `pipe search`, and the health check that stops a run before any token is
//! spent. Records come from a test source (`replay`) reading serialised records, so the tests
//! control exactly what the sink receives.

use connectors::FalkorClient;
use pipeline::config::{Env, Locator};
use pipeline::futures::stream::{self, BoxStream, StreamExt};
use pipeline::record::stable_id;
use pipeline::runtime::{self, RunOptions, RunReport, RunStatus, StageReport};
use pipeline::{
    BuildContext, BuiltStage, Embedded, Entity, Graph, KindSet, Mention, Payload, PayloadKind,
    Produces, Provenance, Record, Registry, Rejected, Relation, Role, Source, StageConfig,
    StageError, async_trait,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Test source: replays records from a JSONL file, optionally paced, optionally publishing the
// embedding size the way an `embed` stage does.

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReplayConfig {
    path: String,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    dimensions: Option<u64>,
}

#[async_trait]
impl StageConfig for ReplayConfig {
    const KIND: &'static str = "replay";
    const DESCRIPTION: &'static str = "test source: records from a JSONL file";
    const ROLE: Role = Role::Source;

    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Graph, PayloadKind::Embedded]))
    }

    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| StageError::run(format!("{}: {e}", self.path)))?;
        let records = text
            .lines()
            .map(|line| serde_json::from_str::<Record>(line).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StageError::run)?;
        if let Some(dimensions) = self.dimensions {
            ctx.publish("embedding.dimensions", json!(dimensions));
            ctx.publish("embedding.model", json!("test-model"));
        }
        Ok(BuiltStage::Source(Arc::new(Replay {
            records,
            delay: Duration::from_millis(self.delay_ms),
        })))
    }
}

struct Replay {
    records: Vec<Record>,
    delay: Duration,
}

impl Source for Replay {
    fn records(self: Arc<Self>) -> BoxStream<'static, Result<Record, Rejected>> {
        let delay = self.delay;
        stream::iter(self.records.clone())
            .then(move |record| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(record)
            })
            .boxed()
    }

    fn size_hint(&self) -> Option<u64> {
        Some(self.records.len() as u64)
    }
}

fn registry() -> Registry {
    let mut registry = stages::builtin_registry();
    registry.register::<ReplayConfig>();
    registry
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn falkordb_url(test: &str) -> Option<String> {
    match std::env::var("FALKORDB_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            eprintln!(
                "skipped: FALKORDB_URL not set ({test}; `eval \"$(scripts/falkordb.sh start)\"` \
                 starts a real FalkorDB)"
            );
            None
        }
    }
}

/// A graph name of its own per test (tests share one server and run in parallel).
fn graph_name(test: &str) -> String {
    format!("pipe_test_{test}_{}", std::process::id())
}

async fn client(url: &str, graph: &str) -> FalkorClient {
    FalkorClient::connect(url, graph)
        .await
        .expect("connect to FalkorDB")
}

async fn fresh_graph(url: &str, graph: &str) -> FalkorClient {
    let client = client(url, graph).await;
    client.delete_graph().await.unwrap();
    client
}

async fn scalar(client: &FalkorClient, cypher: &str) -> i64 {
    let result = client.ro_query(cypher, &Map::new()).await.unwrap();
    result
        .rows
        .first()
        .and_then(|row| row.first())
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

async fn node_count(client: &FalkorClient) -> i64 {
    scalar(client, "MATCH (n) RETURN count(n)").await
}

async fn relationship_count(client: &FalkorClient) -> i64 {
    scalar(client, "MATCH ()-[r]->() RETURN count(r)").await
}

/// Every node and relationship with all its properties, in a stable order.
async fn snapshot(client: &FalkorClient) -> (Vec<Value>, Vec<Value>) {
    let nodes = client
        .ro_query(
            "MATCH (n) RETURN labels(n) AS labels, properties(n) AS props ORDER BY n.id",
            &Map::new(),
        )
        .await
        .unwrap();
    let rels = client
        .ro_query(
            "MATCH (s)-[r]->(t) RETURN s.id AS s, type(r) AS type, t.id AS t, properties(r) AS props \
             ORDER BY s.id, type(r), t.id",
            &Map::new(),
        )
        .await
        .unwrap();
    // Sorted by identity (not by text: a store may list a node's properties in any order).
    let mut nodes: Vec<Value> = nodes.records().into_iter().map(Value::Object).collect();
    nodes.sort_by_key(|n| n["props"]["id"].as_str().unwrap_or_default().to_string());
    let mut rels: Vec<Value> = rels.records().into_iter().map(Value::Object).collect();
    rels.sort_by_key(|r| format!("{}|{}|{}", r["s"], r["type"], r["t"]));
    (nodes, rels)
}

fn write_records(dir: &Path, name: &str, records: &[Record]) -> PathBuf {
    let path = dir.join(name);
    let lines: Vec<String> = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn pipeline_yaml(
    records: &Path,
    replay_extra: &str,
    url: &str,
    graph: &str,
    sink_extra: &str,
) -> String {
    format!(
        r#"
stages:
  - id: replay
    kind: replay
    config: {{ path: "{records}"{replay_extra} }}
  - id: graph
    kind: falkordb
    inputs: [replay]
    config: {{ url: "{url}", graph: "{graph}"{sink_extra} }}
"#,
        records = records.display()
    )
}

async fn prepare(yaml: &str, state: &Path) -> Result<runtime::PreparedRun, runtime::RunError> {
    let locator = Locator {
        file: Arc::from("test.yaml"),
        overrides: Vec::new(),
    };
    let plan = pipeline::config::load_str(yaml, &locator, &registry(), &Env::default())
        .unwrap_or_else(|d| panic!("invalid test pipeline:\n{d}"));
    runtime::prepare(plan, RunOptions::new(state.to_path_buf())).await
}

async fn run(yaml: &str, state: &Path) -> RunReport {
    prepare(yaml, state)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .run()
        .await
        .unwrap()
}

fn stage<'a>(report: &'a RunReport, id: &str) -> &'a StageReport {
    report.stages.iter().find(|s| s.id == id).unwrap()
}

fn dead_lettered_ids(report: &RunReport) -> BTreeSet<String> {
    let Some(path) = &report.dead_letters.path else {
        return BTreeSet::new();
    };
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter_map(|entry| entry["record"]["id"].as_str().map(str::to_string))
        .collect()
}

fn entity_id(entity_type: &str, name: &str) -> String {
    stable_id(&[
        b"entity",
        entity_type.as_bytes(),
        name.to_lowercase().as_bytes(),
    ])
}

fn relation_id(source: &str, relation_type: &str, target: &str) -> String {
    stable_id(&[
        b"relation",
        source.as_bytes(),
        relation_type.as_bytes(),
        target.as_bytes(),
    ])
}

fn mention(chunk: usize) -> Mention {
    Mention {
        document_id: format!("day{}", chunk % 4 + 1),
        chunk_id: format!("chunk-{chunk}"),
        source_path: Some(format!("day{}.txt", chunk % 4 + 1)),
        char_span: Some([chunk as u64 * 100, chunk as u64 * 100 + 3]),
    }
}

fn entity(name: &str, entity_type: &str, chunk: usize) -> Entity {
    Entity {
        id: entity_id(entity_type, name),
        name: name.into(),
        entity_type: entity_type.into(),
        aliases: vec![name.to_uppercase()],
        descriptions: vec![format!("{name} ({entity_type})")],
        properties: Map::new(),
        confidence: Some(0.5 + (chunk % 5) as f64 / 10.0),
        mentions: vec![mention(chunk)],
    }
}

fn relation(source: &Entity, relation_type: &str, target: &Entity, chunk: usize) -> Relation {
    Relation {
        id: relation_id(&source.id, relation_type, &target.id),
        source: source.id.clone(),
        target: target.id.clone(),
        relation_type: relation_type.into(),
        descriptions: vec![format!("{} {relation_type} {}", source.name, target.name)],
        properties: Map::new(),
        confidence: None,
        weight: 1.0,
        mentions: vec![mention(chunk)],
    }
}

fn graph_record(chunk: usize, graph: Graph) -> Record {
    Record::new(
        stable_id(&[format!("chunk-{chunk}").as_bytes(), b"normalize"]),
        Provenance {
            document_id: format!("day{}", chunk % 4 + 1),
            source_path: Some(format!("day{}.txt", chunk % 4 + 1)),
            chunk_index: Some(chunk as u32),
            ..Provenance::default()
        },
        Payload::Graph(graph),
    )
}

const SPEAKERS: [&str; 4] = ["CDR", "CMP", "LMP", "CAPCOM"];
const THINGS: [&str; 12] = [
    "O2 tank 2",
    "fuel cell 1",
    "fuel cell 3",
    "Odyssey",
    "Aquarius",
    "S-IVB",
    "DSKY",
    "main bus B",
    "LiOH canister",
    "quad C",
    "service module",
    "PTC",
];

/// What `normalize` would emit for `chunks` transcript chunks: each chunk mentions a speaker
/// and a few pieces of equipment; the same entities recur across chunks (so nodes merge and
/// relation weights grow).
fn extraction(chunks: usize) -> Vec<Record> {
    (0..chunks)
        .map(|c| {
            let speaker = entity(SPEAKERS[c % SPEAKERS.len()], "Person", c);
            let things: Vec<Entity> = (0..3)
                .map(|k| {
                    let name = THINGS[(c * 3 + k * 5) % THINGS.len()];
                    let kind = if name.contains("tank") || name.contains("cell") {
                        "Equipment"
                    } else {
                        "space craft"
                    };
                    entity(name, kind, c)
                })
                .collect();
            let mut relations: Vec<Relation> = things
                .iter()
                .map(|t| relation(&speaker, "MENTIONS", t, c))
                .collect();
            relations.push(relation(&things[0], "co occurs", &things[1], c));
            let mut entities = vec![speaker];
            for t in things {
                if !entities.iter().any(|e| e.id == t.id) {
                    entities.push(t);
                }
            }
            relations.dedup_by(|a, b| a.id == b.id);
            graph_record(
                c,
                Graph {
                    extractor: "nlp_extract".into(),
                    entities,
                    relations,
                },
            )
        })
        .collect()
}

/// Distinct entity ids, relation ids and each relation's distinct supporting chunks.
fn expected(records: &[Record]) -> (BTreeSet<String>, BTreeMap<String, BTreeSet<String>>) {
    let mut entities = BTreeSet::new();
    let mut relations: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for record in records {
        if let Payload::Graph(graph) = &record.payload {
            for e in &graph.entities {
                entities.insert(e.id.clone());
            }
            for r in &graph.relations {
                entities.insert(r.source.clone());
                entities.insert(r.target.clone());
                relations
                    .entry(r.id.clone())
                    .or_default()
                    .extend(r.mentions.iter().map(|m| m.chunk_id.clone()));
            }
        }
    }
    (entities, relations)
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn writing_the_same_extraction_twice_changes_nothing() {
    let Some(url) = falkordb_url("writing_the_same_extraction_twice_changes_nothing") else {
        return;
    };
    let graph = graph_name("idempotent");
    let db = fresh_graph(&url, &graph).await;
    let dir = tempfile::tempdir().unwrap();
    let records = extraction(120);
    let (entities, relations) = expected(&records);
    let path = write_records(dir.path(), "graph.jsonl", &records);
    let yaml = pipeline_yaml(&path, "", &url, &graph, ", batch: 25");

    let first = run(&yaml, dir.path()).await;
    assert_eq!(first.status, RunStatus::Completed);
    let sink = stage(&first, "graph");
    assert_eq!(sink.committed, Some(records.len() as u64));
    assert_eq!(sink.dead_lettered, 0);
    assert_eq!(node_count(&db).await, entities.len() as i64);
    assert_eq!(relationship_count(&db).await, relations.len() as i64);
    assert_eq!(sink.counts["nodes_created"], entities.len() as u64);
    let before = snapshot(&db).await;

    // Weight = distinct supporting chunks; lists are set-unions.
    let stored = db
        .ro_query(
            "MATCH ()-[r]->() RETURN r.id AS id, r.weight AS weight, r.chunk_ids AS chunks",
            &Map::new(),
        )
        .await
        .unwrap();
    for row in stored.records() {
        let id = row["id"].as_str().unwrap();
        let want = &relations[id];
        assert_eq!(
            row["weight"].as_f64().unwrap(),
            want.len() as f64,
            "weight of {id}"
        );
        let chunks: BTreeSet<String> = row["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(&chunks, want);
        assert_eq!(
            row["chunks"].as_array().unwrap().len(),
            want.len(),
            "no duplicates"
        );
    }
    let labels = db
        .ro_query(
            "CALL db.labels() YIELD label RETURN label ORDER BY label",
            &Map::new(),
        )
        .await
        .unwrap();
    let labels: Vec<Value> = labels.rows.into_iter().map(|mut r| r.remove(0)).collect();
    assert_eq!(
        labels,
        vec![
            json!("Entity"),
            json!("Equipment"),
            json!("Person"),
            json!("SpaceCraft")
        ],
        "`space craft` was mapped to a label"
    );

    // Again, in another run: same counts, same properties (lists and weights did not grow).
    let second = run(&yaml, dir.path()).await;
    let sink = stage(&second, "graph");
    assert_eq!(sink.committed, Some(records.len() as u64));
    assert_eq!(sink.counts["nodes_created"], 0);
    assert_eq!(sink.counts["relationships_created"], 0);
    assert_eq!(node_count(&db).await, entities.len() as i64);
    assert_eq!(relationship_count(&db).await, relations.len() as i64);
    assert_eq!(snapshot(&db).await, before);

    // And in batches of another size (rows of one entity merged differently): still the same.
    let yaml = pipeline_yaml(&path, "", &url, &graph, ", batch: 7, rows_per_query: 3");
    run(&yaml, dir.path()).await;
    assert_eq!(snapshot(&db).await, before);
    db.delete_graph().await.unwrap();
}

/// A relation written in an earlier batch than its entities leaves bare `Entity` nodes; the
/// entities' batch then gives those nodes their type label, and the MERGE on both labels
/// finds them: one node per entity, named and labelled (a second node would break the unique
/// constraint on `Entity.id`).
#[tokio::test]
async fn entities_written_after_their_relation_land_on_its_nodes() {
    let Some(url) = falkordb_url("entities_written_after_their_relation_land_on_its_nodes") else {
        return;
    };
    let graph = graph_name("late_entities");
    let db = fresh_graph(&url, &graph).await;
    let dir = tempfile::tempdir().unwrap();
    let lovell = entity("Jim Lovell", "Person", 1);
    let odyssey = entity("Odyssey", "SpaceCraft", 1);
    let records = vec![
        graph_record(
            0,
            Graph {
                relations: vec![relation(&lovell, "COMMANDS", &odyssey, 0)],
                ..Graph::default()
            },
        ),
        graph_record(
            1,
            Graph {
                entities: vec![lovell.clone(), odyssey.clone()],
                ..Graph::default()
            },
        ),
    ];
    let path = write_records(dir.path(), "graph.jsonl", &records);
    let yaml = pipeline_yaml(&path, "", &url, &graph, ", batch: 1");
    for _ in 0..2 {
        let report = run(&yaml, dir.path()).await;
        assert_eq!(report.status, RunStatus::Completed);
        assert_eq!(stage(&report, "graph").dead_lettered, 0);
        assert_eq!(node_count(&db).await, 2);
        assert_eq!(relationship_count(&db).await, 1);
        for (label, name) in [("Person", "Jim Lovell"), ("SpaceCraft", "Odyssey")] {
            let found = db
                .ro_query(
                    &format!("MATCH (n:Entity:{label}) RETURN n.name AS name"),
                    &Map::new(),
                )
                .await
                .unwrap();
            let names: Vec<Value> = found.rows.into_iter().map(|mut r| r.remove(0)).collect();
            assert_eq!(names, vec![json!(name)]);
        }
    }
    db.delete_graph().await.unwrap();
}

fn hostile_entity(name: &str, entity_type: &str) -> Entity {
    Entity {
        id: stable_id(&[b"entity", entity_type.as_bytes(), name.as_bytes()]),
        name: name.into(),
        entity_type: entity_type.into(),
        mentions: vec![mention(999)],
        ..Entity::default()
    }
}

#[tokio::test]
async fn hostile_labels_are_rejected_alone_and_hostile_values_stored_verbatim() {
    let Some(url) =
        falkordb_url("hostile_labels_are_rejected_alone_and_hostile_values_stored_verbatim")
    else {
        return;
    };
    let graph = graph_name("hostile");
    let db = fresh_graph(&url, &graph).await;
    let dir = tempfile::tempdir().unwrap();
    let base = extraction(40);
    let (base_entities, base_relations) = expected(&base);
    let path = write_records(dir.path(), "base.jsonl", &base);
    run(&pipeline_yaml(&path, "", &url, &graph, ""), dir.path()).await;
    let nodes_before = node_count(&db).await;
    let rels_before = relationship_count(&db).await;
    assert_eq!(nodes_before, base_entities.len() as i64);
    assert_eq!(rels_before, base_relations.len() as i64);

    let ten_kb = "A".repeat(10_000);
    let hostile_types = [
        "Person`) DETACH DELETE n //",
        "}) DETACH DELETE n //",
        "Per'son\"",
        ten_kb.as_str(),
        "Космонавт",
        "宇宙飛行士",
        "`",
    ];
    let mut records = Vec::new();
    for (i, hostile) in hostile_types.iter().enumerate() {
        let mut g = Graph::default();
        g.entities
            .push(hostile_entity(&format!("victim {i}"), "Person"));
        g.entities
            .push(hostile_entity(&format!("attacker {i}"), hostile));
        records.push(graph_record(1000 + i, g));
    }
    // A hostile relationship type between two fine entities.
    let a = hostile_entity("fine a", "Person");
    let b = hostile_entity("fine b", "Person");
    let mut bad_rel = relation(&a, "KNOWS`]->(m) DETACH DELETE m //", &b, 999);
    bad_rel.id = "rel-hostile".into();
    records.push(graph_record(
        1100,
        Graph {
            entities: vec![a.clone(), b.clone()],
            relations: vec![bad_rel],
            ..Graph::default()
        },
    ));
    let rejected = records.len();

    // Hostile VALUES with fine labels: stored exactly as given.
    let evil_names = [
        "'}) MATCH (n) DETACH DELETE n //".to_string(),
        "\"}) MATCH (n) DETACH DELETE n //".to_string(),
        "`Robert`); DROP GRAPH; //".to_string(),
        "back\\slash \\' \\\" and\nnewline\ttab".to_string(),
        "Джеймс Ловелл".to_string(),
        "宇宙飛行士 ジム・ラヴェル".to_string(),
        "عربى 🚀 ∑".to_string(),
        "x".repeat(10_000),
    ];
    let mut good = Graph::default();
    for name in &evil_names {
        let mut e = hostile_entity(name, "Person");
        e.descriptions = vec![format!("desc of {name}")];
        e.aliases = vec![name.clone()];
        e.properties
            .insert("}) DETACH DELETE n //".into(), json!(name));
        e.properties.insert("ключ".into(), json!(["a'", "b`"]));
        good.entities.push(e);
    }
    good.relations
        .push(relation(&good.entities[0], "knows", &good.entities[1], 999));
    records.push(graph_record(1200, good.clone()));
    let path = write_records(dir.path(), "hostile.jsonl", &records);
    let report = run(&pipeline_yaml(&path, "", &url, &graph, ""), dir.path()).await;
    assert_eq!(report.status, RunStatus::Completed);
    let sink = stage(&report, "graph");
    assert_eq!(
        sink.dead_lettered, rejected as u64,
        "each hostile record alone"
    );
    assert_eq!(sink.committed, Some(1));
    assert_eq!(sink.counts["rejected_records"], rejected as u64);
    let dead = std::fs::read_to_string(report.dead_letters.path.as_ref().unwrap()).unwrap();
    assert!(dead.contains("cannot be a label"), "{dead}");
    assert!(dead.contains("longer than 128 bytes"));
    assert!(
        dead.len() < 200_000,
        "dead letters keep the record, not 10 kB per message"
    );

    // The graph is intact: everything from before is still there, plus exactly the good ones.
    assert_eq!(
        node_count(&db).await,
        nodes_before + evil_names.len() as i64
    );
    assert_eq!(relationship_count(&db).await, rels_before + 1);
    for id in &base_entities {
        let mut params = Map::new();
        params.insert("id".into(), json!(id));
        let found = db
            .ro_query("MATCH (n:Entity {id: $id}) RETURN count(n)", &params)
            .await
            .unwrap();
        assert_eq!(found.rows[0][0], json!(1), "entity {id} survived");
    }
    let labels = db
        .ro_query("CALL db.labels() YIELD label RETURN label", &Map::new())
        .await
        .unwrap();
    for row in labels.rows {
        let label = row[0].as_str().unwrap();
        assert!(
            label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "label {label:?} should not exist"
        );
    }
    for expected in &good.entities {
        let mut params = Map::new();
        params.insert("id".into(), json!(expected.id));
        let stored = db
            .ro_query(
                "MATCH (n:Person {id: $id}) RETURN properties(n) AS p",
                &params,
            )
            .await
            .unwrap();
        assert_eq!(stored.rows.len(), 1, "{}", expected.name);
        let props = &stored.rows[0][0];
        assert_eq!(props["name"], json!(expected.name));
        assert_eq!(props["aliases"], json!([expected.name]));
        assert_eq!(
            props["descriptions"],
            json!([format!("desc of {}", expected.name)])
        );
        assert_eq!(props["}) DETACH DELETE n //"], json!(expected.name));
        assert_eq!(props["ключ"], json!(["a'", "b`"]));
    }
    db.delete_graph().await.unwrap();
}

#[tokio::test]
async fn chunk_nodes_link_entities_and_answer_vector_queries() {
    let Some(url) = falkordb_url("chunk_nodes_link_entities_and_answer_vector_queries") else {
        return;
    };
    let graph = graph_name("chunks");
    let db = fresh_graph(&url, &graph).await;
    let dir = tempfile::tempdir().unwrap();
    let mut records = extraction(8);
    let (entities, relations) = expected(&records);
    for chunk in 0..8usize {
        let angle = chunk as f32 / 8.0 * std::f32::consts::PI;
        records.push(Record::new(
            format!("chunk-{chunk}"),
            Provenance {
                document_id: format!("day{}", chunk % 4 + 1),
                chunk_index: Some(chunk as u32),
                char_span: Some([chunk as u64 * 100, chunk as u64 * 100 + 99]),
                ..Provenance::default()
            },
            Payload::Embedded(Embedded {
                text: format!("chunk {chunk} text, with 'quotes'"),
                context: None,
                vector: vec![angle.cos(), angle.sin(), 0.0],
                model: "test-model".into(),
            }),
        ));
    }
    let path = write_records(dir.path(), "mixed.jsonl", &records);
    let yaml = pipeline_yaml(&path, ", dimensions: 3", &url, &graph, "");
    let report = run(&yaml, dir.path()).await;
    assert_eq!(
        stage(&report, "graph").committed,
        Some(records.len() as u64)
    );

    assert_eq!(scalar(&db, "MATCH (c:Chunk) RETURN count(c)").await, 8);
    assert_eq!(
        scalar(&db, "MATCH (n:Entity) RETURN count(n)").await,
        entities.len() as i64
    );
    // One MENTIONS edge per (chunk, entity mentioned in it).
    let mut pairs = BTreeSet::new();
    for record in &records {
        if let Payload::Graph(g) = &record.payload {
            for e in &g.entities {
                for m in &e.mentions {
                    pairs.insert((m.chunk_id.clone(), e.id.clone()));
                }
            }
        }
    }
    assert_eq!(
        scalar(
            &db,
            "MATCH (:Chunk)-[m:MENTIONS]->(:Entity) RETURN count(m)"
        )
        .await,
        pairs.len() as i64
    );
    assert_eq!(
        relationship_count(&db).await,
        (relations.len() + pairs.len()) as i64
    );
    // The vector index answers: nearest to angle 0 are chunk-0, then chunk-1. It asks for all
    // 8: the index is approximate (HNSW), and asked for 2 on a fresh server it once gave only
    // one; asked for k, it searches at least k candidates, so on 8 nodes it sees them all.
    let mut params = Map::new();
    params.insert("v".into(), json!([1.0, 0.0, 0.0]));
    let nearest = db
        .ro_query(
            "CALL db.idx.vector.queryNodes('Chunk', 'embedding', 8, vecf32($v)) YIELD node, score \
             RETURN node.id AS id ORDER BY score",
            &params,
        )
        .await
        .unwrap();
    assert!(nearest.rows.len() >= 2, "{:?}", nearest.rows);
    assert_eq!(nearest.rows[0][0], json!("chunk-0"));
    assert_eq!(nearest.rows[1][0], json!("chunk-1"));
    let text = db
        .ro_query(
            "MATCH (c:Chunk {id: 'chunk-3'}) RETURN c.text, c.document_id, c.model",
            &Map::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        text.rows[0],
        vec![
            json!("chunk 3 text, with 'quotes'"),
            json!("day4"),
            json!("test-model")
        ]
    );
    // Idempotent with chunks too.
    let before = snapshot(&db).await;
    run(&yaml, dir.path()).await;
    assert_eq!(snapshot(&db).await, before);
    db.delete_graph().await.unwrap();
}

#[tokio::test]
async fn the_graph_reads_back_for_search_and_export() {
    let Some(url) = falkordb_url("the_graph_reads_back_for_search_and_export") else {
        return;
    };
    let graph = graph_name("reader");
    let _db = fresh_graph(&url, &graph).await;
    let dir = tempfile::tempdir().unwrap();
    let records = extraction(60);
    let (entities, relations) = expected(&records);
    let path = write_records(dir.path(), "graph.jsonl", &records);
    run(&pipeline_yaml(&path, "", &url, &graph, ""), dir.path()).await;

    let config: stages::falkordb::FalkorDbConfig =
        serde_json::from_value(json!({ "url": url, "graph": graph })).unwrap();
    let ctx = BuildContext::standalone("graph", dir.path());
    let index = config.open_graph_index(&ctx).await.unwrap().unwrap();
    assert!(index.describe().contains(&graph));

    // Entities mentioned in chunk-3 are exactly those the input put there.
    let want: BTreeSet<String> = records[3]
        .payload
        .clone()
        .pipe_graph()
        .entities
        .iter()
        .map(|e| e.id.clone())
        .collect();
    let got: BTreeSet<String> = index
        .entities_in_chunks(&["chunk-3".into()])
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(got, want);

    // Facts about the CDR, strongest first.
    let cdr = entity_id("Person", "CDR");
    let facts = index
        .facts_about(std::slice::from_ref(&cdr), 3)
        .await
        .unwrap();
    assert_eq!(facts.len(), 3);
    assert!(facts.windows(2).all(|w| w[0].weight >= w[1].weight));
    let strongest = relations
        .iter()
        .filter(|(id, _)| {
            records.iter().any(|r| {
                r.payload
                    .clone()
                    .pipe_graph()
                    .relations
                    .iter()
                    .any(|rel| &rel.id == *id && (rel.source == cdr || rel.target == cdr))
            })
        })
        .map(|(_, chunks)| chunks.len())
        .max()
        .unwrap();
    assert_eq!(facts[0].weight, strongest as f64);
    assert_eq!(facts[0].source, "CDR");
    assert_eq!(facts[0].relation, "MENTIONS");

    // Export: every entity and relation, with names, types, weights and chunk provenance.
    let exported = index.export().await.unwrap();
    assert_eq!(exported.entities.len(), entities.len());
    assert_eq!(exported.relations.len(), relations.len());
    for relation in &exported.relations {
        assert_eq!(relation.weight, relations[&relation.id].len() as f64);
        assert_eq!(relation.mentions.len(), relations[&relation.id].len());
    }
    let odyssey = exported
        .entities
        .iter()
        .find(|e| e.name == "Odyssey")
        .unwrap();
    assert_eq!(odyssey.entity_type, "SpaceCraft");
    assert_eq!(odyssey.aliases, vec!["ODYSSEY"]);

    // A graph that was never written reads as empty, not as an error.
    let empty: stages::falkordb::FalkorDbConfig =
        serde_json::from_value(json!({ "url": url, "graph": graph_name("never_written") }))
            .unwrap();
    let index = empty.open_graph_index(&ctx).await.unwrap().unwrap();
    assert!(index.export().await.unwrap().entities.is_empty());
    client(&url, &graph).await.delete_graph().await.unwrap();
}

trait PipeGraph {
    fn pipe_graph(self) -> Graph;
}

impl PipeGraph for Payload {
    fn pipe_graph(self) -> Graph {
        match self {
            Payload::Graph(g) => g,
            other => panic!("not a graph: {other:?}"),
        }
    }
}

/// A FalkorDB of the test's own (AOF, fsync on every write), so it can be killed.
struct OwnServer {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
    server: String,
    module: String,
}

impl OwnServer {
    fn start(server: &str, module: &str) -> OwnServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Self::spawn(server, module, port, dir.path());
        OwnServer {
            child,
            port,
            dir,
            server: server.into(),
            module: module.into(),
        }
    }

    fn spawn(server: &str, module: &str, port: u16, dir: &Path) -> std::process::Child {
        let port_text = port.to_string();
        let child = std::process::Command::new(server)
            .args([
                "--port",
                port_text.as_str(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--loadmodule",
                module,
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown, no final fsync — only what the AOF already holds survives.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn restart(&mut self) {
        self.child = Self::spawn(&self.server, &self.module, self.port, self.dir.path());
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_store_killed_mid_run_loses_no_record() {
    if falkordb_url("a_store_killed_mid_run_loses_no_record").is_none() {
        return;
    }
    let (Ok(server), Ok(module)) = (
        std::env::var("FALKORDB_REDIS_SERVER"),
        std::env::var("FALKORDB_MODULE"),
    ) else {
        eprintln!(
            "skipped: FALKORDB_REDIS_SERVER / FALKORDB_MODULE not set (a_store_killed_mid_run_\
             loses_no_record starts and kills a server of its own; scripts/falkordb.sh start \
             prints both)"
        );
        return;
    };
    let mut own = OwnServer::start(&server, &module);
    let url = own.url();
    let graph = "killed";
    let dir = tempfile::tempdir().unwrap();
    let records = extraction(400);
    let path = write_records(dir.path(), "graph.jsonl", &records);
    // ~2.4 s of input, 10 records per batch, each batch fsynced before it counts.
    let yaml = pipeline_yaml(
        &path,
        ", delay_ms: 6",
        &url,
        graph,
        ", batch: 10, fsync: true",
    );
    let prepared = prepare(&yaml, dir.path()).await.unwrap();
    let (report, ()) = tokio::join!(prepared.run(), async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        own.kill();
        tokio::time::sleep(Duration::from_millis(800)).await;
        own.restart();
    });
    let report = report.unwrap();

    assert_eq!(report.status, RunStatus::Completed);
    let sink = stage(&report, "graph");
    assert!(
        sink.retries > 0,
        "the kill must have failed some batch: {sink:?}"
    );
    let dead = dead_lettered_ids(&report);
    assert_eq!(sink.received, records.len() as u64);
    assert_eq!(
        sink.committed.unwrap() + sink.dead_lettered,
        records.len() as u64,
        "every record committed or dead-lettered: {sink:?}"
    );
    assert_eq!(dead.len() as u64, sink.dead_lettered);

    // What was committed is in the store (the AOF survived the SIGKILL); nothing else is.
    let committed: Vec<Record> = records
        .iter()
        .filter(|r| !dead.contains(&r.id))
        .cloned()
        .collect();
    let (want, want_relations) = expected(&committed);
    let (all, all_relations) = expected(&records);
    let db = client(&url, graph).await;
    let stored = db
        .ro_query("MATCH (n:Entity) RETURN n.id", &Map::new())
        .await
        .unwrap();
    let stored: BTreeSet<String> = stored
        .rows
        .into_iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    assert!(
        want.is_subset(&stored),
        "committed entities missing after the kill"
    );
    assert!(stored.is_subset(&all));
    let stored_rels = db
        .ro_query("MATCH ()-[r]->() RETURN r.id, r.chunk_ids", &Map::new())
        .await
        .unwrap();
    let stored_rels: BTreeMap<String, Value> = stored_rels
        .rows
        .into_iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].clone()))
        .collect();
    for (id, chunks) in &want_relations {
        let stored_chunks: BTreeSet<String> = stored_rels[id]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert!(
            chunks.is_subset(&stored_chunks),
            "relation {id} lost support"
        );
    }
    assert!(stored_rels.keys().all(|id| all_relations.contains_key(id)));
    eprintln!(
        "killed mid-run: {} records, {} committed, {} dead-lettered, {} batch retries",
        records.len(),
        sink.committed.unwrap(),
        sink.dead_lettered,
        sink.retries
    );
}

#[tokio::test]
async fn an_unreachable_store_stops_the_run_before_any_token_is_spent() {
    // Needs no FalkorDB: a closed port is the point.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (sim, _task) = pipe_simulator::spawn(pipe_simulator::SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prompts.jsonl"), "{\"text\": \"hello\"}\n").unwrap();
    let records = write_records(dir.path(), "graph.jsonl", &extraction(3));
    let yaml = format!(
        r#"
resources:
  providers:
    llm: {{ kind: openai, model: gpt-4o-mini, base_url: "http://{sim}/v1", api_key: k }}
stages:
  - id: read
    kind: files
    config: {{ path: "{dir}", glob: "prompts.jsonl", text_field: text }}
  - id: ask
    kind: llm
    inputs: [read]
    config: {{ provider: llm, prompt: "Say hi: {{{{ text }}}}", max_tokens: 5 }}
  - id: out
    kind: jsonl
    inputs: [ask]
    config: {{ path: "{dir}/out.jsonl" }}
  - id: replay
    kind: replay
    config: {{ path: "{records}" }}
  - id: graph
    kind: falkordb
    inputs: [replay]
    config: {{ url: "redis://user:hunter2@127.0.0.1:{closed}" }}
"#,
        dir = dir.path().display(),
        records = records.display()
    );
    let error = match prepare(&yaml, dir.path()).await {
        Ok(_) => panic!("the run must not start"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("stage `graph` could not start"), "{error}");
    assert!(
        error.contains(&format!("redis://user:***@127.0.0.1:{closed}")),
        "names the URL: {error}"
    );
    assert!(!error.contains("hunter2"), "never the password: {error}");
    let stats: Value = reqwest::get(format!("http://{sim}/_sim/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["total_requests"],
        json!(0),
        "no call reached the model server"
    );
    assert!(!dir.path().join("out.jsonl").exists());
}
