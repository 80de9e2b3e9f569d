//! `resources.limits` and `resources.providers` as written in YAML, and the shared runtime
//! objects built from them once per run (one limiter per limit, one breaker per provider, one
//! response cache, one budget), handed to stages through their `BuildContext`.

use super::adaptive::{
    AdaptiveSettings, Concurrency, DEFAULT_INITIAL_CONCURRENCY, DEFAULT_MIN_CONCURRENCY,
};
use super::breaker::{Breaker, BreakerSettings};
use super::budget::{Budget, BudgetSpec};
use super::cache::ResponseCache;
use super::flight::Flights;
use super::limiter::{LimitSettings, RateLimiter};
use super::stats::CallStats;
use super::{AttemptTimeout, CallPolicy, RetrySettings, TokenUsage};
use crate::error::StageError;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Concurrency an adaptive limit may grow to when no `max_concurrency` is given.
pub const DEFAULT_ADAPTIVE_MAX: usize = 256;

/// What the provider's token limit counts for the output of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputTokens {
    /// `max_tokens`, counted when the request arrives (OpenAI's rule).
    #[default]
    MaxTokens,
    /// The output actually generated (reconciled after the answer).
    Generated,
}

/// A named rate limit: one provider account (or one deployment), shared by every provider
/// entry — and so every stage — that names it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute (prompt + output, see `output_tokens`).
    pub tpm: Option<u64>,
    /// Requests per day.
    pub rpd: Option<u64>,
    /// Tokens per day.
    pub tpd: Option<u64>,
    /// Most calls in flight at once (the cap for adaptive concurrency; default: no cap, or
    /// 256 when adaptive).
    pub max_concurrency: Option<usize>,
    /// Find the concurrency the provider sustains (grows while calls wait for a slot, backs off
    /// on overload: 429 without account state, 503/529, timeouts). Implied when neither `rpm`
    /// nor `tpm` is given.
    pub adaptive: Option<bool>,
    /// Adaptive only: the floor, never undercut without an overload signal (default 4).
    pub min_concurrency: Option<usize>,
    /// Adaptive only: where the limit starts (default 16, or `min_concurrency` if higher).
    pub initial_concurrency: Option<usize>,
    /// Seconds of the per-minute limit that may be spent back to back (default 1: providers
    /// enforce limits over short windows, not per whole minute).
    pub burst_seconds: Option<f64>,
    /// What the token limit counts for output (default `max_tokens`, as OpenAI does).
    pub output_tokens: Option<OutputTokens>,
}

/// USD per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Prompt tokens read from the provider's cache (default: the input price).
    pub cached_input: Option<f64>,
    /// Prompt tokens written to the provider's cache (default: the input price).
    pub cache_write: Option<f64>,
}

impl Price {
    pub fn cost(&self, usage: &TokenUsage) -> f64 {
        let cached = usage.cached_input.min(usage.input);
        let written = usage.cache_write.min(usage.input - cached);
        let plain = usage.input - cached - written;
        (plain as f64 * self.input
            + cached as f64 * self.cached_input.unwrap_or(self.input)
            + written as f64 * self.cache_write.unwrap_or(self.input)
            + usage.output as f64 * self.output)
            / 1e6
    }

    /// The most `usage` can cost when any of its prompt may be written to the provider's
    /// cache: every prompt token at the dearer of the input and cache-write prices.
    pub fn worst_cost(&self, usage: &TokenUsage) -> f64 {
        let input = self.input.max(self.cache_write.unwrap_or(self.input));
        (usage.input as f64 * input + usage.output as f64 * self.output) / 1e6
    }
}

/// A secret from YAML (usually `${OPENAI_API_KEY}`): never shown by `Debug` or in reports.
#[derive(Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A circuit breaker's settings.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    /// Consecutive failed attempts (5xx, timeouts, connection errors) that open it (default 10).
    pub failures: Option<u32>,
    /// Seconds it stays open before a probe (default 5; doubles while probes fail, up to 120).
    pub cooldown_s: Option<f64>,
}

/// A model endpoint: which API, which model, which account limit.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Wire protocol: `openai` (OpenAI and compatible servers) or `anthropic`.
    pub kind: String,
    pub model: String,
    /// API base up to the version (default: the vendor's public API).
    pub base_url: Option<String>,
    /// Usually `${OPENAI_API_KEY}` (default: the OPENAI_API_KEY / ANTHROPIC_API_KEY
    /// environment variable); never logged.
    pub api_key: Option<Secret>,
    /// A name from `resources.limits` (default: a limit of its own, adaptive).
    pub limit: Option<String>,
    /// Seconds one attempt may take, connect included (default: 60 s + 40 ms per `max_tokens`
    /// the call asks for, at least 120 s; 380 s for an 8,000-token answer).
    pub timeout_s: Option<f64>,
    /// Attempts per call on errors such as 5xx and timeouts (default 6).
    pub max_attempts: Option<u32>,
    /// First backoff step in seconds (default 0.5; doubles per retry, full jitter).
    pub backoff_s: Option<f64>,
    /// Longest backoff in seconds (default 30).
    pub max_backoff_s: Option<f64>,
    /// USD per million tokens; overrides the built-in table.
    pub pricing: Option<Price>,
    pub breaker: Option<BreakerSpec>,
    /// Tokens (prompt + max_tokens) the model's context holds (default: known for OpenAI's
    /// and Anthropic's models); a call needing more is dead-lettered without being sent.
    pub context_window: Option<u64>,
    /// Seconds a provider may fail every attempt (unreachable, timing out, overloaded) before
    /// the run ends with that error (default 300).
    pub unreachable_after_s: Option<f64>,
}

