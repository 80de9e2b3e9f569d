//! The real [`Concurrency`] against a deterministic model of an LLM provider, in paused time.
//!
//! The provider takes `capacity` calls at once and refuses the rest at once (429 with
//! `retry-after: 1`, or 503 with no hint); an answer has `0.3–1.0 × max_tokens` output tokens
//! and takes `(base + per_token × tokens) × latency_factor × (1 + load_factor × in_flight /
//! capacity)`, `base` lognormal around its median (as in pipe-sim). Phases change the capacity or the latency factor mid-run. Callers behave like
//! `CallPolicy`: take a slot, call, record, give the slot back, and after a refusal wait as the
//! retry loop does (retry-after + up to 10 %, or full-jitter exponential backoff) before
//! trying the same request again.
//!
//! Goals asserted for every scenario (issue 7): at least 90 % of the hidden capacity in flight
//! within 30 s of the start and of every change, held after that, at most 3 % of attempts
//! refused, and never below the floor before the first refusal.

use super::*;
use std::sync::Arc;
use std::sync::Mutex as StdMutex;

#[derive(Clone, Copy, Debug)]
struct Phase {
    at_s: f64,
    latency_factor: f64,
    capacity: usize,
    /// Callers that call in this phase (the rest idle): a pipeline whose stage waits on a
    /// slower one downstream calls less than its concurrency, then all at once again.
    demand: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Refusal {
    /// 429 `retry-after: 1`, no account state.
    TooManyRequests,
    /// 503, no retry-after: the caller backs off exponentially.
    Unavailable,
}

#[derive(Clone, Debug)]
struct Scenario {
    name: &'static str,
    phases: Vec<Phase>,
    /// One entry per stage sharing the limit: (max_tokens, callers).
    stages: Vec<(u64, usize)>,
    /// Median and lognormal sigma of the part of latency that does not depend on length.
    base_s: f64,
    base_sigma: f64,
    per_token_s: f64,
    load_factor: f64,
    refusal: Refusal,
    seconds: f64,
    settings: AdaptiveSettings,
}

impl Scenario {
    /// The setting: capacity 40, 0.3 s + 20 ms per output token, answers 30–100 % of
    /// `max_tokens` = 100 (0.9–2.3 s), 64 callers (the llm stage's default concurrency).
    fn base(name: &'static str) -> Scenario {
        Scenario {
            name,
            phases: vec![phase(0.0, 1.0, 40)],
            stages: vec![(100, 64)],
            base_s: 0.3,
            base_sigma: 0.3,
            per_token_s: 0.02,
            load_factor: 0.0,
            refusal: Refusal::TooManyRequests,
            seconds: 180.0,
            settings: AdaptiveSettings::up_to(256),
        }
    }
}

fn phase(at_s: f64, latency_factor: f64, capacity: usize) -> Phase {
    Phase {
        at_s,
        latency_factor,
        capacity,
        demand: usize::MAX,
    }
}

struct ProviderState {
    in_flight: usize,
    answered: u64,
    refused: u64,
    first_refusal_s: Option<f64>,
    /// When each refusal was given (seconds since start).
    refusals_s: Vec<f64>,
    rng: fastrand::Rng,
}

struct Provider {
    scenario: Scenario,
    start: Instant,
    state: StdMutex<ProviderState>,
}

impl Provider {
    fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn phase(&self) -> Phase {
        let t = self.elapsed_s();
        let phases = &self.scenario.phases;
        *phases
            .iter()
            .rev()
            .find(|p| p.at_s <= t)
            .unwrap_or(&phases[0])
    }

    fn draw(&self) -> f64 {
        self.state.lock().unwrap().rng.f64()
    }

