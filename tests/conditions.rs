//! `when:` / `unless:` on stages: choosing a branch by the environment (the reference pipeline's
//! extractor: `kg_extract` with an API key, `nlp_extract` without), checked whatever the
//! environment, off stages not built, the choice in the report.

mod support;

use pipeline::config::{Env, Locator, Plan};
use pipeline::runtime::{self, RunOptions};
use std::collections::HashMap;
use std::sync::Arc;

fn load(yaml: &str, vars: &[(&str, &str)]) -> Result<Plan, String> {
    let locator = Locator {
        file: Arc::from("p.yaml"),
        overrides: Vec::new(),
    };
    let env = Env::from_map(
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    );
    pipeline::config::load_str(yaml, &locator, &support::registry(), &env)
        .map_err(|d| d.to_string())
}

/// The diagnostics of a pipeline that must not load.
fn load_err(yaml: &str, vars: &[(&str, &str)]) -> String {
    match load(yaml, vars) {
        Ok(plan) => panic!("loaded, but should not: stages {:?}", ids(&plan)),
        Err(error) => error,
    }
}

/// The stages that run, sorted (the plan's order is one topological order of several).
fn ids(plan: &Plan) -> Vec<&str> {
    let mut ids: Vec<&str> = plan.stages.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    ids
}

fn skipped(plan: &Plan) -> Vec<(&str, &str)> {
    plan.skipped
        .iter()
        .map(|s| (s.id.as_str(), s.reason.as_str()))
        .collect()
}

/// Two extractors, one chosen by whether `KEY` is set; the model-calling branch (an `llm`
/// stage on a provider without a key) runs only with the key.
const CHOOSE: &str = r#"
resources:
  providers:
    model: { kind: openai, model: gpt-4o-mini }
stages:
  - { id: docs, kind: generate, config: { count: 3, text_bytes: 200 } }
  - id: with_key
    kind: nlp_extract
    inputs: [docs]
    when: ${KEY:+true}
    config: { kinds: [acronym] }
  - id: without_key
    kind: nlp_extract
    inputs: [docs]
    unless: ${KEY:+true}
  - id: ask
    kind: llm
    inputs: [docs]
    when: ${KEY:+yes}
    config: { provider: model, prompt: "{{ text }}" }
  - id: answers
    kind: jsonl
    inputs: [ask]
    config: { path: answers.jsonl }
  - id: normalize
    kind: normalize
    inputs: [with_key, without_key]
  - id: graph
    kind: jsonl
    inputs: [normalize]
    config: { path: graph.jsonl }
"#;

#[test]
fn the_environment_chooses_the_branch() {
    let with = load(CHOOSE, &[("KEY", "sk-test")]).unwrap();
    assert_eq!(
        ids(&with),
        vec!["answers", "ask", "docs", "graph", "normalize", "with_key"]
    );
    assert_eq!(skipped(&with), vec![("without_key", "`unless` is true")]);
    // normalize reads only from the branch that runs.
    let normalize = with.stages.iter().find(|s| s.id == "normalize").unwrap();
    assert_eq!(normalize.inputs.len(), 1);
    assert_eq!(with.stages[normalize.inputs[0]].id, "with_key");
    let docs = &with.stages[0];
    let consumers: Vec<&str> = docs
        .consumers
        .iter()
        .map(|&c| with.stages[c].id.as_str())
        .collect();
    assert_eq!(consumers, vec!["with_key", "ask"]);

    for vars in [&[][..], &[("KEY", "")][..]] {
        let without = load(CHOOSE, vars).unwrap();
        assert_eq!(
            ids(&without),
            vec!["docs", "graph", "normalize", "without_key"]
        );
        assert_eq!(
            skipped(&without),
            vec![
                ("with_key", "`when` is false"),
                ("ask", "`when` is false"),
                ("answers", "every input is off (ask)"),
            ]
        );
    }
}

#[tokio::test]
async fn stages_that_are_off_are_not_built_and_the_report_says_so() {
    // Without KEY the `llm` stage's provider has no key: building it would stop the run.
    let plan = load(CHOOSE, &[]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut plan = plan;
    plan.base_dir = state.path().to_path_buf();
    let options = RunOptions::new(state.path().join("s"));
    let report = runtime::prepare(plan, options)
        .await
        .unwrap()
        .run()
        .await
        .unwrap();
    assert_eq!(report.status, runtime::RunStatus::Completed);
    assert_eq!(support::stage(&report, "without_key").received, 3);
    assert_eq!(support::stage(&report, "graph").received, 3);
    assert!(report.stages.iter().all(|s| s.id != "ask"));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["skipped"][0]["id"], "with_key");
    assert_eq!(json["skipped"][0]["kind"], "nlp_extract");
    assert_eq!(json["skipped"][0]["reason"], "`when` is false");
    assert!(!state.path().join("answers.jsonl").exists());
    assert!(state.path().join("graph.jsonl").exists());
    // With the key set and no server, the `llm` stage is built for real (and would call).
    let plan = load(CHOOSE, &[("KEY", "sk-test")]).unwrap();
    assert!(plan.skipped.iter().all(|s| s.id != "ask"));
}

#[test]
fn conditions_are_checked_whatever_the_environment() {
    let bad = r#"
stages:
  - { id: docs, kind: generate, when: maybe }
  - { id: out, kind: blackhole, inputs: [docs], unless: "${SECRET}" }
"#;
    let error = load_err(bad, &[("SECRET", "sk-live-123")]);
    assert!(
        error.contains(
            "p.yaml:3:39: error: stage `docs`: `when` must be true or false after interpolation"
        ),
        "{error}"
    );
    assert!(
        error.contains("stage `out`: `unless` must be true or false"),
        "{error}"
    );
    assert!(
        !error.contains("sk-live-123"),
        "a value from the environment is never echoed"
    );

    // A stage that runs, read only by stages that are off: its records would be lost.
    let orphan = r#"
stages:
  - { id: docs, kind: generate }
  - { id: out, kind: blackhole, inputs: [docs], when: "false" }
"#;
    let error = load_err(orphan, &[]);
    assert!(
        error.contains("stage `docs` runs, but every stage reading it is off (`out`: `when` is false), so its records would be lost"),
        "{error}"
    );

    let nothing = r#"
stages:
  - { id: docs, kind: generate, unless: "yes" }
  - { id: out, kind: blackhole, inputs: [docs] }
"#;
    let error = load_err(nothing, &[]);
    assert!(error.contains("every stage is off"), "{error}");

    // A stage that is off is still checked: its config errors are reported.
    let broken_off = r#"
stages:
  - { id: docs, kind: generate }
  - { id: nlp, kind: nlp_extract, inputs: [docs], when: "off", config: { min_chars: 0 } }
  - { id: out, kind: blackhole, inputs: [docs, nlp] }
"#;
    let error = load_err(broken_off, &[]);
    assert!(error.contains("`min_chars` must be at least 1"), "{error}");
}
