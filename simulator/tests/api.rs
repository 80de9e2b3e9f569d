//! End-to-end tests over real loopback HTTP.

mod common;

use std::time::{Duration, Instant};

use common::{header, simple_chat, start, tokens};
use pipe_simulator::SimConfig;
use serde_json::{Value, json};

const APOLLO: &str = "CDR: Houston, we have a problem with the O2 TANK\nCAPCOM: Roger, Apollo Thirteen. Stand by for Mission Control.";

// 1. Chat completion shape, determinism, JSON mode, usage.
#[tokio::test]
async fn chat_completion_shape_determinism_json_usage() {
    let sim = start(SimConfig::default()).await;
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Tell me about the flight."}]}
        ],
        "max_tokens": 100,
        "temperature": 0.2,
    });
    let r1 = sim.chat("sk-test", &body).await;
    assert_eq!(r1.status(), 200);
    let v1: Value = r1.json().await.expect("json");
    assert_eq!(v1["object"], "chat.completion");
    assert!(
        v1["id"]
            .as_str()
            .is_some_and(|s| s.starts_with("chatcmpl-"))
    );
    assert_eq!(v1["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v1["choices"][0]["finish_reason"], "stop");
    let c1 = v1["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    assert!(!c1.is_empty());

    let v2: Value = sim.chat("sk-test", &body).await.json().await.expect("json");
    assert_eq!(v2["choices"][0]["message"]["content"], c1.as_str());

    // Usage matches tiktoken cl100k: 3 + per message (3 + role + content).
    let expected_prompt = 3
        + (3 + tokens("system") + tokens("You are terse."))
        + (3 + tokens("user") + tokens("Tell me about the flight."));
    let u = &v1["usage"];
    assert_eq!(u["prompt_tokens"], expected_prompt);
    assert_eq!(u["completion_tokens"], tokens(&c1));
    assert_eq!(u["total_tokens"], expected_prompt + tokens(&c1));
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);

    // A different conversation gives different content.
    let other = simple_chat("Something else entirely, please.");
    let v3: Value = sim
        .chat("sk-test", &other)
        .await
        .json()
        .await
        .expect("json");
    assert_ne!(v3["choices"][0]["message"]["content"], c1.as_str());

    // JSON mode with a schema: parseable extraction with the prompt's entities.
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Extract entities and relations."},
            {"role": "user", "content": APOLLO}
        ],
        "max_completion_tokens": 1000,
        "response_format": {"type": "json_schema", "json_schema": {"name": "extraction", "schema": {"type": "object"}}},
    });
    let v: Value = sim.chat("sk-test", &body).await.json().await.expect("json");
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    let parsed: Value = serde_json::from_str(content).expect("content is JSON");
    let names: Vec<&str> = parsed["entities"]
        .as_array()
        .expect("entities")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for want in ["CDR", "Houston", "O2 TANK", "CAPCOM", "Mission Control"] {
        assert!(names.contains(&want), "missing {want} in {names:?}");
    }
    assert!(
        parsed["relations"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );
    assert_eq!(v["usage"]["completion_tokens"], tokens(content));

    // json_object mode also yields JSON.
    let body = json!({
        "model": "m", "messages": [{"role": "user", "content": APOLLO}],
        "response_format": {"type": "json_object"}
    });
    let v: Value = sim.chat("sk-test", &body).await.json().await.expect("json");
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(serde_json::from_str::<Value>(content).is_ok());

    // max_tokens cut: finish_reason length and completion_tokens <= max.
    let body = json!({
        "model": "m", "messages": [{"role": "user", "content": APOLLO}],
        "response_format": {"type": "json_object"}, "max_tokens": 5
    });
    let v: Value = sim.chat("sk-test", &body).await.json().await.expect("json");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert!(
        v["usage"]["completion_tokens"]
            .as_u64()
            .is_some_and(|n| n <= 5)
    );

    // Malformed body -> 400 in OpenAI shape.
    let r = sim
        .client
        .post(sim.url("/v1/chat/completions"))
        .bearer_auth("k")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

// 2. Embeddings.
#[tokio::test]
async fn embeddings_dimension_norm_determinism() {
    let sim = start(SimConfig::default()).await;
    let body = json!({"model": "text-embedding-3-small", "input": ["alpha", "beta", "alpha"]});
    let r = sim.embed("k", &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    let vecs: Vec<Vec<f64>> = data
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("float"))
                .collect()
        })
        .collect();
    for (i, e) in vecs.iter().enumerate() {
        assert_eq!(data[i]["index"], i);
        assert_eq!(e.len(), 384);
        let norm: f64 = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    assert_eq!(vecs[0], vecs[2]);
    assert_ne!(vecs[0], vecs[1]);
    assert_eq!(
        v["usage"]["prompt_tokens"],
        tokens("alpha") * 2 + tokens("beta")
    );

    // Determinism across calls and `dimensions` honoured.
    let body = json!({"model": "m", "input": "alpha", "dimensions": 64});
    let v: Value = sim.embed("k", &body).await.json().await.expect("json");
    let e = v["data"][0]["embedding"].as_array().expect("embedding");
    assert_eq!(e.len(), 64);
    let v2: Value = sim.embed("k", &body).await.json().await.expect("json");
    assert_eq!(v["data"], v2["data"]);
}

