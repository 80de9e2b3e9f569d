//! The `embed` stage end to end: the real `pipe` binary, OpenAI-compatible embeddings from the
//! API simulator over real HTTP (batching by count and by tokens, the cache per text, retries,
//! one oversized input dead-lettered alone, sizes checked before anything is sent), and the
//! local model (when it is on this machine; SKIPPED otherwise).

mod sim_support;

use pipe_simulator::SimConfig;
use serde_json::Value;
use sim_support::{PIPE, Sim, dead_letters, last_report, lines, stage, stderr};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

fn requests(stats: &Value) -> u64 {
    stats["total_requests"].as_u64().unwrap()
}

fn billed_prompt_tokens(stats: &Value) -> u64 {
    stats["tokens"]["prompt"].as_u64().unwrap()
}

/// One document per text, in `docs.jsonl`.
fn documents(dir: &Path, texts: &[String]) {
    let lines: Vec<String> = texts
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string())
        .collect();
    std::fs::write(dir.join("docs.jsonl"), lines.join("\n") + "\n").unwrap();
}

/// Texts of equal token count (two-digit numbers are one cl100k token each).
fn texts(range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| {
            format!(
                "Reading {:02}: the O2 tank pressure is dropping, Houston.",
                i + 10
            )
        })
        .collect()
}

/// read docs → chunk (one chunk per document) → [embed → embedded.jsonl, chunks.jsonl].
fn pipeline(dir: &Path, provider: &str, embed_config: &str) {
    let yaml = format!(
        r#"
resources:
  providers:
    emb: {provider}
stages:
  - id: read
    kind: files
    config: {{ path: ".", glob: "docs.jsonl", text_field: text }}
  - id: chunk
    kind: chunk
    inputs: [read]
    config: {{ max_tokens: 400, overlap: 0 }}
  - id: embed
    kind: embed
    inputs: [chunk]
    config: {embed_config}
  - id: vectors
    kind: jsonl
    inputs: [embed]
    config: {{ path: embedded.jsonl }}
  - id: chunks
    kind: jsonl
    inputs: [chunk]
    config: {{ path: chunks.jsonl }}
"#
    );
    std::fs::write(dir.join("pipeline.yaml"), yaml).unwrap();
}

fn openai(sim: &Sim, model: &str, more: &str) -> String {
    format!(
        r#"{{ kind: openai, model: {model}, base_url: "{}", api_key: sk-test{more} }}"#,
        sim.base()
    )
}

