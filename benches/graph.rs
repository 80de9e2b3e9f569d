//! Throughput of the graph stages over the whole Apollo 13 transcript corpus, chunked as the
//! reference pipeline does (800 tokens, overlap 100): `nlp_extract` (chunks → extractions),
//! `normalize` (extractions → fragments, with the reference pipeline's aliases) and `resolve`
//! (all fragments → the merged, de-duplicated graph). One core each: the stages' own work,
//! without the runtime.
//!
//!     cargo bench --bench graph -- --warm-up-time 1 --measurement-time 10

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use pipeline::runtime::StageNotes;
use pipeline::{Aggregator, Document, InputEnd, Payload, Provenance, Record};
use stages::chunk::{ChunkConfig, ChunkProcessor};
use stages::nlp_extract::{NlpExtract, NlpExtractConfig};
use stages::normalize::{Normalize, NormalizeConfig};
use stages::resolve::{Resolve, ResolveConfig};
use std::hint::black_box;

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/corpus/apollo13/transcripts"
);

fn chunks() -> (Vec<Record>, u64) {
    let mut paths: Vec<_> = std::fs::read_dir(CORPUS)
        .unwrap_or_else(|e| panic!("cannot read corpus dir {CORPUS}: {e}"))
        .map(|e| e.expect("corpus dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    let chunker = ChunkProcessor::new(
        &serde_json::from_value::<ChunkConfig>(
            serde_json::json!({ "max_tokens": 800, "overlap": 100 }),
        )
        .unwrap(),
    );
    let mut out = Vec::new();
    let mut bytes = 0;
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        bytes += text.len() as u64;
        let id = path.file_name().unwrap().to_string_lossy().to_string();
        let document = Record::new(
            id.clone(),
            Provenance {
                document_id: id,
                ..Default::default()
            },
            Payload::Document(Document {
                text,
                format: "text".into(),
            }),
        );
        out.extend(chunker.chunk(&document).unwrap());
    }
    (out, bytes)
}

fn normalize_config() -> NormalizeConfig {
    serde_json::from_value(serde_json::json!({
        "aliases": {
            "Houston": ["CC", "CAPCOM", "CAP COMM"],
            "Jim Lovell": ["Jim", "Lovell"],
            "Jack Swigert": ["Jack", "Swigert"],
            "Fred Haise": ["Fred", "Haise"]
        }
    }))
    .unwrap()
}

fn graph_stages(c: &mut Criterion) {
    let (chunks, bytes) = chunks();
    let extract = NlpExtract::new(&NlpExtractConfig::default(), "nlp", StageNotes::default());
    let normalize = Normalize::new(&normalize_config(), "normalize", StageNotes::default());
    let extractions: Vec<Record> = chunks
        .iter()
        .map(|c| extract.extract_record(c).unwrap())
        .collect();
    let fragments: Vec<Record> = extractions
        .iter()
        .map(|e| normalize.normalize_record(e).unwrap())
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let resolve_all = |fragments: &[Record]| -> usize {
        runtime.block_on(async {
            let mut resolve =
                Resolve::new(ResolveConfig::default(), "resolve", StageNotes::default());
            for f in fragments {
                resolve.add(f).await.unwrap();
            }
            resolve.finish(&InputEnd::Complete).await.emit.len()
        })
    };
    let entities: usize = fragments
        .iter()
        .map(|f| match &f.payload {
            Payload::Graph(g) => g.entities.len(),
            _ => 0,
        })
        .sum();
    eprintln!(
        "graph stages: {} chunks ({bytes} bytes), {entities} fragment entities, {} merged graph records",
        chunks.len(),
        resolve_all(&fragments)
    );

    let mut group = c.benchmark_group("graph_apollo13_corpus");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.throughput(Throughput::Elements(chunks.len() as u64));
    group.bench_function("nlp_extract", |b| {
        b.iter(|| {
            chunks
                .iter()
                .map(|c| extract.extract_record(black_box(c)).unwrap())
                .collect::<Vec<_>>()
        })
    });
    group.bench_function("normalize", |b| {
        b.iter(|| {
            extractions
                .iter()
                .map(|e| normalize.normalize_record(black_box(e)).unwrap())
                .collect::<Vec<_>>()
        })
    });
    group.bench_function("resolve", |b| b.iter(|| resolve_all(black_box(&fragments))));
    group.finish();
}

criterion_group!(benches, graph_stages);
criterion_main!(benches);
