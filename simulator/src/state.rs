//! Shared mutable state: config, limiter, RNG, prompt cache, statistics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use serde_json::{Value, json};

use crate::config::SimConfig;
use crate::ratelimit::Limiter;

/// Tokens billed by one generated answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Billed {
    /// OpenAI `prompt_tokens` (cached ones included) or Anthropic uncached `input_tokens`.
    pub prompt: u64,
    pub completion: u64,
    /// OpenAI `prompt_tokens_details.cached_tokens` (a part of `prompt`).
    pub cached: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
}

/// Everything the provider would bill, whether or not the client got or
/// accepted the answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct BilledTotals {
    pub requests: u64,
    pub tokens: Billed,
}

impl Billed {
    pub fn total(&self) -> u64 {
        self.prompt + self.completion + self.cache_read + self.cache_creation
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub total_requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub by_endpoint: BTreeMap<&'static str, u64>,
    pub rate_limited: u64,
    pub concurrency_limited: u64,
    pub injected: BTreeMap<&'static str, u64>,
    pub per_second: BTreeMap<u64, (u64, u64)>,
    /// Tokens of the 200 responses (the `tokens` stats).
    pub billed: Billed,
    /// Everything billed, incl. answers the client never received (`billed` stats).
    pub billed_all: BilledTotals,
    pub by_error_code: BTreeMap<String, u64>,
    /// Second since start -> most requests in flight during it.
    pub in_flight_timeline: BTreeMap<u64, u64>,
    pub tokens_debited: u64,
    pub max_concurrency: u64,
    pub duplicate_bodies: u64,
    pub per_key: BTreeMap<String, u64>,
    /// Seconds since start or reset when the first request came, and when the last one
    /// finished: the span a client kept the provider busy, on the provider's clock (the same
    /// for every client, whatever its own start-up costs).
    pub first_request_s: Option<f64>,
    pub last_finished_s: Option<f64>,
    /// Seconds each request was held, summed: over the busy span, the mean count in flight
    /// (how fully a client used a capacity, between its calls as well as at its peaks).
    pub in_flight_seconds: f64,
}

/// Fault chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    E500,
    E429,
    Hang,
    Malformed,
}

pub struct Inner {
    pub config: Arc<SimConfig>,
    pub limiter: Limiter,
    pub rng: StdRng,
    pub stats: Stats,
    pub started: Instant,
    /// Anthropic cache_control prefixes -> last use.
    pub prompt_cache: HashMap<[u8; 32], Instant>,
    /// OpenAI automatic cache: hashes of 128-token prompt prefixes -> last use.
    pub openai_cache: HashMap<[u8; 32], Instant>,
    last_sweep: Instant,
    pub seen_bodies: HashSet<[u8; 32]>,
    pub seq: u64,
    /// Key of the per-body draws (refusal, wrong JSON): the config's seed, or
    /// a random one per config.
    pub draw_seed: u64,
}

pub struct AppState {
    inner: Mutex<Inner>,
    in_flight: AtomicU64,
    /// Compiled JSON Schemas by blake3 of their text, for recognising the
    /// previous answer's mistake on repair turns.
    validators: Mutex<HashMap<[u8; 32], Option<Arc<jsonschema::Validator>>>>,
}

fn make_rng(seed: Option<u64>) -> StdRng {
    StdRng::seed_from_u64(seed.unwrap_or_else(rand::random))
}

fn draw_seed(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(rand::random)
}

impl AppState {
    pub fn new(config: SimConfig) -> Arc<Self> {
        let now = Instant::now();
        let seed = draw_seed(config.seed);
        Arc::new(Self {
            inner: Mutex::new(Inner {
                limiter: Limiter::from_config(&config, now),
                rng: make_rng(config.seed),
                config: Arc::new(config),
                stats: Stats::default(),
                started: now,
                prompt_cache: HashMap::new(),
                openai_cache: HashMap::new(),
                last_sweep: now,
                seen_bodies: HashSet::new(),
                seq: 0,
                draw_seed: seed,
            }),
            in_flight: AtomicU64::new(0),
            validators: Mutex::new(HashMap::new()),
        })
    }

    /// Requests in flight right now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The compiled validator of `schema` (compiled once per distinct schema);
    /// `None` when the schema does not compile.
    pub fn validator(&self, schema: &Value) -> Option<Arc<jsonschema::Validator>> {
        let key = *blake3::hash(schema.to_string().as_bytes()).as_bytes();
        let mut cache = self.validators.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = cache.get(&key) {
            return v.clone();
        }
        // Bounded: a client sending endless distinct schemas cannot grow it forever.
        if cache.len() >= 1024 {
            cache.clear();
        }
        let compiled = jsonschema::validator_for(schema).ok().map(Arc::new);
        cache.insert(key, compiled.clone());
        compiled
    }

