//! The real `pipe` binary on the real corpus: chunking guarantees, reports, --limit, --set,
//! --state-dir, unreadable files, JSON field mapping, list-stages, schema, Ctrl-C drain.

use serde_json::Value;
use stages::chunk::splitter::Tokenizer;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PIPE: &str = env!("CARGO_BIN_EXE_pipe");

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/apollo13")
}

fn pipe(args: &[&str], dir: &Path) -> Output {
    Command::new(PIPE)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run pipe")
}

/// `pipe run FILE --state-dir STATE --quiet` in `dir`, which must succeed.
fn run_quiet(file: &Path, dir: &Path, state: &str) {
    let out = pipe(
        &[
            "run",
            file.to_str().unwrap(),
            "--state-dir",
            state,
            "--quiet",
        ],
        dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn only_report(state: &Path) -> Value {
    let runs: Vec<_> = std::fs::read_dir(state.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "one run directory: {runs:?}");
    serde_json::from_str(&std::fs::read_to_string(runs[0].join("report.json")).unwrap()).unwrap()
}

fn stage<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap()
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn chunk_pipeline(dir: &Path, max_tokens: usize, overlap: usize) -> PathBuf {
    let yaml = format!(
        r#"
stages:
  - id: read
    kind: files
    config: {{ path: "{}", glob: "*.txt" }}
  - id: chunk
    kind: chunk
    inputs: [read]
    config: {{ max_tokens: {max_tokens}, overlap: {overlap} }}
  - id: out
    kind: jsonl
    inputs: [chunk]
    config: {{ path: out/chunks.jsonl }}
"#,
        corpus().join("transcripts").display()
    );
    write(dir, "pipeline.yaml", &yaml)
}

/// Per document (source path): its text and its chunks in order.
fn chunks_by_document(chunks: &[Value]) -> Vec<(String, Vec<&Value>)> {
    let mut docs: Vec<(String, Vec<&Value>)> = Vec::new();
    for c in chunks {
        let path = c["provenance"]["source_path"].as_str().unwrap().to_string();
        match docs.iter_mut().find(|(p, _)| *p == path) {
            Some((_, list)) => list.push(c),
            None => docs.push((path, vec![c])),
        }
    }
    for (_, list) in &mut docs {
        list.sort_by_key(|c| c["provenance"]["chunk_index"].as_u64().unwrap());
    }
    docs.sort_by(|a, b| a.0.cmp(&b.0));
    docs
}

#[test]
fn apollo_chunks_keep_every_utterance_whole_and_within_max_tokens() {
    let dir = tempfile::tempdir().unwrap();
    // 1000 tokens: larger than the longest utterance (866), so every utterance can stay whole.
    let file = chunk_pipeline(dir.path(), 1000, 0);
    run_quiet(&file, dir.path(), "state");
    let chunks = read_jsonl(&dir.path().join("out/chunks.jsonl"));
    assert!(!dir.path().join("out/chunks.jsonl.partial").exists());
    let docs = chunks_by_document(&chunks);
    assert_eq!(docs.len(), 6);
    let tokenizer = Tokenizer::Cl100kBase;
    let mut utterances = 0;
    for (path, list) in &docs {
        let text = std::fs::read_to_string(corpus().join("transcripts").join(path)).unwrap();
        let chars: Vec<char> = text.chars().collect();
        for c in list {
            let body = c["payload"]["text"].as_str().unwrap();
            assert!(
                tokenizer.count(body) <= 1000,
                "{path}: chunk over max_tokens"
            );
            assert_eq!(
                c["payload"]["tokens"].as_u64().unwrap() as usize,
                tokenizer.count(body)
            );
            // The char span points at exactly this text, and it starts and ends on turn boundaries.
            let span = c["provenance"]["char_span"].as_array().unwrap();
            let (start, end) = (
                span[0].as_u64().unwrap() as usize,
                span[1].as_u64().unwrap() as usize,
            );
            assert_eq!(chars[start..end].iter().collect::<String>(), body);
            assert!(
                start == 0 || chars[start - 1] == '\n',
                "{path}: chunk starts mid-turn at {start}"
            );
            assert!(
                end == chars.len() || chars[end] == '\n',
                "{path}: chunk ends mid-turn at {end}"
            );
            assert!(
                body.starts_with('['),
                "{path}: chunk starts with a turn's timestamp"
            );
        }
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let holders = list
                .iter()
                .filter(|c| c["payload"]["text"].as_str().unwrap().contains(line))
                .count();
            assert_eq!(holders, 1, "{path}: utterance in {holders} chunks: {line}");
            utterances += 1;
        }
    }
    assert_eq!(
        utterances, 10_876,
        "every utterance of the corpus was checked"
    );
    let report = only_report(&dir.path().join("state"));
    assert_eq!(report["status"], "completed");
    assert_eq!(stage(&report, "read")["out"], 6);
    assert_eq!(
        stage(&report, "chunk")["out"].as_u64().unwrap(),
        chunks.len() as u64
    );
    assert_eq!(
        stage(&report, "out")["in"].as_u64().unwrap(),
        chunks.len() as u64
    );
    assert_eq!(report["dead_letters"]["count"], 0);
}

#[test]
fn overlapping_chunks_cover_every_utterance() {
    let dir = tempfile::tempdir().unwrap();
    let file = chunk_pipeline(dir.path(), 800, 100);
    run_quiet(&file, dir.path(), "state");
    let chunks = read_jsonl(&dir.path().join("out/chunks.jsonl"));
    let tokenizer = Tokenizer::Cl100kBase;
    let mut overlapping = 0;
    for (path, list) in chunks_by_document(&chunks) {
        let mut previous_end = 0;
        for (i, c) in list.iter().enumerate() {
            assert!(tokenizer.count(c["payload"]["text"].as_str().unwrap()) <= 800);
            let span = c["provenance"]["char_span"].as_array().unwrap();
            let (start, end) = (span[0].as_u64().unwrap(), span[1].as_u64().unwrap());
            if i > 0 && start < previous_end {
                overlapping += 1;
            }
            previous_end = end;
        }
        let text = std::fs::read_to_string(corpus().join("transcripts").join(&path)).unwrap();
        let joined: String = list
            .iter()
            .map(|c| c["payload"]["text"].as_str().unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            // A turn longer than max_tokens is split into pieces; all others appear whole.
            if tokenizer.count(line) <= 800 {
                assert!(joined.contains(line), "{path}: utterance missing: {line}");
            }
        }
    }
    assert!(overlapping > 100, "chunks overlap: {overlapping}");
}

#[test]
fn limit_set_and_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let file = chunk_pipeline(dir.path(), 800, 0);
    let out = pipe(
        &[
            "run",
            file.to_str().unwrap(),
            "--limit",
            "2",
            "--set",
            "stages.chunk.config.max_tokens=300",
            "--set",
            "stages.out.config.path=out/limited.jsonl",
            "--state-dir",
            "elsewhere",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("completed"), "{stdout}");
    assert!(stdout.contains("report: elsewhere/runs/"), "{stdout}");
    assert!(
        !dir.path().join(".pipe").exists(),
        "--state-dir moves .pipe/"
    );
    let report = only_report(&dir.path().join("elsewhere"));
    assert_eq!(report["limit"], 2);
    assert_eq!(stage(&report, "read")["out"], 2);
    let chunks = read_jsonl(&dir.path().join("out/limited.jsonl"));
    let files: std::collections::BTreeSet<&str> = chunks
        .iter()
        .map(|c| c["provenance"]["source_path"].as_str().unwrap())
        .collect();
    assert_eq!(
        files.into_iter().collect::<Vec<_>>(),
        ["day01.txt", "day02.txt"]
    );
    assert!(
        chunks
            .iter()
            .all(|c| c["payload"]["tokens"].as_u64().unwrap() <= 300)
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["payload"]["tokens"].as_u64().unwrap() > 250),
        "the override took effect"
    );
}

