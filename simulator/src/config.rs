//! Simulator configuration.

use serde::{Deserialize, Serialize};

/// Full configuration of one simulator instance.
///
/// Every field has a default (see [`SimConfig::default`]), so a JSON config
/// file only needs the fields it wants to change. The whole struct can be
/// replaced at runtime with `POST /_sim/config`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Accepted API keys. Empty = any non-empty key is accepted.
    pub api_keys: Vec<String>,
    /// Keys that are always refused with 401 (checked before `api_keys`).
    pub revoked_keys: Vec<String>,
    /// Known model names. Empty = any model name is accepted; otherwise an
    /// unknown model gets a 404 in the vendor's error shape.
    pub models: Vec<String>,
    /// Default embedding dimension (overridden per request by `dimensions`).
    pub embedding_dim: usize,
    /// Requests per minute. `None` = unlimited.
    pub rpm: Option<u64>,
    /// Tokens per minute (prompt + max_tokens pre-accounting). `None` = unlimited.
    pub tpm: Option<u64>,
    /// Short-window burst cap, in seconds of refill: at most
    /// `limit / 60 * burst_seconds` may be admitted back to back.
    /// Default 1.0 (OpenAI-like short windows). 60.0 gives a plain per-minute bucket.
    pub burst_seconds: f64,
    /// Tokens assumed for the completion when a request has no `max_tokens`
    /// (OpenAI pre-accounting). Default 4096.
    pub default_max_tokens: u64,
    /// Hidden concurrency cap: if more requests than this are in flight, the
    /// extra ones get 429 (`retry-after: 1`) without any header advertising it.
    pub hidden_concurrency: Option<u32>,
    /// Median latency of a successful request in ms (lognormal). 0 = no delay.
    pub latency_ms_median: f64,
    /// Lognormal shape parameter (sigma of the underlying normal). Default 0.3.
    pub latency_sigma: f64,
    /// Extra latency per generated output token, in ms. Default 0.
    pub latency_per_output_token_ms: f64,
    /// Probability (0..1) of answering 500 in the vendor's error shape.
    pub fault_500: f64,
    /// Probability (0..1) of a spurious 429 with `retry-after: 1` (consumes nothing).
    pub fault_429: f64,
    /// Probability (0..1) of hanging: the connection is held for `hang_seconds`
    /// (then a 504 is sent if the client is still there).
    pub fault_hang: f64,
    /// Probability (0..1) of a malformed 200 OK. For chat/messages in JSON
    /// mode the message content is truncated (invalid) JSON inside a valid
    /// envelope; otherwise (text mode, embeddings) the body itself is cut in
    /// half and is not valid JSON.
    pub fault_malformed: f64,
    /// How long a hanging request holds the connection. Default 300 s.
    pub hang_seconds: u64,
    /// Anthropic prompt-cache TTL in seconds (refreshed on each read). Default 300.
    pub cache_ttl_seconds: u64,
    /// RNG seed for latency and fault draws. `None` = random seed.
    pub seed: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            revoked_keys: Vec::new(),
            models: Vec::new(),
            embedding_dim: 384,
            rpm: None,
            tpm: None,
            burst_seconds: 1.0,
            default_max_tokens: 4096,
            hidden_concurrency: None,
            latency_ms_median: 0.0,
            latency_sigma: 0.3,
            latency_per_output_token_ms: 0.0,
            fault_500: 0.0,
            fault_429: 0.0,
            fault_hang: 0.0,
            fault_malformed: 0.0,
            hang_seconds: 300,
            cache_ttl_seconds: 300,
            seed: None,
        }
    }
}

impl SimConfig {
    /// Checks value ranges; returns a human-readable problem if any.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("fault_500", self.fault_500),
            ("fault_429", self.fault_429),
            ("fault_hang", self.fault_hang),
            ("fault_malformed", self.fault_malformed),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be within 0..=1, got {p}"));
            }
        }
        if !(self.burst_seconds > 0.0 && self.burst_seconds <= 60.0) {
            return Err("burst_seconds must be within (0, 60]".into());
        }
        if !(self.latency_ms_median >= 0.0 && self.latency_ms_median.is_finite()) {
            return Err("latency_ms_median must be >= 0".into());
        }
        if !(self.latency_sigma >= 0.0 && self.latency_sigma.is_finite()) {
            return Err("latency_sigma must be >= 0".into());
        }
        if !(self.latency_per_output_token_ms >= 0.0
            && self.latency_per_output_token_ms.is_finite())
        {
            return Err("latency_per_output_token_ms must be >= 0".into());
        }
        if self.embedding_dim == 0 || self.embedding_dim > 8192 {
            return Err("embedding_dim must be within 1..=8192".into());
        }
        if self.rpm == Some(0) || self.tpm == Some(0) {
            return Err("rpm/tpm must be > 0 (use null for unlimited)".into());
        }
        Ok(())
    }
}
