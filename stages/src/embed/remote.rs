//! Embeddings from an OpenAI-compatible provider (`resources.providers`), through the policy
//! stack with the response cache per input text (`CallPolicy::call_items`): limits, retries,
//! breaker, budget and cost as for chat calls. Never a request before the run: the vector size
//! comes from the config or the model's known size.

use crate::chunk::splitter::Tokenizer;
use crate::provider::{OPENAI_URL, failed, server_limits};
use connectors::{ApiKey, Embeddings, OpenAiClient};
use pipeline::policy::items::Item;
use pipeline::policy::{Answer, CallPolicy, Price, ProviderSpec, TokenUsage, cache_key};
use pipeline::{BuildContext, StageError};
use serde_json::json;

/// Native vector sizes of the models whose size is public.
pub fn known_dimensions(model: &str) -> Option<usize> {
    match model {
        "text-embedding-3-small" => Some(1536),
        "text-embedding-3-large" => Some(3072),
        "text-embedding-ada-002" => Some(1536),
        _ => None,
    }
}

/// Models that accept `dimensions` (and shorten their vectors to it).
fn accepts_dimensions(model: &str) -> bool {
    model.starts_with("text-embedding-3-")
}

/// Most tokens one input may have, for the models whose limit is public.
fn known_input_limit(model: &str) -> Option<usize> {
    model.starts_with("text-embedding-").then_some(8191)
}

#[derive(Debug)]
pub struct Remote {
    client: OpenAiClient,
    policy: CallPolicy,
    provider_kind: String,
    base_url: String,
    pub model: String,
    pub dimensions: usize,
    /// Sent as `dimensions` (models that accept it).
    ask_dimensions: Option<u32>,
    max_input_tokens: Option<usize>,
}

impl Remote {
    /// `dimensions`/`max_input_tokens`: the stage config's values.
    pub fn build(
        ctx: &BuildContext,
        provider: &str,
        dimensions: Option<usize>,
        max_input_tokens: Option<usize>,
    ) -> Result<Remote, StageError> {
        let spec = ctx.provider(provider)?;
        if spec.kind != "openai" {
            return Err(StageError::run(format!(
                "provider `{provider}` is kind `{}`, which has no embeddings API: use an \
                 `openai` kind provider (OpenAI or any server with its API) or `provider: local`",
                spec.kind
            )));
        }
        let model = spec.model.clone();
        let dimensions = match (dimensions, known_dimensions(&model)) {
            (Some(asked), Some(native)) if asked > native => {
                return Err(StageError::run(format!(
                    "dimensions: {asked} is more than model `{model}` has ({native})"
                )));
            }
            (Some(asked), Some(native)) if asked != native && !accepts_dimensions(&model) => {
                return Err(StageError::run(format!(
                    "dimensions: model `{model}` always answers {native} dimensions and cannot \
                     shorten them to {asked}"
                )));
            }
            (Some(asked), _) => asked,
            (None, Some(native)) => native,
            (None, None) => {
                return Err(StageError::run(format!(
                    "dimensions: the vector size of model `{model}` (provider `{provider}`) is \
                     not known: set `dimensions:` in the embed stage config (nothing is sent \
                     before the run to find out)"
                )));
            }
        };
        let ask_dimensions = accepts_dimensions(&model).then_some(dimensions as u32);
        let base_url = spec.base_url.clone().unwrap_or_else(|| OPENAI_URL.into());
        let key = api_key(provider, spec, ctx.dry_run)?;
        let client = OpenAiClient::new(&base_url, key).map_err(|f| StageError::run(f.message))?;
        let price = price(spec);
        if price.is_none() {
            tracing::warn!(
                "stage `{}`: no price known for model `{model}`: its cost shows as $0 (set \
                 `pricing` on provider `{provider}`)",
                ctx.stage_id
            );
            if ctx.resources.budget().spec().max_usd.is_some() {
                return Err(StageError::run(format!(
                    "budget.max_usd is set but model `{model}` has no known price: set `pricing` \
                     on provider `{provider}`"
                )));
            }
        }
        Ok(Remote {
            client,
            policy: ctx.call_policy(provider)?.with_price(price),
            provider_kind: spec.kind.clone(),
            base_url,
            model: model.clone(),
            dimensions,
            ask_dimensions,
            max_input_tokens: max_input_tokens.or_else(|| known_input_limit(&model)),
        })
    }

    /// Prompt tokens of one input (the count OpenAI's embedding models use).
    pub fn count_tokens(text: &str) -> u64 {
        Tokenizer::Cl100kBase.count(text) as u64
    }

