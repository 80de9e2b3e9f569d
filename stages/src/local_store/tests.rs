use super::*;
use pipeline::record::stable_id;
use pipeline::{Embedded, Mention, Provenance, Relation};

pub(crate) fn entity(name: &str, kind: &str, chunks: &[&str]) -> Entity {
    Entity {
        id: stable_id(&[b"entity", kind.as_bytes(), name.as_bytes()]),
        name: name.into(),
        entity_type: kind.into(),
        aliases: vec![format!("{name} alias")],
        descriptions: vec![format!("{name} is a {kind}")],
        mentions: chunks
            .iter()
            .map(|c| Mention {
                document_id: "doc".into(),
                chunk_id: c.to_string(),
                source_path: Some("day03.txt".into()),
                char_span: Some([10, 20]),
            })
            .collect(),
        ..Default::default()
    }
}

pub(crate) fn relation(source: &Entity, kind: &str, target: &Entity, chunks: &[&str]) -> Relation {
    Relation {
        id: stable_id(&[
            b"relation",
            source.id.as_bytes(),
            kind.as_bytes(),
            target.id.as_bytes(),
        ]),
        source: source.id.clone(),
        target: target.id.clone(),
        relation_type: kind.into(),
        weight: chunks.len() as f64,
        mentions: chunks
            .iter()
            .map(|c| Mention {
                document_id: "doc".into(),
                chunk_id: c.to_string(),
                source_path: None,
                char_span: None,
            })
            .collect(),
        ..Default::default()
    }
}

fn graph_record(id: &str, entities: Vec<Entity>, relations: Vec<Relation>) -> Record {
    Record::new(
        id.into(),
        Provenance {
            document_id: "doc".into(),
            ..Default::default()
        },
        Payload::Graph(Graph {
            extractor: "test".into(),
            entities,
            relations,
        }),
    )
}

fn vector_record(id: &str, text: &str, vector: Vec<f32>, model: &str) -> Record {
    Record::new(
        id.into(),
        Provenance {
            document_id: "doc".into(),
            source_path: Some("day03.txt".into()),
            chunk_index: Some(3),
            char_span: Some([100, 200]),
            ..Default::default()
        },
        Payload::Embedded(Embedded {
            text: text.into(),
            context: Some("context".into()),
            vector,
            model: model.into(),
        }),
    )
}

fn config(dir: &std::path::Path) -> LocalStoreConfig {
    LocalStoreConfig {
        path: Some(dir.join("store.sqlite").display().to_string()),
        batch: 10,
        replace_vectors: false,
    }
}

async fn sink(config: &LocalStoreConfig, ctx: &BuildContext) -> Arc<dyn Sink> {
    match config.build(ctx).await.unwrap() {
        BuiltStage::Sink(sink) => sink,
        _ => panic!("not a sink"),
    }
}

/// A context downstream of an `embed` stage that published `model` / `dims`.
fn ctx_after_embed(dir: &std::path::Path, model: &str, dims: u64) -> BuildContext {
    let embed = BuildContext::standalone("embed", dir);
    embed.publish("embedding.model", serde_json::json!(model));
    embed.publish("embedding.dimensions", serde_json::json!(dims));
    BuildContext {
        stage_id: "store".into(),
        upstream: vec!["embed".into()],
        ..embed
    }
}

fn apollo_batch() -> Vec<Record> {
    let cdr = entity("CDR", "Person", &["c1", "c2"]);
    let tank = entity("O2 tank 2", "System", &["c2"]);
    let houston = entity("Houston", "Organization", &["c1"]);
    vec![
        graph_record(
            "g1",
            vec![cdr.clone(), tank.clone(), houston.clone()],
            vec![
                relation(&cdr, "REPORTS_PROBLEM_WITH", &tank, &["c2"]),
                relation(&cdr, "TALKS_TO", &houston, &["c1", "c2"]),
            ],
        ),
        vector_record(
            "c1",
            "CDR: Houston, we've had a problem.",
            vec![1.0, 0.0, 0.0],
            "m",
        ),
        vector_record(
            "c2",
            "O2 tank 2 pressure reads zero.",
            vec![0.0, 2.0, 0.0],
            "m",
        ),
        vector_record("c3", "Comet Bennett photographs.", vec![0.0, 0.0, 3.0], "m"),
    ]
}

fn counts(dir: &std::path::Path) -> Counts {
    StoreDb::open(&dir.join("store.sqlite"), false)
        .unwrap()
        .counts()
        .unwrap()
}

