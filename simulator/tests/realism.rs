//! Provider realism over real loopback HTTP: latency that behaves like a
//! model's, schedules, overload, OpenAI's token accounting and error shapes,
//! prompt caching, and the billing stats.

mod common;

use std::time::{Duration, Instant};

use common::{Sim, header, join_all, simple_chat, start, tokens};
use pipe_simulator::{
    AnswerLength, Encoding, LatencyDrift, Phase, SimConfig, TokenCounting, Tokenizer,
};
use serde_json::{Value, json};

fn chat_task(
    sim: &Sim,
    body: Value,
) -> impl std::future::Future<Output = (u16, Duration, HeaderSnapshot)> + Send + 'static {
    let sim = sim.clone();
    async move {
        let t = Instant::now();
        let r = sim.chat("k", &body).await;
        let status = r.status().as_u16();
        let h = HeaderSnapshot::of(&r);
        let _ = r.bytes().await;
        (status, t.elapsed(), h)
    }
}

/// The headers a test looks at, kept after the body is read.
#[derive(Debug, Clone)]
struct HeaderSnapshot {
    retry_after: Option<String>,
    limit_requests: Option<String>,
    any_ratelimit: bool,
}

impl HeaderSnapshot {
    fn of(r: &reqwest::Response) -> Self {
        Self {
            retry_after: header(r, "retry-after").map(str::to_string),
            limit_requests: header(r, "x-ratelimit-limit-requests").map(str::to_string),
            any_ratelimit: r
                .headers()
                .keys()
                .any(|k| k.as_str().starts_with("x-ratelimit")),
        }
    }
}

async fn timed_chat(sim: &Sim, body: &Value) -> (Value, Duration) {
    let t = Instant::now();
    let r = sim.chat("k", body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    (v, t.elapsed())
}

fn text_chat(text: &str, max_tokens: u64) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens})
}

// Answers of 30..100 % of max_tokens, of real sentences, with the latency
// growing with their length.
#[tokio::test]
async fn answer_length_scales_with_max_tokens_and_drives_latency() {
    let sim = start(SimConfig {
        answer_length: Some(AnswerLength {
            min_fraction: 0.3,
            max_fraction: 1.0,
        }),
        ..SimConfig::default()
    })
    .await;
    let mut lengths = Vec::new();
    for i in 0..20 {
        let (v, _) = timed_chat(&sim, &text_chat(&format!("Question {i}?"), 200)).await;
        let n = v["usage"]["completion_tokens"].as_u64().expect("tokens");
        let text = common::content(&v);
        assert_eq!(tokens(text), n, "usage counts the content");
        assert!((60..=200).contains(&n), "{n} outside 30..100 % of 200");
        assert!(text.split(". ").count() > 3, "real sentences: {text}");
        let finish = &v["choices"][0]["finish_reason"];
        assert_eq!(finish, if n == 200 { "length" } else { "stop" });
        lengths.push(n);
    }
    let spread = lengths.iter().max().unwrap_or(&0) - lengths.iter().min().unwrap_or(&0);
    assert!(spread > 50, "lengths must vary: {lengths:?}");
    // The same request gets the same answer.
    let (a, _) = timed_chat(&sim, &text_chat("Question 3?", 200)).await;
    assert_eq!(a["usage"]["completion_tokens"], lengths[3]);

    // Without max_tokens the config's default is the limit.
    sim.configure(&SimConfig {
        answer_length: Some(AnswerLength {
            min_fraction: 1.0,
            max_fraction: 1.0,
        }),
        default_max_tokens: 300,
        latency_per_output_token_ms: 4.0,
        ..SimConfig::default()
    })
    .await;
    let no_max = json!({"model": "m", "messages": [{"role": "user", "content": "Long?"}]});
    let (v, slow) = timed_chat(&sim, &no_max).await;
    assert_eq!(v["usage"]["completion_tokens"], 300);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let (v, fast) = timed_chat(&sim, &text_chat("Short?", 10)).await;
    assert_eq!(v["usage"]["completion_tokens"], 10);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // 300 tokens x 4 ms against 10 x 4 ms.
    assert!(slow >= Duration::from_millis(1150), "{slow:?}");
    assert!(fast < Duration::from_millis(600), "{fast:?}");
}

