#!/usr/bin/env bash
# pipe's chunker and LangChain's, side by side from one run: the criterion bench
# (benches/chunking.rs), then LangChain's RecursiveCharacterTextSplitter on the same inputs
# (benches/chunking_langchain.py), then one table of both MB/s, also written to
# benches/results/chunking.md and .json (raw: the criterion log next to them).
#
#     bash benches/chunking.sh
#     CRITERION_ARGS="--warm-up-time 1 --measurement-time 3" bash benches/chunking.sh
#     LANGCHAIN_INPUTS="transcript:100000" bash benches/chunking.sh   # fewer LangChain inputs
#
# The Python side runs in a venv of its own (CHUNK_BENCH_VENV, default
# /tmp/pipe-chunk-bench-venv) with pinned langchain-text-splitters and tiktoken from PyPI.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
venv=${CHUNK_BENCH_VENV:-/tmp/pipe-chunk-bench-venv}
results=$root/benches/results
mkdir -p "$results"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "langchain-text-splitters==1.1.3" "tiktoken==0.14.0"

started=$(date +%s)
# shellcheck disable=SC2086  # CRITERION_ARGS is a list of flags
cargo bench --bench chunking -- ${CRITERION_ARGS:---warm-up-time 1 --measurement-time 5} \
    2>&1 | tee "$results/chunking-criterion.log"

lang_args=()
if [ -n "${LANGCHAIN_INPUTS:-}" ]; then
    lang_args+=(--one-line "$LANGCHAIN_INPUTS")
fi
"$venv/bin/python" benches/chunking_langchain.py \
    --criterion "$target/criterion" --since "$started" --out "$results/chunking" \
    "${lang_args[@]}"
