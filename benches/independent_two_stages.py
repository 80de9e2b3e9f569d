#!/usr/bin/env python3
"""Two model stages on one provider, no limit told (the README's default), against
`independent_server.py`: the shape of every knowledge-graph pipeline (extract → contextualise
on one account) and the one issue 7 found hanging.

`generate → llm (concurrency 64, max_tokens 60) → llm (concurrency 8, buffer 16,
max_tokens 20) → jsonl`. The second stage is the slower one, so the first spends most of the
run waiting on it: after its first burst it calls less than the limit it found, then all at
once again when the edge drains. The server holds 40 in flight, answers after 0.3 s + 20 ms
per output token, and at 25 s drops to 20 in flight and 3× slower (503 over capacity), back
at 50 s. Each binary runs against a freshly started server (its schedule starts with it),
the binaries taking turns, and the server's own counts are printed per run.

    python3 benches/independent_two_stages.py --sim target/debug/pipe-sim \
        --pipe base=/tmp/pipe_old --pipe final=target/debug/pipe --runs 2

Results: benches/results/independent_server.md ("Two stages, no limit told").
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
SERVER = BENCH_DIR / "independent_server.py"
SERVER_CFG = {
    "capacity": 40,
    "tpm": 400000,
    "rpm": 3000,
    "overload_status": 503,
    "schedule": [
        {"at_s": 25, "capacity": 20, "latency_mult": 3},
        {"at_s": 50, "capacity": 40, "latency_mult": 1},
    ],
}
PIPELINE = """\
resources:
  providers:
    llm: {{ kind: openai, model: gpt-4o-mini, base_url: "http://127.0.0.1:{port}/v1", api_key: sk-bench }}
stages:
  - {{ id: gen, kind: generate, config: {{ count: {records}, text_bytes: 400 }} }}
  - id: first
    kind: llm
    inputs: [gen]
    concurrency: 64
    config: {{ provider: llm, prompt: "Summarise: {{{{ text }}}}", max_tokens: 60 }}
  - id: second
    kind: llm
    inputs: [first]
    concurrency: 8
    buffer: 16
    config: {{ provider: llm, prompt: "Shorter: {{{{ answer }}}}", max_tokens: 20, output_field: short }}
  - {{ id: out, kind: jsonl, inputs: [second], config: {{ path: out.jsonl }} }}
"""


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


def wait_up(port, path):
    for _ in range(100):
        try:
            return get(port, path)
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing answers on port {port}")


def one_run(name, binary, args, workdir):
    cfg = {**SERVER_CFG, "port": args.port, "upstream": args.port + 1}
    (workdir / "server.json").write_text(json.dumps(cfg))
    (workdir / "pipeline.yaml").write_text(PIPELINE.format(port=args.port, records=args.records))
    server = subprocess.Popen([sys.executable, str(SERVER), str(workdir / "server.json")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(args.port, "/_stats")
        started = time.monotonic()
        run = subprocess.run([str(binary), "run", "pipeline.yaml", "--no-cache", "-q",
                              "--state-dir", str(workdir / f".pipe-{name}")],
                             cwd=workdir, capture_output=True, text=True)
        wall = time.monotonic() - started
        stats = get(args.port, "/_stats")
    finally:
        server.kill()
        server.wait()
    written = sum(1 for _ in open(workdir / "out.jsonl")) if run.returncode == 0 else 0
    share = stats["overload"] / max(stats["requests"], 1)
    print(f"{name}: exit {run.returncode}, {written} of {args.records} written, {wall:.1f} s, "
          f"server busy {stats['last'] - stats['first']:.1f} s, {stats['requests']} requests, {stats['overload']} refused ({100 * share:.1f} %), "
          f"max in flight {stats['max_in_flight']}", flush=True)
    if run.returncode != 0:
        print(run.stderr[-2000:], file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sim", type=Path, required=True, help="pipe-sim binary (the answers' upstream)")
    p.add_argument("--pipe", action="append", required=True, metavar="NAME=BINARY")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--records", type=int, default=600)
    p.add_argument("--port", type=int, default=18620)
    args = p.parse_args()
    binaries = [tuple(b.split("=", 1)) for b in args.pipe]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "upstream.json").write_text('{"latency_ms_median": 0}')
        upstream = subprocess.Popen([str(args.sim), "--port", str(args.port + 1),
                                     "--config", str(tmp / "upstream.json")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_up(args.port + 1, "/_sim/stats")
            for _ in range(args.runs):
                for name, binary in binaries:
                    one_run(name, Path(binary), args, tmp)
        finally:
            upstream.kill()


if __name__ == "__main__":
    main()