#[tokio::test]
async fn latency_drift_follows_the_providers_day() {
    let sim = start(SimConfig {
        latency_ms_median: 200.0,
        latency_sigma: 0.0,
        latency_drift: Some(LatencyDrift {
            period_s: 4.0,
            amplitude: 0.9,
        }),
        ..SimConfig::default()
    })
    .await;
    sim.reset().await;
    let clock = Instant::now();
    // t = 1 s: sin = 1, latency x1.9; t = 3 s: sin = -1, latency x0.1.
    tokio::time::sleep_until((clock + Duration::from_millis(1000)).into()).await;
    let (_, peak) = timed_chat(&sim, &simple_chat("peak")).await;
    tokio::time::sleep_until((clock + Duration::from_millis(3000)).into()).await;
    let (_, trough) = timed_chat(&sim, &simple_chat("trough")).await;
    assert!(peak >= Duration::from_millis(320), "peak {peak:?}");
    assert!(trough <= Duration::from_millis(120), "trough {trough:?}");
}

#[tokio::test]
async fn schedule_slows_down_and_changes_capacity_mid_run() {
    let sim = start(SimConfig {
        latency_ms_median: 100.0,
        latency_sigma: 0.0,
        rpm: Some(6000),
        schedule: vec![
            Phase {
                at_s: 1.0,
                latency_factor: Some(4.0),
                hidden_concurrency: Some(Some(2)),
                rpm: Some(Some(600)),
                ..Phase::default()
            },
            Phase {
                at_s: 2.0,
                rpm: Some(None),
                ..Phase::default()
            },
        ],
        ..SimConfig::default()
    })
    .await;
    sim.reset().await;
    let clock = Instant::now();
    let burst = |tag: &str| -> Vec<_> {
        (0..6)
            .map(|i| chat_task(&sim, simple_chat(&format!("{tag} {i}"))))
            .collect()
    };
    let before = join_all(burst("before")).await;
    assert!(before.iter().all(|(s, _, _)| *s == 200), "{before:?}");
    assert!(
        before
            .iter()
            .all(|(_, t, _)| *t < Duration::from_millis(350))
    );
    assert!(
        before
            .iter()
            .all(|(_, _, h)| h.limit_requests.as_deref() == Some("6000"))
    );

    tokio::time::sleep_until((clock + Duration::from_millis(1100)).into()).await;
    let during = join_all(burst("during")).await;
    let ok: Vec<_> = during.iter().filter(|(s, _, _)| *s == 200).collect();
    let refused = during.iter().filter(|(s, _, _)| *s == 429).count();
    assert!(!ok.is_empty() && ok.len() <= 2, "capacity 2: {during:?}");
    assert_eq!(ok.len() + refused, 6);
    assert!(ok.iter().all(|(_, t, _)| *t >= Duration::from_millis(350)));
    assert!(
        during
            .iter()
            .all(|(_, _, h)| h.limit_requests.as_deref() == Some("600"))
    );

    // Phase 2 lifts the RPM limit (null) and keeps the other values.
    tokio::time::sleep_until((clock + Duration::from_millis(2100)).into()).await;
    let after = join_all(burst("after")).await;
    assert!(after.iter().all(|(_, _, h)| !h.any_ratelimit), "{after:?}");
    assert!(after.iter().filter(|(s, _, _)| *s == 200).count() <= 2);
    let stats = sim.stats().await;
    assert!(stats["concurrency_limited"].as_u64().unwrap_or(0) >= 8);
}

