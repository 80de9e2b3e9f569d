//! `llm` stage: one chat call per record. The prompt is a template filled from the record
//! (system part first: the stable prefix providers cache); the answer is stored on the record
//! as text, or as JSON validated against a schema from the YAML. An answer that is not valid
//! JSON gets one repair attempt (the model is shown its answer and the error), then the
//! record is dead-lettered with the reason. Every call goes through the policy stack:
//! response cache, budget, retries, breaker, shared rate limit, concurrency, timeout.

mod template;

use crate::provider::{Chat, Prompt, Reply};
use pipeline::policy::{CallPolicy, CallSpec, Called, cache_key};
use pipeline::{
    BuildContext, BuiltStage, ConfigIssue, KindSet, Payload, PayloadKind, Processor, Produces,
    Record, Role, StageConfig, StageError, YamlJson, async_trait, record::stable_id,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use template::Templates;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    /// The answer as a string.
    #[default]
    Text,
    /// The answer parsed as JSON (and checked against `schema` when given).
    Json,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// A name from `resources.providers`.
    pub provider: String,
    /// System part of the prompt (a template like `prompt`); keep it the same for every
    /// record so providers can cache it.
    #[serde(default)]
    pub system: Option<String>,
    /// User part of the prompt: a MiniJinja template over the record's fields: `{{ text }}`,
    /// `{{ id }}`, `{{ document_id }}`, `{{ source_path }}`, `{{ chunk_index }}`, and for JSON
    /// records every top-level field (`{{ title }}`).
    pub prompt: String,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub output: OutputMode,
    /// JSON Schema the answer must satisfy (`output: json`); sent as the structured-output
    /// format where the provider supports it.
    #[serde(default)]
    pub schema: Option<YamlJson>,
    /// Field of the output record that holds the answer.
    #[serde(default = "default_field")]
    pub output_field: String,
    /// Most tokens the answer may have (also what rate limits and budgets reserve).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Part of the cache key: change it to get fresh answers for an unchanged prompt.
    #[serde(default = "default_version")]
    pub prompt_version: String,
}

fn default_field() -> String {
    "answer".into()
}
fn default_max_tokens() -> u32 {
    1024
}
fn default_version() -> String {
    "1".into()
}

#[async_trait]
impl StageConfig for LlmConfig {
    const KIND: &'static str = "llm";
    const DESCRIPTION: &'static str =
        "Calls a chat model once per record with a prompt template; stores the text or JSON answer";
    const ROLE: Role = Role::Processor;
    const DEFAULT_CONCURRENCY: usize = 64;

    fn accepts() -> KindSet {
        KindSet::ANY
    }

    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Json]))
    }

    fn providers(&self) -> Vec<(String, String)> {
        vec![("provider".into(), self.provider.clone())]
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if let Err(e) = Templates::new(self.system.as_deref(), &self.prompt) {
            issues.push(ConfigIssue::new(e.field, e.message));
        }
        if self.max_tokens == 0 {
            issues.push(ConfigIssue::new("max_tokens", "must be at least 1"));
        }
        if self.output_field.trim().is_empty() {
            issues.push(ConfigIssue::new("output_field", "must name a field"));
        }
        match (&self.schema, self.output) {
            (Some(_), OutputMode::Text) => issues.push(ConfigIssue::new(
                "schema",
                "is only used with `output: json`",
            )),
            (Some(schema), OutputMode::Json) => {
                if let Err(e) = jsonschema::validator_for(schema) {
                    issues.push(ConfigIssue::new(
                        "schema",
                        format!("is not a valid JSON Schema: {e}"),
                    ));
                }
            }
            _ => {}
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
        if price.is_none() {
            tracing::warn!(
                "stage `{}`: no price known for model `{}`: its cost shows as $0 (set \
                 `pricing` on provider `{}`)",
                ctx.stage_id,
                chat.model,
                self.provider
            );
            if ctx.resources.budget().spec().max_usd.is_some() {
                return Err(StageError::run(format!(
                    "budget.max_usd is set but model `{}` has no known price: set `pricing` on \
                     provider `{}`",
                    chat.model, self.provider
                )));
            }
        }
        if chat.is_reasoning_model() && self.temperature.is_some() {
            tracing::warn!(
                "stage `{}`: model `{}` is a reasoning model, which takes no temperature: \
                 `temperature` is not sent",
                ctx.stage_id,
                chat.model
            );
        }
        if !chat.tokenizer().1 {
            tracing::info!(
                "stage `{}`: model `{}`'s tokenizer is not known here: prompt tokens are \
                 estimated with cl100k (billed usage is what counts)",
                ctx.stage_id,
                chat.model
            );
        }
        let policy = ctx
            .call_policy(&self.provider)?
            .with_price(price)
            .with_context_window(chat.context_window(spec));
        let templates = Templates::new(self.system.as_deref(), &self.prompt)
            .map_err(|e| StageError::run(e.message))?;
        let validator = match (&self.schema, self.output) {
            (Some(schema), OutputMode::Json) => Some(
                jsonschema::validator_for(schema)
                    .map_err(|e| StageError::run(format!("schema: {e}")))?,
            ),
            _ => None,
        };
        Ok(BuiltStage::Processor(Arc::new(Llm {
            stage_id: ctx.stage_id.clone(),
            chat,
            policy,
            templates,
            output: self.output,
            schema: self.schema.clone().map(YamlJson::into_inner),
            validator: validator.map(Arc::new),
            output_field: self.output_field.clone(),
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            version: self.prompt_version.clone(),
        })))
    }
}

