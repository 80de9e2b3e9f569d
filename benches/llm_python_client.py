"""The hand-written Python baselines for benches/llm_bench.py.

Two styles, chosen with ``--style``:

* ``naive`` (default): the pattern users write today to push a file of prompts through an
  OpenAI-compatible API: ``AsyncOpenAI`` + ``asyncio.Semaphore(20)`` + a tenacity retry
  decorator (random exponential backoff, 10 attempts, on rate-limit, connection, timeout and
  5xx errors). The client keeps its defaults, including its own ``max_retries=2``, so each
  tenacity attempt may itself be up to three HTTP requests (the SDK honours
  ``retry-after-ms`` / ``retry-after`` on 429s), and the semaphore is held while tenacity
  sleeps.
* ``careful``: what a careful user writes when they know their limits: the SDK's own retries
  off (``max_retries=0``) so every attempt goes through the limiters; ``aiolimiter`` leaky
  buckets of one second (RPM/60 requests and TPM/60 tokens per second: OpenAI enforces its
  per-minute limits over short windows), the tokens of a request counted the way the OpenAI
  cookbook's parallel processor does (tiktoken's count of the messages in the model's own
  encoding + ``max_tokens``); a semaphore sized to the known capacity (``--concurrency``),
  taken per attempt and not held while waiting to retry; and retries (tenacity, 10 attempts)
  that wait what the server's ``retry-after-ms`` / ``retry-after`` says, else random
  exponential backoff (full jitter, 0.5 s x 2^n, at most 30 s).

Input: a JSONL file of records (``{"text": ...}``). Each record goes through the calls given
by ``--stages`` in order (default: one call, the text as the only user message, with
``--max-tokens``). A stage is ``{"prompt": TEMPLATE, "max_tokens": N, "output_field": F}``;
``{{ field }}`` in the template is replaced by that field of the record, and the answer is
stored in the record's field F for the next stages (the same shape as two `llm` stages in
pipe). All calls share one client, one semaphore and one set of limiters.

It prints one JSON object: ``{calls_ok, calls_failed, records_ok, records_failed, elapsed_s,
failures, start_epoch, end_epoch, in_flight_samples}``. ``elapsed_s`` is measured around the
``asyncio.gather`` only, so interpreter start-up and imports are not counted.
``in_flight_samples`` are ``[epoch seconds, HTTP requests in flight]`` every 0.25 s, counted in
the HTTP transport (a request counts from when it is handed to the connection pool until its
response headers arrive, so SDK and tenacity sleeps are not counted).
"""

import argparse
import asyncio
import collections
import json
import random
import re
import time

import openai
from openai import AsyncOpenAI, DefaultAsyncHttpxClient

try:  # the SDK's HTTP library (httpx2 in openai >= 3, httpx before)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx
from tenacity import (
    AsyncRetrying,
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

RETRYABLE = (
    openai.RateLimitError,
    openai.APIConnectionError,
    openai.APITimeoutError,
    openai.InternalServerError,
)
# The SDK's default pool (openai._constants.DEFAULT_CONNECTION_LIMITS), kept when the
# counting transport replaces the default one.
POOL_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)


class CountingTransport(httpx.AsyncHTTPTransport):
    """The SDK's transport, counting the requests in flight."""

    in_flight = 0

    async def handle_async_request(self, request):
        CountingTransport.in_flight += 1
        try:
            return await super().handle_async_request(request)
        finally:
            CountingTransport.in_flight -= 1


def render(template, fields):
    def field(m):
        if m.group(1) not in fields:
            raise KeyError(f"the prompt template names `{m.group(1)}`, which the record lacks")
        return str(fields[m.group(1)])

    return re.sub(r"\{\{\s*(\w+)\s*\}\}", field, template)


# --- naive -------------------------------------------------------------------------------


@retry(
    wait=wait_random_exponential(min=1, max=60),
    stop=stop_after_attempt(10),
    retry=retry_if_exception_type(RETRYABLE),
)
async def complete(client, model, text, max_tokens):
    resp = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        max_tokens=max_tokens,
    )
    return resp.choices[0].message.content


def naive_caller(args, client):
    sem = asyncio.Semaphore(args.concurrency or 20)

    async def call(text, max_tokens):
        async with sem:
            return await complete(client, args.model, text, max_tokens)

    return call


# --- careful -----------------------------------------------------------------------------