#[test]
fn unreadable_files_are_dead_lettered_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("good.txt"), "CDR: Hello Houston.\nCC: Roger.\n").unwrap();
    std::fs::write(input.join("latin1.txt"), b"caf\xe9 au lait").unwrap();
    std::fs::write(input.join("image.png"), b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap();
    std::fs::write(
        input.join("data.jsonl"),
        "{\"text\": \"one\"}\nnot json\n{\"text\": \"three\"}\n",
    )
    .unwrap();
    let file = write(
        dir.path(),
        "p.yaml",
        "stages:\n  - { id: read, kind: files, config: { path: in } }\n  - { id: out, kind: jsonl, inputs: [read], config: { path: docs.jsonl } }\n",
    );
    run_quiet(&file, dir.path(), "s");
    let docs = read_jsonl(&dir.path().join("docs.jsonl"));
    let texts: Vec<&str> = docs
        .iter()
        .map(|d| d["payload"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one", "three", "CDR: Hello Houston.\nCC: Roger.\n"]);
    assert_eq!(docs[1]["provenance"]["line"], 3);
    let report = only_report(&dir.path().join("s"));
    assert_eq!(stage(&report, "read")["out"], 3);
    assert_eq!(stage(&report, "read")["dead_lettered"], 3);
    assert_eq!(report["dead_letters"]["count"], 3);
    let letters = read_jsonl(Path::new(report["dead_letters"]["path"].as_str().unwrap()));
    let reasons: Vec<String> = letters
        .iter()
        .map(|l| l["error"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("data.jsonl: line 2:")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("image.png:") && r.contains("binary")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("latin1.txt:") && r.contains("UTF-8")),
        "{reasons:?}"
    );
    assert!(letters.iter().all(|l| l["stage"] == "read"));
}

#[test]
fn json_field_mapping_reads_the_apollo_transcript() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "stages:\n  - id: read\n    kind: files\n    config: {{ path: \"{}\", glob: \"*.json\", text_field: \"transcript[].text\", speaker_field: \"transcript[].speaker\" }}\n  - {{ id: out, kind: jsonl, inputs: [read], config: {{ path: doc.jsonl }} }}\n",
        corpus().display()
    );
    let file = write(dir.path(), "p.yaml", &yaml);
    run_quiet(&file, dir.path(), "s");
    let docs = read_jsonl(&dir.path().join("doc.jsonl"));
    assert_eq!(docs.len(), 1);
    let text = docs[0]["payload"]["text"].as_str().unwrap();
    assert_eq!(text.lines().count(), 10_876);
    assert!(text.starts_with("CDR: The clock is running.\n"));
    assert_eq!(docs[0]["payload"]["format"], "json");
}

