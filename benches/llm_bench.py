#!/usr/bin/env python3
"""Macro benchmark: `pipe` vs. the usual hand-written Python client, against a rate limit.

Both tools push the same prompts file through the same OpenAI-compatible endpoint
(`pipe-sim`, an API simulator with OpenAI-style short-window RPM/TPM buckets and lognormal
latency) and we compare how well each one uses the limit it is bound by, and what it costs
the provider in refused requests.

Scenarios (one simulator per scenario, `POST /_sim/reset` before each tool):

* ``rpm``: sim ``{rpm: 1800, latency_ms_median: 300, seed: 7}``; short prompts (one
  transcript turn, about 50-150 tokens), ``max_tokens`` 64; pipe limit ``{rpm: 1800}``.
* ``tpm``: sim ``{tpm: 600000, latency_ms_median: 300, seed: 7}``; about 600 prompt tokens
  of transcript text + ``max_tokens`` 200 (~800 tokens debited per call); pipe limit
  ``{tpm: 600000}``.
* ``adaptive``: sim ``{hidden_concurrency: 40, latency_ms_median: 300, seed: 7}``: no rate
  limit, but a 41st request in flight is refused with 429 and no header says so. pipe is told
  nothing (its provider has no ``limit``, so it gets an adaptive one); it serves
  ``--metrics-addr`` and the driver samples ``pipe_limit_in_flight`` every 0.25 s to see when
  it reaches 90 % of the capacity (36 in flight) and what it holds after 30 s.

Measured per tool and scenario:

* successes (HTTP 200), 429s and total requests, from the simulator's ``/_sim/stats``;
* elapsed: pipe -> ``report.json`` ``duration_s`` (the whole run, start-up included);
  Python -> the client's own timer around ``asyncio.gather`` (imports excluded);
* utilisation of the binding limit: RPM -> successes / (elapsed x rpm/60);
  TPM -> ``tokens.debited`` / (elapsed x tpm/60). ``tokens.debited`` is what the simulator
  takes from its TPM bucket on admission (prompt tokens + ``max_tokens``, the OpenAI rule);
  refused requests debit nothing, and with no injected faults every admitted request is a
  200, so it is exactly the tokens debited by successful requests. The driver cross-checks
  it against ``tokens.prompt + successes x max_tokens``;
* 429 rate = 429s / total requests;
* failed and lost records: pipe -> dead-lettered (report), lost = inputs - (lines in the
  output file + dead-lettered); Python -> ``calls_failed``, lost = inputs - ok - failed.

Results: a markdown table on stdout and in ``benches/results/llm_bench.md``, raw data in
``benches/results/llm_bench.json``.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CLIENT = BENCH_DIR / "llm_python_client.py"
MODEL = "gpt-4o-mini"
API_KEY = "sk-bench"
# cl100k_base averages about 3.1 characters per token on this corpus (measured with the
# simulator's prompt_tokens: timestamps, call signs and numbers make it denser than plain
# English). Prompt sizes are chosen in characters; the measured mean prompt tokens are
# reported next to the results.
CHARS_PER_TOKEN = 3.0

SCENARIOS = {
    "rpm": {
        "sim": {"rpm": 1800, "latency_ms_median": 300, "seed": 7},
        "limit": {"rpm": 1800},
        "max_tokens": 64,
        "prompt_tokens": (50, 150),
    },
    "tpm": {
        "sim": {"tpm": 600000, "latency_ms_median": 300, "seed": 7},
        "limit": {"tpm": 600000},
        "max_tokens": 200,
        "prompt_tokens": (600, 600),
    },
    "adaptive": {
        "sim": {"hidden_concurrency": 40, "latency_ms_median": 300, "seed": 7},
        "limit": None,
        "capacity": 40,
        "max_tokens": 64,
        "prompt_tokens": (50, 150),
    },
}
# The simulator's latency is lognormal with this sigma (its default): mean = median x e^(s^2/2).
LATENCY_SIGMA = 0.3

PIPELINE = """\
resources:
{limits}  providers:
    llm: {{ kind: openai, model: {model}, base_url: "{base_url}", api_key: {api_key}{limit_ref} }}
stages:
  - id: read
    kind: files
    config: {{ path: "{dir}", glob: "prompts.jsonl", text_field: text }}
  - id: ask
    kind: llm
    inputs: [read]
    concurrency: 256
    config: {{ provider: llm, prompt: "{{{{ text }}}}", max_tokens: {max_tokens} }}
  - id: out
    kind: jsonl
    inputs: [ask]
    config: {{ path: "{dir}/out.jsonl" }}
