//! Test-only stage kinds, registered from outside the core like any third-party stage:
//! `numbers` (source), `probe` (processor with a behaviour), `collect` (sink that remembers).
#![allow(dead_code)]

use pipeline::config::{Env, Locator};
use pipeline::futures::stream::{self, BoxStream, StreamExt};
use pipeline::runtime::{self, RunOptions, RunReport};
use pipeline::{
    BuildContext, BuiltStage, Document, KindSet, Payload, PayloadKind, Processor, Produces,
    Provenance, Record, Registry, Rejected, Role, Sink, Source, StageConfig, StageError,
    async_trait,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

/// Shared observations, keyed by a name each test picks (tests run in parallel).
#[derive(Default)]
pub struct Probe {
    pub collected: Mutex<Vec<Record>>,
    pub created: AtomicU64,
    pub consumed: AtomicU64,
    /// Largest `created - consumed` seen by the source: records alive in the pipeline.
    pub max_alive: AtomicU64,
    pub in_flight: AtomicI64,
    pub max_in_flight: AtomicI64,
}

static PROBES: LazyLock<Mutex<HashMap<String, Arc<Probe>>>> = LazyLock::new(Default::default);

pub fn probe(name: &str) -> Arc<Probe> {
    PROBES
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .clone()
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NumbersConfig {
    pub count: u64,
    #[serde(default)]
    pub prefix: String,
    pub probe: String,
}

#[async_trait]
impl StageConfig for NumbersConfig {
    const KIND: &'static str = "numbers";
    const DESCRIPTION: &'static str = "test source";
    const ROLE: Role = Role::Source;
    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Document]))
    }
    async fn build(&self, _: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Source(Arc::new(Numbers {
            count: self.count,
            prefix: self.prefix.clone(),
            probe: probe(&self.probe),
        })))
    }
}

struct Numbers {
    count: u64,
    prefix: String,
    probe: Arc<Probe>,
}

impl Source for Numbers {
    fn records(self: Arc<Self>) -> BoxStream<'static, Result<Record, Rejected>> {
        stream::iter(0..self.count)
            .map(move |i| {
                let created = self.probe.created.fetch_add(1, SeqCst) + 1;
                let alive = created - self.probe.consumed.load(SeqCst);
                self.probe.max_alive.fetch_max(alive, SeqCst);
                let id = format!("{}{i}", self.prefix);
                Ok(Record::new(
                    id.clone(),
                    Provenance {
                        document_id: id.clone(),
                        ..Default::default()
                    },
                    Payload::Document(Document {
                        text: id,
                        format: "test".into(),
                    }),
                ))
            })
            .boxed()
    }
}

#[derive(Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    Noop,
    /// Sleeps 0..8 ms, derived from the record id, so calls finish out of order.
    Jitter,
    /// Record error for every record whose number is a multiple of `n`.
    FailEvery,
    /// Run-fatal error at record number `n`.
    FatalAt,
    /// Panics at record number `n`.
    PanicAt,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    pub behaviour: Behaviour,
    #[serde(default)]
    pub n: u64,
    pub probe: String,
}

#[async_trait]
impl StageConfig for ProbeConfig {
    const KIND: &'static str = "probe";
    const DESCRIPTION: &'static str = "test processor";
    const ROLE: Role = Role::Processor;
    fn accepts() -> KindSet {
        KindSet::ANY
    }
    fn produces() -> Produces {
        Produces::SameAsInput
    }
    async fn build(&self, _: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Processor(Arc::new(ProbeProcessor {
            behaviour: self.behaviour,
            n: self.n,
            probe: probe(&self.probe),
        })))
    }
}

struct ProbeProcessor {
    behaviour: Behaviour,
    n: u64,
    probe: Arc<Probe>,
}

