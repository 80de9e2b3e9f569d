//! The reference pipeline (`pipelines.yaml`) run by the real `pipe` binary on the real corpus,
//! with no API key and no server: transcripts → chunks → nlp_extract → normalize → resolve →
//! graph JSONL. Asserts counts that reconcile stage to stage, known entities and relations, a
//! consistent graph (every relation end is a node), and the same graph from a second run.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PIPE: &str = env!("CARGO_BIN_EXE_pipe");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn corpus() -> PathBuf {
    repo().join("../shared/corpus/apollo13/transcripts")
}

/// `pipe ARGS` in `dir` with the reference pipeline copied there, no API key in sight.
fn pipe(dir: &Path, args: &[&str], key: Option<&str>) -> Output {
    std::fs::copy(repo().join("pipelines.yaml"), dir.join("pipelines.yaml")).unwrap();
    let mut command = Command::new(PIPE);
    command
        .args(args)
        .current_dir(dir)
        .env("PIPE_CORPUS", corpus())
        .env_remove("PIPE_OUT")
        .env_remove("PIPE_GRAPH_OUT")
        .env_remove("RUST_LOG")
        .env_remove("ANTHROPIC_API_KEY")
        // Servers the reference pipeline would also write to (CI runs some of them).
        .env_remove("QDRANT_URL")
        .env_remove("NEO4J_URI")
        .env_remove("FALKORDB_URL");
    match key {
        Some(key) => command.env("OPENAI_API_KEY", key),
        None => command.env_remove("OPENAI_API_KEY"),
    };
    command.output().unwrap()
}

fn report(state: &Path) -> Value {
    let run = std::fs::read_dir(state.join("runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap()
}

fn stage<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no stage {id}"))
}

fn count(stage: &Value, field: &str) -> u64 {
    stage[field].as_u64().unwrap()
}

struct GraphOut {
    /// id → (type, name, aliases, mentions)
    entities: BTreeMap<String, Value>,
    relations: Vec<Value>,
    records: usize,
}

fn read_graph(path: &Path) -> GraphOut {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = GraphOut {
        entities: BTreeMap::new(),
        relations: Vec::new(),
        records: 0,
    };
    let mut relations_started = false;
    for line in text.lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        out.records += 1;
        assert_eq!(record["payload"]["kind"], "graph");
        assert_eq!(record["payload"]["extractor"], "nlp_extract");
        let entities = record["payload"]["entities"].as_array().unwrap();
        let relations = record["payload"]["relations"].as_array().unwrap();
        assert!(entities.len() <= 500 && relations.len() <= 500);
        if !relations.is_empty() {
            relations_started = true;
        }
        assert!(
            entities.is_empty() || !relations_started,
            "entities come before relations"
        );
        for e in entities {
            let id = e["id"].as_str().unwrap().to_string();
            assert!(out.entities.insert(id, e.clone()).is_none(), "unique ids");
        }
        out.relations.extend(relations.iter().cloned());
    }
    out
}

fn find<'a>(graph: &'a GraphOut, entity_type: &str, name: &str) -> Option<&'a Value> {
    graph
        .entities
        .values()
        .find(|e| e["type"] == entity_type && e["name"] == name)
}

