#!/usr/bin/env python3
"""Macro benchmark: `pipe` vs. hand-written Python clients, against a simulated LLM provider.

Three tools push the same prompts through the same OpenAI-compatible endpoint (`pipe-sim`, an
API simulator with OpenAI-style short-window RPM/TPM buckets, a hidden concurrency cap,
model-like latency and schedules), one after the other, and we compare how well each one uses
the limit it is bound by, what it costs the provider in refused requests, and how long it takes:

* ``pipe``: a `files -> llm [-> llm] -> jsonl` pipeline;
* ``pipe_told`` (capacity scenarios): the same, told what the careful client is told: the hidden
  capacity, as its adaptive limit's ``initial_concurrency`` (it still adapts to what follows);
* ``python_naive``: today's usual client, `AsyncOpenAI` + `asyncio.Semaphore(20)` + tenacity
  (``benches/llm_python_client.py --style naive``);
* ``python_careful``: what a careful user writes: the same limits through `aiolimiter` (RPM and a
  TPM token bucket with tiktoken counts), `retry-after` honoured, a semaphore sized to the known
  capacity (``--style careful``).

Scenarios (see ``SCENARIOS``): ``rpm``, ``tpm`` and ``tpm_server_counting`` are bound by a rate
limit that both pipe and the careful client are told; ``adaptive``, ``output_length``,
``slowdown``, ``capacity_drop_429``, ``capacity_drop_503`` and ``two_stages`` are bound by a
hidden concurrency cap (pipe's provider has no ``limit``, so it gets an adaptive one; the
careful client's semaphore is sized to the hidden capacity, the best a Python user could do by
hand, and ``pipe_told`` starts its adaptive limit there). Each scenario runs ``--runs`` times
(default 3) from a committed tree; every number is reported as the median and the spread
(min-max) over the runs.

Measured per tool and run: successes and refusals (429 / 503) from the simulator's
``/_sim/stats``; the busy span, from the first request the simulator received to the last it
finished (the same clock for every tool; "not slower" compares it per record written), the
process wall time and each tool's own timer (pipe: ``report.json`` ``duration_s``, start-up
included; Python: the client's timer around ``asyncio.gather``, imports excluded); utilisation
of a rate limit
(successes or debited tokens per second / the limit); requests in flight every 0.25 s (pipe:
``--metrics-addr`` ``pipe_limit_in_flight``; Python: counted in the HTTP transport) and from
them, per phase of the simulator's schedule, the time until 90 % of the hidden capacity is in
flight and the mean held from 30 s into the phase; failed and lost records.

Results: ``benches/results/llm_bench.md`` (tables), ``benches/results/llm_bench.json`` (raw) and
``benches/results/llm_bench_runs/<scenario>/run<k>/`` (per-run logs). ``--quick`` is a short
development run (fewer calls, 15 s phases, one run) that writes to /tmp unless ``--results``
is given.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
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
# cl100k_base averages about 3.0 characters per token on this corpus (timestamps, call signs
# and numbers make it denser than plain English; o200k_base is within 3 %). Prompt sizes are
# chosen in characters; the measured mean prompt tokens are reported next to the results.
CHARS_PER_TOKEN = 3.0
TOOLS = ("pipe", "python_naive", "python_careful")
# In the capacity scenarios pipe also runs told what the careful client is told: the capacity, as
# its adaptive limit's `initial_concurrency` (it still adapts). Plain `pipe` is told nothing.
CAPACITY_TOOLS = ("pipe", "pipe_told", "python_naive", "python_careful")
PY_PACKAGES = ("openai", "tenacity", "aiolimiter", "tiktoken")
# Seconds a tool may run before it is killed (and the run reported as timed out).
TOOL_TIMEOUT_S = 1200


def tools_of(sc):
    """The tools a scenario runs, in order."""
    return CAPACITY_TOOLS if sc["kind"] == "capacity" else TOOLS

# Every simulator counts OpenAI tokens in the model's own encoding (o200k_base for
# gpt-4o-mini), as OpenAI does.
BASE_SIM = {"tokenizer": "by_model"}
# "A call takes 0.3 s + 20 ms per output token, answers 30-100 % of max_tokens" (issue 7).
MODEL_LIKE = {
    "hidden_concurrency": 40,
    "latency_ms_median": 300,
    "latency_per_output_token_ms": 20,
    "answer_length": {"min_fraction": 0.3, "max_fraction": 1.0},
}


def one_call(max_tokens):
    return [{"id": "ask", "prompt": "{{ text }}", "max_tokens": max_tokens, "output_field": "answer"}]


# `calls` = (full, quick) records. `schedule(p)` gives the simulator's phases for a phase
# length of p seconds (40 full, 15 quick); the capacity scenarios have enough records that a
# tool at the full capacity is still running 40 s (15 s) after the last change.
SCENARIOS = {
    "rpm": {
        "kind": "rate",
        "sim": {"rpm": 1800, "latency_ms_median": 300},
        "limit": {"rpm": 1800},
        "stages": one_call(64),
        "prompt_tokens": (50, 150),
        "calls": (1200, 150),
        "what": "RPM-bound: 1,800 RPM, 300 ms median latency, short prompts",
    },
    "tpm": {
        "kind": "rate",
        "sim": {"tpm": 600000, "latency_ms_median": 300},
        "limit": {"tpm": 600000},
        "stages": one_call(200),
        "prompt_tokens": (600, 600),
        "calls": (600, 80),
        "what": "TPM-bound: 600k TPM, ~600-token prompts + max_tokens 200, tiktoken counting",
    },
    "tpm_server_counting": {
        "kind": "rate",
        "sim": {"tpm": 600000, "latency_ms_median": 300, "token_counting": "openai_estimate"},
        "limit": {"tpm": 600000},
        "stages": one_call(200),
        "prompt_tokens": (600, 600),
        "calls": (600, 80),
        "what": "as `tpm`, but the server counts like OpenAI's limiter: max_tokens + characters/4",
    },
    # A per-minute limit enforced over a tenth of a second, which `burst_seconds` (left at its
    # default, 1 s) does not say: the provider's reset headers do. `floor`: the goal for the
    # share of the limit used, where the design gives some up to stay clear of 429s.
    "rpm_short_window": {
        "kind": "rate",
        "sim": {"rpm": 600, "burst_seconds": 0.1, "latency_ms_median": 300},
        "limit": {"rpm": 600},
        "stages": one_call(64),
        "prompt_tokens": (50, 150),
        "calls": (300, 100),
        "floor": 0.88,
        "what": "600 RPM enforced over 0.1 s (a window of one request; pipe spaces calls 10 % "
                "wider than the rate there, hence the 88 % goal)",
    },
    "tpm_short_window": {
        "kind": "rate",
        "sim": {"tpm": 600000, "burst_seconds": 0.1, "latency_ms_median": 300},
        "limit": {"tpm": 600000},
        "stages": one_call(200),
        "prompt_tokens": (600, 600),
        "calls": (300, 60),
        "floor": 0.9,
        "what": "600k TPM enforced over 0.1 s (a window of 1,000 tokens, a call and a quarter)",
    },
    "adaptive": {
        "kind": "capacity",
        "sim": {"hidden_concurrency": 40, "latency_ms_median": 300},
        "limit": None,
        "stages": one_call(64),
        "prompt_tokens": (50, 150),
        "calls": (5000, 600),
        "what": "hidden capacity 40 in flight, 300 ms median latency, limits unknown",
    },
    "output_length": {
        "kind": "capacity",
        "sim": MODEL_LIKE,
        "limit": None,
        "stages": one_call(100),
        "prompt_tokens": (50, 150),
        "calls": (1500, 300),
        "what": "hidden capacity 40, latency 0.3 s + 20 ms per output token, answers 30-100 % of max_tokens 100",
    },
    "slowdown": {
        "kind": "capacity",
        "sim": MODEL_LIKE,
        "schedule": lambda p: [{"at_s": p, "latency_factor": 3}, {"at_s": 2 * p, "latency_factor": 1}],
        "limit": None,
        "stages": one_call(100),
        "prompt_tokens": (50, 150),
        "calls": (2300, 900),
        "what": "as `output_length`, with latency x3 for one phase and back",
    },
    "capacity_drop_429": {
        "kind": "capacity",
        "sim": {**MODEL_LIKE, "overload_status": 429},
        "schedule": lambda p: [{"at_s": p, "hidden_concurrency": 20}, {"at_s": 2 * p, "hidden_concurrency": 40}],
        "limit": None,
        "stages": one_call(100),
        "prompt_tokens": (50, 150),
        "calls": (2500, 950),
        "what": "as `output_length`, capacity 40 -> 20 -> 40, overload answered 429 (retry-after: 1)",
    },
    "capacity_drop_503": {
        "kind": "capacity",
        "sim": {**MODEL_LIKE, "overload_status": 503},
        "schedule": lambda p: [{"at_s": p, "hidden_concurrency": 20}, {"at_s": 2 * p, "hidden_concurrency": 40}],
        "limit": None,
        "stages": one_call(100),
        "prompt_tokens": (50, 150),
        "calls": (2500, 950),
        "what": "as `capacity_drop_429`, overload answered 503 (no retry-after)",
    },
    "two_stages": {
        "kind": "capacity",
        "sim": MODEL_LIKE,
        "limit": None,
        "stages": [
            {"id": "ask", "prompt": "{{ text }}", "max_tokens": 40, "output_field": "answer"},
            {"id": "expand", "max_tokens": 160, "output_field": "detail",
             "prompt": "Expand on this note about the transcript below.\nNote: {{ answer }}\n\nTranscript:\n{{ text }}"},
        ],
        "prompt_tokens": (50, 150),
        "calls": (700, 150),
        "what": "as `output_length`, each record through two calls (max_tokens 40, then 160) sharing one limit",
    },
}
PHASE_S = (40, 15)  # full, quick
# Seconds into a phase from which the mean in flight counts as "held" (the goal: 90 % within
# 30 s). main() lowers it for phases too short to leave a window after 30 s.
SETTLE_S = 30.0


def records(sc, quick, phase_ratio, scale):
    """The scenario's records: a schedule scenario's follow the length of its phases (so that a
    tool at the full capacity is still running one phase after the last change), the others'
    are multiplied by `scale`."""
    n = sc["calls"][1 if quick else 0]
    return max(10, round(n * phase_ratio if "schedule" in sc else n * scale))


def log(msg):
    print(f"[llm_bench] {msg}", file=sys.stderr, flush=True)


def flow(d):
    """A dict as a one-line YAML/JSON flow mapping."""
    return "{ " + ", ".join(f"{k}: {json.dumps(v)}" for k, v in d.items()) + " }"


def sim_config(sc, phase_s, seed):
    cfg = {**BASE_SIM, **sc["sim"], "seed": seed}
    if "schedule" in sc:
        cfg["schedule"] = sc["schedule"](phase_s)
    return cfg


def phases(cfg):
    """[(start_s, capacity, label)] of a capacity scenario's simulator config."""
    cap, out = cfg["hidden_concurrency"], [(0.0, cfg["hidden_concurrency"], "start")]
    for ph in cfg.get("schedule", []):
        cap = ph.get("hidden_concurrency", cap)
        what = ", ".join(f"{k} {v}" for k, v in ph.items() if k != "at_s")
        out.append((float(ph["at_s"]), cap, f"{what} at {ph['at_s']:g} s"))
    return out


