//! The policy stack, written once. Every remote call of every stage goes through
//! [`CallPolicy::call`], which applies, outermost first:
//!
//! `metrics → cache → budget → retry → circuit breaker → rate limit (requests + tokens) →
//! concurrency (fixed or adaptive) → timeout → the call`
//!
//! - A cache hit skips everything below it: no budget, no rate-limit debit, no request.
//! - The budget admits a call once; its retries are part of the same call.
//! - Every attempt (retries included) passes the breaker, pays the rate limiter and takes a
//!   concurrency slot; the slot is given back before any backoff sleep, so a sleeping retry
//!   holds nothing another call could use.
//! - The timeout bounds one attempt, connect included.
//!
//! Stages never retry, sleep or count tokens themselves: they describe the call (a
//! [`CallSpec`]) and make one attempt when asked; errors carry a class from the connector.

pub mod adaptive;
pub mod breaker;
pub mod budget;
pub mod cache;
pub mod items;
pub mod limiter;
pub mod resources;
pub mod stats;
pub mod writes;

pub use adaptive::{Concurrency, Signal};
pub use breaker::{Breaker, BreakerSettings, BreakerState};
pub use budget::{Budget, BudgetSpec};
pub use cache::{CachedAnswer, ResponseCache, cache_key};
pub use limiter::{Dimension, LimitSettings, RateLimiter};
pub use resources::{
    LimitSpec, OutputTokens, Price, ProviderSpec, Resources, ResourcesOptions, Secret,
};
pub use stats::{CallReport, CallStats, PlanReport};
pub use writes::write_with_retries;

use crate::error::{ErrorClass, StageError};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::time::Instant;

/// Tokens as billed (vendor-neutral).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Every prompt token, cached ones included.
    pub input: u64,
    pub output: u64,
    /// Prompt tokens read from the provider's prompt cache.
    pub cached_input: u64,
    /// Prompt tokens written to the provider's prompt cache.
    pub cache_write: u64,
}

impl TokenUsage {
    pub fn total(&self) -> u64 {
        self.input + self.output
    }

    fn add(&mut self, other: &TokenUsage) {
        self.input += other.input;
        self.output += other.output;
        self.cached_input += other.cached_input;
        self.cache_write += other.cache_write;
    }
}

/// Rate-limit state a provider reported (per minute), vendor-neutral.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerLimits {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens: Option<Duration>,
}

impl ServerLimits {
    pub fn is_empty(&self) -> bool {
        *self == ServerLimits::default()
    }

    /// Which dimension is spent, and when it comes back.
    fn exhausted(&self) -> (Option<Dimension>, Option<Duration>) {
        if self.remaining_tokens == Some(0) {
            (Some(Dimension::Tokens), self.reset_tokens)
        } else if self.remaining_requests == Some(0) {
            (Some(Dimension::Requests), self.reset_requests)
        } else {
            (None, None)
        }
    }
}

/// What a stage says about one call before it is made.
#[derive(Clone, Debug, Default)]
pub struct CallSpec {
    /// Hash of everything that determines the answer (see [`cache_key`]); `None` = never cached.
    pub cache_key: Option<String>,
    /// Prompt tokens, counted with a tokenizer.
    pub input_tokens: u64,
    /// The `max_tokens` the request asks for.
    pub max_output_tokens: u64,
}

impl CallSpec {
    /// The most this call can be billed: the whole prompt and all of `max_tokens`.
    pub fn worst_case(&self) -> TokenUsage {
        TokenUsage {
            input: self.input_tokens,
            output: self.max_output_tokens,
            ..Default::default()
        }
    }
}

/// One successful attempt.
#[derive(Debug)]
pub struct Answer<T> {
    pub value: T,
    pub usage: TokenUsage,
    pub server: ServerLimits,
}

/// One failed attempt.
#[derive(Debug)]
pub struct Failed {
    pub error: StageError,
    /// HTTP status, when there was a response.
    pub status: Option<u16>,
    /// Boxed: rarely set, and keeps `Result<_, Failed>` small.
    pub server: Box<ServerLimits>,
}

impl Failed {
    pub fn new(error: StageError, status: Option<u16>) -> Failed {
        Failed {
            error,
            status,
            server: Box::default(),
        }
    }
}

/// The outcome of a call that did not fail.
#[derive(Debug)]
pub struct Called<T> {
    pub value: T,
    pub from_cache: bool,
    /// Set when the stage's `accept` refused the answer (it was not cached).
    pub rejected: Option<String>,
    pub usage: TokenUsage,
}

/// Retry settings of one provider.
#[derive(Clone, Debug, PartialEq)]
pub struct RetrySettings {
    /// Attempts per call for errors (5xx, timeouts, connection, malformed answers).
    pub max_attempts: u32,
    /// Attempts per call answered 429 (the limiter slows down; these rarely run out).
    pub max_rate_limited_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 6,
            max_rate_limited_attempts: 30,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetrySettings {
    /// Exponential backoff with full jitter (a uniform draw below the exponential cap), or the
    /// server's retry-after (plus up to 10 % so that callers told the same moment spread out).
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait + wait.mul_f64(0.1 * fastrand::f64());
        }
        let cap = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_delay);
        cap.mul_f64(fastrand::f64())
    }
}

