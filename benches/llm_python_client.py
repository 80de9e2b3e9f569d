"""The hand-written Python baseline for benches/llm_bench.py.

This is the pattern users write today to push a file of prompts through an
OpenAI-compatible API: ``AsyncOpenAI`` + ``asyncio.Semaphore(20)`` + a tenacity
retry decorator (random exponential backoff, 10 attempts, on rate-limit,
connection, timeout and 5xx errors). The client keeps its defaults, including
its own ``max_retries=2``, so each tenacity attempt may itself be up to three
HTTP requests (the SDK honours ``retry-after-ms`` / ``retry-after`` on 429s).

It sends one chat completion per line of a JSONL prompts file
(``{"text": ...}``), with the text as the only user message, records the
answers (optionally to a JSONL file) and the failures, and prints one JSON
object: ``{calls_ok, calls_failed, elapsed_s, failures}``. ``elapsed_s`` is
measured around the ``asyncio.gather`` only, so interpreter start-up and
imports are not counted.
"""

import argparse
import asyncio
import collections
import json
import time

import openai
from openai import AsyncOpenAI
from tenacity import (
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)


@retry(
    wait=wait_random_exponential(min=1, max=60),
    stop=stop_after_attempt(10),
    retry=retry_if_exception_type(
        (
            openai.RateLimitError,
            openai.APIConnectionError,
            openai.APITimeoutError,
            openai.InternalServerError,
        )
    ),
)
async def complete(client, model, text, max_tokens):
    resp = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        max_tokens=max_tokens,
    )
    return resp.choices[0].message.content


async def run(args, texts):
    client = AsyncOpenAI(base_url=args.base_url, api_key=args.api_key)
    sem = asyncio.Semaphore(args.concurrency)
    results, failures = [], []

    async def one(i, text):
        async with sem:
            try:
                answer = await complete(client, args.model, text, args.max_tokens)
            except Exception as e:  # a failed call is recorded, never dropped
                failures.append({"index": i, "error": f"{type(e).__name__}: {e}"})
            else:
                results.append({"index": i, "text": text, "answer": answer})

    start = time.perf_counter()
    await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
    elapsed = time.perf_counter() - start
    await client.close()
    return results, failures, elapsed


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", required=True, help="JSONL file, one {\"text\": ...} per line")
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--api-key", default="sk-bench")
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--max-tokens", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--out", help="write the answers here as JSONL")
    args = p.parse_args()

    with open(args.prompts, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    results, failures, elapsed = asyncio.run(run(args, texts))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for r in sorted(results, key=lambda r: r["index"]):
                f.write(json.dumps(r) + "\n")
    kinds = collections.Counter(f["error"].split(":", 1)[0] for f in failures)
    print(
        json.dumps(
            {
                "calls_ok": len(results),
                "calls_failed": len(failures),
                "elapsed_s": round(elapsed, 3),
                "failures": dict(kinds),
            }
        )
    )


if __name__ == "__main__":
    main()