"""


def log(msg):
    print(f"[llm_bench] {msg}", file=sys.stderr, flush=True)


def flow(d):
    """A dict as a one-line YAML/JSON flow mapping."""
    return "{ " + ", ".join(f"{k}: {json.dumps(v)}" for k, v in d.items()) + " }"


# --- setup -------------------------------------------------------------------------------


def build(target_dir):
    cmd = ["cargo", "build", "--release", "-p", "pipe", "-p", "pipe-simulator"]
    log(f"building: CARGO_TARGET_DIR={target_dir} {' '.join(cmd)}")
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir))
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def ensure_venv(venv):
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating venv {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = [str(python), "-c", "import openai, tenacity"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        log("installing openai + tenacity into the venv")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "openai", "tenacity"], check=True)
    versions = subprocess.run(
        [str(python), "-c",
         "import importlib.metadata as m, sys; "
         "print(sys.version.split()[0], m.version('openai'), m.version('tenacity'))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return python, dict(zip(["python", "openai", "tenacity"], versions))


def corpus_lines(corpus):
    files = sorted(corpus.glob("*.txt"))
    if not files:
        sys.exit(f"no *.txt files in {corpus}")
    return [ln.strip() for f in files for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]


def make_prompts(lines, n, tokens):
    """n distinct prompts of about tokens=(lo, hi) cl100k tokens, taken from the corpus.

    A prompt is a run of consecutive transcript turns, one per line, from some starting turn
    until it is at least lo tokens long; a run longer than hi is cut at a word boundary.
    Every starting turn gives a different prompt, and prompts must be distinct: pipe caches
    responses by request, and a repeated prompt would not be a call.
    """
    lo, hi = (int(t * CHARS_PER_TOKEN) for t in tokens)
    pool = []
    for start in range(len(lines)):
        text, end = lines[start], start + 1
        while len(text) < lo and end < len(lines):
            text, end = text + "\n" + lines[end], end + 1
        if len(text) >= lo:
            pool.append(text if len(text) <= hi else text[: text.rfind(" ", 0, hi + 1)])
    pool = list(dict.fromkeys(pool))
    if len(pool) < n:
        sys.exit(f"the corpus gives only {len(pool)} distinct prompts of {tokens} tokens, {n} needed")
    stride = len(pool) / n  # spread the picks over the whole corpus
    return [pool[int(i * stride)] for i in range(n)]


# --- simulator ---------------------------------------------------------------------------


class Sim:
    def __init__(self, binary, config_path, log_path):
        self.cmd = [str(binary), "--port", "0", "--config", str(config_path)]
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.close()
            sys.exit(f"pipe-sim did not start (said {line!r}); see {log_path}")
        self.base = "http://" + line.removeprefix("listening on ")

    def call(self, method, path):
        req = urllib.request.Request(self.base + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def reset(self):
        self.call("POST", "/_sim/reset")

    def stats(self):
        return self.call("GET", "/_sim/stats")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


# --- the two tools -----------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


IN_FLIGHT = re.compile(r'^pipe_limit_in_flight\{limit="provider:llm"\} (\d+)$', re.M)


def run_pipe(pipe, workdir, n, sample_in_flight=False):
    """Runs pipe; with `sample_in_flight`, also samples its adaptive limit's in-flight count
    from `--metrics-addr` every 0.25 s as (seconds since start, in flight)."""
    state = workdir / "pipe-state"
    out = workdir / "out.jsonl"
    cmd = [str(pipe), "run", str(workdir / "pipeline.yaml"), "--state-dir", str(state), "--quiet"]
    if sample_in_flight:
        metrics = f"127.0.0.1:{free_port()}"
        cmd += ["--metrics-addr", metrics]
    log("  " + shlex.join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = []
    while sample_in_flight and proc.poll() is None:
        time.sleep(0.25)
        try:
            with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=2) as r:
                m = IN_FLIGHT.search(r.read().decode())
            if m:
                samples.append((round(time.perf_counter() - t0, 2), int(m.group(1))))
        except OSError:
            pass  # not serving yet, or already gone
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    res = {"command": shlex.join(cmd), "exit_code": proc.returncode, "process_wall_s": round(wall, 3)}
    if sample_in_flight:
        res["in_flight_samples"] = samples
    if proc.returncode != 0:
        res["stderr"] = stderr
        print(f"\n`pipe run` exited with {proc.returncode}; stderr:\n{stderr}", file=sys.stderr)
    reports = sorted(state.glob("runs/*/report.json"))
    report = json.loads(reports[-1].read_text()) if reports else None
    res["report"] = report
    written = sum(1 for _ in out.open()) if out.exists() else 0
    dead = report["dead_letters"]["count"] if report else 0
    res.update(
        status=report["status"] if report else "no report",
        elapsed_s=report["duration_s"] if report else None,
        written=written,
        failed=dead,
        lost=n - written - dead,
    )
    return res


def run_python(python, workdir, base_url, max_tokens, n):
    cmd = [str(python), str(CLIENT), "--prompts", str(workdir / "prompts.jsonl"),
           "--base-url", base_url + "/v1", "--max-tokens", str(max_tokens),
           "--out", str(workdir / "py_out.jsonl")]
    log("  " + shlex.join(cmd))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    res = {"command": shlex.join(cmd), "exit_code": p.returncode, "process_wall_s": round(wall, 3)}
    if p.returncode != 0:
        print(f"\nthe Python client exited with {p.returncode}; stderr:\n{p.stderr}", file=sys.stderr)
        res.update(stderr=p.stderr, status="failed", elapsed_s=None, written=0, failed=0, lost=n)
        return res
    out = json.loads(p.stdout.strip().splitlines()[-1])
    res.update(
        client=out,
        status="completed",
        elapsed_s=out["elapsed_s"],
        written=out["calls_ok"],
        failed=out["calls_failed"],
        lost=n - out["calls_ok"] - out["calls_failed"],
    )
    return res


def sim_metrics(stats, sc, elapsed):
    by = stats["by_status"]
    ok, n429, total = by.get("200", 0), by.get("429", 0), stats["total_requests"]
    tok = stats["tokens"]
    m = {
        "ok": ok,
        "http_429": n429,
        "other_status": {k: v for k, v in by.items() if k not in ("200", "429")},
        "total_requests": total,
        "rate_429": n429 / total if total else None,
        "debited": tok["debited"],
        "debited_check": tok["prompt"] + ok * sc["max_tokens"],
        "mean_prompt_tokens": tok["prompt"] / ok if ok else None,
        "max_concurrency": stats["max_concurrency"],
        "duplicate_bodies": stats["duplicate_bodies"],
    }
    if elapsed:
        if sc["limit"] is None:
            # Little's law: mean requests in flight = throughput x mean latency.
            mean_latency = sc["sim"]["latency_ms_median"] / 1000 * math.exp(LATENCY_SIGMA**2 / 2)
            m["mean_in_flight"] = ok / elapsed * mean_latency
            m["utilisation"] = m["mean_in_flight"] / sc["capacity"]
        elif "rpm" in sc["limit"]:
            m["utilisation"] = ok / (elapsed * sc["limit"]["rpm"] / 60)
        else:
            m["utilisation"] = tok["debited"] / (elapsed * sc["limit"]["tpm"] / 60)
    else:
        m["utilisation"] = None
    return m


def run_scenario(name, sc, n, lines, bins, tmp):
    workdir = tmp / name
    workdir.mkdir()
    prompts = make_prompts(lines, n, sc["prompt_tokens"])
    with (workdir / "prompts.jsonl").open("w") as f:
        for t in prompts:
            f.write(json.dumps({"text": t}) + "\n")
    (workdir / "sim.json").write_text(json.dumps(sc["sim"]))
    sim = Sim(bins["sim"], workdir / "sim.json", workdir / "sim.log")
    try:
        limits = f"  limits:\n    sim: {flow(sc['limit'])}\n" if sc["limit"] else ""
        (workdir / "pipeline.yaml").write_text(PIPELINE.format(
            limits=limits, limit_ref=", limit: sim" if sc["limit"] else "", model=MODEL, base_url=sim.base + "/v1", api_key=API_KEY,
            dir=workdir, max_tokens=sc["max_tokens"]))
        log(f"scenario {name}: {n} calls, sim {sim.base} {json.dumps(sc['sim'])}")
        result = {"calls": n, "sim_config": sc["sim"], "sim_command": shlex.join(sim.cmd),
                  "pipeline_yaml": (workdir / "pipeline.yaml").read_text(), "tools": {}}
        for tool in ("pipe", "python"):
            sim.reset()
            if tool == "pipe":
                res = run_pipe(bins["pipe"], workdir, n, sample_in_flight=sc["limit"] is None)
                if sc["limit"] is None:
                    res["adaptive"] = adaptive_summary(res["in_flight_samples"], sc["capacity"])
            else:
                res = run_python(bins["python"], workdir, sim.base, sc["max_tokens"], n)
            stats = sim.stats()
            res["sim"] = sim_metrics(stats, sc, res["elapsed_s"])
            res["sim_stats"] = stats
            result["tools"][tool] = res
            log(f"  {tool}: {res['status']}, elapsed {res['elapsed_s'] or 0:.2f} s, "
                f"{res['sim']['ok']} ok, {res['sim']['http_429']} x 429")
        return result
    finally:
        sim.close()


def adaptive_summary(samples, capacity):
    """When pipe first had 90 % of the hidden capacity in flight, and what it held after 30 s."""
    target = 0.9 * capacity
    reached = next((t for t, n in samples if n >= target), None)
    late = [n for t, n in samples if t >= 30]
    return {
        "samples": len(samples),
        "reached_90pct_after_s": reached,
        "mean_in_flight_after_30s": sum(late) / len(late) if late else None,
        "max_in_flight": max((n for _, n in samples), default=None),
    }


# --- output ------------------------------------------------------------------------------


def pct(x):
    return "n/a" if x is None else f"{100 * x:.1f} %"


def table(results):
    rows = [
        "| scenario | tool | inputs | HTTP 200 | HTTP 429 | total requests | 429 rate | elapsed s "
        "| utilisation | failed | lost |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        for tool, t in r["tools"].items():
            s = t["sim"]
            other = "".join(f" (+{v}×{k})" for k, v in s["other_status"].items())
            elapsed = "n/a" if t["elapsed_s"] is None else f"{t['elapsed_s']:.2f}"
            rows.append(
                f"| {name} | {tool} | {r['calls']} | {s['ok']} | {s['http_429']}{other} "
                f"| {s['total_requests']} | {pct(s['rate_429'])} | {elapsed} "
                f"| {pct(s['utilisation'])} | {t['failed']} | {t['lost']} |"
            )
    return "\n".join(rows)


def details(results):
    lines = []
    for name, r in results.items():
        for tool, t in r["tools"].items():
            s = t["sim"]
            check = "matches" if s["debited"] == s["debited_check"] else "DIFFERS from"
            if "adaptive" in t:
                a = t["adaptive"]
                after = a["mean_in_flight_after_30s"]
                lines.append(
                    f"- **{name} / {tool} in flight** (sampled from `--metrics-addr`): reached "
                    f"90 % of the hidden capacity (36 of 40) after {a['reached_90pct_after_s']} s; "
                    f"mean in flight after 30 s: "
                    f"{'n/a' if after is None else f'{after:.1f} ({100 * after / 40:.0f} %)'}; "
                    f"max {a['max_in_flight']}; {a['samples']} samples.")
            note = (f"- **{name} / {tool}**: status `{t['status']}`, exit code {t['exit_code']}, "
                    f"process wall time {t['process_wall_s']} s; mean prompt "
                    f"{s['mean_prompt_tokens'] or 0:.0f} tokens; tokens.debited {s['debited']} "
                    f"({check} prompt + 200s × max_tokens = {s['debited_check']}); "
                    f"peak concurrency at the sim {s['max_concurrency']}; "
                    f"duplicate bodies {s['duplicate_bodies']}")
            if tool == "pipe" and t["report"]:
                calls = next((st.get("calls") for st in t["report"]["stages"] if st["id"] == "ask"), None)
                if calls:
                    note += (f"; pipe report: calls {calls['calls']}, attempts {calls['attempts']}, "
                             f"retries {calls['retries']}, rate_limited {calls['rate_limited']}")
            if tool == "python" and "client" in t:
                note += f"; client failures by type: {t['client']['failures'] or 'none'}"
            lines.append(note + ".")
    return "\n".join(lines)


def markdown(results, meta):
    sims = "\n".join(f"- `{name}`: sim `{json.dumps(r['sim_config'])}`, pipe limit "
                     f"`{flow(SCENARIOS[name]['limit']) if SCENARIOS[name]['limit'] else 'none (adaptive)'}`, max_tokens {SCENARIOS[name]['max_tokens']}, "
                     f"{r['calls']} calls" for name, r in results.items())
    cmds = "\n".join(
        f"    # {name}\n    {r['sim_command']}\n"
        + "".join(f"    {t['command']}\n" for t in r["tools"].values())
        for name, r in results.items())
    return f"""# LLM macro benchmark: pipe vs. a hand-written Python client

