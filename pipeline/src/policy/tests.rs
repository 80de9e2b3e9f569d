//! The order of the stack, tested with a scripted attempt function and paused time.

use super::*;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU32;

struct Setup {
    resources: Resources,
    _dir: tempfile::TempDir,
}

fn setup(limit: LimitSpec, budget: BudgetSpec, provider: impl FnOnce(&mut ProviderSpec)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = ProviderSpec {
        kind: "openai".into(),
        model: "m".into(),
        base_url: None,
        api_key: None,
        limit: Some("acct".into()),
        timeout_s: Some(5.0),
        max_attempts: Some(4),
        backoff_s: Some(1.0),
        max_backoff_s: Some(8.0),
        pricing: Some(Price {
            input: 1.0,
            output: 2.0,
            cached_input: None,
            cache_write: None,
        }),
        breaker: None,
        context_window: None,
        unreachable_after_s: None,
    };
    provider(&mut spec);
    let resources = Resources::new(
        &BTreeMap::from([("acct".to_string(), limit)]),
        &BTreeMap::from([("p".to_string(), spec)]),
        ResourcesOptions {
            cache_path: Some(dir.path().join("cache.sqlite")),
            no_cache: false,
            budget,
            stop: Default::default(),
        },
    )
    .unwrap();
    Setup {
        resources,
        _dir: dir,
    }
}

/// The policy of provider `p`, priced as its spec says (as the stages do).
fn priced(resources: &Resources) -> CallPolicy {
    let price = resources.provider_spec("p").and_then(|p| p.pricing);
    resources
        .policy("p", Default::default())
        .unwrap()
        .with_price(price)
}

fn rpm(n: u64) -> LimitSpec {
    LimitSpec {
        rpm: Some(n),
        ..Default::default()
    }
}

fn spec(key: Option<&str>) -> CallSpec {
    CallSpec {
        cache_key: key.map(str::to_string),
        input_tokens: 100,
        prompt_chars: 0,
        max_output_tokens: 50,
    }
}

fn ok(value: &str) -> Result<Answer<String>, Failed> {
    Ok(Answer {
        value: value.to_string(),
        usage: TokenUsage {
            input: 100,
            output: 10,
            ..Default::default()
        },
        server: ServerLimits::default(),
    })
}

fn server_error() -> Result<Answer<String>, Failed> {
    Err(Failed::new(
        StageError::retryable("HTTP 500: boom", None),
        Some(500),
    ))
}

/// Attempts answer from a script, one entry per attempt.
struct Script(Mutex<Vec<Result<Answer<String>, Failed>>>, AtomicU32);

impl Script {
    fn new(mut steps: Vec<Result<Answer<String>, Failed>>) -> Script {
        steps.reverse();
        Script(Mutex::new(steps), AtomicU32::new(0))
    }
    async fn next(&self) -> Result<Answer<String>, Failed> {
        self.1.fetch_add(1, Relaxed);
        self.0
            .lock()
            .unwrap()
            .pop()
            .expect("more attempts than scripted")
    }
    fn count(&self) -> u32 {
        self.1.load(Relaxed)
    }
}

