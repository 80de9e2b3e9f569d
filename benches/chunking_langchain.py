#!/usr/bin/env python3
"""LangChain's token-aware splitter on the inputs of `benches/chunking.rs`, and one table of
both chunkers' MB/s.

LangChain: `RecursiveCharacterTextSplitter.from_tiktoken_encoder(encoding_name="cl100k_base",
chunk_size=800, chunk_overlap=100).split_text(text)`, timed per input, best and median of
`--repeat` runs. The inputs are built exactly as the Rust bench builds them: the Apollo 13
transcript corpus, and single lines of a shape and a size (same generator, same seed).

With `--criterion DIR` (criterion's output dir, `$CARGO_TARGET_DIR/criterion`), pipe's MB/s
are read from the bench run that wrote it (`new/estimates.json`, `new/benchmark.json`) and
printed beside LangChain's; `--since EPOCH` rejects results older than this run.

tiktoken downloads its rank files at first use; this machine has no such network access, so
the script seeds tiktoken's cache with the cl100k_base file that the Rust crates ship
(tiktoken checks its SHA-256 against the published one before using it).

    benches/chunking.sh            # builds, runs both, writes benches/results/chunking.{md,json}
"""

import argparse
import glob
import gzip
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus" / "apollo13" / "transcripts"
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"

SHAPES = ["transcript", "words", "no_spaces", "unicode"]
UNICODE = "日本語中文한국テキ。、éжשم🚀"
MASK64 = (1 << 64) - 1


def seed_tiktoken_cache() -> None:
    """Put cl100k_base.tiktoken where tiktoken looks before it downloads."""
    cache = os.environ.setdefault(
        "TIKTOKEN_CACHE_DIR", os.path.join(tempfile.gettempdir(), "pipe-tiktoken-cache")
    )
    target = Path(cache) / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    if target.exists():
        return
    cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    registry = cargo_home / "registry" / "src"
    for pattern, opener in [
        ("*/tiktoken-rs-*/assets/cl100k_base.tiktoken", open),
        ("*/bpe-openai-*/data/cl100k_base.tiktoken.gz", gzip.open),
    ]:
        for path in sorted(glob.glob(str(registry / pattern))):
            with opener(path, "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() == CL100K_SHA256:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                return
    sys.exit(f"no cl100k_base.tiktoken with the published SHA-256 under {registry}")


def corpus_files() -> list[tuple[str, str]]:
    files = sorted(CORPUS.glob("*.txt"))
    if not files:
        sys.exit(f"no *.txt files in {CORPUS}")
    return [(p.name, p.read_text(encoding="utf-8")) for p in files]


class Lcg:
    """The Rust bench's generator: 64-bit LCG, the draw is (state >> 33) % n."""

    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next(self, n: int) -> int:
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) & MASK64
        return (self.state >> 33) % n


def cut(text: str, size: int) -> str:
    """The longest prefix of at most `size` UTF-8 bytes."""
    data = text.encode("utf-8")[:size]
    return data.decode("utf-8", errors="ignore")