Date: {meta['date']}. Machine: {meta['cpus']} cores, {meta['platform']}; pipe at git
`{meta['git']}`. Python client: Python {meta['venv']['python']}, openai {meta['venv']['openai']},
tenacity {meta['venv']['tenacity']}.

Run with:

    {meta['command']}

Scenarios (simulator `pipe-sim`, one per scenario, `POST /_sim/reset` before each tool; pipe
runs first, then Python):

{sims}

{table(results)}

- **HTTP 200 / 429 / total requests**: counted by the simulator (`/_sim/stats` `by_status`,
  `total_requests`); other statuses, if any, are shown in brackets.
- **elapsed**: pipe = `duration_s` from its `report.json` (the whole run, including start-up);
  Python = the client's timer around `asyncio.gather` (interpreter start and imports excluded).
- **utilisation**: rpm = HTTP 200s / (elapsed × 1800/60); tpm = `tokens.debited` /
  (elapsed × 600000/60); adaptive = mean requests in flight over the whole run (Little's law:
  200s / elapsed × mean latency, 0.3 s × e^(0.3²/2)) / the hidden capacity of 40 — the
  ramp-up from 1 in flight is included, see the in-flight samples below for the steady state. `tokens.debited` is what the simulator takes from its TPM bucket
  when it admits a request (prompt tokens + `max_tokens`); refused requests debit nothing and
  no faults are injected, so it is the tokens debited by successful requests (checked below
  against prompt tokens of the 200s + 200s × max_tokens). Both buckets start full (1 s of
  refill), so a run of T seconds can reach at most (1 + 1/T) × 100 %.