    /// One request: `Some(output tokens)` or `None` (refused).
    async fn call(&self, max_tokens: u64) -> Option<u64> {
        let phase = self.phase();
        let s = &self.scenario;
        let (tokens, latency) = {
            let mut st = self.state.lock().unwrap();
            if st.in_flight >= phase.capacity {
                st.refused += 1;
                let now = self.elapsed_s();
                st.first_refusal_s.get_or_insert(now);
                st.refusals_s.push(now);
                None
            } else {
                st.in_flight += 1;
                let tokens = ((0.3 + 0.7 * st.rng.f64()) * max_tokens as f64).round() as u64;
                let load = 1.0 + s.load_factor * st.in_flight as f64 / phase.capacity as f64;
                // Box-Muller: a standard normal draw.
                let normal = (-2.0 * (1.0 - st.rng.f64()).ln()).sqrt()
                    * (std::f64::consts::TAU * st.rng.f64()).cos();
                let base = s.base_s * (s.base_sigma * normal).exp();
                let latency = (base + s.per_token_s * tokens as f64) * phase.latency_factor * load;
                Some((tokens, latency))
            }
        }
        .unzip();
        let Some(latency) = latency else {
            // A refusal comes back fast, but not instantly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            return None;
        };
        tokio::time::sleep(Duration::from_secs_f64(latency)).await;
        let mut st = self.state.lock().unwrap();
        st.in_flight -= 1;
        st.answered += 1;
        tokens
    }
}

async fn caller(
    c: Arc<Concurrency>,
    p: Arc<Provider>,
    index: usize,
    max_tokens: u64,
    stop: Instant,
) {
    let mut refusals = 0u32;
    while Instant::now() < stop {
        if index >= p.phase().demand {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let slot = c.acquire().await;
        let started = Instant::now();
        let reply = p.call(max_tokens).await;
        let rtt = started.elapsed();
        match reply {
            Some(tokens) => {
                slot.record(
                    rtt,
                    Signal::Answered {
                        output_tokens: tokens,
                    },
                );
                drop(slot);
                refusals = 0;
            }
            None => {
                slot.record(rtt, Signal::BackPressure);
                drop(slot);
                refusals += 1;
                // As `RetrySettings::delay` with the defaults (0.5 s base, 30 s cap).
                let wait = match p.scenario.refusal {
                    Refusal::TooManyRequests => 1.0 + 0.1 * p.draw(),
                    Refusal::Unavailable => {
                        (0.5 * f64::from(1u32 << (refusals - 1).min(20))).min(30.0) * p.draw()
                    }
                };
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            }
        }
    }
}

#[derive(Debug)]
struct PhaseReport {
    at_s: f64,
    capacity: usize,
    /// Seconds from the phase's start to the first second averaging >= 90 % of capacity.
    to_90_percent_s: Option<f64>,
    /// Mean in flight / capacity from 30 s after the phase's start to its end.
    held: f64,
    /// The worst one-second mean in flight / capacity from the first second at 90 % on.
    worst_second: f64,
    mean_limit: f64,
}

#[derive(Debug)]
struct Report {
    name: &'static str,
    answered: u64,
    refused: u64,
    refused_share: f64,
    first_refusal_s: Option<f64>,
    refusals_s: Vec<f64>,
    /// Lowest limit seen before the first refusal.
    lowest_limit_before_refusal: usize,
    phases: Vec<PhaseReport>,
}

/// Runs a scenario, sampling the provider's in-flight count and the limit every 100 ms.
async fn run(scenario: Scenario) -> Report {
    let c = Arc::new(Concurrency::adaptive(scenario.settings));
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(scenario.seconds);
    let provider = Arc::new(Provider {
        scenario: scenario.clone(),
        start,
        state: StdMutex::new(ProviderState {
            in_flight: 0,
            answered: 0,
            refused: 0,
            first_refusal_s: None,
            refusals_s: Vec::new(),
            rng: fastrand::Rng::with_seed(7),
        }),
    });
    let mut tasks = Vec::new();
    for &(max_tokens, callers) in &scenario.stages {
        for index in 0..callers {
            tasks.push(tokio::spawn(caller(
                c.clone(),
                provider.clone(),
                index,
                max_tokens,
                stop,
            )));
        }
    }
    // (seconds since start, provider in flight, limit)
    let mut samples: Vec<(f64, usize, usize)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while Instant::now() < stop {
        tick.tick().await;
        let in_flight = provider.state.lock().unwrap().in_flight;
        samples.push((start.elapsed().as_secs_f64(), in_flight, c.limit()));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let st = provider.state.lock().unwrap();
    let first_refusal_s = st.first_refusal_s;
    let lowest_limit_before_refusal = samples
        .iter()
        .filter(|(t, _, _)| first_refusal_s.is_none_or(|r| *t < r))
        .map(|&(_, _, limit)| limit)
        .min()
        .unwrap_or(usize::MAX);
    let mut phases = Vec::new();
    for (i, p) in scenario.phases.iter().enumerate() {
        let end = scenario
            .phases
            .get(i + 1)
            .map_or(scenario.seconds, |n| n.at_s);
        let in_phase = |from: f64, to: f64| {
            samples
                .iter()
                .filter(move |(t, _, _)| *t >= from && *t < to)
                .copied()
        };
        let second_mean = |s: f64| {
            let v: Vec<usize> = in_phase(s, s + 1.0).map(|(_, f, _)| f).collect();
            v.iter().sum::<usize>() as f64 / v.len().max(1) as f64
        };
        let capacity = p.capacity as f64;
        let to_90_percent_s = (0..(end - p.at_s) as usize)
            .map(|s| s as f64)
            .find(|&s| second_mean(p.at_s + s) >= 0.9 * capacity);
        let settled: Vec<(f64, usize, usize)> = in_phase(p.at_s + 30.0, end).collect();
        let n = settled.len().max(1) as f64;
        let held = settled.iter().map(|s| s.1).sum::<usize>() as f64 / n / capacity;
        let mean_limit = settled.iter().map(|s| s.2).sum::<usize>() as f64 / n;
        let reached = p.at_s + to_90_percent_s.unwrap_or(end - p.at_s);
        let worst_second = (reached as usize..end as usize)
            .map(|s| second_mean(s as f64) / capacity)
            .fold(f64::INFINITY, f64::min);
        phases.push(PhaseReport {
            at_s: p.at_s,
            capacity: p.capacity,
            to_90_percent_s,
            held,
            worst_second,
            mean_limit,
        });
    }
    let report = Report {
        name: scenario.name,
        answered: st.answered,
        refused: st.refused,
        refused_share: st.refused as f64 / (st.answered + st.refused).max(1) as f64,
        first_refusal_s,
        refusals_s: st.refusals_s.clone(),
        lowest_limit_before_refusal,
        phases,
    };
    eprintln!("{report}");
    report
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} answered, {} refused ({:.2} %), first refusal at {:?} s, lowest limit before it {}",
            self.name,
            self.answered,
            self.refused,
            100.0 * self.refused_share,
            self.first_refusal_s.map(|s| (s * 10.0).round() / 10.0),
            self.lowest_limit_before_refusal
        )?;
        for p in &self.phases {
            writeln!(
                f,
                "  from {:>5.1} s, capacity {:>4}: 90 % after {:?} s; from +30 s: in flight {:.1} % of capacity (worst second after reaching 90 %: {:.1} %), mean limit {:.1}",
                p.at_s,
                p.capacity,
                p.to_90_percent_s,
                100.0 * p.held,
                100.0 * p.worst_second,
                p.mean_limit
            )?;
        }
        Ok(())
    }
}