impl ProviderSpec {
    pub fn retry_settings(&self) -> RetrySettings {
        let d = RetrySettings::default();
        RetrySettings {
            max_attempts: self.max_attempts.unwrap_or(d.max_attempts).max(1),
            max_rate_limited_attempts: d.max_rate_limited_attempts,
            base_delay: self
                .backoff_s
                .map(Duration::from_secs_f64)
                .unwrap_or(d.base_delay),
            max_delay: self
                .max_backoff_s
                .map(Duration::from_secs_f64)
                .unwrap_or(d.max_delay),
        }
    }

    pub fn timeout(&self) -> AttemptTimeout {
        AttemptTimeout::from_seconds(self.timeout_s)
    }

    pub fn unreachable_after(&self) -> Duration {
        self.unreachable_after_s
            .map(Duration::from_secs_f64)
            .unwrap_or(BreakerSettings::default().unreachable_after)
    }
}

/// Run-wide switches for the shared resources.
#[derive(Clone, Debug, Default)]
pub struct ResourcesOptions {
    /// `.pipe/cache.sqlite`; `None` = no response cache.
    pub cache_path: Option<PathBuf>,
    /// `--no-cache`: do not read cached answers (fresh answers are still stored).
    pub no_cache: bool,
    pub budget: BudgetSpec,
    /// The run's stop token: a spent budget stops the run.
    pub stop: CancellationToken,
}

struct LimitRuntime {
    limiter: Arc<RateLimiter>,
    concurrency: Arc<Concurrency>,
}

struct ProviderRuntime {
    spec: ProviderSpec,
    limit: String,
    breaker: Arc<Breaker>,
}

/// The shared objects of one run.
pub struct Resources {
    limits: BTreeMap<String, LimitRuntime>,
    providers: BTreeMap<String, ProviderRuntime>,
    cache: Option<Arc<ResponseCache>>,
    read_cache: bool,
    flights: Arc<Flights>,
    budget: Arc<Budget>,
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resources")
            .field("limits", &self.limits.keys().collect::<Vec<_>>())
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn limit_settings(spec: &LimitSpec) -> LimitSettings {
    LimitSettings {
        rpm: spec.rpm,
        tpm: spec.tpm,
        rpd: spec.rpd,
        tpd: spec.tpd,
        burst_seconds: spec.burst_seconds.unwrap_or(1.0),
        reserve_max_tokens: spec.output_tokens.unwrap_or_default() == OutputTokens::MaxTokens,
        first_day_reset: None,
    }
}

impl LimitSpec {
    /// `adaptive`, or implied by knowing neither `rpm` nor `tpm`.
    pub fn is_adaptive(&self) -> bool {
        self.adaptive
            .unwrap_or(self.rpm.is_none() && self.tpm.is_none())
    }
}

fn concurrency_for(spec: &LimitSpec) -> Concurrency {
    match (spec.is_adaptive(), spec.max_concurrency) {
        (true, max) => {
            let min = spec.min_concurrency.unwrap_or(DEFAULT_MIN_CONCURRENCY);
            Concurrency::adaptive(AdaptiveSettings {
                min,
                initial: spec
                    .initial_concurrency
                    .unwrap_or(DEFAULT_INITIAL_CONCURRENCY.max(min)),
                max: max.unwrap_or(DEFAULT_ADAPTIVE_MAX),
            })
        }
        (false, Some(max)) => Concurrency::fixed(max),
        (false, None) => Concurrency::unlimited(),
    }
}

/// Scouts an unproven provider on this limit sends: as many as an adaptive limit is told to
/// start with, when that is more than the default (see `breaker`).
fn scouts_for(spec: &LimitSpec, default: u32) -> u32 {
    match spec.initial_concurrency {
        Some(told) if spec.is_adaptive() => default.max(u32::try_from(told).unwrap_or(u32::MAX)),
        _ => default,
    }
}

impl Resources {
    /// Builds the shared objects. Names are assumed checked by the config loader.
    pub fn new(
        limits: &BTreeMap<String, LimitSpec>,
        providers: &BTreeMap<String, ProviderSpec>,
        options: ResourcesOptions,
    ) -> Result<Resources, String> {
        let mut built: BTreeMap<String, LimitRuntime> = limits
            .iter()
            .map(|(name, spec)| {
                let runtime = LimitRuntime {
                    limiter: Arc::new(RateLimiter::new(name, limit_settings(spec))),
                    concurrency: Arc::new(concurrency_for(spec)),
                };
                (name.clone(), runtime)
            })
            .collect();
        let mut provider_runtimes = BTreeMap::new();
        for (name, spec) in providers {
            let limit = match &spec.limit {
                Some(limit) => limit.clone(),
                None => {
                    // A limit of its own, learnt from headers and found adaptively.
                    let own = format!("provider:{name}");
                    let open = LimitSpec::default();
                    built.insert(
                        own.clone(),
                        LimitRuntime {
                            limiter: Arc::new(RateLimiter::new(&own, limit_settings(&open))),
                            concurrency: Arc::new(concurrency_for(&open)),
                        },
                    );
                    own
                }
            };
            if !built.contains_key(&limit) {
                return Err(format!(
                    "provider `{name}` names limit `{limit}`, which is not in `resources.limits`"
                ));
            }
            let b = spec.breaker.clone();
            let defaults = BreakerSettings::default();
            let settings = BreakerSettings {
                failures: b
                    .as_ref()
                    .and_then(|b| b.failures)
                    .unwrap_or(defaults.failures)
                    .max(1),
                cooldown: b
                    .as_ref()
                    .and_then(|b| b.cooldown_s)
                    .map(Duration::from_secs_f64)
                    .unwrap_or(defaults.cooldown),
                max_cooldown: defaults.max_cooldown,
                unreachable_after: spec.unreachable_after(),
                scouts: limits
                    .get(&limit)
                    .map_or(defaults.scouts, |l| scouts_for(l, defaults.scouts)),
            };
            provider_runtimes.insert(
                name.clone(),
                ProviderRuntime {
                    spec: spec.clone(),
                    limit,
                    breaker: Arc::new(Breaker::new(name, settings)),
                },
            );
        }
        let cache = match &options.cache_path {
            Some(path) => Some(Arc::new(ResponseCache::open(path)?)),
            None => None,
        };
        Ok(Resources {
            limits: built,
            providers: provider_runtimes,
            cache,
            read_cache: !options.no_cache,
            flights: Arc::default(),
            budget: Arc::new(Budget::new(options.budget, options.stop)),
        })
    }