    fn item(&self, text: &str) -> Item {
        Item {
            cache_key: Some(cache_key(&json!({
                "endpoint": "embeddings",
                "provider": self.provider_kind,
                "base_url": self.base_url,
                "model": self.model,
                "dimensions": self.ask_dimensions,
                "input": text,
            }))),
            input_tokens: Self::count_tokens(text),
        }
    }

    /// An input the provider would refuse for its size, refused before anything is sent.
    fn too_long(&self, item: &Item) -> Option<StageError> {
        let limit = self.max_input_tokens?;
        (item.input_tokens as usize > limit).then(|| {
            StageError::record(format!(
                "text has {} tokens; model `{}` takes at most {limit} per input (make chunks \
                 smaller, or set `max_input_tokens`)",
                item.input_tokens, self.model
            ))
        })
    }

    /// One vector per text, in order; each text fails alone.
    pub async fn embed(&self, texts: &[&str]) -> Vec<Result<Vec<f32>, StageError>> {
        let mut results: Vec<Option<Result<Vec<f32>, StageError>>> =
            (0..texts.len()).map(|_| None).collect();
        let mut items = Vec::new();
        let mut sendable = Vec::new();
        for (index, text) in texts.iter().enumerate() {
            let item = self.item(text);
            match self.too_long(&item) {
                Some(error) => results[index] = Some(Err(error)),
                None => {
                    items.push(item);
                    sendable.push(index);
                }
            }
        }
        let answers = self
            .policy
            .call_items(&items, |indices: Vec<usize>| {
                let inputs: Vec<String> = indices
                    .iter()
                    .map(|&i| texts[sendable[i]].to_string())
                    .collect();
                async move {
                    self.client
                        .embed_with_dimensions(&self.model, &inputs, self.ask_dimensions)
                        .await
                        .map(answer)
                        .map_err(failed)
                }
            })
            .await;
        for (index, answer) in sendable.into_iter().zip(answers) {
            results[index] = Some(answer.and_then(|vector| self.check(vector)));
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StageError::record("text was never embedded"))))
            .collect()
    }

    /// A vector of another size than declared would break the store: stop the run.
    fn check(&self, vector: Vec<f32>) -> Result<Vec<f32>, StageError> {
        if vector.len() == self.dimensions {
            Ok(vector)
        } else {
            Err(StageError::run(format!(
                "model `{}` answered {}-dimension vectors, but the stage declares {} (set \
                 `dimensions: {}` in the embed stage config)",
                self.model,
                vector.len(),
                self.dimensions,
                vector.len()
            )))
        }
    }

    /// `pipe plan`: what embedding `texts` would send.
    pub fn plan(&self, texts: &[&str]) {
        let items: Vec<Item> = texts
            .iter()
            .map(|t| self.item(t))
            .filter(|item| self.too_long(item).is_none())
            .collect();
        if !items.is_empty() {
            self.policy.plan_items(&items);
        }
    }
}

fn answer(e: Embeddings) -> Answer<Vec<Vec<f32>>> {
    Answer {
        value: e.vectors,
        usage: TokenUsage {
            input: e.usage.input_tokens,
            ..Default::default()
        },
        server: server_limits(&e.rate_limit),
    }
}

/// The price to charge: the YAML's, else the model's list price.
fn price(spec: &ProviderSpec) -> Option<Price> {
    spec.pricing.or_else(|| {
        connectors::pricing::list_price(&spec.model).map(|p| Price {
            input: p.input,
            output: p.output,
            cached_input: Some(p.cached_input),
            cache_write: Some(p.cache_write),
        })
    })
}

/// The YAML's key, else `OPENAI_API_KEY`; none needed for a `base_url` of one's own (local
/// servers) or for `pipe plan`.
fn api_key(name: &str, spec: &ProviderSpec, dry_run: bool) -> Result<ApiKey, StageError> {
    let key = spec
        .api_key
        .as_ref()
        .map(|k| k.expose().to_string())
        .or_else(|| std::env::var("OPENAI_API_KEY").ok());
    if spec.base_url.is_none() && !dry_run && key.as_deref().is_none_or(str::is_empty) {
        return Err(StageError::run(format!(
            "provider `{name}` has no api_key: set OPENAI_API_KEY (or `api_key:` in the YAML)"
        )));
    }
    Ok(ApiKey::new(key.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_models_have_their_sizes() {
        assert_eq!(known_dimensions("text-embedding-3-small"), Some(1536));
        assert_eq!(known_dimensions("text-embedding-3-large"), Some(3072));
        assert_eq!(known_dimensions("text-embedding-ada-002"), Some(1536));
        assert_eq!(known_dimensions("nomic-embed-text"), None);
        assert!(accepts_dimensions("text-embedding-3-large"));
        assert!(!accepts_dimensions("text-embedding-ada-002"));
    }
}