/// The goals, for every phase of every scenario.
fn assert_goals(r: &Report, floor: usize) {
    assert!(
        r.refused_share <= 0.03,
        "{}: {:.2} % refused",
        r.name,
        100.0 * r.refused_share
    );
    assert!(
        r.lowest_limit_before_refusal >= floor,
        "{}: limit {} below the floor {floor} without any overload",
        r.name,
        r.lowest_limit_before_refusal
    );
    for p in &r.phases {
        let at = p.at_s;
        assert!(
            p.to_90_percent_s.is_some_and(|s| s <= 30.0),
            "{}: phase at {at} s: 90 % of capacity {} reached after {:?} s",
            r.name,
            p.capacity,
            p.to_90_percent_s
        );
        assert!(
            p.held >= 0.9,
            "{}: phase at {at} s held {:.1} % of capacity",
            r.name,
            100.0 * p.held
        );
        assert!(
            p.worst_second >= 0.75,
            "{}: phase at {at} s fell to {:.1} % of capacity for a second",
            r.name,
            100.0 * p.worst_second
        );
    }
}

#[tokio::test(start_paused = true)]
async fn latency_proportional_to_output_length() {
    let r = run(Scenario::base("output length")).await;
    assert_goals(&r, DEFAULT_MIN_CONCURRENCY);
    // A capacity that stays put is held, not given up by a tenth after each try of the level
    // above it (each try costs one refused call).
    assert!(r.phases[0].held >= 0.98, "{:?}", r.phases[0]);
}

