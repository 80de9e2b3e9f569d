//! Load generator: how many calls per second the simulator serves.
//!
//! ```sh
//! cargo run --release -p pipe-simulator --example loadgen -- --kind schema --requests 20000
//! ```
//!
//! Starts the simulator in-process (sharing the machine with the client, as
//! in the benchmark) and drives `--requests` chat calls from `--concurrency`
//! workers over real HTTP. Kinds: `text` (a short answer), `json` (json_object
//! extraction), `schema` (a knowledge-graph json_schema answer), `batch` (10
//! chunk blocks per call, `chunks` schema), `long` (a 1,500-token prompt: the
//! OpenAI prompt cache path). Prints calls/s and latency percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use pipe_simulator::SimConfig;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "text")]
    kind: String,
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

const TURNS: [&str; 4] = [
    "CDR: Houston, we have a problem with the O2 TANK.",
    "CAPCOM: Roger, Apollo Thirteen. Stand by for Mission Control.",
    "LMP: The Aquarius power budget looks tight, FLIGHT.",
    "CMP: Odyssey is powering down the SPS and the IMU.",
];

fn kg_schema() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["entities", "relations"],
        "properties": {
            "entities": {"type": "array", "items": {"type": "object", "additionalProperties": false,
                "required": ["name", "type", "confidence"], "properties": {
                    "name": {"type": "string"},
                    "type": {"type": "string", "enum": ["Person", "Spacecraft", "System", "Location"]},
                    "confidence": {"type": "number"}}}},
            "relations": {"type": "array", "items": {"type": "object", "additionalProperties": false,
                "required": ["source", "target", "type"], "properties": {
                    "source": {"type": "string"}, "target": {"type": "string"}, "type": {"type": "string"}}}}}})
}

fn body(kind: &str, i: usize, long_system: &str) -> Value {
    let turn = format!("{} (call {i})", TURNS[i % TURNS.len()]);
    let base = |user: String, extra: Value| {
        let mut b = json!({"model": "gpt-4o-mini", "max_tokens": 256,
            "messages": [{"role": "system", "content": "Extract entities and relations."},
                         {"role": "user", "content": user}]});
        if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(extra.clone());
        }
        b
    };
    match kind {
        "json" => base(turn, json!({"response_format": {"type": "json_object"}})),
        "schema" => base(
            turn,
            json!({"response_format": {"type": "json_schema",
                "json_schema": {"name": "kg", "schema": kg_schema()}}}),
        ),
        "batch" => {
            let mut user = String::from("Extract from each chunk.\n");
            for c in 0..10 {
                let text = TURNS[(i + c) % TURNS.len()];
                user.push_str(&format!("<chunk id=\"{i}-{c}\">\n{text}\n</chunk>\n"));
            }
            let item = json!({"type": "object", "required": ["chunk_id", "entities", "relations"],
                "properties": {"chunk_id": {"type": "string"},
                    "entities": kg_schema()["properties"]["entities"].clone(),
                    "relations": kg_schema()["properties"]["relations"].clone()}});
            let schema = json!({"type": "object", "required": ["chunks"],
                "properties": {"chunks": {"type": "array", "items": item}}});
            let mut b = base(
                user,
                json!({"response_format": {"type": "json_schema",
                    "json_schema": {"name": "batch", "schema": schema}}}),
            );
            b["max_tokens"] = json!(4000);
            b
        }
        "long" => {
            let mut b = base(turn, json!({}));
            b["messages"][0]["content"] = json!(long_system);
            b
        }
        _ => base(turn, json!({})),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (addr, _server) = pipe_simulator::spawn(SimConfig {
        seed: Some(1),
        ..SimConfig::default()
    })
    .await;
    let url = format!("http://{addr}/v1/chat/completions");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .expect("client");
    let long_system =
        "The crew of Apollo 13 reported a problem with an oxygen tank in the service module. "
            .repeat(90);
    let bodies: Arc<Vec<String>> = Arc::new(
        (0..args.requests)
            .map(|i| body(&args.kind, i, &long_system).to_string())
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, url, bodies, next) = (
                client.clone(),
                url.clone(),
                Arc::clone(&bodies),
                Arc::clone(&next),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = 0usize;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(b) = bodies.get(i) else { break };
                    let t = Instant::now();
                    let ok = match client
                        .post(&url)
                        .bearer_auth("sk-load")
                        .header("content-type", "application/json")
                        .body(b.clone())
                        .send()
                        .await
                    {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
                        latencies.push(t.elapsed());
                    } else {
                        failures += 1;
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut failures = 0;
    for w in workers {
        let (l, f) = w.await.expect("worker");
        latencies.extend(l);
        failures += f;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "kind={} requests={} concurrency={} ok={} failed={} elapsed={:.2}s calls/s={:.0} p50={:.2}ms p99={:.2}ms",
        args.kind,
        args.requests,
        args.concurrency,
        latencies.len(),
        failures,
        elapsed,
        latencies.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
}
