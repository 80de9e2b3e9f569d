//! Simulator configuration.

use serde::{Deserialize, Serialize};

use crate::content::Encoding;

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
    /// The window the `x-ratelimit-*` headers describe, in seconds of refill, when it is not
    /// the one enforced: OpenAI's and Anthropic's headers describe their whole minute (60)
    /// and both say a limit may be enforced over a shorter window (`burst_seconds`). The
    /// headers then report a bucket of this size, debited alike. `None` = they describe
    /// `burst_seconds`.
    pub headers_window_seconds: Option<f64>,
    /// Whether responses carry the `x-ratelimit-*` (`anthropic-ratelimit-*`) headers. Default
    /// true; many OpenAI-compatible servers and gateways send none, and their 429 says in
    /// its message alone which limit refused the call.
    pub rate_limit_headers: bool,
    /// Whether a rate-limit 429 carries `retry-after` (and `retry-after-ms`). Default true;
    /// OpenAI's often say how long to wait only in the message ("Please try again in 1.2s").
    pub retry_after_header: bool,
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
    /// Text-mode answer length as a fraction of `max_tokens`. `None` = a
    /// short sentence (the original behaviour).
    pub answer_length: Option<AnswerLength>,
    /// Slow periodic change of latency (the provider's day). `None` = none.
    pub latency_drift: Option<LatencyDrift>,
    /// Phases by time since start or `/_sim/reset`, each replacing some of
    /// the base values from its `at_s` on. Must be in ascending `at_s` order.
    pub schedule: Vec<Phase>,
    /// Status of a request refused by `hidden_concurrency`: 429 (default) or
    /// 503 (Anthropic endpoint: 529).
    pub overload_status: u16,
    /// Latency multiplied by `1 + latency_load_factor * in_flight / hidden_concurrency`.
    pub latency_load_factor: f64,
    /// How the TPM bucket counts a chat request.
    pub token_counting: TokenCounting,
    /// Model context window (prompt + max_tokens). `None` = unlimited.
    pub context_window: Option<u64>,
    /// Tokens that may be billed in total; afterwards every request gets
    /// `insufficient_quota`. `None` = unlimited.
    pub quota_tokens: Option<u64>,
    /// Probability (0..1) of a refusal (200 OK, `refusal` set, content null).
    pub fault_refusal: f64,
    /// Probability (0..1) of a wrong JSON answer in JSON mode.
    pub fault_wrong_json: f64,
    /// Kinds of wrong JSON drawn by `fault_wrong_json`. Default: all.
    pub wrong_json_kinds: Vec<WrongJsonKind>,
    /// Probability (0..1) that a repair turn repeats the previous answer's mistake.
    pub repeat_mistake: f64,
    /// OpenAI automatic prompt caching for prompts of 1024 tokens or more.
    pub openai_prompt_cache: bool,
    /// Encoding of OpenAI chat token counts (prompt, answer, limits).
    pub tokenizer: Tokenizer,
    /// Whether chat takes `response_format: json_schema` (default true). False answers it
    /// with OpenAI's 400 for a model without structured outputs (param `response_format`).
    pub structured_output: bool,
}

/// Which encoding OpenAI chat requests are counted in.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Tokenizer {
    /// cl100k_base for every model.
    #[default]
    Cl100kBase,
    /// o200k_base for every model.
    O200kBase,
    /// The model's own encoding, as OpenAI counts it: o200k_base for the
    /// gpt-4o, gpt-4.1, gpt-4.5, gpt-5 and o-series families, cl100k_base
    /// for the others.
    ByModel,
}

impl Tokenizer {
    pub fn encoding_for(self, model: &str) -> Encoding {
        match self {
            Tokenizer::Cl100kBase => Encoding::Cl100kBase,
            Tokenizer::O200kBase => Encoding::O200kBase,
            Tokenizer::ByModel => {
                let mut c = model.chars();
                let o_series =
                    c.next() == Some('o') && c.next().is_some_and(|d| d.is_ascii_digit());
                let o200k = ["gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5"]
                    .iter()
                    .any(|p| model.starts_with(p));
                if o_series || o200k {
                    Encoding::O200kBase
                } else {
                    Encoding::Cl100kBase
                }
            }
        }
    }
}

