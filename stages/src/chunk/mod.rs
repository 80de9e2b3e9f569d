//! `chunk` processor: token-aware splitting with overlap and exact token counts (see
//! [`splitter`]), transcript-aware: in a transcript it packs whole speaker turns, so chunks
//! break between turns wherever a turn fits.

pub mod splitter;

use pipeline::{
    BuildContext, BuiltStage, Chunk, ConfigIssue, KindSet, Payload, PayloadKind, Processor,
    Produces, Provenance, Record, Role, StageConfig, StageError, async_trait, record,
};
use schemars::JsonSchema;
use serde::Deserialize;
use splitter::{SplitOptions, Tokenizer, TranscriptMode, split};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerName {
    /// OpenAI gpt-4 / gpt-3.5 / text-embedding-3 tokenizer.
    Cl100kBase,
    /// OpenAI gpt-4o / o-series tokenizer.
    O200kBase,
}

#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TranscriptSetting {
    /// Transcript handling when the text looks like one (speaker labels on many lines).
    Auto,
    /// Always pack whole speaker turns.
    On,
    /// Plain token-aware splitting.
    Off,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChunkConfig {
    /// Largest chunk, in tokens of `tokenizer`.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Tokens of context repeated from the end of the previous chunk.
    #[serde(default = "default_overlap")]
    pub overlap: usize,
    /// Tokenizer that counts `max_tokens` and `overlap`.
    #[serde(default = "default_tokenizer")]
    pub tokenizer: TokenizerName,
    /// Keep speaker turns whole (`auto` detects transcripts).
    #[serde(default = "default_transcript")]
    pub transcript: TranscriptSetting,
}

fn default_max_tokens() -> usize {
    800
}
fn default_overlap() -> usize {
    100
}
fn default_tokenizer() -> TokenizerName {
    TokenizerName::Cl100kBase
}
fn default_transcript() -> TranscriptSetting {
    TranscriptSetting::Auto
}

impl ChunkConfig {
    pub fn options(&self) -> SplitOptions {
        SplitOptions {
            max_tokens: self.max_tokens,
            overlap: self.overlap,
            tokenizer: match self.tokenizer {
                TokenizerName::Cl100kBase => Tokenizer::Cl100kBase,
                TokenizerName::O200kBase => Tokenizer::O200kBase,
            },
            transcript: match self.transcript {
                TranscriptSetting::Auto => TranscriptMode::Auto,
                TranscriptSetting::On => TranscriptMode::On,
                TranscriptSetting::Off => TranscriptMode::Off,
            },
        }
    }
}

#[async_trait]
impl StageConfig for ChunkConfig {
    const KIND: &'static str = "chunk";
    const DESCRIPTION: &'static str =
        "Splits documents into token-bounded chunks, keeping speaker turns whole";
    const ROLE: Role = Role::Processor;

    fn accepts() -> KindSet {
        KindSet::of(&[PayloadKind::Document])
    }

    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Chunk]))
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.max_tokens == 0 {
            issues.push(ConfigIssue::new("max_tokens", "must be at least 1"));
        }
        if self.overlap >= self.max_tokens && self.max_tokens > 0 {
            issues.push(ConfigIssue::new(
                "overlap",
                format!("must be smaller than max_tokens ({})", self.max_tokens),
            ));
        }
        issues
    }

    async fn build(&self, _ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        let options = self.options();
        let name = match self.tokenizer {
            TokenizerName::Cl100kBase => "cl100k_base",
            TokenizerName::O200kBase => "o200k_base",
        };
        // Build the tokenizer now (slow, once) rather than inside the first call.
        options.tokenizer.count("warm up");
        Ok(BuiltStage::Processor(Arc::new(ChunkProcessor {
            options,
            tokenizer_name: name,
        })))
    }
}

pub struct ChunkProcessor {
    options: SplitOptions,
    tokenizer_name: &'static str,
}

impl ChunkProcessor {
    pub fn new(config: &ChunkConfig) -> Self {
        ChunkProcessor {
            options: config.options(),
            tokenizer_name: match config.tokenizer {
                TokenizerName::Cl100kBase => "cl100k_base",
                TokenizerName::O200kBase => "o200k_base",
            },
        }
    }

    pub fn chunk(&self, record: &Record) -> Result<Vec<Record>, StageError> {
        let Payload::Document(doc) = &record.payload else {
            return Err(StageError::record(format!(
                "chunk expects a Document, got {}",
                record.payload.kind().name()
            )));
        };
        let spans = split(&doc.text, &self.options).map_err(|e| StageError::record(e.0))?;
        let mut chars = CharIndex::new(&doc.text);
        let mut out = Vec::with_capacity(spans.len());
        for (index, span) in spans.iter().enumerate() {
            let text = &doc.text[span.start..span.end];
            let id = record::stable_id(&[
                record.id.as_bytes(),
                b"chunk",
                &(span.start as u64).to_le_bytes(),
                &(span.end as u64).to_le_bytes(),
            ]);
            let char_span = [chars.at(span.start), chars.at(span.end)];
            let provenance = Provenance {
                chunk_index: Some(index as u32),
                char_span: Some(char_span),
                ..record.provenance.clone()
            };
            out.push(Record::new(
                id,
                provenance,
                Payload::Chunk(Chunk {
                    text: text.to_string(),
                    tokens: span.tokens as u32,
                    tokenizer: self.tokenizer_name.to_string(),
                    context: None,
                }),
            ));
        }
        Ok(out)
    }
}

#[pipeline::async_trait]
impl Processor for ChunkProcessor {
    async fn process(&self, record: &Record) -> Result<Vec<Record>, StageError> {
        self.chunk(record)
    }

    fn cpu_bound(&self) -> bool {
        true
    }
}

/// Byte offset → char offset, for increasing offsets in one pass over the text.
struct CharIndex<'a> {
    text: &'a str,
    byte: usize,
    chars: u64,
}

impl<'a> CharIndex<'a> {
    fn new(text: &'a str) -> Self {
        CharIndex {
            text,
            byte: 0,
            chars: 0,
        }
    }

    fn at(&mut self, byte: usize) -> u64 {
        if byte < self.byte {
            // Overlapping chunks step back a little: count only the stretch stepped over.
            self.chars -= self.text[byte..self.byte].chars().count() as u64;
        } else {
            self.chars += self.text[self.byte..byte].chars().count() as u64;
        }
        self.byte = byte;
        self.chars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_index_handles_multibyte_and_going_back() {
        let text = "héllo wörld";
        let mut idx = CharIndex::new(text);
        assert_eq!(idx.at(0), 0);
        assert_eq!(idx.at(text.find('w').unwrap()), 6);
        assert_eq!(idx.at(text.len()), 11);
        assert_eq!(idx.at(3), 2);
        assert_eq!(idx.at(text.len()), 11);
        assert_eq!(idx.at(1), 1);
    }
}