#[tokio::test(start_paused = true)]
async fn three_times_slower_mid_run_and_back() {
    let r = run(Scenario {
        phases: vec![
            phase(0.0, 1.0, 40),
            phase(60.0, 3.0, 40),
            phase(150.0, 1.0, 40),
        ],
        seconds: 210.0,
        ..Scenario::base("3x slowdown")
    })
    .await;
    assert_goals(&r, DEFAULT_MIN_CONCURRENCY);
}

#[tokio::test(start_paused = true)]
async fn two_stages_with_different_max_tokens_share_one_limit() {
    let r = run(Scenario {
        stages: vec![(50, 64), (500, 64)],
        ..Scenario::base("two stages, max_tokens 50 and 500")
    })
    .await;
    assert_goals(&r, DEFAULT_MIN_CONCURRENCY);
}

#[tokio::test(start_paused = true)]
async fn capacity_drops_and_rises_again_with_429() {
    let r = run(Scenario {
        phases: vec![
            phase(0.0, 1.0, 40),
            phase(60.0, 1.0, 20),
            phase(120.0, 1.0, 40),
        ],
        ..Scenario::base("capacity 40 → 20 → 40, 429")
    })
    .await;
    assert_goals(&r, DEFAULT_MIN_CONCURRENCY);
    // The level last refused is tried within 5 s of calm, and a try that is not refused as
    // fast as refusals come passes in a fraction of a round trip (when a try needed a whole
    // round trip at that level to pass, 90 % came back after 6 s here).
    assert!(
        r.phases[2].to_90_percent_s <= Some(5.0),
        "{:?}",
        r.phases[2]
    );
}

/// With 503 (no retry-after: exponential backoff) and two stages, so that who retries when
/// matters (with one kind of caller every caller is alike).
#[tokio::test(start_paused = true)]
async fn capacity_drops_and_rises_again_with_503() {
    let r = run(Scenario {
        phases: vec![
            phase(0.0, 1.0, 40),
            phase(60.0, 1.0, 20),
            phase(120.0, 1.0, 40),
        ],
        refusal: Refusal::Unavailable,
        stages: vec![(50, 64), (500, 64)],
        ..Scenario::base("capacity 40 → 20 → 40, 503, two stages")
    })
    .await;
    assert_goals(&r, DEFAULT_MIN_CONCURRENCY);
}

/// Servers that batch get slower as they fill (here 2x at capacity): not a reason to hold less.
#[tokio::test(start_paused = true)]
async fn a_server_that_slows_as_it_fills() {
    let r = run(Scenario {
        load_factor: 1.0,
        ..Scenario::base("latency x (1 + in flight / capacity)")
    })
    .await;
    assert_goals(&r, DEFAULT_MIN_CONCURRENCY);
}

