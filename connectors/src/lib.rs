//! Clients for the outside world (LLM providers, embeddings, stores) and the one place where
//! their failures are classified. Nothing here knows pipeline types: stages translate a
//! [`Failure`] into the runtime's error class.

pub mod anthropic;
pub mod failure;
mod http;
pub mod models;
pub mod openai;
pub mod pricing;
pub mod ratelimit;

pub use anthropic::{AnthropicClient, Block, MessagesRequest};
pub use failure::{Billed, Failure, FailureClass, classify_response, classify_status};
pub use http::ApiKey;
pub use openai::{ChatMessage, ChatRequest, Completion, Embeddings, OpenAiClient, Usage};
pub use ratelimit::{RateLimitSnapshot, parse_duration, retry_after};