#[test]
fn list_stages_and_schema_describe_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    let out = pipe(&["list-stages"], dir.path());
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "files (source)",
        "chunk (processor)",
        "jsonl (sink)",
        "generate (source)",
        "blackhole (sink)",
        "llm (processor)",
    ] {
        assert!(text.contains(kind), "{kind} missing from:\n{text}");
    }
    assert!(
        text.contains("max_tokens") && text.contains("default 800"),
        "{text}"
    );
    assert!(
        text.contains("tokenizer") && text.contains("cl100k_base|o200k_base"),
        "{text}"
    );

    let out = pipe(&["schema"], dir.path());
    assert!(out.status.success());
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["required"], serde_json::json!(["stages"]));
    let stage = &schema["$defs"]["Stage"];
    let kinds: Vec<&str> = stage["properties"]["kind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "blackhole",
            "chunk",
            "contextualize",
            "embed",
            "falkordb",
            "files",
            "generate",
            "jsonl",
            "kg_extract",
            "llm",
            "local_store",
            "neo4j",
            "nlp_extract",
            "normalize",
            "qdrant",
            "resolve",
        ]
    );
    assert_eq!(stage["additionalProperties"], false);
    // Each kind's config is tied to its own schema.
    let chunk_rule = stage["allOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["if"]["properties"]["kind"]["const"] == "chunk")
        .unwrap();
    let reference = chunk_rule["then"]["properties"]["config"]["$ref"]
        .as_str()
        .unwrap();
    let def = reference.trim_start_matches("#/$defs/");
    assert!(schema["$defs"][def]["properties"]["max_tokens"].is_object());
}

#[test]
fn ctrl_c_drains_in_flight_records_and_exits_zero() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "p.yaml",
        r#"
stages:
  - { id: gen, kind: generate, config: { interval_ms: 1 } }
  - { id: chunk, kind: chunk, inputs: [gen], config: { max_tokens: 16, overlap: 0 } }
  - { id: out, kind: jsonl, inputs: [chunk], buffer: 8, config: { path: out.jsonl, batch: 4 } }
