//! The policy stack, written once. Every remote call of every stage goes through
//! [`CallPolicy::call`], which applies, outermost first:
//!
//! `metrics → cache (+ single flight) → budget → retry → circuit breaker → concurrency (fixed
//! or adaptive) → rate limit (requests + tokens) → timeout → the call`
//!
//! - A cache hit skips everything below it: no budget, no rate-limit debit, no request. An
//!   identical call already in flight is waited for and its answer taken (paid once).
//! - A call that can never be sent (larger than the whole token limit or the model's context)
//!   is a record error before anything is reserved.
//! - The budget admits a call once; its retries are part of the same call. Every attempt the
//!   provider bills counts — refusals, unusable answers, and (estimated at their worst case)
//!   timeouts after sending.
//! - Every attempt (retries included) passes the breaker, takes a concurrency slot, then pays
//!   the rate limiter — so the debit is taken when the request really goes out, not while it
//!   still waits for a slot. The slot is given back before any backoff sleep, so a sleeping
//!   retry holds nothing another call could use.
//! - The timeout bounds one attempt, connect included; by default it grows with the answer
//!   length the call asks for (`max_tokens`), as generation time does.
//! - Everything a call holds (budget reservation, breaker probe, slot, rate-limit ticket,
//!   single-flight leadership) is released when the call's future is dropped.
//!
//! Stages never retry, sleep or count tokens themselves: they describe the call (a
//! [`CallSpec`]) and make one attempt when asked; errors carry a class from the connector.

pub mod adaptive;
pub mod breaker;
pub mod budget;
pub mod cache;
pub mod flight;
pub mod items;
pub mod limiter;
pub mod resources;
pub mod stats;
pub mod writes;

pub use adaptive::{AdaptiveSettings, Concurrency, Signal};
pub use breaker::{Breaker, BreakerSettings, BreakerState};
pub use budget::{Budget, BudgetSpec};
pub use cache::{CachedAnswer, ResponseCache, cache_key};
pub use flight::Flights;
pub use limiter::{Demand, Dimension, LimitSettings, RateLimiter};
pub use resources::{
    LimitSpec, OutputTokens, Price, ProviderSpec, Resources, ResourcesOptions, Secret,
};
pub use stats::{CallReport, CallStats, PlanReport};
pub use writes::write_with_retries;

use crate::error::{ErrorClass, StageError};
use flight::{Flight, Joined};
use limiter::Outcome;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
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

    pub fn add(&mut self, other: &TokenUsage) {
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
    /// The limit the provider said (in a 429's message) refused the call.
    pub refused_by: Option<Dimension>,
    /// What the provider counted the refused call as, in tokens (a 429's message).
    pub requested_tokens: Option<u64>,
}

impl ServerLimits {
    pub fn is_empty(&self) -> bool {
        *self == ServerLimits::default()
    }