# --- setup -------------------------------------------------------------------------------


def git_state(allow_dirty):
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout
    head = git("rev-parse", "HEAD").strip() or "unknown"
    # The results directory is this script's own output: it does not make a run dirty.
    dirty = [ln for ln in git("status", "--porcelain").splitlines()
             if not ln[3:].startswith("benches/results/")]
    if dirty:
        msg = f"the tree has uncommitted changes ({', '.join(ln[3:] for ln in dirty[:5])}{', ...' if len(dirty) > 5 else ''})"
        if not allow_dirty:
            sys.exit(f"{msg}: commit them first so the results name the code they measured, "
                     f"or pass --allow-dirty")
        log(f"WARNING: {msg}; the results are marked -dirty")
    return {"commit": head, "dirty": bool(dirty), "describe": head[:10] + ("-dirty" if dirty else "")}


def build(target_dir):
    cmd = ["cargo", "build", "--release", "-p", "pipe", "-p", "pipe-simulator"]
    log(f"building: CARGO_TARGET_DIR={target_dir} {' '.join(cmd)}")
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir))
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def ensure_venv(venv):
    """The benchmark's venv, with the Python clients' packages from PyPI, and tiktoken able to
    load its encodings (seeded from the tiktoken-rs crate when its download site is unreachable)."""
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating venv {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = [str(python), "-c", "import " + ", ".join(PY_PACKAGES)]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        log(f"installing {' '.join(PY_PACKAGES)} into the venv")
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PY_PACKAGES], check=True)
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=str(venv / "tiktoken-cache"))
    load = [str(python), "-c", f"import tiktoken; tiktoken.encoding_for_model({MODEL!r}).encode('x')"]
    if subprocess.run(load, env=env, capture_output=True).returncode != 0:
        seed_tiktoken_cache(python, venv / "tiktoken-cache")
        p = subprocess.run(load, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"tiktoken cannot load the {MODEL} encoding:\n{p.stderr}")
    versions = subprocess.run(
        [str(python), "-c",
         "import importlib.metadata as m, sys, json; "
         f"print(json.dumps({{'python': sys.version.split()[0], "
         f"**{{p: m.version(p) for p in {list(PY_PACKAGES)!r}}}}}))"],
        capture_output=True, text=True, check=True,
    ).stdout
    return python, env, json.loads(versions)


