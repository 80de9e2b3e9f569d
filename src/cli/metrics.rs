//! `--metrics-addr`: Prometheus text exposition of the live counters. The counters already
//! live in atomics shared with the progress display and the report, so they are rendered at
//! scrape time rather than mirrored into a client library's registry (the text format is a
//! stable line protocol: `name{labels} value`).

use pipeline::policy::Resources;
use pipeline::runtime::RunStats;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// Binds now (so a bad address fails the run before it starts) and serves in the background.
pub async fn serve(
    addr: SocketAddr,
    stats: Arc<RunStats>,
    resources: Arc<Resources>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = render(&stats, &resources);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics server stopped: {e}");
        }
    });
    tracing::info!("metrics on http://{bound}/metrics");
    Ok(bound)
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
    }
}

/// Label values are stage and limit ids from YAML: escape what the format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(stats: &RunStats, resources: &Resources) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    type Get = fn(&pipeline::runtime::StageStats) -> u64;
    let stage_metrics: [(&str, &str, &str, Get); 6] = [
        (
            "pipe_stage_records_in_total",
            "counter",
            "Records taken by the stage.",
            |s| s.received.load(Relaxed),
        ),
        (
            "pipe_stage_records_out_total",
            "counter",
            "Records passed on (sinks: written).",
            |s| s.emitted.load(Relaxed),
        ),
        (
            "pipe_stage_dead_lettered_total",
            "counter",
            "Records dead-lettered by the stage.",
            |s| s.dead_lettered.load(Relaxed),
        ),
        (
            "pipe_stage_queue_depth",
            "gauge",
            "Records waiting in the stage's input.",
            |s| s.queued(),
        ),
        (
            "pipe_stage_in_flight",
            "gauge",
            "Calls running in the stage now.",
            |s| s.in_flight.load(Relaxed).max(0) as u64,
        ),
        (
            "pipe_stage_max_queue_depth",
            "gauge",
            "Deepest the input queue has been.",
            |s| s.max_queue_depth.load(Relaxed),
        ),
    ];
    for (name, kind, help, get) in stage_metrics {
        f.head(name, kind, help);
        for s in &stats.stages {
            f.sample(name, &format!("stage=\"{}\"", label(&s.id)), get(s));
        }
    }
    let callers: Vec<_> = stats.stages.iter().filter(|s| s.calls.is_used()).collect();
    type CallGet = fn(&pipeline::policy::CallStats) -> u64;
    let call_metrics: [(&str, &str, &str, CallGet); 9] = [
        (
            "pipe_llm_calls_total",
            "counter",
            "Calls asked for (one per record, plus repairs).",
            |c| c.calls.load(Relaxed),
        ),
        (
            "pipe_llm_requests_total",
            "counter",
            "Requests sent to the provider (first tries and retries).",
            |c| c.attempts.load(Relaxed),
        ),
        (
            "pipe_llm_retries_total",
            "counter",
            "Retried attempts.",
            |c| c.retries.load(Relaxed),
        ),
        (
            "pipe_llm_rate_limited_total",
            "counter",
            "Requests answered 429.",
            |c| c.rate_limited.load(Relaxed),
        ),
        (
            "pipe_llm_timeouts_total",
            "counter",
            "Attempts that hit the per-attempt timeout.",
            |c| c.timeouts.load(Relaxed),
        ),
        (
            "pipe_llm_cache_hits_total",
            "counter",
            "Calls answered by the response cache.",
            |c| c.cache_hits.load(Relaxed),
        ),
        (
            "pipe_llm_cache_misses_total",
            "counter",
            "Calls the response cache could not answer.",
            |c| c.cache_misses.load(Relaxed),
        ),
        (
            "pipe_llm_over_budget_total",
            "counter",
            "Calls refused because the budget was spent.",
            |c| c.over_budget.load(Relaxed),
        ),
        (
            "pipe_llm_in_flight",
            "gauge",
            "Requests waiting for an answer now.",
            |c| c.in_flight.load(Relaxed),
        ),
    ];
    for (name, kind, help, get) in call_metrics {
        f.head(name, kind, help);
        for s in &callers {
            f.sample(name, &format!("stage=\"{}\"", label(&s.id)), get(&s.calls));
        }
    }
    f.head(
        "pipe_llm_tokens_total",
        "counter",
        "Tokens billed, by direction.",
    );
    for s in &callers {
        let id = label(&s.id);
        let c = &s.calls;
        for (direction, n) in [
            ("input", &c.input_tokens),
            ("output", &c.output_tokens),
            ("cached_input", &c.cached_input_tokens),
            ("cache_write", &c.cache_write_tokens),
        ] {
            f.sample(
                "pipe_llm_tokens_total",
                &format!("stage=\"{id}\",direction=\"{direction}\""),
                n.load(Relaxed),
            );
        }
    }
    f.head(
        "pipe_llm_cost_usd_total",
        "counter",
        "Dollars spent, at the configured prices.",
    );
    for s in &callers {
        f.sample(
            "pipe_llm_cost_usd_total",
            &format!("stage=\"{}\"", label(&s.id)),
            s.calls.cost_usd(),
        );
    }
    let name = "pipe_llm_request_duration_seconds";
    f.head(name, "histogram", "Latency of successful requests.");
    for s in &callers {
        let id = label(&s.id);
        let (buckets, count, sum) = s.calls.latency_histogram();
        for (bound, n) in buckets {
            f.sample(
                &format!("{name}_bucket"),
                &format!("stage=\"{id}\",le=\"{bound}\""),
                n,
            );
        }
        f.sample(
            &format!("{name}_bucket"),
            &format!("stage=\"{id}\",le=\"+Inf\""),
            count,
        );
        f.sample(&format!("{name}_sum"), &format!("stage=\"{id}\""), sum);
        f.sample(&format!("{name}_count"), &format!("stage=\"{id}\""), count);
    }
    f.head(
        "pipe_limit_concurrency",
        "gauge",
        "Concurrency cap of a named limit (adaptive: found so far).",
    );
    for (limit, _, concurrency) in resources.limits() {
        f.sample(
            "pipe_limit_concurrency",
            &format!("limit=\"{}\"", label(limit)),
            concurrency.limit(),
        );
    }
    f.head(
        "pipe_limit_in_flight",
        "gauge",
        "Requests in flight under a named limit.",
    );
    for (limit, _, concurrency) in resources.limits() {
        f.sample(
            "pipe_limit_in_flight",
            &format!("limit=\"{}\"", label(limit)),
            concurrency.in_flight(),
        );
    }
    f.head(
        "pipe_limit_admitted_requests_total",
        "counter",
        "Requests a named limit has let through.",
    );
    for (limit, limiter, _) in resources.limits() {
        f.sample(
            "pipe_limit_admitted_requests_total",
            &format!("limit=\"{}\"", label(limit)),
            limiter.admitted_requests(),
        );
    }
    f.head(
        "pipe_dead_letters_total",
        "counter",
        "Records dead-lettered in this run.",
    );
    let dead: u64 = stats
        .stages
        .iter()
        .map(|s| s.dead_lettered.load(Relaxed))
        .sum();
    f.sample("pipe_dead_letters_total", "", dead);
    out
}
