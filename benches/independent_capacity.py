#!/usr/bin/env python3
"""The capacity scenarios of `llm_bench.py`, against `independent_server.py` instead of `pipe-sim`.

`pipe-sim` was written beside pipe's client; `independent_server.py` was not. Here it holds a
hidden capacity of 40 requests in flight, answers after 0.3 s (log-normal, sigma 0.25) + 20 ms
per output token, and refuses over capacity with a bare 429 or 503 (no rate-limit header, no
`retry-after`: a loaded server or gateway, not an account limit). The answers come from a
`pipe-sim` upstream with no latency, 30-100 % of `max_tokens` long.

Each tool runs against a freshly started server (its schedule starts with it): plain `pipe`
(told nothing), `pipe` told the capacity (`initial_concurrency: 40`), and the careful Python
client of `llm_bench.py` (a semaphore of 40, told). The server's own count of requests in flight
is sampled every 0.25 s: the same clock and the same counter for every tool.

    python3 benches/independent_capacity.py --pipe target/release/pipe \
        --sim target/release/pipe-sim --scenario drop_429 --runs 2

Results: benches/results/independent_server.md ("Capacity, against the independent server").
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import llm_bench as lb

BENCH_DIR = Path(__file__).resolve().parent
SERVER = BENCH_DIR / "independent_server.py"

BASE = {"capacity": 40, "latency_s": 0.3, "per_token_s": 0.02, "sigma": 0.25, "overload_status": 429}
PHASE_S = 40
SCENARIOS = {
    "output_length": {"server": BASE, "records": 1500},
    "slowdown": {"server": {**BASE, "schedule": [{"at_s": PHASE_S, "latency_mult": 3},
                                                 {"at_s": 2 * PHASE_S, "latency_mult": 1}]},
                 "records": 2300},
    "drop_429": {"server": {**BASE, "schedule": [{"at_s": PHASE_S, "capacity": 20},
                                                 {"at_s": 2 * PHASE_S, "capacity": 40}]},
                 "records": 2500},
    "drop_503": {"server": {**BASE, "overload_status": 503,
                            "schedule": [{"at_s": PHASE_S, "capacity": 20},
                                         {"at_s": 2 * PHASE_S, "capacity": 40}]},
                 "records": 2500},
}
STAGES = lb.one_call(100)
TOOLS = ("pipe", "pipe_told", "python_careful")


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


def wait_up(port, path, proc, what):
    for _ in range(100):
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            get(port, path)
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not start on port {port}")


def as_sim_schedule(server):
    """The server's capacity schedule in `pipe-sim`'s shape, for `llm_bench.capacity_phases`."""
    sched = [{"at_s": p["at_s"], "hidden_concurrency": p["capacity"]}
             for p in server.get("schedule", []) if "capacity" in p]
    return {"hidden_concurrency": server["capacity"], "schedule": sched}


def run_tool(tool, sc, args, workdir, logdir, bins, n):
    port, up_port = lb.free_port(), lb.free_port()
    cfg = {**sc["server"], "port": port, "upstream": up_port, "seed": args.seed}
    (workdir / "server.json").write_text(json.dumps(cfg))
    up_cfg = {"latency_ms_median": 0, "seed": args.seed, "tokenizer": "by_model",
              "answer_length": {"min_fraction": 0.3, "max_fraction": 1.0}}
    (workdir / "upstream.json").write_text(json.dumps(up_cfg))
    up = subprocess.Popen([str(args.sim), "--port", str(up_port), "--config", str(workdir / "upstream.json")],
                          stdout=subprocess.DEVNULL, stderr=open(logdir / f"{tool}.upstream.log", "w"))
    srv = subprocess.Popen([sys.executable, str(SERVER), str(workdir / "server.json")],
                           stdout=subprocess.DEVNULL, stderr=open(logdir / f"{tool}.server.log", "w"))
    try:
        wait_up(up_port, "/_sim/stats", up, "pipe-sim")
        wait_up(port, "/_stats", srv, "independent_server.py")
        zero = time.time() - get(port, "/_stats")["t"]  # the server's schedule starts here
        base = f"http://127.0.0.1:{port}"
        samples, done = [], threading.Event()

        def sample():
            while not done.wait(0.25):
                try:
                    s = get(port, "/_stats")
                    samples.append([round(time.time() - zero, 2), s["in_flight"]])
                except OSError:
                    pass

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        if tool.startswith("pipe"):
            told = 40 if tool == "pipe_told" else None
            (workdir / f"{tool}.yaml").write_text(lb.pipeline_yaml(sc_for_lb(), workdir, base, told))
            res = lb.run_pipe(args.pipe, tool, workdir, logdir, n, zero, lb.TOOL_TIMEOUT_S)
        else:
            res = lb.run_python(bins["python"], bins["python_env"], "careful", sc_for_lb(), workdir,
                                logdir, base, n, zero, lb.TOOL_TIMEOUT_S)
        done.set()
        sampler.join()
        stats = get(port, "/_stats")
    finally:
        for p in (srv, up):
            p.terminate()
            p.wait(timeout=10)
    refused = stats["overload"] + stats["r429"]
    phases = lb.capacity_phases(samples, as_sim_schedule(cfg), res["start_s"], res["end_s"])
    span = stats["last"] - stats["first"] if stats["last"] is not None else None
    out = {
        "status": res["status"], "written": res["written"], "failed": res["failed"], "lost": res["lost"],
        "requests": stats["requests"], "refused": refused,
        "refused_rate": refused / stats["requests"] if stats["requests"] else None,
        "busy_span_s": span, "per_record_s": span / res["written"] if span and res["written"] else None,
        "server_busy_sum_s": stats["busy_sum"], "mean_in_flight": stats["busy_sum"] / span if span else None,
        "phases": phases, "server_samples": samples, "server_stats": stats,
    }
    lb.log(f"  {tool}: {out['status']}, {out['written']} written, {out['failed']} failed, busy span "
           f"{span or 0:.2f} s, {refused} refused of {stats['requests']}, mean in flight "
           f"{out['mean_in_flight'] or 0:.2f}"
           + "".join(f"; {p['phase']}: 90 % after {p['time_to_90pct_s']} s, held {lb.pct(p['held_fraction'])}"
                     for p in phases))
    return out


def sc_for_lb():
    """What `llm_bench` needs of a scenario to write pipe's file and run the careful client."""
    return {"kind": "capacity", "sim": {"hidden_concurrency": 40}, "limit": None, "stages": STAGES}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipe", type=Path, required=True)
    p.add_argument("--sim", type=Path, required=True)
    p.add_argument("--scenario", choices=sorted(SCENARIOS), action="append")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scale", type=float, default=1.0, help="× records (phases stay 40 s)")
    p.add_argument("--venv", type=Path, default=Path("/tmp/pipe-bench-venv"))
    p.add_argument("--corpus", type=Path, default=lb.REPO.parent / "shared" / "corpus" / "apollo13" / "transcripts")
    p.add_argument("--results", type=Path, default=Path("/tmp/independent_capacity"))
    args = p.parse_args()
    python, env, _ = lb.ensure_venv(args.venv)
    bins = {"python": python, "python_env": env}
    lines = lb.corpus_lines(args.corpus)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scenario or sorted(SCENARIOS):
            sc = SCENARIOS[name]
            n = int(sc["records"] * args.scale)
            for run in range(1, args.runs + 1):
                workdir = Path(tmp) / f"{name}-{run}"
                workdir.mkdir()
                logdir = args.results / name / f"run{run}"
                logdir.mkdir(parents=True, exist_ok=True)
                with (workdir / "prompts.jsonl").open("w") as f:
                    for t in lb.make_prompts(lines, n, (50, 150)):
                        f.write(json.dumps({"text": t}) + "\n")
                lb.log(f"{name} run {run}: {n} records, server {json.dumps(sc['server'])}")
                for tool in TOOLS:
                    res = run_tool(tool, sc, args, workdir, logdir, bins, n)
                    results.setdefault(name, []).append({"run": run, "tool": tool, **res})
                    (args.results / "results.json").write_text(json.dumps(results, indent=1))
    for name, rows in results.items():
        print(f"\n{name}")
        for r in rows:
            print(f"  run {r['run']} {r['tool']:>15}: {r['written']} written, {r['failed']} failed, "
                  f"{r['busy_span_s'] or 0:7.2f} s busy span, {r['per_record_s'] or 0:.4f} s/record, "
                  f"{lb.pct(r['refused_rate'])} refused, mean in flight {r['mean_in_flight'] or 0:.2f}")


if __name__ == "__main__":
    main()
