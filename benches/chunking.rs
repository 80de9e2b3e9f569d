//! Bytes/s of the chunk stage's splitter over the whole Apollo 13 transcript corpus
//! (`shared/corpus/apollo13/transcripts/*.txt`): max_tokens 800, overlap 100, cl100k_base,
//! once with transcript detection (`Auto`, packs whole speaker turns) and once with `Off`
//! (plain text_splitter), for comparison.
//!
//!     cargo bench --bench chunking -- --warm-up-time 1 --measurement-time 5

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use stages::chunk::splitter::{SplitOptions, Tokenizer, TranscriptMode, split};
use std::hint::black_box;
use std::path::Path;

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/corpus/apollo13/transcripts"
);

fn corpus() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(CORPUS)
        .unwrap_or_else(|e| panic!("cannot read corpus dir {CORPUS}: {e}"))
        .filter_map(|entry| {
            let path = entry.expect("corpus dir entry").path();
            (path.extension().is_some_and(|e| e == "txt")).then_some(path)
        })
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (name(&path), text)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.txt files in {CORPUS}");
    files
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn options(transcript: TranscriptMode) -> SplitOptions {
    SplitOptions {
        max_tokens: 800,
        overlap: 100,
        tokenizer: Tokenizer::Cl100kBase,
        transcript,
    }
}

/// Chunks of the whole corpus (and a check that the splitter really produced chunks).
fn split_all(files: &[(String, String)], opts: &SplitOptions) -> usize {
    files
        .iter()
        .map(|(name, text)| {
            let spans = split(black_box(text), opts)
                .unwrap_or_else(|e| panic!("split of {name} failed: {e}"));
            assert!(!spans.is_empty(), "no chunks from {name}");
            spans.len()
        })
        .sum()
}

fn chunking(c: &mut Criterion) {
    let files = corpus();
    let bytes: u64 = files.iter().map(|(_, t)| t.len() as u64).sum();
    // Build the tokenizer (a one-off cost of seconds) before anything is timed.
    Tokenizer::Cl100kBase.count("warm up");
    for mode in [TranscriptMode::Auto, TranscriptMode::Off] {
        let chunks = split_all(&files, &options(mode));
        eprintln!(
            "chunking: {} files, {bytes} bytes, transcript {mode:?}: {chunks} chunks",
            files.len()
        );
    }

    let mut group = c.benchmark_group("chunk_apollo13_corpus");
    group.throughput(Throughput::Bytes(bytes));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    for (label, mode) in [
        ("transcript_auto", TranscriptMode::Auto),
        ("transcript_off", TranscriptMode::Off),
    ] {
        let opts = options(mode);
        group.bench_function(label, |b| b.iter(|| split_all(&files, &opts)));
    }
    group.finish();
}

criterion_group!(benches, chunking);
criterion_main!(benches);
