//! What stages share to call a chat model: one client per provider entry (OpenAI-compatible
//! or Anthropic), one attempt per `complete`, and the translation of the connectors' results
//! into the policy layer's vendor-neutral terms. Retries, limits and timeouts are not here:
//! they are the policy stack's (`pipeline::policy`).

use crate::chunk::splitter::Tokenizer;
use connectors::models::{self, Encoding};
use connectors::{
    AnthropicClient, ApiKey, Billed, Block, ChatMessage, ChatRequest, Completion, Failure,
    FailureClass, LimitKind, MessagesRequest, OpenAiClient, RateLimitSnapshot, Usage,
};
use pipeline::policy::{
    Answer, Billing, Dimension, Failed, Price, ProviderSpec, ServerLimits, TokenUsage,
};
use pipeline::{Registry, StageError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const OPENAI_URL: &str = "https://api.openai.com/v1";
pub const ANTHROPIC_URL: &str = "https://api.anthropic.com/v1";

/// Declares the provider kinds the built-in stages speak.
pub fn register_provider_kinds(registry: &mut Registry) {
    registry
        .register_provider_kind(
            "openai",
            "OpenAI chat completions and embeddings, or any server with that API (base_url)",
        )
        .register_provider_kind("anthropic", "Anthropic Messages API");
}

#[derive(Clone, Debug)]
enum Client {
    OpenAi(OpenAiClient),
    Anthropic(AnthropicClient),
}

/// A chat model behind a provider entry.
#[derive(Clone, Debug)]
pub struct Chat {
    client: Client,
    kind: String,
    base_url: String,
    pub model: String,
}

/// One exchange to send: a system part (the stable prefix, cacheable), then turns.
#[derive(Clone, Debug, Default)]
pub struct Prompt {
    pub system: Option<String>,
    /// (role, text) in order: "user" / "assistant".
    pub turns: Vec<(String, String)>,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
    /// Structured output: the answer must be JSON valid against this schema.
    pub json_schema: Option<Value>,
}

/// A model's answer, as cached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub text: String,
    pub finish_reason: Option<String>,
}

impl Chat {
    /// `dry_run` (`pipe plan`): a missing key is fine, nothing will be sent.
    pub fn from_spec(name: &str, spec: &ProviderSpec, dry_run: bool) -> Result<Chat, StageError> {
        let (default_url, needs_key) = match spec.kind.as_str() {
            "openai" => (OPENAI_URL, spec.base_url.is_none()),
            "anthropic" => (ANTHROPIC_URL, spec.base_url.is_none()),
            other => {
                return Err(StageError::run(format!(
                    "provider `{name}`: kind `{other}` is not a chat provider"
                )));
            }
        };
        let env_var = if spec.kind == "openai" {
            "OPENAI_API_KEY"
        } else {
            "ANTHROPIC_API_KEY"
        };
        // The YAML's key, else the vendor's usual environment variable.
        let key = spec
            .api_key
            .as_ref()
            .map(|k| k.expose().to_string())
            .or_else(|| std::env::var(env_var).ok());
        if needs_key && !dry_run && key.as_deref().is_none_or(str::is_empty) {
            return Err(StageError::run(format!(
                "provider `{name}` has no api_key: set {env_var} (or `api_key:` in the YAML)"
            )));
        }
        let base_url = spec.base_url.as_deref().unwrap_or(default_url).to_string();
        let key = ApiKey::new(key.unwrap_or_default());
        let client = match spec.kind.as_str() {
            "openai" => OpenAiClient::new(&base_url, key).map(Client::OpenAi),
            _ => AnthropicClient::new(&base_url, key).map(Client::Anthropic),
        }
        .map_err(|f| StageError::run(f.message))?;
        let chat = Chat {
            client,
            kind: spec.kind.clone(),
            base_url,
            model: spec.model.clone(),
        };
        chat.tokenizer().0.warm_in_background();
        Ok(chat)
    }

    /// The price to charge: the YAML's, else the list price of the model.
    pub fn price(&self, spec: &ProviderSpec) -> Option<Price> {
        spec.pricing.or_else(|| {
            connectors::pricing::list_price(&self.model).map(|p| Price {
                input: p.input,
                output: p.output,
                cached_input: Some(p.cached_input),
                cache_write: Some(p.cache_write),
            })
        })
    }

