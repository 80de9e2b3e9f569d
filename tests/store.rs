//! The embedded store end to end: a pipeline writes the graph and the vectors into
//! `local_store` (a real SQLite file), runs again without adding anything, and `pipe search` /
//! `pipe graph export` read it back — GraphML checked by an XML parser, hostile names intact.

mod store_support;
mod support;

use pipe::cli::export::{self, Format};
use pipe::cli::search::{self, Want};
use pipeline::config::{Env, Locator};
use pipeline::runtime::{self, RunOptions, RunReport};
use pipeline::{
    BuildContext, BuiltStage, Entity, Graph, InputEnd, Mention, Payload, Plan, Provenance, Record,
    Registry, Relation, StageConfig,
};
use stages::local_store::{Counts, LocalStoreConfig, StoreDb};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

const PIPE: &str = env!("CARGO_BIN_EXE_pipe");

fn registry() -> Registry {
    let mut registry = support::registry();
    store_support::register(&mut registry);
    registry
}

fn plan(yaml: &str) -> Plan {
    let locator = Locator {
        file: Arc::from("test.yaml"),
        overrides: Vec::new(),
    };
    pipeline::config::load_str(yaml, &locator, &registry(), &Env::default())
        .unwrap_or_else(|d| panic!("invalid test pipeline:\n{d}"))
}

async fn run(yaml: &str, state: &Path) -> RunReport {
    let prepared = runtime::prepare(plan(yaml), RunOptions::new(state.to_path_buf()))
        .await
        .unwrap();
    prepared.run().await.unwrap()
}

/// Three short transcript days.
fn corpus(dir: &Path) {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(
        corpus.join("day01.txt"),
        "[000:01:00] CDR: Liftoff. The clock is running. Houston, the roll program is in.\n\
         [000:02:00] CC: Roger, we copy the roll program. Saturn looks good.\n",
    )
    .unwrap();
    std::fs::write(
        corpus.join("day03.txt"),
        "[055:55:20] CDR: Houston, we've had a problem. The O2 tank pressure is dropping.\n\
         [055:56:00] CC: Roger, we copy the problem with the O2 tank. Stand by.\n",
    )
    .unwrap();
    std::fs::write(
        corpus.join("day04.txt"),
        "[080:00:00] LMP: Aquarius is our lifeboat now. The LM power is holding.\n\
         [080:01:00] CC: Houston copies, Aquarius looks good for the burn.\n",
    )
    .unwrap();
}

fn pipeline_yaml(dir: &Path) -> String {
    format!(
        r#"
stages:
  - id: read
    kind: files
    config: {{ path: "{dir}/corpus", glob: "*.txt" }}
  - id: chunk
    kind: chunk
    inputs: [read]
    config: {{ max_tokens: 40, overlap: 0 }}
  - id: embed
    kind: toy_embed
    inputs: [chunk]
    config: {{ dims: 512 }}
  - id: extract
    kind: toy_extract
    inputs: [chunk]
    config:
      names: {{ CDR: Person, Houston: Organization, "O2 tank": System, Aquarius: Spacecraft }}
  - id: store
    kind: local_store
    inputs: [embed, extract]
    config: {{ path: "{dir}/store.sqlite" }}
"#,
        dir = dir.display()
    )
}

fn counts(path: &Path) -> Counts {
    StoreDb::open(path, false).unwrap().counts().unwrap()
}

fn store_report(report: &RunReport) -> &pipeline::runtime::StageReport {
    support::stage(report, "store")
}

#[tokio::test]
async fn a_pipeline_fills_the_local_store_and_a_rerun_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    let yaml = pipeline_yaml(dir.path());
    let state = dir.path().join("state");
    let first = run(&yaml, &state).await;
    let store = store_report(&first);
    // Every chunk arrives twice (its embedding, its graph), all committed, nothing lost.
    let chunks = support::stage(&first, "chunk").out;
    assert!(chunks >= 6, "{chunks} chunks");
    assert_eq!(store.received, 2 * chunks);
    assert_eq!(store.committed, Some(store.received));
    assert_eq!(store.dead_lettered, 0);
    let once = counts(&dir.path().join("store.sqlite"));
    assert_eq!(once.chunks, chunks);
    assert_eq!(once.entities, 4);
    assert!(once.relations >= 3, "{once:?}");
    assert!(
        store
            .notes
            .iter()
            .any(|n| n.contains("4 entities") && n.contains("vectors of toy-hash-512")),
        "{:?}",
        store.notes
    );

    let second = run(&yaml, &state).await;
    assert_eq!(store_report(&second).committed, store.committed);
    assert_eq!(counts(&dir.path().join("store.sqlite")), once);
}