/// Everything one stage needs to call one provider: shared limiter, breaker, cache, budget,
/// and its own counters.
#[derive(Clone, Debug)]
pub struct CallPolicy {
    pub provider: String,
    limiter: Arc<RateLimiter>,
    concurrency: Arc<Concurrency>,
    breaker: Arc<Breaker>,
    cache: Option<Arc<ResponseCache>>,
    read_cache: bool,
    budget: Arc<Budget>,
    stats: Arc<CallStats>,
    retry: RetrySettings,
    timeout: Duration,
    price: Option<Price>,
}

impl CallPolicy {
    /// Prices calls (per million tokens); without one, cost is reported as $0.
    pub fn with_price(mut self, price: Option<Price>) -> CallPolicy {
        self.price = price;
        self
    }

    pub fn price(&self) -> Option<Price> {
        self.price
    }

    pub fn stats(&self) -> &Arc<CallStats> {
        &self.stats
    }

    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }

    pub fn concurrency(&self) -> &Arc<Concurrency> {
        &self.concurrency
    }

    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    fn cost(&self, usage: &TokenUsage) -> f64 {
        self.price.map_or(0.0, |p| p.cost(usage))
    }

    fn cached(&self, key: &str) -> Option<CachedAnswer> {
        let cache = self.cache.as_ref()?;
        match cache.get(key) {
            Ok(hit) => hit,
            Err(e) => {
                // A broken cache costs money, not correctness: call instead.
                tracing::warn!("{e}; calling the provider instead");
                None
            }
        }
    }

    /// `pipe plan`: counts what this call would cost, without sending it.
    pub fn plan(&self, spec: &CallSpec) {
        let s = &self.stats;
        s.planned_calls.fetch_add(1, Relaxed);
        if self.read_cache
            && let Some(key) = &spec.cache_key
            && self.cached(key).is_some()
        {
            s.planned_cached.fetch_add(1, Relaxed);
            return;
        }
        s.planned_input_tokens.fetch_add(spec.input_tokens, Relaxed);
        s.planned_max_output_tokens
            .fetch_add(spec.max_output_tokens, Relaxed);
        s.planned_nano_usd
            .fetch_add(stats::to_nano(self.cost(&spec.worst_case())), Relaxed);
    }

    /// Makes one call through the whole stack. `attempt` makes one request; `accept` checks
    /// an answer (a refused answer is returned with `rejected` set and is not cached).
    pub async fn call<T, F, Fut>(
        &self,
        spec: &CallSpec,
        attempt: F,
        accept: impl Fn(&T) -> Result<(), String>,
    ) -> Result<Called<T>, StageError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Answer<T>, Failed>>,
    {
        self.stats.calls.fetch_add(1, Relaxed);
        // Cache.
        if let Some(key) = &spec.cache_key
            && self.cache.is_some()
        {
            if self.read_cache
                && let Some(hit) = self.cached(key)
                && let Ok(value) = serde_json::from_value::<T>(hit.value)
                && accept(&value).is_ok()
            {
                self.stats.cache_hits.fetch_add(1, Relaxed);
                self.stats
                    .saved_nano_usd
                    .fetch_add(stats::to_nano(self.cost(&hit.usage)), Relaxed);
                return Ok(Called {
                    value,
                    from_cache: true,
                    rejected: None,
                    usage: hit.usage,
                });
            }
            self.stats.cache_misses.fetch_add(1, Relaxed);
        }
        // Budget.
        let worst = spec.worst_case();
        let admission = self
            .budget
            .admit(self.cost(&worst), worst.total())
            .map_err(|reason| {
                self.stats.over_budget.fetch_add(1, Relaxed);
                StageError::record(format!("not sent: {reason}"))
            })?;
        // Retry and everything below it.
        let mut spent = TokenUsage::default();
        let result = self.attempts(spec, attempt, &mut spent).await;
        let cost = self.cost(&spent);
        self.budget.settle(admission, cost, spent.total());
        let s = &self.stats;
        s.input_tokens.fetch_add(spent.input, Relaxed);
        s.output_tokens.fetch_add(spent.output, Relaxed);
        s.cached_input_tokens.fetch_add(spent.cached_input, Relaxed);
        s.cache_write_tokens.fetch_add(spent.cache_write, Relaxed);
        s.cost_nano_usd.fetch_add(stats::to_nano(cost), Relaxed);
        let answer = result?;
        let rejected = accept(&answer.value).err();
        if rejected.is_none()
            && let (Some(key), Some(cache)) = (&spec.cache_key, &self.cache)
        {
            let entry = serde_json::to_value(&answer.value).map(|value| CachedAnswer {
                value,
                usage: answer.usage,
            });
            match entry {
                Ok(entry) => {
                    if let Err(e) = cache.put(key, &entry) {
                        tracing::warn!("{e}");
                    }
                }
                Err(e) => tracing::warn!("answer not cached: {e}"),
            }
        }
        Ok(Called {
            value: answer.value,
            from_cache: false,
            rejected,
            usage: answer.usage,
        })
    }

    /// The retry loop: breaker → rate limit → concurrency → timeout → attempt, again while
    /// the error is retryable and attempts remain.
    async fn attempts<T, F, Fut>(
        &self,
        spec: &CallSpec,
        attempt: F,
        spent: &mut TokenUsage,
    ) -> Result<Answer<T>, StageError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Answer<T>, Failed>>,
    {
        let s = &self.stats;
        let (mut errors, mut refusals) = (0u32, 0u32);
        let debit = spec.input_tokens + spec.max_output_tokens;
        loop {
            let pass = self.breaker.pass().await.map_err(|reason| {
                StageError::run(format!(
                    "not sent: provider `{}` stopped: {reason}",
                    self.provider
                ))
            })?;
            let reservation = self.limiter.acquire(debit).await;
            let slot = self.concurrency.acquire().await;
            s.attempts.fetch_add(1, Relaxed);
            s.in_flight.fetch_add(1, Relaxed);
            let started = Instant::now();
            let outcome = tokio::time::timeout(self.timeout, attempt()).await;
            let rtt = started.elapsed();
            s.in_flight.fetch_sub(1, Relaxed);
            let (failed, timed_out) = match outcome {
                Ok(Ok(answer)) => {
                    self.concurrency.record(rtt, Signal::Answered);
                    drop(slot);
                    self.breaker.succeeded(pass);
                    self.limiter.observe(&reservation, &answer.server);
                    let output = if self.limiter.reserves_max_tokens() {
                        spec.max_output_tokens
                    } else {
                        answer.usage.output
                    };
                    self.limiter
                        .reconcile(&reservation, answer.usage.input + output);
                    s.observe_latency(rtt);
                    spent.add(&answer.usage);
                    return Ok(answer);
                }
                Ok(Err(failed)) => (failed, false),
                Err(_elapsed) => {
                    s.timeouts.fetch_add(1, Relaxed);
                    let failed = Failed::new(
                        StageError::retryable(
                            format!("no answer within the {:?} timeout", self.timeout),
                            None,
                        ),
                        None,
                    );
                    (failed, true)
                }
            };
            s.failed_attempts.fetch_add(1, Relaxed);
            self.limiter.observe(&reservation, &failed.server);
            let rate_limited = failed.status == Some(429);
            let overloaded = matches!(failed.status, Some(503 | 529)) || timed_out;
            if rate_limited {
                s.rate_limited.fetch_add(1, Relaxed);
                // A refused request was not counted by the provider.
                self.limiter.reconcile(&reservation, 0);
                self.breaker.reachable(pass);
                self.concurrency.record(rtt, Signal::BackPressure);
            } else if overloaded {
                self.breaker.failed(pass);
                self.concurrency.record(rtt, Signal::BackPressure);
            } else if failed.error.class == ErrorClass::Retryable {
                self.breaker.failed(pass);
                self.concurrency.record(rtt, Signal::Answered);
            } else if failed.error.class == ErrorClass::Run {
                self.breaker.halt(&failed.error.message);
                self.breaker.neutral(pass);
            } else {
                // The provider is fine; this request is not.
                self.breaker.reachable(pass);
                self.concurrency.record(rtt, Signal::Answered);
            }
            // Given back only now, after the controller has seen the outcome (see `record`),
            // and before any backoff sleep.
            drop(slot);
            let error = failed.error;
            if error.class != ErrorClass::Retryable {
                return Err(error);
            }
            let retry_after = error.retry_after.map(Duration::from_secs_f64);
            let (tries, allowed, wait) = if rate_limited {
                refusals += 1;
                let (which, reset) = failed.server.exhausted();
                let wait = retry_after.or(reset);
                if !failed.server.is_empty() {
                    // The account's limit spoke: everyone waits, not just this call; this
                    // call then queues in the limiter like the rest.
                    self.limiter
                        .pause(wait.unwrap_or(Duration::from_secs(1)), which);
                    (refusals, self.retry.max_rate_limited_attempts, None)
                } else {
                    // No account state: overload (hidden concurrency), this call backs off.
                    let delay = self.retry.delay(refusals, wait);
                    (refusals, self.retry.max_rate_limited_attempts, Some(delay))
                }
            } else {
                errors += 1;
                let delay = self.retry.delay(errors, retry_after);
                (errors, self.retry.max_attempts, Some(delay))
            };
            if tries >= allowed {
                let attempts = errors + refusals;
                return Err(StageError::record(format!(
                    "gave up after {attempts} attempts: {}",
                    error.message
                )));
            }
            s.retries.fetch_add(1, Relaxed);
            if let Some(delay) = wait {
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
