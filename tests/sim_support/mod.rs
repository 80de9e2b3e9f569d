//! For the tests that run the real `pipe` binary against the API simulator (a real HTTP
//! server in the test process): start the simulator and read its stats, run `pipe`, and read
//! what a run left behind (its report, dead letters, JSONL outputs).

// Each test binary uses the part it needs.
#![allow(dead_code)]

use pipe_simulator::SimConfig;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

pub const PIPE: &str = env!("CARGO_BIN_EXE_pipe");

pub struct Sim {
    pub addr: SocketAddr,
    _task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Sim {
    pub async fn start(config: SimConfig) -> Sim {
        let (addr, task) = pipe_simulator::spawn(config).await;
        Sim { addr, _task: task }
    }

    /// Starts it from JSON, so every field of `SimConfig` can be given.
    pub async fn start_json(config: Value) -> Sim {
        let parsed: SimConfig = serde_json::from_value(config.clone()).unwrap_or_else(|e| {
            panic!("pipe-sim does not know this config (the SIM_CONTRACT fields): {e}\n{config}")
        });
        Sim::start(parsed).await
    }

    pub fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("http://{}/_sim/stats", self.addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn reset(&self) {
        reqwest::Client::new()
            .post(format!("http://{}/_sim/reset", self.addr))
            .send()
            .await
            .unwrap();
    }
}

/// Runs `pipe` with `args` in `dir` (without the caller's `RUST_LOG`).
pub async fn pipe(dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(PIPE)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run pipe")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The report of every run kept in `state` (a `--state-dir`), oldest first (run ids sort by
/// start time).
pub fn reports(state: &Path) -> Vec<Value> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(state.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    runs.sort();
    runs.iter()
        .map(|r| {
            serde_json::from_str(&std::fs::read_to_string(r.join("report.json")).unwrap()).unwrap()
        })
        .collect()
}

pub fn last_report(state: &Path) -> Value {
    reports(state).pop().expect("a report")
}

pub fn stage<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no stage {id} in {report}"))
}

/// The JSON lines of `path` (none if it does not exist).
pub fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn dead_letters(report: &Value) -> Vec<Value> {
    report["dead_letters"]["path"]
        .as_str()
        .map(|p| lines(Path::new(p)))
        .unwrap_or_default()
}