#[tokio::test]
async fn overload_can_answer_503_or_429() {
    let cfg = SimConfig {
        hidden_concurrency: Some(1),
        latency_ms_median: 300.0,
        latency_sigma: 0.0,
        ..SimConfig::default()
    };
    let sim = start(cfg.clone()).await;
    let futs: Vec<_> = (0..3)
        .map(|i| chat_task(&sim, simple_chat(&format!("x{i}"))))
        .collect();
    let out = join_all(futs).await;
    let refused: Vec<_> = out.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!(refused.len(), 2, "{out:?}");
    for (_, _, h) in &refused {
        assert_eq!(h.retry_after.as_deref(), Some("1"));
        assert!(!h.any_ratelimit, "no account state without rpm/tpm");
    }

    sim.configure(&SimConfig {
        overload_status: 503,
        ..cfg
    })
    .await;
    let futs: Vec<_> = (0..3)
        .map(|i| chat_task(&sim, simple_chat(&format!("y{i}"))))
        .collect();
    let out = join_all(futs).await;
    let refused: Vec<_> = out.iter().filter(|(s, _, _)| *s == 503).collect();
    assert_eq!(refused.len(), 2, "{out:?}");
    assert!(refused.iter().all(|(_, _, h)| h.retry_after.is_none()));

    // Anthropic says 529 overloaded_error.
    let body = json!({"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let futs: Vec<_> = (0..2)
        .map(|_| {
            let sim = sim.clone();
            let body = body.clone();
            async move {
                let r = sim.messages("k", &body).await;
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.expect("json"))
            }
        })
        .collect();
    let out = join_all(futs).await;
    let (_, v) = out.iter().find(|(s, _)| *s == 529).expect("one 529");
    assert_eq!(v["error"]["type"], "overloaded_error");
    let stats = sim.stats().await;
    assert_eq!(stats["concurrency_limited"], 5);
}

#[tokio::test]
async fn latency_grows_with_load() {
    let cfg = SimConfig {
        hidden_concurrency: Some(10),
        latency_ms_median: 100.0,
        latency_sigma: 0.0,
        latency_load_factor: 4.0,
        ..SimConfig::default()
    };
    let sim = start(cfg).await;
    let (_, alone) = timed_chat(&sim, &simple_chat("alone")).await;
    // 1 of 10 in flight: x1.4.
    assert!(alone < Duration::from_millis(300), "{alone:?}");
    let futs: Vec<_> = (0..10)
        .map(|i| chat_task(&sim, simple_chat(&format!("crowd {i}"))))
        .collect();
    let out = join_all(futs).await;
    assert!(out.iter().all(|(s, _, _)| *s == 200));
    let slowest = out.iter().map(|(_, t, _)| *t).max().unwrap_or_default();
    // The last of 10 arrives at a full server: x5.
    assert!(slowest >= Duration::from_millis(400), "{slowest:?}");
}

#[tokio::test]
async fn openai_estimate_counts_characters_for_the_tpm_bucket() {
    let sim = start(SimConfig {
        tpm: Some(6_000_000),
        token_counting: TokenCounting::OpenaiEstimate,
        ..SimConfig::default()
    })
    .await;
    // Many characters per token: the estimate (chars / 4) is far from tiktoken.
    let system = "You are terse.";
    let user = "aaaa ".repeat(50) + "é";
    let body = json!({"model": "m", "max_tokens": 100, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": user}]});
    let r = sim.chat("k", &body).await;
    assert_eq!(r.status(), 200);
    let remaining: u64 = header(&r, "x-ratelimit-remaining-tokens")
        .and_then(|s| s.parse().ok())
        .expect("remaining");
    let chars = (system.chars().count() + user.chars().count()) as u64;
    let estimate = 100 + chars.div_ceil(4);
    let v: Value = r.json().await.expect("json");
    let prompt = 3 + 3 + tokens("system") + tokens(system) + 3 + tokens("user") + tokens(&user);
    assert_eq!(
        v["usage"]["prompt_tokens"], prompt,
        "billing stays tiktoken"
    );
    assert_ne!(estimate, prompt + 100);
    assert!(
        (100_000 - estimate..=100_000 - estimate + 2).contains(&remaining),
        "remaining {remaining}, estimate {estimate}"
    );
    // Anthropic is not affected.
    let m = json!({"model": "c", "max_tokens": 100, "system": system,
        "messages": [{"role": "user", "content": user}]});
    assert_eq!(sim.messages("k", &m).await.status(), 200);
    let stats = sim.stats().await;
    let anthropic = tokens(system) + tokens(&user) + 100;
    assert_eq!(stats["tokens"]["debited"], estimate + anthropic);
}

#[tokio::test]
async fn context_window_refuses_like_each_vendor() {
    let sim = start(SimConfig {
        context_window: Some(100),
        ..SimConfig::default()
    })
    .await;
    let prompt = 3 + 3 + tokens("user") + tokens("hi");
    let r = sim.chat("k", &text_chat("hi", 100)).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], "messages");
    assert_eq!(
        v["error"]["message"],
        format!(
            "This model's maximum context length is 100 tokens. However, you requested {} tokens ({prompt} in the messages, 100 in the completion). Please reduce the length of the messages or completion.",
            prompt + 100
        )
    );
    assert_eq!(sim.chat("k", &text_chat("hi", 50)).await.status(), 200);
    // Without max_tokens only the prompt counts.
    let long = "word ".repeat(200);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": long}]});
    let v: Value = sim.chat("k", &body).await.json().await.expect("json");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("your messages resulted in"))
    );
    let m =
        json!({"model": "c", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    let r = sim.messages("k", &m).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("input length and `max_tokens` exceed context limit"))
    );
    let m =
        json!({"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": long}]});
    let v: Value = sim.messages("k", &m).await.json().await.expect("json");
    assert_eq!(
        v["error"]["message"],
        format!("prompt is too long: {} tokens > 100 maximum", tokens(&long))
    );
    let stats = sim.stats().await;
    assert_eq!(stats["by_error_code"]["context_length_exceeded"], 2);
    assert_eq!(stats["by_error_code"]["invalid_request_error"], 2);
    assert_eq!(stats["billed"]["requests"], 1);
}

