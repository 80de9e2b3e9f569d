//! The call stack against a provider that gets things wrong the way real ones do: refusals,
//! wrong JSON (with and without the same mistake again after a repair), an exhausted quota,
//! a request larger than the whole limit, a budget that must match the bill to the token,
//! identical prompts in flight, and a damaged response cache. The real `pipe` binary against
//! `pipe-sim` over HTTP.
//!
//! The simulator's fault settings (`fault_refusal`, `fault_wrong_json`, `repeat_mistake`,
//! `quota_tokens`, `token_counting`, the `billed` and `by_error_code` stats) are the ones of
//! /work/notes/SIM_CONTRACT.md; configs are built from JSON so that this file compiles against
//! any simulator and a simulator without them fails loudly here.

mod sim_support;

use serde_json::{Value, json};
use sim_support::{PIPE, Sim, dead_letters, last_report, lines, stderr};
use std::path::Path;
use std::process::Output;

/// `count` prompts in `dir/prompts.jsonl`: a speaker and an acronym each, so the simulator's
/// JSON mode has entities to find; `distinct` different texts, repeated in turn.
fn prompts(dir: &Path, count: usize, distinct: usize) {
    let lines: Vec<String> = (0..count)
        .map(|i| {
            json!({
                "text": format!(
                    "CDR: Houston, reading {}: the O2 TANK pressure is dropping.",
                    i % distinct
                )
            })
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
}

const SCHEMA: &str = r#"{ type: object, required: [entities, relations],
          properties: { entities: { type: array }, relations: { type: array } } }"#;

/// read prompts → llm (JSON with schema) → jsonl.
fn pipeline(dir: &Path, sim: &Sim, limit: &str, provider_extra: &str, top: &str) {
    let yaml = format!(
        r#"
{top}
resources:
  limits:
    acct: {limit}
  providers:
    llm: {{ kind: openai, model: gpt-4o-mini, base_url: "{base}", api_key: sk-test-fault-key, limit: acct{provider_extra} }}
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
"#,
        base = sim.base()
    );
    std::fs::write(dir.join("pipeline.yaml"), yaml).unwrap();
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

fn ask(report: &Value) -> &Value {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "ask")
        .unwrap()
}

fn errors(dead: &[Value]) -> Vec<String> {
    dead.iter()
        .map(|d| d["error"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// What the sink wrote: `out.jsonl`, or `out.jsonl.partial` when the run did not complete.
fn written_lines(dir: &Path) -> Vec<Value> {
    let done = dir.join("out.jsonl");
    if done.exists() {
        lines(&done)
    } else {
        lines(&dir.join("out.jsonl.partial"))
    }
}

/// Input = written + dead-lettered, and the report says the same.
fn assert_nothing_lost(dir: &Path, report: &Value, total: usize) -> (Vec<Value>, Vec<Value>) {
    let written = written_lines(dir);
    let dead = dead_letters(report);
    assert_eq!(written.len() + dead.len(), total, "{report:#}");
    let stage = ask(report);
    assert_eq!(
        n(&stage["out"]) + n(&stage["dead_lettered"]),
        total as u64,
        "{stage:#}"
    );
    for w in &written {
        assert!(
            w["payload"]["value"]["answer"]["entities"].is_array(),
            "only valid answers land: {w}"
        );
    }
    (written, dead)
}

/// The report's tokens are exactly what the simulator billed, failed attempts included.
fn assert_tokens_match_the_bill(report: &Value, stats: &Value) {
    let calls = &ask(report)["calls"];
    let billed = &stats["billed"];
    assert_eq!(
        (n(&calls["input_tokens"]), n(&calls["output_tokens"])),
        (n(&billed["prompt_tokens"]), n(&billed["completion_tokens"])),
        "report {calls:#} vs billed {billed:#}"
    );
    assert_eq!(n(&calls["estimated"]["attempts"]), 0, "{calls:#}");
    // Every request sent was one the report counted.
    assert_eq!(
        n(&calls["attempts"]),
        n(&stats["total_requests"]),
        "{stats:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_dead_lettered_with_their_text_and_paid_for() {
    let sim = Sim::start_json(json!({ "fault_refusal": 0.3, "seed": 21 })).await;
    let dir = tempfile::tempdir().unwrap();
    let total = 100;
    prompts(dir.path(), total, total);
    pipeline(dir.path(), &sim, "{ rpm: 60000 }", "", "");
    let out = run(dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    let (_, dead) = assert_nothing_lost(dir.path(), &report, total);
    assert!(
        dead.len() >= 10,
        "about 30 refusals expected: {}",
        dead.len()
    );
    for e in errors(&dead) {
        assert!(
            e.contains("the model refused: I'm sorry, but I can't help with that."),
            "{e}"
        );
    }
    let calls = &ask(&report)["calls"];
    assert_eq!(
        n(&calls["retries"]),
        0,
        "a refusal is not retried: {calls:#}"
    );
    assert_tokens_match_the_bill(&report, &sim.stats().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_json_is_repaired_and_a_rerun_asks_nothing() {
    // The mistake is drawn per body, so a repair turn can go wrong too (as a real model's can):
    // most records are repaired, the rest are dead-lettered with the reason.
    let sim =
        Sim::start_json(json!({ "fault_wrong_json": 0.3, "repeat_mistake": 0.0, "seed": 3 })).await;
    let dir = tempfile::tempdir().unwrap();
    let total = 80;
    prompts(dir.path(), total, total);
    pipeline(dir.path(), &sim, "{ rpm: 60000 }", "", "");
    let out = run(dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    let (written, dead) = assert_nothing_lost(dir.path(), &report, total);
    assert!(
        written.len() >= total * 3 / 4,
        "most mistakes were repaired"
    );
    for d in &dead {
        let error = d["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("repair"),
            "dead-lettered after a failed repair: {d}"
        );
    }
    let calls = &ask(&report)["calls"];
    assert!(
        n(&calls["calls"]) >= total as u64 + 10,
        "repair turns were made: {calls:#}"
    );
    assert_tokens_match_the_bill(&report, &sim.stats().await);
    // Again: every answer that landed, repaired ones included, comes from the cache; only
    // the dead-lettered records are asked again.
    sim.reset().await;
    let again = run(dir.path()).await;
    assert!(again.status.success(), "{}", stderr(&again));
    let report = last_report(&dir.path().join(".pipe"));
    let calls = &ask(&report)["calls"];
    assert_eq!(n(&calls["cache_hits"]), written.len() as u64, "{calls:#}");
    let first_turns = n(&sim.stats().await["total_requests"]);
    assert!(
        first_turns >= dead.len() as u64 && first_turns <= 2 * dead.len() as u64,
        "only the dead-lettered records were asked again: {first_turns}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_mistake_after_a_repair_dead_letters_the_record_with_both_errors() {
    for (kinds, says) in [
        (
            json!(["missing_field", "wrong_type"]),
            "does not match the schema",
        ),
        (json!(["prose"]), "answer is not valid JSON"),
    ] {
        let sim = Sim::start_json(json!({
            "fault_wrong_json": 0.4,
            "wrong_json_kinds": kinds,
            "repeat_mistake": 1.0,
            "seed": 8
        }))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let total = 50;
        prompts(dir.path(), total, total);
        pipeline(dir.path(), &sim, "{ rpm: 60000 }", "", "");
        let out = run(dir.path()).await;
        assert!(out.status.success(), "{}", stderr(&out));
        let report = last_report(&dir.path().join(".pipe"));
        let (written, dead) = assert_nothing_lost(dir.path(), &report, total);
        assert!(!dead.is_empty() && !written.is_empty(), "{kinds}");
        for e in errors(&dead) {
            assert!(
                e.starts_with("invalid answer after one repair attempt: ")
                    && e.contains("(first answer: ")
                    && e.matches(says).count() == 2,
                "{kinds}: {e}"
            );
        }
        // Each dead letter cost two calls (the answer and its repair), both billed.
        let calls = &ask(&report)["calls"];
        assert_eq!(
            n(&calls["calls"]),
            total as u64 + dead.len() as u64,
            "{calls:#}"
        );
        assert_tokens_match_the_bill(&report, &sim.stats().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_quota_stops_the_run() {
    let sim = Sim::start_json(json!({ "quota_tokens": 3000, "latency_ms_median": 20.0 })).await;
    let dir = tempfile::tempdir().unwrap();
    let total = 100;
    prompts(dir.path(), total, total);
    pipeline(
        dir.path(),
        &sim,
        "{ rpm: 60000, max_concurrency: 4 }",
        "",
        "",
    );
    let (err, report) = run_that_fails(dir.path(), total).await;
    assert!(
        err.contains("insufficient_quota") && err.contains("exceeded your current quota"),
        "{err}"
    );
    let stats = sim.stats().await;
    // Not retried: only the calls already in flight met the empty quota.
    let refused = n(&stats["by_error_code"]["insufficient_quota"]);
    assert!((1..=4).contains(&refused), "{stats:#}");
    assert_eq!(n(&ask(&report)["calls"]["retries"]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_the_whole_limit_is_dead_lettered_without_retries() {
    // 100k tokens per minute, a window as long as the minute (as OpenAI's): a prompt of
    // ~110k tokens (within gpt-4o-mini's 128k context) can never be admitted; the small ones can.
    let sim = Sim::start_json(json!({ "tpm": 100000, "burst_seconds": 60.0 })).await;
    let dir = tempfile::tempdir().unwrap();
    let huge = "GO for TLI, the S-IVB is nominal. ".repeat(9_000);
    let mut lines_out = vec![json!({ "text": format!("CDR: {huge}") }).to_string(); 3];
    for i in 0..10 {
        lines_out.push(
            json!({ "text": format!("CDR: Houston, reading {i}, O2 TANK low.") }).to_string(),
        );
    }
    std::fs::write(
        dir.path().join("prompts.jsonl"),
        lines_out.join("\n") + "\n",
    )
    .unwrap();
    // pipe is not told the limit: it learns it from the first answer's headers.
    pipeline(dir.path(), &sim, "{ }", "", "");
    let out = run(dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    let (written, dead) = assert_nothing_lost(dir.path(), &report, 13);
    assert_eq!((written.len(), dead.len()), (10, 3));
    for e in errors(&dead) {
        assert!(
            e.contains("Request too large") || e.contains("more than limit `acct` allows"),
            "{e}"
        );
    }
    let stats = sim.stats().await;
    assert!(
        n(&stats["by_status"]["429"]) <= 3,
        "never retried: {stats:#}"
    );
    assert_eq!(n(&ask(&report)["calls"]["retries"]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_run_costs_exactly_what_the_provider_billed() {
    let sim = Sim::start_json(json!({
        "fault_refusal": 0.1,
        "fault_wrong_json": 0.2,
        "repeat_mistake": 0.5,
        "latency_ms_median": 10.0,
        "seed": 17
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let total = 300;
    prompts(dir.path(), total, total);
    // $1 per million tokens either way: the bill in $ is the bill in tokens / 1e6.
    pipeline(
        dir.path(),
        &sim,
        "{ rpm: 60000 }",
        ", pricing: { input: 1.0, output: 1.0 }",
        "budget: { max_usd: 0.03 }",
    );
    let out = run(dir.path()).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    assert_eq!(report["status"], "budget_reached");
    assert_nothing_lost(dir.path(), &report, total);
    let stats = sim.stats().await;
    assert_tokens_match_the_bill(&report, &stats);
    let billed = &stats["billed"];
    let billed_tokens = n(&billed["prompt_tokens"]) + n(&billed["completion_tokens"]);
    let budget = &report["totals"]["budget"];
    assert_eq!(n(&budget["spent_tokens"]), billed_tokens, "{budget:#}");
    let spent = budget["spent_usd"].as_f64().unwrap();
    assert!(
        (spent - billed_tokens as f64 / 1e6).abs() < 1e-9,
        "{budget:#}"
    );
    assert!(spent <= 0.03, "{budget:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_after_sending_are_counted_at_their_worst_case_and_said_to_be_estimates() {
    let sim = Sim::start_json(json!({ "fault_hang": 0.1, "hang_seconds": 3, "seed": 4 })).await;
    let dir = tempfile::tempdir().unwrap();
    let total = 60;
    prompts(dir.path(), total, total);
    pipeline(
        dir.path(),
        &sim,
        "{ rpm: 60000 }",
        ", timeout_s: 0.5, backoff_s: 0.01, max_backoff_s: 0.05",
        "",
    );
    let out = run(dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    assert_nothing_lost(dir.path(), &report, total);
    let calls = &ask(&report)["calls"];
    let estimated = &calls["estimated"];
    assert!(n(&calls["timeouts"]) > 0, "{calls:#}");
    assert_eq!(
        n(&estimated["attempts"]),
        n(&calls["timeouts"]),
        "{calls:#}"
    );
    // Never under the bill; at most the estimates over it.
    let stats = sim.stats().await;
    let billed = &stats["billed"];
    let billed_tokens = n(&billed["prompt_tokens"]) + n(&billed["completion_tokens"]);
    let reported = n(&calls["input_tokens"]) + n(&calls["output_tokens"]);
    assert!(
        reported >= billed_tokens && reported - n(&estimated["tokens"]) <= billed_tokens,
        "reported {reported}, billed {billed_tokens}, estimated {estimated}"
    );
}

/// A provider that takes every request and never answers (each held for 10 minutes): the
/// run ends with the breaker's reason once two attempts have failed and
/// `unreachable_after_s` has passed since the first was sent, with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_never_answers_ends_the_run_saying_why() {
    let sim = Sim::start_json(json!({ "fault_hang": 1.0, "hang_seconds": 600 })).await;
    let dir = tempfile::tempdir().unwrap();
    let total = 20;
    prompts(dir.path(), total, total);
    pipeline(
        dir.path(),
        &sim,
        "{ rpm: 60000 }",
        ", timeout_s: 2, unreachable_after_s: 3, backoff_s: 0.01, max_backoff_s: 0.05",
        "",
    );
    let (err, _report) = run_that_fails(dir.path(), total).await;
    assert!(
        err.contains("failed every attempt for")
            && err.contains("(unreachable_after_s: 3)")
            && err.contains("no answer within the 2s timeout"),
        "{err}"
    );
}

/// Runs the pipeline in `dir`, which must fail (exit 1, report `failed`) with each of its
/// `total` records written or dead-lettered; its stderr and report.
async fn run_that_fails(dir: &Path, total: usize) -> (String, Value) {
    let out = run(dir).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = last_report(&dir.join(".pipe"));
    assert_eq!(report["status"], "failed");
    assert_nothing_lost(dir, &report, total);
    (stderr(&out), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_prompts_in_flight_are_paid_once() {
    let sim = Sim::start_json(json!({ "latency_ms_median": 300.0, "latency_sigma": 0.0 })).await;
    let dir = tempfile::tempdir().unwrap();
    // 60 records, 6 distinct prompts, all in flight together.
    prompts(dir.path(), 60, 6);
    pipeline(dir.path(), &sim, "{ rpm: 60000 }", "", "");
    let out = run(dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    let (written, _) = assert_nothing_lost(dir.path(), &report, 60);
    assert_eq!(written.len(), 60);
    let stats = sim.stats().await;
    assert_eq!(stats["total_requests"], 6, "{stats:#}");
    let calls = &ask(&report)["calls"];
    assert_eq!(
        n(&calls["coalesced"]) + n(&calls["cache_hits"]),
        54,
        "{calls:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_cache_file_is_set_aside_and_the_run_goes_on() {
    let sim = Sim::start_json(json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 10, 10);
    pipeline(dir.path(), &sim, "{ rpm: 60000 }", "", "");
    std::fs::create_dir_all(dir.path().join(".pipe")).unwrap();
    std::fs::write(
        dir.path().join(".pipe/cache.sqlite"),
        b"not a database at all".repeat(100),
    )
    .unwrap();
    let out = tokio::process::Command::new(PIPE)
        .args(["run", "pipeline.yaml", "--state-dir", ".pipe"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("is damaged"), "{}", stderr(&out));
    assert_eq!(written_lines(dir.path()).len(), 10);
    let aside = std::fs::read_dir(dir.path().join(".pipe"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("cache.sqlite.corrupt-")
        })
        .count();
    assert_eq!(aside, 1);
    // The fresh cache works: a re-run asks nothing.
    sim.reset().await;
    assert!(run(dir.path()).await.status.success());
    assert_eq!(sim.stats().await["total_requests"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_bound_under_the_servers_own_token_count_meets_few_429s() {
    // The server counts max_tokens + characters / 4 (OpenAI's limiter), not tiktoken.
    let sim = Sim::start_json(json!({
        "tpm": 600000,
        "token_counting": "openai_estimate",
        "latency_ms_median": 50.0,
        "seed": 9
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let total = 400;
    prompts(dir.path(), total, total);
    pipeline(dir.path(), &sim, "{ tpm: 600000 }", "", "");
    let out = run(dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_report(&dir.path().join(".pipe"));
    let (written, _) = assert_nothing_lost(dir.path(), &report, total);
    assert_eq!(written.len(), total);
    let stats = sim.stats().await;
    let refused = n(&stats["by_status"]["429"]);
    let sent = n(&stats["total_requests"]);
    assert!(
        refused * 100 <= sent,
        "{refused} of {sent} refused: {stats:#}"
    );
}