    /// The tokenizer that counts this model's prompts, and whether its count is exact (OpenAI's
    /// models) or an estimate (Anthropic's tokenizer is not public: cl100k comes within a few
    /// per cent of it on English; the rate limiter and the bill correct it).
    pub fn tokenizer(&self) -> (Tokenizer, bool) {
        let (encoding, exact) = models::token_encoding(&self.model);
        let tokenizer = match encoding {
            Encoding::O200kBase => Tokenizer::O200kBase,
            Encoding::Cl100kBase => Tokenizer::Cl100kBase,
        };
        (tokenizer, exact)
    }

    /// Prompt tokens as the provider will count them, with the model's own encoding (the
    /// limiter reconciles the estimate with the billed usage after the answer).
    pub fn count_prompt_tokens(&self, prompt: &Prompt) -> u64 {
        let (tokenizer, _) = self.tokenizer();
        let count = |text: &str| tokenizer.count(text) as u64;
        // OpenAI's chat framing: 3 tokens per reply priming, 3 + role per message.
        let mut total = 3;
        if let Some(system) = &prompt.system {
            total += 4 + count(system);
        }
        for (_, text) in &prompt.turns {
            total += 4 + count(text);
        }
        if let Some(schema) = &prompt.json_schema {
            total += count(&schema.to_string());
        }
        total
    }

    /// Characters of every message's text, system included: what OpenAI's rate limiter
    /// estimates a prompt from (about 4 per token).
    pub fn prompt_chars(&self, prompt: &Prompt) -> u64 {
        let system = prompt.system.as_deref().map_or(0, |s| s.chars().count());
        let turns: usize = prompt.turns.iter().map(|(_, t)| t.chars().count()).sum();
        (system + turns) as u64
    }

    /// Tokens the model's context holds: the YAML's `context_window`, else the known figure.
    pub fn context_window(&self, spec: &ProviderSpec) -> Option<u64> {
        spec.context_window
            .or_else(|| models::context_window(&self.model))
    }

    /// OpenAI's reasoning models (o-series, gpt-5) take no temperature.
    pub fn is_reasoning_model(&self) -> bool {
        self.kind == "openai" && models::is_reasoning_model(&self.model)
    }

    /// Everything that determines the answer, for the response cache key.
    pub fn cache_material(&self, prompt: &Prompt, version: &str) -> Value {
        json!({
            "provider": self.kind,
            "base_url": self.base_url,
            "model": self.model,
            "max_tokens": prompt.max_tokens,
            "temperature": prompt.temperature,
            "schema": prompt.json_schema,
            "prompt_version": version,
            "system": prompt.system,
            "turns": prompt.turns,
        })
    }

    /// One attempt.
    pub async fn complete(&self, prompt: &Prompt) -> Result<Answer<Reply>, Failed> {
        let completion = match &self.client {
            Client::OpenAi(client) => {
                let mut messages = Vec::new();
                if let Some(system) = &prompt.system {
                    messages.push(ChatMessage::system(system.clone()));
                }
                for (role, text) in &prompt.turns {
                    messages.push(ChatMessage {
                        role: role.clone(),
                        content: text.clone(),
                    });
                }
                let request = ChatRequest {
                    model: self.model.clone(),
                    messages,
                    max_tokens: Some(prompt.max_tokens),
                    temperature: prompt.temperature,
                    json_schema: prompt
                        .json_schema
                        .as_ref()
                        .map(|s| ("answer".to_string(), s.clone())),
                    strict_schema: prompt.json_schema.as_ref().is_some_and(strict_compatible),
                };
                client.chat(&request).await
            }
            Client::Anthropic(client) => {
                let mut system = Vec::new();
                if let Some(text) = &prompt.system {
                    // The system part is the stable prefix: mark it for the prompt cache.
                    system.push(Block::cached(text.clone()));
                }
                if let Some(schema) = &prompt.json_schema {
                    system.push(Block::text(format!(
                        "Answer with JSON only, valid against this JSON Schema: {schema}"
                    )));
                }
                let request = MessagesRequest {
                    model: self.model.clone(),
                    system,
                    messages: prompt
                        .turns
                        .iter()
                        .map(|(role, text)| (role.clone(), vec![Block::text(text.clone())]))
                        .collect(),
                    max_tokens: prompt.max_tokens,
                    temperature: prompt.temperature,
                };
                client.messages(&request).await
            }
        };
        completion.map(answer).map_err(failed)
    }
}

