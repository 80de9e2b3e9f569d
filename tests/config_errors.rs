//! `pipe validate` on malformed pipeline files: every problem, located, in file order.
//!
//! Each `tests/fixtures/invalid/NN-what.yaml` has a neighbouring `NN-what.expected` holding the
//! exact stderr of `pipe validate tests/fixtures/invalid/NN-what.yaml` run from the repository
//! root. To regenerate the expectations after an intended change to a message:
//!
//! ```text
//! PIPE_BLESS=1 cargo test --test config_errors
//! ```
//!
//! then review every changed `.expected` file by eye before committing it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: &str = "tests/fixtures/invalid";
const MIN_FIXTURES: usize = 14;
/// Exit code of `pipe validate` for an invalid pipeline.
const EXIT_INVALID: i32 = 2;
/// Variables the fixtures rely on being unset.
const UNSET_VARS: &[&str] = &[
    "PIPE_TEST_SURELY_UNSET_VAR",
    "PIPE_TEST_SURELY_UNSET_OUT",
    // The reference pipeline chooses its extractor and its stores by these.
    "OPENAI_API_KEY",
    "QDRANT_URL",
    "NEO4J_URI",
    "FALKORDB_URL",
];

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `pipe ARGS...` from the repository root with the fixture variables unset.
fn pipe(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pipe"));
    command.current_dir(repo_root()).args(args);
    for var in UNSET_VARS {
        command.env_remove(var);
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run `pipe {}`: {e}", args.join(" ")))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Line-by-line comparison: `  ` same, `-` expected only, `+` actual only.
fn diff(expected: &str, actual: &str) -> String {
    let expected: Vec<&str> = expected.lines().collect();
    let actual: Vec<&str> = actual.lines().collect();
    let mut out = String::new();
    for i in 0..expected.len().max(actual.len()) {
        match (expected.get(i), actual.get(i)) {
            (Some(e), Some(a)) if e == a => writeln!(out, "    {e}").unwrap(),
            (e, a) => {
                if let Some(e) = e {
                    writeln!(out, "  - {e}").unwrap();
                }
                if let Some(a) = a {
                    writeln!(out, "  + {a}").unwrap();
                }
            }
        }
    }
    out
}

fn fixtures() -> Vec<PathBuf> {
    let dir = repo_root().join(FIXTURES);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_invalid_fixture_reports_exactly_the_expected_errors() {
    let bless = std::env::var_os("PIPE_BLESS").is_some_and(|v| v == "1");
    let files = fixtures();
    assert!(
        files.len() >= MIN_FIXTURES,
        "expected at least {MIN_FIXTURES} fixtures in {FIXTURES}, found {}",
        files.len()
    );

    let mut failures = Vec::new();
    for yaml in &files {
        let name = yaml.file_name().unwrap().to_string_lossy().into_owned();
        let relative = format!("{FIXTURES}/{name}");
        let expected_path = yaml.with_extension("expected");
        let output = pipe(&["validate", &relative]);
        let stdout = text(&output.stdout);
        let stderr = text(&output.stderr);

        let mut problems = Vec::new();
        if output.status.code() != Some(EXIT_INVALID) {
            problems.push(format!(
                "exit status {} (expected code {EXIT_INVALID})",
                output.status
            ));
        }
        if !stdout.is_empty() {
            problems.push(format!("stdout is not empty:\n{stdout}"));
        }
        if bless {
            std::fs::write(&expected_path, &stderr)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", expected_path.display()));
        } else {
            match std::fs::read_to_string(&expected_path) {
                Ok(expected) if expected == stderr => {}
                Ok(expected) => problems.push(format!(
                    "stderr differs (- expected, + actual):\n{}",
                    diff(&expected, &stderr)
                )),
                Err(e) => problems.push(format!(
                    "cannot read {} ({e}); actual stderr:\n{stderr}\n(run with PIPE_BLESS=1 to create it, then review it)",
                    expected_path.display()
                )),
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{relative}:\n  {}", problems.join("\n  ")));
        }
    }

    // An expectation without its fixture is a leftover from a rename or removal.
    let dir = repo_root().join(FIXTURES);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "expected")
            && !path.with_extension("yaml").exists()
        {
            failures.push(format!("{}: no matching .yaml fixture", path.display()));
        }
    }

    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

#[test]
fn set_with_unknown_stage_id_is_reported_at_the_argument() {
    let output = pipe(&[
        "validate",
        "pipelines.yaml",
        "--set",
        "stages.nope.concurrency=4",
    ]);
    assert_eq!(output.status.code(), Some(EXIT_INVALID), "{output:?}");
    assert_eq!(text(&output.stdout), "");
    let expected =
        "--set stages.nope.concurrency=4: error: `stages` has no entry with id `nope`\n1 error\n";
    let stderr = text(&output.stderr);
    assert!(
        stderr == expected,
        "stderr differs (- expected, + actual):\n{}",
        diff(expected, &stderr)
    );
}

#[test]
fn set_with_zero_concurrency_is_reported_at_the_argument() {
    let output = pipe(&[
        "validate",
        "pipelines.yaml",
        "--set",
        "stages.chunk.concurrency=0",
    ]);
    assert_eq!(output.status.code(), Some(EXIT_INVALID), "{output:?}");
    assert_eq!(text(&output.stdout), "");
    // Exactly one error: the rejected stage stays in the graph as a placeholder, so its
    // neighbours are not blamed for its absence.
    assert_eq!(
        text(&output.stderr),
        "--set stages.chunk.concurrency=0: error: stage `chunk`: `concurrency` must be at least 1\n1 error\n"
    );
}

#[test]
fn reference_pipeline_is_valid() {
    let output = pipe(&["validate", "pipelines.yaml"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr:\n{}",
        text(&output.stderr)
    );
    assert_eq!(
        text(&output.stdout),
        "pipelines.yaml: ok (9 stages, 9 edges)\n  \
         off here: kg_extract (kg_extract): `when` is false\n  \
         off here: qdrant (qdrant): `when` is false\n  \
         off here: neo4j (neo4j): `when` is false\n  \
         off here: falkordb (falkordb): `when` is false\n"
    );
    assert_eq!(text(&output.stderr), "");
}