#[tokio::test]
async fn writing_the_same_records_twice_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let ctx = BuildContext::standalone("store", dir.path());
    let batch = apollo_batch();
    let first = sink(&config, &ctx).await;
    let written = first.write(&batch).await.unwrap();
    assert!(written.failed.is_empty(), "{:?}", written.failed);
    assert!(written.durable);
    first.finish(&InputEnd::Complete).await.unwrap();
    let once = counts(dir.path());
    assert_eq!(
        once,
        Counts {
            entities: 3,
            relations: 2,
            entity_mentions: 4,
            relation_mentions: 3,
            chunks: 3
        }
    );
    let exported_once = StoreDb::open(&dir.path().join("store.sqlite"), false)
        .unwrap()
        .export()
        .unwrap();

    // A second run (a new sink on the same file), and the same batch twice within it.
    let second = sink(&config, &ctx).await;
    second.write(&batch).await.unwrap();
    second.write(&batch).await.unwrap();
    assert_eq!(counts(dir.path()), once);
    let exported_twice = StoreDb::open(&dir.path().join("store.sqlite"), false)
        .unwrap()
        .export()
        .unwrap();
    // Lists did not grow and weights did not add up.
    assert_eq!(exported_twice, exported_once);
    let talks = exported_once
        .relations
        .iter()
        .find(|r| r.relation_type == "TALKS_TO")
        .unwrap();
    assert_eq!(talks.weight, 2.0);
    let cdr = exported_once
        .entities
        .iter()
        .find(|e| e.name == "CDR")
        .unwrap();
    assert_eq!(cdr.aliases, vec!["CDR alias"]);
    assert_eq!(cdr.mentions.len(), 2);
}

#[tokio::test]
async fn facts_from_several_records_merge_as_set_unions_and_weights_count_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = sink(
        &config(dir.path()),
        &BuildContext::standalone("store", dir.path()),
    )
    .await;
    let a = entity("CDR", "Person", &["c1"]);
    let b = entity("O2 tank 2", "System", &["c1"]);
    let mut a2 = entity("CDR", "Person", &["c2"]);
    a2.aliases = vec!["Jim Lovell".into(), "CDR alias".into()];
    a2.descriptions = vec!["commander".into()];
    a2.confidence = Some(0.9);
    let batch = vec![
        graph_record(
            "g1",
            vec![a.clone(), b.clone()],
            vec![relation(&a, "SEES", &b, &["c1"])],
        ),
        // The same fact seen in another chunk, and again in the first one.
        graph_record(
            "g2",
            vec![a2.clone(), b.clone()],
            vec![relation(&a2, "SEES", &b, &["c2", "c1"])],
        ),
    ];
    assert!(store.write(&batch).await.unwrap().failed.is_empty());
    let graph = StoreDb::open(&dir.path().join("store.sqlite"), false)
        .unwrap()
        .export()
        .unwrap();
    let cdr = graph.entities.iter().find(|e| e.name == "CDR").unwrap();
    assert_eq!(cdr.aliases, vec!["CDR alias", "Jim Lovell"]);
    assert_eq!(cdr.descriptions, vec!["CDR is a Person", "commander"]);
    assert_eq!(cdr.confidence, Some(0.9));
    let chunks: Vec<&str> = cdr.mentions.iter().map(|m| m.chunk_id.as_str()).collect();
    assert_eq!(chunks, vec!["c1", "c2"]);
    assert_eq!(graph.relations.len(), 1);
    assert_eq!(
        graph.relations[0].weight, 2.0,
        "two distinct chunks support it"
    );
}