    /// Nothing declared (for tests and runs without remote calls).
    pub fn empty() -> Resources {
        Resources {
            limits: BTreeMap::new(),
            providers: BTreeMap::new(),
            cache: None,
            read_cache: true,
            flights: Arc::default(),
            budget: Arc::new(Budget::new(BudgetSpec::default(), CancellationToken::new())),
        }
    }

    pub fn provider_spec(&self, name: &str) -> Option<&ProviderSpec> {
        self.providers.get(name).map(|p| &p.spec)
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    pub fn cache(&self) -> Option<&Arc<ResponseCache>> {
        self.cache.as_ref()
    }

    /// (name, limiter, concurrency) of every limit, for metrics.
    pub fn limits(&self) -> impl Iterator<Item = (&str, &Arc<RateLimiter>, &Arc<Concurrency>)> {
        self.limits
            .iter()
            .map(|(n, l)| (n.as_str(), &l.limiter, &l.concurrency))
    }

    /// The policy a stage uses to call provider `name`, counting into `stats`.
    pub fn policy(&self, name: &str, stats: Arc<CallStats>) -> Result<CallPolicy, StageError> {
        let provider = self.providers.get(name).ok_or_else(|| {
            StageError::run(format!(
                "unknown provider `{name}` (declare it under `resources.providers`)"
            ))
        })?;
        let limit = &self.limits[&provider.limit];
        Ok(CallPolicy {
            provider: name.to_string(),
            kind: provider.spec.kind.clone(),
            limiter: limit.limiter.clone(),
            concurrency: limit.concurrency.clone(),
            breaker: provider.breaker.clone(),
            cache: self.cache.clone(),
            read_cache: self.read_cache,
            flights: self.flights.clone(),
            budget: self.budget.clone(),
            stats,
            retry: provider.spec.retry_settings(),
            timeout: provider.spec.timeout(),
            price: None,
            context_window: provider.spec.context_window,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_splits_cached_and_written_prompt_tokens() {
        let price = Price {
            input: 3.0,
            output: 15.0,
            cached_input: Some(0.3),
            cache_write: Some(3.75),
        };
        let usage = TokenUsage {
            input: 1_000_000,
            output: 100_000,
            cached_input: 500_000,
            cache_write: 250_000,
        };
        let expected = 0.25 * 3.0 + 0.5 * 0.3 + 0.25 * 3.75 + 0.1 * 15.0;
        assert!((price.cost(&usage) - expected).abs() < 1e-9);
        // The worst case: every prompt token written to the cache (3.75 > 3.0).
        let worst = price.worst_cost(&usage);
        assert!((worst - (1.0 * 3.75 + 0.1 * 15.0)).abs() < 1e-9, "{worst}");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("sk-very-secret");
        assert!(!format!("{s:?}").contains("very"));
    }
}
