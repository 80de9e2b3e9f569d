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

/// Tokens billed by one successful response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Billed {
    pub prompt: u64,
    pub completion: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
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
    pub billed: Billed,
    pub tokens_debited: u64,
    pub max_concurrency: u64,
    pub duplicate_bodies: u64,
    pub per_key: BTreeMap<String, u64>,
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
    pub prompt_cache: HashMap<[u8; 32], Instant>,
    pub seen_bodies: HashSet<[u8; 32]>,
    pub seq: u64,
}

pub struct AppState {
    inner: Mutex<Inner>,
    in_flight: AtomicU64,
}

fn make_rng(seed: Option<u64>) -> StdRng {
    StdRng::seed_from_u64(seed.unwrap_or_else(rand::random))
}

impl AppState {
    pub fn new(config: SimConfig) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            inner: Mutex::new(Inner {
                limiter: Limiter::new(config.rpm, config.tpm, config.burst_seconds, now),
                rng: make_rng(config.seed),
                config: Arc::new(config),
                stats: Stats::default(),
                started: now,
                prompt_cache: HashMap::new(),
                seen_bodies: HashSet::new(),
                seq: 0,
            }),
            in_flight: AtomicU64::new(0),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn enter(self: &Arc<Self>) -> InFlight {
        let level = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        InFlight {
            state: Arc::clone(self),
            level,
        }
    }

    /// Replaces the configuration; rebuilds limiter buckets and reseeds the RNG.
    pub fn set_config(&self, config: SimConfig) {
        let mut g = self.lock();
        let now = Instant::now();
        g.limiter = Limiter::new(config.rpm, config.tpm, config.burst_seconds, now);
        g.rng = make_rng(config.seed);
        g.config = Arc::new(config);
    }

    /// Zeroes statistics, refills the buckets and clears the prompt cache.
    pub fn reset(&self) {
        let current = self.in_flight.load(Ordering::SeqCst);
        let mut g = self.lock();
        let now = Instant::now();
        let cfg = Arc::clone(&g.config);
        g.limiter = Limiter::new(cfg.rpm, cfg.tpm, cfg.burst_seconds, now);
        g.stats = Stats {
            max_concurrency: current,
            ..Stats::default()
        };
        g.started = now;
        g.prompt_cache.clear();
        g.seen_bodies.clear();
    }
}

/// Guard counting a request as in flight until dropped.
pub struct InFlight {
    state: Arc<AppState>,
    pub level: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
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
    ) -> (Arc<SimConfig>, u64) {
        self.seq += 1;
        let s = &mut self.stats;
        s.total_requests += 1;
        s.max_concurrency = s.max_concurrency.max(concurrency);
        *s.by_endpoint.entry(endpoint).or_default() += 1;
        *s.per_key
            .entry(key.unwrap_or("<none>").to_string())
            .or_default() += 1;
        if !self.seen_bodies.insert(body_hash) {
            s.duplicate_bodies += 1;
        }
        (Arc::clone(&self.config), self.seq)
    }

    pub fn record_status(&mut self, status: u16) {
        *self.stats.by_status.entry(status).or_default() += 1;
    }

    pub fn record_injected(&mut self, kind: &'static str) {
        *self.stats.injected.entry(kind).or_default() += 1;
    }

    pub fn record_success(&mut self, billed: Billed) {
        let second = self.started.elapsed().as_secs();
        let e = self.stats.per_second.entry(second).or_default();
        e.0 += 1;
        e.1 += billed.total();
        let b = &mut self.stats.billed;
        b.prompt += billed.prompt;
        b.completion += billed.completion;
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

    /// Anthropic prompt cache: `true` = hit (read), `false` = miss (created).
    pub fn cache_lookup(&mut self, key: [u8; 32], now: Instant) -> bool {
        let ttl = Duration::from_secs(self.config.cache_ttl_seconds);
        self.prompt_cache
            .retain(|_, t| now.saturating_duration_since(*t) < ttl);
        let hit = self.prompt_cache.contains_key(&key);
        self.prompt_cache.insert(key, now);
        hit
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
        json!({
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
        })
    }
}
