//! The outside crate's own binary runs a pipeline that uses its stage.

use std::process::Command;

#[test]
fn my_pipe_runs_the_custom_stage() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.yaml");
    let out_path = dir.path().join("redacted.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_my-pipe"))
        .args(["run", pipeline.to_str().unwrap(), "--quiet", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--set")
        .arg(format!("stages.out.config.path={}", out_path.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = std::fs::read_to_string(&out_path).unwrap();
    let record: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let text = record["payload"]["text"].as_str().unwrap();
    assert!(
        text.contains("[000:00:03] CMP: Okay. P11, [REDACTED]."),
        "{}",
        &text[..200]
    );
    assert!(
        !text
            .split(|c: char| !c.is_alphanumeric())
            .any(|w| w == "Jim")
    );

    // And the kind shows up in its list-stages.
    let list = Command::new(env!("CARGO_BIN_EXE_my-pipe"))
        .arg("list-stages")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&list.stdout)
            .contains("redact (processor) — Replaces listed words")
    );
}