/// Answer length drawn uniformly in `[min_fraction, max_fraction] * max_tokens`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnswerLength {
    pub min_fraction: f64,
    pub max_fraction: f64,
}

/// Latency multiplied by `1 + amplitude * sin(2 pi t / period_s)`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LatencyDrift {
    pub period_s: f64,
    pub amplitude: f64,
}

/// One phase of a [`SimConfig::schedule`]. A key that is absent keeps the
/// value in force before this phase; `null` means unlimited (for the
/// optional limits).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub at_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_factor: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub hidden_concurrency: Option<Option<u32>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub rpm: Option<Option<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub tpm: Option<Option<u64>>,
}

/// A key that is present (even as `null`) becomes `Some(value)`; an absent
/// key takes the field default, `None`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// How the TPM bucket counts a chat request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TokenCounting {
    /// Prompt tokens (cl100k) + `max_tokens`.
    #[default]
    Tiktoken,
    /// `max_tokens` + ceil(characters of all message contents / 4), like
    /// OpenAI's limiter.
    OpenaiEstimate,
}

/// One way a JSON answer can be wrong.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum WrongJsonKind {
    /// A required property removed.
    MissingField,
    /// A value of the wrong type (a number as a string, an array as an object...).
    WrongType,
    /// The JSON wrapped in prose and a Markdown fence.
    Prose,
    /// Cut off at `max_tokens` with finish reason `length`.
    Truncated,
}

impl WrongJsonKind {
    pub const ALL: [WrongJsonKind; 4] = [
        WrongJsonKind::MissingField,
        WrongJsonKind::WrongType,
        WrongJsonKind::Prose,
        WrongJsonKind::Truncated,
    ];
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
            headers_window_seconds: None,
            rate_limit_headers: true,
            retry_after_header: true,
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
            answer_length: None,
            latency_drift: None,
            schedule: Vec::new(),
            overload_status: 429,
            latency_load_factor: 0.0,
            token_counting: TokenCounting::Tiktoken,
            context_window: None,
            quota_tokens: None,
            fault_refusal: 0.0,
            fault_wrong_json: 0.0,
            wrong_json_kinds: WrongJsonKind::ALL.to_vec(),
            repeat_mistake: 0.0,
            openai_prompt_cache: true,
            tokenizer: Tokenizer::Cl100kBase,
            structured_output: true,
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
            ("fault_refusal", self.fault_refusal),
            ("fault_wrong_json", self.fault_wrong_json),
            ("repeat_mistake", self.repeat_mistake),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be within 0..=1, got {p}"));
            }
        }
        if !(self.burst_seconds > 0.0 && self.burst_seconds <= 60.0) {
            return Err("burst_seconds must be within (0, 60]".into());
        }
        if self
            .headers_window_seconds
            .is_some_and(|w| !(w > 0.0 && w <= 60.0))
        {
            return Err("headers_window_seconds must be within (0, 60]".into());
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
        if let Some(a) = self.answer_length
            && !(0.0 <= a.min_fraction && a.min_fraction <= a.max_fraction && a.max_fraction <= 1.0)
        {
            return Err("answer_length needs 0 <= min_fraction <= max_fraction <= 1".into());
        }
        if let Some(d) = self.latency_drift
            && !(d.period_s > 0.0 && d.period_s.is_finite() && (0.0..=1.0).contains(&d.amplitude))
        {
            return Err("latency_drift needs period_s > 0 and amplitude within 0..=1".into());
        }
        let mut previous = 0.0;
        for (i, p) in self.schedule.iter().enumerate() {
            if !(p.at_s >= previous && p.at_s.is_finite()) {
                return Err(format!(
                    "schedule[{i}].at_s must be >= 0 and in ascending order, got {}",
                    p.at_s
                ));
            }
            previous = p.at_s;
            if let Some(f) = p.latency_factor
                && !(f >= 0.0 && f.is_finite())
            {
                return Err(format!("schedule[{i}].latency_factor must be >= 0"));
            }
            if p.rpm == Some(Some(0)) || p.tpm == Some(Some(0)) {
                return Err(format!(
                    "schedule[{i}]: rpm/tpm must be > 0 (use null for unlimited)"
                ));
            }
        }
        if !matches!(self.overload_status, 429 | 503) {
            return Err(format!(
                "overload_status must be 429 or 503, got {}",
                self.overload_status
            ));
        }
        if !(self.latency_load_factor >= 0.0 && self.latency_load_factor.is_finite()) {
            return Err("latency_load_factor must be >= 0".into());
        }
        if self.context_window == Some(0) {
            return Err("context_window must be > 0 (use null for unlimited)".into());
        }
        if self.fault_wrong_json > 0.0 && self.wrong_json_kinds.is_empty() {
            return Err("wrong_json_kinds must not be empty when fault_wrong_json > 0".into());
        }
        Ok(())
    }
}