// 3. Anthropic messages, prompt caching, rate-limit headers.
#[tokio::test]
async fn anthropic_messages_cache_and_headers() {
    let sim = start(SimConfig {
        rpm: Some(6000),
        tpm: Some(6_000_000),
        ..SimConfig::default()
    })
    .await;
    let long_doc = "The Apollo 13 service module carried two oxygen tanks. ".repeat(20);
    let body = |q: &str| {
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 512,
            "system": [
                {"type": "text", "text": "Extract entities as JSON."},
                {"type": "text", "text": long_doc, "cache_control": {"type": "ephemeral"}}
            ],
            "messages": [{"role": "user", "content": [{"type": "text", "text": q}]}]
        })
    };
    let q1 = "CDR: Houston, we have a problem with the O2 TANK";
    let r = sim.messages("ak", &body(q1)).await;
    assert_eq!(r.status(), 200);
    for h in [
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-limit",
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
    ] {
        assert!(header(&r, h).is_some(), "missing header {h}");
    }
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-limit"),
        Some("6000")
    );
    let reset = header(&r, "anthropic-ratelimit-requests-reset").unwrap_or("");
    assert!(reset.ends_with('Z') && reset.contains('T'), "reset {reset}");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["stop_reason"], "end_turn");
    let text = v["content"][0]["text"].as_str().expect("text");
    let parsed: Value = serde_json::from_str(text).expect("JSON requested via system");
    assert!(parsed["entities"].to_string().contains("O2 TANK"));

    let prefix = tokens("Extract entities as JSON.") + tokens(&long_doc);
    let u = &v["usage"];
    assert_eq!(u["cache_creation_input_tokens"], prefix);
    assert_eq!(u["cache_read_input_tokens"], 0);
    assert_eq!(u["input_tokens"], tokens(q1));
    assert_eq!(u["output_tokens"], tokens(text));

    // Second call, same prefix, different question -> cache read.
    let q2 = "LMP: Say again?";
    let v2: Value = sim
        .messages("ak", &body(q2))
        .await
        .json()
        .await
        .expect("json");
    let u2 = &v2["usage"];
    assert_eq!(u2["cache_creation_input_tokens"], 0);
    assert_eq!(u2["cache_read_input_tokens"], prefix);
    assert_eq!(u2["input_tokens"], tokens(q2));

    let stats = sim.stats().await;
    assert_eq!(stats["tokens"]["cache_creation"], prefix);
    assert_eq!(stats["tokens"]["cache_read"], prefix);

    // Missing anthropic-version -> 400 in Anthropic shape.
    let r = sim
        .client
        .post(sim.url("/v1/messages"))
        .header("x-api-key", "ak")
        .json(&body(q1))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