#[tokio::test]
async fn exhausted_quota_stops_every_request() {
    let sim = start(SimConfig {
        quota_tokens: Some(20),
        ..SimConfig::default()
    })
    .await;
    let r = sim.chat("k", &simple_chat("spend the quota please")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap_or(0) >= 20);
    for _ in 0..2 {
        let r = sim.chat("k", &simple_chat("more")).await;
        assert_eq!(r.status(), 429);
        assert_eq!(header(&r, "retry-after"), None);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["type"], "insufficient_quota");
        assert_eq!(v["error"]["code"], "insufficient_quota");
        assert_eq!(
            v["error"]["message"],
            "You exceeded your current quota, please check your plan and billing details."
        );
    }
    let m =
        json!({"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let r = sim.messages("k", &m).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("credit balance is too low"))
    );
    let stats = sim.stats().await;
    assert_eq!(stats["by_error_code"]["insufficient_quota"], 2);
    assert_eq!(stats["billed"]["requests"], 1);
}

#[tokio::test]
async fn reasoning_models_take_max_completion_tokens_and_default_temperature() {
    let sim = start(SimConfig::default()).await;
    let body = |model: &str, extra: Value| {
        let mut b = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(extra.clone());
        }
        b
    };
    let r = sim
        .chat("k", &body("gpt-5-mini", json!({"max_tokens": 50})))
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "unsupported_parameter");
    assert_eq!(v["error"]["param"], "max_tokens");
    assert_eq!(
        v["error"]["message"],
        "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
    );
    let r = sim
        .chat("k", &body("o3", json!({"temperature": 0.2})))
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "unsupported_value");
    assert_eq!(v["error"]["param"], "temperature");
    assert_eq!(
        v["error"]["message"],
        "Unsupported value: 'temperature' does not support 0.2 with this model. Only the default (1) value is supported."
    );
    let ok = body(
        "o4-mini",
        json!({"temperature": 1, "max_completion_tokens": 50}),
    );
    assert_eq!(sim.chat("k", &ok).await.status(), 200);
    let older = body("gpt-4o", json!({"temperature": 0.2, "max_tokens": 50}));
    assert_eq!(sim.chat("k", &older).await.status(), 200);
}

#[tokio::test]
async fn strict_structured_output_rejects_schemas_openai_rejects() {
    let sim = start(SimConfig::default()).await;
    let body = |schema: Value| {
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "CDR: Houston."}],
            "response_format": {"type": "json_schema", "json_schema":
                {"name": "extraction", "strict": true, "schema": schema}}})
    };
    let open = json!({"type": "object", "properties": {"entities": {"type": "array", "items": {"type": "string"}}}, "required": ["entities"]});
    let r = sim.chat("k", &body(open.clone())).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["param"], "response_format");
    assert_eq!(
        v["error"]["message"],
        "Invalid schema for response_format 'extraction': In context=(), 'additionalProperties' is required to be supplied and to be false."
    );
    let mut closed = open;
    closed["additionalProperties"] = json!(false);
    assert_eq!(sim.chat("k", &body(closed)).await.status(), 200);
}

fn long_system() -> String {
    "The crew of Apollo 13 reported a problem with an oxygen tank in the service module. "
        .repeat(80)
}

