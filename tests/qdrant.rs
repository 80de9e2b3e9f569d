//! The `qdrant` sink against a real Qdrant (v1.18.3 from ../shared/tools/qdrant; start one with
//! `eval "$(scripts/qdrant.sh)"; export QDRANT_URL`). Every test here is skipped, saying so,
//! when QDRANT_URL is not set.

mod store_support;
mod support;

use connectors::qdrant::{QdrantSettings, QdrantStore};
use pipeline::config::{Env, Locator};
use pipeline::runtime::{self, RunError, RunOptions, RunReport};
use pipeline::{Plan, Registry};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store_support::{test_record_id, test_vector};

fn qdrant_url(test: &str) -> Option<String> {
    match std::env::var("QDRANT_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED {test}: QDRANT_URL is not set (eval \"$(scripts/qdrant.sh)\"; export QDRANT_URL)"
            );
            None
        }
    }
}

/// A collection name no other test (or earlier run) uses.
fn collection(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("pipe_test_{name}_{}_{nanos}", std::process::id())
}

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
    runtime::prepare(plan(yaml), RunOptions::new(state.to_path_buf()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .run()
        .await
        .unwrap()
}

/// `vectors` (count, dims, model) → `qdrant`.
fn vectors_yaml(url: &str, collection: &str, count: u64, dims: usize, model: &str) -> String {
    format!(
        r#"
stages:
  - id: vectors
    kind: vectors
    config: {{ count: {count}, dims: {dims}, model: "{model}" }}
  - id: store
    kind: qdrant
    inputs: [vectors]
    config: {{ url: "{url}", collection: "{collection}", batch: 64 }}
"#
    )
}

fn store(url: &str, collection: &str) -> QdrantStore {
    QdrantStore::new(QdrantSettings {
        url: url.into(),
        api_key: None,
        collection: collection.into(),
        timeout: Duration::from_secs(10),
    })
    .unwrap()
}

fn sink_report(report: &RunReport) -> &pipeline::runtime::StageReport {
    support::stage(report, "store")
}

#[tokio::test]
async fn a_rerun_leaves_the_point_count_unchanged() {
    let Some(url) = qdrant_url("a_rerun_leaves_the_point_count_unchanged") else {
        return;
    };
    let name = collection("rerun");
    let yaml = vectors_yaml(&url, &name, 500, 16, "test-model");
    let state = tempfile::tempdir().unwrap();
    let first = run(&yaml, state.path()).await;
    assert_eq!(sink_report(&first).committed, Some(500));
    assert_eq!(sink_report(&first).dead_lettered, 0);
    assert!(
        sink_report(&first)
            .notes
            .iter()
            .any(|n| n.starts_with(&format!("created Qdrant collection `{name}`"))),
        "{:?}",
        sink_report(&first).notes
    );
    let qdrant = store(&url, &name);
    assert_eq!(qdrant.count().await.unwrap(), 500);
    assert_eq!(
        qdrant.payload_indexes().await.unwrap(),
        vec!["document_id", "model", "source_path"]
    );

    let second = run(&yaml, state.path()).await;
    assert_eq!(sink_report(&second).committed, Some(500));
    assert_eq!(qdrant.count().await.unwrap(), 500);
    assert!(
        sink_report(&second)
            .notes
            .iter()
            .any(|n| n.ends_with(": 500 points")),
        "{:?}",
        sink_report(&second).notes
    );
}

#[tokio::test]
async fn search_returns_the_upserted_payloads() {
    let Some(url) = qdrant_url("search_returns_the_upserted_payloads") else {
        return;
    };
    let name = collection("search");
    let yaml = vectors_yaml(&url, &name, 200, 24, "test-model");
    let state = tempfile::tempdir().unwrap();
    run(&yaml, state.path()).await;

    let want = pipe::cli::search::Want {
        embedder: false,
        vectors: true,
        graph: false,
    };
    let stores = pipe::cli::search::open_stores(&plan(&yaml), state.path(), want)
        .await
        .unwrap();
    let (stage, index) = &stores.vectors[0];
    assert_eq!(stage, "store");
    assert!(index.describe().contains(&name));
    assert_eq!(index.models().await.unwrap(), vec!["test-model"]);
    for i in [0u64, 42, 199] {
        let hits = index.nearest(&test_vector(i, 24), 3).await.unwrap();
        assert_eq!(hits.len(), 3);
        let top = &hits[0];
        assert_eq!(top.id, test_record_id(i));
        assert!((top.score - 1.0).abs() < 1e-4, "{}", top.score);
        assert_eq!(top.text, format!("text of chunk {i}"));
        assert_eq!(top.context, (i % 2 == 0).then(|| format!("context {i}")));
        assert_eq!(top.provenance.document_id, format!("doc-{}", i % 7));
        assert_eq!(
            top.provenance.source_path,
            Some(format!("day{:02}.txt", i % 7 + 1))
        );
        assert_eq!(top.provenance.chunk_index, Some(i as u32));
        assert_eq!(top.provenance.char_span, Some([i * 100, i * 100 + 99]));
        assert!(hits[1].score <= top.score);
    }
}

/// A pipeline that would call the model server (a `llm` stage on pipe-sim) next to `sink_yaml`.
fn with_model_branch(sim: &str, dir: &Path, sink_yaml: &str) -> String {
    std::fs::write(
        dir.join("prompts.jsonl"),
        "{\"text\": \"Houston, we've had a problem.\"}\n",
    )
    .unwrap();
    format!(
        r#"
resources:
  providers:
    llm: {{ kind: openai, model: gpt-4o-mini, base_url: "{sim}", api_key: sk-test }}
stages:
  - id: read
    kind: files
    config: {{ path: "{dir}", glob: "prompts.jsonl", text_field: text }}
  - id: ask
    kind: llm
    inputs: [read]
    config: {{ provider: llm, prompt: "{{{{ text }}}}", max_tokens: 20 }}
  - id: answers
    kind: jsonl
    inputs: [ask]
    config: {{ path: "{dir}/answers.jsonl" }}
{sink_yaml}"#,
        dir = dir.display()
    )
}

async fn sim_requests(sim: &std::net::SocketAddr) -> u64 {
    let stats: serde_json::Value = reqwest::get(format!("http://{sim}/_sim/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["total_requests"].as_u64().unwrap()
}

fn build_error(result: Result<runtime::PreparedRun, RunError>) -> (String, String) {
    match result {
        Err(RunError::Build { stage, message }) => (stage, message),
        Err(other) => panic!("not a build error: {other}"),
        Ok(_) => panic!("the pipeline was built"),
    }
}

#[tokio::test]
async fn a_collection_of_another_size_or_model_stops_the_run_before_any_token() {
    let Some(url) =
        qdrant_url("a_collection_of_another_size_or_model_stops_the_run_before_any_token")
    else {
        return;
    };
    let name = collection("mismatch");
    let state = tempfile::tempdir().unwrap();
    run(&vectors_yaml(&url, &name, 10, 16, "model-a"), state.path()).await;

    let (sim, _task) = pipe_simulator::spawn(pipe_simulator::SimConfig::default()).await;
    let base = format!("http://{sim}/v1");
    let dir = tempfile::tempdir().unwrap();
    let sink = |dims: usize, model: &str, url: &str| {
        format!(
            r#"  - id: vectors
    kind: vectors
    config: {{ count: 10, dims: {dims}, model: "{model}" }}
  - id: store
    kind: qdrant
    inputs: [vectors]
    config: {{ url: "{url}", collection: "{name}", timeout_s: 2 }}
"#
        )
    };

    // Another size.
    let yaml = with_model_branch(&base, dir.path(), &sink(8, "model-a", &url));
    let (stage, message) =
        build_error(runtime::prepare(plan(&yaml), RunOptions::new(state.path().into())).await);
    assert_eq!(stage, "store");
    assert!(
        message.contains(&format!(
            "Qdrant collection `{name}` at {url} holds vectors of size 16 (cosine); this \
             pipeline writes 8 (cosine) with model `model-a`"
        )),
        "{message}"
    );

    // The same size, another embedding model: not comparable either.
    let yaml = with_model_branch(&base, dir.path(), &sink(16, "model-b", &url));
    let (_, message) =
        build_error(runtime::prepare(plan(&yaml), RunOptions::new(state.path().into())).await);
    assert!(
        message.contains(
            "holds 10 points of embedding model `model-a`; this pipeline embeds with `model-b`"
        ),
        "{message}"
    );

    // Nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("http://127.0.0.1:{closed}");
    let yaml = with_model_branch(&base, dir.path(), &sink(16, "model-a", &nowhere));
    let (_, message) =
        build_error(runtime::prepare(plan(&yaml), RunOptions::new(state.path().into())).await);
    assert!(message.starts_with("cannot reach Qdrant"), "{message}");
    assert!(message.contains(&nowhere), "{message}");

    // The model server was never asked anything, and nothing was written.
    assert_eq!(sim_requests(&sim).await, 0);
    assert!(!dir.path().join("answers.jsonl").exists());
    assert_eq!(store(&url, &name).count().await.unwrap(), 10);

    // The same pipeline against a matching collection does call it (the check above can fail).
    let yaml = with_model_branch(&base, dir.path(), &sink(16, "model-a", &url));
    run(&yaml, state.path()).await;
    assert_eq!(sim_requests(&sim).await, 1);
}

// A Qdrant of this test's own, to kill mid-run.

struct OwnQdrant {
    pid: i32,
    port: u16,
}

fn start_script() -> PathBuf {
    let home = std::env::var("QDRANT_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/qdrant"));
    home.join("start.sh")
}

fn free_port_pair() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 65000 && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

impl OwnQdrant {
    /// Starts it on `port` (HTTP) / `port + 1` (gRPC) with its data in `data`.
    fn start(port: u16, data: &Path) -> OwnQdrant {
        let out = std::process::Command::new(start_script())
            .arg(port.to_string())
            .arg(data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qdrant did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        OwnQdrant { pid, port }
    }

    fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port + 1)
    }

    /// SIGKILL (no chance to flush or say goodbye), and wait until it is gone.
    fn kill(&self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while kill(Pid::from_raw(self.pid), None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OwnQdrant {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_killed_mid_run_loses_nothing() {
    if qdrant_url("a_store_killed_mid_run_loses_nothing").is_none() {
        return;
    }
    if !start_script().exists() {
        eprintln!(
            "SKIPPED a_store_killed_mid_run_loses_nothing: no {} (set QDRANT_HOME)",
            start_script().display()
        );
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let port = free_port_pair();
    let qdrant = OwnQdrant::start(port, data.path());
    let url = qdrant.grpc_url();
    let name = collection("killed");
    let total = 2000u64;
    let yaml = format!(
        r#"
stages:
  - id: vectors
    kind: vectors
    config: {{ count: {total}, dims: 32, interval_ms: 2 }}
  - id: store
    kind: qdrant
    inputs: [vectors]
    config: {{ url: "{url}", collection: "{name}", batch: 50, timeout_s: 2 }}
"#
    );
    let state = tempfile::tempdir().unwrap();
    let prepared = runtime::prepare(plan(&yaml), RunOptions::new(state.path().into()))
        .await
        .unwrap();
    let stats = prepared.stats();
    let running = tokio::spawn(prepared.run());
    let sink = stats
        .stages
        .iter()
        .find(|s| s.id == "store")
        .unwrap()
        .clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.committed.load(std::sync::atomic::Ordering::Relaxed) < 200 {
        assert!(Instant::now() < deadline, "nothing committed in 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = sink.committed.load(std::sync::atomic::Ordering::Relaxed);
    tokio::task::spawn_blocking(move || drop(qdrant))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let data_dir = data.path().to_path_buf();
    let qdrant = tokio::task::spawn_blocking(move || OwnQdrant::start(port, &data_dir))
        .await
        .unwrap();
    let report = running.await.unwrap().unwrap();
    let sink = sink_report(&report);
    assert_eq!(sink.received, total);
    let committed = sink.committed.unwrap();
    assert!(killed_at < total, "the store was killed after the run");
    assert!(
        sink.retries > 0,
        "no batch was retried: the kill missed the run"
    );
    // Nothing lost: every record is committed or dead-lettered (with the reason).
    assert_eq!(committed + sink.dead_lettered, total, "{sink:?}");
    let dead_letters = report
        .dead_letters
        .path
        .as_ref()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .unwrap_or_default();
    assert_eq!(dead_letters.lines().count() as u64, sink.dead_lettered);
    // What was acknowledged survived the kill.
    let points = store(&qdrant.grpc_url(), &name).count().await.unwrap();
    assert!(
        points >= committed && points <= total,
        "{points} points, {committed} committed"
    );
    eprintln!(
        "killed after {killed_at} committed; {} retries; {committed} committed, {} dead-lettered, {points} points",
        sink.retries, sink.dead_lettered
    );
    drop(qdrant);
}
