//! `kg_extract` and `contextualize` end to end: the real `pipe` binary against the API
//! simulator (real HTTP) on the Apollo 13 corpus. Batching keeps every chunk's entities and
//! makes fewer calls; wrong and malformed answers go down the ladder and every chunk lands or
//! is dead-lettered; cut-off answers are asked again with room, not repaired; a document's chunks read it
//! from the provider's prompt cache.

mod sim_support;

use serde_json::{Value, json};
use sim_support::{PIPE, Sim, dead_letters, last_report, lines, stage, stderr};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/apollo13/transcripts")
}

async fn run(dir: &Path, file: &str, state: &str) -> Output {
    tokio::process::Command::new(PIPE)
        .args(["run", file, "--state-dir", state, "--quiet"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run pipe")
}

fn count(report: &Value, id: &str, name: &str) -> u64 {
    stage(report, id)["counts"][name].as_u64().unwrap_or(0)
}

fn chat_requests(stats: &Value) -> u64 {
    stats["by_endpoint"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains("chat"))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum()
}

/// The simulator's extraction heuristics give speakers, acronym runs and other names; the
/// schema names a type for each. Its relations are speaker MENTIONS name, or, in text whose
/// lines do not start with a speaker (the transcripts start with a timestamp), consecutive
/// names RELATED_TO each other: the patterns admit both.
const SCHEMA: &str = r#"
        strict: true
        entities:
          Person: "a crew member, a controller, anyone who speaks"
          Equipment: "a spacecraft system or part, usually written in capitals"
          Place: "anything else with a name: places, missions, organisations"
        relations:
          - Person MENTIONS Person
          - Person MENTIONS Equipment
          - Person MENTIONS Place
          - Equipment RELATED_TO Equipment
          - Equipment RELATED_TO Place
          - Place RELATED_TO Equipment
          - Place RELATED_TO Place"#;

/// files (`glob`) → chunk → kg_extract (`extract` YAML appended) → jsonl.
fn extract_pipeline(dir: &Path, sim: &Sim, glob: &str, chunk_tokens: u32, extract: &str) {
    let yaml = format!(
        r#"
resources:
  providers:
    llm: {{ kind: openai, model: gpt-4o-mini, base_url: "{base}", api_key: sk-test, backoff_s: 0.01, max_backoff_s: 0.05 }}
stages:
  - id: read
    kind: files
    config: {{ path: "{corpus}", glob: "{glob}" }}
  - id: chunk
    kind: chunk
    inputs: [read]
    config: {{ max_tokens: {chunk_tokens}, overlap: 0 }}
  - id: extract
    kind: kg_extract
    inputs: [chunk]
    config:
      provider: llm
      schema: {SCHEMA}
{extract}
  - id: out
    kind: jsonl
    inputs: [extract]
    config: {{ path: out.jsonl }}
"#,
        base = sim.base(),
        corpus = corpus().display(),
    );
    std::fs::write(dir.join("pipeline.yaml"), yaml).unwrap();
}

/// Per extraction record: its entities (name, type) and relations (source, type, target).
type Facts = BTreeMap<
    String,
    (
        BTreeSet<(String, String)>,
        BTreeSet<(String, String, String)>,
    ),
>;

fn facts(records: &[Value]) -> Facts {
    records
        .iter()
        .map(|r| {
            let entities = r["payload"]["entities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["name"].as_str().unwrap().into(),
                        e["type"].as_str().unwrap().into(),
                    )
                })
                .collect();
            let relations = r["payload"]["relations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["source"].as_str().unwrap().into(),
                        e["type"].as_str().unwrap().into(),
                        e["target"].as_str().unwrap().into(),
                    )
                })
                .collect();
            (r["id"].as_str().unwrap().to_string(), (entities, relations))
        })
        .collect()
}