#[tokio::test]
async fn search_finds_the_chunk_its_entities_and_their_strongest_facts() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    let yaml = pipeline_yaml(dir.path());
    let state = dir.path().join("state");
    run(&yaml, &state).await;

    let plan = plan(&yaml);
    let want = Want {
        embedder: true,
        vectors: true,
        graph: true,
    };
    let stores = search::open_stores(&plan, &state, want).await.unwrap();
    let answer = search::search(&stores, "problem with the O2 tank pressure", 3, 10)
        .await
        .unwrap();
    assert_eq!(answer.model, "toy-hash-512");
    assert_eq!(answer.hits.len(), 3);
    let top = &answer.hits[0];
    assert!(top.text.contains("O2 tank"), "{}", top.text);
    assert_eq!(top.provenance.source_path.as_deref(), Some("day03.txt"));
    assert!(answer.hits.windows(2).all(|w| w[0].score >= w[1].score));
    let names: Vec<&str> = answer.entities.iter().map(|e| e.name.as_str()).collect();
    for name in ["CDR", "Houston", "O2 tank"] {
        assert!(names.contains(&name), "{names:?}");
    }
    assert!(!answer.facts.is_empty());
    let lines: Vec<String> = answer.facts.iter().map(search::fact_line).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("CDR -[CO_OCCURS]-> Houston (w ")),
        "{lines:?}"
    );
    assert!(
        answer.facts.windows(2).all(|w| w[0].weight >= w[1].weight),
        "{lines:?}"
    );
    let text = search::render(&answer);
    assert!(text.contains("score "), "{text}");
    assert!(text.contains("day03.txt · chunk "), "{text}");
    assert!(text.contains("facts:\n  "), "{text}");
    // JSON carries everything.
    let json = serde_json::to_value(&answer).unwrap();
    assert_eq!(json["hits"].as_array().unwrap().len(), 3);
    assert!(json["hits"][0]["provenance"]["char_span"].is_array());
}

#[tokio::test]
async fn search_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    let state = dir.path().join("state");
    let want = Want {
        embedder: true,
        vectors: true,
        graph: true,
    };
    // Nothing written yet.
    let plan_ = plan(&pipeline_yaml(dir.path()));
    let stores = search::open_stores(&plan_, &state, want).await.unwrap();
    let error = search::search(&stores, "anything", 3, 5)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("has no stage whose vectors can be searched"),
        "{error}"
    );
    assert!(error.contains("no local store at"), "{error}");

    // A store written by a pipeline without an embedder.
    let no_embedder = format!(
        r#"
stages:
  - id: read
    kind: files
    config: {{ path: "{dir}/corpus", glob: "*.txt" }}
  - id: chunk
    kind: chunk
    inputs: [read]
  - id: extract
    kind: toy_extract
    inputs: [chunk]
    config: {{ names: {{ CDR: Person }} }}
  - id: store
    kind: local_store
    inputs: [extract]
    config: {{ path: "{dir}/graph-only.sqlite" }}
"#,
        dir = dir.path().display()
    );
    run(&no_embedder, &state).await;
    let stores = search::open_stores(&plan(&no_embedder), &state, want)
        .await
        .unwrap();
    let error = search::search(&stores, "anything", 3, 5)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("has no embedding stage"), "{error}");

    // An embedder, and a store holding only the graph: empty for search.
    let empty = no_embedder
        .replace("inputs: [extract]", "inputs: [extract, embed]")
        .replace(
            "  - id: store",
            "  - id: embed\n    kind: toy_embed\n    inputs: [chunk]\n    config: { dims: 8 }\n  - id: store",
        );
    let stores = search::open_stores(&plan(&empty), &state, want)
        .await
        .unwrap();
    let error = search::search(&stores, "anything", 3, 5)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("is empty: run `pipe run test.yaml` first"),
        "{error}"
    );
}

#[tokio::test]
async fn a_question_embedded_with_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    let yaml = pipeline_yaml(dir.path());
    let state = dir.path().join("state");
    run(&yaml, &state).await;
    let other = yaml.replace("dims: 512", "dims: 64");
    let want = Want {
        embedder: true,
        vectors: true,
        graph: false,
    };
    let stores = search::open_stores(&plan(&other), &state, want)
        .await
        .unwrap();
    let error = search::search(&stores, "O2 tank", 3, 5)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("holds vectors of model `toy-hash-512`"),
        "{error}"
    );
    assert!(error.contains("embeds with `toy-hash-64`"), "{error}");
}

