//! Runtime behaviour through the public API: topology shapes, ordering, concurrency limits,
//! dead letters, fatal stops, panics, shared pools and backpressure.

mod support;

use pipeline::runtime::RunStatus;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::SeqCst;
use support::{probe, run_yaml, stage};

fn ids(name: &str) -> Vec<String> {
    probe(name)
        .collected
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_delivers_every_record_to_every_consumer() {
    let (report, _state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 500, probe: fo-src } }
  - { id: a, kind: collect, inputs: [src], config: { probe: fo-a, batch: 7 } }
  - { id: b, kind: collect, inputs: [src], config: { probe: fo-b } }
"#,
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed);
    let expected: BTreeSet<String> = (0..500).map(|i| i.to_string()).collect();
    for sink in ["fo-a", "fo-b"] {
        let got = ids(sink);
        assert_eq!(got.len(), 500, "{sink}");
        assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected, "{sink}");
    }
    assert_eq!(stage(&report, "src").out, 500);
    assert_eq!(stage(&report, "a").received, 500);
    assert_eq!(stage(&report, "b").received, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_in_merges_all_producers() {
    let (report, _state) = run_yaml(
        r#"
stages:
  - { id: left, kind: numbers, config: { count: 300, prefix: "L", probe: fi-l } }
  - { id: right, kind: numbers, config: { count: 200, prefix: "R", probe: fi-r } }
  - { id: join, kind: probe, inputs: [left, right], config: { behaviour: noop, probe: fi-p } }
  - { id: out, kind: collect, inputs: [join], config: { probe: fi-out } }
"#,
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed);
    let got: BTreeSet<String> = ids("fi-out").into_iter().collect();
    assert_eq!(got.len(), 500);
    assert_eq!(got.iter().filter(|id| id.starts_with('L')).count(), 300);
    assert_eq!(got.iter().filter(|id| id.starts_with('R')).count(), 200);
    assert_eq!(stage(&report, "join").received, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_keeps_input_order_under_concurrency() {
    let yaml = |ordered: bool, name: &str| {
        format!(
            r#"
stages:
  - {{ id: src, kind: numbers, config: {{ count: 200, probe: {name}-src }} }}
  - {{ id: work, kind: probe, inputs: [src], concurrency: 8, ordered: {ordered}, config: {{ behaviour: jitter, probe: {name}-work }} }}
  - {{ id: out, kind: collect, inputs: [work], concurrency: 1, config: {{ probe: {name}-out }} }}
"#
        )
    };
    let expected: Vec<String> = (0..200).map(|i| i.to_string()).collect();

    run_yaml(&yaml(true, "ord")).await;
    assert_eq!(
        ids("ord-out"),
        expected,
        "ordered: true must keep input order"
    );
    let peak = probe("ord-work").max_in_flight.load(SeqCst);
    assert!(
        peak > 1 && peak <= 8,
        "calls really ran concurrently, within the limit: {peak}"
    );

    // The same stage unordered finishes out of order: the ordering above is the runtime's work.
    run_yaml(&yaml(false, "unord")).await;
    let unordered = ids("unord-out");
    assert_eq!(unordered.len(), 200);
    assert_ne!(unordered, expected);
    assert!(probe("unord-work").max_in_flight.load(SeqCst) <= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_records_are_dead_lettered_and_counted() {
    let (report, state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 100, probe: dl-src } }
  - { id: check, kind: probe, inputs: [src], config: { behaviour: fail_every, n: 7, probe: dl-p } }
  - { id: out, kind: collect, inputs: [check], config: { probe: dl-out } }
"#,
    )
    .await;
    // 0, 7, 14, ..., 98: 15 records.
    let bad: Vec<u64> = (0..100).filter(|n| n % 7 == 0).collect();
    assert_eq!(report.status, RunStatus::Completed);
    let check = stage(&report, "check");
    assert_eq!(
        (check.received, check.out, check.failed, check.dead_lettered),
        (100, 85, 15, 15)
    );
    assert_eq!(report.dead_letters.count, 15);
    assert_eq!(ids("dl-out").len(), 85);
    let path = report
        .dead_letters
        .path
        .clone()
        .expect("dead-letter path in report");
    assert!(path.starts_with(state.path().to_str().unwrap()));
    let letters: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 15);
    let mut dead_ids: Vec<u64> = letters
        .iter()
        .map(|l| l["record"]["id"].as_str().unwrap().parse().unwrap())
        .collect();
    dead_ids.sort();
    assert_eq!(dead_ids, bad);
    for letter in &letters {
        assert_eq!(letter["stage"], "check");
        assert_eq!(letter["class"], "record");
        assert!(
            letter["error"]
                .as_str()
                .unwrap()
                .ends_with("is a multiple of 7")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_fatal_error_stops_the_run_and_loses_nothing() {
    let (report, _state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 100000, probe: fatal-src } }
  - { id: call, kind: probe, inputs: [src], concurrency: 1, config: { behaviour: fatal_at, n: 50, probe: fatal-p } }
  - { id: out, kind: collect, inputs: [call], config: { probe: fatal-out } }
"#,
    )
    .await;
    assert_eq!(report.status, RunStatus::Failed);
    let error = report.error.clone().unwrap();
    assert!(
        error.contains("stage `call` stopped the run: credentials rejected (401)"),
        "{error}"
    );
    let src = stage(&report, "src");
    assert!(
        src.out < 100_000,
        "sources stop soon after a fatal error: {}",
        src.out
    );
    let call = stage(&report, "call");
    let out = stage(&report, "out");
    // Every record the source emitted either landed or is a dead letter.
    assert_eq!(out.received + call.dead_lettered, src.out);
    assert_eq!(ids("fatal-out").len() as u64, out.received);
    assert_eq!(out.received, 50, "records before the fatal one landed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_stage_dead_letters_the_record_and_goes_on() {
    let (report, _state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 20, probe: panic-src } }
  - { id: call, kind: probe, inputs: [src], config: { behaviour: panic_at, n: 3, probe: panic-p } }
  - { id: out, kind: collect, inputs: [call], config: { probe: panic-out } }
"#,
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed);
    assert_eq!(stage(&report, "call").dead_lettered, 1);
    assert_eq!(ids("panic-out").len(), 19);
    let letters = std::fs::read_to_string(report.dead_letters.path.unwrap()).unwrap();
    assert!(letters.contains("stage panicked: boom at 3"), "{letters}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_sharing_a_pool_never_exceed_it_together() {
    // Both stages count into one shared in-flight gauge (same probe name).
    let (report, _state) = run_yaml(
        r#"
resources:
  pools:
    account: { max_concurrency: 3 }
stages:
  - { id: src, kind: numbers, config: { count: 300, probe: pool-src } }
  - { id: a, kind: probe, inputs: [src], concurrency: 8, pool: account, config: { behaviour: jitter, probe: pool-shared } }
  - { id: b, kind: probe, inputs: [a], concurrency: 8, pool: account, config: { behaviour: jitter, probe: pool-shared } }
  - { id: out, kind: collect, inputs: [b], config: { probe: pool-out } }
"#,
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed);
    assert_eq!(ids("pool-out").len(), 300);
    let peak = probe("pool-shared").max_in_flight.load(SeqCst);
    assert_eq!(peak, 3, "the pool's limit is reached and never exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_more_outputs_than_a_buffer_holds_is_sent_a_batch_at_a_time() {
    // 500 outputs per record into consumers whose channels hold 4 records: the outputs are
    // sent in batches that fit, in order, to both consumers (a send asking for more room than
    // the channel has would wait forever). `a` writes one record at a time, so the order it
    // records is the order received (a sink writes up to 4 batches at once by default, and
    // they may finish in any order: one CI run saw 0.415–0.418 reversed).
    let run = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 20, probe: ex-src } }
  - { id: explode, kind: probe, inputs: [src], concurrency: 3, ordered: true, config: { behaviour: explode, n: 500, probe: ex-p } }
  - { id: a, kind: collect, inputs: [explode], buffer: 8, concurrency: 1, config: { probe: ex-a } }
  - { id: b, kind: collect, inputs: [explode], buffer: 3, config: { probe: ex-b, batch: 7 } }
"#,
    );
    let (report, _state) = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("the run finished");
    assert_eq!(report.status, RunStatus::Completed);
    let expected: Vec<String> = (0..20)
        .flat_map(|i| (0..500).map(move |k| format!("{i}.{k}")))
        .collect();
    assert_eq!(ids("ex-a"), expected, "every output, in order");
    let mut got_b = ids("ex-b");
    got_b.sort();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(got_b, sorted);
    assert_eq!(stage(&report, "explode").out, 10_000);
    assert_eq!(stage(&report, "a").received, 10_000);
    assert_eq!(stage(&report, "b").received, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_bounds_the_records_alive() {
    // 1,000,000 records from a tight-loop source into a sink doing busy work per record.
    // Alive = created by the source - finished by the sink. The bound: every buffer full, every
    // call slot busy, plus the one record the source holds while it waits to send.
    let (report, _state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 1000000, probe: bp } }
  - { id: step, kind: probe, inputs: [src], concurrency: 4, buffer: 32, config: { behaviour: noop, probe: bp-step } }
  - { id: slow, kind: collect, inputs: [step], concurrency: 1, buffer: 16, config: { probe: bp, batch: 1, slow_us: 1 } }
"#,
    )
    .await;
    let p = probe("bp");
    assert_eq!(report.status, RunStatus::Completed);
    assert_eq!(p.consumed.load(SeqCst), 1_000_000);
    let buffers = 32 + 16;
    let concurrency = 4 + 1;
    let bound = buffers + concurrency + 1;
    let max_alive = p.max_alive.load(SeqCst);
    assert!(
        max_alive <= bound,
        "records alive peaked at {max_alive}, bound {bound}"
    );
    // The buffers really filled up: the sink was the bottleneck and the source waited.
    assert!(
        max_alive >= buffers / 2,
        "backpressure was exercised: peak {max_alive}"
    );
    // The sink's channel filled (part of its 16-record budget is the producer's staged batch).
    let depth = stage(&report, "slow").max_queue_depth;
    assert!((8..=16).contains(&depth), "sink queue depth {depth}");
    p.collected.lock().unwrap().clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_transform_windows_records_and_its_rejections_are_dead_lettered() {
    let (report, _state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 10, probe: win-src } }
  - { id: win, kind: window, inputs: [src], config: { size: 3, reject: "4" } }
  - { id: out, kind: collect, inputs: [win], config: { probe: win-out } }
"#,
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed);
    let got = probe("win-out").collected.lock().unwrap().clone();
    let groups: Vec<serde_json::Value> = got
        .iter()
        .map(|r| match &r.payload {
            pipeline::Payload::Json { value } => value["ids"].clone(),
            other => panic!("expected Json, got {other:?}"),
        })
        .collect();
    assert_eq!(
        groups,
        [
            serde_json::json!(["0", "1", "2"]),
            serde_json::json!(["3", "5"]),
            serde_json::json!(["6", "7", "8"]),
            serde_json::json!(["9"]),
        ]
    );
    let win = stage(&report, "win");
    assert_eq!((win.received, win.out, win.dead_lettered), (10, 4, 1));
    let letters = std::fs::read_to_string(report.dead_letters.path.unwrap()).unwrap();
    assert!(
        letters.contains("rejected by window") && letters.contains(r#""id":"4""#),
        "{letters}"
    );
}