// 4. RPM short-window burst.
#[tokio::test]
async fn rpm_burst_then_recovers() {
    let sim = start(SimConfig {
        rpm: Some(120),
        ..SimConfig::default()
    })
    .await;
    let body = simple_chat("hello");
    let futs: Vec<_> = (0..10).map(|_| owned_chat(&sim, &body)).collect();
    let responses = futures_join_all(futs).await;
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    let limited: Vec<&reqwest::Response> = responses.iter().filter(|r| r.status() == 429).collect();
    assert_eq!(ok, 2, "exactly the 1 s burst must pass");
    assert_eq!(limited.len(), 8);
    let mut max_wait_ms = 0u64;
    for r in &limited {
        let ra: u64 = header(r, "retry-after")
            .and_then(|s| s.parse().ok())
            .expect("retry-after");
        assert!(ra >= 1);
        let ms: u64 = header(r, "retry-after-ms")
            .and_then(|s| s.parse().ok())
            .expect("retry-after-ms");
        max_wait_ms = max_wait_ms.max(ms);
        assert_eq!(header(r, "x-ratelimit-remaining-requests"), Some("0"));
        assert_eq!(header(r, "x-ratelimit-limit-requests"), Some("120"));
        assert!(header(r, "x-ratelimit-reset-requests").is_some());
    }
    for r in responses {
        if r.status() == 429 {
            let v: Value = r.json().await.expect("json");
            assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        }
    }
    assert!(max_wait_ms <= 1000);
    tokio::time::sleep(Duration::from_millis(max_wait_ms + 100)).await;
    let r = sim.chat("k", &body).await;
    assert_eq!(r.status(), 200);
    let stats = sim.stats().await;
    assert_eq!(stats["rate_limited"], 8);
    assert_eq!(stats["by_status"]["200"], 3);
}

/// Like many OpenAI-compatible servers and gateways (no `x-ratelimit-*`) and OpenAI itself
/// (the wait said in the message only): the 429's message alone says the limit, what is used,
/// what the call counts and how long to wait.
#[tokio::test]
async fn a_429_can_say_it_in_words_only() {
    let sim = start(SimConfig {
        rpm: Some(120),
        rate_limit_headers: false,
        retry_after_header: false,
        ..SimConfig::default()
    })
    .await;
    let body = simple_chat("hello");
    let futs: Vec<_> = (0..4).map(|_| owned_chat(&sim, &body)).collect();
    let responses = futures_join_all(futs).await;
    assert_eq!(responses.iter().filter(|r| r.status() == 200).count(), 2);
    for r in responses {
        for name in [
            "retry-after",
            "retry-after-ms",
            "x-ratelimit-limit-requests",
        ] {
            assert_eq!(header(&r, name), None, "{name}");
        }
        if r.status() == 429 {
            let v: Value = r.json().await.expect("json");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("on requests per min (RPM): Limit 120, Used 120, Requested 1. Please try again in"),
                "{message}"
            );
        }
    }
}

fn owned_chat(
    sim: &common::Sim,
    body: &Value,
) -> impl std::future::Future<Output = reqwest::Response> + Send + 'static {
    let sim = sim.clone();
    let body = body.clone();
    async move { sim.chat("k", &body).await }
}

/// Minimal join_all without the futures crate.
async fn futures_join_all<F, T>(futs: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("join"));
    }
    out
}