    /// Which dimension is spent, and when it comes back.
    fn exhausted(&self) -> (Option<Dimension>, Option<Duration>) {
        if let Some(which) = self.refused_by {
            let reset = match which {
                Dimension::Tokens => self.reset_tokens,
                Dimension::Requests => self.reset_requests,
            };
            (Some(which), reset)
        } else if self.remaining_tokens == Some(0) {
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
    /// Prompt tokens, counted with the model's tokenizer (or estimated, see the stage).
    pub input_tokens: u64,
    /// Characters (Unicode scalar values) of every message's text: what OpenAI's rate limiter
    /// estimates prompts from.
    pub prompt_chars: u64,
    /// The `max_tokens` the request asks for.
    pub max_output_tokens: u64,
}

impl CallSpec {
    /// The most this call can be billed in tokens: the whole prompt and all of `max_tokens`.
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

/// What a failed attempt is billed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Billing {
    /// Nothing (an error before any generation).
    #[default]
    Nothing,
    /// An answer the provider billed but that cannot be used (a refusal, an empty answer).
    Known(TokenUsage),
    /// Billed, by an amount nobody can read (an unreadable 200): counted at its worst case.
    Unknown,
}

/// One failed attempt.
#[derive(Debug)]
pub struct Failed {
    pub error: StageError,
    /// HTTP status, when there was a response.
    pub status: Option<u16>,
    /// Boxed: rarely set, and keeps `Result<_, Failed>` small.
    pub server: Box<ServerLimits>,
    pub billed: Billing,
    /// The provider took the request and closed the connection without an answer: load
    /// shed, an overload signal like a 503.
    pub shed: bool,
}

impl Failed {
    pub fn new(error: StageError, status: Option<u16>) -> Failed {
        Failed {
            error,
            status,
            server: Box::default(),
            billed: Billing::Nothing,
            shed: false,
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
    /// With `rejected`: the call's cache key stays claimed (identical calls keep waiting) until
    /// the stage gives [`CallPolicy::remember`] the answer it finally accepted (a repair) —
    /// or drops this, and they go ahead themselves.
    pub pending: Option<Pending>,
}

/// A refused answer's call, waiting for the stage's accepted answer.
#[derive(Debug)]
pub struct Pending {
    flight: Flight,
    usage: TokenUsage,
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

/// How long one attempt may take before it is abandoned (and retried).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttemptTimeout {
    /// The provider's `timeout_s`: the same for every call.
    Fixed(Duration),
    /// The default: room to generate all the `max_tokens` a call asks for at a slow provider's
    /// pace. A fixed 120 s cut off every 8,000-token extraction from a model writing 50 tokens
    /// a second, retried it into the same wall, and billed each try.
    ForAnswerLength,
}

impl AttemptTimeout {
    /// Queueing, prompt processing and the connection, before the first output token.
    const BEFORE_OUTPUT: Duration = Duration::from_secs(60);
    /// 25 tokens a second: slower than the big models write under load.
    const PER_OUTPUT_TOKEN: Duration = Duration::from_millis(40);
    /// Never less than this by default (a short answer from a queued provider).
    const AT_LEAST: Duration = Duration::from_secs(120);

    pub fn from_seconds(timeout_s: Option<f64>) -> AttemptTimeout {
        timeout_s.map_or(AttemptTimeout::ForAnswerLength, |s| {
            AttemptTimeout::Fixed(Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX))
        })
    }

    pub fn for_call(self, spec: &CallSpec) -> Duration {
        match self {
            AttemptTimeout::Fixed(timeout) => timeout,
            AttemptTimeout::ForAnswerLength => {
                let output = u32::try_from(spec.max_output_tokens).unwrap_or(u32::MAX);
                (Self::BEFORE_OUTPUT + Self::PER_OUTPUT_TOKEN.saturating_mul(output))
                    .max(Self::AT_LEAST)
            }
        }
    }

    fn explain(self, timeout: Duration, spec: &CallSpec) -> String {
        match self {
            AttemptTimeout::Fixed(_) => format!("no answer within the {timeout:?} timeout"),
            AttemptTimeout::ForAnswerLength => format!(
                "no answer within the {timeout:?} timeout (allowed for {} output tokens; \
                 `timeout_s` on the provider sets it)",
                spec.max_output_tokens
            ),
        }
    }
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
    /// The provider's wire protocol (`openai`, `anthropic`): how its limiter counts prompts.
    kind: String,
    limiter: Arc<RateLimiter>,
    concurrency: Arc<Concurrency>,
    breaker: Arc<Breaker>,
    cache: Option<Arc<ResponseCache>>,
    read_cache: bool,
    flights: Arc<Flights>,
    budget: Arc<Budget>,
    stats: Arc<CallStats>,
    retry: RetrySettings,
    timeout: AttemptTimeout,
    price: Option<Price>,
    context_window: Option<u64>,
}

impl CallPolicy {
    /// Prices calls (per million tokens); without one, cost is reported as $0.
    pub fn with_price(mut self, price: Option<Price>) -> CallPolicy {
        self.price = price;
        self
    }

    /// Tokens (prompt + output) the model's context holds: a call that needs more is a record
    /// error before anything is sent.
    pub fn with_context_window(mut self, tokens: Option<u64>) -> CallPolicy {
        self.context_window = tokens;
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

    pub fn flights(&self) -> &Arc<Flights> {
        &self.flights
    }

    fn cost(&self, usage: &TokenUsage) -> f64 {
        self.price.map_or(0.0, |p| p.cost(usage))
    }

    /// The most a call can cost: all its prompt at the dearer of the input and cache-write
    /// prices (a prompt may be written to the provider's cache), all of `max_tokens`.
    fn worst_cost(&self, spec: &CallSpec) -> f64 {
        self.price.map_or(0.0, |p| p.worst_cost(&spec.worst_case()))
    }

    /// What the rate limiter is asked for: the prompt as the provider's limiter will count it.
    /// OpenAI's counts `max_tokens` plus about a token per 4 characters, which can be more
    /// than the tokenizer's count: before the limiter has learned the server's count, the
    /// larger of the two is reserved.
    fn demand(&self, spec: &CallSpec) -> Demand {
        let prompt = if self.kind == "openai" {
            spec.input_tokens.max(spec.prompt_chars.div_ceil(4))
        } else {
            spec.input_tokens
        };
        Demand {
            prompt,
            output: spec.max_output_tokens,
        }
    }

    /// Why this call could never be sent, if so.
    fn never_fits(&self, spec: &CallSpec) -> Option<String> {
        let needed = spec.input_tokens + spec.max_output_tokens;
        if let Some(window) = self.context_window
            && needed > window
        {
            return Some(format!(
                "needs {needed} tokens (prompt {} + max_tokens {}), more than the model's \
                 context window of {window}",
                spec.input_tokens, spec.max_output_tokens
            ));
        }
        self.limiter.never_fits(self.demand(spec))
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
            .fetch_add(stats::to_nano(self.worst_cost(spec)), Relaxed);
    }

    /// A stored or in-flight answer for `key` that `accept` takes, or the leadership of the
    /// call for it.
    async fn lookup<T>(
        &self,
        key: &str,
        accept: &impl Fn(&T) -> Result<(), String>,
    ) -> Result<Called<T>, Flight>
    where
        T: DeserializeOwned,
    {
        let found = |answer: &CachedAnswer, counter: &AtomicU64| {
            let value = serde_json::from_value::<T>(answer.value.clone()).ok()?;
            accept(&value).ok()?;
            counter.fetch_add(1, Relaxed);
            self.stats
                .saved_nano_usd
                .fetch_add(stats::to_nano(self.cost(&answer.usage)), Relaxed);
            Some(Called {
                value,
                from_cache: true,
                rejected: None,
                usage: answer.usage,
                pending: None,
            })
        };
        loop {
            if self.read_cache
                && let Some(hit) = self.cached(key)
                && let Some(called) = found(&hit, &self.stats.cache_hits)
            {
                return Ok(called);
            }
            match self.flights.join(key) {
                Joined::Lead(flight) => return Err(flight),
                Joined::Follow(follower) => {
                    if let Some(answer) = follower.answer().await
                        && let Some(called) = found(&answer, &self.stats.coalesced)
                    {
                        return Ok(called);
                    }
                    // The leader ended without an answer for us: look again (and lead).
                }
            }
        }
    }

    /// Stores an accepted answer and hands it to the calls waiting for it.
    fn store(&self, flight: Option<Flight>, answer: CachedAnswer) {
        if let Some(cache) = &self.cache
            && let Some(flight) = &flight
            && let Err(e) = cache.put(flight.key(), &answer)
        {
            tracing::warn!("{e}");
        }
        if let Some(flight) = flight {
            flight.land(answer);
        }
    }

    /// The answer a stage finally accepted for a call whose first answer it refused (after a
    /// repair turn): cached under that call's key too, so a re-run asks nothing, and given
    /// to identical calls waiting for it. `usage` is what getting it cost beyond the first
    /// answer.
    pub fn remember<T: Serialize>(&self, pending: Pending, value: &T, usage: TokenUsage) {
        let mut total = pending.usage;
        total.add(&usage);
        match serde_json::to_value(value) {
            Ok(value) => self.store(
                Some(pending.flight),
                CachedAnswer {
                    value,
                    usage: total,
                },
            ),
            Err(e) => tracing::warn!("answer not cached: {e}"),
        }
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
        // Cache, and identical calls in flight.
        let mut flight = None;
        if let Some(key) = &spec.cache_key {
            match self.lookup(key, &accept).await {
                Ok(called) => return Ok(called),
                Err(leading) => flight = Some(leading),
            }
            if self.cache.is_some() {
                self.stats.cache_misses.fetch_add(1, Relaxed);
            }
        }
        // Never sendable.
        if let Some(why) = self.never_fits(spec) {
            return Err(StageError::record(format!("not sent: {why}")));
        }
        // Budget.
        let worst_usd = self.worst_cost(spec);
        let worst_tokens = spec.worst_case().total();
        let admission = {
            let _waiting = self.budget.would_wait(worst_usd, worst_tokens).then(|| {
                self.stats
                    .pauses
                    .enter(budget::WAITING_FOR_IN_FLIGHT.into(), None)
            });
            self.budget.admit(worst_usd, worst_tokens).await
        };
        let admission = admission.map_err(|reason| {
            self.stats.over_budget.fetch_add(1, Relaxed);
            StageError::record(format!("not sent: {reason}"))
        })?;
        let mut bill = Bill {
            policy: self,
            admission: Some(admission),
            worst: spec.worst_case(),
            spent: TokenUsage::default(),
            estimated: TokenUsage::default(),
            estimated_attempts: 0,
            sending: false,
        };
        // Retry and everything below it.
        let answer = self.attempts(spec, attempt, &mut bill).await;
        drop(bill);
        let answer = answer?;
        let rejected = accept(&answer.value).err();
        let mut pending = None;
        if rejected.is_none() {
            match serde_json::to_value(&answer.value) {
                Ok(value) => self.store(
                    flight,
                    CachedAnswer {
                        value,
                        usage: answer.usage,
                    },
                ),
                Err(e) => tracing::warn!("answer not cached: {e}"),
            }
        } else if let Some(flight) = flight {
            pending = Some(Pending {
                flight,
                usage: answer.usage,
            });
        }
        Ok(Called {
            value: answer.value,
            from_cache: false,
            rejected,
            usage: answer.usage,
            pending,
        })
    }

    /// The retry loop: breaker → concurrency → rate limit → timeout → attempt, again while
    /// the error is retryable and attempts remain.
    async fn attempts<T, F, Fut>(
        &self,
        spec: &CallSpec,
        attempt: F,
        bill: &mut Bill<'_>,
    ) -> Result<Answer<T>, StageError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Answer<T>, Failed>>,
    {
        let s = &self.stats;
        let (mut errors, mut refusals) = (0u32, 0u32);
        let demand = self.demand(spec);
        let timeout = self.timeout.for_call(spec);
        loop {
            let pass = {
                let _paused = self
                    .breaker
                    .pause_reason()
                    .map(|(reason, until)| s.pauses.enter(reason, Some(until)));
                self.breaker.pass().await
            };
            let mut pass = pass.map_err(|reason| {
                StageError::run(format!(
                    "not sent: provider `{}` stopped: {reason}",
                    self.provider
                ))
            })?;
            let slot = self.concurrency.acquire().await;
            // The rate is paid now that the request can go: taken earlier, the debit would
            // be spent while the request still waited for a slot.
            let mut ticket = {
                let _paused = self
                    .limiter
                    .paused_reason()
                    .map(|(reason, until)| s.pauses.enter(reason, Some(until)));
                self.limiter.reserve_in_turn(demand).await
            };
            {
                let _paused = ticket
                    .pause_reason()
                    .map(|(reason, until)| s.pauses.enter(reason, Some(until)));
                ticket.ready().await;
            }
            s.attempts.fetch_add(1, Relaxed);
            let in_flight = InFlight::new(&s.in_flight);
            bill.sending = true;
            pass.sent_now();
            let started = Instant::now();
            let outcome = tokio::time::timeout(timeout, attempt()).await;
            let rtt = started.elapsed();
            bill.sending = false;
            drop(in_flight);
            let (failed, timed_out) = match outcome {
                Ok(Ok(answer)) => {
                    let output_tokens = answer.usage.output;
                    slot.record(rtt, Signal::Answered { output_tokens });
                    drop(slot);
                    self.breaker.succeeded(pass);
                    self.limiter.observe(&ticket, &answer.server, true);
                    self.limiter.settle(
                        &ticket,
                        Outcome::Answered {
                            input: answer.usage.input,
                            output: answer.usage.output,
                        },
                    );
                    s.observe_latency(rtt);
                    bill.spent.add(&answer.usage);
                    return Ok(answer);
                }
                Ok(Err(failed)) => (failed, false),
                Err(_elapsed) => {
                    s.timeouts.fetch_add(1, Relaxed);
                    let failed = Failed::new(
                        StageError::retryable(self.timeout.explain(timeout, spec), None),
                        None,
                    );
                    (failed, true)
                }
            };
            s.failed_attempts.fetch_add(1, Relaxed);
            let rate_limited = failed.status == Some(429);
            let overloaded = matches!(failed.status, Some(503 | 529)) || timed_out || failed.shed;
            // What the provider bills for it, and what its limiter counted.
            let outcome = match failed.billed {
                Billing::Known(usage) => {
                    bill.spent.add(&usage);
                    Outcome::Answered {
                        input: usage.input,
                        output: usage.output,
                    }
                }
                Billing::Unknown => {
                    bill.estimate();
                    Outcome::Failed
                }
                Billing::Nothing if timed_out => {
                    // Sent, and the provider may well have generated (and billed) it.
                    bill.estimate();
                    Outcome::Failed
                }
                Billing::Nothing if rate_limited => Outcome::Refused,
                Billing::Nothing => Outcome::Failed,
            };
            self.limiter
                .observe(&ticket, &failed.server, outcome != Outcome::Refused);
            self.limiter.settle(&ticket, outcome);
            if rate_limited {
                s.rate_limited.fetch_add(1, Relaxed);
            }
            let class = failed.error.class;
            let mut unreachable = None;
            match class {
                ErrorClass::Run => {
                    self.breaker.halt(&failed.error.message);
                    self.breaker.neutral(pass);
                }
                // The provider is fine; this request is not (or its quota is).
                ErrorClass::Record => {
                    self.breaker.reachable(pass);
                    slot.record(rtt, Signal::Neutral);
                }
                ErrorClass::Retryable if rate_limited => {
                    self.breaker.reachable(pass);
                    // With the account's state it is a rate limit (the limiter's business);
                    // without it, the provider is full: overload.
                    let signal = if failed.server.is_empty() {
                        Signal::BackPressure
                    } else {
                        Signal::Neutral
                    };
                    slot.record(rtt, signal);
                }
                ErrorClass::Retryable => {
                    unreachable = self.breaker.failed(pass, &failed.error.message).err();
                    let signal = if overloaded {
                        Signal::BackPressure
                    } else {
                        Signal::Neutral
                    };
                    slot.record(rtt, signal);
                }
            }
            // Given back only now, after the controller has seen the outcome (see `record`),
            // and before any backoff sleep.
            drop(slot);
            if let Some(reason) = unreachable {
                return Err(StageError::run(reason));
            }
            let error = failed.error;
            if error.class != ErrorClass::Retryable {
                return Err(error);
            }
            let retry_after = error.retry_after.map(Duration::from_secs_f64);
            let (tries, allowed, wait) = if rate_limited {
                refusals += 1;
                let (which, reset) = failed.server.exhausted();
                let wait = retry_after
                    .or_else(|| reset.map(|r| self.limiter.refill_time(which, r, &ticket)));
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

/// Counts one request in flight while it lives.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicU64) -> InFlight<'a> {
        counter.fetch_add(1, Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// What one call spends, attempt by attempt. When it is dropped — the call done, failed, or
/// cancelled mid-flight — the spending goes into the stage's counters and the budget, and the
/// budget's reservation is released. An attempt still in flight then (the call was
/// cancelled after sending) counts at its worst case.
struct Bill<'a> {
    policy: &'a CallPolicy,
    admission: Option<budget::Admission<'a>>,
    worst: TokenUsage,
    spent: TokenUsage,
    estimated: TokenUsage,
    estimated_attempts: u64,
    sending: bool,
}

impl Bill<'_> {
    /// An attempt billed by an amount nobody knows: its worst case, marked as an estimate.
    fn estimate(&mut self) {
        self.estimated.add(&self.worst);
        self.estimated_attempts += 1;
    }
}

impl Drop for Bill<'_> {
    fn drop(&mut self) {
        if self.sending {
            self.estimate();
        }
        let p = self.policy;
        let s = &p.stats;
        let mut total = self.spent;
        total.add(&self.estimated);
        let cost = p.cost(&total);
        s.input_tokens.fetch_add(total.input, Relaxed);
        s.output_tokens.fetch_add(total.output, Relaxed);
        s.cached_input_tokens.fetch_add(total.cached_input, Relaxed);
        s.cache_write_tokens.fetch_add(total.cache_write, Relaxed);
        s.cost_nano_usd.fetch_add(stats::to_nano(cost), Relaxed);
        // What the same tokens would have cost without the provider's prompt cache.
        let uncached = p.cost(&TokenUsage {
            cached_input: 0,
            cache_write: 0,
            ..total
        });
        s.prompt_cache_saved_nano_usd
            .fetch_add(stats::to_signed_nano(uncached - cost), Relaxed);
        if self.estimated_attempts > 0 {
            s.estimated_attempts
                .fetch_add(self.estimated_attempts, Relaxed);
            s.estimated_tokens
                .fetch_add(self.estimated.total(), Relaxed);
            s.estimated_nano_usd
                .fetch_add(stats::to_nano(p.cost(&self.estimated)), Relaxed);
        }
        if let Some(mut admission) = self.admission.take() {
            admission.spend(cost, total.total());
        }
    }
}

#[cfg(test)]
mod tests;