"#,
    );
    let child = Command::new(PIPE)
        .args([
            "run",
            file.to_str().unwrap(),
            "--state-dir",
            "s",
            "--progress-interval",
            "0.2",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until records are flowing (the sink writes its .partial file).
    let partial = dir.path().join("out.jsonl.partial");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&partial)
        .map(|m| m.len() == 0)
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "pipeline never started writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stderr.contains("draining"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("interrupted (drained)"));
    let report = only_report(&dir.path().join("s"));
    assert_eq!(report["status"], "interrupted");
    // Nothing in flight was lost: every generated document was chunked, every chunk written —
    // and the output of an interrupted input does not pass for a complete one: it stays in
    // the .partial file, which the report names.
    assert!(
        !dir.path().join("out.jsonl").exists(),
        "an interrupted run's output is not renamed into place"
    );
    let written = read_jsonl(&partial);
    let notes = stage(&report, "out")["notes"].to_string();
    assert!(
        notes.contains("out.jsonl.partial") && notes.contains("interrupted"),
        "{notes}"
    );
    assert_eq!(stage(&report, "out")["committed"], 0);
    let generated = stage(&report, "gen")["out"].as_u64().unwrap();
    assert!(generated > 0);
    assert_eq!(stage(&report, "chunk")["in"].as_u64().unwrap(), generated);
    assert_eq!(
        stage(&report, "out")["in"].as_u64().unwrap(),
        written.len() as u64
    );
    assert_eq!(
        stage(&report, "chunk")["out"].as_u64().unwrap(),
        written.len() as u64
    );
    let docs: std::collections::BTreeSet<&str> = written
        .iter()
        .map(|c| c["provenance"]["document_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        docs.len() as u64,
        generated,
        "every generated document reached the sink"
    );
    assert_eq!(report["dead_letters"]["count"], 0);
}

#[test]
fn json_log_file_and_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "p.yaml",
        "stages:\n  - { id: gen, kind: generate, config: { count: 10 } }\n  - { id: out, kind: blackhole, inputs: [gen] }\n",
    );
    let out = pipe(
        &[
            "run",
            file.to_str().unwrap(),
            "--state-dir",
            "s",
            "--quiet",
            "--log-file",
            "run.log",
            "--log-format",
            "json",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "--quiet prints no summary");
    assert!(out.stderr.is_empty(), "--quiet prints no progress");
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    let start = lines
        .iter()
        .find(|l| l["fields"]["message"] == "starting run")
        .expect("a `starting run` event");
    let report = only_report(&dir.path().join("s"));
    assert_eq!(start["fields"]["run_id"], report["run_id"]);
    assert_eq!(start["level"], "INFO");
}

#[test]
fn plain_progress_lines_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "p.yaml",
        "stages:\n  - { id: gen, kind: generate, config: { count: 40, interval_ms: 10 } }\n  - { id: sink, kind: blackhole, inputs: [gen] }\n",
    );
    let out = pipe(
        &[
            "run",
            file.to_str().unwrap(),
            "--state-dir",
            "s",
            "--progress-interval",
            "0.1",
        ],
        dir.path(),
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let gen_lines = stderr
        .lines()
        .filter(|l| l.contains("] gen ") && l.contains("out "))
        .count();
    let sink_lines = stderr
        .lines()
        .filter(|l| l.contains("] sink ") && l.contains("in-flight"))
        .count();
    assert!(
        gen_lines >= 2 && sink_lines >= 2,
        "periodic per-stage lines:\n{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no terminal escapes in plain mode"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("completed") && stdout.contains("report: s/runs/"),
        "{stdout}"
    );
}

