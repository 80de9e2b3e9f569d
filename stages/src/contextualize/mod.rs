//! `contextualize` (contextual retrieval): for each chunk, the model writes a short context
//! that situates it in its document; it is stored in `Chunk.context` and embedded in front of
//! the chunk's text. The whole document is the head of every prompt for its chunks — the
//! system part, which Anthropic requests mark with `cache_control` and which OpenAI-compatible
//! servers cache by prefix — so the provider reads it from its prompt cache for every chunk
//! after the first: the first chunk of a document is sent alone, the others once it answered.
//!
//! Where the document comes from: the stage takes the chunk stream of `chunk` and rebuilds
//! each document from its chunks (their document-level character spans; overlaps are read
//! once). `chunk` emits a document's chunks together, so a document is complete when a chunk
//! of another document arrives or the input ends. This keeps the pipeline's shape
//! (files → chunk → contextualize → embed), keeps chunk ids exactly those of `chunk`, and
//! holds one document at a time, not the corpus. Input where documents interleave (a
//! reordering stage in between) still works, each run of a document's chunks being treated
//! as the document, and is counted (`documents_interleaved`) with a warning.
//!
//! A document longer than `max_document_tokens` is cut into sections of whole chunks; each
//! section is the document of its chunks.

use crate::provider::{Chat, Prompt, Reply};
use futures::StreamExt;
use futures::stream::{BoxStream, FuturesUnordered};
use pipeline::policy::{CallPolicy, CallSpec, cache_key};
use pipeline::runtime::StageNotes;
use pipeline::{
    BuildContext, BuiltStage, ConfigIssue, KindSet, Payload, PayloadKind, Produces, Record,
    Rejected, Role, StageConfig, StageError, Transform, async_trait,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::watch;

const DEFAULT_INSTRUCTIONS: &str = "You situate chunks of a document within the whole \
     document, to improve search retrieval of the chunks.";

const DEFAULT_QUESTION: &str = "Here is the chunk we want to situate within the whole \
     document:\n<chunk>\n{chunk}\n</chunk>\nPlease give a short succinct context to situate \
     this chunk within the overall document for the purposes of improving search retrieval of \
     the chunk. Answer only with the succinct context and nothing else.";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextualizeConfig {
    /// A name from `resources.providers`.
    pub provider: String,
    /// What the model is told before the document (the stable head of every prompt).
    #[serde(default)]
    pub instructions: Option<String>,
    /// The question after the document; `{chunk}` is replaced by the chunk's text. Default:
    /// Anthropic's contextual-retrieval prompt.
    #[serde(default)]
    pub question: Option<String>,
    /// Most tokens of a context.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Longest document sent whole (tokens, as the chunker counted them); a longer one is
    /// cut into sections of whole chunks, each the document of its chunks.
    #[serde(default = "default_document_tokens")]
    pub max_document_tokens: u64,
    /// Most chunks being contextualized at once (the provider's limit paces the calls; this
    /// bounds what the stage holds).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Part of the cache key: change it to get fresh contexts for unchanged chunks.
    #[serde(default = "default_version")]
    pub prompt_version: String,
}

fn default_max_tokens() -> u32 {
    150
}
fn default_document_tokens() -> u64 {
    60_000
}
fn default_in_flight() -> usize {
    64
}
fn default_version() -> String {
    "1".into()
}

#[async_trait]
impl StageConfig for ContextualizeConfig {
    const KIND: &'static str = "contextualize";
    const DESCRIPTION: &'static str = "Writes a short context situating each chunk in its document \
         (contextual retrieval), the document sent as a cached prompt prefix";
    const ROLE: Role = Role::Transform;

    fn accepts() -> KindSet {
        KindSet::of(&[PayloadKind::Chunk])
    }

    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Chunk]))
    }

    fn providers(&self) -> Vec<(String, String)> {
        vec![("provider".into(), self.provider.clone())]
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.max_tokens == 0 {
            issues.push(ConfigIssue::new("max_tokens", "must be at least 1"));
        }
        if self.max_document_tokens == 0 {
            issues.push(ConfigIssue::new(
                "max_document_tokens",
                "must be at least 1",
            ));
        }
        if self.max_in_flight == 0 {
            issues.push(ConfigIssue::new("max_in_flight", "must be at least 1"));
        }
        if let Some(q) = &self.question
            && !q.contains("{chunk}")
        {
            issues.push(ConfigIssue::new(
                "question",
                "must contain `{chunk}` (where the chunk's text goes)",
            ));
        }
        if self.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            issues.push(ConfigIssue::new("temperature", "must be between 0 and 2"));
        }
        issues
    }

    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        let spec = ctx.provider(&self.provider)?;
        let chat = Chat::from_spec(&self.provider, spec, ctx.dry_run)?;
        let price = chat.price(spec);
        if price.is_none() && ctx.resources.budget().spec().max_usd.is_some() {
            return Err(StageError::run(format!(
                "budget.max_usd is set but model `{}` has no known price: set `pricing` on \
                 provider `{}`",
                chat.model, self.provider
            )));
        }
        let policy = ctx.call_policy(&self.provider)?.with_price(price);
        Ok(BuiltStage::Transform(Arc::new(Contextualize(Arc::new(
            Inner {
                stage_id: ctx.stage_id.clone(),
                chat,
                policy,
                instructions: self
                    .instructions
                    .clone()
                    .unwrap_or_else(|| DEFAULT_INSTRUCTIONS.into()),
                question: self
                    .question
                    .clone()
                    .unwrap_or_else(|| DEFAULT_QUESTION.into()),
                max_tokens: self.max_tokens,
                temperature: self.temperature,
                max_document_tokens: self.max_document_tokens,
                max_in_flight: self.max_in_flight,
                version: self.prompt_version.clone(),
                notes: ctx.notes.clone(),
                dry_run: ctx.dry_run,
            },
        )))))
    }
}

