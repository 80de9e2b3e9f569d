//! A stage written outside the `pipe` workspace crates: `redact` replaces configured words
//! (names, call signs, account numbers) with a placeholder before text reaches an LLM.
//!
//! It needs only the `pipeline` crate's traits; `main.rs` registers it next to the built-ins
//! and gets the whole `pipe` command line for free.

use pipeline::{
    BuildContext, BuiltStage, Chunk, ConfigIssue, Document, KindSet, Payload, PayloadKind,
    Processor, Produces, Record, Role, StageConfig, StageError, async_trait,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// Words to hide (whole words, case-sensitive).
    pub words: Vec<String>,
    /// What to put in their place.
    #[serde(default = "default_placeholder")]
    pub placeholder: String,
}

fn default_placeholder() -> String {
    "[REDACTED]".into()
}

#[async_trait]
impl StageConfig for RedactConfig {
    const KIND: &'static str = "redact";
    const DESCRIPTION: &'static str = "Replaces listed words with a placeholder";
    const ROLE: Role = Role::Processor;

    fn accepts() -> KindSet {
        KindSet::of(&[PayloadKind::Document, PayloadKind::Chunk])
    }

    fn produces() -> Produces {
        Produces::SameAsInput
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        if self.words.iter().any(|w| w.trim().is_empty()) {
            return vec![ConfigIssue::new("words", "must not contain empty words")];
        }
        Vec::new()
    }

    async fn build(&self, _ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Processor(Arc::new(Redact {
            words: self.words.clone(),
            placeholder: self.placeholder.clone(),
        })))
    }
}

struct Redact {
    words: Vec<String>,
    placeholder: String,
}

impl Redact {
    fn redact(&self, text: &str) -> String {
        text.split_inclusive(|c: char| !c.is_alphanumeric())
            .map(|piece| {
                let word = piece.trim_end_matches(|c: char| !c.is_alphanumeric());
                if self.words.iter().any(|w| w == word) {
                    format!("{}{}", self.placeholder, &piece[word.len()..])
                } else {
                    piece.to_string()
                }
            })
            .collect()
    }
}

#[async_trait]
impl Processor for Redact {
    async fn process(&self, record: &Record) -> Result<Vec<Record>, StageError> {
        let payload = match &record.payload {
            Payload::Document(d) => Payload::Document(Document {
                text: self.redact(&d.text),
                format: d.format.clone(),
            }),
            Payload::Chunk(c) => Payload::Chunk(Chunk {
                text: self.redact(&c.text),
                ..c.clone()
            }),
            other => {
                return Err(StageError::record(format!(
                    "redact cannot handle {}",
                    other.kind().name()
                )));
            }
        };
        Ok(vec![Record {
            payload,
            ..record.clone()
        }])
    }
}
