//! The stage shapes beyond one-record processors: batch processors, aggregators, sinks with
//! per-record outcomes and retries, transforms that end early — and the rule that a stage
//! waiting on a full edge never pins what its calls in flight hold (no deadlock on a shared
//! pool, in any mode).

mod support;

use pipeline::InputEnd;
use pipeline::runtime::RunStatus;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;
use support::{probe, run_yaml, stage};

fn collected(name: &str) -> Vec<String> {
    probe(name)
        .collected
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.id.clone())
        .collect()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: the pipeline hung (no progress in 60 s)"))
}

/// A processor and a slow sink share a pool of 2, and the edge between them is tiny: the
/// processor often waits on the full edge while calls of its own hold pool permits. Before
/// the runtime kept driving calls in flight during such waits, this deadlocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_shared_by_a_processor_and_a_sink_never_deadlocks() {
    for ordered in [false, true] {
        for round in 0..20 {
            let name = format!("pool-dl-{ordered}-{round}");
            let yaml = format!(
                r#"
resources:
  pools:
    shared: {{ max_concurrency: 2 }}
stages:
  - {{ id: src, kind: numbers, config: {{ count: 200, probe: {name}-src }} }}
  - id: work
    kind: probe
    inputs: [src]
    concurrency: 8
    ordered: {ordered}
    pool: shared
    config: {{ behaviour: sleep, n: 1, probe: {name}-work }}
  - id: out
    kind: collect
    inputs: [work]
    buffer: 3
    pool: shared
    config: {{ probe: {name}, batch: 1, wait_ms: 1 }}
"#
            );
            let (report, _state) = within(&name, run_yaml(&yaml)).await;
            assert_eq!(report.status, RunStatus::Completed, "{name}");
            let got = collected(&name);
            assert_eq!(got.len(), 200, "{name}");
            if ordered {
                let expected: Vec<String> = (0..200).map(|i| i.to_string()).collect();
                assert_eq!(got, expected, "{name}: order kept");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_processor_gets_full_batches_and_a_bad_item_fails_alone() {
    let (report, state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 95, probe: bt-src } }
  - id: batch
    kind: batcher
    inputs: [src]
    concurrency: 3
    config: { probe: bt, size: 10, max_wait_ms: 1000, fail_every: 7 }
  - { id: out, kind: collect, inputs: [batch], config: { probe: bt-out } }
"#,
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed);
    let batches = probe("bt").batches.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), 95);
    assert!(batches.iter().all(|&n| n <= 10), "{batches:?}");
    // The source is faster than the wait: all batches but the last are full.
    assert_eq!(
        batches.iter().filter(|&&n| n == 10).count(),
        9,
        "{batches:?}"
    );
    // 0, 7, 14, ... 91: 14 records fail alone, the rest of their batches pass.
    let failed: usize = (0..95).filter(|n| n % 7 == 0).count();
    assert_eq!(stage(&report, "batch").dead_lettered as usize, failed);
    assert_eq!(stage(&report, "batch").out as usize, 95 - failed);
    let got: BTreeSet<u64> = collected("bt-out")
        .iter()
        .map(|i| i.parse().unwrap())
        .collect();
    let expected: BTreeSet<u64> = (0..95).filter(|n| n % 7 != 0).collect();
    assert_eq!(got, expected);
    let dead = std::fs::read_to_string(
        state
            .path()
            .join("runs")
            .join(&report.run_id)
            .join("dead_letters.jsonl"),
    )
    .unwrap();
    assert_eq!(dead.lines().count(), failed);
    assert!(dead.contains("\"error\":\"7 is bad\""), "{dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_also_capped_by_weight_and_sent_part_full_after_max_wait() {
    // Weights are number + 1: 1+2+3+4 = 10 fits a max_weight of 10, the 5th starts a batch.
    let (report, _state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 8, probe: bw-src } }
  - id: batch
    kind: batcher
    inputs: [src]
    ordered: true
    config: { probe: bw, size: 100, max_weight: 10, max_wait_ms: 20 }
  - { id: out, kind: collect, inputs: [batch], config: { probe: bw-out } }
"#,
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed);
    // 1+2+3+4 | 5+... : 5 alone would be 5, 5+6 = 11 > 10: each of 5..8 goes alone.
    assert_eq!(*probe("bw").batches.lock().unwrap(), vec![4, 1, 1, 1, 1]);
    let expected: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    assert_eq!(
        collected("bw-out"),
        expected,
        "ordered batches keep input order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_batch_dead_letters_its_records_and_the_run_goes_on() {
    let (report, _state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 40, probe: bp-src } }
  - id: batch
    kind: batcher
    inputs: [src]
    ordered: true
    config: { probe: bp, size: 10, max_wait_ms: 1000, panic_at: 13 }
  - { id: out, kind: collect, inputs: [batch], config: { probe: bp-out } }