/// The schedule-dependent values in force at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effective {
    pub latency_factor: f64,
    pub hidden_concurrency: Option<u32>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

impl SimConfig {
    /// Base values overridden by every phase whose `at_s` is at or before
    /// `elapsed_s` (seconds since start or reset), in order.
    pub fn effective(&self, elapsed_s: f64) -> Effective {
        let mut e = Effective {
            latency_factor: 1.0,
            hidden_concurrency: self.hidden_concurrency,
            rpm: self.rpm,
            tpm: self.tpm,
        };
        for p in self.schedule.iter().take_while(|p| p.at_s <= elapsed_s) {
            if let Some(f) = p.latency_factor {
                e.latency_factor = f;
            }
            if let Some(h) = p.hidden_concurrency {
                e.hidden_concurrency = h;
            }
            if let Some(r) = p.rpm {
                e.rpm = r;
            }
            if let Some(t) = p.tpm {
                e.tpm = t;
            }
        }
        e
    }

    /// Latency multiplier of the provider's day at `elapsed_s`.
    pub fn drift_factor(&self, elapsed_s: f64) -> f64 {
        match self.latency_drift {
            Some(d) => {
                1.0 + d.amplitude * (2.0 * std::f64::consts::PI * elapsed_s / d.period_s).sin()
            }
            None => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_keys_absent_null_and_set_differ() {
        let cfg: SimConfig = serde_json::from_str(
            r#"{"rpm": 100, "hidden_concurrency": 8, "schedule": [
                {"at_s": 10, "latency_factor": 3},
                {"at_s": 20, "hidden_concurrency": 2, "rpm": null}
            ]}"#,
        )
        .expect("config");
        assert_eq!(cfg.schedule[0].rpm, None);
        assert_eq!(cfg.schedule[1].rpm, Some(None));
        let at = |t| cfg.effective(t);
        assert_eq!(at(0.0).latency_factor, 1.0);
        assert_eq!(at(10.0).latency_factor, 3.0);
        assert_eq!(at(15.0).hidden_concurrency, Some(8));
        assert_eq!(at(15.0).rpm, Some(100));
        assert_eq!(at(25.0).hidden_concurrency, Some(2));
        assert_eq!(at(25.0).rpm, None);
        assert_eq!(at(25.0).latency_factor, 3.0);
        // Round trip keeps absent keys absent and nulls null.
        let back: SimConfig =
            serde_json::from_value(serde_json::to_value(&cfg).expect("ser")).expect("de");
        assert_eq!(back, cfg);
    }

    #[test]
    fn tokenizer_by_model_follows_openais_families() {
        let t = Tokenizer::ByModel;
        for m in [
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-5-nano",
            "o3-mini",
            "o1",
            "chatgpt-4o-latest",
        ] {
            assert_eq!(t.encoding_for(m), Encoding::O200kBase, "{m}");
        }
        for m in [
            "gpt-4",
            "gpt-4-turbo",
            "gpt-3.5-turbo",
            "text-embedding-3-small",
            "local",
        ] {
            assert_eq!(t.encoding_for(m), Encoding::Cl100kBase, "{m}");
        }
        assert_eq!(
            Tokenizer::Cl100kBase.encoding_for("gpt-4o"),
            Encoding::Cl100kBase
        );
    }

    #[test]
    fn validation_names_the_field() {
        let bad: SimConfig =
            serde_json::from_str(r#"{"schedule": [{"at_s": 5}, {"at_s": 1}]}"#).expect("parse");
        assert!(bad.validate().unwrap_err().contains("schedule[1].at_s"));
        let bad = SimConfig {
            overload_status: 500,
            ..SimConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("overload_status"));
        assert!(SimConfig::default().validate().is_ok());
    }
}