// 5. TPM pre-accounting.
#[tokio::test]
async fn tpm_debits_prompt_plus_max_tokens() {
    // 6000 TPM -> 100 tokens per 1 s burst window.
    let sim = start(SimConfig {
        tpm: Some(6000),
        ..SimConfig::default()
    })
    .await;
    let mk = |max: u64| json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max});
    let prompt = 3 + 3 + tokens("user") + tokens("hi");

    // More than the whole minute's limit: refused for good, nothing debited,
    // and no retry-after since no wait helps.
    let r = sim.chat("k", &mk(7000)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), None);
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), Some("6000"));
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), Some("100"));
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "tokens");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        v["error"]["message"],
        format!(
            "Request too large for m in organization org-sim on tokens per min (TPM): Limit 6000, Requested {}. The input or output tokens must be reduced in order to run successfully.",
            7000 + prompt
        )
    );

    // Fits: debits prompt + max_tokens.
    let r = sim.chat("k", &mk(60)).await;
    assert_eq!(r.status(), 200);
    let remaining: u64 = header(&r, "x-ratelimit-remaining-tokens")
        .and_then(|s| s.parse().ok())
        .expect("remaining");
    assert!(
        (100 - prompt - 60..=100 - prompt - 60 + 1).contains(&remaining),
        "remaining {remaining}"
    );
    let v: Value = r.json().await.expect("json");
    let billed_prompt = v["usage"]["prompt_tokens"].as_u64().expect("prompt");
    let billed_completion = v["usage"]["completion_tokens"]
        .as_u64()
        .expect("completion");
    assert_eq!(billed_prompt, prompt);

    // Immediately again: bucket too low -> 429 with retry-after.
    let r = sim.chat("k", &mk(60)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), Some("1"));
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "tokens");

    let stats = sim.stats().await;
    assert_eq!(stats["tokens"]["debited"], prompt + 60);
    assert_eq!(stats["tokens"]["prompt"], billed_prompt);
    assert_eq!(stats["tokens"]["completion"], billed_completion);
    assert_eq!(stats["rate_limited"], 2);
    assert_eq!(stats["by_error_code"]["rate_limit_exceeded"], 2);
    let secs = stats["per_second"].as_array().expect("per_second");
    let total: u64 = secs.iter().filter_map(|s| s["tokens"].as_u64()).sum();
    assert_eq!(total, billed_prompt + billed_completion);
}

// 5b. A request larger than the burst window but within the minute's limit
// is legal, as on the real API: admitted once the bucket is full, it leaves
// the bucket in debt so the average stays within the limit.
#[tokio::test]
async fn tpm_request_larger_than_the_burst_window_is_admitted_from_a_full_bucket() {
    let sim = start(SimConfig {
        tpm: Some(6000),
        ..SimConfig::default()
    })
    .await;
    let mk = |max: u64| json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max});
    let prompt = 3 + 3 + tokens("user") + tokens("hi");
    let r = sim.chat("k", &mk(500)).await;
    assert_eq!(r.status(), 200, "500 tokens < 6000 TPM must be admitted");
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), Some("0"));
    // 100 - (500 + prompt) in debt: about 5 s until full again.
    let reset = header(&r, "x-ratelimit-reset-tokens")
        .unwrap_or("")
        .to_string();
    assert!(
        reset.starts_with("5.") || reset.starts_with("4.9"),
        "{reset}"
    );
    // The next small request waits out the debt.
    let r = sim.chat("k", &mk(10)).await;
    assert_eq!(r.status(), 429);
    let wait_ms: u64 = header(&r, "retry-after-ms")
        .and_then(|s| s.parse().ok())
        .expect("retry-after-ms");
    let expected_ms = (500 + prompt - 100 + 10 + prompt) * 10;
    assert!(
        wait_ms.abs_diff(expected_ms) < 100,
        "wait {wait_ms} ms, expected about {expected_ms}"
    );
    assert_eq!(sim.stats().await["tokens"]["debited"], 500 + prompt);
}

