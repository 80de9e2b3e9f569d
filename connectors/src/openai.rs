//! OpenAI-compatible HTTP API: chat completions (with JSON-schema structured output) and
//! embeddings. Works with OpenAI and anything that speaks its wire format through `base_url`
//! (Ollama, vLLM, llama.cpp server, LiteLLM proxy).
//!
//! The client makes exactly one attempt per call and classifies what went wrong; retries,
//! rate limits and timeouts belong to the pipeline's policy layer, not here.

use crate::failure::{Failure, FailureClass};
use crate::http::{self, ApiKey, header, malformed};
use crate::models::is_reasoning_model;
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

/// The JSON body of a chat request. Reasoning models (o-series, gpt-5) take
/// `max_completion_tokens` (their output includes the hidden reasoning) and only the default
/// temperature: theirs get no `temperature` at all.
pub fn chat_body(request: &ChatRequest) -> Value {
    let reasoning = is_reasoning_model(&request.model);
    let mut body = json!({ "model": request.model, "messages": request.messages });
    if let Some(max) = request.max_tokens {
        let field = if reasoning {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body[field] = json!(max);
    }
    if let Some(t) = request.temperature.filter(|_| !reasoning) {
        body["temperature"] = json!(t);
    }
    if let Some((name, schema)) = &request.json_schema {
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": { "name": name, "schema": schema, "strict": request.strict_schema }
        });
    }
    body
}

/// A chat completion's body: the answer, or why it cannot be used. A refusal
/// (`message.refusal`), an answer the content filter withheld, or one cut off before any text
/// are record errors (asking again gets the same); they are billed, so their usage comes along.
pub fn parse_chat(value: &Value) -> Result<Completion, Failure> {
    let usage = Usage {
        input_tokens: value["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
        output_tokens: value["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        cached_input_tokens: value["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
        cache_write_tokens: 0,
    };
    let choice = &value["choices"][0];
    let finish_reason = choice["finish_reason"].as_str().map(str::to_string);
    if let Some(refusal) = choice["message"]["refusal"]
        .as_str()
        .filter(|r| !r.is_empty())
    {
        return Err(Failure::unusable(
            FailureClass::Record,
            format!("the model refused: {refusal}"),
            usage,
        ));
    }
    let Some(content) = choice["message"]["content"].as_str() else {
        let (class, message) = match finish_reason.as_deref() {
            Some("content_filter") => (
                FailureClass::Record,
                "no answer: the provider's content filter withheld it".to_string(),
            ),
            Some("length") => (
                FailureClass::Record,
                format!(
                    "no answer: all {} output tokens were spent before any text (a reasoning \
                     model spends them on reasoning: raise max_tokens)",
                    usage.output_tokens
                ),
            ),
            _ => (
                FailureClass::Retryable { retry_after: None },
                "malformed response: chat completion without choices[0].message.content"
                    .to_string(),
            ),
        };
        if value["usage"].is_object() {
            return Err(Failure::unusable(class, message, usage));
        }
        return Err(malformed("chat completion without choices or usage"));
    };
    Ok(Completion {
        content: content.to_string(),
        finish_reason,
        usage,
        rate_limit: RateLimitSnapshot::default(),
    })
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
        let (value, rate_limit) = self.post("chat/completions", &chat_body(request)).await?;
        parse_chat(&value)
            .map(|mut c| {
                c.rate_limit = rate_limit.clone();
                c
            })
            .map_err(|mut f| {
                f.rate_limit = Box::new(rate_limit);
                f
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::Billed;

    fn request(model: &str) -> ChatRequest {
        ChatRequest {
            model: model.into(),
            messages: vec![ChatMessage::user("hi")],
            max_tokens: Some(300),
            temperature: Some(0.2),
            ..Default::default()
        }
    }

    #[test]
    fn reasoning_models_get_max_completion_tokens_and_no_temperature() {
        let plain = chat_body(&request("gpt-4o-mini"));
        assert_eq!(plain["max_tokens"], 300);
        assert!(plain.get("max_completion_tokens").is_none());
        assert!((plain["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
        for model in ["o3-mini", "gpt-5-mini"] {
            let body = chat_body(&request(model));
            assert_eq!(body["max_completion_tokens"], 300, "{model}");
            assert!(body.get("max_tokens").is_none(), "{model}");
            assert!(body.get("temperature").is_none(), "{model}");
        }
    }

    fn completion(message: Value, finish_reason: &str) -> Value {
        json!({
            "choices": [{ "index": 0, "message": message, "finish_reason": finish_reason }],
            "usage": { "prompt_tokens": 120, "completion_tokens": 12,
                       "prompt_tokens_details": { "cached_tokens": 0 } }
        })
    }

    fn billed(failure: &Failure) -> Usage {
        match failure.billed {
            Billed::Usage(usage) => usage,
            other => panic!("expected billed usage, got {other:?}"),
        }
    }

    #[test]
    fn refusals_and_empty_answers_are_billed_failures() {
        let refused = parse_chat(&completion(
            json!({ "role": "assistant", "content": null,
                    "refusal": "I'm sorry, but I can't help with that." }),
            "stop",
        ))
        .unwrap_err();
        assert_eq!(refused.class, FailureClass::Record);
        assert_eq!(
            refused.message,
            "the model refused: I'm sorry, but I can't help with that."
        );
        assert_eq!(billed(&refused).input_tokens, 120);
        assert_eq!(billed(&refused).output_tokens, 12);
        let filtered = parse_chat(&completion(
            json!({ "role": "assistant", "content": null }),
            "content_filter",
        ))
        .unwrap_err();
        assert_eq!(filtered.class, FailureClass::Record);
        let spent = parse_chat(&completion(
            json!({ "role": "assistant", "content": null }),
            "length",
        ))
        .unwrap_err();
        assert_eq!(spent.class, FailureClass::Record);
        assert!(
            spent.message.contains("raise max_tokens"),
            "{}",
            spent.message
        );
        let odd = parse_chat(&completion(json!({ "role": "assistant" }), "stop")).unwrap_err();
        assert!(matches!(odd.class, FailureClass::Retryable { .. }));
        assert_eq!(billed(&odd).output_tokens, 12);
        let no_usage = parse_chat(&json!({ "choices": [] })).unwrap_err();
        assert_eq!(no_usage.billed, Billed::Unknown);
        let ok = parse_chat(&completion(
            json!({ "role": "assistant", "content": "fine", "refusal": null }),
            "stop",
        ))
        .unwrap();
        assert_eq!((ok.content.as_str(), ok.usage.input_tokens), ("fine", 120));
    }
}