    /// Samples the in-flight count into the timeline every 100 ms, so a
    /// second in which requests were in flight but none started or ended
    /// still shows them. Ends when the server (the last strong reference) is gone.
    pub fn spawn_sampler(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let Some(st) = weak.upgrade() else { break };
                let level = st.in_flight();
                if level > 0 {
                    st.lock().note_in_flight(level);
                }
            }
        });
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn enter(self: &Arc<Self>) -> InFlight {
        let level = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        InFlight {
            state: Arc::clone(self),
            level,
            entered: Instant::now(),
        }
    }

    /// Replaces the configuration; rebuilds limiter buckets and reseeds the RNG.
    pub fn set_config(&self, config: SimConfig) {
        let mut g = self.lock();
        let now = Instant::now();
        g.limiter = Limiter::from_config(&config, now);
        g.rng = make_rng(config.seed);
        g.draw_seed = draw_seed(config.seed);
        g.config = Arc::new(config);
    }

    /// Zeroes statistics, refills the buckets and clears the prompt cache.
    pub fn reset(&self) {
        let current = self.in_flight.load(Ordering::SeqCst);
        let mut g = self.lock();
        let now = Instant::now();
        let cfg = Arc::clone(&g.config);
        g.limiter = Limiter::from_config(&cfg, now);
        g.stats = Stats {
            max_concurrency: current,
            ..Stats::default()
        };
        g.started = now;
        g.prompt_cache.clear();
        g.openai_cache.clear();
        g.seen_bodies.clear();
    }
}

/// Guard counting a request as in flight until dropped.
pub struct InFlight {
    state: Arc<AppState>,
    pub level: u64,
    entered: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let before = self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut g = self.state.lock();
        g.note_in_flight(before);
        g.stats.last_finished_s = Some(g.elapsed_s());
        // (A request that came before a reset counts from the reset.)
        let held = self.entered.max(g.started).elapsed().as_secs_f64();
        g.stats.in_flight_seconds += held;
    }
}

impl Inner {
    /// Records the arrival of an API request; returns config and sequence number.
    pub fn on_request(
        &mut self,
        concurrency: u64,
        body_hash: [u8; 32],
        key: Option<&str>,
        endpoint: &'static str,
    ) -> (Arc<SimConfig>, u64, u64) {
        self.seq += 1;
        self.note_in_flight(concurrency);
        let now_s = self.elapsed_s();
        let s = &mut self.stats;
        s.first_request_s.get_or_insert(now_s);
        s.total_requests += 1;
        s.max_concurrency = s.max_concurrency.max(concurrency);
        *s.by_endpoint.entry(endpoint).or_default() += 1;
        *s.per_key
            .entry(key.unwrap_or("<none>").to_string())
            .or_default() += 1;
        if !self.seen_bodies.insert(body_hash) {
            s.duplicate_bodies += 1;
        }
        (Arc::clone(&self.config), self.seq, self.draw_seed)
    }

    pub fn record_status(&mut self, status: u16) {
        *self.stats.by_status.entry(status).or_default() += 1;
    }

    pub fn record_injected(&mut self, kind: &'static str) {
        *self.stats.injected.entry(kind).or_default() += 1;
    }