/// No overload at all, latency swinging 3x both ways: the limit grows to the demand and never
/// goes below the floor.
#[tokio::test(start_paused = true)]
async fn latency_swings_without_overload_never_cut() {
    let floor = 8;
    let r = run(Scenario {
        phases: vec![
            phase(0.0, 1.0, 1000),
            phase(40.0, 3.0, 1000),
            phase(80.0, 1.0, 1000),
            phase(120.0, 0.33, 1000),
            phase(160.0, 3.0, 1000),
        ],
        seconds: 200.0,
        settings: AdaptiveSettings {
            min: floor,
            initial: floor,
            max: 256,
        },
        ..Scenario::base("latency swings, no overload")
    })
    .await;
    assert_eq!(r.refused, 0);
    assert!(r.lowest_limit_before_refusal >= floor);
    // Every caller in flight (64) from a few seconds in, whatever the latency.
    for p in &r.phases[1..] {
        assert!(p.mean_limit >= 64.0, "{p:?}");
    }
}

/// A small, fast server (8 at once, 40 ms calls): each probe of the level last refused costs a
/// larger share of the calls than at 40 in flight.
#[tokio::test(start_paused = true)]
async fn a_small_fast_server() {
    let r = run(Scenario {
        phases: vec![phase(0.0, 1.0, 8)],
        base_s: 0.04,
        base_sigma: 0.1,
        per_token_s: 0.0,
        seconds: 60.0,
        ..Scenario::base("capacity 8, 40 ms")
    })
    .await;
    assert_goals(&r, DEFAULT_MIN_CONCURRENCY);
}

/// A small server with long answers (5 at once, 1.5–4.3 s calls, under 2 answers a second: a
/// self-hosted model, say), whose capacity later doubles: a try of the level last refused
/// every few seconds would be one refused call in ten, and the tries must still find the rise
/// within 30 s.
#[tokio::test(start_paused = true)]
async fn a_small_server_with_long_answers() {
    let r = run(Scenario {
        phases: vec![phase(0.0, 1.0, 5), phase(300.0, 1.0, 10)],
        stages: vec![(200, 64)],
        seconds: 600.0,
        ..Scenario::base("capacity 5 → 10, max_tokens 200")
    })
    .await;
    assert_goals(&r, DEFAULT_MIN_CONCURRENCY);
}

/// The limit found 40, then the demand fell to 20 (the stage waits on a slower one
/// downstream), the capacity dropped to 20 meanwhile, and the demand comes back all at once:
/// 44 calls go out into a full server within milliseconds. Cut by a tenth per refusal, each
/// refusal freed a slot the next caller took at once, and the limit was refused some 50 times
/// in 20 ms on the way down (seen against `benches/independent_server.py`); the count in
/// flight when each call was sent says the cut was not enough, and how far to go.
#[tokio::test(start_paused = true)]
async fn demand_returning_at_once_to_a_capacity_that_dropped_meanwhile() {
    let quiet = |mut p: Phase| {
        p.demand = 20;
        p
    };
    let r = run(Scenario {
        phases: vec![
            phase(0.0, 1.0, 40),
            quiet(phase(60.0, 1.0, 40)),
            quiet(phase(90.0, 1.0, 20)),
            phase(100.0, 1.0, 20),
        ],
        seconds: 160.0,
        ..Scenario::base("demand 64 → 20, capacity 40 → 20, demand back to 64")
    })
    .await;
    let burst = r
        .refusals_s
        .iter()
        .filter(|t| (100.0..101.0).contains(*t))
        .count();
    // At most the room the limit left above the 20 in flight: the callers that come back
    // take it, and the refusals that follow cut it before their slots go out again.
    // (37 before the count was read out of slow start.)
    assert!(
        burst <= 20,
        "{burst} refused in the second the demand came back"
    );
    assert!(
        r.refused_share <= 0.03,
        "{:.2} % refused",
        100.0 * r.refused_share
    );
    let last = &r.phases[3];
    assert!(last.to_90_percent_s.is_some_and(|s| s <= 30.0), "{last:?}");
    assert!(last.held >= 0.9, "{last:?}");
}
