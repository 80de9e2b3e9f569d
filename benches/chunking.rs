//! Bytes/s of the chunk stage's splitter (max_tokens 800, overlap 100, cl100k_base, exact
//! token counts on every chunk):
//!
//! - `chunk_apollo13_corpus`: the whole Apollo 13 transcript corpus
//!   (`shared/corpus/apollo13/transcripts/*.txt`), with transcript detection (`Auto`, packs
//!   whole speaker turns) and without (`Off`, the plain splitter);
//! - `chunk_one_line`: single lines of 100 kB, 1 MB and 10 MB, to show that the time grows
//!   linearly with the input (flat MB/s): the corpus joined into one line (`transcript`),
//!   `"word "` repeated (`words`), pseudo-random letters without spaces (`no_spaces`, one
//!   pre-tokenizer piece) and unicode without spaces (`unicode`).
//!
//!     cargo bench --bench chunking -- --warm-up-time 1 --measurement-time 5
//!
//! `benches/chunking.sh` runs this and LangChain's splitter on the same inputs
//! (`benches/chunking_langchain.py` builds them the same way) and prints both.

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
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

/// Chunks of all the texts (and a check that the splitter really produced chunks).
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

/// 64-bit LCG (Knuth's MMIX constants); `chunking_langchain.py` draws the same sequence.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize % n
    }
}

const UNICODE: &[char] = &[
    '日', '本', '語', '中', '文', '한', '국', 'テ', 'キ', '。', '、', 'é', 'ж', 'ש', 'م', '🚀',
];

/// A single line of `shape`, `bytes` long (cut back to a char boundary).
fn one_line(shape: &str, bytes: usize, corpus: &[(String, String)]) -> String {
    let mut text = match shape {
        "transcript" => {
            let joined: String = corpus.iter().map(|(_, t)| t.replace('\n', " ")).collect();
            joined.repeat(bytes / joined.len() + 1)
        }
        "words" => "word ".repeat(bytes / 5 + 1),
        "no_spaces" => {
            let mut lcg = Lcg(bytes as u64);
            (0..bytes)
                .map(|_| (b'a' + lcg.next(26) as u8) as char)
                .collect()
        }
        "unicode" => {
            let mut lcg = Lcg(bytes as u64);
            let mut s = String::with_capacity(bytes + 4);
            while s.len() < bytes {
                s.push(UNICODE[lcg.next(UNICODE.len())]);
            }
            s
        }
        _ => unreachable!("{shape}"),
    };
    let mut cut = bytes.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text
}

const SHAPES: [&str; 4] = ["transcript", "words", "no_spaces", "unicode"];
const SIZES: [usize; 3] = [100_000, 1_000_000, 10_000_000];

fn chunking(c: &mut Criterion) {
    let files = corpus();
    let bytes: u64 = files.iter().map(|(_, t)| t.len() as u64).sum();
    // Load the tokenizer (a one-off cost) before anything is timed.
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

    let mut group = c.benchmark_group("chunk_one_line");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    let opts = options(TranscriptMode::Auto);
    for shape in SHAPES {
        for size in SIZES {
            let input = [(format!("{shape}-{size}"), one_line(shape, size, &files))];
            let chunks = split_all(&input, &opts);
            eprintln!("chunking: one line {shape} {size} bytes: {chunks} chunks");
            group.throughput(Throughput::Bytes(input[0].1.len() as u64));
            group.bench_with_input(BenchmarkId::new(shape, size), &input, |b, input| {
                b.iter(|| split_all(input, &opts))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, chunking);
criterion_main!(benches);