    /// Seconds since start or reset: the clock of schedules and drift.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn note_in_flight(&mut self, level: u64) {
        let second = self.started.elapsed().as_secs();
        let e = self.stats.in_flight_timeline.entry(second).or_default();
        *e = (*e).max(level);
    }

    pub fn record_error_code(&mut self, code: &str) {
        match self.stats.by_error_code.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                self.stats.by_error_code.insert(code.to_string(), 1);
            }
        }
    }

    /// Counts an answer the provider generated, and would bill, whether or
    /// not the client receives or accepts it.
    pub fn record_billed(&mut self, billed: Billed) {
        let b = &mut self.stats.billed_all;
        b.requests += 1;
        b.tokens.prompt += billed.prompt;
        b.tokens.completion += billed.completion;
        b.tokens.cached += billed.cached;
        b.tokens.cache_read += billed.cache_read;
        b.tokens.cache_creation += billed.cache_creation;
    }

    /// Tokens billed so far (for `quota_tokens`).
    pub fn billed_tokens(&self) -> u64 {
        self.stats.billed_all.tokens.total()
    }

    pub fn record_success(&mut self, billed: Billed) {
        let second = self.started.elapsed().as_secs();
        let e = self.stats.per_second.entry(second).or_default();
        e.0 += 1;
        e.1 += billed.total();
        let b = &mut self.stats.billed;
        b.prompt += billed.prompt;
        b.completion += billed.completion;
        b.cached += billed.cached;
        b.cache_read += billed.cache_read;
        b.cache_creation += billed.cache_creation;
    }

    /// Draws the fault for one request and its base latency.
    pub fn draw(&mut self) -> (Fault, Duration) {
        let cfg = Arc::clone(&self.config);
        let u: f64 = self.rng.random();
        let mut acc = 0.0;
        let mut fault = Fault::None;
        for (p, f) in [
            (cfg.fault_500, Fault::E500),
            (cfg.fault_429, Fault::E429),
            (cfg.fault_hang, Fault::Hang),
            (cfg.fault_malformed, Fault::Malformed),
        ] {
            acc += p;
            if p > 0.0 && u < acc {
                fault = f;
                break;
            }
        }
        let latency = if cfg.latency_ms_median > 0.0 {
            match LogNormal::new(cfg.latency_ms_median.ln(), cfg.latency_sigma) {
                Ok(d) => {
                    let ms: f64 = d.sample(&mut self.rng);
                    Duration::from_secs_f64((ms.min(3_600_000.0)) / 1000.0)
                }
                Err(_) => Duration::from_secs_f64(cfg.latency_ms_median / 1000.0),
            }
        } else {
            Duration::ZERO
        };
        (fault, latency)
    }

    /// Drops expired cache entries every tenth of the TTL (at least 1 s
    /// apart), not on every request: lookups check the age themselves.
    /// Past `MAX_CACHE_ENTRIES`, the OpenAI cache is emptied (evicted under
    /// memory pressure, as a provider's cache is), so a long benchmark of
    /// distinct long prompts cannot grow it without bound.
    fn sweep_caches(&mut self, now: Instant) {
        const MAX_CACHE_ENTRIES: usize = 1 << 20;
        let ttl = Duration::from_secs(self.config.cache_ttl_seconds);
        let every = (ttl / 10).max(Duration::from_secs(1));
        if now.saturating_duration_since(self.last_sweep) >= every {
            self.last_sweep = now;
            let fresh = |t: &mut Instant| now.saturating_duration_since(*t) < ttl;
            self.prompt_cache.retain(|_, t| fresh(t));
            self.openai_cache.retain(|_, t| fresh(t));
        }
        if self.openai_cache.len() > MAX_CACHE_ENTRIES {
            self.openai_cache.clear();
        }
    }

    /// Anthropic prompt cache: `true` = hit (read), `false` = miss (created).
    pub fn cache_lookup(&mut self, key: [u8; 32], now: Instant) -> bool {
        self.sweep_caches(now);
        let ttl = Duration::from_secs(self.config.cache_ttl_seconds);
        let hit = self
            .prompt_cache
            .get(&key)
            .is_some_and(|t| now.saturating_duration_since(*t) < ttl);
        self.prompt_cache.insert(key, now);
        hit
    }

    /// OpenAI automatic prompt cache. `prefixes[i]` is the hash of the
    /// prompt's first `1024 + 128 * i` tokens. Returns how many of them were
    /// seen before within the TTL (the longest cached prefix), and remembers
    /// all of them.
    pub fn openai_cache_lookup(&mut self, prefixes: &[[u8; 32]], now: Instant) -> usize {
        self.sweep_caches(now);
        let ttl = Duration::from_secs(self.config.cache_ttl_seconds);
        let fresh = |c: &HashMap<[u8; 32], Instant>, k: &[u8; 32]| {
            c.get(k)
                .is_some_and(|t| now.saturating_duration_since(*t) < ttl)
        };
        let hits = prefixes
            .iter()
            .rposition(|k| fresh(&self.openai_cache, k))
            .map_or(0, |i| i + 1);
        for k in prefixes {
            self.openai_cache.insert(*k, now);
        }
        hits
    }

    pub fn stats_json(&self) -> Value {
        let s = &self.stats;
        let elapsed = self.started.elapsed().as_secs_f64();
        let per_second: Vec<Value> = s
            .per_second
            .iter()
            .map(|(sec, (n, t))| json!({"second": sec, "successes": n, "tokens": t}))
            .collect();
        let by_status: BTreeMap<String, u64> = s
            .by_status
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let b = &s.billed_all;
        let busy_span = s.first_request_s.zip(s.last_finished_s).map(|(a, b)| b - a);
        let timeline: Vec<Value> = s
            .in_flight_timeline
            .iter()
            .map(|(sec, n)| json!({"second": sec, "max_in_flight": n}))
            .collect();
        json!({
            "billed": {
                "requests": b.requests,
                "prompt_tokens": b.tokens.prompt,
                "completion_tokens": b.tokens.completion,
                "cached_tokens": b.tokens.cached,
                "cache_read_tokens": b.tokens.cache_read,
                "cache_creation_tokens": b.tokens.cache_creation,
            },
            "by_error_code": s.by_error_code,
            "in_flight_timeline": timeline,
            "elapsed_seconds": elapsed,
            "total_requests": s.total_requests,
            "by_status": by_status,
            "by_endpoint": s.by_endpoint,
            "rate_limited": s.rate_limited,
            "concurrency_limited": s.concurrency_limited,
            "injected": s.injected,
            "per_second": per_second,
            "tokens": {
                "prompt": s.billed.prompt,
                "completion": s.billed.completion,
                "cache_read": s.billed.cache_read,
                "cache_creation": s.billed.cache_creation,
                "debited": s.tokens_debited,
            },
            "max_concurrency": s.max_concurrency,
            "duplicate_bodies": s.duplicate_bodies,
            "per_key": s.per_key,
            "first_request_s": s.first_request_s,
            "last_finished_s": s.last_finished_s,
            "busy_span_s": busy_span,
            "in_flight_seconds": s.in_flight_seconds,
            "mean_in_flight": busy_span.filter(|span| *span > 0.0).map(|span| s.in_flight_seconds / span),
        })
    }
}