#[tokio::test]
async fn search_reads_back_nearest_chunks_entities_and_strongest_facts() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let ctx = BuildContext::standalone("store", dir.path());
    let store = sink(&config, &ctx).await;
    store.write(&apollo_batch()).await.unwrap();

    let vectors = config.open_vector_index(&ctx).await.unwrap().unwrap();
    assert_eq!(vectors.models().await.unwrap(), vec!["m"]);
    // Closest to c2 (the y axis), then c1.
    let hits = vectors.nearest(&[0.3, 1.0, 0.0], 2).await.unwrap();
    let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, vec!["c2", "c1"]);
    assert!(
        (hits[0].score - 1.0 / 1.09f32.sqrt()).abs() < 1e-5,
        "{}",
        hits[0].score
    );
    assert_eq!(hits[0].text, "O2 tank 2 pressure reads zero.");
    assert_eq!(hits[0].context.as_deref(), Some("context"));
    assert_eq!(hits[0].provenance.source_path.as_deref(), Some("day03.txt"));
    assert_eq!(hits[0].provenance.chunk_index, Some(3));
    assert_eq!(hits[0].provenance.char_span, Some([100, 200]));
    // k larger than the store: everything, best first.
    assert_eq!(
        vectors.nearest(&[0.0, 0.0, 1.0], 10).await.unwrap().len(),
        3
    );
    // A question embedded with another number of dimensions is an error, not an empty list.
    let error = vectors.nearest(&[1.0, 0.0], 3).await.unwrap_err();
    assert!(error.message.contains("3-dimensional"), "{error}");

    let graph = config.open_graph_index(&ctx).await.unwrap().unwrap();
    let entities = graph.entities_in_chunks(&["c2".to_string()]).await.unwrap();
    let names: Vec<&str> = entities.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, vec!["CDR", "O2 tank 2"]);
    let ids: Vec<String> = entities.iter().map(|e| e.id.clone()).collect();
    let facts = graph.facts_about(&ids, 10).await.unwrap();
    let lines: Vec<String> = facts
        .iter()
        .map(|f| {
            format!(
                "{} -[{}]-> {} ({})",
                f.source, f.relation, f.target, f.weight
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            "CDR -[TALKS_TO]-> Houston (2)",
            "CDR -[REPORTS_PROBLEM_WITH]-> O2 tank 2 (1)"
        ]
    );
    assert_eq!(facts[0].source_type, "Person");
    assert_eq!(facts[0].target_type, "Organization");
    assert_eq!(graph.facts_about(&ids, 1).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_bad_record_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = sink(
        &config(dir.path()),
        &BuildContext::standalone("store", dir.path()),
    )
    .await;
    let mut unnormalised = entity("CDR", "Person", &["c1"]);
    unnormalised.id.clear();
    let batch = vec![
        vector_record("c1", "one", vec![1.0, 0.0], "m"),
        graph_record("g-bad", vec![unnormalised], vec![]),
        vector_record("c2", "zero", vec![0.0, 0.0], "m"),
        vector_record("c3", "wrong size", vec![1.0, 0.0, 0.0], "m"),
        vector_record("c4", "other model", vec![1.0, 1.0], "other"),
        vector_record("c5", "two", vec![0.0, 1.0], "m"),
    ];
    let written = store.write(&batch).await.unwrap();
    let failed: Vec<usize> = written.failed.iter().map(|(i, _)| *i).collect();
    assert_eq!(failed, vec![1, 2, 3, 4]);
    assert!(
        written.failed[0].1.message.contains("normalize"),
        "{:?}",
        written.failed[0].1
    );
    assert!(written.failed[1].1.message.contains("zero"));
    assert!(written.failed[2].1.message.contains("3 dimensions"));
    assert!(written.failed[3].1.message.contains("`other`"));
    assert!(
        written
            .failed
            .iter()
            .all(|(_, e)| e.class == pipeline::ErrorClass::Record)
    );
    assert_eq!(counts(dir.path()).chunks, 2);
}

#[tokio::test]
async fn a_store_of_another_model_stops_the_build_unless_told_to_replace() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    let first = sink(&config, &ctx_after_embed(dir.path(), "hashing-3", 3)).await;
    first
        .write(&apollo_batch()[1..])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // apollo_batch's vectors say model `m`: refused against the announced `hashing-3`.
    assert_eq!(counts(dir.path()).chunks, 0);
    let batch: Vec<Record> = (0..3)
        .map(|i| {
            let mut v = vec![0.0; 3];
            v[i] = 1.0;
            vector_record(&format!("c{i}"), "t", v, "hashing-3")
        })
        .collect();
    assert!(first.write(&batch).await.unwrap().failed.is_empty());

    let ctx = ctx_after_embed(dir.path(), "all-MiniLM-L6-v2", 384);
    let error = match config.build(&ctx).await {
        Err(e) => e,
        Ok(_) => panic!("a store of another model must not open"),
    };
    assert_eq!(error.class, pipeline::ErrorClass::Run);
    assert!(
        error.message.contains("3 vectors of model `hashing-3`"),
        "{error}"
    );
    assert!(
        error
            .message
            .contains("`all-MiniLM-L6-v2` (384 dimensions)"),
        "{error}"
    );
    assert!(error.message.contains("replace_vectors"), "{error}");

    config.replace_vectors = true;
    sink(&config, &ctx).await;
    assert_eq!(counts(dir.path()).chunks, 0);
    assert!(
        ctx.notes.lines()[0].starts_with("replaced 3 vectors"),
        "{:?}",
        ctx.notes.lines()
    );
}

#[tokio::test]
async fn reading_a_store_that_was_never_written_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let ctx = BuildContext::standalone("store", dir.path());
    let error = match config.open_vector_index(&ctx).await.unwrap() {
        Err(e) => e,
        Ok(_) => panic!("opened a missing store"),
    };
    assert!(error.message.starts_with("no local store at"), "{error}");
    // The default path is under the state directory.
    let default = LocalStoreConfig {
        path: None,
        batch: 1,
        replace_vectors: false,
    };
    assert_eq!(
        default.store_path(&ctx),
        dir.path().join(".pipe/store.sqlite")
    );
}

#[test]
fn normalised_vectors_have_unit_length_and_zero_is_refused() {
    let v = normalised(&[3.0, 4.0]).unwrap();
    assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    assert!(normalised(&[0.0, 0.0]).is_none());
    assert!(normalised(&[f32::NAN, 1.0]).is_none());
}