// 6. Hidden concurrency.
#[tokio::test]
async fn hidden_concurrency_rejects_without_advertising() {
    let sim = start(SimConfig {
        hidden_concurrency: Some(3),
        latency_ms_median: 400.0,
        latency_sigma: 0.01,
        rpm: Some(60_000),
        seed: Some(7),
        ..SimConfig::default()
    })
    .await;
    let body = simple_chat("concurrent");
    let futs: Vec<_> = (0..8).map(|_| owned_chat(&sim, &body)).collect();
    let responses = futures_join_all(futs).await;
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    let limited: Vec<_> = responses.iter().filter(|r| r.status() == 429).collect();
    assert!(ok >= 3, "ok {ok}");
    assert!(!limited.is_empty());
    assert_eq!(ok + limited.len(), 8);
    for r in &limited {
        assert_eq!(header(r, "retry-after"), Some("1"));
        for (name, value) in r.headers() {
            if name.as_str().contains("ratelimit") {
                assert_ne!(value.to_str().unwrap_or(""), "3", "{name} leaks the cap");
            }
        }
        assert_eq!(header(r, "x-ratelimit-limit-requests"), Some("60000"));
    }
    let stats = sim.stats().await;
    assert!(stats["max_concurrency"].as_u64().is_some_and(|m| m > 3));
    assert_eq!(stats["concurrency_limited"], limited.len());
    assert_eq!(stats["rate_limited"], 0);
}

#[tokio::test]
async fn stats_give_the_span_a_client_kept_the_provider_busy() {
    let sim = start(SimConfig {
        latency_ms_median: 300.0,
        latency_sigma: 0.01,
        seed: Some(3),
        ..SimConfig::default()
    })
    .await;
    let stats = sim.stats().await;
    assert!(stats["busy_span_s"].is_null(), "{stats}");
    sim.reset().await;
    // The client's start-up: the provider's clock runs, its span has not begun.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    for i in 0..2 {
        assert_eq!(
            sim.chat("k", &simple_chat(&format!("span {i}")))
                .await
                .status(),
            200
        );
    }
    let stats = sim.stats().await;
    let first = stats["first_request_s"].as_f64().unwrap();
    let last = stats["last_finished_s"].as_f64().unwrap();
    let span = stats["busy_span_s"].as_f64().unwrap();
    assert!(first >= 0.4, "{stats}");
    assert!((last - first - span).abs() < 1e-9, "{stats}");
    assert!(
        (0.55..1.5).contains(&span),
        "two 300-ms calls in turn: {stats}"
    );
    // One in flight at a time, but for the client's gap between the two calls.
    let mean = stats["mean_in_flight"].as_f64().unwrap();
    assert!((0.5..=1.0 + 1e-9).contains(&mean), "{stats}");
    sim.reset().await;
    assert!(sim.stats().await["first_request_s"].is_null());
    // Four at once: four in flight for the whole span.
    let bodies: Vec<_> = (0..4)
        .map(|i| simple_chat(&format!("together {i}")))
        .collect();
    let calls: Vec<_> = bodies.iter().map(|b| owned_chat(&sim, b)).collect();
    for resp in futures_join_all(calls).await {
        assert_eq!(resp.status(), 200);
    }
    let stats = sim.stats().await;
    let mean = stats["mean_in_flight"].as_f64().unwrap();
    assert!((3.0..=4.0 + 1e-9).contains(&mean), "{stats}");
}

