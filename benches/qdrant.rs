//! Points/s into a real Qdrant through the `qdrant` sink: batched upserts vs one point per
//! request, side by side in one run, each acknowledged with `wait` like in a pipeline run.
//!
//!     eval "$(scripts/qdrant.sh)"; export QDRANT_URL
//!     cargo bench --bench qdrant
//!     kill $QDRANT_PID
//!
//! `PIPE_BENCH_POINTS` (default 20000) points of 384 dimensions (all-MiniLM-L6-v2's size) with a
//! ~600-character chunk text each; the one-per-request variants write a tenth of them (they are
//! that much slower). Each variant writes into a fresh collection, so every write is an insert;
//! the last line re-writes the batched collection (upserts over existing points: a re-run).

use pipeline::{
    BuildContext, BuiltStage, Embedded, Payload, Provenance, Record, Sink, StageConfig,
};
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DIMS: usize = 384;

fn records(n: usize) -> Vec<Record> {
    let text = "[055:55:20] CDR: Houston, we've had a problem. We've had a MAIN B BUS UNDERVOLT. "
        .repeat(7);
    (0..n)
        .map(|i| {
            let vector: Vec<f32> = (0..DIMS)
                .map(|j| ((i * 31 + j * 17) % 997) as f32 / 997.0 - 0.5)
                .collect();
            Record::new(
                format!("bench-chunk-{i}"),
                Provenance {
                    document_id: format!("doc-{}", i % 6),
                    source_path: Some(format!("day{:02}.txt", i % 6 + 1)),
                    chunk_index: Some(i as u32),
                    char_span: Some([i as u64 * 600, i as u64 * 600 + 600]),
                    ..Default::default()
                },
                Payload::Embedded(Embedded {
                    text: text.clone(),
                    context: None,
                    vector,
                    model: "bench-model".into(),
                }),
            )
        })
        .collect()
}

async fn sink(url: &str, collection: &str, batch: usize) -> Arc<dyn Sink> {
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = BuildContext::standalone("embed", dir.path());
    upstream.publish("embedding.model", serde_json::json!("bench-model"));
    upstream.publish("embedding.dimensions", serde_json::json!(DIMS));
    let ctx = BuildContext {
        stage_id: "store".into(),
        upstream: vec!["embed".into()],
        ..upstream
    };
    let config: stages::qdrant::QdrantConfig = serde_json::from_value(serde_json::json!({
        "url": url, "collection": collection, "batch": batch
    }))
    .expect("config");
    match config.build(&ctx).await {
        Ok(BuiltStage::Sink(sink)) => sink,
        Ok(_) => panic!("not a sink"),
        Err(e) => panic!("cannot build the qdrant sink: {e}"),
    }
}

/// Writes `records` in batches of `batch`, `in_flight` requests at a time; points/s.
async fn measure(
    url: &str,
    collection: &str,
    records: &[Record],
    batch: usize,
    in_flight: usize,
) -> f64 {
    use futures::StreamExt;
    let sink = sink(url, collection, batch).await;
    let started = Instant::now();
    let mut writes = futures::stream::iter(records.chunks(batch))
        .map(|chunk| {
            let sink = sink.clone();
            async move { sink.write(chunk).await }
        })
        .buffer_unordered(in_flight);
    while let Some(result) = writes.next().await {
        let written = result.unwrap_or_else(|e| panic!("write failed: {e}"));
        assert!(written.failed.is_empty() && written.durable);
    }
    records.len() as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let Ok(url) = std::env::var("QDRANT_URL") else {
        eprintln!("set QDRANT_URL (eval \"$(scripts/qdrant.sh)\"; export QDRANT_URL)");
        std::process::exit(2);
    };
    let n: usize = std::env::var("PIPE_BENCH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let all = records(n);
    let few = &all[..(n / 10).max(1)];
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    runtime.block_on(async {
        println!("{n} points of {DIMS} dimensions into {url} (Qdrant, wait: true)");
        println!("{:<34} {:>8} {:>12}", "variant", "points", "points/s");
        let rows: [(&str, &[Record], usize, usize); 5] = [
            ("batch 256, 1 request in flight", &all, 256, 1),
            ("batch 256, 4 in flight (default)", &all, 256, 4),
            ("1 per request, 1 in flight", few, 1, 1),
            ("1 per request, 4 in flight", few, 1, 4),
            ("batch 256, 4 in flight, re-run", &all, 256, 4),
        ];
        let mut batched = 0.0;
        let mut single = 0.0;
        for (i, (name, records, batch, in_flight)) in rows.into_iter().enumerate() {
            // The re-run writes over the collection of the second variant.
            let collection = format!("bench_{stamp}_{}", if i == 4 { 1 } else { i });
            let rate = measure(&url, &collection, records, batch, in_flight).await;
            println!("{name:<34} {:>8} {rate:>12.0}", records.len());
            match i {
                1 => batched = rate,
                3 => single = rate,
                _ => {}
            }
        }
        println!(
            "batched / one per request (4 in flight each): {:.1}x",
            batched / single
        );
    });
}