/// Names a model might produce, meant to break every output format.
fn hostile_names() -> Vec<String> {
    vec![
        "}) DETACH DELETE n //".into(),
        "Robert'); DROP TABLE entities;--".into(),
        "back`tick``s".into(),
        "\"double\" and 'single' quotes \\ backslash".into(),
        "</data></node><node id=\"evil\">".into(),
        "<![CDATA[ ]]> &amp; &lt; &#0;".into(),
        "Хьюстон — 休斯顿 — ヒューストン 🚀".into(),
        "line\nbreak\ttab\rreturn".into(),
        "x".repeat(10_000),
    ]
}

fn hostile_graph() -> Graph {
    let mut entities: Vec<Entity> = hostile_names()
        .into_iter()
        .enumerate()
        .map(|(i, name)| Entity {
            id: store_support::entity_id(&name, "Weird Type`)"),
            name,
            entity_type: if i % 2 == 0 {
                "Weird Type`)".into()
            } else {
                "Person".into()
            },
            aliases: vec!["a'lias".into(), "ali`as".into()],
            descriptions: vec!["desc <b>\"x\"</b>".into()],
            properties: serde_json::json!({"note": "it's", "nested": {"k": [1, "two"]}})
                .as_object()
                .unwrap()
                .clone(),
            confidence: Some(0.75),
            mentions: vec![Mention {
                document_id: "doc".into(),
                chunk_id: format!("chunk-{i}"),
                source_path: Some("day03.txt".into()),
                char_span: Some([i as u64, i as u64 + 5]),
            }],
        })
        .collect();
    entities.push(Entity {
        id: "control".into(),
        name: "nul\u{0}bell\u{7}".into(),
        entity_type: "Thing".into(),
        ..Default::default()
    });
    let relations = entities
        .windows(2)
        .enumerate()
        .map(|(i, pair)| Relation {
            id: format!("r{i}"),
            source: pair[0].id.clone(),
            target: pair[1].id.clone(),
            relation_type: if i % 2 == 0 {
                "HAS `}) DETACH DELETE n //".into()
            } else {
                "TALKS_TO".into()
            },
            weight: 1.0,
            descriptions: vec![format!("because '{i}'")],
            mentions: vec![Mention {
                document_id: "doc".into(),
                chunk_id: format!("chunk-{i}"),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    Graph {
        extractor: String::new(),
        entities,
        relations,
    }
}

/// Writes `graph` into a local store at `path` the way a run does (through the sink).
async fn write_graph(path: &Path, graph: Graph) {
    let config = LocalStoreConfig {
        path: Some(path.display().to_string()),
        batch: 10,
        replace_vectors: false,
    };
    let dir = path.parent().unwrap();
    let BuiltStage::Sink(sink) = config
        .build(&BuildContext::standalone("store", dir))
        .await
        .unwrap()
    else {
        panic!("not a sink")
    };
    let record = Record::new("g".into(), Provenance::default(), Payload::Graph(graph));
    let written = sink.write(&[record]).await.unwrap();
    assert!(written.failed.is_empty(), "{:?}", written.failed);
    sink.finish(&InputEnd::Complete).await.unwrap();
}

async fn exported_graph(path: &Path) -> Graph {
    StoreDb::open(path, false).unwrap().export().unwrap()
}

/// XML 1.0 has no way to carry these: they are replaced, everything else must survive.
fn xml_representable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

#[tokio::test]
async fn hostile_names_survive_graphml_json_and_cypher_exports() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sqlite");
    let original = hostile_graph();
    write_graph(&path, original.clone()).await;
    let stored = exported_graph(&path).await;
    assert_eq!(stored.entities.len(), original.entities.len());
    assert_eq!(stored.relations.len(), original.relations.len());

    // JSON: lossless.
    let (json, warning) = export::export(&stored, Format::Json);
    assert!(warning.is_none());
    let back: Graph = serde_json::from_str(&json).unwrap();
    assert_eq!(back, stored);
    let mut names: Vec<&str> = back.entities.iter().map(|e| e.name.as_str()).collect();
    let mut expected: Vec<&str> = original.entities.iter().map(|e| e.name.as_str()).collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected);

    // GraphML: parsed back by an XML parser, every name and type as it was.
    let (xml, _) = export::export(&stored, Format::Graphml);
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("invalid XML: {e}"));
    let keys: std::collections::HashMap<&str, &str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("key"))
        .map(|n| {
            (
                n.attribute("id").unwrap(),
                n.attribute("attr.name").unwrap(),
            )
        })
        .collect();
    let data = |node: roxmltree::Node, name: &str, for_edge: bool| -> Option<String> {
        node.children()
            .filter(|c| c.has_tag_name("data"))
            .find(|c| {
                let key = c.attribute("key").unwrap();
                keys[key] == name && key.starts_with("r_") == for_edge
            })
            .map(|c| c.text().unwrap_or("").to_string())
    };
    let nodes: Vec<roxmltree::Node> = doc
        .descendants()
        .filter(|n| n.has_tag_name("node"))
        .collect();
    assert_eq!(nodes.len(), stored.entities.len());
    for entity in &stored.entities {
        let node = nodes
            .iter()
            .find(|n| n.attribute("id") == Some(entity.id.as_str()))
            .unwrap_or_else(|| panic!("no node {}", entity.id));
        assert_eq!(
            data(*node, "name", false).unwrap(),
            xml_representable(&entity.name)
        );
        assert_eq!(data(*node, "type", false).unwrap(), entity.entity_type);
        let aliases: Vec<String> =
            serde_json::from_str(&data(*node, "aliases", false).unwrap()).unwrap();
        assert_eq!(aliases, entity.aliases);
    }
    let edges: Vec<roxmltree::Node> = doc
        .descendants()
        .filter(|n| n.has_tag_name("edge"))
        .collect();
    assert_eq!(edges.len(), stored.relations.len());
    for relation in &stored.relations {
        let edge = edges
            .iter()
            .find(|n| n.attribute("id") == Some(relation.id.as_str()))
            .unwrap();
        assert_eq!(edge.attribute("source"), Some(relation.source.as_str()));
        assert_eq!(data(*edge, "type", true).unwrap(), relation.relation_type);
        assert_eq!(data(*edge, "weight", true).unwrap(), "1");
    }

    // Cypher: one statement per line; unsafe labels and types never appear as labels.
    let (cypher, _) = export::export(&stored, Format::Cypher);
    let statements: Vec<&str> = cypher.lines().filter(|l| !l.starts_with("//")).collect();
    assert_eq!(
        statements.len(),
        stored.entities.len() + stored.relations.len()
    );
    assert!(statements.iter().all(|s| s.ends_with(';')));
    assert!(!cypher.contains(":`Weird Type"), "unsafe label used");
    assert!(!cypher.contains(":`HAS `"), "unsafe relationship type used");
    assert!(cypher.contains("MERGE (n:Entity:`Person` {id: "));
    assert!(cypher.contains("-[r:`RELATED_TO` {id: 'r0'}]->"));
    assert!(cypher.contains(r"SET r.`type` = 'HAS `}) DETACH DELETE n //'"));
    assert!(cypher.contains(r"'Robert\'); DROP TABLE entities;--'"));
    assert!(cypher.contains(r"'line\nbreak\ttab\rreturn'"));
    assert!(cypher.contains(r"'nul\u0000bell\u0007'"));
    // Every string literal closes where it should: outside literals, only Cypher syntax.
    for statement in &statements {
        let outside = strip_literals(statement);
        assert!(!outside.contains("DETACH"), "{outside}");
        assert!(!outside.contains("DROP"), "{outside}");
    }
}