fn accept_all(_: &String) -> Result<(), String> {
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_cache_hit_skips_budget_limiter_and_request() {
    let s = setup(rpm(60), BudgetSpec::default(), |_| {});
    let policy = s.resources.policy("p", Default::default()).unwrap();
    let script = Script::new(vec![ok("first")]);
    let first = policy
        .call(&spec(Some("k")), || script.next(), accept_all)
        .await
        .unwrap();
    assert!(!first.from_cache);
    let level = policy.limiter().levels().0.unwrap();
    let again = policy
        .call(&spec(Some("k")), || script.next(), accept_all)
        .await
        .unwrap();
    assert!(again.from_cache);
    assert_eq!(policy.limiter().admitted_requests(), 1);
    assert_eq!(again.value, "first");
    assert_eq!(script.count(), 1, "no second request");
    // The limiter was not charged for the hit.
    assert!((policy.limiter().levels().0.unwrap() - level).abs() < 1e-6);
    let r = policy.stats().report();
    assert_eq!(
        (r.calls, r.cache_hits, r.cache_misses, r.attempts),
        (2, 1, 1, 1)
    );
    assert_eq!(s.resources.budget().spent().1, 110, "the hit cost nothing");
}

#[tokio::test(start_paused = true)]
async fn every_attempt_pays_the_limiter_and_retries_hold_no_slot_while_sleeping() {
    let s = setup(
        LimitSpec {
            rpm: Some(600),
            max_concurrency: Some(1),
            ..Default::default()
        },
        BudgetSpec::default(),
        |_| {},
    );
    let policy = Arc::new(s.resources.policy("p", Default::default()).unwrap());
    let script = Arc::new(Script::new(vec![
        server_error(),
        server_error(),
        ok("done"),
    ]));
    let task = {
        let (policy, script) = (policy.clone(), script.clone());
        tokio::spawn(async move {
            policy
                .call(&spec(None), || script.next(), accept_all)
                .await
                .unwrap()
        })
    };
    // Wait until the first attempt has failed and the call is sleeping before its retry.
    while policy.stats().report().retries == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        policy.concurrency().in_flight(),
        0,
        "a sleeping retry holds no slot"
    );
    // The only slot is free: another call goes through while the first one sleeps.
    let other = Script::new(vec![ok("other")]);
    let quick = tokio::time::timeout(
        Duration::from_millis(200),
        policy.call(&spec(None), || other.next(), accept_all),
    )
    .await;
    assert!(quick.is_ok(), "the slot was free during the backoff");
    let done = task.await.unwrap();
    assert_eq!(done.value, "done");
    assert_eq!(script.count(), 3);
    // 3 + 1 attempts were charged.
    assert_eq!(policy.limiter().admitted_requests(), 4);
    let r = policy.stats().report();
    assert_eq!((r.attempts, r.retries, r.failed_attempts), (4, 2, 2));
}

#[tokio::test(start_paused = true)]
async fn the_budget_admits_a_call_once_not_per_attempt() {
    // Room for one call's estimate (150 tokens), not two.
    let s = setup(
        rpm(600),
        BudgetSpec {
            max_usd: None,
            max_tokens: Some(200),
        },
        |_| {},
    );
    let policy = s.resources.policy("p", Default::default()).unwrap();
    let script = Script::new(vec![server_error(), server_error(), ok("fine")]);
    let called = policy
        .call(&spec(None), || script.next(), accept_all)
        .await
        .unwrap();
    assert_eq!(called.value, "fine");
    // 110 spent; another 150-token estimate does not fit in 200: refused and the run told.
    let other = Script::new(vec![]);
    let refused = policy
        .call(&spec(None), || other.next(), accept_all)
        .await
        .unwrap_err();
    assert_eq!(refused.class, ErrorClass::Record);
    assert!(
        refused.message.contains("budget reached"),
        "{}",
        refused.message
    );
    assert_eq!(other.count(), 0);
    assert_eq!(policy.stats().report().over_budget, 1);
}