// 7. Fault injection.
#[tokio::test]
async fn faults_500_malformed_hang() {
    let sim = start(SimConfig {
        fault_500: 1.0,
        seed: Some(1),
        ..SimConfig::default()
    })
    .await;
    let r = sim.chat("k", &simple_chat("x")).await;
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "server_error");
    assert!(v["error"]["message"].is_string());

    // Reconfigure at runtime: malformed JSON content.
    let cfg = json!({"fault_malformed": 1.0, "seed": 2});
    let r = sim
        .client
        .post(sim.url("/_sim/config"))
        .json(&cfg)
        .send()
        .await
        .expect("config");
    assert_eq!(r.status(), 200);
    let body = json!({
        "model": "m", "messages": [{"role": "user", "content": APOLLO}],
        "response_format": {"type": "json_object"}
    });
    let r = sim.chat("k", &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("envelope stays valid JSON");
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(!content.is_empty());
    assert!(serde_json::from_str::<Value>(content).is_err());

    // Hang.
    let cfg = json!({"fault_hang": 1.0, "hang_seconds": 2});
    let r = sim
        .client
        .post(sim.url("/_sim/config"))
        .json(&cfg)
        .send()
        .await
        .expect("config");
    assert_eq!(r.status(), 200);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let t = Instant::now();
    let res = client
        .post(sim.url("/v1/chat/completions"))
        .bearer_auth("k")
        .json(&simple_chat("x"))
        .send()
        .await;
    let err = res.expect_err("must time out");
    assert!(err.is_timeout(), "{err}");
    assert!(t.elapsed() < Duration::from_millis(1900));

    let stats = sim.stats().await;
    assert_eq!(stats["injected"]["500"], 1);
    assert_eq!(stats["injected"]["malformed"], 1);
    assert_eq!(stats["injected"]["hang"], 1);
}

// 8. Auth in both vendor shapes.
#[tokio::test]
async fn unauthorized_in_both_shapes() {
    let sim = start(SimConfig {
        api_keys: vec!["good".into(), "old".into()],
        revoked_keys: vec!["old".into()],
        models: vec!["gpt-4o-mini".into(), "claude-x".into()],
        ..SimConfig::default()
    })
    .await;
    let r = sim.chat("bad", &simple_chat("x")).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].is_string());

    let r = sim.chat("old", &simple_chat("x")).await;
    assert_eq!(r.status(), 401);

    let r = sim
        .client
        .post(sim.url("/v1/chat/completions"))
        .json(&simple_chat("x"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);

    let mbody = json!({"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let r = sim.messages("bad", &mbody).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");

    // Good key works; unknown model is 404.
    assert_eq!(sim.chat("good", &simple_chat("x")).await.status(), 200);
    assert_eq!(sim.messages("good", &mbody).await.status(), 200);
    let mut unknown = simple_chat("x");
    unknown["model"] = json!("gpt-nope");
    let r = sim.chat("good", &unknown).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "model_not_found");

    let stats = sim.stats().await;
    assert_eq!(stats["per_key"]["bad"], 2);
    assert_eq!(stats["per_key"]["good"], 3);
    assert_eq!(stats["by_status"]["401"], 4);
}

// 9. Duplicate bodies and reset.
#[tokio::test]
async fn duplicate_bodies_and_reset() {
    let sim = start(SimConfig::default()).await;
    let a = simple_chat("same");
    let b = simple_chat("different");
    for _ in 0..3 {
        assert_eq!(sim.chat("k", &a).await.status(), 200);
    }
    assert_eq!(sim.chat("k", &b).await.status(), 200);
    let stats = sim.stats().await;
    assert_eq!(stats["duplicate_bodies"], 2);
    assert_eq!(stats["total_requests"], 4);
    assert!(stats["tokens"]["prompt"].as_u64().is_some_and(|t| t > 0));

    sim.reset().await;
    let stats = sim.stats().await;
    assert_eq!(stats["duplicate_bodies"], 0);
    assert_eq!(stats["total_requests"], 0);
    assert_eq!(stats["tokens"]["prompt"], 0);
    assert_eq!(stats["per_second"], json!([]));

    // Hash memory is cleared too: the first repeat after reset is not a duplicate.
    assert_eq!(sim.chat("k", &a).await.status(), 200);
    assert_eq!(sim.stats().await["duplicate_bodies"], 0);
}

// 10. Latency distribution.
#[tokio::test]
async fn latency_median_is_respected() {
    let sim = start(SimConfig {
        latency_ms_median: 50.0,
        seed: Some(42),
        ..SimConfig::default()
    })
    .await;
    let body = simple_chat("latency");
    let mut samples = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(sim.chat("k", &body).await.status(), 200);
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    let median = (samples[9] + samples[10]) / 2.0;
    assert!((25.0..=150.0).contains(&median), "median {median} ms");
}