async fn run(dir: &Path) -> Output {
    tokio::process::Command::new(PIPE)
        .args(["run", "pipeline.yaml", "--state-dir", ".pipe", "--quiet"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run pipe")
}

fn ids(records: &[Value]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Token counts of the chunks, by chunk text.
fn chunk_tokens(dir: &Path) -> Vec<(String, u64)> {
    lines(&dir.join("chunks.jsonl"))
        .iter()
        .map(|c| {
            (
                c["payload"]["text"].as_str().unwrap().to_string(),
                c["payload"]["tokens"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_n_inputs_and_of_t_tokens_keep_the_chunk_ids() {
    let sim = Sim::start(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    documents(dir.path(), &texts(0..10));
    // A long wait: batches go when full or when the input ends, so their count is exact.
    pipeline(
        dir.path(),
        &openai(&sim, "text-embedding-3-small", ""),
        "{ provider: emb, batch_size: 4, max_wait_ms: 60000 }",
    );
    let out = run(dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    let embed = stage(&report, "embed");
    assert_eq!(embed["out"], 10, "{embed}");
    assert_eq!(embed["calls"]["calls"], 3, "4 + 4 + 2: {embed}");
    assert_eq!(requests(&sim.stats().await), 3);
    let vectors = lines(&dir.path().join("embedded.jsonl"));
    let chunks = lines(&dir.path().join("chunks.jsonl"));
    assert_eq!(vectors.len(), 10);
    assert_eq!(
        ids(&vectors),
        ids(&chunks),
        "a chunk's vector has the chunk's id"
    );
    for v in &vectors {
        let payload = &v["payload"];
        assert_eq!(payload["kind"], "embedded");
        assert_eq!(payload["model"], "text-embedding-3-small");
        // text-embedding-3-small's own size, asked for explicitly.
        assert_eq!(payload["vector"].as_array().unwrap().len(), 1536);
        assert!(payload["text"].as_str().unwrap().contains("O2 tank"));
    }
    // Billed: every text once.
    let tokens = chunk_tokens(dir.path());
    let total: u64 = tokens.iter().map(|(_, t)| t).sum();
    assert_eq!(billed_prompt_tokens(&sim.stats().await), total);

    // By tokens: every text has the same count t; at most 2t per request = pairs.
    let t = tokens[0].1;
    assert!(tokens.iter().all(|(_, n)| *n == t), "{tokens:?}");
    sim.reset().await;
    let dir = tempfile::tempdir().unwrap();
    documents(dir.path(), &texts(0..10));
    pipeline(
        dir.path(),
        &openai(&sim, "text-embedding-3-small", ""),
        &format!(
            "{{ provider: emb, batch_size: 100, max_batch_tokens: {}, max_wait_ms: 60000 }}",
            2 * t
        ),
    );
    let out = run(dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let embed = stage(&last_report(&dir.path().join(".pipe")), "embed").clone();
    assert_eq!(embed["out"], 10);
    assert_eq!(embed["calls"]["calls"], 5, "{embed}");
    assert_eq!(requests(&sim.stats().await), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_sends_nothing_and_new_texts_send_only_themselves() {
    let sim = Sim::start(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let provider = openai(&sim, "text-embedding-3-small", "");
    let config = "{ provider: emb, max_wait_ms: 60000 }";
    documents(dir.path(), &texts(0..6));
    pipeline(dir.path(), &provider, config);
    let out = run(dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(requests(&sim.stats().await), 1);
    let first = lines(&dir.path().join("embedded.jsonl"));
    assert_eq!(first.len(), 6);

    // The same input again: every text from the cache, not one request.
    sim.reset().await;
    let out = run(dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(requests(&sim.stats().await), 0);
    let calls = stage(&last_report(&dir.path().join(".pipe")), "embed")["calls"].clone();
    assert_eq!(calls["cache_hits"], 6, "{calls}");
    assert_eq!(
        calls["calls"], 1,
        "one batch, answered from the cache: {calls}"
    );
    assert_eq!(calls["attempts"], 0, "{calls}");
    let mut again = lines(&dir.path().join("embedded.jsonl"));
    let by_id = |v: &mut Vec<Value>| v.sort_by_key(|r| r["id"].as_str().unwrap().to_string());
    let mut first = first;
    by_id(&mut first);
    by_id(&mut again);
    assert_eq!(first, again, "cached vectors are the vectors");

    // Two new texts among the six cached ones: one request, holding only the two.
    sim.reset().await;
    documents(dir.path(), &texts(0..8));
    let out = run(dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let stats = sim.stats().await;
    assert_eq!(requests(&stats), 1);
    let new_tokens: u64 = chunk_tokens(dir.path())
        .iter()
        .filter(|(text, _)| text.contains("Reading 16") || text.contains("Reading 17"))
        .map(|(_, t)| t)
        .sum();
    assert!(new_tokens > 0);
    assert_eq!(billed_prompt_tokens(&stats), new_tokens);
    let calls = stage(&last_report(&dir.path().join(".pipe")), "embed")["calls"].clone();
    assert_eq!(
        (calls["cache_hits"].as_u64(), calls["cache_misses"].as_u64()),
        (Some(6), Some(2))
    );
    assert_eq!(lines(&dir.path().join("embedded.jsonl")).len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_429s_are_retried_by_the_policy_and_every_text_lands() {
    let sim = Sim::start(SimConfig {
        fault_500: 0.3,
        fault_429: 0.2,
        seed: Some(7),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    documents(dir.path(), &texts(0..24));
    pipeline(
        dir.path(),
        &openai(
            &sim,
            "text-embedding-3-small",
            ", backoff_s: 0.01, max_backoff_s: 0.05, max_attempts: 10",
        ),
        "{ provider: emb, batch_size: 2, max_wait_ms: 60000 }",
    );
    let out = run(dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    let embed = stage(&report, "embed");
    assert_eq!(embed["out"], 24, "{embed}");
    assert_eq!(embed["dead_lettered"], 0);
    let stats = sim.stats().await;
    let refused = stats["by_status"]["500"].as_u64().unwrap_or(0)
        + stats["by_status"]["429"].as_u64().unwrap_or(0);
    assert!(refused > 0, "the faults fired: {stats}");
    assert_eq!(
        embed["calls"]["retries"].as_u64().unwrap(),
        refused,
        "each refused attempt was retried: {embed}"
    );
    assert_eq!(embed["calls"]["calls"], 12);
    assert_eq!(lines(&dir.path().join("embedded.jsonl")).len(), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_input_is_dead_lettered_alone_and_never_sent() {
    let sim = Sim::start(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut docs = texts(0..5);
    docs.insert(
        2,
        "Telemetry readout: ".to_string() + &"fuel cell voltage nominal, ".repeat(20),
    );
    documents(dir.path(), &docs);
    pipeline(
        dir.path(),
        &openai(&sim, "text-embedding-3-small", ""),
        "{ provider: emb, max_input_tokens: 40, max_wait_ms: 60000 }",
    );
    let out = run(dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    let embed = stage(&report, "embed");
    assert_eq!(
        (embed["out"].as_u64(), embed["dead_lettered"].as_u64()),
        (Some(5), Some(1))
    );
    let dead = dead_letters(&report);
    assert_eq!(dead.len(), 1);
    let error = dead[0]["error"].as_str().unwrap();
    assert!(error.contains("takes at most 40 per input"), "{error}");
    assert!(
        dead[0]["record"]["payload"]["text"]
            .as_str()
            .unwrap()
            .starts_with("Telemetry")
    );
    // The five others were sent, the long one never.
    let sent: u64 = chunk_tokens(dir.path())
        .iter()
        .filter(|(text, _)| !text.starts_with("Telemetry"))
        .map(|(_, t)| t)
        .sum();
    assert_eq!(billed_prompt_tokens(&sim.stats().await), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_of_unknown_size_stops_the_run_before_any_request() {
    let sim = Sim::start(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    documents(dir.path(), &texts(0..3));
    pipeline(
        dir.path(),
        &openai(&sim, "nomic-embed-text", ""),
        "{ provider: emb }",
    );
    let out = run(dir.path()).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the vector size of model `nomic-embed-text`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(requests(&sim.stats().await), 0);

    // Given, it is used as is (the simulator answers its default size, 384).
    pipeline(
        dir.path(),
        &openai(&sim, "nomic-embed-text", ""),
        "{ provider: emb, dimensions: 384 }",
    );
    let out = run(dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let vectors = lines(&dir.path().join("embedded.jsonl"));
    assert_eq!(vectors.len(), 3);
    assert_eq!(
        vectors[0]["payload"]["vector"].as_array().unwrap().len(),
        384
    );

    // Declared wrong: the answer does not fit, and the run stops rather than store it.
    pipeline(
        dir.path(),
        &openai(&sim, "nomic-embed-text", ""),
        "{ provider: emb, dimensions: 768 }",
    );
    let out = run(dir.path()).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("answered 384-dimension vectors, but the stage declares 768"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_model_runs_in_the_pipeline_or_the_test_says_skipped() {
    let state = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("embed-state");
    let env = std::env::var(stages::embed::locate::ENV_VAR).ok();
    let Some(found) = stages::embed::locate::locate(None, env.as_deref(), &state).unwrap() else {
        eprintln!(
            "SKIPPED: all-MiniLM-L6-v2 is not on this machine; install it with `{}`",
            stages::embed::locate::INSTALL_HINT
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    documents(
        dir.path(),
        &[
            "The oxygen tank pressure is dropping fast.".to_string(),
            "O2 tank two is losing pressure quickly.".to_string(),
            "A recipe for chocolate cake with strawberries.".to_string(),
        ],
    );
    pipeline(dir.path(), "{ kind: openai, model: unused }", "{}");
    let out = tokio::process::Command::new(PIPE)
        .args(["run", "pipeline.yaml", "--state-dir", ".pipe", "--quiet"])
        .current_dir(dir.path())
        .env(stages::embed::locate::ENV_VAR, &found.dir)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    let embed = stage(&report, "embed");
    assert_eq!(embed["out"], 3);
    let notes = embed["notes"].to_string();
    assert!(
        notes.contains("local model all-MiniLM-L6-v2 (384 dimensions"),
        "{notes}"
    );
    let vectors = lines(&dir.path().join("embedded.jsonl"));
    let vector = |needle: &str| -> Vec<f64> {
        let record = vectors
            .iter()
            .find(|v| v["payload"]["text"].as_str().unwrap().contains(needle))
            .unwrap();
        assert_eq!(record["payload"]["model"], "all-MiniLM-L6-v2");
        record["payload"]["vector"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let (oxygen, o2, cake) = (vector("oxygen"), vector("O2"), vector("cake"));
    assert!(dot(&oxygen, &o2) > dot(&oxygen, &cake) + 0.3);
}