#[tokio::test(start_paused = true)]
async fn the_timeout_bounds_each_attempt_and_the_call_is_retried() {
    let s = setup(rpm(600), BudgetSpec::default(), |p| p.timeout_s = Some(2.0));
    let policy = s.resources.policy("p", Default::default()).unwrap();
    let calls = AtomicU32::new(0);
    let attempt = || {
        let n = calls.fetch_add(1, Relaxed);
        async move {
            if n == 0 {
                // Hangs far longer than the timeout.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            ok("after timeout")
        }
    };
    let start = Instant::now();
    let called = policy.call(&spec(None), attempt, accept_all).await.unwrap();
    assert_eq!(called.value, "after timeout");
    assert!(start.elapsed() < Duration::from_secs(20));
    let r = policy.stats().report();
    assert_eq!((r.timeouts, r.attempts), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn the_default_timeout_leaves_room_for_the_answer_the_call_asks_for() {
    // A model writing 50 tokens a second: an 8,000-token answer takes 160 s.
    let answer_in = |tokens: u64| Duration::from_millis(300 + 20 * tokens);
    let long = CallSpec {
        max_output_tokens: 8_000,
        ..spec(None)
    };
    // Every attempt of one call times out here: long enough for the provider to count as
    // unreachable, which is not what this test is about.
    let unreachable_after_s = Some(3600.0);
    let s = setup(rpm(600), BudgetSpec::default(), |p| {
        p.timeout_s = None;
        p.unreachable_after_s = unreachable_after_s;
    });
    let policy = s.resources.policy("p", Default::default()).unwrap();
    let attempt = || async {
        tokio::time::sleep(answer_in(8_000)).await;
        ok("extraction")
    };
    let called = policy.call(&long, attempt, accept_all).await.unwrap();
    assert_eq!(called.value, "extraction");
    assert_eq!(policy.stats().report().timeouts, 0);

    // A short call gets at least 120 s, and no more than a long one: a stuck short call is
    // not waited for as long.
    let hangs = || async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        ok("never")
    };
    let start = Instant::now();
    let e = policy
        .call(&spec(None), hangs, accept_all)
        .await
        .unwrap_err();
    let per_attempt = start.elapsed() / 4;
    assert!(
        per_attempt >= Duration::from_secs(120) && per_attempt < Duration::from_secs(130),
        "{per_attempt:?}"
    );
    assert!(
        e.message.contains("within the 120s timeout")
            && e.message.contains("allowed for 50 output tokens")
            && e.message.contains("`timeout_s`"),
        "{}",
        e.message
    );

    // `timeout_s` is taken as given, whatever the call asks for.
    let s = setup(rpm(600), BudgetSpec::default(), |p| {
        p.timeout_s = Some(120.0);
        p.unreachable_after_s = unreachable_after_s;
    });
    let policy = s.resources.policy("p", Default::default()).unwrap();
    let e = policy.call(&long, attempt, accept_all).await.unwrap_err();
    assert!(
        e.message.contains("within the 120s timeout"),
        "{}",
        e.message
    );
    assert_eq!(policy.stats().report().timeouts, 4);
}

#[tokio::test(start_paused = true)]
async fn record_and_run_errors_are_not_retried_and_exhaustion_is_a_record_error() {
    let s = setup(rpm(600), BudgetSpec::default(), |_| {});
    let policy = s.resources.policy("p", Default::default()).unwrap();
    let bad = Script::new(vec![Err(Failed::new(
        StageError::record("HTTP 400"),
        Some(400),
    ))]);
    let e = policy
        .call(&spec(None), || bad.next(), accept_all)
        .await
        .unwrap_err();
    assert_eq!((e.class, bad.count()), (ErrorClass::Record, 1));
    let flaky = Script::new((0..4).map(|_| server_error()).collect());
    let e = policy
        .call(&spec(None), || flaky.next(), accept_all)
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Record);
    assert!(
        e.message.starts_with("gave up after 4 attempts"),
        "{}",
        e.message
    );
    let auth = Script::new(vec![Err(Failed::new(
        StageError::run("HTTP 401"),
        Some(401),
    ))]);
    let e = policy
        .call(&spec(None), || auth.next(), accept_all)
        .await
        .unwrap_err();
    assert_eq!((e.class, auth.count()), (ErrorClass::Run, 1));
    // After a run-fatal answer nothing more is sent.
    let after = Script::new(vec![]);
    let e = policy
        .call(&spec(None), || after.next(), accept_all)
        .await
        .unwrap_err();
    assert_eq!((e.class, after.count()), (ErrorClass::Run, 0));
}

#[tokio::test(start_paused = true)]
async fn a_429_with_account_state_pauses_every_caller() {
    let s = setup(rpm(6000), BudgetSpec::default(), |_| {});
    let policy = Arc::new(s.resources.policy("p", Default::default()).unwrap());
    let refused = Script::new(vec![
        Err(Failed {
            error: StageError::retryable("HTTP 429", Some(3.0)),
            status: Some(429),
            server: Box::new(ServerLimits {
                limit_requests: Some(6000),
                remaining_requests: Some(0),
                reset_requests: Some(Duration::from_secs(3)),
                ..Default::default()
            }),
            billed: Billing::Nothing,
            shed: false,
        }),
        ok("eventually"),
    ]);
    let start = Instant::now();
    let first = policy
        .call(&spec(None), || refused.next(), accept_all)
        .await
        .unwrap();
    assert_eq!(first.value, "eventually");
    assert!(start.elapsed() >= Duration::from_secs(3));
    assert_eq!(policy.stats().report().rate_limited, 1);
}

#[tokio::test(start_paused = true)]
async fn rejected_answers_are_returned_but_never_cached() {
    let s = setup(rpm(600), BudgetSpec::default(), |_| {});
    let policy = s.resources.policy("p", Default::default()).unwrap();
    let script = Script::new(vec![ok("not json"), ok("{}")]);
    let check = |v: &String| {
        serde_json::from_str::<serde_json::Value>(v)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let first = policy
        .call(&spec(Some("k")), || script.next(), check)
        .await
        .unwrap();
    assert!(first.rejected.is_some());
    // Dropped without a repaired answer: identical calls no longer wait for it.
    drop(first);
    let second = policy
        .call(&spec(Some("k")), || script.next(), check)
        .await
        .unwrap();
    assert!(!second.from_cache && second.rejected.is_none());
    let third = policy
        .call(&spec(Some("k")), || script.next(), check)
        .await
        .unwrap();
    assert!(third.from_cache);
    assert_eq!(script.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_pauses_calls_after_consecutive_failures() {
    let s = setup(rpm(6000), BudgetSpec::default(), |p| {
        p.max_attempts = Some(3);
        p.breaker = Some(resources::BreakerSpec {
            failures: Some(3),
            cooldown_s: Some(30.0),
        });
    });
    let policy = s.resources.policy("p", Default::default()).unwrap();
    let script = Script::new((0..3).map(|_| server_error()).collect());
    let e = policy
        .call(&spec(None), || script.next(), accept_all)
        .await
        .unwrap_err();
    assert!(e.message.contains("gave up"));
    assert_eq!(policy.breaker().state(), BreakerState::Open);
    // The next call waits out the cooldown, then is the probe that closes it again.
    let start = Instant::now();
    let probe = Script::new(vec![ok("back")]);
    policy
        .call(&spec(None), || probe.next(), accept_all)
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_secs(29));
    assert_eq!(policy.breaker().state(), BreakerState::Closed);
}

fn refusal() -> Result<Answer<String>, Failed> {
    Err(Failed {
        error: StageError::record("the model refused: I'm sorry, but I can't help with that."),
        status: Some(200),
        server: Box::default(),
        billed: Billing::Known(TokenUsage {
            input: 100,
            output: 12,
            ..Default::default()
        }),
        shed: false,
    })
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_a_billed_record_error_not_a_retry() {
    let s = setup(rpm(600), BudgetSpec::default(), |_| {});
    let policy = priced(&s.resources);
    let script = Script::new(vec![refusal()]);
    let e = policy
        .call(&spec(None), || script.next(), accept_all)
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Record);
    assert!(
        e.message.contains("I can't help with that"),
        "{}",
        e.message
    );
    assert_eq!(script.count(), 1, "not retried");
    let r = policy.stats().report();
    assert_eq!(
        (r.input_tokens, r.output_tokens),
        (100, 12),
        "billed: counted"
    );
    // $1 / $2 per million.
    assert!(
        (r.cost_usd - (100.0 + 24.0) / 1e6).abs() < 1e-9,
        "{}",
        r.cost_usd
    );
    assert_eq!(s.resources.budget().spent().1, 112);
}

#[tokio::test(start_paused = true)]
async fn attempts_billed_by_an_unknown_amount_count_at_their_worst_case() {
    let s = setup(rpm(600), BudgetSpec::default(), |p| p.timeout_s = Some(2.0));
    let policy = priced(&s.resources);
    let calls = AtomicU32::new(0);
    let attempt = || {
        let n = calls.fetch_add(1, Relaxed);
        async move {
            match n {
                // Sent, then no answer in time: it may have been generated and billed.
                0 => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    ok("never")
                }
                // A 200 whose body could not be read.
                1 => Err(Failed {
                    billed: Billing::Unknown,
                    ..Failed::new(StageError::retryable("malformed response", None), Some(200))
                }),
                _ => ok("third time"),
            }
        }
    };
    let called = policy.call(&spec(None), attempt, accept_all).await.unwrap();
    assert_eq!(called.value, "third time");
    let r = policy.stats().report();
    // Two worst cases (100 prompt + 50 max_tokens) and the real bill (100 + 10).
    assert_eq!(r.estimated.attempts, 2);
    assert_eq!(r.estimated.tokens, 300);
    assert_eq!((r.input_tokens, r.output_tokens), (300, 110));
    assert!((r.estimated.cost_usd - 2.0 * 200.0 / 1e6).abs() < 1e-9);
    assert_eq!(s.resources.budget().spent().1, 410);
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_mid_flight_releases_what_it_held() {
    let s = setup(
        LimitSpec {
            rpm: Some(600),
            max_concurrency: Some(1),
            ..Default::default()
        },
        BudgetSpec {
            max_usd: Some(1.0),
            max_tokens: None,
        },
        |_| {},
    );
    let policy = Arc::new(s.resources.policy("p", Default::default()).unwrap());
    // The provider's first call is its breaker's probe: the others wait for its answer.
    let hanging = {
        let policy = policy.clone();
        tokio::spawn(async move {
            let attempt = || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                ok("never")
            };
            policy.call(&spec(Some("a")), attempt, accept_all).await
        })
    };
    while policy.stats().in_flight.load(Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(s.resources.budget().reserved().1 > 0);
    assert_eq!(policy.flights().len(), 1);
    hanging.abort();
    assert!(hanging.await.unwrap_err().is_cancelled());
    // Everything is back: budget reservation, slot, probe, in-flight count, single flight.
    assert_eq!(s.resources.budget().reserved(), (0.0, 0));
    assert_eq!(policy.stats().in_flight.load(Relaxed), 0);
    assert_eq!(policy.concurrency().in_flight(), 0);
    assert!(policy.flights().is_empty());
    // It was sent: its bill is unknown, counted at the worst case (100 + 50 tokens).
    assert_eq!(s.resources.budget().spent().1, 150);
    assert_eq!(policy.stats().report().estimated.attempts, 1);
    // The next call goes at once (the probe slot was freed, not kept by a dead call).
    let script = Script::new(vec![ok("next")]);
    let next = tokio::time::timeout(
        Duration::from_secs(1),
        policy.call(&spec(Some("a")), || script.next(), accept_all),
    )
    .await
    .expect("not blocked by the dropped call")
    .unwrap();
    assert_eq!(next.value, "next");
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_waiting_for_the_rate_gives_its_debit_back() {
    let s = setup(rpm(60), BudgetSpec::default(), |_| {});
    let policy = Arc::new(s.resources.policy("p", Default::default()).unwrap());
    // One request per second, a burst of 0.9: the first goes, the second waits a second.
    let script = Script::new(vec![ok("first")]);
    policy
        .call(&spec(None), || script.next(), accept_all)
        .await
        .unwrap();
    let level = policy.limiter().levels().0.unwrap();
    let waiting = {
        let policy = policy.clone();
        tokio::spawn(async move {
            let never = || async { ok("never sent") };
            policy.call(&spec(None), never, accept_all).await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(policy.limiter().admitted_requests(), 2, "reserved");
    waiting.abort();
    let _ = waiting.await;
    assert_eq!(policy.limiter().admitted_requests(), 1, "given back");
    let now = policy.limiter().levels().0.unwrap();
    assert!((now - (level + 0.1)).abs() < 1e-6, "{level} -> {now}");
    assert_eq!(policy.stats().report().attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn the_rate_is_paid_after_the_slot_when_the_request_goes() {
    let s = setup(
        LimitSpec {
            rpm: Some(600),
            max_concurrency: Some(1),
            ..Default::default()
        },
        BudgetSpec::default(),
        |_| {},
    );
    let policy = Arc::new(s.resources.policy("p", Default::default()).unwrap());
    // A first answer proves the provider (otherwise the others would wait at the breaker).
    let first = Script::new(vec![ok("first")]);
    policy
        .call(&spec(None), || first.next(), accept_all)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let policy = policy.clone();
        tasks.push(tokio::spawn(async move {
            let attempt = || async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                ok("done")
            };
            policy
                .call(&spec(Some(&format!("k{i}"))), attempt, accept_all)
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // One request is out; five wait for the only slot, and have not paid the rate yet.
    assert_eq!(policy.concurrency().in_flight(), 1);
    assert_eq!(policy.limiter().admitted_requests(), 2);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(policy.limiter().admitted_requests(), 7);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_can_never_be_sent_is_a_record_error_before_anything_is_reserved() {
    let s = setup(
        LimitSpec {
            tpm: Some(1_000),
            ..Default::default()
        },
        BudgetSpec::default(),
        |p| p.context_window = Some(5_000),
    );
    let policy = s.resources.policy("p", Default::default()).unwrap();
    let script = Script::new(vec![]);
    let big = CallSpec {
        input_tokens: 1_200,
        ..spec(None)
    };
    let e = policy
        .call(&big, || script.next(), accept_all)
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Record);
    assert!(
        e.message
            .contains("more than limit `acct` allows in a whole minute (1000)"),
        "{}",
        e.message
    );
    let huge = CallSpec {
        input_tokens: 4_990,
        ..spec(None)
    };
    let e = policy
        .call(&huge, || script.next(), accept_all)
        .await
        .unwrap_err();
    assert!(
        e.message
            .contains("more than the model's context window of 5000"),
        "{}",
        e.message
    );
    assert_eq!(script.count(), 0);
    assert_eq!(policy.limiter().admitted_requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn openai_prompts_reserve_at_least_a_token_per_four_characters() {
    let s = setup(
        LimitSpec {
            tpm: Some(60_000),
            ..Default::default()
        },
        BudgetSpec::default(),
        |_| {},
    );
    let policy = s.resources.policy("p", Default::default()).unwrap();
    let script = Script::new(vec![ok("a")]);
    // 100 tokens by the tokenizer, but 2,000 characters: OpenAI's limiter counts ~500.
    let wordy = CallSpec {
        prompt_chars: 2_000,
        ..spec(None)
    };
    policy
        .call(&wordy, || script.next(), accept_all)
        .await
        .unwrap();
    // Burst 900 - (500 + 50 max_tokens); the bill (100 prompt tokens) gives nothing back.
    let level = policy.limiter().levels().1.unwrap();
    assert!((level - 350.0).abs() < 1e-6, "{level}");
}

#[tokio::test(start_paused = true)]
async fn identical_calls_in_flight_are_paid_once() {
    let s = setup(rpm(6000), BudgetSpec::default(), |_| {});
    let policy = Arc::new(s.resources.policy("p", Default::default()).unwrap());
    let script = Arc::new(Script::new(vec![ok("shared"), ok("other")]));
    let mut tasks = Vec::new();
    for key in ["same", "same", "same", "different"] {
        let (policy, script) = (policy.clone(), script.clone());
        tasks.push(tokio::spawn(async move {
            let attempt = || {
                let script = script.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    script.next().await
                }
            };
            policy.call(&spec(Some(key)), attempt, accept_all).await
        }));
    }
    let mut values = Vec::new();
    for t in tasks {
        values.push(t.await.unwrap().unwrap().value);
    }
    assert_eq!(script.count(), 2, "one request per distinct prompt");
    assert_eq!(values.iter().filter(|v| *v == "shared").count(), 3);
    let r = policy.stats().report();
    assert_eq!(
        (r.calls, r.coalesced, r.cache_misses, r.attempts),
        (4, 2, 2, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_repaired_answer_is_cached_under_the_original_call_and_given_to_its_twins() {
    let s = setup(rpm(6000), BudgetSpec::default(), |_| {});
    let policy = Arc::new(s.resources.policy("p", Default::default()).unwrap());
    let check = |v: &String| {
        serde_json::from_str::<serde_json::Value>(v)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let script = Script::new(vec![ok("not json"), ok("{\"fixed\":true}")]);
    let first = policy
        .call(&spec(Some("original")), || script.next(), check)
        .await
        .unwrap();
    assert!(first.rejected.is_some());
    // An identical call arrives while the stage repairs the answer: it waits for it.
    let twin = {
        let policy = policy.clone();
        tokio::spawn(async move {
            let never = || async { ok("not sent") };
            policy.call(&spec(Some("original")), never, check).await
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!twin.is_finished());
    let repaired = policy
        .call(&spec(Some("repair turn")), || script.next(), check)
        .await
        .unwrap();
    assert!(repaired.rejected.is_none());
    policy.remember(first.pending.unwrap(), &repaired.value, repaired.usage);
    let twin = twin.await.unwrap().unwrap();
    assert_eq!(twin.value, "{\"fixed\":true}");
    // A re-run of the original prompt: answered from the cache, nothing sent.
    let again = policy
        .call(&spec(Some("original")), || script.next(), check)
        .await
        .unwrap();
    assert!(again.from_cache);
    assert_eq!(again.value, "{\"fixed\":true}");
    assert_eq!(script.count(), 2);
    // Both calls' usage is what the cached answer cost.
    assert_eq!(again.usage.total(), 220);
}

#[tokio::test(start_paused = true)]
async fn a_provider_failing_every_attempt_ends_the_run_after_unreachable_after() {
    let s = setup(rpm(6000), BudgetSpec::default(), |p| {
        p.max_attempts = Some(1000);
        p.unreachable_after_s = Some(120.0);
        p.breaker = Some(resources::BreakerSpec {
            failures: Some(3),
            cooldown_s: Some(5.0),
        });
    });
    let policy = Arc::new(s.resources.policy("p", Default::default()).unwrap());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let policy = policy.clone();
        tasks.push(tokio::spawn(async move {
            let refused = || async {
                Err::<Answer<String>, _>(Failed::new(
                    StageError::retryable(
                        "chat/completions: request failed: connection refused",
                        None,
                    ),
                    None,
                ))
            };
            let e = policy
                .call(&spec(None), refused, accept_all)
                .await
                .unwrap_err();
            (e, Instant::now())
        }));
    }
    // While the breaker is open, the calls say why they wait.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let paused = policy.stats().paused().expect("paused");
    assert!(
        paused.contains("provider `p` is failing") && paused.contains("connection refused"),
        "{paused}"
    );
    for t in tasks {
        let (e, at) = t.await.unwrap();
        assert_eq!(e.class, ErrorClass::Run, "{}", e.message);
        assert!(
            e.message.contains("(unreachable_after_s: 120)"),
            "{}",
            e.message
        );
        let after = at.duration_since(start);
        assert!(
            after >= Duration::from_secs(120) && after < Duration::from_secs(130),
            "{after:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_hangs_ends_the_run_at_the_first_round_of_timeouts() {
    // No `timeout_s`: 8,000 tokens asked get 380 s an attempt. A provider that takes every
    // request and never answers fails each only then; counted from that first failure, the
    // run went on for `unreachable_after` and a probe's timeout more (~765 s).
    let s = setup(rpm(6000), BudgetSpec::default(), |p| {
        p.timeout_s = None;
        p.max_attempts = None;
    });
    let policy = Arc::new(s.resources.policy("p", Default::default()).unwrap());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let policy = policy.clone();
        tasks.push(tokio::spawn(async move {
            let long = CallSpec {
                max_output_tokens: 8000,
                ..spec(None)
            };
            let hang = || std::future::pending::<Result<Answer<String>, Failed>>();
            let e = policy.call(&long, hang, accept_all).await.unwrap_err();
            (e, Instant::now())
        }));
    }
    for t in tasks {
        let (e, at) = t.await.unwrap();
        assert_eq!(e.class, ErrorClass::Run, "{}", e.message);
        assert!(
            e.message.contains("(unreachable_after_s: 300)")
                && e.message.contains("no answer within the 380s timeout"),
            "{}",
            e.message
        );
        let after = at.duration_since(start);
        assert!(
            after >= Duration::from_secs(380) && after < Duration::from_secs(390),
            "{after:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_budget_short_only_because_of_calls_in_flight_waits_instead_of_stopping() {
    // Room for two calls' worst case ($1 / $2 per million: 100 + 50 tokens = $0.0002).
    let stop = tokio_util::sync::CancellationToken::new();
    let dir = tempfile::tempdir().unwrap();
    let resources = Resources::new(
        &BTreeMap::from([("acct".to_string(), rpm(6000))]),
        &BTreeMap::from([(
            "p".to_string(),
            ProviderSpec {
                kind: "openai".into(),
                model: "m".into(),
                base_url: None,
                api_key: None,
                limit: Some("acct".into()),
                timeout_s: None,
                max_attempts: None,
                backoff_s: None,
                max_backoff_s: None,
                pricing: Some(Price {
                    input: 1.0,
                    output: 2.0,
                    cached_input: None,
                    cache_write: None,
                }),
                breaker: None,
                context_window: None,
                unreachable_after_s: None,
            },
        )]),
        ResourcesOptions {
            cache_path: Some(dir.path().join("cache.sqlite")),
            no_cache: false,
            budget: BudgetSpec {
                max_usd: Some(0.00045),
                max_tokens: None,
            },
            stop: stop.clone(),
        },
    )
    .unwrap();
    let policy = Arc::new(priced(&resources));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let policy = policy.clone();
        tasks.push(tokio::spawn(async move {
            let attempt = || async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                ok("answer")
            };
            policy
                .call(&spec(Some(&format!("k{i}"))), attempt, accept_all)
                .await
                .map(|c| (c.value, Instant::now()))
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let paused = policy.stats().paused().unwrap();
    assert!(paused.contains("budget: waiting"), "{paused}");
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap().expect("all three admitted in the end"));
    }
    assert!(!stop.is_cancelled(), "the run was not stopped");
    // Each spent 100 + 10 tokens = $0.00012: three fit in $0.00045.
    let (usd, _) = resources.budget().spent();
    assert!((usd - 0.00036).abs() < 1e-9, "{usd}");
    // The third went when the first two settled.
    done.sort_by_key(|(_, at)| *at);
    assert!(done[2].1 > done[0].1);
}

/// A 429 whose message named the limit that refused it: that limit is the spent one, though
/// the headers show some left (too little for this call), and its reset says when it is back.
/// Without the name, only a figure of 0 says which.
#[test]
fn the_limit_a_429_names_is_the_spent_one() {
    let reset = Some(Duration::from_millis(400));
    let named = ServerLimits {
        remaining_requests: Some(0),
        remaining_tokens: Some(300),
        reset_tokens: reset,
        refused_by: Some(Dimension::Tokens),
        ..Default::default()
    };
    assert_eq!(named.exhausted(), (Some(Dimension::Tokens), reset));
    let unnamed = ServerLimits {
        refused_by: None,
        ..named
    };
    assert_eq!(unnamed.exhausted(), (Some(Dimension::Requests), None));
    let room = ServerLimits {
        remaining_tokens: Some(300),
        ..Default::default()
    };
    assert_eq!(room.exhausted(), (None, None));
}
