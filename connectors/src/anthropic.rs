//! Anthropic Messages API: system prompt and messages as content blocks, `cache_control` on the
//! blocks that end a stable prefix, and cache reads/writes parsed from usage.

use crate::failure::{Failure, FailureClass};
use crate::http::{self, ApiKey, header, malformed};
use crate::openai::{Completion, Usage};
use crate::ratelimit::RateLimitSnapshot;
use serde_json::{Value, json};
use std::time::SystemTime;

const API_VERSION: &str = "2023-06-01";

/// A text content block; `cache: true` marks the end of a prefix the provider should cache.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub text: String,
    pub cache: bool,
}

impl Block {
    pub fn text(text: impl Into<String>) -> Self {
        Block {
            text: text.into(),
            cache: false,
        }
    }
    pub fn cached(text: impl Into<String>) -> Self {
        Block {
            text: text.into(),
            cache: true,
        }
    }

    fn to_json(&self) -> Value {
        let mut block = json!({ "type": "text", "text": self.text });
        if self.cache {
            block["cache_control"] = json!({ "type": "ephemeral" });
        }
        block
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct MessagesRequest {
    pub model: String,
    pub system: Vec<Block>,
    /// (role, blocks): "user" / "assistant".
    pub messages: Vec<(String, Vec<Block>)>,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
}

#[derive(Clone, Debug)]
pub struct AnthropicClient {
    http: reqwest::Client,
    base_url: String,
    key: ApiKey,
}

impl AnthropicClient {
    /// `base_url` up to and including the version, e.g. `https://api.anthropic.com/v1`.
    pub fn new(base_url: &str, key: ApiKey) -> Result<Self, Failure> {
        Ok(AnthropicClient {
            http: http::client()?,
            base_url: base_url.trim_end_matches('/').to_string(),
            key,
        })
    }

    pub async fn messages(&self, request: &MessagesRequest) -> Result<Completion, Failure> {
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|(role, blocks)| json!({ "role": role, "content": blocks.iter().map(Block::to_json).collect::<Vec<_>>() }))
            .collect();
        let mut body = json!({
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": messages,
        });
        if !request.system.is_empty() {
            body["system"] = Value::Array(request.system.iter().map(Block::to_json).collect());
        }
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        let call = self
            .http
            .post(format!("{}/messages", self.base_url))
            .header("x-api-key", self.key.expose())
            .header("anthropic-version", API_VERSION)
            .json(&body);
        let (value, headers) = http::send_json(call, "messages", &self.key).await?;
        let rate_limit = RateLimitSnapshot::from_anthropic(header(&headers), SystemTime::now());
        parse_messages(&value)
            .map(|mut c| {
                c.rate_limit = rate_limit.clone();
                c
            })
            .map_err(|mut f| {
                f.rate_limit = Box::new(rate_limit);
                f
            })
    }
}

/// A Messages API body: the answer, or — `stop_reason: "refusal"` — the model's refusal as a
/// record error carrying its text and the (billed) usage.
pub fn parse_messages(value: &Value) -> Result<Completion, Failure> {
    let usage = &value["usage"];
    let count = |field: &str| usage[field].as_u64().unwrap_or(0);
    let usage = Usage {
        // Anthropic counts cache reads and writes apart from `input_tokens`; the common
        // `Usage` counts every prompt token in `input_tokens`.
        input_tokens: count("input_tokens")
            + count("cache_read_input_tokens")
            + count("cache_creation_input_tokens"),
        output_tokens: count("output_tokens"),
        cached_input_tokens: count("cache_read_input_tokens"),
        cache_write_tokens: count("cache_creation_input_tokens"),
    };
    let content = value["content"]
        .as_array()
        .ok_or_else(|| malformed("messages response without content"))?
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect::<Vec<_>>()
        .join("");
    let stop_reason = value["stop_reason"].as_str().map(str::to_string);
    if stop_reason.as_deref() == Some("refusal") {
        let text = if content.is_empty() {
            "(no text)"
        } else {
            &content
        };
        return Err(Failure::unusable(
            FailureClass::Record,
            format!("the model refused: {text}"),
            usage,
        ));
    }
    Ok(Completion {
        content,
        finish_reason: stop_reason,
        usage,
        rate_limit: RateLimitSnapshot::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::Billed;

    #[test]
    fn a_refusal_is_a_record_error_with_its_text_and_usage() {
        let body = json!({
            "type": "message", "role": "assistant",
            "content": [{ "type": "text", "text": "I can't help with that." }],
            "stop_reason": "refusal",
            "usage": { "input_tokens": 40, "output_tokens": 7,
                       "cache_read_input_tokens": 10, "cache_creation_input_tokens": 0 }
        });
        let failure = parse_messages(&body).unwrap_err();
        assert_eq!(failure.class, FailureClass::Record);
        assert_eq!(
            failure.message,
            "the model refused: I can't help with that."
        );
        let Billed::Usage(usage) = failure.billed else {
            panic!("a refusal is billed: {failure:?}")
        };
        assert_eq!(
            (
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_input_tokens
            ),
            (50, 7, 10)
        );
        let mut ok = body.clone();
        ok["stop_reason"] = json!("end_turn");
        let done = parse_messages(&ok).unwrap();
        assert_eq!(done.content, "I can't help with that.");
        assert_eq!(done.finish_reason.as_deref(), Some("end_turn"));
    }
}
