use super::*;

/// A limiter whose server has answered already: the steady state.
fn limiter(rpm: Option<u64>, tpm: Option<u64>) -> RateLimiter {
    fresh_limiter(rpm, tpm).answered()
}

fn fresh_limiter(rpm: Option<u64>, tpm: Option<u64>) -> RateLimiter {
    RateLimiter::new(
        "test",
        LimitSettings {
            rpm,
            tpm,
            burst_seconds: 1.0,
            reserve_max_tokens: true,
            ..Default::default()
        },
    )
}

fn demand(prompt: u64, output: u64) -> Demand {
    Demand { prompt, output }
}

#[tokio::test(start_paused = true)]
async fn requests_are_spaced_at_the_rate_after_the_burst() {
    // 600 rpm = 10/s, burst of 0.9 s = 9 at once, then one every 100 ms.
    let l = limiter(Some(600), None);
    let start = Instant::now();
    for _ in 0..9 {
        l.acquire(0).await;
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    for i in 1..=5u64 {
        l.acquire(0).await;
        let expected = Duration::from_millis(100 * i);
        let got = start.elapsed();
        assert!(
            got >= expected && got < expected + Duration::from_millis(2),
            "{got:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn before_the_first_answer_calls_go_at_the_steady_rate_and_the_burst_waits_for_it() {
    // 600 rpm = 10/s: one at once, then one every 100 ms, however many are waiting.
    let l = fresh_limiter(Some(600), None);
    let start = Instant::now();
    let mut first = l.reserve_in_turn(demand(0, 0)).await;
    first.ready().await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    for i in 1..=4u64 {
        l.acquire(0).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100 * i));
    }
    // The bucket was not spent meanwhile: the answer lets the burst (9) go at once.
    l.settle(
        &first,
        Outcome::Answered {
            input: 10,
            output: 5,
        },
    );
    let answered_at = Instant::now();
    for _ in 0..8 {
        l.acquire(0).await;
    }
    assert_eq!(answered_at.elapsed(), Duration::ZERO);
    // Then the steady rate again.
    l.acquire(0).await;
    l.acquire(0).await;
    assert!(answered_at.elapsed() >= Duration::from_millis(100));

    // Tokens are paced the same way, by each call's size, and a 429 proves the account too.
    let l = fresh_limiter(None, Some(60_000));
    let start = Instant::now();
    let mut first = l.reserve_in_turn(demand(0, 200)).await;
    first.ready().await;
    l.acquire(300).await;
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    l.settle(&first, Outcome::Refused);
    let refused_at = Instant::now();
    l.acquire(300).await;
    assert_eq!(refused_at.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn tokens_bind_when_calls_are_large() {
    // 60k tpm = 1000 tokens/s; 800-token calls: the 900-token burst holds one, then one
    // per 0.8 s.
    let l = limiter(None, Some(60_000));
    let start = Instant::now();
    l.acquire(800).await;
    l.acquire(800).await;
    l.acquire(800).await;
    let got = start.elapsed().as_secs_f64();
    assert!((got - 1.5).abs() < 0.01, "{got}");
}

#[tokio::test(start_paused = true)]
async fn a_daily_quota_is_a_calendar_window_that_is_never_exceeded() {
    let l = RateLimiter::new(
        "daily",
        LimitSettings {
            rpd: Some(3),
            burst_seconds: 1.0,
            first_day_reset: Some(Duration::from_secs(5 * 3600)),
            ..Default::default()
        },
    );
    let start = Instant::now();
    for _ in 0..3 {
        l.acquire(0).await;
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    // The fourth waits for the next day (the window resets in 5 h), and goes right then —
    // not after a third of a day of refill, and not before the reset.
    let fourth = l.reserve(demand(0, 0));
    let reason = fourth.pause_reason().expect("waiting for the next day").0;
    assert!(reason.contains("daily limit `daily` spent"), "{reason}");
    drop(fourth);
    l.acquire(0).await;
    assert_eq!(start.elapsed(), Duration::from_secs(5 * 3600));
    // That day holds three, the seventh call waits for the day after.
    l.acquire(0).await;
    l.acquire(0).await;
    assert_eq!(start.elapsed(), Duration::from_secs(5 * 3600));
    l.acquire(0).await;
    assert_eq!(start.elapsed(), Duration::from_secs(29 * 3600));
}

#[tokio::test(start_paused = true)]
async fn a_daily_token_quota_gets_back_what_a_cancelled_call_took() {
    let l = RateLimiter::new(
        "daily",
        LimitSettings {
            tpd: Some(1000),
            burst_seconds: 1.0,
            reserve_max_tokens: true,
            first_day_reset: Some(Duration::from_secs(3600)),
            ..Default::default()
        },
    );
    let start = Instant::now();
    l.acquire(600).await;
    // 400 left today: a 600-token call waits for tomorrow...
    let waiting = l.reserve(demand(0, 600));
    assert_eq!(waiting.release(), start + Duration::from_secs(3600));
    // ...and given up, it leaves the next day's quota untouched: a 1000-token call still fits
    // there.
    drop(waiting);
    let big = l.reserve(demand(0, 1000));
    assert_eq!(big.release(), start + Duration::from_secs(3600));
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_whole_limit_never_fits() {
    let l = RateLimiter::new(
        "small",
        LimitSettings {
            tpm: Some(10_000),
            tpd: Some(50_000),
            burst_seconds: 1.0,
            reserve_max_tokens: true,
            ..Default::default()
        },
    );
    assert_eq!(l.never_fits(demand(9_000, 1_000)), None);
    let why = l.never_fits(demand(9_500, 1_000)).unwrap();
    assert!(
        why.contains("10500 tokens") && why.contains("whole minute (10000)"),
        "{why}"
    );
    let why = l.never_fits(demand(59_000, 0)).unwrap();
    assert!(why.contains("whole minute"), "{why}");
    let daily = RateLimiter::new(
        "daily",
        LimitSettings {
            tpd: Some(50_000),
            burst_seconds: 1.0,
            reserve_max_tokens: true,
            ..Default::default()
        },
    );
    assert!(daily.never_fits(demand(40_000, 1_000)).is_none());
    let why = daily.never_fits(demand(60_000, 1_000)).unwrap();
    assert!(why.contains("whole day (50000)"), "{why}");
    assert!(
        limiter(None, None)
            .never_fits(demand(10_000_000, 0))
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn settling_gives_back_what_the_server_did_not_count() {
    // OpenAI's rule: max_tokens is counted, so an answer gives nothing back, but a refusal
    // gives everything back and a bill above the estimate takes more.
    let l = limiter(None, Some(60_000));
    let mut t = l.reserve(demand(500, 400));
    t.ready().await;
    assert!(l.levels().1.unwrap().abs() < 1e-6);
    l.settle(
        &t,
        Outcome::Answered {
            input: 300,
            output: 10,
        },
    );
    assert!(l.levels().1.unwrap().abs() < 1e-6, "not given back");
    let mut refused = l.reserve(demand(100, 100));
    refused.ready().await;
    let before = l.levels().1.unwrap();
    l.settle(&refused, Outcome::Refused);
    assert!(
        (l.levels().1.unwrap() - (before + 200.0)).abs() < 1e-6,
        "refused: all back"
    );
    let mut more = l.reserve(demand(100, 100));
    more.ready().await;
    let before = l.levels().1.unwrap();
    l.settle(
        &more,
        Outcome::Answered {
            input: 150,
            output: 5,
        },
    );
    // Billed 150 prompt tokens where 100 were reserved (the estimate is raised from now on too).
    assert!((l.levels().1.unwrap() - (before - 50.0)).abs() < 1e-6);

    // Counting generated output: the unused part of max_tokens comes back.
    let generated = RateLimiter::new(
        "g",
        LimitSettings {
            tpm: Some(60_000),
            burst_seconds: 1.0,
            reserve_max_tokens: false,
            ..Default::default()
        },
    );
    let mut t = generated.reserve(demand(500, 400));
    t.ready().await;
    generated.settle(
        &t,
        Outcome::Answered {
            input: 500,
            output: 100,
        },
    );
    assert!((generated.levels().1.unwrap() - 300.0).abs() < 1e-6);
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_and_a_reconciliation_never_count_a_request_twice() {
    let l = limiter(None, Some(60_000));
    let mut first = l.reserve(demand(100, 100));
    first.ready().await;
    let mut second = l.reserve(demand(100, 100));
    second.ready().await;
    // Our level: 900 - 400 = 500. The server, answering the second request, has 200 left:
    // it counted more (another process on the account). Said often enough, the level
    // follows it.
    for _ in 0..DEFICIT_CONFIRMATIONS {
        l.observe(
            &second,
            &ServerLimits {
                limit_tokens: Some(60_000),
                remaining_tokens: Some(200),
                ..Default::default()
            },
            true,
        );
    }
    assert!((l.levels().1.unwrap() - 200.0).abs() < 1e-6);
    // The first request then turns out refused: the server's 200 already did not count it,
    // so giving its 200 tokens back now would count it a second time.
    l.settle(&first, Outcome::Refused);
    assert!((l.levels().1.unwrap() - 200.0).abs() < 1e-6);
    // A request reserved after the snapshot is still reconciled.
    let mut third = l.reserve(demand(100, 100));
    third.ready().await;
    l.settle(&third, Outcome::Refused);
    assert!((l.levels().1.unwrap() - 200.0).abs() < 1e-6);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_reservation_gives_its_share_back() {
    let l = limiter(Some(600), Some(60_000));
    let waiting = l.reserve(demand(400, 100));
    assert!((l.levels().1.unwrap() - 400.0).abs() < 1e-6);
    drop(waiting);
    assert!((l.levels().1.unwrap() - 900.0).abs() < 1e-6);
    assert!((l.levels().0.unwrap() - 9.0).abs() < 1e-6);
    assert_eq!(l.admitted_requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_pause_moves_waiters_back_keeping_their_spacing() {
    let l = std::sync::Arc::new(limiter(Some(600), None));
    // Spend the burst: the next five wait 100, 200, ... 500 ms.
    for _ in 0..9 {
        l.acquire(0).await;
    }
    let start = Instant::now();
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let l = l.clone();
        waiters.push(tokio::spawn(async move {
            l.acquire(0).await;
            Instant::now()
        }));
    }
    tokio::task::yield_now().await;
    // A 429 says: nothing for 2 s.
    l.pause(Duration::from_secs(2), Some(Dimension::Requests));
    let late = {
        let l = l.clone();
        tokio::spawn(async move {
            l.acquire(0).await;
            Instant::now()
        })
    };
    let mut times = Vec::new();
    for w in waiters {
        times.push(w.await.unwrap().duration_since(start));
    }
    times.push(late.await.unwrap().duration_since(start));
    times.sort();
    assert!(times[0] >= Duration::from_secs(2), "{times:?}");
    // Released one by one at the rate, not all at the end of the pause.
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(99),
            "released together: {times:?}"
        );
    }
    assert!(times[5] < Duration::from_millis(2700), "{times:?}");
}

/// A server's token bucket that counts prompts its own way: `server_prompt` per request (plus
/// max_tokens), full window of `limit / 60` per second held for one second.
struct FakeServer {
    limit: f64,
    level: f64,
    last: Instant,
}

impl FakeServer {
    fn new(limit: u64) -> FakeServer {
        FakeServer {
            limit: limit as f64,
            level: limit as f64 / 60.0,
            last: Instant::now(),
        }
    }

    /// Admits (debiting `charge`) or refuses; returns the headers it would send.
    fn arrive(&mut self, charge: f64) -> (bool, ServerLimits) {
        let now = Instant::now();
        let rate = self.limit / 60.0;
        let capacity = rate;
        self.level = (self.level + rate * (now - self.last).as_secs_f64()).min(capacity);
        self.last = now;
        let admitted = self.level >= charge;
        if admitted {
            self.level -= charge;
        }
        let reset = Duration::from_secs_f64((capacity - self.level) / rate);
        let headers = ServerLimits {
            limit_tokens: Some(self.limit as u64),
            remaining_tokens: Some(self.level.floor() as u64),
            reset_tokens: Some(reset),
            ..Default::default()
        };
        (admitted, headers)
    }
}

/// Sends `n` requests one after the other through `l` to `server`, which counts `factor` ×
/// our prompt estimate; returns how many it refused.
async fn drive(l: &RateLimiter, server: &mut FakeServer, factor: f64, n: usize) -> usize {
    let mut refused = 0;
    for _ in 0..n {
        let mut ticket = l.reserve(demand(400, 100));
        ticket.ready().await;
        let (admitted, headers) = server.arrive(400.0 * factor + 100.0);
        l.observe(&ticket, &headers, admitted);
        if admitted {
            l.settle(
                &ticket,
                Outcome::Answered {
                    input: 400,
                    output: 50,
                },
            );
        } else {
            refused += 1;
            l.settle(&ticket, Outcome::Refused);
            l.pause(Duration::from_millis(500), Some(Dimension::Tokens));
        }
    }
    refused
}

#[tokio::test(start_paused = true)]
async fn the_server_s_own_count_is_learned_from_its_headers() {
    // It counts half of our estimate (characters / 4 against a tokenizer count): the limiter
    // learns to reserve that, and so sends twice as many prompts.
    let l = limiter(None, Some(60_000));
    let mut server = FakeServer::new(60_000);
    drive(&l, &mut server, 0.5, 40).await;
    let ratio = l.prompt_ratio();
    assert!((ratio - 0.5 * 1.02).abs() < 0.02, "{ratio}");
    assert_eq!(
        l.charge(demand(400, 100)),
        100 + (400.0 * ratio).ceil() as u64
    );

    // It counts 1.5 × our estimate: refusals at first, none once learned.
    let l = limiter(None, Some(60_000));
    let mut server = FakeServer::new(60_000);
    let early = drive(&l, &mut server, 1.5, 40).await;
    assert!(early > 0, "the estimate was too low at first");
    let ratio = l.prompt_ratio();
    assert!((ratio - 1.5 * 1.02).abs() < 0.05, "{ratio}");
    assert_eq!(drive(&l, &mut server, 1.5, 100).await, 0);
}

/// Calls that go at once (a burst: room in the bucket) reach the server in any order, so
/// their snapshots say nothing about where our count stands: learning starts from the calls
/// that waited their turn, and is exact from there.
#[tokio::test(start_paused = true)]
async fn a_burst_arriving_out_of_order_does_not_skew_the_learned_count() {
    let l = limiter(None, Some(60_000));
    let mut server = FakeServer::new(60_000);
    let mut burst: Vec<_> = (0..3).map(|_| l.reserve(demand(200, 100))).collect();
    for ticket in burst.iter_mut() {
        ticket.ready().await;
    }
    // The last overtook the others on the way: the server counted it first, so its snapshot
    // (700 left) counts one call where our count has all three.
    for i in [2, 0, 1] {
        let (admitted, headers) = server.arrive(300.0);
        assert!(admitted);
        l.observe(&burst[i], &headers, true);
    }
    for ticket in &burst {
        l.settle(
            ticket,
            Outcome::Answered {
                input: 200,
                output: 50,
            },
        );
    }
    assert_eq!(drive(&l, &mut server, 1.0, 20).await, 0);
    let ratio = l.prompt_ratio();
    assert!((ratio - 1.02).abs() < 0.005, "{ratio}");
}

/// The learned ratio carries a 2 % margin, so our price runs above the server's count and
/// its bucket keeps a growing surplus. Its snapshots give that back: over a long run we send
/// at the server's limit, not 2 % below it, and still meet no 429.
#[tokio::test(start_paused = true)]
async fn the_margin_s_surplus_is_taken_back_from_the_server_s_snapshots() {
    let l = limiter(None, Some(60_000));
    let mut server = FakeServer::new(60_000);
    drive(&l, &mut server, 1.0, 40).await;
    assert!(
        l.prompt_ratio() > 1.01,
        "the margin is on: {}",
        l.prompt_ratio()
    );
    let start = Instant::now();
    assert_eq!(drive(&l, &mut server, 1.0, 200).await, 0);
    // The server counts 500 a call and refills 1,000 a second: 100 s for 200 calls at its
    // limit; at our price (408 + 100) it would take 101.6 s.
    let took = start.elapsed().as_secs_f64();
    assert!(took < 100.5, "{took} s");
}

/// A 429 that came while the headers showed room for the call says they describe more than
/// the provider enforces (a minute described, a second enforced): their room is taken back
/// no more, and the margin stays (against an independent server of that kind, taking it back
/// met a 429 every second or two: 99 of 306 requests refused).
#[tokio::test(start_paused = true)]
async fn headers_that_showed_room_for_a_refused_call_raise_nothing_after_it() {
    let l = limiter(None, Some(60_000));
    let mut server = FakeServer::new(60_000);
    drive(&l, &mut server, 1.0, 40).await;
    let refused = l.acquire(500).await;
    let room = ServerLimits {
        limit_tokens: Some(60_000),
        remaining_tokens: Some(900),
        reset_tokens: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    l.observe(&refused, &room, false);
    l.settle(&refused, Outcome::Refused);
    drop(refused);
    let start = Instant::now();
    assert_eq!(drive(&l, &mut server, 1.0, 200).await, 0);
    // At our price (408 + 100 a call), as in the test above before its surplus came back.
    let took = start.elapsed().as_secs_f64();
    assert!(took > 101.0, "{took} s");
    // Nor is a wider window they show tried.
    let ticket = l.acquire(500).await;
    let minute = ServerLimits {
        reset_tokens: Some(Duration::from_secs(59)),
        remaining_tokens: Some(1_000),
        ..room
    };
    l.observe(&ticket, &minute, true);
    let bucket = |l: &RateLimiter| {
        let s = l.lock();
        let b = s.tokens_per_minute.as_ref().unwrap();
        (b.capacity, b.wider.started)
    };
    assert_eq!(bucket(&l), (900.0, false));
}

/// What was taken back is given back when the cushion shrinks: here the server starts
/// counting 10 % more (a new prompt its limiter prices differently) and the learned ratio
/// needs a while to follow; the tokens raised before cover that while, without a 429 (3
/// without the give-back).
#[tokio::test(start_paused = true)]
async fn what_was_taken_back_is_given_back_when_the_cushion_shrinks() {
    let l = limiter(None, Some(60_000));
    let mut server = FakeServer::new(60_000);
    drive(&l, &mut server, 1.0, 240).await;
    assert!(l.lock().tokens_per_minute.as_ref().unwrap().raised > 500.0);
    assert_eq!(drive(&l, &mut server, 1.1, 200).await, 0);
}

/// A limit set below the account's is the user's choice: the server's surplus is not ours.
#[tokio::test(start_paused = true)]
async fn a_limit_below_the_account_s_is_not_raised_to_the_server_s() {
    let l = limiter(None, Some(30_000));
    let mut server = FakeServer::new(60_000);
    drive(&l, &mut server, 1.0, 20).await;
    let start = Instant::now();
    drive(&l, &mut server, 1.0, 100).await;
    // 100 calls of about 508 at 500 a second: about 100 s, not the server's 50.
    let took = start.elapsed().as_secs_f64();
    assert!(took > 99.0, "{took} s");
}

#[tokio::test(start_paused = true)]
async fn headers_teach_unknown_limits_and_lower_the_level() {
    let l = limiter(None, None);
    assert!(!l.knows_limits());
    let r = l.acquire(100).await;
    l.observe(
        &r,
        &ServerLimits {
            limit_requests: Some(1200),
            remaining_requests: Some(3),
            ..Default::default()
        },
        true,
    );
    assert!(l.knows_limits());
    assert_eq!(l.per_minute(), (Some(1200), None));
    // The server had 3 left; our fresh bucket thought 18: it now believes the server.
    let level = l.levels().0.unwrap();
    assert!((level - 3.0).abs() < 1e-6, "{level}");
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_does_not_forget_later_reservations() {
    let l = limiter(Some(600), None);
    let first = l.acquire(0).await;
    for _ in 0..4 {
        l.acquire(0).await;
    }
    // Our bucket (9) has 4 left. The server saw only the first call and has 6 left; our 4
    // later calls still count against that: 2 left, not 6.
    for _ in 0..DEFICIT_CONFIRMATIONS {
        l.observe(
            &first,
            &ServerLimits {
                limit_requests: Some(600),
                remaining_requests: Some(6),
                ..Default::default()
            },
            true,
        );
    }
    let level = l.levels().0.unwrap();
    assert!((level - 2.0).abs() < 1e-6, "{level}");
}

/// A call that reached the server late was overtaken by calls sent after it: its snapshot
/// counts them, and so does what we reserved since. Alone, it must not lower the level (that
/// throughput would be lost for good); a deficit in every snapshot (someone else spending the
/// account) does, by the least the snapshots say.
#[tokio::test(start_paused = true)]
async fn one_late_snapshot_does_not_lower_the_level_a_lasting_deficit_does() {
    let l = limiter(Some(600), None);
    let headers = |remaining| ServerLimits {
        limit_requests: Some(600),
        remaining_requests: Some(remaining),
        ..Default::default()
    };
    let late = l.acquire(0).await;
    let mut overtakers = Vec::new();
    for _ in 0..3 {
        overtakers.push(l.acquire(0).await);
    }
    // Our bucket (9) has 5 left, and so has the server once all four arrived. The three sent
    // after the late call arrived first (8, 7, 6 left); the late call's snapshot (5 left)
    // counts them, and so do the three reserved after it: it says 2.
    for (t, remaining) in overtakers.iter().zip([8, 7, 6]) {
        l.observe(t, &headers(remaining), true);
    }
    l.observe(&late, &headers(5), true);
    let level = l.levels().0.unwrap();
    assert!((level - 5.0).abs() < 1e-6, "{level}");

    // Another process spends 2, and every later snapshot says so: lowered by 2, once they
    // all agree.
    let calls = [l.acquire(0).await, l.acquire(0).await, l.acquire(0).await];
    // We think 5 - 3 = 2 left; the server had 5 - 2 = 3 before our three.
    l.observe(&calls[0], &headers(2), true);
    assert!(
        (l.levels().0.unwrap() - 2.0).abs() < 1e-6,
        "one snapshot is not enough"
    );
    l.observe(&calls[1], &headers(1), true);
    l.observe(&calls[2], &headers(0), true);
    let level = l.levels().0.unwrap();
    assert!(
        level.abs() < 1e-6,
        "lowered to what the server says: {level}"
    );
}

/// Callers queued behind a long wait hold no reservation until their turn is near, so they
/// pay the price in force then: here the bill of the first call shows the server counts
/// twice the estimate, and everyone not yet near their turn is charged that.
#[tokio::test(start_paused = true)]
async fn calls_queued_behind_a_long_wait_are_priced_when_their_turn_comes() {
    let l = std::sync::Arc::new(limiter(None, Some(60_000)));
    let mut first = l.reserve(demand(400, 100));
    first.ready().await;
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(async move {
                let mut ticket = l.reserve_in_turn(demand(400, 100)).await;
                let (tokens, reserved_ahead) = (ticket.tokens, ticket.release() - Instant::now());
                ticket.ready().await;
                (tokens, reserved_ahead)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    l.settle(
        &first,
        Outcome::Answered {
            input: 800,
            output: 50,
        },
    );
    let mut charged = Vec::new();
    for caller in callers {
        let (tokens, ahead) = caller.await.unwrap();
        // 1000 tokens/s: at most RESERVE_AHEAD plus its own cost ahead.
        assert!(
            ahead <= RESERVE_AHEAD + Duration::from_millis(tokens),
            "{ahead:?}"
        );
        charged.push(tokens);
    }
    // Two were within RESERVE_AHEAD of their turn when the bill came (900 - 500 - 500 = 0.1 s
    // of debt after them); the rest pay what the server counts.
    assert_eq!(charged, [500, 500, 900, 900, 900, 900, 900, 900, 900, 900]);
}

/// A 429 pause resets the level, so deficits seen before it no longer count towards the ones
/// that must agree before the level is lowered.
#[tokio::test(start_paused = true)]
async fn a_pause_forgets_the_deficits_seen_before_it() {
    let l = limiter(Some(600), None);
    let headers = |remaining| ServerLimits {
        limit_requests: Some(600),
        remaining_requests: Some(remaining),
        ..Default::default()
    };
    let calls = [
        l.acquire(0).await,
        l.acquire(0).await,
        l.acquire(0).await,
        l.acquire(0).await,
    ];
    // Our bucket (9) has 5 left; two snapshots say the server had none: not yet enough.
    l.observe(&calls[0], &headers(0), true);
    l.observe(&calls[1], &headers(0), true);
    assert!((l.levels().0.unwrap() - 5.0).abs() < 1e-6);
    l.pause(Duration::from_millis(100), Some(Dimension::Requests));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = l.acquire(0).await;
    let level = l.levels().0.unwrap();
    // One snapshot after the pause says less again; with the two from before it would be
    // three in a row.
    l.observe(&after, &headers(0), true);
    assert!(
        (l.levels().0.unwrap() - level).abs() < 1e-6,
        "{level} -> {:?}",
        l.levels().0
    );
}

/// A provider that enforces its request rate over a window of `window` requests (its bucket
/// holds that many), and tells it only through its reset header: `remaining + reset × rate`
/// is what its bucket holds when full. Unless it `shows` another window in its headers: then
/// they describe a bucket of that size (debited alike), as a provider that describes its
/// whole minute and enforces a second does.
struct WindowServer {
    rate: f64,
    window: f64,
    level: f64,
    shows: f64,
    shown: f64,
    last: Instant,
}

impl WindowServer {
    fn new(rpm: u64, window: f64) -> WindowServer {
        WindowServer::showing(rpm, window, window)
    }

    fn showing(rpm: u64, window: f64, shows: f64) -> WindowServer {
        WindowServer {
            rate: rpm as f64 / 60.0,
            window,
            level: window,
            shows,
            shown: shows,
            last: Instant::now(),
        }
    }

    fn arrive(&mut self) -> (bool, ServerLimits) {
        let now = Instant::now();
        let refill = self.rate * (now - self.last).as_secs_f64();
        self.level = (self.level + refill).min(self.window);
        self.shown = (self.shown + refill).min(self.shows);
        self.last = now;
        let admitted = self.level >= 1.0;
        if admitted {
            self.level -= 1.0;
            self.shown = (self.shown - 1.0).max(0.0);
        }
        let headers = ServerLimits {
            limit_requests: Some((self.rate * 60.0) as u64),
            remaining_requests: Some(self.shown.floor() as u64),
            reset_requests: Some(Duration::from_secs_f64(
                (self.shows - self.shown) / self.rate,
            )),
            ..Default::default()
        };
        (admitted, headers)
    }
}

/// Sends `n` calls at once through a fresh limiter told `rpm: 600` (and `burst_seconds: 1`)
/// to a 600-rpm server whose window holds `window` requests; each reaches it 0–5 ms after it
/// goes (jitter on the way) and is answered 50 ms later; a refused call waits the pause and
/// goes again. Returns (refusals, seconds until the last was admitted).
async fn drive_concurrently(window: f64, n: u64) -> (usize, f64) {
    drive_to(WindowServer::new(600, window), 600, n).await
}

/// The same with any server, and the limiter told `rpm`.
async fn drive_to(server: WindowServer, rpm: u64, n: u64) -> (usize, f64) {
    let l = std::sync::Arc::new(fresh_limiter(Some(rpm), None));
    let server = std::sync::Arc::new(Mutex::new(server));
    let start = Instant::now();
    let mut calls = Vec::new();
    for i in 0..n {
        let (l, server) = (l.clone(), server.clone());
        calls.push(tokio::spawn(async move {
            let mut refused = 0;
            loop {
                let mut ticket = l.reserve_in_turn(demand(0, 0)).await;
                ticket.ready().await;
                tokio::time::sleep(Duration::from_millis((i * 7 + refused) % 6)).await;
                let (admitted, headers) = server.lock().unwrap().arrive();
                let arrived = Instant::now();
                tokio::time::sleep(Duration::from_millis(50)).await;
                l.observe(&ticket, &headers, admitted);
                if admitted {
                    l.settle(
                        &ticket,
                        Outcome::Answered {
                            input: 0,
                            output: 0,
                        },
                    );
                    return (refused as usize, arrived);
                }
                refused += 1;
                l.settle(&ticket, Outcome::Refused);
                // As the policy does (no `retry-after` here).
                let (which, reset) = headers.exhausted();
                let wait =
                    reset.map_or(Duration::from_secs(1), |r| l.refill_time(which, r, &ticket));
                l.pause(wait, which);
            }
        }));
    }
    let (mut refused, mut last) = (0, start);
    for call in calls {
        let (r, arrived) = call.await.unwrap();
        refused += r;
        last = last.max(arrived);
    }
    (refused, (last - start).as_secs_f64())
}

/// 600 rpm enforced over a tenth of a second (a window of one request) while `burst_seconds`
/// says 1 s (nine at once). Held to what the configuration says, calls would go the instant
/// the provider has room again, and about half would meet a 429 from the jitter alone. The
/// first answer's reset header tells the window: bursts shrink to it, and calls go one at a
/// time, spaced wider than the rate by the share held back.
#[tokio::test(start_paused = true)]
async fn a_window_shorter_than_burst_seconds_is_learned_from_the_reset_header() {
    let (refused, took) = drive_concurrently(1.0, 100).await;
    assert!(refused <= 1, "{refused} refused");
    // 100 calls at 10/s held back 10 %: about 11 s (never the provider's 9.9 s, by design).
    assert!((10.5..11.5).contains(&took), "{took} s");

    // A window of two requests keeps the share beside a whole request: no spacing, and
    // bursts of 1.8.
    let (refused, took) = drive_concurrently(2.0, 100).await;
    assert!(refused <= 1, "{refused} refused");
    assert!((9.8..10.3).contains(&took), "{took} s");
}

/// OpenAI's and Anthropic's reset headers describe their whole minute, and both say a limit
/// may be enforced over a shorter window. A minute that is one: 300 calls at 600 rpm, which
/// the provider takes in a few seconds (its bucket holds 600). Held to `burst_seconds`, they
/// took 30 s; the trial (half our burst beyond our window, then two more for each call the
/// provider takes) doubles each round trip and sends them all in about a second of round
/// trips, leaving a cushion of our own window, with no 429.
#[tokio::test(start_paused = true)]
async fn a_wider_window_the_headers_show_is_tried_and_kept_while_the_provider_takes_it() {
    let (refused, took) = drive_to(WindowServer::new(600, 600.0), 600, 300).await;
    assert_eq!(refused, 0);
    assert!(took < 3.0, "{took} s");

    // 1,500 calls: ~590 at once, the rest at the rate (91 s, not 150). The burst's end may
    // meet a 429 (calls overtaken on the way are in neither count); it pauses for one call's
    // refill (0.1 s), not until the minute is full again, as the reset header says (60 s).
    let (refused, took) = drive_to(WindowServer::new(600, 600.0), 600, 1_500).await;
    assert!(refused <= 2, "{refused} refused");
    assert!(took < 95.0, "{took} s");

    // A lower limit than the account's is the user's choice: kept to its own burst.
    let (refused, took) = drive_to(WindowServer::new(1_200, 1_200.0), 600, 100).await;
    assert_eq!(refused, 0);
    assert!(took > 9.0, "{took} s");
}

/// A provider that shows a minute and enforces a second (a window of 10 at 600 rpm): the
/// first step of the trial meets 429s, which end it for good. Only that step is refused
/// (half our burst: 4 or 5 calls), and the rest go at the rate as before.
#[tokio::test(start_paused = true)]
async fn a_429_while_trying_a_wider_window_ends_the_trial() {
    let (refused, took) = drive_to(WindowServer::showing(600, 10.0, 600.0), 600, 300).await;
    assert!((1..=6).contains(&refused), "{refused} refused");
    assert!((29.0..32.0).contains(&took), "{took} s");
}

/// 60 rpm enforced per second (a window of one request, from the configuration alone) is
/// spaced like the short window.
#[tokio::test(start_paused = true)]
async fn one_request_per_window_is_spaced() {
    let l = limiter(Some(60), None);
    let start = Instant::now();
    for _ in 0..4 {
        l.acquire(0).await;
    }
    // 0.1 s for the first (its share), then one every 1.1 s.
    let took = start.elapsed().as_secs_f64();
    assert!((took - 3.4).abs() < 0.01, "{took} s");
}

/// A 429 with nothing left and no `retry-after`: a bucket that refills continuously (its
/// reset is the window learned, at the rate) has room for the next call a tenth of a second
/// later at 600 rpm, not when the whole minute is back; a window that comes back all at once
/// at its end (any other reset) is waited for.
#[tokio::test(start_paused = true)]
async fn a_spent_window_pauses_for_one_call_s_refill_where_it_refills_continuously() {
    let l = limiter(Some(600), None);
    let first = l.acquire(0).await;
    let minute = |remaining: u64, reset: f64| ServerLimits {
        limit_requests: Some(600),
        remaining_requests: Some(remaining),
        reset_requests: Some(Duration::from_secs_f64(reset)),
        ..Default::default()
    };
    l.observe(&first, &minute(599, 0.1), true);
    let refused = l.acquire(0).await;
    let (which, reset) = minute(0, 60.0).exhausted();
    assert_eq!(which, Some(Dimension::Requests));
    let wait = l.refill_time(which, reset.unwrap(), &refused);
    assert_eq!(wait, Duration::from_millis(100));
    let (which, reset) = minute(0, 20.0).exhausted();
    assert_eq!(
        l.refill_time(which, reset.unwrap(), &refused),
        Duration::from_secs(20)
    );
}

/// A call sent beyond our window and refused ends the trial even when the 429 carries no
/// account headers (and so pauses nothing): our own window again, and nothing beyond it.
#[tokio::test(start_paused = true)]
async fn a_refusal_of_a_call_beyond_our_window_ends_the_trial_without_headers() {
    let l = limiter(Some(600), None);
    let first = l.acquire(0).await;
    let minute = ServerLimits {
        limit_requests: Some(600),
        remaining_requests: Some(599),
        reset_requests: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    l.observe(&first, &minute, true);
    let capacity = |l: &RateLimiter| l.lock().requests_per_minute.as_ref().unwrap().capacity;
    assert!(
        capacity(&l) > 9.0,
        "the trial lets more go: {}",
        capacity(&l)
    );
    // Our burst (8 left of 9) goes first; the trial's credit (half of it) after.
    let mut beyond = None;
    for _ in 0..12 {
        let ticket = l.acquire(0).await;
        if ticket.beyond[0] > 0.0 {
            beyond = Some(ticket);
            break;
        }
    }
    let ticket = beyond.expect("a call goes beyond our window");
    l.observe(&ticket, &ServerLimits::default(), false);
    l.settle(&ticket, Outcome::Refused);
    assert!((capacity(&l) - 9.0).abs() < 1e-9, "{}", capacity(&l));
    assert_eq!(
        l.lock().requests_per_minute.as_ref().unwrap().wider.credit,
        0.0
    );
    // And it is not tried again.
    l.observe(&first, &minute, true);
    assert!((capacity(&l) - 9.0).abs() < 1e-9, "{}", capacity(&l));
}

/// A provider that counts tokens its own way (`factor` × our prompt estimate, plus
/// `max_tokens`) in a bucket of `window` seconds of its rate, and whose headers describe a
/// bucket of `shows` seconds (debited alike) as it stands when it answers (`headers`, asked
/// once the answer's time has passed): the refill while answering is in the snapshot.
struct AnsweringServer {
    rate: f64,
    window: f64,
    level: f64,
    shows: f64,
    shown: f64,
    last: Instant,
    /// No rate-limit headers at all: a 429 says in words only what refused the call.
    silent: bool,
    /// Its 429 says what it counted the refused call as.
    says_requested: bool,
    /// Its headers describe a window so wide, against a rate it is never near, that it is
    /// full again whenever it answers.
    always_full: bool,
}

impl AnsweringServer {
    fn new(tpm: u64, window: f64, shows: f64) -> AnsweringServer {
        let rate = tpm as f64 / 60.0;
        AnsweringServer {
            rate,
            window: rate * window,
            level: rate * window,
            shows: rate * shows,
            shown: rate * shows,
            last: Instant::now(),
            silent: false,
            says_requested: true,
            always_full: false,
        }
    }

    /// Sends no headers; its 429s say (as OpenAI's message words it) the limit, what it
    /// counts used of its window, and what it counted the refused call as.
    fn silent(tpm: u64, window: f64) -> AnsweringServer {
        AnsweringServer {
            silent: true,
            ..AnsweringServer::new(tpm, window, window)
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let refill = self.rate * (now - self.last).as_secs_f64();
        self.level = (self.level + refill).min(self.window);
        self.shown = (self.shown + refill).min(self.shows);
        self.last = now;
    }

    fn arrive(&mut self, charge: f64) -> bool {
        self.refill();
        let admitted = self.level >= charge;
        if admitted {
            self.level -= charge;
            self.shown = (self.shown - charge).max(0.0);
        }
        admitted
    }

    /// What the answer to a call charged `charge` carries.
    fn answer(&mut self, admitted: bool, charge: f64) -> ServerLimits {
        if admitted {
            return if self.silent {
                ServerLimits::default()
            } else {
                self.headers()
            };
        }
        let limit = (self.rate * 60.0) as u64;
        let said = if self.silent {
            let used = (self.window - self.level).max(0.0) as u64;
            ServerLimits {
                limit_tokens: Some(limit),
                remaining_tokens: Some(limit - used),
                ..Default::default()
            }
        } else {
            self.headers()
        };
        ServerLimits {
            refused_by: Some(Dimension::Tokens),
            requested_tokens: self.says_requested.then(|| charge.ceil() as u64),
            ..said
        }
    }

    fn headers(&mut self) -> ServerLimits {
        self.refill();
        if self.always_full {
            self.shown = self.shows;
        }
        ServerLimits {
            limit_tokens: Some((self.rate * 60.0) as u64),
            remaining_tokens: Some(self.shown.floor() as u64),
            reset_tokens: Some(Duration::from_secs_f64(
                (self.shows - self.shown) / self.rate,
            )),
            ..Default::default()
        }
    }
}

/// `n` calls (prompt 600 by our count, `max_tokens` 60), 8 at a time, through a limiter
/// told `tpm` to `server`, which counts `factor` × the prompt and answers in 0.4–0.9 s; a
/// refused call pauses everyone 1 s (no `retry-after`, no dimension named) and goes again.
/// Returns (refusals, seconds until the last was answered, the price learned per prompt
/// token).
async fn drive_tokens(
    server: AnsweringServer,
    tpm: Option<u64>,
    factor: f64,
    n: u64,
) -> (usize, f64, f64) {
    let l = std::sync::Arc::new(fresh_limiter(None, tpm));
    let server = std::sync::Arc::new(Mutex::new(server));
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    let start = Instant::now();
    let mut calls = Vec::new();
    for i in 0..n {
        let (l, server, slots) = (l.clone(), server.clone(), slots.clone());
        calls.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            let mut refused = 0;
            loop {
                let mut ticket = l.reserve_in_turn(demand(600, 60)).await;
                ticket.ready().await;
                let charge = 600.0 * factor + 60.0;
                let admitted = server.lock().unwrap().arrive(charge);
                let answer = if admitted { 400 + (i * 137) % 500 } else { 5 };
                tokio::time::sleep(Duration::from_millis(answer)).await;
                let headers = server.lock().unwrap().answer(admitted, charge);
                l.observe(&ticket, &headers, admitted);
                if admitted {
                    let billed = Outcome::Answered {
                        input: 600,
                        output: 20,
                    };
                    l.settle(&ticket, billed);
                    return refused;
                }
                refused += 1;
                l.settle(&ticket, Outcome::Refused);
                let (which, _) = headers.exhausted();
                l.pause(Duration::from_secs(1), which);
            }
        }));
    }
    let mut refused = 0;
    for call in calls {
        refused += call.await.unwrap();
    }
    let took = start.elapsed().as_secs_f64();
    (refused, took, l.prompt_ratio())
}

/// Headers taken when the provider answers, of a bucket that holds the whole minute (as
/// OpenAI's describe theirs) while a second is enforced: we run below the minute's rate, so
/// the bucket they describe is full again by the time most answers come, and a full window
/// hides what the call was charged. Read as taken on arrival, those snapshots taught a price
/// far below the server's count (0.25 of our estimate here, where it counts 0.8; against
/// `benches/independent_server.py`, an eighth of its count, and a third of the calls
/// refused); the price is learned from the snapshots that show the charge, with the refill
/// while answering.
#[tokio::test(start_paused = true)]
async fn headers_taken_when_answering_teach_the_server_s_count() {
    let server = AnsweringServer {
        says_requested: false,
        ..AnsweringServer::new(60_000, 1.0, 60.0)
    };
    let (refused, took, ratio) = drive_tokens(server, Some(60_000), 0.8, 300).await;
    assert!((0.78..0.9).contains(&ratio), "learned {ratio}");
    assert!(refused <= 8, "{refused} refused");
    // 300 calls of 540 tokens at 1,000 a second: 162 s at the server's rate.
    assert!(took < 180.0, "{took} s");
}

/// The same server, its 429s saying what it counted: the price is that until the headers
/// teach it. The first pairs of snapshots, read as taken on arrival before a full one showed
/// they are not, taught charges near nothing; kept in the sums, they left the price the
/// headers taught at 0.74 where the server counts 0.8: 256 refusals for 300 calls.
#[tokio::test(start_paused = true)]
async fn pairs_read_before_the_snapshots_were_known_to_be_taken_when_answering_are_dropped() {
    let server = AnsweringServer::new(60_000, 1.0, 60.0);
    let (refused, took, ratio) = drive_tokens(server, Some(60_000), 0.8, 300).await;
    assert!((0.78..0.9).contains(&ratio), "learned {ratio}");
    assert!(refused <= 8, "{refused} refused");
    assert!(took < 180.0, "{took} s");
}

/// Headers taken when answering, of a window that is full again by then, every time: none
/// shows what a call was charged. The server counts 0.8 of our estimate,
/// and its 429s say so ("Requested 540" for the call it refused). Priced by our estimate (as
/// the bill says: 1.0), calls went a fifth slower than the server allows.
#[tokio::test(start_paused = true)]
async fn a_429_saying_what_it_counted_prices_calls_where_headers_cannot() {
    let server = AnsweringServer {
        always_full: true,
        ..AnsweringServer::new(60_000, 1.0, 60.0)
    };
    let (refused, took, ratio) = drive_tokens(server, Some(60_000), 0.8, 300).await;
    assert!((0.78..0.86).contains(&ratio), "learned {ratio}");
    assert!(refused <= 8, "{refused} refused");
    // 300 calls of 540 tokens at 1,000 a second: 162 s at the server's rate (198 s at 660).
    assert!(took < 180.0, "{took} s");
}

/// Without any header, what a 429 says the server counted is not the price: the tokenizer's,
/// above that count here, keeps 429s rarer on a short window.
#[tokio::test(start_paused = true)]
async fn without_headers_a_429_s_count_is_not_the_price() {
    let (_, _, ratio) = drive_tokens(AnsweringServer::silent(60_000, 1.0), None, 0.8, 100).await;
    assert_eq!(ratio, 1.0);
}
