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