/// Whether OpenAI's strict structured output accepts this schema: every object forbids extra
/// properties and requires all of its own. Otherwise the schema is sent as guidance only (a
/// strict request with it would be refused) and the stage's own validation enforces it.
pub fn strict_compatible(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => {
            let is_object = map.get("type") == Some(&Value::String("object".into()));
            if is_object {
                let properties = map.get("properties").and_then(Value::as_object);
                let required: Vec<&str> = map
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let closed = map.get("additionalProperties") == Some(&Value::Bool(false));
                let all_required =
                    properties.is_none_or(|p| p.keys().all(|k| required.contains(&k.as_str())));
                if !(closed && all_required && properties.is_some()) {
                    return false;
                }
            }
            map.values().all(strict_compatible)
        }
        Value::Array(items) => items.iter().all(strict_compatible),
        _ => true,
    }
}

/// What the provider said of the account's limits, in the policy layer's terms.
pub(crate) fn server_limits(s: &RateLimitSnapshot) -> ServerLimits {
    ServerLimits {
        limit_requests: s.limit_requests,
        remaining_requests: s.remaining_requests,
        reset_requests: s.reset_requests,
        limit_tokens: s.limit_tokens,
        remaining_tokens: s.remaining_tokens,
        reset_tokens: s.reset_tokens,
        refused_by: s.refused_by.map(|kind| match kind {
            LimitKind::Requests => Dimension::Requests,
            LimitKind::Tokens => Dimension::Tokens,
        }),
        requested_tokens: s.requested_tokens,
    }
}

fn answer(c: Completion) -> Answer<Reply> {
    Answer {
        value: Reply {
            text: c.content,
            finish_reason: c.finish_reason,
        },
        usage: usage(&c.usage),
        server: server_limits(&c.rate_limit),
    }
}

fn usage(u: &Usage) -> TokenUsage {
    TokenUsage {
        input: u.input_tokens,
        output: u.output_tokens,
        cached_input: u.cached_input_tokens,
        cache_write: u.cache_write_tokens,
    }
}

/// A connector failure in the policy layer's terms (the class decides retry / dead letter /
/// stop; the message is already free of keys; a billed failure carries its usage).
pub fn failed(f: Failure) -> Failed {
    let error = match f.class {
        FailureClass::Retryable { retry_after } => {
            StageError::retryable(f.message, retry_after.map(|d| d.as_secs_f64()))
        }
        FailureClass::Record => StageError::record(f.message),
        FailureClass::Run => StageError::run(f.message),
    };
    Failed {
        error,
        status: f.status,
        server: Box::new(server_limits(&f.rate_limit)),
        billed: match f.billed {
            Billed::Nothing => Billing::Nothing,
            Billed::Usage(u) => Billing::Known(usage(&u)),
            Billed::Unknown => Billing::Unknown,
        },
        shed: f.shed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_schemas_are_recognised() {
        let strict = json!({
            "type": "object", "additionalProperties": false, "required": ["a", "b"],
            "properties": {
                "a": { "type": "string" },
                "b": { "type": "array", "items": {
                    "type": "object", "additionalProperties": false, "required": ["x"],
                    "properties": { "x": { "type": "integer" } } } }
            }
        });
        assert!(strict_compatible(&strict));
        let mut open_inner = strict.clone();
        open_inner["properties"]["b"]["items"]["additionalProperties"] = json!(true);
        assert!(!strict_compatible(&open_inner));
        let mut optional = strict.clone();
        optional["required"] = json!(["a"]);
        assert!(!strict_compatible(&optional));
        assert!(!strict_compatible(&json!({ "type": "object" })));
    }
}
