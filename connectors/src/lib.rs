//! Clients for the outside world (LLM providers, embeddings, stores) and the one place where
//! their failures are classified. Nothing here knows pipeline types: stages translate a
//! [`Failure`] into the runtime's error class.

pub mod anthropic;
pub mod failure;
pub mod falkordb;
mod http;
pub mod models;
pub mod neo4j;
pub mod openai;
pub mod pricing;
pub mod qdrant;
pub mod ratelimit;

pub use anthropic::{AnthropicClient, Block, MessagesRequest};
pub use failure::{Billed, Failure, FailureClass, classify_response, classify_status};
pub use falkordb::{FalkorClient, QueryResult, QueryStats};
pub use http::ApiKey;
pub use neo4j::{Neo4jClient, Neo4jSettings};
pub use openai::{ChatMessage, ChatRequest, Completion, Embeddings, OpenAiClient, Usage};
pub use ratelimit::{LimitKind, RateLimitMessage, RateLimitSnapshot, parse_duration, retry_after};