"#,
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed);
    assert_eq!(stage(&report, "batch").dead_lettered, 10);
    assert_eq!(collected("bp-out").len(), 30);
    assert!(!collected("bp-out").contains(&"13".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_emits_only_after_a_complete_input() {
    let (report, _state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 300, probe: ag-src } }
  - { id: all, kind: gather, inputs: [src], config: { probe: ag } }
  - { id: out, kind: collect, inputs: [all], config: { probe: ag-out } }
"#,
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed);
    assert_eq!(*probe("ag").ends.lock().unwrap(), vec![InputEnd::Complete]);
    let out = probe("ag-out").collected.lock().unwrap().clone();
    assert_eq!(out.len(), 1);
    let pipeline::Payload::Json { value } = &out[0].payload else {
        panic!("json expected")
    };
    assert_eq!(value["ids"].as_array().unwrap().len(), 300);
    assert_eq!(stage(&report, "all").received, 300);
    assert_eq!(stage(&report, "all").out, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_is_told_the_run_failed_and_nothing_it_held_is_lost() {
    // A run-fatal error at record 50: the aggregator hears `Failed`, emits nothing, and what
    // it held is dead-lettered, so input = emitted + dead-lettered still holds.
    let (report, _state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 300, probe: agf-src } }
  - { id: check, kind: probe, inputs: [src], concurrency: 1, ordered: true, config: { behaviour: fatal_at, n: 50, probe: agf-check } }
  - { id: all, kind: gather, inputs: [check], config: { probe: agf } }
  - { id: out, kind: collect, inputs: [all], config: { probe: agf-out } }
"#,
    )
    .await;
    assert_eq!(report.status, RunStatus::Failed);
    let ends = probe("agf").ends.lock().unwrap().clone();
    assert!(
        matches!(ends.as_slice(), [InputEnd::Failed(reason)] if reason.contains("401")),
        "{ends:?}"
    );
    assert!(collected("agf-out").is_empty(), "no partial set published");
    let all = stage(&report, "all");
    assert_eq!(all.dead_lettered, all.received);
    let src = stage(&report, "src").out;
    let check = stage(&report, "check");
    assert_eq!(check.received, src);
    assert_eq!(
        check.out + check.dead_lettered,
        src,
        "nothing lost in the failing stage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_reports_per_record_outcomes_and_commits() {
    let (report, _state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 100, probe: sk-src } }
  - { id: out, kind: collect, inputs: [src], config: { probe: sk, batch: 10, fail_every: 9 } }
"#,
    )
    .await;
    let failed = (0..100).filter(|n| n % 9 == 0).count() as u64;
    let out = stage(&report, "out");
    assert_eq!(out.dead_lettered, failed, "one bad record fails alone");
    assert_eq!(out.out, 100 - failed);
    assert_eq!(out.committed, Some(100 - failed));
    assert_eq!(collected("sk").len() as u64, 100 - failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_store_error_retries_the_batch_and_loses_nothing() {
    let (report, _state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 50, probe: tr-src } }
  - { id: out, kind: collect, inputs: [src], config: { probe: tr, batch: 10, transient_failures: 3 } }
"#,
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed);
    let out = stage(&report, "out");
    assert_eq!(out.retries, 3);
    assert_eq!(out.dead_lettered, 0);
    assert_eq!(out.committed, Some(50));
    let got: BTreeSet<String> = collected("tr").into_iter().collect();
    assert_eq!(got.len(), 50);
    assert!(probe("tr").write_attempts.load(SeqCst) >= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stays_down_gets_its_batches_dead_lettered_never_lost() {
    let (report, _state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 20, probe: dn-src } }
  - { id: out, kind: collect, inputs: [src], config: { probe: dn, batch: 10, transient_failures: 1000 } }
"#,
    )
    .await;
    let out = stage(&report, "out");
    assert_eq!(out.dead_lettered, 20);
    assert_eq!(out.out, 0);
    assert_eq!(out.committed, Some(0));
    assert_eq!(
        probe("dn").write_attempts.load(SeqCst),
        2 * 5,
        "5 attempts per batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_that_ends_early_dead_letters_what_was_queued_for_it() {
    let (report, _state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 1000, probe: te-src } }
  - { id: win, kind: window, inputs: [src], config: { size: 10, stop_after: 3 } }
  - { id: out, kind: collect, inputs: [win], config: { probe: te } }
"#,
    )
    .await;
    let win = stage(&report, "win");
    let src = stage(&report, "src");
    assert_eq!(collected("te").len(), 3);
    // Every record the source emitted is either in one of the 3 windows or dead-lettered
    // (by the transform, from its queue, or by the source, whose sends found it gone).
    let dead_total = win.dead_lettered + src.dead_lettered;
    assert_eq!(30 + dead_total, 1000, "win {win:?} src {src:?}");
    assert!(win.dead_lettered > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_transform_fails_the_run_and_dead_letters_its_queue() {
    let (report, _state) = run_yaml(
        r#"
stages:
  - { id: src, kind: numbers, config: { count: 500, probe: tp-src } }
  - { id: win, kind: window, inputs: [src], config: { size: 10, panic_after: 2 } }
  - { id: out, kind: collect, inputs: [win], config: { probe: tp } }
"#,
    )
    .await;
    assert_eq!(report.status, RunStatus::Failed);
    assert!(
        report.error.as_deref().unwrap().contains("panicked"),
        "{:?}",
        report.error
    );
    let win = stage(&report, "win");
    let src = stage(&report, "src");
    assert_eq!(collected("tp").len(), 2);
    // The failed run stopped the source. Of what it emitted, the records inside the
    // panicking stream itself (the window it was building) are the transform's own and go
    // with it — at most one window; everything still queued is dead-lettered.
    let accounted = 20 + win.dead_lettered + src.dead_lettered;
    assert!(win.dead_lettered > 0, "{win:?}");
    assert!(
        accounted <= src.out && accounted + 10 >= src.out,
        "{accounted} of {}",
        src.out
    );
}