- **429 rate** = 429s / total requests.
- **failed**: pipe = dead-lettered records (report `dead_letters.count`); Python =
  `calls_failed` (calls that raised after all retries). **lost**: pipe = inputs − (lines in
  `out.jsonl` + dead-lettered); Python = inputs − ok − failed.
- The Python client is `benches/llm_python_client.py`: `AsyncOpenAI` (defaults kept,
  including the SDK's own `max_retries=2`, which honours `retry-after-ms`), `asyncio.Semaphore(20)`,
  tenacity `wait_random_exponential(min=1, max=60)`, `stop_after_attempt(10)` on
  RateLimitError / APIConnectionError / APITimeoutError / InternalServerError. One tenacity
  attempt can therefore be up to 3 HTTP requests.

Details:

{details(results)}

Exact commands (the paths are in a temporary directory that is deleted afterwards; the
pipeline YAML and raw stats are in `llm_bench.json`):

{cmds}"""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target-dir", type=Path,
                   default=Path(os.environ.get("CARGO_TARGET_DIR", "/root/.cache/pipe-target")))
    p.add_argument("--no-build", action="store_true", help="use the binaries already built")
    p.add_argument("--calls-rpm", type=int, help="calls in the rpm scenario (default 1200)")
    p.add_argument("--calls-tpm", type=int, help="calls in the tpm scenario (default 600)")
    p.add_argument("--calls-adaptive", type=int,
                   help="calls in the adaptive scenario (default 6000: long enough to see 30 s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 150 rpm, 80 tpm, 600 adaptive calls (unless given)")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), action="append",
                   help="run only this scenario (repeatable; default all)")
    p.add_argument("--corpus", type=Path, default=Path("/work/shared/corpus/apollo13/transcripts"))
    p.add_argument("--venv", type=Path, default=Path("/tmp/pipe-bench-venv"))
    p.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    args = p.parse_args()
    calls = {
        "rpm": args.calls_rpm or (150 if args.quick else 1200),
        "tpm": args.calls_tpm or (80 if args.quick else 600),
        "adaptive": args.calls_adaptive or (600 if args.quick else 6000),
    }

    target = args.target_dir.resolve()
    if not args.no_build:
        build(target)
    bins = {"pipe": target / "release" / "pipe", "sim": target / "release" / "pipe-sim"}
    for b in bins.values():
        if not b.exists():
            sys.exit(f"missing binary {b} (build it, or drop --no-build)")
    bins["python"], venv_versions = ensure_venv(args.venv)
    lines = corpus_lines(args.corpus)
    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                         capture_output=True, text=True).stdout.strip() or "unknown"

    results = {}
    with tempfile.TemporaryDirectory(prefix="pipe-llm-bench-") as tmp:
        for name in args.scenario or list(SCENARIOS):
            results[name] = run_scenario(name, SCENARIOS[name], calls[name], lines, bins, Path(tmp))

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "git": git,
        "venv": venv_versions,
        "command": shlex.join(["python3", "benches/llm_bench.py", *sys.argv[1:]]),
    }
    md = markdown(results, meta)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "llm_bench.md").write_text(md)
    (args.results / "llm_bench.json").write_text(json.dumps({"meta": meta, "scenarios": results}, indent=2))
    print(md)
    failed = [f"{n}/{t}" for n, r in results.items() for t, x in r["tools"].items() if x["exit_code"] != 0]
    if failed:
        sys.exit(f"runs that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
