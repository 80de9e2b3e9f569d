//! OpenAI-compatible HTTP API: chat completions (with JSON-schema structured output) and
//! embeddings. Works with OpenAI and anything that speaks its wire format through `base_url`
//! (Ollama, vLLM, llama.cpp server, LiteLLM proxy).
//!
//! The client makes exactly one attempt per call and classifies what went wrong; retries,
//! rate limits and timeouts belong to the pipeline's policy layer, not here.

use crate::failure::Failure;
use crate::http::{self, ApiKey, header, malformed};
use crate::ratelimit::RateLimitSnapshot;
use serde::Serialize;
use serde_json::{Value, json};

/// Tokens as billed, parsed from every response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Every prompt token, including those read from or written to the prompt cache.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens served from the provider's prompt cache (billed at the cached rate).
    pub cached_input_tokens: u64,
    /// Input tokens written to the provider's prompt cache (Anthropic bills them at a premium).
    pub cache_write_tokens: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage {
            role: "system".into(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: "user".into(),
            content: content.into(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// Structured output: (schema name, JSON Schema); the answer must be JSON of that shape.
    pub json_schema: Option<(String, Value)>,
    /// Ask the server to enforce the schema (OpenAI's `strict`: every object must list all
    /// its properties as required and forbid others, or the request is refused with a 400).
    pub strict_schema: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub content: String,
    pub finish_reason: Option<String>,
    pub usage: Usage,
    pub rate_limit: RateLimitSnapshot,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub usage: Usage,
    pub rate_limit: RateLimitSnapshot,
}

#[derive(Clone, Debug)]
pub struct OpenAiClient {
    http: reqwest::Client,
    base_url: String,
    key: ApiKey,
}

impl OpenAiClient {
    /// `base_url` up to and including the version, e.g. `https://api.openai.com/v1`.
    pub fn new(base_url: &str, key: ApiKey) -> Result<Self, Failure> {
        Ok(OpenAiClient {
            http: http::client()?,
            base_url: base_url.trim_end_matches('/').to_string(),
            key,
        })
    }

    pub async fn chat(&self, request: &ChatRequest) -> Result<Completion, Failure> {
        let mut body = json!({ "model": request.model, "messages": request.messages });
        if let Some(max) = request.max_tokens {
            body["max_tokens"] = json!(max);
        }
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        if let Some((name, schema)) = &request.json_schema {
            body["response_format"] = json!({
                "type": "json_schema",
                "json_schema": { "name": name, "schema": schema, "strict": request.strict_schema }
            });
        }
        let (value, rate_limit) = self.post("chat/completions", &body).await?;
        let choice = &value["choices"][0];
        let content = choice["message"]["content"]
            .as_str()
            .ok_or_else(|| malformed("chat completion without choices[0].message.content"))?
            .to_string();
        Ok(Completion {
            content,
            finish_reason: choice["finish_reason"].as_str().map(str::to_string),
            usage: Usage {
                input_tokens: value["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                output_tokens: value["usage"]["completion_tokens"].as_u64().unwrap_or(0),
                cached_input_tokens: value["usage"]["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap_or(0),
                cache_write_tokens: 0,
            },
            rate_limit,
        })
    }

    pub async fn embed(&self, model: &str, inputs: &[String]) -> Result<Embeddings, Failure> {
        self.embed_with_dimensions(model, inputs, None).await
    }

    /// `dimensions`: the size to ask for (text-embedding-3 models shorten their vectors to
    /// it); `None` = the model's own size.
    pub async fn embed_with_dimensions(
        &self,
        model: &str,
        inputs: &[String],
        dimensions: Option<u32>,
    ) -> Result<Embeddings, Failure> {
        let mut body = json!({ "model": model, "input": inputs, "encoding_format": "float" });
        if let Some(dimensions) = dimensions {
            body["dimensions"] = json!(dimensions);
        }
        let (value, rate_limit) = self.post("embeddings", &body).await?;
        let data = value["data"]
            .as_array()
            .ok_or_else(|| malformed("embeddings response without data"))?;
        let mut vectors = vec![Vec::new(); inputs.len()];
        for item in data {
            let index = item["index"].as_u64().unwrap_or(0) as usize;
            let vector: Vec<f32> = item["embedding"]
                .as_array()
                .ok_or_else(|| malformed("embedding is not an array of numbers"))?
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32))
                .collect::<Option<_>>()
                .ok_or_else(|| malformed("embedding is not an array of numbers"))?;
            let slot = vectors
                .get_mut(index)
                .ok_or_else(|| malformed("embedding index out of range"))?;
            *slot = vector;
        }
        if vectors.iter().any(Vec::is_empty) {
            return Err(malformed("fewer embeddings than inputs"));
        }
        Ok(Embeddings {
            vectors,
            usage: Usage {
                input_tokens: value["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                ..Usage::default()
            },
            rate_limit,
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(Value, RateLimitSnapshot), Failure> {
        let request = self
            .http
            .post(format!("{}/{path}", self.base_url))
            .bearer_auth(self.key.expose())
            .json(body);
        let (value, headers) = http::send_json(request, path, &self.key).await?;
        Ok((value, RateLimitSnapshot::from_openai(header(&headers))))
    }
}
