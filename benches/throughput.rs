//! Records/s through `generate → noop → noop → noop → blackhole`.
//!
//! The pipeline is built from YAML with `pipeline::config::load_str`, using the built-in
//! registry plus a `noop` processor kind defined here, outside the `stages` crate (the same path
//! a third-party crate takes to add its own stages). It runs on a 2-worker multi-thread tokio
//! runtime. Two variants: default stage settings, and `buffer: 1024` on every stage.
//!
//! Goal: ≥ 1,000,000 records/s on 2 cores.
//!
//!     cargo bench --bench throughput -- --warm-up-time 1 --measurement-time 5
//!
//! Every run asserts that the blackhole received (and wrote) all N records.

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use pipeline::config::{Env, Locator, load_str};
use pipeline::runtime::{RunOptions, RunStatus, prepare};
use pipeline::{
    BuildContext, BuiltStage, KindSet, Processor, Produces, Record, Registry, Role, StageConfig,
    StageError, async_trait,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

// The same allocator as the `pipe` binary, so the bench measures what users run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Records per run (default; `PIPE_BENCH_RECORDS` overrides it, e.g. for a short run under a
/// profiler).
const DEFAULT_RECORDS: u64 = 200_000;
/// Bytes of text per generated document.
const TEXT_BYTES: usize = 64;

/// `noop`: passes every record through unchanged.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoopConfig {}

#[async_trait]
impl StageConfig for NoopConfig {
    const KIND: &'static str = "noop";
    const DESCRIPTION: &'static str = "Passes records through unchanged (benchmarks)";
    const ROLE: Role = Role::Processor;

    fn accepts() -> KindSet {
        KindSet::ANY
    }

    fn produces() -> Produces {
        Produces::SameAsInput
    }

    async fn build(&self, _ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Processor(Arc::new(NoopProcessor)))
    }
}

struct NoopProcessor;

#[async_trait]
impl Processor for NoopProcessor {
    async fn process(&self, record: &Record) -> Result<Vec<Record>, StageError> {
        Ok(vec![record.clone()])
    }
}

fn registry() -> Registry {
    let mut registry = stages::builtin_registry();
    registry.register::<NoopConfig>();
    registry
}

/// The pipeline YAML; `stage_extra` is added to every stage (e.g. `buffer: 1024`).
fn pipeline_yaml(n: u64, stage_extra: &str) -> String {
    let extra = if stage_extra.is_empty() {
        String::new()
    } else {
        format!("\n    {stage_extra}")
    };
    format!(
        "description: throughput bench
stages:
  - id: gen
    kind: generate
    config: {{ count: {n}, text_bytes: {TEXT_BYTES} }}{extra}
  - id: noop1
    kind: noop
    inputs: [gen]{extra}
  - id: noop2
    kind: noop
    inputs: [noop1]{extra}
  - id: noop3
    kind: noop
    inputs: [noop2]{extra}
  - id: sink
    kind: blackhole
    inputs: [noop3]{extra}
"
    )
}

/// Loads, builds and runs the pipeline once; returns the time spent in `run()` and checks that
/// every record reached the sink.
async fn run_once(
    yaml: &str,
    registry: &Registry,
    state_dir: &std::path::Path,
    n: u64,
    expected_buffer: usize,
) -> Duration {
    let locator = Locator {
        file: Arc::from("throughput-bench.yaml"),
        overrides: Vec::new(),
    };
    let plan = load_str(yaml, &locator, registry, &Env::from_map(HashMap::new()))
        .unwrap_or_else(|d| panic!("bench pipeline does not load:\n{d}"));
    assert!(plan.stages.iter().all(|s| s.buffer == expected_buffer));
    let prepared = prepare(plan, RunOptions::new(state_dir.to_path_buf()))
        .await
        .expect("bench pipeline must build");
    let start = Instant::now();
    let report = prepared.run().await.expect("bench run must finish");
    let elapsed = start.elapsed();
    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    let sink = report.stages.last().expect("a sink stage");
    assert_eq!(sink.kind, "blackhole");
    assert_eq!(sink.received, n, "blackhole must receive every record");
    assert_eq!(sink.out, n, "blackhole must write every record");
    assert_eq!(report.dead_letters.count, 0);
    elapsed
}

fn records() -> u64 {
    match std::env::var("PIPE_BENCH_RECORDS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("PIPE_BENCH_RECORDS must be a number, got {v:?}")),
        Err(_) => DEFAULT_RECORDS,
    }
}

fn throughput(c: &mut Criterion) {
    let n = records();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let registry = registry();
    let state = tempfile::tempdir().expect("temp state dir");

    let mut group = c.benchmark_group("pipeline_generate_3noop_blackhole");
    group.throughput(Throughput::Elements(n));
    // One iteration moves N records (about a second): few, equal-sized samples.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);

    for (name, extra, buffer) in [
        ("default_settings", "", pipeline::config::DEFAULT_BUFFER),
        ("buffer_1024", "buffer: 1024", 1024),
    ] {
        let yaml = pipeline_yaml(n, extra);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += rt.block_on(run_once(&yaml, &registry, state.path(), n, buffer));
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