def wait_for_server(retry_state):
    """What the server asks for (retry-after-ms, then retry-after, plus up to 10 % jitter so
    the callers it refused together do not come back together), else full-jitter backoff."""
    response = getattr(retry_state.outcome.exception(), "response", None)
    headers = response.headers if response is not None else {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            delay = float(headers.get(name)) * scale
        except (TypeError, ValueError):
            continue
        return delay * (1 + random.uniform(0, 0.1))
    return wait_random_exponential(multiplier=0.5, max=30)(retry_state)


def careful_caller(args, client):
    from aiolimiter import AsyncLimiter

    sem = asyncio.Semaphore(args.concurrency or 64)
    requests = AsyncLimiter(args.rpm / 60, 1) if args.rpm else None
    tokens = AsyncLimiter(args.tpm / 60, 1) if args.tpm else None
    encoding = None
    if tokens:
        import tiktoken

        encoding = tiktoken.encoding_for_model(args.model)

    def cost(messages, max_tokens):
        # The OpenAI cookbook's count for chat models: 3 tokens per message + its role and
        # content, 3 to prime the reply; the limiter counts max_tokens too.
        n = 3 + sum(3 + len(encoding.encode(m["role"])) + len(encoding.encode(m["content"]))
                    for m in messages)
        return n + max_tokens

    async def call(text, max_tokens):
        messages = [{"role": "user", "content": text}]
        need = min(cost(messages, max_tokens), tokens.max_rate) if tokens else 0
        async for attempt in AsyncRetrying(
            wait=wait_for_server,
            stop=stop_after_attempt(10),
            retry=retry_if_exception_type(RETRYABLE),
            reraise=True,
        ):
            with attempt:
                async with sem:
                    if requests:
                        await requests.acquire()
                    if tokens:
                        await tokens.acquire(need)
                    resp = await client.chat.completions.create(
                        model=args.model, messages=messages, max_tokens=max_tokens)
                    return resp.choices[0].message.content

    return call


# --- driver ------------------------------------------------------------------------------


async def run(args, records, stages):
    client = AsyncOpenAI(
        base_url=args.base_url,
        api_key=args.api_key,
        http_client=DefaultAsyncHttpxClient(transport=CountingTransport(limits=POOL_LIMITS)),
        **({"max_retries": 0} if args.style == "careful" else {}),
    )
    call = careful_caller(args, client) if args.style == "careful" else naive_caller(args, client)
    results, failures, samples = [], [], []
    calls = collections.Counter()

    async def one(i, record):
        fields = dict(record)
        try:
            for stage in stages:
                prompt = render(stage["prompt"], fields)
                calls["started"] += 1
                fields[stage.get("output_field", "answer")] = await call(prompt, stage["max_tokens"])
                calls["ok"] += 1
        except Exception as e:  # a failed record is recorded, never dropped
            failures.append({"index": i, "error": f"{type(e).__name__}: {e}"})
        else:
            results.append({"index": i, **fields})

    async def sample():
        while True:
            samples.append([round(time.time(), 3), CountingTransport.in_flight])
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    start_epoch, start = time.time(), time.perf_counter()
    await asyncio.gather(*(one(i, r) for i, r in enumerate(records)))
    elapsed = time.perf_counter() - start
    end_epoch = time.time()
    sampler.cancel()
    await client.close()
    return results, failures, calls, elapsed, start_epoch, end_epoch, samples


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", required=True, help="JSONL file, one {\"text\": ...} per line")
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--api-key", default="sk-bench")
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--style", choices=["naive", "careful"], default="naive")
    p.add_argument("--max-tokens", type=int, help="max_tokens of the single call per record")
    p.add_argument("--stages", help="JSON list of {prompt, max_tokens, output_field}")
    p.add_argument("--concurrency", type=int,
                   help="semaphore size (default 20 naive, 64 careful)")
    p.add_argument("--rpm", type=float, help="careful: requests per minute to keep to")
    p.add_argument("--tpm", type=float, help="careful: tokens per minute to keep to")
    p.add_argument("--out", help="write the records with their answers here as JSONL")
    args = p.parse_args()
    if args.stages:
        stages = json.loads(args.stages)
    elif args.max_tokens:
        stages = [{"prompt": "{{ text }}", "max_tokens": args.max_tokens}]
    else:
        p.error("give --max-tokens or --stages")

    with open(args.prompts, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    results, failures, calls, elapsed, start_epoch, end_epoch, samples = asyncio.run(
        run(args, records, stages))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for r in sorted(results, key=lambda r: r["index"]):
                f.write(json.dumps(r) + "\n")
    kinds = collections.Counter(f["error"].split(":", 1)[0] for f in failures)
    print(
        json.dumps(
            {
                "style": args.style,
                "records_ok": len(results),
                "records_failed": len(failures),
                "calls_ok": calls["ok"],
                "calls_failed": calls["started"] - calls["ok"],
                "elapsed_s": round(elapsed, 3),
                "failures": dict(kinds),
                "start_epoch": start_epoch,
                "end_epoch": end_epoch,
                "in_flight_samples": samples,
            }
        )
    )


if __name__ == "__main__":
    main()