struct Inner {
    stage_id: String,
    chat: Chat,
    policy: CallPolicy,
    instructions: String,
    question: String,
    max_tokens: u32,
    temperature: Option<f32>,
    max_document_tokens: u64,
    max_in_flight: usize,
    version: String,
    notes: StageNotes,
    dry_run: bool,
}

struct Contextualize(Arc<Inner>);

impl Transform for Contextualize {
    fn transform(
        self: Arc<Self>,
        input: BoxStream<'static, Record>,
    ) -> BoxStream<'static, Result<Record, Rejected>> {
        let driver = Driver {
            inner: self.0.clone(),
            input,
            input_done: false,
            open: Vec::new(),
            closed: HashSet::new(),
            running: FuturesUnordered::new(),
            ready: VecDeque::new(),
        };
        futures::stream::unfold(driver, |mut d| async move {
            let item = d.next().await?;
            Some((item, d))
        })
        .boxed()
    }
}

type Outcome = (Record, Result<Option<Record>, StageError>);

/// A spawned call that is aborted when dropped (the run stopped and dropped the stream).
struct Call {
    handle: tokio::task::JoinHandle<Outcome>,
    record: Option<Record>,
}

impl Future for Call {
    type Output = Outcome;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match Pin::new(&mut self.handle).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(outcome)) => Poll::Ready(outcome),
            Poll::Ready(Err(e)) => {
                let record = self.record.take().expect("polled after completion");
                let message = if e.is_panic() {
                    "stage panicked while contextualizing this chunk"
                } else {
                    "the call was cancelled"
                };
                Poll::Ready((record, Err(StageError::record(message))))
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Reads chunks, closes documents, starts their calls, hands results back as they come.
struct Driver {
    inner: Arc<Inner>,
    input: BoxStream<'static, Record>,
    input_done: bool,
    /// The chunks of the document being read.
    open: Vec<Record>,
    /// Documents already closed (to notice interleaved input).
    closed: HashSet<String>,
    running: FuturesUnordered<Call>,
    ready: VecDeque<Result<Record, Rejected>>,
}

impl Driver {
    async fn next(&mut self) -> Option<Result<Record, Rejected>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            if self.input_done && self.open.is_empty() && self.running.is_empty() {
                return None;
            }
            let can_read = !self.input_done && self.running.len() < self.inner.max_in_flight;
            tokio::select! {
                Some((record, result)) = self.running.next(), if !self.running.is_empty() => {
                    match result {
                        Ok(Some(out)) => self.ready.push_back(Ok(out)),
                        Ok(None) => {}
                        Err(error) => self.ready.push_back(Err(rejected(&record, error))),
                    }
                }
                next = self.input.next(), if can_read => match next {
                    None => {
                        self.input_done = true;
                        self.close();
                    }
                    Some(record) => self.accept(record),
                },
                else => return None,
            }
        }
    }

    fn accept(&mut self, record: Record) {
        if !matches!(record.payload, Payload::Chunk(_)) {
            let error = StageError::record(format!(
                "contextualize expects a Chunk, got {}",
                record.payload.kind().name()
            ));
            self.ready.push_back(Err(rejected(&record, error)));
            return;
        }
        let document = &record.provenance.document_id;
        let same = self
            .open
            .first()
            .is_some_and(|r| &r.provenance.document_id == document);
        if !same {
            self.close();
            if self.closed.contains(document) {
                self.inner.notes.count("documents_interleaved", 1);
                self.inner.notes.note(
                    "chunks of one document arrived apart: each run of them was treated as the \
                     document (put contextualize right after chunk)",
                );
                tracing::warn!(
                    "stage `{}`: chunks of document {document} arrived apart from each other; \
                     their context is written from the part of the document seen with them",
                    self.inner.stage_id
                );
            }
        }
        self.open.push(record);
    }

    /// The open document is complete: start its calls.
    fn close(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let mut chunks = std::mem::take(&mut self.open);
        self.closed.insert(chunks[0].provenance.document_id.clone());
        chunks.sort_by_key(|r| {
            (
                r.provenance.char_span.map_or(u64::MAX, |s| s[0]),
                r.provenance.chunk_index.unwrap_or(u32::MAX),
            )
        });
        self.inner.notes.count("documents", 1);
        let sections = sections(chunks, self.inner.max_document_tokens);
        if sections.len() > 1 {
            self.inner.notes.count("documents_in_sections", 1);
        }
        for section in sections {
            let document = Arc::new(rebuild(&section));
            let (warm_tx, warm_rx) = watch::channel(false);
            let mut warm_tx = Some(warm_tx);
            for (i, record) in section.into_iter().enumerate() {
                let inner = self.inner.clone();
                let document = document.clone();
                let copy = record.clone();
                // The first chunk warms the provider's cache; the rest wait for it.
                let (sender, waiter) = if i == 0 {
                    (warm_tx.take(), None)
                } else {
                    (None, Some(warm_rx.clone()))
                };
                let handle = tokio::spawn(async move {
                    if let Some(mut waiter) = waiter {
                        // An error means the first call ended without a word (panic,
                        // abort): go on regardless.
                        let _ = waiter.wait_for(|warm| *warm).await;
                    }
                    let result = inner.contextualize(&document, &record).await;
                    if let Some(sender) = sender {
                        let _ = sender.send(true);
                    }
                    (record, result)
                });
                self.running.push(Call {
                    handle,
                    record: Some(copy),
                });
            }
        }
    }
}