#[test]
fn offline_reference_pipeline_builds_a_graph_of_the_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let out = pipe(
        dir.path(),
        &[
            "run",
            "pipelines.yaml",
            "--state-dir",
            "s",
            "--progress-interval",
            "60",
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The run output says which extractor ran.
    assert!(
        stdout.contains("extractor: nlp_extract (offline"),
        "{stdout}"
    );
    let report = report(&dir.path().join("s"));
    assert_eq!(report["status"], "completed");
    assert_eq!(report["dead_letters"]["count"], 0);

    // Counts reconcile along the pipeline: one extraction per chunk, one fragment per
    // extraction, and the resolved graph in records of at most 500.
    let chunks = count(stage(&report, "chunk"), "out");
    assert!(chunks > 300, "{chunks} chunks");
    assert_eq!(count(stage(&report, "chunks"), "in"), chunks);
    assert_eq!(count(stage(&report, "nlp_extract"), "in"), chunks);
    assert_eq!(count(stage(&report, "nlp_extract"), "out"), chunks);
    assert_eq!(count(stage(&report, "normalize"), "out"), chunks);
    assert_eq!(count(stage(&report, "resolve"), "in"), chunks);
    let fragments = count(stage(&report, "resolve"), "out");
    assert_eq!(count(stage(&report, "graph"), "in"), fragments);
    let nlp_counts = &stage(&report, "nlp_extract")["counts"];
    assert_eq!(nlp_counts["chunks"].as_u64(), Some(chunks));
    let resolve_counts = &stage(&report, "resolve")["counts"];

    let graph = read_graph(&dir.path().join("out/graph.jsonl"));
    assert_eq!(graph.records as u64, fragments);
    assert_eq!(
        resolve_counts["entities_out"].as_u64(),
        Some(graph.entities.len() as u64)
    );
    assert_eq!(
        resolve_counts["relations_out"].as_u64(),
        Some(graph.relations.len() as u64)
    );
    assert!(
        graph.entities.len() > 2_000,
        "{} entities",
        graph.entities.len()
    );
    assert!(
        graph.relations.len() > 10_000,
        "{} relations",
        graph.relations.len()
    );

    // Known entities of the mission.
    for speaker in ["CDR", "CMP", "LMP", "Houston"] {
        let e = find(&graph, "Speaker", speaker).unwrap_or_else(|| panic!("Speaker {speaker}"));
        assert!(e["mentions"].as_array().unwrap().len() > 100, "{speaker}");
    }
    let houston = find(&graph, "Speaker", "Houston").unwrap();
    let aliases: Vec<&str> = houston["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        aliases.contains(&"CC"),
        "the CC speaker label is Houston: {aliases:?}"
    );
    assert!(find(&graph, "Name", "Houston").is_some());
    assert!(find(&graph, "Name", "Jim Lovell").is_some());
    for acronym in ["CSM", "LM", "O2", "S-IVB", "DSKY", "RCS"] {
        assert!(find(&graph, "Acronym", acronym).is_some(), "{acronym}");
    }
    // "O2 tank" is written 6 times in the transcripts; "fuel cell" 96 times.
    assert!(find(&graph, "Concept", "O2 tank").is_some(), "O2 tank");
    let fuel_cell = find(&graph, "Concept", "fuel cell").expect("fuel cell");
    let chunk_ids: BTreeSet<&str> = fuel_cell["mentions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["chunk_id"].as_str().unwrap())
        .collect();
    // Measured: 20 chunks (longer phrases, "fuel cell pressure", are nodes of their own).
    assert!(
        chunk_ids.len() >= 15,
        "fuel cell in {} chunks",
        chunk_ids.len()
    );

    // A consistent graph: every relation end is a node, relation ids are unique, weights are
    // the distinct mentions behind them.
    let mut relation_ids = BTreeSet::new();
    for r in &graph.relations {
        assert!(graph.entities.contains_key(r["source"].as_str().unwrap()));
        assert!(graph.entities.contains_key(r["target"].as_str().unwrap()));
        assert!(relation_ids.insert(r["id"].as_str().unwrap().to_string()));
        assert!(r["weight"].as_f64().unwrap() >= 1.0);
    }
    let id_of = |t: &str, n: &str| {
        find(&graph, t, n).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (cdr, houston_id) = (id_of("Speaker", "CDR"), id_of("Name", "Houston"));
    let cdr_names_houston = graph
        .relations
        .iter()
        .find(|r| {
            r["source"] == cdr.as_str()
                && r["target"] == houston_id.as_str()
                && r["type"] == "MENTIONS"
        })
        .expect("CDR MENTIONS Houston");
    assert!(cdr_names_houston["weight"].as_f64().unwrap() > 50.0);

    // Every entity mention is a document-level span of the chunk it names.
    let chunk_spans: BTreeMap<String, [u64; 2]> =
        std::fs::read_to_string(dir.path().join("out/chunks.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let span = &v["provenance"]["char_span"];
                (
                    v["id"].as_str().unwrap().to_string(),
                    [span[0].as_u64().unwrap(), span[1].as_u64().unwrap()],
                )
            })
            .collect();
    for e in graph.entities.values().take(200) {
        for m in e["mentions"].as_array().unwrap() {
            let chunk = chunk_spans[m["chunk_id"].as_str().unwrap()];
            let (s, t) = (
                m["char_span"][0].as_u64().unwrap(),
                m["char_span"][1].as_u64().unwrap(),
            );
            assert!(chunk[0] <= s && t <= chunk[1], "{m} outside {chunk:?}");
        }
    }

    // The same input again: the same graph, byte for byte.
    let first = std::fs::read(dir.path().join("out/graph.jsonl")).unwrap();
    let again = pipe(
        dir.path(),
        &["run", "pipelines.yaml", "--state-dir", "s2", "--quiet"],
        None,
    );
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(first == std::fs::read(dir.path().join("out/graph.jsonl")).unwrap());
}

#[test]
fn with_an_api_key_the_offline_extractor_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let without = pipe(dir.path(), &["validate", "pipelines.yaml"], None);
    assert!(without.status.success());
    assert_eq!(
        String::from_utf8_lossy(&without.stdout),
        "pipelines.yaml: ok (9 stages, 9 edges)\n  \
         off here: kg_extract (kg_extract): `when` is false\n  \
         off here: qdrant (qdrant): `when` is false\n  \
         off here: neo4j (neo4j): `when` is false\n  \
         off here: falkordb (falkordb): `when` is false\n"
    );
    let with = pipe(dir.path(), &["validate", "pipelines.yaml"], Some("sk-test"));
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    let stdout = String::from_utf8_lossy(&with.stdout);
    assert_eq!(
        stdout,
        "pipelines.yaml: ok (9 stages, 9 edges)\n  \
         off here: nlp_extract (nlp_extract): `unless` is true\n  \
         off here: qdrant (qdrant): `when` is false\n  \
         off here: neo4j (neo4j): `when` is false\n  \
         off here: falkordb (falkordb): `when` is false\n"
    );
    assert!(!stdout.contains("sk-test"));
}

/// `pipe search` over the store the offline reference pipeline wrote, with the local model:
/// plain-language questions find a chunk from the right mission day in the top 5. Without the
/// model files (a fresh machine: feature hashing) only the plumbing is checked.
#[test]
fn search_finds_the_right_mission_day_in_the_top_5() {
    let dir = tempfile::tempdir().unwrap();
    let out = pipe(
        dir.path(),
        &["run", "pipelines.yaml", "--state-dir", "s", "--quiet"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (question, the transcript file its answer is in)
    let questions = [
        ("when did the crew report the oxygen tank problem?", "day03"),
        (
            "main bus B undervolt after the oxygen tank stirred",
            "day03",
        ),
        (
            "the service module is jettisoned and a whole side is missing",
            "day06",
        ),
        ("translunar injection burn of the S-IVB", "day01"),
    ];
    let mut hashing = false;
    for (question, day) in questions {
        let out = pipe(
            dir.path(),
            &[
                "search",
                question,
                "--pipeline",
                "pipelines.yaml",
                "--state-dir",
                "s",
                "-k",
                "5",
                "--json",
            ],
            None,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: Value = serde_json::from_str(&stdout).expect("search --json prints JSON");
        let hits = answer["hits"].as_array().unwrap();
        assert_eq!(hits.len(), 5, "{answer:#}");
        if answer["model"]
            .as_str()
            .unwrap_or_default()
            .contains("hashing")
        {
            hashing = true;
            continue;
        }
        let days: Vec<&str> = hits
            .iter()
            .map(|h| h["provenance"]["source_path"].as_str().unwrap_or_default())
            .collect();
        assert!(
            days.iter().any(|p| p.contains(day)),
            "{question:?}: expected a chunk from {day} in the top 5, got {days:?}"
        );
    }
    if hashing {
        eprintln!("SKIPPED search quality: no local embedding model (PIPE_EMBED_MODEL unset)");
    }
}
