//! `generate` source: synthetic documents, for benchmarks, load tests and trying a pipeline's
//! shape without real input.

use pipeline::futures::stream::{self, BoxStream, StreamExt};
use pipeline::{
    BuildContext, BuiltStage, ConfigIssue, Document, KindSet, Payload, PayloadKind, Produces,
    Provenance, Record, Rejected, Role, Source, StageConfig, StageError, async_trait, record,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// How many documents; omit to generate until stopped (Ctrl-C or `--limit`).
    #[serde(default)]
    pub count: Option<u64>,
    /// Length of each document's text in bytes.
    #[serde(default = "default_text_bytes")]
    pub text_bytes: usize,
    /// Pause between documents, in milliseconds (0 = as fast as downstream takes them).
    #[serde(default)]
    pub interval_ms: u64,
}

fn default_text_bytes() -> usize {
    64
}

#[async_trait]
impl StageConfig for GenerateConfig {
    const KIND: &'static str = "generate";
    const DESCRIPTION: &'static str =
        "Emits synthetic documents (benchmarks, load tests, dry runs)";
    const ROLE: Role = Role::Source;

    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Document]))
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        if self.text_bytes > 64 * 1024 * 1024 {
            return vec![ConfigIssue::new("text_bytes", "must be at most 64 MiB")];
        }
        Vec::new()
    }

    async fn build(&self, _ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Source(Arc::new(GenerateSource {
            count: self.count,
            text_bytes: self.text_bytes,
            interval: Duration::from_millis(self.interval_ms),
        })))
    }
}

pub struct GenerateSource {
    count: Option<u64>,
    text_bytes: usize,
    interval: Duration,
}

impl GenerateSource {
    pub fn new(count: Option<u64>, text_bytes: usize) -> Self {
        GenerateSource {
            count,
            text_bytes,
            interval: Duration::ZERO,
        }
    }

    fn make(&self, i: u64, filler: &str) -> Record {
        use std::fmt::Write;
        let mut text = String::with_capacity(self.text_bytes.max(24));
        let _ = write!(text, "document {i} ");
        // `filler` is ASCII and text_bytes long, so any cut is a char boundary.
        if text.len() < self.text_bytes {
            text.push_str(&filler[..self.text_bytes - text.len()]);
        }
        let id = record::stable_id(&[b"generate", &i.to_le_bytes()]);
        Record::new(
            id.clone(),
            Provenance {
                document_id: id,
                ..Provenance::default()
            },
            Payload::Document(Document {
                text,
                format: "generated".into(),
            }),
        )
    }
}

impl Source for GenerateSource {
    fn size_hint(&self) -> Option<u64> {
        self.count
    }

    fn records(self: Arc<Self>) -> BoxStream<'static, Result<Record, Rejected>> {
        let end = self.count.unwrap_or(u64::MAX);
        let interval = self.interval;
        let filler: String = "lorem ipsum dolor sit amet "
            .chars()
            .cycle()
            .take(self.text_bytes)
            .collect();
        let items = stream::iter(0..end).map(move |i| Ok(self.make(i, &filler)));
        if interval.is_zero() {
            items.boxed()
        } else {
            items
                .then(move |item| async move {
                    tokio::time::sleep(interval).await;
                    item
                })
                .boxed()
        }
    }
}
