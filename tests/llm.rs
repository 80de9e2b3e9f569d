//! The `llm` stage and the policy stack, end to end: the real `pipe` binary against the API
//! simulator (a real HTTP server) — faults, 401, re-runs from the cache, a limit shared by two
//! stages, the budget, `pipe plan`, metrics, and the Anthropic wire format.

mod sim_support;

use pipe_simulator::SimConfig;
use serde_json::Value;
use sim_support::{PIPE, Sim, dead_letters, last_report, lines, pipe, stage, stderr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

fn status_count(stats: &Value, status: &str) -> u64 {
    stats["by_status"][status].as_u64().unwrap_or(0)
}

/// `count` prompts in `dir/prompts.jsonl`, each with a speaker and an acronym so the
/// simulator's JSON mode has entities to find.
fn prompts(dir: &Path, count: usize) {
    let lines: Vec<String> = (0..count)
        .map(|i| {
            serde_json::json!({
                "text": format!("CDR: Houston, reading {i}: the O2 TANK pressure is dropping.")
            })
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
}

const SCHEMA: &str = r#"{ type: object, required: [entities, relations],
          properties: { entities: { type: array }, relations: { type: array } } }"#;

/// read prompts → llm (JSON with schema) → jsonl, with `limit` and `provider` YAML.
fn pipeline(dir: &Path, limit: &str, provider: &str, extra: &str) -> PathBuf {
    let yaml = format!(
        r#"
{extra}
resources:
  limits:
    acct: {limit}
  providers:
    llm: {provider}
stages:
  - id: read
    kind: files
    config: {{ path: ".", glob: "prompts.jsonl", text_field: text }}
  - id: ask
    kind: llm
    inputs: [read]
    config:
      provider: llm
      system: "Extract the entities and relations as JSON."
      prompt: "{{{{ text }}}}"
      output: json
      max_tokens: 300
      schema: {SCHEMA}
  - id: out
    kind: jsonl
    inputs: [ask]
    config: {{ path: out.jsonl }}
"#
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn openai(sim: &Sim, key: &str, more: &str) -> String {
    format!(
        r#"{{ kind: openai, model: gpt-4o-mini, base_url: "{}", api_key: {key}, limit: acct{more} }}"#,
        sim.base()
    )
}

async fn run(dir: &Path, state: &str) -> Output {
    pipe(
        dir,
        &["run", "pipeline.yaml", "--state-dir", state, "--quiet"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_faults_every_record_lands_or_is_dead_lettered_and_the_counts_reconcile() {
    let sim = Sim::start(SimConfig {
        fault_500: 0.05,
        fault_429: 0.05,
        fault_hang: 0.02,
        fault_malformed: 0.02,
        hang_seconds: 30,
        latency_ms_median: 5.0,
        seed: Some(13),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let total = 300;
    prompts(dir.path(), total);
    pipeline(
        dir.path(),
        "{ rpm: 60000 }",
        &openai(
            &sim,
            "sk-test-faults-key",
            ", timeout_s: 1, backoff_s: 0.02, max_backoff_s: 0.2",
        ),
        "",
    );
    let out = run(dir.path(), ".pipe").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    let ask = stage(&report, "ask");
    let written = lines(&dir.path().join("out.jsonl"));
    let dead = dead_letters(&report);
    // Nothing lost: every record landed or is in the dead letters, and the report agrees.
    assert_eq!(written.len() + dead.len(), total, "{report:#}");
    assert_eq!(ask["in"], total as u64);
    assert_eq!(
        ask["out"].as_u64().unwrap() + ask["dead_lettered"].as_u64().unwrap(),
        total as u64
    );
    assert_eq!(report["dead_letters"]["count"], dead.len() as u64);
    for d in &dead {
        let error = d["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "every dead letter says why: {d}");
    }
    assert_secret_absent(&dir.path().join(".pipe"), "sk-test-faults-key");
    for w in &written {
        let answer = &w["payload"]["value"]["answer"];
        assert!(
            answer["entities"].is_array(),
            "only valid answers land: {w}"
        );
    }
    // Every request the simulator saw is one the report counted, by outcome.
    let calls = &ask["calls"];
    let stats = sim.stats().await;
    assert_eq!(
        stats["by_endpoint"]["chat.completions"], calls["attempts"],
        "{stats:#}"
    );
    let ok = calls["attempts"].as_u64().unwrap() - calls["failed_attempts"].as_u64().unwrap();
    assert_eq!(status_count(&stats, "200"), ok);
    assert_eq!(
        status_count(&stats, "429"),
        calls["rate_limited"].as_u64().unwrap()
    );
    let injected = &stats["injected"];
    assert_eq!(
        calls["timeouts"], injected["hang"],
        "each hang timed out once"
    );
    // Faults were retried, not passed on: most records made it.
    assert!(calls["retries"].as_u64().unwrap() > 20, "{calls}");
    assert!(written.len() > total * 9 / 10, "{} landed", written.len());
    // Malformed answers were repaired (a second call) rather than stored.
    assert!(calls["calls"].as_u64().unwrap() > total as u64, "{calls}");
}

/// Requests the simulator has received so far.
async fn received(sim: &Sim) -> u64 {
    sim.stats().await["total_requests"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_told_starting_concurrency_is_sent_at_once_not_eight_scouts() {
    // Answers take ~2 s, so none is back before the first-answer grace (0.5 s) ends.
    let sim = Sim::start(SimConfig {
        latency_ms_median: 2000.0,
        latency_sigma: 0.01,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 60);
    pipeline(
        dir.path(),
        "{ initial_concurrency: 24 }",
        &openai(&sim, "sk-any", ""),
        "",
    );
    let running = tokio::spawn({
        let dir = dir.path().to_path_buf();
        async move { run(&dir, ".pipe").await }
    });
    let start = Instant::now();
    while received(&sim).await == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "no request came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Well inside the grace, where an untold provider has only its 8 scouts out.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        received(&sim).await,
        24,
        "the told 24 go at once; more would overshoot the limit"
    );
    let out = running.await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines(&dir.path().join("out.jsonl")).len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_stops_the_run_after_a_few_requests() {
    let sim = Sim::start(SimConfig {
        api_keys: vec!["sk-right".into()],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 200);
    // A known limit of 1,000 requests a second: without the scouts rule, a whole burst (900)
    // would go out before the first 401 came back.
    pipeline(
        dir.path(),
        "{ rpm: 60000 }",
        &openai(&sim, "sk-wrong-key-123", ""),
        "",
    );
    let out = run(dir.path(), ".pipe").await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("401"), "{err}");
    assert!(
        !err.contains("sk-wrong-key-123"),
        "the key is never shown: {err}"
    );
    let sent = sim.stats().await["total_requests"].as_u64().unwrap();
    assert!(
        (1..=u64::from(pipeline::policy::breaker::FIRST_SCOUTS)).contains(&sent),
        "{sent} requests with a wrong key"
    );
    let report = last_report(&dir.path().join(".pipe"));
    assert_eq!(report["status"], "failed");
    // Nothing lost: what was not processed is in the dead letters.
    let written = lines(&dir.path().join("out.jsonl")).len();
    assert_eq!(
        written as u64 + report["dead_letters"]["count"].as_u64().unwrap(),
        200
    );
    assert_secret_absent(&dir.path().join(".pipe"), "sk-wrong-key-123");
}

/// A wrong `base_url` (here without the `/v1` OpenAI-compatible servers serve under) is
/// answered 404 on every call. It stops the run with an error that names the URL, instead of
/// dead-lettering every record and ending "done" with nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_base_url_stops_the_run_and_says_which_url() {
    let sim = Sim::start(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 200);
    let root = sim.base().trim_end_matches("/v1").to_string();
    let provider = format!(
        r#"{{ kind: openai, model: gpt-4o-mini, base_url: "{root}", api_key: sk-test-key-404, limit: acct }}"#
    );
    pipeline(dir.path(), "{ rpm: 60000 }", &provider, "");
    let out = run(dir.path(), ".pipe").await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("HTTP 404"), "{err}");
    assert!(err.contains(&format!("{root}/chat/completions")), "{err}");
    assert!(err.contains("base_url"), "{err}");
    let report = last_report(&dir.path().join(".pipe"));
    assert_eq!(report["status"], "failed");
    let written = lines(&dir.path().join("out.jsonl")).len();
    assert_eq!(
        written as u64 + report["dead_letters"]["count"].as_u64().unwrap(),
        200
    );
    assert_secret_absent(&dir.path().join(".pipe"), "sk-test-key-404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_lets_no_record_through_fails_the_run() {
    // Every prompt is over the model's context (a 400 each: a record error, not the run's):
    // every record is dead-lettered. That run did nothing; it must not end "completed".
    let sim = Sim::start(SimConfig {
        context_window: Some(5),
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 20);
    pipeline(
        dir.path(),
        "{ rpm: 60000 }",
        &openai(&sim, "sk-test", ""),
        "",
    );
    let out = run(dir.path(), ".pipe").await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("every one of its 20 records failed") && err.contains("dead_letters"),
        "{err}"
    );
    let report = last_report(&dir.path().join(".pipe"));
    assert_eq!(report["status"], "failed");
    assert_eq!(report["dead_letters"]["count"], 20);

    // One record through is a run that did its job, with its failures counted. (Room for
    // the 300 answer tokens and a short prompt; the long ones are 20 times longer.)
    let sim = Sim::start(SimConfig {
        context_window: Some(500),
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = (0..20)
        .map(|i| {
            serde_json::json!({ "text": format!("CDR: reading {i}. ").repeat(40) }).to_string()
        })
        .collect();
    lines.push(serde_json::json!({ "text": "CDR: ok." }).to_string());
    std::fs::write(dir.path().join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
    pipeline(
        dir.path(),
        "{ rpm: 60000 }",
        &openai(&sim, "sk-test", ""),
        "",
    );
    let out = run(dir.path(), ".pipe").await;
    let report = last_report(&dir.path().join(".pipe"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(report["status"], "completed");
    assert_eq!(report["dead_letters"]["count"], 20);
}

/// Fails if `secret` appears in any file under `dir` (reports, dead letters, the cache, logs),
/// and if there is no file to read at all: a check that reads nothing proves nothing.
fn assert_secret_absent(dir: &Path, secret: &str) {
    let mut pending = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap_or_else(|e| panic!("{}: {e}", at.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            files += 1;
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the key leaked into {}",
                path.display()
            );
        }
    }
    assert!(files > 0, "no file under {} to check", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_of_unchanged_input_sends_no_request() {
    let sim = Sim::start(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 60);
    pipeline(
        dir.path(),
        "{ rpm: 60000 }",
        &openai(&sim, "sk-test", ""),
        "",
    );
    let first = run(dir.path(), ".pipe").await;
    assert!(first.status.success(), "{}", stderr(&first));
    let first_out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(sim.stats().await["total_requests"], 60);
    sim.reset().await;
    let second = run(dir.path(), ".pipe").await;
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(
        sim.stats().await["total_requests"],
        0,
        "every answer came from the cache"
    );
    let mut a: Vec<&str> = first_out.lines().collect();
    let second_out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let mut b: Vec<&str> = second_out.lines().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "same records, same ids");
    let report = last_report(&dir.path().join(".pipe"));
    let calls = &stage(&report, "ask")["calls"];
    assert_eq!(
        (calls["cache_hits"].as_u64(), calls["attempts"].as_u64()),
        (Some(60), Some(0))
    );
    // --no-cache asks again.
    sim.reset().await;
    let fresh = pipe(
        dir.path(),
        &[
            "run",
            "pipeline.yaml",
            "--state-dir",
            ".pipe",
            "--quiet",
            "--no-cache",
        ],
    )
    .await;
    assert!(fresh.status.success());
    assert_eq!(sim.stats().await["total_requests"], 60);
}

/// Two `llm` stages whose providers name one limit, fed the same records.
fn two_stages(dir: &Path, sim: &Sim, shared: bool) -> PathBuf {
    let (limit_a, limit_b) = if shared {
        ("acct", "acct")
    } else {
        ("acct", "acct2")
    };
    let yaml = format!(
        r#"
resources:
  limits:
    acct: {{ rpm: 1200 }}
    acct2: {{ rpm: 1200 }}
  providers:
    fast: {{ kind: openai, model: gpt-4o-mini, base_url: "{base}", api_key: k, limit: {limit_a} }}
    smart: {{ kind: openai, model: gpt-4o, base_url: "{base}", api_key: k, limit: {limit_b} }}
stages:
  - id: read
    kind: files
    config: {{ path: ".", glob: "prompts.jsonl", text_field: text }}
  - id: summary
    kind: llm
    inputs: [read]
    config: {{ provider: fast, prompt: "Summarise: {{{{ text }}}}", max_tokens: 50 }}
  - id: title
    kind: llm
    inputs: [read]
    config: {{ provider: smart, prompt: "Title: {{{{ text }}}}", max_tokens: 20 }}
  - id: out
    kind: jsonl
    inputs: [summary, title]
    config: {{ path: out.jsonl }}
"#,
        base = sim.base()
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stages_naming_one_limit_never_exceed_it_together() {
    // The account allows 1200 requests/min (20/s, 1 s burst), enforced by the simulator.
    let sim = Sim::start(SimConfig {
        rpm: Some(1200),
        latency_ms_median: 20.0,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 60);
    two_stages(dir.path(), &sim, true);
    let out = run(dir.path(), "shared").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let stats = sim.stats().await;
    assert_eq!(status_count(&stats, "200"), 120, "{stats:#}");
    assert_eq!(
        stats["rate_limited"], 0,
        "together they stayed within the limit: {stats:#}"
    );
    // Contrast: each stage with a limit of its own (the same numbers) overshoots the account,
    // which is what the shared limit prevents.
    sim.reset().await;
    two_stages(dir.path(), &sim, false);
    let out = run(dir.path(), "separate").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(sim.stats().await["rate_limited"].as_u64().unwrap() > 0);
}

/// A provider that enforces 600 rpm over a tenth of a second (its bucket holds one request),
/// where the limit says only `rpm: 600` (`burst_seconds` defaults to 1 s: nine at once). The
/// first answer's reset header tells the window, and the calls are spaced so that jitter on
/// the way does not meet a 429. Before, every call was due the instant the provider had room
/// again, and about half of them were refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_enforced_over_a_short_window_is_learned_from_the_reset_header() {
    let sim = Sim::start(SimConfig {
        rpm: Some(600),
        burst_seconds: 0.1,
        latency_ms_median: 20.0,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 40);
    pipeline(dir.path(), "{ rpm: 600 }", &openai(&sim, "sk-test", ""), "");
    let out = run(dir.path(), "state").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let stats = sim.stats().await;
    assert_eq!(status_count(&stats, "200"), 40, "{stats:#}");
    let refused = stats["rate_limited"].as_u64().unwrap();
    assert!(refused <= 2, "{refused} refused: {stats:#}");
}

/// Most requests answered within one second of the simulator's clock.
fn most_answered_in_a_second(stats: &Value) -> u64 {
    stats["per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["successes"].as_u64().unwrap())
        .max()
        .unwrap_or(0)
}

/// A provider whose bucket is its whole minute (600 at 600 rpm), as OpenAI's and Anthropic's
/// headers describe theirs, where the limit says only `rpm: 600` (`burst_seconds` 1: nine at
/// once, then ten a second). The headers' wider window is tried, doubling each round trip,
/// and kept: the 200 calls go far faster than ten a second, with no 429. Before, they took
/// 20 s at the rate while the provider would have taken them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wider_window_the_headers_describe_is_used_when_the_provider_keeps_it() {
    let sim = Sim::start(SimConfig {
        rpm: Some(600),
        burst_seconds: 60.0,
        latency_ms_median: 20.0,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 200);
    pipeline(dir.path(), "{ rpm: 600 }", &openai(&sim, "sk-test", ""), "");
    let out = run(dir.path(), "state").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let stats = sim.stats().await;
    assert_eq!(status_count(&stats, "200"), 200, "{stats:#}");
    assert_eq!(stats["rate_limited"].as_u64().unwrap(), 0, "{stats:#}");
    // Our own window lets at most 9 + 10 through in a second.
    let most = most_answered_in_a_second(&stats);
    assert!(most >= 40, "at most {most} answered in a second: {stats:#}");
}

/// The same headers from a provider that enforces a second (`headers_window_seconds`): the
/// trial's first step meets 429s, which end it for the run; only that step is refused, and
/// the rest go at the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wider_window_the_provider_does_not_keep_costs_one_step_of_429s() {
    let sim = Sim::start(SimConfig {
        rpm: Some(600),
        burst_seconds: 1.0,
        headers_window_seconds: Some(60.0),
        latency_ms_median: 20.0,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 100);
    pipeline(dir.path(), "{ rpm: 600 }", &openai(&sim, "sk-test", ""), "");
    let args = ["run", "pipeline.yaml", "--state-dir", "state", "--quiet"];
    let out = pipe(
        dir.path(),
        &[&args[..], &["--log-file", "run.log"]].concat(),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let stats = sim.stats().await;
    assert_eq!(status_count(&stats, "200"), 100, "{stats:#}");
    let refused = stats["rate_limited"].as_u64().unwrap();
    assert!((1..=8).contains(&refused), "{refused} refused: {stats:#}");
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(log.contains("trying it"), "{log}");
    assert!(log.contains("a 429 while trying the window"), "{log}");
}

/// `count` prompts of ~460 tokens through `llm` with `max_tokens` 200 (each call near 660
/// tokens) under a limit told `tpm` (or told nothing: `None`). Not `pipeline()`: with its
/// schema and 300, a call nearly fills a 1,000-token window, and the calls paced before the
/// first answer, at the rate, meet jitter 429s now and then.
fn token_bound_calls(dir: &Path, sim: &Sim, count: usize, tpm: Option<u64>) {
    let limit = tpm.map_or("{}".to_string(), |tpm| format!("{{ tpm: {tpm} }}"));
    let words = "the crew reads the oxygen tank pressure to Houston and waits ";
    let lines: Vec<String> = (0..count)
        .map(|i| {
            serde_json::json!({ "text": format!("Record {i}: {}", words.repeat(40)) }).to_string()
        })
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
    let yaml = format!(
        r#"
resources:
  limits:
    acct: {limit}
  providers:
    llm: {provider}
stages:
  - {{ id: read, kind: files, config: {{ path: ".", glob: "prompts.jsonl", text_field: text }} }}
  - {{ id: ask, kind: llm, inputs: [read], config: {{ provider: llm, prompt: "{{{{ text }}}}", max_tokens: 200 }} }}
  - {{ id: out, kind: jsonl, inputs: [ask], config: {{ path: out.jsonl }} }}
"#,
        provider = openai(sim, "sk-test", "")
    );
    std::fs::write(dir.join("pipeline.yaml"), yaml).unwrap();
}

/// The same for tokens: 600k TPM enforced over a tenth of a second, a window of 1,000 tokens
/// that holds one of these calls (~660 tokens) and a half. Most pairs of the server's
/// snapshots then have its bucket fill between them; priced from those, calls went faster
/// than the server refills, and about a third of them were refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_window_that_holds_one_call_meets_no_429_storm() {
    let sim = Sim::start_json(serde_json::json!({
        "tpm": 600000,
        "burst_seconds": 0.1,
        "latency_ms_median": 100.0,
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    token_bound_calls(dir.path(), &sim, 60, Some(600_000));
    let out = run(dir.path(), "state").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let stats = sim.stats().await;
    assert_eq!(status_count(&stats, "200"), 60, "{stats:#}");
    let refused = stats["rate_limited"].as_u64().unwrap();
    assert!(refused <= 2, "{refused} refused: {stats:#}");
}

/// Tokens from a provider that describes its whole minute and enforces a second: 60k TPM,
/// a window of 1,000 tokens that holds one of these calls (~660 tokens) and a half, while the
/// headers show tens of thousands left. The wider window's trial meets a 429 at its first
/// step and ends; nothing it let go beyond our window may stay in our level (a refused call's
/// tokens come back, but not the part beyond it), and the headers' room raises nothing after
/// that 429. A first version kept that part: a 429 every 1.1 s, 19 of 59 requests refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wider_window_trial_that_meets_a_429_leaves_nothing_behind() {
    let sim = Sim::start_json(serde_json::json!({
        "tpm": 60000,
        "burst_seconds": 1.0,
        "headers_window_seconds": 60.0,
        "latency_ms_median": 100.0,
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    token_bound_calls(dir.path(), &sim, 40, Some(60_000));
    let out = run(dir.path(), "state").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let stats = sim.stats().await;
    assert_eq!(status_count(&stats, "200"), 40, "{stats:#}");
    let refused = stats["rate_limited"].as_u64().unwrap();
    assert!(refused <= 4, "{refused} refused: {stats:#}");
}

/// A provider whose 429 says which limit refused the call in its message alone, as many
/// OpenAI-compatible servers and gateways do: no `x-ratelimit-*` headers, no `retry-after`
/// ("Rate limit reached ... on tokens per min (TPM): Limit 60000, Used 59400, Requested 660.
/// Please try again in 60ms."), and no limit declared. The message teaches the limit, what
/// is left of it and the wait, and everyone waits; read as overload (a 429 without the
/// account's state), each call backed off alone while the rest kept going: 218 requests
/// refused for 40 calls. Now the first calls, sent before anything is known, meet 7. The
/// server counts tokens its own way (`max_tokens` + characters / 4), and its message's
/// "Requested" says how: prompts are priced by that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_message_teaches_the_limit_where_no_header_does() {
    let sim = Sim::start_json(serde_json::json!({
        "tpm": 60000,
        "burst_seconds": 1.0,
        "latency_ms_median": 100.0,
        "rate_limit_headers": false,
        "retry_after_header": false,
        "token_counting": "openai_estimate",
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    token_bound_calls(dir.path(), &sim, 40, None);
    let args = ["run", "pipeline.yaml", "--state-dir", "state", "--quiet"];
    let out = pipe(
        dir.path(),
        &[&args[..], &["--log-file", "run.log"]].concat(),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let stats = sim.stats().await;
    assert_eq!(status_count(&stats, "200"), 40, "{stats:#}");
    let refused = stats["rate_limited"].as_u64().unwrap();
    assert!(refused <= 10, "{refused} refused: {stats:#}");
    // Its "Requested" (max_tokens + characters / 4 here) prices the prompts: the headers
    // that would teach the count are not sent.
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(log.contains("a 429 says the provider counts"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_stops_admitting_calls_and_says_so() {
    let sim = Sim::start(SimConfig {
        latency_ms_median: 10.0,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 200);
    // $1 per million input and output tokens: a call is at most ~350 tokens = $0.00035.
    pipeline(
        dir.path(),
        "{ rpm: 60000 }",
        &openai(&sim, "sk-test", ", pricing: { input: 1.0, output: 1.0 }"),
        "budget: { max_usd: 0.01 }",
    );
    let out = run(dir.path(), ".pipe").await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("budget reached"), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    assert_eq!(report["status"], "budget_reached");
    let budget = &report["totals"]["budget"];
    assert!(budget["spent_usd"].as_f64().unwrap() <= 0.01, "{budget}");
    assert_eq!(budget["reached"], true);
    // A run cut short by the budget does not publish its output as complete.
    assert!(!dir.path().join("out.jsonl").exists());
    let written = lines(&dir.path().join("out.jsonl.partial")).len() as u64;
    let dead = dead_letters(&report);
    assert!(written > 0 && !dead.is_empty());
    assert_eq!(written + dead.len() as u64, 200, "nothing lost");
    assert!(
        dead.iter()
            .all(|d| d["error"].as_str().unwrap().contains("budget reached"))
    );
    assert_eq!(status_count(&sim.stats().await, "200"), written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_counts_calls_tokens_and_dollars_without_sending_or_writing() {
    let sim = Sim::start(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 40);
    pipeline(dir.path(), "{ rpm: 600 }", &openai(&sim, "sk-test", ""), "");
    let out = pipe(dir.path(), &["plan", "pipeline.yaml", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &stage(&plan, "ask")["plan"];
    assert_eq!(p["calls"], 40);
    assert_eq!(p["cached"], 0);
    assert_eq!(p["max_output_tokens"], 40 * 300);
    assert!(p["input_tokens"].as_u64().unwrap() > 40 * 10);
    // gpt-4o-mini list price: $0.15 / $0.60 per million.
    let expected = (p["input_tokens"].as_f64().unwrap() * 0.15 + 12_000.0 * 0.60) / 1e6;
    assert!(
        (p["max_cost_usd"].as_f64().unwrap() - expected).abs() < 1e-6,
        "{p}"
    );
    assert_eq!(sim.stats().await["total_requests"], 0, "nothing sent");
    assert!(!dir.path().join("out.jsonl").exists(), "nothing written");
    assert!(!dir.path().join("out.jsonl.partial").exists());
    // After a real run, the plan knows the answers are cached.
    assert!(run(dir.path(), ".pipe").await.status.success());
    let out = pipe(dir.path(), &["plan", "pipeline.yaml"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("40 calls (40 cached)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_while_the_run_lasts() {
    let sim = Sim::start(SimConfig {
        latency_ms_median: 100.0,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 60);
    // 10 requests/s: the run lasts about five seconds.
    pipeline(
        dir.path(),
        "{ rpm: 600, burst_seconds: 0.1 }",
        &openai(&sim, "sk-test", ""),
        "",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = tokio::process::Command::new(PIPE)
        .args(["run", "pipeline.yaml", "--quiet", "--metrics-addr", &addr])
        .current_dir(dir.path())
        .spawn()
        .unwrap();
    let mut scraped = None;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let Ok(r) = reqwest::get(format!("http://{addr}/metrics")).await {
            let text = r.text().await.unwrap();
            let requests = text
                .lines()
                .find_map(|l| l.strip_prefix("pipe_llm_requests_total{stage=\"ask\"} "))
                .and_then(|n| n.parse::<u64>().ok());
            // Mid-run: some requests made, not all of them.
            if requests.is_some_and(|n| (1..60).contains(&n)) {
                scraped = Some(text);
                break;
            }
        }
    }
    let text = scraped.expect("metrics while running");
    for needle in [
        "# TYPE pipe_llm_requests_total counter",
        "pipe_stage_queue_depth{stage=\"ask\"}",
        "pipe_stage_in_flight{stage=\"ask\"}",
        "pipe_llm_rate_limited_total{stage=\"ask\"}",
        "pipe_llm_tokens_total{stage=\"ask\",direction=\"input\"}",
        "pipe_llm_cost_usd_total{stage=\"ask\"}",
        "pipe_llm_request_duration_seconds_bucket{stage=\"ask\",le=\"+Inf\"}",
        "pipe_limit_admitted_requests_total{limit=\"acct\"}",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_calls_put_the_system_prompt_in_the_provider_cache() {
    let sim = Sim::start(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 20);
    let provider = format!(
        r#"{{ kind: anthropic, model: claude-haiku-4-5, base_url: "{}", api_key: sk-ant-test, limit: acct }}"#,
        sim.base()
    );
    pipeline(
        dir.path(),
        "{ rpm: 6000, max_concurrency: 1 }",
        &provider,
        "",
    );
    let out = run(dir.path(), ".pipe").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    let calls = &stage(&report, "ask")["calls"];
    assert_eq!(lines(&dir.path().join("out.jsonl")).len(), 20);
    // Written once, then read by the other 19 calls; billed at the cached rate.
    assert!(calls["cache_write_tokens"].as_u64().unwrap() > 0, "{calls}");
    assert_eq!(
        calls["cached_input_tokens"].as_u64().unwrap(),
        19 * calls["cache_write_tokens"].as_u64().unwrap(),
        "{calls}"
    );
    let stats = sim.stats().await;
    assert_eq!(stats["by_endpoint"]["messages"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_limits_known_the_concurrency_the_server_sustains_is_found() {
    // A server that takes 8 requests at once and answers the 9th with 429, advertising nothing.
    let sim = Sim::start(SimConfig {
        hidden_concurrency: Some(8),
        latency_ms_median: 40.0,
        latency_sigma: 0.1,
        seed: Some(5),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Long enough (~8 s) that the share refused measures the run, not the first burst alone:
    // starting at 16 against 8 costs 10-30 refused calls whatever the run's length.
    let total = 1500;
    prompts(dir.path(), total);
    let provider = format!(
        r#"{{ kind: openai, model: local, base_url: "{}", api_key: none }}"#,
        sim.base()
    );
    // No `limit`: the provider gets an adaptive one of its own.
    let yaml = std::fs::read_to_string(pipeline(dir.path(), "{ rpm: 1 }", &provider, ""))
        .unwrap()
        .replace("  limits:\n    acct: { rpm: 1 }\n", "");
    std::fs::write(dir.path().join("pipeline.yaml"), yaml).unwrap();
    let out = run(dir.path(), ".pipe").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lines(&dir.path().join("out.jsonl")).len(),
        total,
        "all landed"
    );
    let stats = sim.stats().await;
    let refused = status_count(&stats, "429");
    let sent = stats["total_requests"].as_u64().unwrap();
    assert!(
        refused * 100 <= sent * 3,
        "{refused} of {sent} refused: {stats:#}"
    );
    // It found the capacity (8 at once) and did not run far past it.
    let peak = stats["max_concurrency"].as_u64().unwrap();
    assert!((8..=10).contains(&peak), "peak concurrency {peak}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_stops_the_run_before_any_record_moves_but_plan_works_without_one() {
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 10);
    // The public OpenAI URL (unreachable here): nothing may try to reach it.
    pipeline(
        dir.path(),
        "{ rpm: 500 }",
        "{ kind: openai, model: gpt-4o-mini, limit: acct }",
        "",
    );
    let command = |args: &[&str]| {
        let mut c = tokio::process::Command::new(PIPE);
        c.args(args)
            .current_dir(dir.path())
            .env_remove("OPENAI_API_KEY")
            .env_remove("RUST_LOG");
        c
    };
    let out = command(&["run", "pipeline.yaml", "--quiet"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("provider `llm` has no api_key: set OPENAI_API_KEY"),
        "{err}"
    );
    assert!(!dir.path().join("out.jsonl").exists());
    let out = command(&["plan", "pipeline.yaml"]).output().await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("10 calls (0 cached)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_summary_show_calls_tokens_and_dollars() {
    let sim = Sim::start(SimConfig {
        latency_ms_median: 50.0,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 20);
    pipeline(
        dir.path(),
        "{ rpm: 600, burst_seconds: 0.1 }",
        &openai(&sim, "sk-test", ""),
        "",
    );
    let out = pipe(
        dir.path(),
        &["run", "pipeline.yaml", "--progress-interval", "0.2"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let progress = stderr(&out);
    let line = progress
        .lines()
        .find(|l| l.contains(" ask ") && l.contains("calls "))
        .unwrap_or_else(|| panic!("no progress line with calls:\n{progress}"));
    assert!(
        line.contains("tokens ") && line.contains(" · $0.0"),
        "{line}"
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("calls 20 (cached 0) · requests 20"),
        "{summary}"
    );
    assert!(summary.contains("429s 0"), "{summary}");
}
