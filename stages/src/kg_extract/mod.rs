//! `kg_extract`: a knowledge graph from chunks with a chat model. The schema (entity types,
//! relation patterns, strict or open) comes from YAML and goes to the provider as structured
//! output; answers are validated on arrival. Several chunks go in one call (`batch_size`),
//! each in a `<chunk id="...">` block, and the answer says per chunk what it found, so every
//! entity and relation is attributed to its chunk and carries its position in the document.
//!
//! A batch whose answer cannot be used goes down a ladder: one repair turn showing the error,
//! then the batch split in halves, then single chunks, then the dead letter — one result per
//! chunk, so the good chunks of a batch land even when others fail. An answer cut off at
//! `max_tokens` is not repaired under the same limit: the batch is asked again with twice the
//! limit (up to `max_answer_tokens`), then split. How much a call asks for is learned from
//! the run's answers (`sizing.rs`). Calls go through the policy stack like every model call
//! (cache, budget, retries, limits); the stage itself never retries.

mod answer;
pub mod schema;
mod sizing;

use crate::provider::{Chat, Prompt, Reply};
use answer::{AnswerChunk, ChunkRef, Dropped};
use pipeline::policy::{CallPolicy, CallSpec, cache_key};
use pipeline::runtime::StageNotes;
use pipeline::{
    BatchProcessor, Batching, BuildContext, BuiltStage, ConfigIssue, ErrorClass, KindSet, Payload,
    PayloadKind, Produces, Record, Role, StageConfig, StageError, async_trait, record::stable_id,
};
use schema::{GraphSchema, Resolved};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use sizing::AnswerSizing;
use std::sync::Arc;
use std::time::Duration;

/// How entities named several times in one call are reconciled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MergeMode {
    /// Each occurrence keeps what the model said about it there.
    #[default]
    None,
    /// An entity named in several chunks of one call (overlapping pages) or twice in a chunk
    /// takes the type, description, properties and confidence of its most confident
    /// occurrence. Turns on `confidence`.
    HighestConfidence,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KgExtractConfig {
    /// A name from `resources.providers`.
    pub provider: String,
    /// Entity types, relation patterns, strict or open.
    pub schema: GraphSchema,
    /// More instructions for the model (the domain, what matters), placed after the schema in
    /// the stable head of every prompt.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Chunks per call.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Most chunk tokens per call (a chunk bigger than this goes alone).
    #[serde(default = "default_batch_tokens")]
    pub max_batch_tokens: u64,
    /// Longest a started batch waits for more chunks before it is sent part-full (ms).
    #[serde(default = "default_wait_ms")]
    pub max_wait_ms: u64,
    /// Answer tokens allowed per chunk of a call, at least: a call of N chunks asks for N
    /// times this (at most `max_answer_tokens`), more once the run's answers show they need
    /// more (their average per chunk plus 30 %).
    #[serde(default = "default_tokens_per_chunk")]
    pub max_tokens_per_chunk: u32,
    /// Ceiling of a call's `max_tokens`; a call whose answer was cut off is asked again with
    /// twice the limit, up to this, and a batch whose chunks need more is split.
    #[serde(default = "default_answer_tokens")]
    pub max_answer_tokens: u32,
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Ask for a confidence (0..1) per entity and relation.
    #[serde(default)]
    pub confidence: bool,
    /// Most entities per chunk in an answer (`maxItems` in the answer's schema); unbounded
    /// by default.
    #[serde(default)]
    pub max_entities_per_chunk: Option<u32>,
    /// Most relations per chunk in an answer; unbounded by default.
    #[serde(default)]
    pub max_relations_per_chunk: Option<u32>,
    /// `none` (default) or `highest_confidence`.
    #[serde(default)]
    pub merge: MergeMode,
    /// Part of the cache key: change it to get fresh answers for unchanged chunks.
    #[serde(default = "default_version")]
    pub prompt_version: String,
}

