//! The embedded store (`local_store`, one SQLite file): exact cosine search over the stored
//! chunk vectors, and chunk records/s written through the sink.
//!
//!     cargo bench --bench local_store -- --warm-up-time 1 --measurement-time 5
//!
//! Search scans every vector of the store (normalised f32 blobs, a dot product each). The
//! Apollo corpus is ~1,500 chunks at 800 tokens, a few thousand at smaller chunk sizes: the
//! sizes measured are 3,000 and 30,000 chunks of 384 dimensions (all-MiniLM-L6-v2).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pipeline::{
    BuildContext, BuiltStage, Embedded, InputEnd, Payload, Provenance, Record, Sink, StageConfig,
};
use stages::local_store::{LocalStoreConfig, StoreDb};
use std::sync::Arc;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DIMS: usize = 384;

fn record(i: usize) -> Record {
    let vector: Vec<f32> = (0..DIMS)
        .map(|j| (((i * 7919 + j * 104_729) % 2003) as f32 / 2003.0) - 0.5)
        .collect();
    Record::new(
        format!("chunk-{i}"),
        Provenance {
            document_id: format!("doc-{}", i % 6),
            source_path: Some(format!("day{:02}.txt", i % 6 + 1)),
            chunk_index: Some(i as u32),
            char_span: Some([i as u64 * 600, i as u64 * 600 + 600]),
            ..Default::default()
        },
        Payload::Embedded(Embedded {
            text: "[055:55:20] CDR: Houston, we've had a problem. ".repeat(12),
            context: None,
            vector,
            model: "bench-model".into(),
        }),
    )
}

fn sink(runtime: &tokio::runtime::Runtime, dir: &std::path::Path) -> Arc<dyn Sink> {
    let config = LocalStoreConfig {
        path: Some(dir.join("store.sqlite").display().to_string()),
        batch: 256,
        replace_vectors: false,
    };
    match runtime
        .block_on(config.build(&BuildContext::standalone("store", dir)))
        .expect("build")
    {
        BuiltStage::Sink(sink) => sink,
        _ => panic!("not a sink"),
    }
}

fn fill(runtime: &tokio::runtime::Runtime, dir: &std::path::Path, n: usize) {
    let sink = sink(runtime, dir);
    let records: Vec<Record> = (0..n).map(record).collect();
    runtime.block_on(async {
        for batch in records.chunks(256) {
            sink.write(batch).await.expect("write");
        }
        sink.finish(&InputEnd::Complete).await.expect("finish");
    });
}

fn search(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("local_store_search");
    for n in [3_000usize, 30_000] {
        let dir = tempfile::tempdir().expect("temp dir");
        fill(&runtime, dir.path(), n);
        let db = StoreDb::open(&dir.path().join("store.sqlite"), false).expect("open");
        let query = match record(n / 2).payload {
            Payload::Embedded(e) => e.vector,
            _ => unreachable!(),
        };
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("top5", n), &n, |b, _| {
            b.iter(|| {
                let hits = db.nearest(&query, 5).expect("search");
                // The synthetic vectors repeat every 2003 records: the query's own vector (or an
                // identical one) must come first.
                assert!(hits[0].score > 0.9999, "{} {}", hits[0].id, hits[0].score);
            })
        });
    }
    group.finish();
}

fn write(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let records: Vec<Record> = (0..5_000).map(record).collect();
    let mut group = c.benchmark_group("local_store_write");
    group.sample_size(10);
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("chunks_5000_batch_256", |b| {
        b.iter_with_setup(
            || {
                let dir = tempfile::tempdir().expect("temp dir");
                let sink = sink(&runtime, dir.path());
                (dir, sink)
            },
            |(_dir, sink)| {
                runtime.block_on(async {
                    for batch in records.chunks(256) {
                        let written = sink.write(batch).await.expect("write");
                        assert!(written.failed.is_empty());
                    }
                })
            },
        )
    });
    group.finish();
}

criterion_group!(benches, search, write);
criterion_main!(benches);