/// The statement with its '…' string literals and `…` names removed (escapes honoured).
fn strip_literals(statement: &str) -> String {
    let mut out = String::new();
    let mut chars = statement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => {
                            chars.next();
                        }
                        '\'' => break,
                        _ => {}
                    }
                }
                out.push_str("''");
            }
            '`' => {
                loop {
                    match chars.next() {
                        Some('`') if chars.peek() == Some(&'`') => {
                            chars.next();
                        }
                        Some('`') | None => break,
                        _ => {}
                    }
                }
                out.push_str("``");
            }
            c => out.push(c),
        }
    }
    out
}

// The `pipe` binary.

fn pipe(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(PIPE)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn reference_pipeline() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines.yaml")
}

#[test]
fn the_binary_says_when_a_pipeline_has_nothing_to_search_or_export() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("chunks.yaml");
    std::fs::write(
        &yaml,
        "stages:\n  - { id: read, kind: files, config: { path: ., glob: \"*.txt\" } }\n  - { id: out, kind: jsonl, inputs: [read], config: { path: out.jsonl } }\n",
    )
    .unwrap();
    let out = pipe(
        dir.path(),
        &["search", "oxygen tank", "--pipeline", "chunks.yaml"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("chunks.yaml has no stage whose vectors can be searched"),
        "{stderr}"
    );
    let out = pipe(
        dir.path(),
        &[
            "graph",
            "export",
            "--format",
            "graphml",
            "--pipeline",
            "chunks.yaml",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("has no stage whose graph can be read back"),
        "{stderr}"
    );
    // A pipeline file that does not exist: the usual diagnostics, exit 2.
    let out = pipe(dir.path(), &["search", "x", "--pipeline", "missing.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(reference_pipeline().exists());
}