#[tokio::test]
async fn openai_prompt_cache_reports_the_longest_seen_prefix() {
    let sim = start(SimConfig::default()).await;
    let system = long_system();
    let body = |model: &str, q: &str| {
        json!({"model": model, "max_tokens": 20, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": q}]})
    };
    let first: Value = sim
        .chat("k", &body("gpt-4o", "Alpha question?"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let second: Value = sim
        .chat("k", &body("gpt-4o", "Bravo question?"))
        .await
        .json()
        .await
        .expect("json");
    // Shared: the system message (3 + role + content) and the user message's
    // opening (start token, role, separator).
    let shared = 3 + tokens("system") + tokens(&system) + 2 + tokens("user");
    let expected = shared / 128 * 128;
    assert!(expected >= 1024);
    assert_eq!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"],
        expected
    );
    // Another model has its own cache; a short prompt is never cached.
    let other: Value = sim
        .chat("k", &body("gpt-4.1", "Bravo question?"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(other["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    for _ in 0..2 {
        let short: Value = sim
            .chat("k", &simple_chat("short"))
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(short["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    }
    assert_eq!(sim.stats().await["billed"]["cached_tokens"], expected);

    // Switched off: nothing is cached.
    sim.configure(&SimConfig {
        openai_prompt_cache: false,
        ..SimConfig::default()
    })
    .await;
    sim.reset().await;
    for q in ["Alpha question?", "Alpha question?"] {
        let v: Value = sim
            .chat("k", &body("gpt-4o", q))
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    }
}

// A hang and an answer the client gave up on are still generated and billed.
#[tokio::test]
async fn billing_counts_answers_the_client_never_got() {
    let sim = start(SimConfig {
        latency_ms_median: 600.0,
        latency_sigma: 0.0,
        ..SimConfig::default()
    })
    .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .expect("client");
    let body = simple_chat("slow answer");
    let res = impatient
        .post(sim.url("/v1/chat/completions"))
        .bearer_auth("k")
        .json(&body)
        .send()
        .await;
    assert!(res.is_err(), "the client gives up first");
    assert_eq!(sim.stats().await["billed"]["requests"], 0);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let stats = sim.stats().await;
    assert_eq!(stats["billed"]["requests"], 1, "{stats}");
    let prompt = 3 + 3 + tokens("user") + tokens("slow answer");
    assert_eq!(stats["billed"]["prompt_tokens"], prompt);
    assert!(stats["billed"]["completion_tokens"].as_u64().unwrap_or(0) > 0);
    assert_eq!(stats["by_status"].get("200"), None, "nothing was delivered");

    sim.configure(&SimConfig {
        fault_hang: 1.0,
        hang_seconds: 30,
        ..SimConfig::default()
    })
    .await;
    sim.reset().await;
    let res = impatient
        .post(sim.url("/v1/chat/completions"))
        .bearer_auth("k")
        .json(&body)
        .send()
        .await;
    assert!(res.is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = sim.stats().await;
    assert_eq!(stats["injected"]["hang"], 1);
    assert_eq!(stats["billed"]["requests"], 1);
    assert_eq!(stats["billed"]["prompt_tokens"], prompt);
    assert_eq!(stats["tokens"]["prompt"], 0, "no 200 was sent");
}

#[tokio::test]
async fn in_flight_timeline_covers_every_second_of_a_long_call() {
    let sim = start(SimConfig {
        latency_ms_median: 2600.0,
        latency_sigma: 0.0,
        ..SimConfig::default()
    })
    .await;
    sim.reset().await;
    let futs: Vec<_> = (0..5)
        .map(|i| chat_task(&sim, simple_chat(&format!("long {i}"))))
        .collect();
    let out = join_all(futs).await;
    assert!(out.iter().all(|(s, _, _)| *s == 200));
    let stats = sim.stats().await;
    let timeline = stats["in_flight_timeline"].as_array().expect("timeline");
    let at = |second: u64| {
        timeline
            .iter()
            .find(|e| e["second"] == second)
            .and_then(|e| e["max_in_flight"].as_u64())
    };
    // Second 1 has no arrival or departure: only sampling sees it.
    for second in 0..=2 {
        assert_eq!(at(second), Some(5), "second {second}: {timeline:?}");
    }
}

#[tokio::test]
async fn tokenizer_by_model_counts_in_the_models_own_encoding() {
    let sim = start(SimConfig {
        tokenizer: Tokenizer::ByModel,
        answer_length: Some(AnswerLength {
            min_fraction: 0.5,
            max_fraction: 0.5,
        }),
        ..SimConfig::default()
    })
    .await;
    let text = "Houston, we've had a problem. We've had a MAIN B BUS UNDERVOLT. ".repeat(6);
    let prompt = |enc: Encoding| 3 + 3 + enc.count("user") + enc.count(&text);
    for (model, enc) in [
        ("gpt-4o-mini", Encoding::O200kBase),
        ("gpt-4", Encoding::Cl100kBase),
    ] {
        let body = json!({"model": model, "max_tokens": 100,
            "messages": [{"role": "user", "content": text}]});
        let (v, _) = timed_chat(&sim, &body).await;
        assert_eq!(v["usage"]["prompt_tokens"], prompt(enc), "{model}");
        assert_eq!(v["usage"]["completion_tokens"], 50);
        assert_eq!(enc.count(common::content(&v)), 50, "{model}");
    }
    assert_ne!(
        prompt(Encoding::O200kBase),
        prompt(Encoding::Cl100kBase),
        "the test text must tell the encodings apart"
    );
}