#[test]
fn every_example_pipeline_validates_and_runs() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "examples/*.yaml: {files:?}");
    // Examples that call a model are pointed at the API simulator.
    let sim_runtime = tokio::runtime::Runtime::new().unwrap();
    let (sim, _task) = sim_runtime.block_on(pipe_simulator::spawn(Default::default()));
    for file in files {
        // Run from a scratch copy so outputs land in a temp dir; corpus paths are made absolute.
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join(file.file_name().unwrap());
        std::fs::copy(&file, &copy).unwrap();
        let corpus_root = corpus();
        let out = Command::new(PIPE)
            .args([
                "run",
                copy.to_str().unwrap(),
                "--quiet",
                "--state-dir",
                "s",
                "--limit",
                "2000",
            ])
            .env("PIPE_CORPUS_ROOT", &corpus_root)
            .env("PIPE_CORPUS", corpus_root.join("transcripts"))
            .env("PIPE_EXAMPLE_DATA", examples.join("data"))
            .env("OPENAI_BASE_URL", format!("http://{sim}/v1"))
            .env("OPENAI_API_KEY", "sk-example")
            .env("ANTHROPIC_BASE_URL", format!("http://{sim}/v1"))
            .env("ANTHROPIC_API_KEY", "sk-ant-example")
            .env("OPENAI_RPM", "100000")
            .env("OPENAI_TPM", "100000000")
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let report = only_report(&dir.path().join("s"));
        assert_eq!(report["status"], "completed", "{}", file.display());
        assert_eq!(report["dead_letters"]["count"], 0, "{}", file.display());
        let sink_in: u64 = report["stages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["role"] == "sink")
            .map(|s| s["in"].as_u64().unwrap())
            .sum();
        assert!(sink_in > 0, "{}: nothing reached a sink", file.display());
    }
}

fn spawn_slow_pipeline(dir: &Path, delay_ms: u64) -> (std::process::Child, PathBuf) {
    let file = write(
        dir,
        "p.yaml",
        &format!(
            r#"
stages:
  - {{ id: gen, kind: generate, config: {{ interval_ms: 1 }} }}
  - {{ id: out, kind: jsonl, inputs: [gen], buffer: 8, concurrency: 2, config: {{ path: out.jsonl, batch: 4 }} }}
  - {{ id: slow, kind: blackhole, inputs: [gen], buffer: 8, config: {{ batch: 4, delay_ms: {delay_ms} }} }}
"#
        ),
    );
    let child = Command::new(PIPE)
        .args([
            "run",
            file.to_str().unwrap(),
            "--state-dir",
            "s",
            "--progress-interval",
            "0.2",
        ])
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let partial = dir.join("out.jsonl.partial");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&partial)
        .map(|m| m.len() == 0)
        .unwrap_or(true)
    {
        assert!(std::time::Instant::now() < deadline, "never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    (child, partial)
}

#[test]
fn sigterm_drains_like_ctrl_c() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let dir = tempfile::tempdir().unwrap();
    let (child, partial) = spawn_slow_pipeline(dir.path(), 20);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stderr.contains("SIGTERM: stopping"), "{stderr}");
    let report = only_report(&dir.path().join("s"));
    assert_eq!(report["status"], "interrupted");
    let generated = stage(&report, "gen")["out"].as_u64().unwrap();
    assert_eq!(
        read_jsonl(&partial).len() as u64,
        generated,
        "drained, nothing lost"
    );
    assert_eq!(stage(&report, "slow")["out"].as_u64().unwrap(), generated);
    assert_eq!(report["dead_letters"]["count"], 0);
}

#[test]
fn a_second_signal_aborts_but_still_writes_the_dead_letters_and_the_report() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let dir = tempfile::tempdir().unwrap();
    // The slow sink takes 2 s per batch of 4: draining would take a long time.
    let (child, partial) = spawn_slow_pipeline(dir.path(), 2000);
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    kill(pid, Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "an abort does not wait for the slow sink"
    );
    assert!(stderr.contains("aborting"), "{stderr}");
    let report = only_report(&dir.path().join("s"));
    assert_eq!(report["status"], "failed");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .starts_with("aborted by a second signal")
    );
    // Every generated record is accounted for in both branches: written, or dead-lettered.
    let generated = stage(&report, "gen")["out"].as_u64().unwrap();
    let dead_path = report["dead_letters"]["path"].as_str().unwrap();
    let dead = read_jsonl(Path::new(dead_path));
    assert_eq!(
        dead.len() as u64,
        report["dead_letters"]["count"].as_u64().unwrap()
    );
    let dead_in = |id: &str| dead.iter().filter(|d| d["stage"] == id).count() as u64;
    let slow = stage(&report, "slow");
    assert!(
        dead_in("slow") > 0,
        "the abandoned writes are dead-lettered"
    );
    assert_eq!(slow["out"].as_u64().unwrap() + dead_in("slow"), generated);
    assert_eq!(
        read_jsonl(&partial).len() as u64 + dead_in("out"),
        generated
    );
    assert!(!dir.path().join("out.jsonl").exists());
}