def one_line(shape: str, size: int, corpus: list[tuple[str, str]]) -> str:
    if shape == "transcript":
        joined = "".join(t.replace("\n", " ") for _, t in corpus)
        return cut(joined * (size // len(joined.encode()) + 1), size)
    if shape == "words":
        return cut("word " * (size // 5 + 1), size)
    lcg = Lcg(size)
    if shape == "no_spaces":
        return "".join(chr(ord("a") + lcg.next(26)) for _ in range(size))
    if shape == "unicode":
        out, length = [], 0
        while length < size:
            ch = UNICODE[lcg.next(len(UNICODE))]
            out.append(ch)
            length += len(ch.encode())
        return cut("".join(out), size)
    raise ValueError(shape)


def time_langchain(splitter, texts: list[str], repeat: int) -> dict:
    seconds, chunks = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        chunks = sum(len(splitter.split_text(t)) for t in texts)
        seconds.append(time.perf_counter() - start)
    size = sum(len(t.encode()) for t in texts)
    return {
        "bytes": size,
        "chunks": chunks,
        "runs": len(seconds),
        "median_mb_s": size / 1e6 / statistics.median(seconds),
        "best_mb_s": size / 1e6 / min(seconds),
        "worst_mb_s": size / 1e6 / max(seconds),
    }


def criterion_result(root: Path, group: str, bench: str, since: float) -> dict | None:
    new = root / group / bench / "new"
    try:
        estimates = json.loads((new / "estimates.json").read_text())
        meta = json.loads((new / "benchmark.json").read_text())
    except FileNotFoundError:
        return None
    if (new / "estimates.json").stat().st_mtime < since:
        return None
    size = meta["throughput"]["Bytes"]
    mean = estimates["mean"]
    return {
        "bytes": size,
        # Criterion's times are in ns per iteration; a slower bound is a lower MB/s.
        "mean_mb_s": size * 1e3 / mean["point_estimate"],
        "low_mb_s": size * 1e3 / mean["confidence_interval"]["upper_bound"],
        "high_mb_s": size * 1e3 / mean["confidence_interval"]["lower_bound"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="LangChain runs per input")
    parser.add_argument(
        "--one-line",
        default="transcript:100000,transcript:1000000,words:100000,words:1000000,"
        "no_spaces:100000,unicode:100000",
        help="shape:bytes inputs to give LangChain (10 MB ones take minutes)",
    )
    parser.add_argument("--criterion", type=Path, help="criterion output dir of the Rust bench")
    parser.add_argument("--since", type=float, default=0.0, help="ignore older criterion results")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args()

    seed_tiktoken_cache()
    from importlib import metadata

    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter.from_tiktoken_encoder(
        encoding_name="cl100k_base", chunk_size=800, chunk_overlap=100
    )
    corpus = corpus_files()
    rows = []

    def row(name, group, bench, texts):
        lc = time_langchain(splitter, texts, args.repeat) if texts is not None else None
        pipe = criterion_result(args.criterion, group, bench, args.since) if args.criterion else None
        rows.append({"input": name, "langchain": lc, "pipe": pipe})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    texts = [t for _, t in corpus]
    row("Apollo 13 corpus, transcript auto", "chunk_apollo13_corpus", "transcript_auto", texts)
    row("Apollo 13 corpus, transcript off", "chunk_apollo13_corpus", "transcript_off", None)
    wanted = {tuple(item.split(":")) for item in args.one_line.split(",") if item}
    for shape in SHAPES:
        for size in [100_000, 1_000_000, 10_000_000]:
            text = [one_line(shape, size, corpus)] if (shape, str(size)) in wanted else None
            row(f"one line, {shape}, {size:,} B", "chunk_one_line", f"{shape}/{size}", text)

    def mb(value):
        return f"{value:.2f}" if value is not None else "–"

    lines = [
        "| input | bytes | pipe MB/s (mean, 95% CI) | LangChain MB/s (median, range) | pipe ÷ LangChain |",
        "| --- | ---: | --- | --- | ---: |",
    ]
    for r in rows:
        pipe, lc = r["pipe"], r["langchain"]
        size = (pipe or lc or {}).get("bytes", 0)
        pipe_cell = (
            f"{mb(pipe['mean_mb_s'])} ({mb(pipe['low_mb_s'])}–{mb(pipe['high_mb_s'])})"
            if pipe
            else "–"
        )
        lc_cell = (
            f"{mb(lc['median_mb_s'])} ({mb(lc['worst_mb_s'])}–{mb(lc['best_mb_s'])})" if lc else "not run"
        )
        ratio = f"{pipe['mean_mb_s'] / lc['median_mb_s']:.1f}×" if pipe and lc else "–"
        lines.append(f"| {r['input']} | {size:,} | {pipe_cell} | {lc_cell} | {ratio} |")
    versions = (
        f"langchain-text-splitters {metadata.version('langchain-text-splitters')}, "
        f"tiktoken {metadata.version('tiktoken')}, Python {sys.version.split()[0]}"
    )
    table = "\n".join(lines)
    load = "load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(table)
    print(versions)
    print(load)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(
            json.dumps({"versions": versions, "load": load, "rows": rows}, indent=2) + "\n"
        )
        header = (
            "# Chunking: pipe vs LangChain, one run\n\n"
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, written by `bash benches/chunking.sh`.\n"
            "Both chunk with max 800 tokens, overlap 100, cl100k_base. pipe: criterion "
            "(`benches/chunking.rs`), exact token count on every chunk. LangChain: "
            "`RecursiveCharacterTextSplitter.from_tiktoken_encoder(...).split_text`, "
            f"{args.repeat} runs per input. Raw: `chunking.json`, `chunking-criterion.log`.\n\n"
        )
        Path(f"{args.out}.md").write_text(header + table + "\n\n" + versions + "; " + load + "\n")


if __name__ == "__main__":
    main()