def seed_tiktoken_cache(python, cache):
    """tiktoken downloads its BPE files on first use; offline, we put the same files (tiktoken
    checks their SHA-256) where it caches them, from the tiktoken-rs crate in cargo's registry."""
    cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("o200k_base", "cl100k_base"):
        found = sorted(cargo_home.glob(f"registry/src/*/tiktoken-rs-*/assets/{name}.tiktoken"))
        if not found:
            sys.exit(f"tiktoken cannot download {name} and no tiktoken-rs crate in {cargo_home} has it")
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        key = subprocess.run([str(python), "-c", f"import hashlib; print(hashlib.sha1({url!r}.encode()).hexdigest())"],
                             capture_output=True, text=True, check=True).stdout.strip()
        shutil.copyfile(found[-1], cache / key)
        log(f"seeded tiktoken's cache with {found[-1]}")


def corpus_lines(corpus):
    files = sorted(corpus.glob("*.txt"))
    if not files:
        sys.exit(f"no *.txt files in {corpus}")
    return [ln.strip() for f in files for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]


def make_prompts(lines, n, tokens):
    """n distinct prompts of about tokens=(lo, hi) tokens, taken from the corpus.

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
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def reset(self):
        """Resets the simulator (stats, buckets, the schedule's clock); returns the epoch time
        just after, the zero of every timeline of the run that follows."""
        self.call("POST", "/_sim/reset")
        return time.time()

    def stats(self):
        return self.call("GET", "/_sim/stats")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


# --- the tools ---------------------------------------------------------------------------


PIPELINE = """\
resources:
{limits}  providers:
    llm: {{ kind: openai, model: {model}, base_url: "{base_url}", api_key: {api_key}{limit_ref} }}
stages:
  - id: read
    kind: files
    config: {{ path: "{dir}", glob: "prompts.jsonl", text_field: text }}
{llm_stages}  - id: out
    kind: jsonl
    inputs: [{last}]
    config: {{ path: "{dir}/out.jsonl" }}
"""


def pipeline_yaml(sc, workdir, base_url, told_capacity=None):
    stages, prev = "", "read"
    for st in sc["stages"]:
        cfg = {"provider": "llm", "prompt": st["prompt"], "max_tokens": st["max_tokens"],
               "output_field": st["output_field"]}
        stages += (f"  - id: {st['id']}\n    kind: llm\n    inputs: [{prev}]\n    concurrency: 256\n"
                   f"    config: {flow(cfg)}\n")
        prev = st["id"]
    limit = {"initial_concurrency": told_capacity} if told_capacity else sc["limit"]
    limits = f"  limits:\n    sim: {flow(limit)}\n" if limit else ""
    return PIPELINE.format(limits=limits, limit_ref=", limit: sim" if limit else "", model=MODEL,
                           base_url=base_url + "/v1", api_key=API_KEY, dir=workdir, llm_stages=stages,
                           last=prev)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


IN_FLIGHT = re.compile(r'^pipe_limit_in_flight\{limit="[^"]*"\} (\d+)$', re.M)


def run_pipe(pipe, tool, workdir, logdir, n, zero, timeout):
    """Runs pipe (`workdir/<tool>.yaml`) and samples its limits' requests in flight from
    `--metrics-addr` every 0.25 s as (seconds since `zero`, in flight)."""
    state = workdir / f"{tool}-state"
    shutil.rmtree(state, ignore_errors=True)
    out = workdir / "out.jsonl"
    out.unlink(missing_ok=True)
    metrics = f"127.0.0.1:{free_port()}"
    cmd = [str(pipe), "run", str(workdir / f"{tool}.yaml"), "--state-dir", str(state), "--quiet",
           "--metrics-addr", metrics]
    log("  " + shlex.join(cmd))
    stderr = open(logdir / f"{tool}.stderr", "w")
    start = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    samples, timed_out = [], False
    while proc.poll() is None:
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            timed_out = True
            break
        time.sleep(0.25)
        try:
            with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=2) as r:
                found = IN_FLIGHT.findall(r.read().decode())
            if found:
                samples.append([round(time.time() - zero, 2), sum(int(x) for x in found)])
        except OSError:
            pass  # not serving yet, or already gone
    proc.wait()
    end = time.time()
    stderr.close()
    res = {"command": shlex.join(cmd), "exit_code": proc.returncode,
           "process_wall_s": round(end - start, 3), "start_s": round(start - zero, 3),
           "end_s": round(end - zero, 3), "in_flight_samples": samples}
    if proc.returncode != 0:
        log(f"`pipe run` ({tool}) exited with {proc.returncode}; see {logdir / f'{tool}.stderr'}")
    reports = sorted(state.glob("runs/*/report.json"))
    report = json.loads(reports[-1].read_text()) if reports else None
    if report:
        shutil.copyfile(reports[-1], logdir / f"{tool}.report.json")
    written = sum(1 for _ in out.open()) if out.exists() else 0
    dead = report["dead_letters"]["count"] if report else 0
    res.update(
        report=report,
        status="timed out" if timed_out else (report["status"] if report else "no report"),
        elapsed_s=report["duration_s"] if report and not timed_out else None,
        written=written,
        failed=dead,
        lost=n - written - dead,
    )
    return res


def run_python(python, env, style, sc, workdir, logdir, base_url, n, zero, timeout):
    cmd = [str(python), str(CLIENT), "--style", style, "--prompts", str(workdir / "prompts.jsonl"),
           "--base-url", base_url + "/v1", "--model", MODEL, "--api-key", API_KEY,
           "--stages", json.dumps([{k: v for k, v in st.items() if k != "id"} for st in sc["stages"]])]
    if style == "careful":
        cmd += ["--concurrency", str(sc["sim"]["hidden_concurrency"] if sc["kind"] == "capacity" else 64)]
        for k, v in (sc["limit"] or {}).items():
            cmd += [f"--{k}", str(v)]
    log("  " + shlex.join(cmd))
    start = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        code, stdout, stderr, timed_out = p.returncode, p.stdout, p.stderr, False
    except subprocess.TimeoutExpired as e:
        code, stdout, stderr, timed_out = None, "", (e.stderr or b"").decode(errors="replace"), True
    end = time.time()
    (logdir / f"python_{style}.stderr").write_text(stderr)
    (logdir / f"python_{style}.stdout.json").write_text(stdout)
    res = {"command": shlex.join(cmd), "exit_code": code, "process_wall_s": round(end - start, 3)}
    if code != 0:
        log(f"the Python client ({style}) {'timed out' if timed_out else f'exited with {code}'}; "
            f"see {logdir / f'python_{style}.stderr'}")
        res.update(status="timed out" if timed_out else "failed", elapsed_s=None, written=0, failed=0,
                   lost=n, start_s=round(start - zero, 3), end_s=round(end - zero, 3), in_flight_samples=[])
        return res
    out = json.loads(stdout.strip().splitlines()[-1])
    samples = [[round(t - zero, 2), k] for t, k in out.pop("in_flight_samples")]
    res.update(
        client=out,
        status="completed",
        elapsed_s=out["elapsed_s"],
        written=out["records_ok"],
        failed=out["records_failed"],
        lost=n - out["records_ok"] - out["records_failed"],
        start_s=round(out["start_epoch"] - zero, 3),
        end_s=round(out["end_epoch"] - zero, 3),
        in_flight_samples=samples,
    )
    return res


# --- measures ----------------------------------------------------------------------------


def sim_metrics(stats, sc, cfg, expected_debit):
    by = stats["by_status"]
    ok = by.get("200", 0)
    refused = sum(v for k, v in by.items() if k in ("429", "503", "529"))
    total = stats["total_requests"]
    tok = stats["tokens"]
    m = {
        "ok": ok,
        "refused": refused,
        "by_status": by,
        "rate_limited": stats.get("rate_limited", 0),
        "concurrency_limited": stats.get("concurrency_limited", 0),
        "total_requests": total,
        "refused_rate": refused / total if total else None,
        "debited": tok["debited"],
        "mean_prompt_tokens": tok["prompt"] / ok if ok else None,
        "max_concurrency": stats["max_concurrency"],
        "duplicate_bodies": stats["duplicate_bodies"],
        # First request in to last one finished, on the simulator's clock: the same clock for
        # every tool, which neither's start-up (pipe's process, Python's imports) is on.
        "busy_span_s": stats.get("busy_span_s"),
        "utilisation": None,
    }
    if len(sc["stages"]) == 1:
        # What the bucket must have been debited for the 200s: tiktoken prompt + max_tokens, or
        # under OpenAI's estimate max_tokens + ceil(characters / 4) of each prompt sent once.
        if cfg.get("token_counting") == "openai_estimate":
            m["debited_expected"] = expected_debit
        else:
            m["debited_expected"] = tok["prompt"] + ok * sc["stages"][0]["max_tokens"]
    span = m["busy_span_s"]
    if span and sc["kind"] == "rate":
        if "rpm" in sc["limit"]:
            m["utilisation"] = ok / (span * sc["limit"]["rpm"] / 60)
        else:
            m["utilisation"] = tok["debited"] / (span * sc["limit"]["tpm"] / 60)
    return m


def capacity_phases(samples, cfg, start_s, end_s, window=5.0, settle=None, tail=3.0):
    """Per phase of the schedule: when a `window`-second mean of the in-flight samples first
    reached 90 % of the phase's capacity (seconds after the phase began; the first phase begins
    when the tool started), and the mean held from `settle` s into the phase until it ends (the
    run's last `tail` seconds, the drain, excluded)."""
    settle = SETTLE_S if settle is None else settle
    out = []
    ph = phases(cfg)
    for i, (at, cap, label) in enumerate(ph):
        begin = max(at, start_s) if i == 0 else at
        end = min(ph[i + 1][0] if i + 1 < len(ph) else math.inf, end_s)
        inside = [(t, k) for t, k in samples if begin <= t < end]
        reached = None
        for t, _ in inside:
            win = [k for u, k in inside if t <= u < t + window]
            if t + window > end:
                break
            if sum(win) / len(win) >= 0.9 * cap:
                reached = round(t - begin, 2)
                break
        held = [k for t, k in inside if t >= begin + settle and t < min(end, end_s - tail)]
        out.append({
            "phase": label, "from_s": round(begin, 2), "capacity": cap,
            "ran_s": round(max(0.0, end - begin), 2),
            "time_to_90pct_s": reached,
            "held_mean": sum(held) / len(held) if held else None,
            "held_fraction": sum(held) / len(held) / cap if held else None,
        })
    return out


def run_scenario(name, sc, n, phase_s, seed, run_no, lines, bins, tmp, logdir):
    workdir = tmp / f"{name}-{run_no}"
    workdir.mkdir()
    logdir.mkdir(parents=True, exist_ok=True)
    prompts = make_prompts(lines, n, sc["prompt_tokens"])
    with (workdir / "prompts.jsonl").open("w") as f:
        for t in prompts:
            f.write(json.dumps({"text": t}) + "\n")
    cfg = sim_config(sc, phase_s, seed)
    (workdir / "sim.json").write_text(json.dumps(cfg))
    shutil.copyfile(workdir / "sim.json", logdir / "sim.json")
    expected_debit = sum(sc["stages"][0]["max_tokens"] + math.ceil(len(t) / 4) for t in prompts)
    sim = Sim(bins["sim"], workdir / "sim.json", logdir / "sim.log")
    try:
        (workdir / "pipe.yaml").write_text(pipeline_yaml(sc, workdir, sim.base))
        shutil.copyfile(workdir / "pipe.yaml", logdir / "pipe.yaml")
        if sc["kind"] == "capacity":
            told = pipeline_yaml(sc, workdir, sim.base, told_capacity=cfg["hidden_concurrency"])
            (workdir / "pipe_told.yaml").write_text(told)
            shutil.copyfile(workdir / "pipe_told.yaml", logdir / "pipe_told.yaml")
        log(f"{name} run {run_no}: {n} records, sim {sim.base} {json.dumps(cfg)}")
        result = {"records": n, "sim_config": cfg, "sim_command": shlex.join(sim.cmd), "tools": {}}
        for tool in tools_of(sc):
            load_before = os.getloadavg()[0]
            zero = sim.reset()
            if tool.startswith("pipe"):
                res = run_pipe(bins["pipe"], tool, workdir, logdir, n, zero, TOOL_TIMEOUT_S)
            else:
                res = run_python(bins["python"], bins["python_env"], tool.removeprefix("python_"), sc,
                                 workdir, logdir, sim.base, n, zero, TOOL_TIMEOUT_S)
            stats = sim.stats()
            res["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            res["sim"] = sim_metrics(stats, sc, cfg, expected_debit)
            res["sim_stats"] = stats
            if sc["kind"] == "capacity":
                res["phases"] = capacity_phases(res["in_flight_samples"], cfg, res["start_s"], res["end_s"])
            result["tools"][tool] = res
            s = res["sim"]
            log(f"  {tool}: {res['status']}, elapsed {res['elapsed_s'] or 0:.2f} s, busy span "
                f"{s['busy_span_s'] or 0:.2f} s, {s['ok']} ok, "
                f"{s['refused']} refused of {s['total_requests']}, load {res['load_avg_1m']}"
                + ("".join(f"; {p['phase']}: 90 % after {p['time_to_90pct_s']} s, held "
                           f"{pct(p['held_fraction'])}" for p in res.get("phases", []))))
        return result
    finally:
        sim.close()


# --- summary -----------------------------------------------------------------------------


def pct(x):
    return "n/a" if x is None else f"{100 * x:.1f} %"


def spread(values, fmt=lambda v: f"{v:.2f}"):
    """'median [min–max]' of the values that were measured; n/a if none was."""
    vs = [v for v in values if v is not None]
    missing = len(values) - len(vs)
    if not vs:
        return "n/a"
    s = fmt(statistics.median(vs))
    if len(vs) > 1:
        s += f" [{fmt(min(vs))}–{fmt(max(vs))}]"
    if missing:
        s += f" ({missing} n/a)"
    return s


def fmt_pct(v):
    return f"{100 * v:.1f} %"


def goals(name, sc, runs):
    """[(goal, measured per run, met per run)] for pipe in one scenario."""
    pipe = [r["tools"]["pipe"] for r in runs]
    out = []
    refuse_max = 0.01 if sc["kind"] == "rate" else 0.03
    out.append((f"≤ {refuse_max:.0%} of requests refused (429/503)",
                [t["sim"]["refused_rate"] for t in pipe],
                [t["sim"]["refused_rate"] is not None and t["sim"]["refused_rate"] <= refuse_max for t in pipe],
                fmt_pct))
    if sc["kind"] == "rate":
        floor = sc.get("floor", 0.98 if "rpm" in sc["limit"] else 0.97)
        out.append((f"≥ {floor:.0%} of the limit (server's count)", [t["sim"]["utilisation"] for t in pipe],
                    [t["sim"]["utilisation"] is not None and t["sim"]["utilisation"] >= floor for t in pipe],
                    fmt_pct))
    else:
        for i, label in enumerate(p["phase"] for p in pipe[0]["phases"]):
            ph = [t["phases"][i] for t in pipe]
            cap = ph[0]["capacity"]
            what = "after start" if i == 0 else f"after {label}"
            out.append((f"90 % of capacity {cap} in flight ≤ 30 s {what}", [p["time_to_90pct_s"] for p in ph],
                        [p["time_to_90pct_s"] is not None and p["time_to_90pct_s"] <= 30 for p in ph],
                        lambda v: f"{v:.1f} s"))
            out.append((f"mean in flight ≥ 90 % of {cap} from {SETTLE_S:g} s {what} (held)",
                        [p["held_fraction"] for p in ph],
                        [p["held_fraction"] is not None and p["held_fraction"] >= 0.9 for p in ph], fmt_pct))
    out.append(("nothing lost", [t["lost"] for t in pipe], [t["lost"] == 0 for t in pipe], str))
    compared = [("pipe", py) for py in TOOLS[1:]]
    if sc["kind"] == "capacity":
        # The careful client is told the capacity; so is pipe_told.
        compared.append(("pipe_told", "python_careful"))
    for ours, py in compared:
        ratio = speed_ratios(runs, ours, py)["busy span per record written"]
        told = ""
        if sc["kind"] == "capacity" and py == "python_careful":
            told = ("; told the same: the capacity" if ours == "pipe_told"
                    else "; pipe told less: nothing, the careful client the capacity")
        out.append((f"not slower than {py} (busy span per record written, {ours} / {py}{told})", ratio,
                    [x is not None and x <= 1.0 for x in ratio], lambda v: f"{v:.2f}"))
        # Per record written is not enough when a client gives up on many records: those it
        # wrote may all come from the easy part of the run (before a capacity drop). The line
        # above stays as strict; this one says in how many runs pipe delivered every record
        # and the Python client did not.
        gave_up = [not delivered_all(r["tools"][py]) and delivered_all(r["tools"][ours]) for r in runs]
        if any(gave_up):
            out.append((f"{ours} delivered every record where {py} did not (records {py} failed or lost)",
                        [r["tools"][py]["failed"] + r["tools"][py]["lost"] for r in runs], gave_up, str))
    if sc["kind"] == "capacity":
        told = [r["tools"]["pipe_told"] for r in runs]
        out.append(("pipe_told: ≤ 3% of requests refused, nothing lost",
                    [t["sim"]["refused_rate"] for t in told],
                    [t["sim"]["refused_rate"] is not None and t["sim"]["refused_rate"] <= 0.03
                     and t["lost"] == 0 for t in told], fmt_pct))
    return out


def completed(t):
    return t["status"] == "completed"


def delivered_all(t):
    """Completed with every record written: none failed, none lost."""
    return completed(t) and t["failed"] == 0 and t["lost"] == 0


# How long a tool took: on the provider's clock per record written (the goal's: a client that
# gives up on records is not faster for it), the same in total, the whole process as a user
# waits for it, and the tool's own timer (pipe's includes its start-up, Python's does not).
CLOCKS = {
    "busy span per record written": lambda t: t["sim"]["busy_span_s"] / t["written"]
    if t["sim"]["busy_span_s"] and t["written"] else None,
    "busy span": lambda t: t["sim"]["busy_span_s"],
    "process wall": lambda t: t["process_wall_s"],
    "own timer": lambda t: t["elapsed_s"],
}


def speed_ratios(runs, ours, theirs):
    """{clock: [ours / theirs per run]}, None where either did not complete."""
    out = {}
    for clock, of in CLOCKS.items():
        out[clock] = [of(r["tools"][ours]) / of(r["tools"][theirs])
                      if completed(r["tools"][ours]) and completed(r["tools"][theirs])
                      and of(r["tools"][ours]) and of(r["tools"][theirs]) else None for r in runs]
    return out


def speed_table(results):
    rows = ["| scenario | compared | " + " | ".join(f"{c}: ratio" for c in CLOCKS) + " |",
            "| --- | --- |" + " ---: |" * len(CLOCKS)]
    for name, runs in results.items():
        pairs = [("pipe", "python_careful"), ("pipe", "python_naive")]
        if SCENARIOS[name]["kind"] == "capacity":
            pairs.insert(1, ("pipe_told", "python_careful"))
        for ours, theirs in pairs:
            ratios = speed_ratios(runs, ours, theirs)
            rows.append(f"| {name} | {ours} / {theirs} | "
                        + " | ".join(spread(ratios[c]) for c in CLOCKS) + " |")
    return "\n".join(rows)


def goals_table(results):
    rows = ["| scenario | goal (pipe) | measured: median [min–max] | runs meeting it | verdict |",
            "| --- | --- | --- | ---: | --- |"]
    misses = []
    for name, runs in results.items():
        for goal, values, met, fmt in goals(name, SCENARIOS[name], runs):
            ok = sum(met)
            verdict = "met" if ok == len(met) else ("**missed**" if ok == 0 else "**mixed**")
            if ok < len(met):
                misses.append(f"{name}: {goal}")
            rows.append(f"| {name} | {goal} | {spread(values, fmt)} | {ok}/{len(met)} | {verdict} |")
    return "\n".join(rows), misses


def main_table(results):
    rows = [
        "| scenario | tool | records | busy span s | elapsed s | HTTP 200 | refused 429/503 | requests "
        "| refused rate | utilisation | failed | lost |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in results.items():
        for tool in tools_of(SCENARIOS[name]):
            ts = [r["tools"][tool] for r in runs]
            s = [t["sim"] for t in ts]
            intf = lambda v: f"{v:.0f}"
            rows.append(
                f"| {name} | {tool} | {runs[0]['records']} | {spread([x['busy_span_s'] for x in s])} "
                f"| {spread([t['elapsed_s'] for t in ts])} "
                f"| {spread([x['ok'] for x in s], intf)} | {spread([x['refused'] for x in s], intf)} "
                f"| {spread([x['total_requests'] for x in s], intf)} "
                f"| {spread([x['refused_rate'] for x in s], fmt_pct)} "
                f"| {spread([x['utilisation'] for x in s], fmt_pct)} "
                f"| {spread([t['failed'] for t in ts], intf)} | {spread([t['lost'] for t in ts], intf)} |")
    return "\n".join(rows)


def phase_table(results):
    rows = [f"| scenario | tool | phase (capacity) | time to 90 % in flight, s | mean in flight from {SETTLE_S:g} s in | held / capacity |",
            "| --- | --- | --- | ---: | ---: | ---: |"]
    for name, runs in results.items():
        if SCENARIOS[name]["kind"] != "capacity":
            continue
        for tool in tools_of(SCENARIOS[name]):
            ts = [r["tools"][tool] for r in runs]
            for i, p in enumerate(ts[0]["phases"]):
                ph = [t["phases"][i] if i < len(t["phases"]) else {} for t in ts]
                rows.append(
                    f"| {name} | {tool} | {p['phase']} ({p['capacity']}) "
                    f"| {spread([x.get('time_to_90pct_s') for x in ph], lambda v: f'{v:.1f}')} "
                    f"| {spread([x.get('held_mean') for x in ph], lambda v: f'{v:.1f}')} "
                    f"| {spread([x.get('held_fraction') for x in ph], fmt_pct)} |")
    return "\n".join(rows)


def details(results):
    lines = []
    for name, runs in results.items():
        for k, r in enumerate(runs, 1):
            for tool, t in r["tools"].items():
                s = t["sim"]
                note = (f"- {name} run {k} / {tool}: {t['status']}, exit {t['exit_code']}, elapsed "
                        f"{t['elapsed_s']} s, wall {t['process_wall_s']} s, load {t['load_avg_1m'][0]}→"
                        f"{t['load_avg_1m'][1]}; statuses {s['by_status']}; mean prompt "
                        f"{s['mean_prompt_tokens'] or 0:.0f} tokens; debited {s['debited']}")
                if "debited_expected" in s:
                    same = "=" if s["debited"] == s["debited_expected"] else "≠"
                    note += f" ({same} expected {s['debited_expected']})"
                note += f"; peak at the sim {s['max_concurrency']}; duplicate bodies {s['duplicate_bodies']}"
                if tool.startswith("pipe") and t.get("report"):
                    calls = [st["calls"] for st in t["report"]["stages"] if st.get("calls")]
                    if calls:
                        note += "; pipe: " + ", ".join(
                            f"{key} {sum(c[key] for c in calls)}" for key in ("calls", "attempts", "retries", "rate_limited"))
                if "client" in t:
                    note += f"; client failures: {t['client']['failures'] or 'none'}"
                lines.append(note + ".")
    return "\n".join(lines)


def markdown(results, meta):
    sims = "\n".join(
        f"- `{name}`: {SCENARIOS[name]['what']}. Sim `{json.dumps({k: v for k, v in runs[0]['sim_config'].items() if k != 'seed'})}`; "
        f"pipe limit `{flow(SCENARIOS[name]['limit']) if SCENARIOS[name]['limit'] else 'none (adaptive)'}`; "
        f"calls per record: {', '.join('max_tokens ' + str(st['max_tokens']) for st in SCENARIOS[name]['stages'])}; "
        f"{runs[0]['records']} records"
        for name, runs in results.items())
    goals_md, misses = goals_table(results)
    loads = meta["load_avg_1m"]
    cmds = "\n".join(
        f"    # {name}\n    {runs[0]['sim_command']}\n"
        + "".join(f"    {t['command']}\n" for t in runs[0]["tools"].values())
        for name, runs in results.items())
    return f"""# LLM macro benchmark: pipe vs. hand-written Python clients

Date: {meta['date']} ({meta['duration_min']:.0f} min). Machine: {meta['cpus']} cores, {meta['platform']};
1-minute load average {loads['start']} at the start, {spread(loads['per_tool'])} over the tool runs
(median [min–max]), {loads['end']} at the end{' — **a loaded machine: the numbers are noisy**' if loads['max'] > meta['cpus'] else ''}.
pipe at git `{meta['git']['commit']}`{' **with uncommitted changes**' if meta['git']['dirty'] else ' (clean tree)'}.
Python {meta['venv']['python']}, {', '.join(f'{p} {meta["venv"][p]}' for p in PY_PACKAGES)}.
{meta['runs']} run(s) of every scenario{' (**quick mode**: fewer records)' if meta['quick'] else ''}, {meta['phase_s']:g}-s phases, records × {meta['scale']:g}
of the default for the scenarios without a schedule{meta['reduced']}; each figure is the median over the runs and [the min–max spread].

Run with:

    {meta['command']}

Scenarios (a fresh simulator per scenario and run, seeded 7, 8, 9 for runs 1, 2, 3;
`POST /_sim/reset` before each tool, which also restarts the schedule's clock; the tools run
one after the other: pipe, pipe_told (capacity scenarios), python_naive, python_careful):

{sims}

## Goals (issue 7)

{goals_md}

{('Missed or mixed: ' + '; '.join(misses) + '.') if misses else 'All goals met in every run.'}

## Results

{main_table(results)}

## Speed: ratios on each clock (below 1.00: the first is faster)

{speed_table(results)}

## Requests in flight per phase (capacity scenarios)

{phase_table(results)}

## Method

- **HTTP 200 / refused / requests**: counted by the simulator (`/_sim/stats` `by_status`,
  `total_requests`); refused = 429 + 503 answers (rate limit or overload).
- **busy span**: from the first request the simulator received to the last one it finished
  (`/_sim/stats` `busy_span_s`): the same clock for every tool, which neither tool's start-up
  is on. The goal "not slower" compares the busy span **per record written**, so that a client
  that gives up on records is not counted faster for it (with every record written, it is the
  busy-span ratio). The speed table also gives the ratios of the busy span, of the process wall
  time (spawn to exit: pipe's start-up, Python's interpreter start and imports) and of each
  tool's own timer.
- **elapsed** (own timer): pipe = `duration_s` from its `report.json` (the whole run, start-up
  included); Python = the client's timer around `asyncio.gather` (interpreter start and imports
  excluded).
- **utilisation** (rate scenarios): rpm = HTTP 200s / (busy span × rpm/60); tpm = the tokens the
  simulator debited from its TPM bucket (its own count: tiktoken prompt + `max_tokens`, or for
  `tpm_server_counting` `max_tokens` + ⌈characters/4⌉, OpenAI's limiter) / (busy span × tpm/60).
  Refused requests debit nothing. Buckets start full (1 s of refill), so a run of T seconds
  can reach (1 + 1/T) × 100 %.
- **in flight**: pipe = `pipe_limit_in_flight` from `--metrics-addr`, Python = HTTP requests
  open in the SDK's transport (SDK and tenacity sleeps excluded), both sampled every 0.25 s.
  Refused requests count while they are open. **time to 90 %** = seconds from the start of
  the phase (for the first phase, from the tool's start) until the mean over the next 5 s first
  reaches 90 % of the phase's hidden capacity (n/a: never, or the run ended first). **held** =
  mean in flight from {SETTLE_S:g} s into the phase to its end (the run's last 3 s, the drain, excluded)
  / the capacity.
- **failed**: pipe = dead-lettered records; Python = records whose call raised after all
  retries. **lost** = records − written − failed.
- `pipe_told` (capacity scenarios) = the same pipeline with `limits: {{ sim: {{ initial_concurrency: <the
  hidden capacity> }} }}`: told what the careful client is told, and still adaptive; plain `pipe`
  is told nothing. The adaptive goals above are plain `pipe`'s.
- `python_naive` = `benches/llm_python_client.py --style naive`: `AsyncOpenAI` (defaults kept,
  including the SDK's `max_retries=2`, which honours `retry-after-ms`), `asyncio.Semaphore(20)`
  held across tenacity's `wait_random_exponential(min=1, max=60)`, `stop_after_attempt(10)`.
  `python_careful` = `--style careful`: `max_retries=0`; `aiolimiter.AsyncLimiter(rpm/60, 1)` and
  a token bucket `AsyncLimiter(tpm/60, 1)` debited with tiktoken's count of the messages in the
  model's encoding + `max_tokens` (the OpenAI cookbook's rule); a semaphore of 64 in the rate
  scenarios and of the hidden capacity (40) in the capacity scenarios, taken per attempt;
  tenacity waits `retry-after-ms` / `retry-after` (+ up to 10 % jitter), else full-jitter
  backoff (0.5 s × 2ⁿ, ≤ 30 s), 10 attempts. Two-stage records run their two calls in sequence
  through the same client, semaphore and limiters.

## Per run

{details(results)}

Commands of run 1 (the temporary paths are gone; the pipeline, simulator config and logs of
every run are in `llm_bench_runs/<scenario>/run<k>/`, the raw numbers in `llm_bench.json`):

{cmds}"""


def summarise(results_dir):
    """Writes llm_bench.md again from the raw results of an earlier run."""
    raw = json.loads((results_dir / "llm_bench.json").read_text())
    global SETTLE_S
    SETTLE_S = raw["meta"]["settle_s"]
    md = markdown(raw["scenarios"], raw["meta"])
    (results_dir / "llm_bench.md").write_text(md)
    print(md)
    log(f"{results_dir / 'llm_bench.md'} written from {results_dir / 'llm_bench.json'}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target-dir", type=Path,
                   default=Path(os.environ.get("CARGO_TARGET_DIR", "/root/.cache/pipe-target")))
    p.add_argument("--no-build", action="store_true", help="use the binaries already built")
    p.add_argument("--quick", action="store_true",
                   help="development run: fewer records, 15 s phases, 1 run, results in /tmp")
    p.add_argument("--runs", type=int, help="runs of each scenario (default 3, quick 1)")
    p.add_argument("--scenario", choices=list(SCENARIOS), action="append",
                   help="run only this scenario (repeatable; default all)")
    p.add_argument("--records", type=int, help="records per scenario (default: the scenario's)")
    p.add_argument("--phase-s", type=float,
                   help="length of a schedule phase (default 40, quick 15); the schedule scenarios' "
                        "records scale with it")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the records of the scenarios without a schedule by this (to fit "
                        "a time budget)")
    p.add_argument("--allow-dirty", action="store_true",
                   help="run from a tree with uncommitted changes (the results say so)")
    p.add_argument("--corpus", type=Path, default=Path("/work/shared/corpus/apollo13/transcripts"))
    p.add_argument("--venv", type=Path, default=Path("/tmp/pipe-bench-venv"))
    p.add_argument("--results", type=Path, help="default benches/results (quick: /tmp/pipe-llm-bench-quick)")
    p.add_argument("--summarise", type=Path, metavar="RESULTS_DIR",
                   help="run nothing: write RESULTS_DIR/llm_bench.md again from its llm_bench.json "
                        "(after a change to how the results are judged or shown)")
    args = p.parse_args()
    if args.summarise:
        return summarise(args.summarise)
    runs = args.runs or (1 if args.quick else 3)
    default_phase = PHASE_S[1 if args.quick else 0]
    phase_s = args.phase_s or default_phase
    global SETTLE_S
    SETTLE_S = min(30.0, max(phase_s - 10, phase_s / 2))
    results_dir = args.results or (Path("/tmp/pipe-llm-bench-quick") if args.quick else BENCH_DIR / "results")
    git = git_state(args.allow_dirty or args.quick)

    target = args.target_dir.resolve()
    if not args.no_build:
        build(target)
    bins = {"pipe": target / "release" / "pipe", "sim": target / "release" / "pipe-sim"}
    for b in bins.values():
        if not b.exists():
            sys.exit(f"missing binary {b} (build it, or drop --no-build)")
    bins["python"], bins["python_env"], venv_versions = ensure_venv(args.venv)
    lines = corpus_lines(args.corpus)

    names = args.scenario or list(SCENARIOS)
    runs_dir = results_dir / "llm_bench_runs"
    shutil.rmtree(runs_dir, ignore_errors=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    meta = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "git": git,
        "venv": venv_versions,
        "command": shlex.join(["python3", "benches/llm_bench.py", *sys.argv[1:]]),
        "runs": runs,
        "quick": args.quick,
        "phase_s": phase_s,
        "settle_s": SETTLE_S,
        "scale": args.scale,
        "reduced": "" if args.quick or (phase_s == default_phase and args.scale == 1.0) else
        f" (**reduced** from 40-s phases and × 1 to fit the time available; 'held' counts from "
        f"{SETTLE_S:g} s into a phase)",
    }
    load_start = round(os.getloadavg()[0], 2)
    results = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="pipe-llm-bench-") as tmp:
        # Runs outermost, so the machine's load drifts over every scenario alike.
        for k in range(1, runs + 1):
            for name in names:
                sc = SCENARIOS[name]
                n = args.records or records(sc, args.quick, phase_s / default_phase, args.scale)
                results[name].append(run_scenario(name, sc, n, phase_s, 6 + k, k, lines, bins, Path(tmp),
                                                  runs_dir / name / f"run{k}"))
                # Raw results so far, in case the rest is interrupted.
                (results_dir / "llm_bench.json").write_text(
                    json.dumps({"meta": meta, "scenarios": results}, separators=(",", ":")))

    per_tool = [t["load_avg_1m"][1] for runs_ in results.values() for r in runs_ for t in r["tools"].values()]
    meta["load_avg_1m"] = {"start": load_start, "end": round(os.getloadavg()[0], 2),
                           "per_tool": per_tool, "max": max(per_tool + [load_start])}
    meta["duration_min"] = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() / 60
    md = markdown(results, meta)
    (results_dir / "llm_bench.md").write_text(md)
    (results_dir / "llm_bench.json").write_text(
        json.dumps({"meta": meta, "scenarios": results}, separators=(",", ":")))
    print(md)
    log(f"results in {results_dir}")
    failed = [f"{n} run {k}/{t}" for n, rs in results.items() for k, r in enumerate(rs, 1)
              for t, x in r["tools"].items() if x["exit_code"] != 0]
    if failed:
        sys.exit(f"runs that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