/// Every mention with a span points at the entity's name in the source file.
fn assert_provenance(records: &[Value]) -> usize {
    let mut files: BTreeMap<String, Vec<char>> = BTreeMap::new();
    let mut spans = 0;
    for r in records {
        assert_eq!(r["payload"]["kind"], "extraction");
        assert!(
            r["payload"]["extractor"]
                .as_str()
                .unwrap()
                .starts_with("kg_extract:")
        );
        let path = r["provenance"]["source_path"].as_str().unwrap().to_string();
        let text = files.entry(path.clone()).or_insert_with(|| {
            std::fs::read_to_string(corpus().join(&path))
                .unwrap()
                .chars()
                .collect()
        });
        let chunk_span = r["provenance"]["char_span"].as_array().unwrap();
        let (chunk_start, chunk_end) = (
            chunk_span[0].as_u64().unwrap(),
            chunk_span[1].as_u64().unwrap(),
        );
        for e in r["payload"]["entities"].as_array().unwrap() {
            let mention = &e["mentions"][0];
            assert_eq!(mention["document_id"], r["provenance"]["document_id"]);
            assert!(mention["chunk_id"].as_str().is_some_and(|s| s.len() == 32));
            if let Some(span) = mention["char_span"].as_array() {
                let (a, b) = (span[0].as_u64().unwrap(), span[1].as_u64().unwrap());
                assert!(chunk_start <= a && b <= chunk_end, "{e} outside its chunk");
                let found: String = text[a as usize..b as usize].iter().collect();
                assert_eq!(
                    found.to_lowercase().split_whitespace().collect::<Vec<_>>(),
                    e["name"]
                        .as_str()
                        .unwrap()
                        .to_lowercase()
                        .split_whitespace()
                        .collect::<Vec<_>>(),
                    "{path} [{a}, {b})"
                );
                spans += 1;
            }
        }
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_chunks_per_call_give_the_same_entities_per_chunk_with_5x_fewer_calls() {
    let sim = Sim::start_json(json!({ "seed": 7 })).await;
    let mut runs = Vec::new();
    for batch in [1, 10] {
        sim.reset().await;
        let dir = tempfile::tempdir().unwrap();
        extract_pipeline(
            dir.path(),
            &sim,
            "day0[12].txt",
            400,
            // Room for every answer: a cut-off answer would be asked again.
            &format!("      batch_size: {batch}\n      max_tokens_per_chunk: 3000"),
        );
        let out = run(dir.path(), "pipeline.yaml", ".pipe").await;
        assert!(out.status.success(), "{}", stderr(&out));
        let report = last_report(&dir.path().join(".pipe"));
        let chunks = stage(&report, "chunk")["out"].as_u64().unwrap();
        let extract = stage(&report, "extract");
        assert_eq!(extract["in"].as_u64(), Some(chunks));
        assert_eq!(
            extract["out"].as_u64(),
            Some(chunks),
            "one extraction per chunk"
        );
        assert_eq!(report["dead_letters"]["count"], 0);
        let records = lines(&dir.path().join("out.jsonl"));
        assert_eq!(records.len() as u64, chunks);
        let spans = assert_provenance(&records);
        assert!(spans > 100, "only {spans} mentions found in the text");
        let requests = chat_requests(&sim.stats().await);
        runs.push((facts(&records), requests, chunks, report));
    }
    let (single, single_calls, chunks, single_report) = &runs[0];
    let (batched, batched_calls, _, report) = &runs[1];
    assert!(*chunks >= 90, "{chunks} chunks");
    assert_eq!(
        *single_calls,
        *chunks,
        "one call per chunk at batch_size 1: {}",
        stage(single_report, "extract")
    );
    assert!(
        batched_calls * 5 <= *single_calls,
        "{batched_calls} calls at 10 per call vs {single_calls} at 1"
    );
    assert_eq!(single.len(), batched.len());
    for (id, found) in single {
        assert_eq!(Some(found), batched.get(id), "chunk extraction {id}");
    }
    let entities: usize = single.values().map(|(e, _)| e.len()).sum();
    let relations: usize = single.values().map(|(_, r)| r.len()).sum();
    assert!(
        entities > 500 && relations > 300,
        "{entities} / {relations}"
    );
    assert_eq!(count(report, "extract", "entities"), entities as u64);
    // Every transcript chunk names something.
    assert_eq!(count(report, "extract", "empty_extractions"), 0);
}

/// Five chunks per call: enough calls (about 40) for a fifth of them to go wrong.
const BATCHED: &str = "      batch_size: 5\n      max_tokens_per_chunk: 3000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_fifth_of_the_answers_wrong_every_chunk_lands_or_is_dead_lettered() {
    // The same run without faults: what each chunk should give.
    let sim = Sim::start_json(json!({ "seed": 11 })).await;
    let clean_dir = tempfile::tempdir().unwrap();
    extract_pipeline(clean_dir.path(), &sim, "day0[12].txt", 300, BATCHED);
    let out = run(clean_dir.path(), "pipeline.yaml", ".pipe").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let clean = facts(&lines(&clean_dir.path().join("out.jsonl")));

    let sim = Sim::start_json(json!({
        "seed": 11,
        "fault_wrong_json": 0.15,
        "fault_malformed": 0.05,
        "repeat_mistake": 0.5
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    extract_pipeline(dir.path(), &sim, "day0[12].txt", 300, BATCHED);
    let out = run(dir.path(), "pipeline.yaml", ".pipe").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    let extract = stage(&report, "extract");
    eprintln!("with faults: {extract}");
    let (received, emitted, dead) = (
        extract["in"].as_u64().unwrap(),
        extract["out"].as_u64().unwrap(),
        extract["dead_lettered"].as_u64().unwrap(),
    );
    assert_eq!(received as usize, clean.len());
    assert_eq!(
        received,
        emitted + dead,
        "chunks in = extractions + dead letters"
    );
    let records = lines(&dir.path().join("out.jsonl"));
    assert_eq!(records.len() as u64, emitted);
    let letters = dead_letters(&report);
    assert_eq!(letters.len() as u64, dead);
    // No wrong answer landed as a success: what landed is what the clean run found.
    let landed = facts(&records);
    for (id, found) in &landed {
        assert_eq!(Some(found), clean.get(id), "extraction {id}");
    }
    // Every chunk is accounted for exactly once.
    let mut seen: BTreeSet<String> = landed.keys().cloned().collect();
    for letter in &letters {
        assert_eq!(letter["stage"], "extract", "{letter}");
        let chunk_id = letter["record"]["id"].as_str().unwrap();
        let extraction_id = clean
            .keys()
            .find(|k| **k == pipeline::record::stable_id(&[chunk_id.as_bytes(), b"extract"]))
            .expect("a dead letter for a chunk of the input");
        assert!(seen.insert(extraction_id.clone()), "{extraction_id} twice");
        assert!(
            letter["error"].as_str().unwrap().contains("no extraction"),
            "{letter}"
        );
    }
    assert_eq!(seen.len(), clean.len());
    assert!(count(&report, "extract", "repairs") > 0);
    assert!(count(&report, "extract", "batch_splits") > 0);
    // Most chunks survive the ladder.
    assert!(emitted * 10 >= received * 9, "{emitted} of {received}");
    assert_eq!(count(&report, "extract", "empty_extractions"), 0);
    // Every request the simulator answered was an attempt the report counts.
    let stats = sim.stats().await;
    assert_eq!(
        extract["calls"]["attempts"].as_u64(),
        Some(chat_requests(&stats))
    );
}

/// `kg_extract` one call at a time, so that each batch can learn from the answers before it.
fn one_batch_at_a_time(dir: &Path) {
    let yaml = std::fs::read_to_string(dir.join("pipeline.yaml")).unwrap();
    let yaml = yaml.replace(
        "kind: kg_extract\n",
        "kind: kg_extract\n    concurrency: 1\n",
    );
    std::fs::write(dir.join("pipeline.yaml"), yaml).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_answers_are_asked_again_with_room_and_later_calls_ask_enough() {
    let sim = Sim::start_json(json!({ "seed": 5 })).await;
    // Ample room: the reference.
    let reference_dir = tempfile::tempdir().unwrap();
    extract_pipeline(
        reference_dir.path(),
        &sim,
        "day01.txt",
        300,
        "      batch_size: 1\n      max_tokens_per_chunk: 4000",
    );
    let out = run(reference_dir.path(), "pipeline.yaml", ".pipe").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let reference = facts(&lines(&reference_dir.path().join("out.jsonl")));

    // 40 answer tokens per chunk, a tenth of what the answers need: the first batch's answer
    // is cut off until its limit has doubled enough; the batches after it ask for what the
    // answers so far needed (one call at a time, so that they can learn it).
    let dir = tempfile::tempdir().unwrap();
    extract_pipeline(
        dir.path(),
        &sim,
        "day01.txt",
        300,
        "      batch_size: 8\n      max_tokens_per_chunk: 40",
    );
    one_batch_at_a_time(dir.path());
    let before = chat_requests(&sim.stats().await);
    let out = run(dir.path(), "pipeline.yaml", ".pipe").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let requests = chat_requests(&sim.stats().await) - before;
    let report = last_report(&dir.path().join(".pipe"));
    assert_eq!(report["dead_letters"]["count"], 0, "{report}");
    let (cut, raised, splits) = (
        count(&report, "extract", "cut_off_answers"),
        count(&report, "extract", "raised_max_tokens"),
        count(&report, "extract", "batch_splits"),
    );
    let batches = stage(&report, "extract")["in"]
        .as_u64()
        .unwrap()
        .div_ceil(8);
    assert!(cut > 0 && raised == cut, "cut off {cut}, raised {raised}");
    assert_eq!(splits, 0, "a raised limit fits the batch: no halves");
    // Cut off: the first batch's doublings, and a few of the next while the average settles.
    // Before, every cut-off batch was split in halves, which were cut off in turn.
    assert!(cut < batches, "{cut} cut off answers for {batches} batches");
    assert_eq!(
        requests,
        batches + cut,
        "one call per batch, and one per cut-off"
    );
    assert_eq!(
        count(&report, "extract", "repairs"),
        0,
        "a cut-off answer is not repaired under the same limit"
    );
    let found = facts(&lines(&dir.path().join("out.jsonl")));
    assert_eq!(found, reference);

    // A re-run starts from the configured limit again, yet every answer is in the cache: the
    // cache key leaves `max_tokens` out (only complete answers are cached).
    let before = chat_requests(&sim.stats().await);
    let out = run(dir.path(), "pipeline.yaml", ".pipe").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        chat_requests(&sim.stats().await),
        before,
        "a re-run calls nothing"
    );
    assert_eq!(facts(&lines(&dir.path().join("out.jsonl"))), reference);

    // A ceiling below what eight chunks need: the first batch is raised to it, cut off again
    // and split; once answers have said what a chunk needs, batches are split before they
    // are sent (one batch at a time: sent all at once, none would wait for an answer).
    let dir = tempfile::tempdir().unwrap();
    extract_pipeline(
        dir.path(),
        &sim,
        "day01.txt",
        300,
        "      batch_size: 8\n      max_tokens_per_chunk: 40\n      max_answer_tokens: 2000",
    );
    one_batch_at_a_time(dir.path());
    let out = run(dir.path(), "pipeline.yaml", ".pipe").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    assert_eq!(report["dead_letters"]["count"], 0, "{report}");
    let extract = stage(&report, "extract");
    assert!(count(&report, "extract", "batch_splits") > 0, "{extract}");
    assert!(
        count(&report, "extract", "batches_split_to_fit") > 0,
        "{extract}"
    );
    assert_eq!(count(&report, "extract", "repairs"), 0);
    let found = facts(&lines(&dir.path().join("out.jsonl")));
    assert_eq!(found, reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_structured_output_stops_the_run_instead_of_failing_every_chunk() {
    // OpenAI's 400 for `response_format: json_schema` on a model that does not take it: every
    // call sends the same schema, so every chunk would be dead-lettered and the run would end
    // "completed" with an empty graph.
    let sim = Sim::start_json(json!({ "seed": 3, "structured_output": false })).await;
    let dir = tempfile::tempdir().unwrap();
    extract_pipeline(dir.path(), &sim, "day01.txt", 300, "      batch_size: 4");
    let out = run(dir.path(), "pipeline.yaml", ".pipe").await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("HTTP 400") && err.contains("response_format") && err.contains("model"),
        "{err}"
    );
    let report = last_report(&dir.path().join(".pipe"));
    assert_eq!(report["status"], "failed");
    let chunks = stage(&report, "chunk")["out"].as_u64().unwrap();
    assert_eq!(
        report["dead_letters"]["count"].as_u64().unwrap(),
        chunks,
        "nothing extracted, nothing lost: every chunk is in the dead letters"
    );
    // The first refusals stop it: the calls in flight then, not a ladder of halves per batch.
    let requests = chat_requests(&sim.stats().await);
    assert!(requests <= 20, "{requests} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_counts_one_call_per_batch_and_sends_nothing() {
    let sim = Sim::start_json(json!({ "seed": 1 })).await;
    let dir = tempfile::tempdir().unwrap();
    extract_pipeline(dir.path(), &sim, "day01.txt", 300, "      batch_size: 10");
    let out = tokio::process::Command::new(PIPE)
        .args(["plan", "pipeline.yaml", "--state-dir", ".pipe", "--json"])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let chunks = stage(&report, "chunk")["out"].as_u64().unwrap();
    let planned = stage(&report, "extract")["plan"]["calls"].as_u64().unwrap();
    assert!(
        planned >= chunks.div_ceil(10) && planned <= chunks.div_ceil(10) + 2,
        "{planned} calls planned for {chunks} chunks"
    );
    assert!(
        stage(&report, "extract")["plan"]["input_tokens"]
            .as_u64()
            .unwrap()
            > chunks * 200
    );
    assert_eq!(chat_requests(&sim.stats().await), 0);
    assert!(!dir.path().join("out.jsonl").exists());
}

/// One transcript of about 6,000 tokens (lines of day 3), and a second, shorter one.
fn documents(dir: &Path) -> u64 {
    let day3 = std::fs::read_to_string(corpus().join("day03.txt")).unwrap();
    let lines: Vec<&str> = day3.lines().collect();
    let first = lines[380..520].join("\n") + "\n";
    let second = lines[600..660].join("\n") + "\n";
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(dir.join("docs/a.txt"), &first).unwrap();
    std::fs::write(dir.join("docs/b.txt"), &second).unwrap();
    (first.len() + second.len()) as u64
}

fn context_pipeline(dir: &Path, provider: &str) {
    let yaml = format!(
        r#"
resources:
  providers:
    llm: {provider}
stages:
  - id: read
    kind: files
    config: {{ path: docs, glob: "*.txt" }}
  - id: chunk
    kind: chunk
    inputs: [read]
    config: {{ max_tokens: 200, overlap: 20 }}
  - id: context
    kind: contextualize
    inputs: [chunk]
    config: {{ provider: llm, max_tokens: 60 }}
  - id: out
    kind: jsonl
    inputs: [context]
    config: {{ path: out.jsonl }}
"#
    );
    std::fs::write(dir.join("pipeline.yaml"), yaml).unwrap();
}

/// Runs contextualize over the two documents; checks every chunk got a context and returns
/// (report, chunk records, tokens of the documents as sent per call, summed over calls).
async fn contextualize_run(provider: &str) -> (Value, Vec<Value>, u64) {
    let dir = tempfile::tempdir().unwrap();
    documents(dir.path());
    context_pipeline(dir.path(), provider);
    // Not quiet: the end-of-run summary shows the prompt cache.
    let out = tokio::process::Command::new(PIPE)
        .args(["run", "pipeline.yaml", "--state-dir", ".pipe"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run pipe");
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(summary.contains("prompt cache:"), "{summary}");
    let report = last_report(&dir.path().join(".pipe"));
    assert_eq!(report["dead_letters"]["count"], 0);
    let records = lines(&dir.path().join("out.jsonl"));
    let chunks = stage(&report, "chunk")["out"].as_u64().unwrap();
    assert_eq!(records.len() as u64, chunks);
    assert_eq!(count(&report, "context", "documents"), 2);
    assert_eq!(count(&report, "context", "contextualized"), chunks);
    let mut per_document: BTreeMap<String, u64> = BTreeMap::new();
    for r in &records {
        assert_eq!(r["payload"]["kind"], "chunk");
        let context = r["payload"]["context"].as_str().unwrap_or_default();
        assert!(!context.trim().is_empty(), "{r}");
        *per_document
            .entry(r["provenance"]["source_path"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert!(per_document["a.txt"] >= 20, "{per_document:?}");
    // Document tokens sent: each document once per chunk of it.
    let tokenizer = stages::chunk::splitter::Tokenizer::Cl100kBase;
    let mut sent = 0;
    for (path, n) in &per_document {
        let text = std::fs::read_to_string(dir.path().join("docs").join(path)).unwrap();
        sent += tokenizer.count(&text) as u64 * n;
    }
    (report, records, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contextualize_reads_each_document_from_the_openai_prompt_cache() {
    let sim = Sim::start_json(json!({ "seed": 3, "latency_ms_median": 5.0 })).await;
    let provider = format!(
        r#"{{ kind: openai, model: gpt-4o-mini, base_url: "{}", api_key: sk-test }}"#,
        sim.base()
    );
    let (report, _, sent) = contextualize_run(&provider).await;
    let calls = &stage(&report, "context")["calls"];
    let cached = calls["cached_input_tokens"].as_u64().unwrap();
    assert!(
        cached * 10 >= sent * 8,
        "cache reads {cached} of {sent} document tokens sent"
    );
    let stats = sim.stats().await;
    assert_eq!(stats["billed"]["cached_tokens"].as_u64(), Some(cached));
    // gpt-4o-mini: $0.15 per million input tokens, $0.075 cached.
    let saved = calls["saved_by_prompt_cache_usd"].as_f64().unwrap();
    let expected = cached as f64 * (0.15 - 0.075) / 1e6;
    assert!((saved - expected).abs() < 1e-6, "{saved} vs {expected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contextualize_marks_the_document_for_the_anthropic_cache() {
    let sim = Sim::start_json(json!({ "seed": 3, "latency_ms_median": 5.0 })).await;
    let provider = format!(
        r#"{{ kind: anthropic, model: claude-haiku-4-5, base_url: "{}", api_key: sk-ant-test }}"#,
        sim.base()
    );
    let (report, _, sent) = contextualize_run(&provider).await;
    let calls = &stage(&report, "context")["calls"];
    let read = calls["cached_input_tokens"].as_u64().unwrap();
    let written = calls["cache_write_tokens"].as_u64().unwrap();
    assert!(read * 10 >= sent * 8, "cache reads {read} of {sent}");
    // Written once per document (the first chunk), read by all the others.
    assert!(
        written > 0 && written * 5 < read,
        "{written} written, {read} read"
    );
    let stats = sim.stats().await;
    assert_eq!(stats["billed"]["cache_read_tokens"].as_u64(), Some(read));
    assert_eq!(
        stats["billed"]["cache_creation_tokens"].as_u64(),
        Some(written)
    );
    // claude-haiku-4-5: $1 per million input, reads at 10 %, writes at 125 %.
    let saved = calls["saved_by_prompt_cache_usd"].as_f64().unwrap();
    let expected = (read as f64 * 0.9 - written as f64 * 0.25) / 1e6;
    assert!((saved - expected).abs() < 1e-6, "{saved} vs {expected}");
    assert!(saved > 0.0);
}
