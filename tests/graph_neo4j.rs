//! The `neo4j` sink against a real Neo4j, when there is one: set NEO4J_URI (and NEO4J_USER,
//! default `neo4j`, and NEO4J_PASSWORD), e.g.
//!
//!   docker run -p 7687:7687 -e NEO4J_AUTH=neo4j/password neo4j:5
//!   NEO4J_URI=neo4j://localhost:7687 NEO4J_PASSWORD=password cargo test --test graph_neo4j
//!
//! Without NEO4J_URI every test prints "skipped: NEO4J_URI not set". The tests touch only
//! nodes whose ids start with their own prefix, and delete them at the end. The Cypher they
//! run is pinned by the builder's unit tests and run for real against FalkorDB in
//! tests/graph_falkordb.rs.

use connectors::{Neo4jClient, Neo4jSettings};
use pipeline::{
    BuildContext, BuiltStage, Entity, Graph, Mention, Payload, Provenance, Record, Relation, Sink,
    StageConfig,
};
use serde_json::{Map, Value, json};

struct Neo4jEnv {
    uri: String,
    user: String,
    password: String,
}

fn neo4j(test: &str) -> Option<Neo4jEnv> {
    match std::env::var("NEO4J_URI") {
        Ok(uri) if !uri.trim().is_empty() => Some(Neo4jEnv {
            uri,
            user: std::env::var("NEO4J_USER").unwrap_or_else(|_| "neo4j".into()),
            password: std::env::var("NEO4J_PASSWORD").unwrap_or_default(),
        }),
        _ => {
            eprintln!("skipped: NEO4J_URI not set ({test})");
            None
        }
    }
}

fn prefix(test: &str) -> String {
    format!("pipe-test-{test}-{}-", std::process::id())
}

async fn client(env: &Neo4jEnv) -> Neo4jClient {
    Neo4jClient::connect(&Neo4jSettings {
        uri: env.uri.clone(),
        user: env.user.clone(),
        password: env.password.clone(),
        database: None,
        max_connections: 4,
    })
    .await
    .expect("connect to Neo4j")
}

async fn sink(env: &Neo4jEnv, batch: usize) -> std::sync::Arc<dyn Sink> {
    let config: stages::neo4j::Neo4jConfig = serde_json::from_value(json!({
        "uri": env.uri, "user": env.user, "password": env.password, "batch": batch
    }))
    .unwrap();
    let dir = std::env::temp_dir();
    match config
        .build(&BuildContext::standalone("neo4j", &dir))
        .await
        .unwrap()
    {
        BuiltStage::Sink(sink) => sink,
        _ => panic!("neo4j is a sink"),
    }
}