fn default_batch_size() -> usize {
    10
}
fn default_batch_tokens() -> u64 {
    12_000
}
fn default_wait_ms() -> u64 {
    200
}
fn default_tokens_per_chunk() -> u32 {
    800
}
fn default_answer_tokens() -> u32 {
    16_384
}
fn default_version() -> String {
    "1".into()
}

#[async_trait]
impl StageConfig for KgExtractConfig {
    const KIND: &'static str = "kg_extract";
    const DESCRIPTION: &'static str = "Extracts entities and relations from chunks with a chat model: \
         a schema from YAML as structured output, N chunks per call, provenance per mention";
    const ROLE: Role = Role::Batch;
    // The seed pattern: 10 chunks per call, 20 calls in flight.
    const DEFAULT_CONCURRENCY: usize = 20;

    fn accepts() -> KindSet {
        KindSet::of(&[PayloadKind::Chunk])
    }

    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Extraction]))
    }

    fn providers(&self) -> Vec<(String, String)> {
        vec![("provider".into(), self.provider.clone())]
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = match self.schema.resolve() {
            Ok(_) => Vec::new(),
            Err(issues) => issues,
        };
        if self.batch_size == 0 {
            issues.push(ConfigIssue::new("batch_size", "must be at least 1"));
        }
        if self.max_batch_tokens == 0 {
            issues.push(ConfigIssue::new("max_batch_tokens", "must be at least 1"));
        }
        if self.max_tokens_per_chunk == 0 {
            issues.push(ConfigIssue::new(
                "max_tokens_per_chunk",
                "must be at least 1",
            ));
        }
        if self.max_answer_tokens < self.max_tokens_per_chunk {
            issues.push(ConfigIssue::new(
                "max_answer_tokens",
                format!(
                    "must be at least max_tokens_per_chunk ({})",
                    self.max_tokens_per_chunk
                ),
            ));
        }
        if self.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            issues.push(ConfigIssue::new("temperature", "must be between 0 and 2"));
        }
        issues
    }

    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        let resolved = self.schema.resolve().map_err(|issues| {
            StageError::run(
                issues
                    .iter()
                    .map(|i| format!("{}: {}", i.field, i.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
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
        let with_confidence = self.confidence || self.merge == MergeMode::HighestConfidence;
        let answer_schema = resolved.answer_schema(
            with_confidence,
            self.max_entities_per_chunk,
            self.max_relations_per_chunk,
        );
        let validator = jsonschema::validator_for(&answer_schema)
            .map_err(|e| StageError::run(format!("answer schema: {e}")))?;
        let system = system_prompt(&resolved, self.instructions.as_deref(), with_confidence);
        Ok(BuiltStage::Batch(Arc::new(KgExtract {
            extractor: format!("kg_extract:{}", chat.model),
            stage_id: ctx.stage_id.clone(),
            chat,
            policy,
            schema: resolved,
            answer_schema,
            validator,
            system,
            batching: Batching {
                max_records: self.batch_size,
                max_weight: Some(self.max_batch_tokens),
                max_wait: Duration::from_millis(self.max_wait_ms),
            },
            sizing: AnswerSizing::new(self.max_tokens_per_chunk, self.max_answer_tokens),
            temperature: self.temperature,
            merge: self.merge,
            version: self.prompt_version.clone(),
            notes: ctx.notes.clone(),
        })))
    }
}

/// The stable head of every prompt: instructions and schema, before any chunk, so provider
/// prompt caches hit on it.
fn system_prompt(schema: &Resolved, instructions: Option<&str>, confidence: bool) -> String {
    let mut text = String::from(
        "You extract a knowledge graph — entities and the relations between them — from text.\n\n",
    );
    text.push_str(&schema.describe());
    if let Some(more) = instructions.map(str::trim).filter(|s| !s.is_empty()) {
        text.push('\n');
        text.push_str(more);
        text.push('\n');
    }
    text.push_str(
        "\nThe text comes in blocks, each opened by <chunk id=\"ID\"> and closed by </chunk>. \
         Answer with JSON only: {\"chunks\": [...]} with one item per block, its \"chunk_id\" \
         the block's id. Read every block on its own: a block's item lists only what that \
         block's text states.\n\
         - \"name\": the entity as the text writes it (its fullest form there), never a pronoun.\n\
         - \"description\": one short sentence on what the text says about it.\n\
         - Relations connect entities of the same block: \"source\" and \"target\" are names \
         exactly as listed in that block's \"entities\".\n\
         - A block with nothing to extract gets empty \"entities\" and \"relations\".\n",
    );
    if confidence {
        text.push_str("- \"confidence\": how sure you are of the item, from 0 to 1.\n");
    }
    text
}

struct KgExtract {
    extractor: String,
    stage_id: String,
    chat: Chat,
    policy: CallPolicy,
    schema: Resolved,
    answer_schema: Value,
    validator: jsonschema::Validator,
    system: String,
    batching: Batching,
    sizing: AnswerSizing,
    temperature: Option<f32>,
    merge: MergeMode,
    version: String,
    notes: StageNotes,
}

/// What became of one call (with its repair turn, if it needed one).
enum Outcome {
    /// Usable items, by position in the call (`None`: the answer had no item for it), and
    /// the answer's length in tokens.
    Answered(Vec<Vec<AnswerChunk>>, u64),
    /// The call gave nothing usable for any of its chunks.
    Failed { reason: String, cut_off: bool },
    /// Nothing will work (a revoked key, a stopped provider): every chunk fails with it.
    Fatal(StageError),
}

type Results = Vec<(usize, Result<Vec<Record>, StageError>)>;

fn chunk_text(record: &Record) -> Result<&str, StageError> {
    match &record.payload {
        Payload::Chunk(chunk) => Ok(&chunk.text),
        other => Err(StageError::record(format!(
            "kg_extract expects a Chunk, got {}",
            other.kind().name()
        ))),
    }
}

fn cut_off(reply: &Reply) -> bool {
    matches!(
        reply.finish_reason.as_deref(),
        Some("length" | "max_tokens")
    )
}

/// Block ids are short and local to a call ("c1".."cN"): cheaper than 32 hex digits, and
/// nothing for a model to mis-copy.
fn block_id(position: usize) -> String {
    format!("c{}", position + 1)
}

impl KgExtract {
    fn prompt(&self, chunks: &[(usize, &Record)], max_tokens: u32) -> Prompt {
        let blocks: Vec<String> = chunks
            .iter()
            .enumerate()
            .map(|(position, (_, record))| {
                let text = chunk_text(record).unwrap_or_default();
                format!("<chunk id=\"{}\">\n{}\n</chunk>", block_id(position), text)
            })
            .collect();
        Prompt {
            system: Some(self.system.clone()),
            turns: vec![("user".into(), blocks.join("\n\n"))],
            max_tokens,
            temperature: self.temperature,
            json_schema: Some(self.answer_schema.clone()),
        }
    }

    fn spec(&self, prompt: &Prompt) -> CallSpec {
        // Only complete, valid answers are cached, and such an answer is the answer under any
        // `max_tokens` it fits in: the key leaves the limit out, so a re-run, which starts from
        // the configured limit before it learns the run's, still finds every answer.
        let mut material = self.chat.cache_material(prompt, &self.version);
        material["max_tokens"] = Value::Null;
        CallSpec {
            cache_key: Some(cache_key(&material)),
            input_tokens: self.chat.count_prompt_tokens(prompt),
            prompt_chars: self.chat.prompt_chars(prompt),
            max_output_tokens: u64::from(prompt.max_tokens),
        }
    }

    /// The answer's items, or why it cannot be used.
    fn check(&self, reply: &Reply) -> Result<Vec<AnswerChunk>, String> {
        let cut = if cut_off(reply) {
            " (the answer was cut off at max_tokens)"
        } else {
            ""
        };
        let value: Value = serde_json::from_str(reply.text.trim())
            .map_err(|e| format!("answer is not valid JSON: {e}{cut}"))?;
        let errors: Vec<String> = self
            .validator
            .iter_errors(&value)
            .take(3)
            .map(|e| format!("{} at `{}`", e, e.instance_path()))
            .collect();
        if !errors.is_empty() {
            return Err(format!(
                "answer does not match the schema: {}{cut}",
                errors.join("; ")
            ));
        }
        answer::parse(&reply.text)
    }

    /// Items by position in the call. Unknown ids are ignored (with a warning); a single
    /// chunk's only item is its own whatever id the model wrote.
    fn attribute(
        &self,
        chunks: &[(usize, &Record)],
        items: Vec<AnswerChunk>,
        output_tokens: u64,
    ) -> Outcome {
        let mut by_position: Vec<Vec<AnswerChunk>> = vec![Vec::new(); chunks.len()];
        let single = chunks.len() == 1 && items.len() == 1;
        for item in items {
            let id = answer::id_text(&item.chunk_id);
            let position =
                (0..chunks.len()).find(|&p| block_id(p) == id || (p + 1).to_string() == id);
            match position {
                Some(p) => by_position[p].push(item),
                None if single => by_position[0].push(item),
                None => {
                    self.notes.count("unknown_chunk_ids", 1);
                    tracing::warn!(
                        "stage `{}`: the answer has an item for chunk id `{id}`, which was not \
                         in the call; ignored",
                        self.stage_id
                    );
                }
            }
        }
        Outcome::Answered(by_position, output_tokens)
    }

    /// One call, and one repair turn if its answer cannot be used (unless it was cut off).
    async fn attempt(&self, chunks: &[(usize, &Record)], max_tokens: u32) -> Outcome {
        let prompt = self.prompt(chunks, max_tokens);
        let first = match self.ask(&prompt).await {
            Ok(called) => called,
            Err(e) if e.class == ErrorClass::Run => return Outcome::Fatal(e),
            Err(e) => {
                return Outcome::Failed {
                    reason: e.message,
                    cut_off: false,
                };
            }
        };
        let problem = match first.rejected {
            None => {
                return match self.check(&first.value) {
                    Ok(items) => self.attribute(chunks, items, first.usage.output),
                    Err(reason) => Outcome::Failed {
                        reason,
                        cut_off: false,
                    },
                };
            }
            Some(problem) => problem,
        };
        if cut_off(&first.value) {
            // More of the same limit would be cut off again: not repaired, split instead.
            self.notes.count("cut_off_answers", 1);
            return Outcome::Failed {
                reason: problem,
                cut_off: true,
            };
        }
        self.notes.count("repairs", 1);
        let mut repair = prompt.clone();
        repair
            .turns
            .push(("assistant".into(), first.value.text.clone()));
        repair.turns.push((
            "user".into(),
            format!(
                "That answer cannot be used: {problem}. Reply again with the complete corrected \
                 JSON for every chunk, and nothing else."
            ),
        ));
        match self.ask(&repair).await {
            Err(e) if e.class == ErrorClass::Run => Outcome::Fatal(e),
            Err(e) => Outcome::Failed {
                reason: format!("{} (repairing: {problem})", e.message),
                cut_off: false,
            },
            Ok(fixed) => match fixed.rejected {
                None => match self.check(&fixed.value) {
                    Ok(items) => self.attribute(chunks, items, fixed.usage.output),
                    Err(reason) => Outcome::Failed {
                        reason,
                        cut_off: false,
                    },
                },
                Some(again) => {
                    if cut_off(&fixed.value) {
                        self.notes.count("cut_off_answers", 1);
                    }
                    Outcome::Failed {
                        reason: format!(
                            "invalid answer after one repair turn: {again} (first answer: {problem})"
                        ),
                        cut_off: cut_off(&fixed.value),
                    }
                }
            },
        }
    }

    async fn ask(&self, prompt: &Prompt) -> Result<pipeline::policy::Called<Reply>, StageError> {
        let spec = self.spec(prompt);
        self.policy
            .call(
                &spec,
                || self.chat.complete(prompt),
                |reply: &Reply| self.check(reply).map(|_| ()),
            )
            .await
    }

    /// The ladder for `chunks` (positions in the input batch, with their records).
    fn solve<'a>(
        &'a self,
        chunks: Vec<(usize, &'a Record)>,
    ) -> futures::future::BoxFuture<'a, Results> {
        Box::pin(async move {
            if self.sizing.too_many(chunks.len()) {
                // Their answers would not fit in one call's `max_answer_tokens`.
                self.notes.count("batches_split_to_fit", 1);
                return self.descend(chunks).await;
            }
            let mut max_tokens = self.sizing.max_tokens_for(chunks.len());
            loop {
                match self.attempt(&chunks, max_tokens).await {
                    Outcome::Fatal(error) => {
                        return chunks
                            .iter()
                            .map(|(i, _)| (*i, Err(error.clone())))
                            .collect();
                    }
                    Outcome::Answered(mut items, output_tokens) => {
                        self.sizing.answered(output_tokens, chunks.len());
                        if self.merge == MergeMode::HighestConfidence {
                            let mut flat: Vec<AnswerChunk> = Vec::new();
                            let sizes: Vec<usize> = items.iter().map(Vec::len).collect();
                            for group in &mut items {
                                flat.append(group);
                            }
                            answer::merge_by_confidence(&mut flat);
                            let mut rest = flat.into_iter();
                            for (group, size) in items.iter_mut().zip(sizes) {
                                group.extend(rest.by_ref().take(size));
                            }
                        }
                        let mut results = Vec::new();
                        let mut missing = Vec::new();
                        for ((i, record), found) in chunks.iter().zip(&items) {
                            if found.is_empty() {
                                missing.push((*i, *record));
                            } else {
                                results.push((*i, self.extraction(record, found)));
                            }
                        }
                        if !missing.is_empty() {
                            self.notes.count("missing_chunk_ids", missing.len() as u64);
                            if chunks.len() == 1 {
                                return vec![(
                                    chunks[0].0,
                                    Err(StageError::record(
                                        "no extraction: the answer had no item for this chunk",
                                    )),
                                )];
                            }
                            results.extend(self.descend(missing).await);
                        }
                        return results;
                    }
                    Outcome::Failed { reason, cut_off } => {
                        if cut_off {
                            self.sizing.cut_off(max_tokens, chunks.len());
                            // The same chunks again with room to finish: cheaper than halves,
                            // which would each repeat the prompt's head.
                            if let Some(raised) = self.sizing.raised(max_tokens, chunks.len()) {
                                max_tokens = raised;
                                self.notes.count("raised_max_tokens", 1);
                                continue;
                            }
                        }
                        if chunks.len() > 1 {
                            self.notes.count("batch_splits", 1);
                            return self.descend(chunks).await;
                        }
                        let error = StageError::record(format!("no extraction: {reason}"));
                        return vec![(chunks[0].0, Err(error))];
                    }
                }
            }
        })
    }

    /// The next rung: halves of a batch (a single chunk is tried alone).
    async fn descend(&self, chunks: Vec<(usize, &Record)>) -> Results {
        if chunks.len() <= 1 {
            return self.solve(chunks).await;
        }
        let mut first = chunks;
        let second = first.split_off(first.len().div_ceil(2));
        let (a, b) = futures::join!(self.solve(first), self.solve(second));
        a.into_iter().chain(b).collect()
    }

    fn extraction(
        &self,
        record: &Record,
        items: &[AnswerChunk],
    ) -> Result<Vec<Record>, StageError> {
        let text = chunk_text(record)?;
        let refs: Vec<&AnswerChunk> = items.iter().collect();
        let (graph, dropped) = answer::build(
            &refs,
            &ChunkRef { record, text },
            &self.schema,
            &self.extractor,
        );
        self.note_dropped(&dropped);
        self.notes.count("entities", graph.entities.len() as u64);
        self.notes.count("relations", graph.relations.len() as u64);
        if graph.entities.is_empty() && graph.relations.is_empty() && !text.trim().is_empty() {
            self.notes.count("empty_extractions", 1);
            self.notes.note(
                "some non-empty chunks gave an empty extraction (see `empty_extractions`): \
                 check the schema and the instructions",
            );
            tracing::warn!(
                "stage `{}`: empty extraction from non-empty chunk {} ({} chars of {})",
                self.stage_id,
                record.id,
                text.chars().count(),
                record.provenance.source_path.as_deref().unwrap_or("?")
            );
        }
        Ok(vec![Record::new(
            stable_id(&[record.id.as_bytes(), self.stage_id.as_bytes()]),
            record.provenance.clone(),
            Payload::Extraction(graph),
        )])
    }

    fn note_dropped(&self, dropped: &Dropped) {
        for (name, n) in [
            ("invalid_entities", dropped.invalid_entities),
            ("invalid_relations", dropped.invalid_relations),
            ("dangling_relations", dropped.dangling_relations),
            ("relations_off_schema", dropped.relations_off_schema),
        ] {
            if n > 0 {
                self.notes.count(name, n);
            }
        }
    }
}

#[async_trait]
impl BatchProcessor for KgExtract {
    fn batching(&self) -> Batching {
        self.batching
    }

    fn weight(&self, record: &Record) -> u64 {
        match &record.payload {
            Payload::Chunk(chunk) => u64::from(chunk.tokens.max(1)),
            _ => 1,
        }
    }

    async fn process_batch(&self, batch: &[Record]) -> Vec<Result<Vec<Record>, StageError>> {
        let mut results: Vec<Option<Result<Vec<Record>, StageError>>> =
            (0..batch.len()).map(|_| None).collect();
        let mut chunks = Vec::new();
        for (i, record) in batch.iter().enumerate() {
            match chunk_text(record) {
                Ok(_) => chunks.push((i, record)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if !chunks.is_empty() {
            for (i, result) in self.solve(chunks).await {
                results[i] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StageError::record(
                        "no extraction: the chunk was lost in the ladder (a bug in kg_extract)",
                    ))
                })
            })
            .collect()
    }

    fn calls_remote(&self) -> bool {
        true
    }

    async fn plan_batch(&self, batch: &[Record]) -> Result<(), StageError> {
        let chunks: Vec<(usize, &Record)> = batch
            .iter()
            .enumerate()
            .filter(|(_, r)| chunk_text(r).is_ok())
            .collect();
        if !chunks.is_empty() {
            let prompt = self.prompt(&chunks, self.sizing.max_tokens_for(chunks.len()));
            self.policy.plan(&self.spec(&prompt));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_prompt_head_is_the_same_for_every_batch_and_chunks_follow_it() {
        let schema: GraphSchema = serde_json::from_value(json!({
            "entities": { "Person": "a crew member or controller" },
            "relations": ["Person TALKS_TO Person"] }))
        .unwrap();
        let resolved = schema.resolve().unwrap();
        let system = system_prompt(&resolved, Some("Apollo 13 transcripts."), true);
        assert!(system.contains("- Person: a crew member or controller"));
        assert!(system.contains("(Person, TALKS_TO, Person)"));
        assert!(system.contains("Apollo 13 transcripts."));
        assert!(system.contains("\"confidence\""));
        assert!(
            !system.contains("<chunk id=\"c1\">"),
            "no chunk in the stable head"
        );
    }
}