struct Llm {
    stage_id: String,
    chat: Chat,
    policy: CallPolicy,
    templates: Templates,
    output: OutputMode,
    schema: Option<Value>,
    validator: Option<Arc<jsonschema::Validator>>,
    output_field: String,
    max_tokens: u32,
    temperature: Option<f32>,
    version: String,
}

impl Llm {
    fn prompt(&self, record: &Record) -> Result<Prompt, StageError> {
        let (system, user) = self.templates.render(record)?;
        Ok(Prompt {
            system,
            turns: vec![("user".into(), user)],
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            json_schema: match self.output {
                OutputMode::Json => Some(
                    self.schema
                        .clone()
                        .unwrap_or_else(|| serde_json::json!({"type": "object"})),
                ),
                OutputMode::Text => None,
            },
        })
    }

    fn spec(&self, prompt: &Prompt) -> CallSpec {
        CallSpec {
            cache_key: Some(cache_key(&self.chat.cache_material(prompt, &self.version))),
            input_tokens: self.chat.count_prompt_tokens(prompt),
            prompt_chars: self.chat.prompt_chars(prompt),
            max_output_tokens: u64::from(prompt.max_tokens),
        }
    }

    /// The parsed answer, or why it is not acceptable.
    fn parse(&self, reply: &Reply) -> Result<Value, String> {
        match self.output {
            OutputMode::Text => Ok(Value::String(reply.text.clone())),
            OutputMode::Json => {
                let value: Value = serde_json::from_str(reply.text.trim()).map_err(|e| {
                    let cut = if reply.finish_reason.as_deref() == Some("length")
                        || reply.finish_reason.as_deref() == Some("max_tokens")
                    {
                        " (the answer was cut off at max_tokens)"
                    } else {
                        ""
                    };
                    format!("answer is not valid JSON: {e}{cut}")
                })?;
                if let Some(validator) = &self.validator {
                    let errors: Vec<String> = validator
                        .iter_errors(&value)
                        .take(3)
                        .map(|e| format!("{} at `{}`", e, e.instance_path()))
                        .collect();
                    if !errors.is_empty() {
                        return Err(format!(
                            "answer does not match the schema: {}",
                            errors.join("; ")
                        ));
                    }
                }
                Ok(value)
            }
        }
    }

    async fn ask(&self, prompt: &Prompt) -> Result<Called<Reply>, StageError> {
        let spec = self.spec(prompt);
        self.policy
            .call(
                &spec,
                || self.chat.complete(prompt),
                |reply: &Reply| self.parse(reply).map(|_| ()),
            )
            .await
    }

    fn output_record(&self, input: &Record, answer: Value) -> Record {
        let mut value = match &input.payload {
            Payload::Json {
                value: Value::Object(map),
            } => map.clone(),
            Payload::Json { value } => {
                let mut m = Map::new();
                m.insert("input".into(), value.clone());
                m
            }
            other => {
                let mut m = Map::new();
                if let Some(text) = other.text() {
                    m.insert("text".into(), Value::String(text.to_string()));
                }
                m
            }
        };
        value.insert(self.output_field.clone(), answer);
        Record::new(
            stable_id(&[input.id.as_bytes(), self.stage_id.as_bytes()]),
            input.provenance.clone(),
            Payload::Json {
                value: Value::Object(value),
            },
        )
    }
}

#[async_trait]
impl Processor for Llm {
    async fn process(&self, record: &Record) -> Result<Vec<Record>, StageError> {
        let prompt = self.prompt(record)?;
        let first = self.ask(&prompt).await?;
        let Some(problem) = first.rejected else {
            let value = self.parse(&first.value).map_err(StageError::record)?;
            return Ok(vec![self.output_record(record, value)]);
        };
        // One repair attempt: show the model its answer and what is wrong with it.
        let mut repair = prompt.clone();
        repair
            .turns
            .push(("assistant".into(), first.value.text.clone()));
        repair.turns.push((
            "user".into(),
            format!(
                "That answer cannot be used: {problem}. Reply again with only the corrected \
                 JSON, nothing else."
            ),
        ));
        let fixed = self.ask(&repair).await?;
        match fixed.rejected {
            None => {
                let value = self.parse(&fixed.value).map_err(StageError::record)?;
                // Cached under the original prompt too: a re-run asks nothing, and identical
                // records waiting for this one take it.
                if let Some(pending) = first.pending {
                    self.policy.remember(pending, &fixed.value, fixed.usage);
                }
                Ok(vec![self.output_record(record, value)])
            }
            Some(again) => Err(StageError::record(format!(
                "invalid answer after one repair attempt: {again} (first answer: {problem})"
            ))),
        }
    }

    fn calls_remote(&self) -> bool {
        true
    }

    async fn plan(&self, record: &Record) -> Result<(), StageError> {
        let prompt = self.prompt(record)?;
        self.policy.plan(&self.spec(&prompt));
        Ok(())
    }
}
