#!/usr/bin/env bash
# Peak RSS of `pipe run` at N and 10×N records: with bounded channels, memory must not grow
# with the input size (RSS(10N)/RSS(N) ≈ 1).
#
#   generate (count N, text_bytes 256) → chunk (max_tokens 64, overlap 0) → blackhole
#
# Prints N, records/s, peak RSS and the ratio. Exits non-zero when a run fails or when the
# sink's `in` count in the run's report.json is not the expected record count.
#
#   bash benches/rss.sh            # N = 100000 and 1000000; about 2 minutes on 2 cores
#   RSS_BENCH_N=20000 bash benches/rss.sh
#
# Honours CARGO_TARGET_DIR (the binary is found through `cargo metadata`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

n_small="${RSS_BENCH_N:-100000}"
n_large=$((n_small * 10))

# The sink must be the slowest stage, so that what is measured is backpressure: records pile up
# in front of the sink unless the bounded channels stop the source. On a 2-core VM the chunk
# stage takes ~15k documents/s, so a blackhole with `delay_ms: 1, batch: 64` and the default 4
# concurrent writes (~170k records/s) would leave the chunker as the bottleneck. One write at a
# time of 64 records every 5 ms caps the sink at ~12k records/s, below the chunker, and keeps
# the 10N run at about 90 s. The report's sink `max queue` at its channel budget (128 records
# for the default buffer of 256) shows the sink really was the bottleneck.
sink_delay_ms=5
sink_batch=64
sink_concurrency=1

echo "building pipe (release) ..." >&2
cargo build --release --bin pipe --quiet
target_dir="$(cargo metadata --format-version 1 --no-deps |
    sed -E 's/.*"target_directory":"([^"]*)".*/\1/')"
pipe="$target_dir/release/pipe"
[[ -x "$pipe" ]] || { echo "error: $pipe not found" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Runs a command and writes its peak RSS in KiB to the file named by $1.
measure_rss() {
    local out="$1"
    shift
    if [[ -x /usr/bin/time ]]; then
        /usr/bin/time -f %M -o "$out" "$@"
    else
        python3 - "$out" "$@" <<'EOF'
import resource, subprocess, sys
out, cmd = sys.argv[1], sys.argv[2:]
code = subprocess.call(cmd)
with open(out, "w") as f:
    # Linux: KiB.
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=f)
sys.exit(code)
EOF
    fi
}

# Value of `"key": value` inside the stage object with the given id (pretty-printed report).
stage_field() {
    local report="$1" stage="$2" key="$3"
    awk -v id="\"id\": \"$stage\"," -v key="\"$key\":" '
        index($0, id) { found = 1 }
        found && index($0, key) { v = $2; gsub(/[^0-9.]/, "", v); print v; exit }
    ' "$report"
}

declare -A rate rss_kb queue
for n in "$n_small" "$n_large"; do
    yaml="$work/pipeline-$n.yaml"
    state="$work/state-$n"
    cat >"$yaml" <<EOF
description: rss bench ($n records)
stages:
  - id: gen
    kind: generate
    config: { count: $n, text_bytes: 256 }
  - id: chunk
    kind: chunk
    inputs: [gen]
    config: { max_tokens: 64, overlap: 0 }
  - id: sink
    kind: blackhole
    inputs: [chunk]
    concurrency: $sink_concurrency
    config: { delay_ms: $sink_delay_ms, batch: $sink_batch }
EOF
    echo "running N=$n ..." >&2
    if ! measure_rss "$work/rss-$n" "$pipe" run --quiet --state-dir "$state" "$yaml"; then
        echo "error: pipe run failed for N=$n" >&2
        exit 1
    fi
    reports=("$state"/runs/*/report.json)
    report="${reports[0]}"
    if [[ ${#reports[@]} -ne 1 || ! -f "$report" ]]; then
        echo "error: expected one report.json under $state/runs" >&2
        exit 1
    fi
    if ! grep -q '"status": "completed"' "$report"; then
        echo "error: run for N=$n did not complete:" >&2
        cat "$report" >&2
        exit 1
    fi
    # Each generated 256-byte document is under 64 tokens, so it becomes exactly one chunk.
    expected="$n"
    got="$(stage_field "$report" sink in)"
    if [[ "$got" != "$expected" ]]; then
        echo "error: N=$n: the sink received ${got:-nothing}, expected $expected records" >&2
        cat "$report" >&2
        exit 1
    fi
    duration="$(awk '/"duration_s":/ { v = $2; gsub(/[^0-9.]/, "", v); print v; exit }' "$report")"
    rate[$n]="$(awk -v n="$got" -v d="$duration" 'BEGIN { printf "%.0f", n / d }')"
    rss_kb[$n]="$(tr -dc '0-9' <"$work/rss-$n")"
    queue[$n]="$(stage_field "$report" sink max_queue_depth)"
done

printf '%-10s %12s %14s %15s\n' "N" "records/s" "peak RSS MB" "sink max queue"
for n in "$n_small" "$n_large"; do
    printf '%-10s %12s %14s %15s\n' "$n" "${rate[$n]}" \
        "$(awk -v k="${rss_kb[$n]}" 'BEGIN { printf "%.1f", k / 1024 }')" "${queue[$n]}"
done
awk -v a="${rss_kb[$n_small]}" -v b="${rss_kb[$n_large]}" \
    'BEGIN { printf "RSS(10N)/RSS(N) = %.2f\n", b / a }'