fn rejected(record: &Record, error: StageError) -> Rejected {
    Rejected::new(
        serde_json::to_value(record).unwrap_or(serde_json::Value::Null),
        error,
    )
}

fn chunk_of(record: &Record) -> Option<&pipeline::Chunk> {
    match &record.payload {
        Payload::Chunk(c) => Some(c),
        _ => None,
    }
}

/// Consecutive runs of chunks whose tokens add up to at most `max_tokens` (a chunk larger
/// than that is a section of its own).
fn sections(chunks: Vec<Record>, max_tokens: u64) -> Vec<Vec<Record>> {
    let mut out: Vec<Vec<Record>> = Vec::new();
    let mut current: Vec<Record> = Vec::new();
    let mut tokens = 0u64;
    for record in chunks {
        let t = chunk_of(&record).map_or(0, |c| u64::from(c.tokens));
        if !current.is_empty() && tokens + t > max_tokens {
            out.push(std::mem::take(&mut current));
            tokens = 0;
        }
        tokens += t;
        current.push(record);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The document text from its chunks, in order: overlapping text is read once; a gap the
/// chunker left (whitespace between chunks) becomes a line break; chunks without a
/// document position are joined with a blank line.
fn rebuild(chunks: &[Record]) -> String {
    let mut text = String::new();
    let mut end: Option<u64> = None;
    for record in chunks {
        let Some(chunk) = chunk_of(record) else {
            continue;
        };
        let span = record
            .provenance
            .char_span
            .filter(|[s, e]| e >= s && chunk.text.chars().count() as u64 == e - s);
        match (span, end) {
            (Some([_, e]), Some(current)) if e <= current => {}
            (Some([s, e]), Some(current)) if s < current => {
                text.extend(chunk.text.chars().skip((current - s) as usize));
                end = Some(e);
            }
            (Some([s, e]), current) => {
                if current.is_some_and(|c| s > c) {
                    text.push('\n');
                }
                text.push_str(&chunk.text);
                end = Some(e);
            }
            (None, _) => {
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str(&chunk.text);
                end = None;
            }
        }
    }
    text
}

impl Inner {
    fn prompt(&self, document: &str, chunk: &str) -> Prompt {
        Prompt {
            // The document is the stable head: instructions, then the document, nothing
            // that changes from chunk to chunk.
            system: Some(format!(
                "{}\n\n<document>\n{}\n</document>",
                self.instructions.trim(),
                document
            )),
            turns: vec![("user".into(), self.question.replace("{chunk}", chunk))],
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            json_schema: None,
        }
    }

    fn spec(&self, prompt: &Prompt) -> CallSpec {
        CallSpec {
            cache_key: Some(cache_key(&self.chat.cache_material(prompt, &self.version))),
            input_tokens: self.chat.count_prompt_tokens(prompt),
            prompt_chars: self.chat.prompt_chars(prompt),
            max_output_tokens: u64::from(prompt.max_tokens),
        }
    }

    /// The chunk with its context (`None` in a plan, which sends nothing).
    async fn contextualize(
        &self,
        document: &str,
        record: &Record,
    ) -> Result<Option<Record>, StageError> {
        let Some(chunk) = chunk_of(record) else {
            return Err(StageError::record("contextualize expects a Chunk"));
        };
        let prompt = self.prompt(document, &chunk.text);
        let spec = self.spec(&prompt);
        if self.dry_run {
            self.policy.plan(&spec);
            return Ok(None);
        }
        let called = self
            .policy
            .call(
                &spec,
                || self.chat.complete(&prompt),
                |reply: &Reply| {
                    if reply.text.trim().is_empty() {
                        Err("the model wrote an empty context".to_string())
                    } else {
                        Ok(())
                    }
                },
            )
            .await?;
        if let Some(problem) = called.rejected {
            return Err(StageError::record(format!("no context: {problem}")));
        }
        if matches!(
            called.value.finish_reason.as_deref(),
            Some("length" | "max_tokens")
        ) {
            // Still a usable context, only shorter than the model meant: kept, and counted.
            self.notes.count("contexts_cut_off", 1);
        }
        self.notes.count("contextualized", 1);
        let mut out = record.clone();
        if let Payload::Chunk(c) = &mut out.payload {
            c.context = Some(called.value.text.trim().to_string());
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::{Chunk, Provenance};

    fn chunk(doc: &str, index: u32, text: &str, start: u64) -> Record {
        Record::new(
            format!("{doc}-{index}"),
            Provenance {
                document_id: doc.into(),
                chunk_index: Some(index),
                char_span: Some([start, start + text.chars().count() as u64]),
                ..Default::default()
            },
            Payload::Chunk(Chunk {
                text: text.into(),
                tokens: text.split_whitespace().count() as u32,
                tokenizer: "cl100k_base".into(),
                context: None,
            }),
        )
    }

    #[test]
    fn a_document_is_rebuilt_from_overlapping_chunks() {
        let document = "CDR: Houston, we've had a problem.\nCC: Say again, please.\n\nCDR: Main B bus undervolt.";
        let chars: Vec<char> = document.chars().collect();
        let part = |a: usize, b: usize| chars[a..b].iter().collect::<String>();
        // Overlap (0..40 then 30..57) and a gap of whitespace (57..59 left out).
        let chunks = vec![
            chunk("d", 0, &part(0, 40), 0),
            chunk("d", 1, &part(30, 57), 30),
            chunk("d", 2, &part(59, chars.len()), 59),
        ];
        let rebuilt = rebuild(&chunks);
        assert_eq!(
            rebuilt,
            format!("{}\n{}", part(0, 57), part(59, chars.len()))
        );
        // A chunk inside another adds nothing.
        let mut with_inner = chunks.clone();
        with_inner.insert(1, chunk("d", 9, &part(5, 20), 5));
        assert_eq!(rebuild(&with_inner), rebuilt);
    }

    #[test]
    fn long_documents_are_cut_into_sections_of_whole_chunks() {
        let chunks: Vec<Record> = (0..5)
            .map(|i| chunk("d", i, "one two three four", u64::from(i) * 20))
            .collect();
        let sizes: Vec<usize> = sections(chunks.clone(), 8).iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 2, 1]);
        let sizes: Vec<usize> = sections(chunks.clone(), 3).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 1, 1, 1, 1], "a chunk over the limit goes alone");
        assert_eq!(sections(chunks, 1000).len(), 1);
    }
}