fn params(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

async fn counts(client: &Neo4jClient, prefix: &str) -> (i64, i64) {
    let p = params(&[("p", json!(prefix))]);
    let nodes = client
        .read(
            "MATCH (n:Entity) WHERE n.id STARTS WITH $p RETURN count(n) AS c",
            &p,
        )
        .await
        .unwrap();
    let rels = client
        .read(
            "MATCH (s:Entity)-[r]->() WHERE s.id STARTS WITH $p RETURN count(r) AS c",
            &p,
        )
        .await
        .unwrap();
    (
        nodes[0]["c"].as_i64().unwrap(),
        rels[0]["c"].as_i64().unwrap(),
    )
}

async fn clean(client: &Neo4jClient, prefix: &str) {
    client
        .write(&[(
            "MATCH (n:Entity) WHERE n.id STARTS WITH $p DETACH DELETE n".into(),
            params(&[("p", json!(prefix))]),
        )])
        .await
        .unwrap();
}

fn records(prefix: &str, chunks: usize) -> Vec<Record> {
    (0..chunks)
        .map(|c| {
            let mention = Mention {
                document_id: "day3".into(),
                chunk_id: format!("{prefix}chunk-{c}"),
                source_path: Some("day3.txt".into()),
                char_span: None,
            };
            let entity = |name: &str, kind: &str| Entity {
                id: format!("{prefix}{kind}-{name}"),
                name: name.into(),
                entity_type: kind.into(),
                aliases: vec![name.to_uppercase()],
                descriptions: vec![format!("{name} in chunk {c}")],
                mentions: vec![mention.clone()],
                ..Entity::default()
            };
            let speaker = entity(["CDR", "CMP", "LMP"][c % 3], "Person");
            let thing = entity(
                ["O2 tank", "Odyssey", "Aquarius", "DSKY"][c % 4],
                "space craft",
            );
            let relation = Relation {
                id: format!("{}-MENTIONS-{}", speaker.id, thing.id),
                source: speaker.id.clone(),
                target: thing.id.clone(),
                relation_type: "MENTIONS".into(),
                mentions: vec![mention.clone()],
                weight: 1.0,
                ..Relation::default()
            };
            Record::new(
                format!("{prefix}record-{c}"),
                Provenance {
                    document_id: "day3".into(),
                    ..Provenance::default()
                },
                Payload::Graph(Graph {
                    extractor: "test".into(),
                    entities: vec![speaker, thing],
                    relations: vec![relation],
                }),
            )
        })
        .collect()
}

#[tokio::test]
async fn neo4j_rewrites_are_idempotent_and_read_back() {
    let Some(env) = neo4j("neo4j_rewrites_are_idempotent_and_read_back") else {
        return;
    };
    let prefix = prefix("idem");
    let db = client(&env).await;
    let data = records(&prefix, 24);
    let sink = sink(&env, 10).await;
    for batch in data.chunks(10) {
        let written = sink.write(batch).await.unwrap();
        assert!(written.failed.is_empty());
        assert!(written.durable);
    }
    // 3 speakers + 4 things; 12 distinct (speaker, thing) pairs over 24 chunks.
    assert_eq!(counts(&db, &prefix).await, (7, 12));
    let weights = db
        .read(
            "MATCH (s:Entity)-[r:MENTIONS]->() WHERE s.id STARTS WITH $p \
             RETURN r.weight AS w, size(r.chunk_ids) AS n",
            &params(&[("p", json!(prefix))]),
        )
        .await
        .unwrap();
    for row in &weights {
        assert_eq!(row["w"].as_f64().unwrap(), 2.0, "each pair in 2 chunks");
        assert_eq!(row["n"].as_i64().unwrap(), 2);
    }
    let labels = db
        .read(
            "MATCH (n:SpaceCraft) WHERE n.id STARTS WITH $p RETURN count(n) AS c",
            &params(&[("p", json!(prefix))]),
        )
        .await
        .unwrap();
    assert_eq!(
        labels[0]["c"],
        json!(4),
        "`space craft` became the SpaceCraft label"
    );

    for batch in data.chunks(7) {
        sink.write(batch).await.unwrap();
    }
    assert_eq!(
        counts(&db, &prefix).await,
        (7, 12),
        "re-writing adds nothing"
    );
    let again = db
        .read(
            "MATCH (s:Entity)-[r:MENTIONS]->() WHERE s.id STARTS WITH $p \
             RETURN r.weight AS w, size(r.chunk_ids) AS n",
            &params(&[("p", json!(prefix))]),
        )
        .await
        .unwrap();
    assert_eq!(again, weights, "weights and lists unchanged");

    let config: stages::neo4j::Neo4jConfig = serde_json::from_value(json!({
        "uri": env.uri, "user": env.user, "password": env.password
    }))
    .unwrap();
    let dir = std::env::temp_dir();
    let index = config
        .open_graph_index(&BuildContext::standalone("neo4j", &dir))
        .await
        .unwrap()
        .unwrap();
    let found = index
        .entities_in_chunks(&[format!("{prefix}chunk-0")])
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    let cdr = format!("{prefix}Person-CDR");
    let facts = index.facts_about(&[cdr], 10).await.unwrap();
    assert_eq!(facts.len(), 4);
    assert!(facts.iter().all(|f| f.source == "CDR" && f.weight == 2.0));
    clean(&db, &prefix).await;
}

#[tokio::test]
async fn neo4j_rejects_hostile_labels_alone() {
    let Some(env) = neo4j("neo4j_rejects_hostile_labels_alone") else {
        return;
    };
    let prefix = prefix("hostile");
    let db = client(&env).await;
    let mut data = records(&prefix, 4);
    if let Payload::Graph(g) = &mut data[1].payload {
        g.entities[0].entity_type = "Person`) DETACH DELETE n //".into();
    }
    if let Payload::Graph(g) = &mut data[2].payload {
        g.entities[0].name = "'}) MATCH (n) DETACH DELETE n //".into();
    }
    let sink = sink(&env, 10).await;
    let written = sink.write(&data).await.unwrap();
    assert_eq!(written.failed.len(), 1);
    assert_eq!(written.failed[0].0, 1);
    let stored = db
        .read(
            "MATCH (n:Entity) WHERE n.name = $name AND n.id STARTS WITH $p RETURN count(n) AS c",
            &params(&[
                ("p", json!(prefix)),
                ("name", json!("'}) MATCH (n) DETACH DELETE n //")),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(
        stored[0]["c"],
        json!(1),
        "a hostile value is stored verbatim"
    );
    clean(&db, &prefix).await;
}

#[tokio::test]
async fn neo4j_wrong_password_stops_at_build() {
    let Some(env) = neo4j("neo4j_wrong_password_stops_at_build") else {
        return;
    };
    let config: stages::neo4j::Neo4jConfig = serde_json::from_value(json!({
        "uri": env.uri, "user": env.user, "password": "certainly-not-the-password"
    }))
    .unwrap();
    let dir = std::env::temp_dir();
    let error = match config.build(&BuildContext::standalone("neo4j", &dir)).await {
        Ok(_) => panic!("a wrong password must not build"),
        Err(e) => e,
    };
    assert_eq!(error.class, pipeline::ErrorClass::Run);
    assert!(!error.message.contains("certainly-not-the-password"));
}

#[tokio::test]
async fn an_unreachable_neo4j_stops_at_build_naming_the_uri() {
    // Needs no server: a closed port is the point (runs everywhere).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config: stages::neo4j::Neo4jConfig = serde_json::from_value(json!({
        "uri": format!("neo4j://127.0.0.1:{closed}"), "password": "hunter2"
    }))
    .unwrap();
    let dir = std::env::temp_dir();
    let error = match config.build(&BuildContext::standalone("neo4j", &dir)).await {
        Ok(_) => panic!("nothing listens there"),
        Err(e) => e,
    };
    assert_eq!(error.class, pipeline::ErrorClass::Run);
    assert!(
        error
            .message
            .contains(&format!("neo4j://127.0.0.1:{closed}")),
        "{}",
        error.message
    );
    assert!(!error.message.contains("hunter2"));
}