fn number(record: &Record) -> u64 {
    let digits: String = record.id.chars().filter(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}

#[async_trait]
impl Processor for ProbeProcessor {
    async fn process(&self, record: &Record) -> Result<Vec<Record>, StageError> {
        let now = self.probe.in_flight.fetch_add(1, SeqCst) + 1;
        self.probe.max_in_flight.fetch_max(now, SeqCst);
        let n = number(record);
        let result = match self.behaviour {
            Behaviour::Noop => Ok(vec![record.clone()]),
            Behaviour::Jitter => {
                let ms =
                    pipeline::record::stable_id(&[record.id.as_bytes()]).as_bytes()[0] as u64 % 8;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(vec![record.clone()])
            }
            Behaviour::FailEvery if n.is_multiple_of(self.n) => Err(StageError::record(format!(
                "{} is a multiple of {}",
                n, self.n
            ))),
            Behaviour::FatalAt if n == self.n => Err(StageError::run("credentials rejected (401)")),
            Behaviour::PanicAt if n == self.n => panic!("boom at {n}"),
            _ => Ok(vec![record.clone()]),
        };
        self.probe.in_flight.fetch_sub(1, SeqCst);
        result
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectConfig {
    pub probe: String,
    #[serde(default = "one")]
    pub batch: usize,
    /// Busy work per record, in microseconds: a sink slower than the source.
    #[serde(default)]
    pub slow_us: u64,
}

fn one() -> usize {
    1
}

#[async_trait]
impl StageConfig for CollectConfig {
    const KIND: &'static str = "collect";
    const DESCRIPTION: &'static str = "test sink";
    const ROLE: Role = Role::Sink;
    fn accepts() -> KindSet {
        KindSet::ANY
    }
    fn produces() -> Produces {
        Produces::Nothing
    }
    async fn build(&self, _: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Sink(Arc::new(Collect {
            probe: probe(&self.probe),
            batch: self.batch,
            slow: Duration::from_micros(self.slow_us),
        })))
    }
}

struct Collect {
    probe: Arc<Probe>,
    batch: usize,
    slow: Duration,
}

#[async_trait]
impl Sink for Collect {
    fn batch_size(&self) -> usize {
        self.batch
    }
    async fn write(&self, batch: &[Record]) -> Result<(), StageError> {
        for record in batch {
            if !self.slow.is_zero() {
                let until = std::time::Instant::now() + self.slow;
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            self.probe.collected.lock().unwrap().push(record.clone());
            self.probe.consumed.fetch_add(1, SeqCst);
        }
        Ok(())
    }
}

pub fn registry() -> Registry {
    let mut registry = stages::builtin_registry();
    registry
        .register::<NumbersConfig>()
        .register::<ProbeConfig>()
        .register::<CollectConfig>()
        .register::<WindowConfig>();
    registry
}

/// Loads YAML text and runs it to the end; the state dir is a fresh temp dir.
pub async fn run_yaml(yaml: &str) -> (RunReport, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let report = run_yaml_in(yaml, state.path(), None).await;
    (report, state)
}

pub async fn run_yaml_in(yaml: &str, state_dir: &std::path::Path, limit: Option<u64>) -> RunReport {
    let locator = Locator {
        file: Arc::from("test.yaml"),
        overrides: Vec::new(),
    };
    let plan = pipeline::config::load_str(yaml, &locator, &registry(), &Env::default())
        .unwrap_or_else(|d| panic!("invalid test pipeline:\n{d}"));
    let mut options = RunOptions::new(state_dir.to_path_buf());
    options.limit = limit;
    let prepared = runtime::prepare(plan, options).await.unwrap();
    prepared.run().await.unwrap()
}

pub fn stage<'a>(report: &'a RunReport, id: &str) -> &'a pipeline::runtime::StageReport {
    report
        .stages
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no stage {id}"))
}

/// `window`: a stream-to-stream transform grouping `size` records into one Json record listing
/// their ids; a record whose id is `reject` comes out as a rejection instead.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    pub size: usize,
    #[serde(default)]
    pub reject: Option<String>,
}

#[async_trait]
impl StageConfig for WindowConfig {
    const KIND: &'static str = "window";
    const DESCRIPTION: &'static str = "test transform";
    const ROLE: Role = Role::Transform;
    fn accepts() -> KindSet {
        KindSet::ANY
    }
    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Json]))
    }
    async fn build(&self, _: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Transform(Arc::new(Window {
            size: self.size,
            reject: self.reject.clone(),
        })))
    }
}

struct Window {
    size: usize,
    reject: Option<String>,
}

impl pipeline::Transform for Window {
    fn transform(
        self: Arc<Self>,
        input: BoxStream<'static, Record>,
    ) -> BoxStream<'static, Result<Record, Rejected>> {
        let this = self.clone();
        let rejected = input.map(move |r| {
            if this.reject.as_deref() == Some(r.id.as_str()) {
                Err(Rejected::new(
                    serde_json::json!({ "id": r.id }),
                    StageError::record("rejected by window"),
                ))
            } else {
                Ok(r)
            }
        });
        let size = self.size;
        rejected
            .chunks(size)
            .flat_map(|items| {
                let mut out: Vec<Result<Record, Rejected>> = Vec::new();
                let mut ids = Vec::new();
                for item in items {
                    match item {
                        Ok(r) => ids.push(r.id),
                        Err(e) => out.push(Err(e)),
                    }
                }
                if !ids.is_empty() {
                    let id = ids.join("+");
                    out.push(Ok(Record::new(
                        id.clone(),
                        Provenance {
                            document_id: id,
                            ..Default::default()
                        },
                        Payload::Json {
                            value: serde_json::json!({ "ids": ids }),
                        },
                    )));
                }
                stream::iter(out)
            })
            .boxed()
    }
}
