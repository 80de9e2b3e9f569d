//! `blackhole` sink: counts and discards records (benchmarks, dry runs of upstream stages).
//! `delay_ms` makes it a deliberately slow sink, to see backpressure at work.

use pipeline::{
    BuildContext, BuiltStage, ConfigIssue, KindSet, Produces, Record, Role, Sink, StageConfig,
    StageError, Written, async_trait,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {
    /// Records per write.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Sleep this long per batch, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
}

fn default_batch() -> usize {
    256
}

#[async_trait]
impl StageConfig for BlackholeConfig {
    const KIND: &'static str = "blackhole";
    const DESCRIPTION: &'static str =
        "Discards records (counted in the report); optional delay per batch";
    const ROLE: Role = Role::Sink;

    fn accepts() -> KindSet {
        KindSet::ANY
    }

    fn produces() -> Produces {
        Produces::Nothing
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        if self.batch == 0 {
            return vec![ConfigIssue::new("batch", "must be at least 1")];
        }
        Vec::new()
    }

    async fn build(&self, _ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Sink(Arc::new(BlackholeSink {
            batch: self.batch,
            delay: Duration::from_millis(self.delay_ms),
        })))
    }
}

struct BlackholeSink {
    batch: usize,
    delay: Duration,
}

#[async_trait]
impl Sink for BlackholeSink {
    fn batch_size(&self) -> usize {
        self.batch
    }

    async fn write(&self, _batch: &[Record]) -> Result<Written, StageError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(Written::durable())
    }
}
