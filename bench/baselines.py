"""The clients hallurun is measured against, each run in a fresh interpreter like hallurun itself:

- `bare`: an aiohttp loop with no bookkeeping at all, streaming the same SSE requests hallurun sends and reading
  the whole body: the limit for an HTTP client in Python on this machine.
- `upstream`: HalluLens' own way (`utils/lm.py`): a new OpenAI SDK client for every request, 64 threads.

`python -m bench.baselines bare|upstream --url URL --dataset FILE [--concurrency C] [--limit N]` prints one JSON
line: {"elapsed_s", "cpu_s", "ok", "errors", "completion_tokens"} (and "reconnects" for `bare`), timed from the
first request to the last answer (cpu_s: this process's CPU time, all threads, over the same span). `--model` and
`--max-tokens` (defaults: the mock's `mock` and 256) let the engine section aim the same clients at a real vLLM
server.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import orjson

MODEL = "mock"
MAX_TOKENS = 256  # hallurun's default sampling for a JSONL task, and HalluLens' for PreciseWikiQA
UPSTREAM_THREADS = 64


def load_prompts(path: Path, limit: int | None) -> list[str]:
    prompts = [orjson.loads(line)["prompt"] for line in path.read_bytes().splitlines() if line.strip()]
    return prompts[:limit] if limit is not None else prompts


_COMPLETION_TOKENS = re.compile(rb'"completion_tokens":\s*(\d+)')


def stream_body(prompt: str, model: str = MODEL, max_tokens: int = MAX_TOKENS) -> bytes:
    """The body hallurun sends for a chat task: one user message, streamed, with the usage chunk."""
    return orjson.dumps({"model": model, "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "stream": True,
                         "stream_options": {"include_usage": True},
                         "messages": [{"role": "user", "content": prompt}]})


async def bare(url: str, prompts: list[str], concurrency: int, model: str = MODEL,
               max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    """`concurrency` workers pulling from one iterator over one session: nothing but the requests (and, from the
    last chunk, the count of tokens generated, so that runs that stop early on an end-of-sequence show it)."""
    endpoint = url + "/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    counts: dict[str, float] = {"ok": 0, "errors": 0, "completion_tokens": 0, "reconnects": 0, "latency_s_sum": 0.0}
    pending = iter(prompts)

    async def worker(session: aiohttp.ClientSession) -> None:
        for text in pending:  # shared: each worker takes the next prompt when its last one is answered
            sent = time.perf_counter()
            for attempt in range(3):
                try:
                    async with session.post(endpoint, data=stream_body(text, model, max_tokens),
                                            headers=headers) as resp:
                        body = await resp.read()
                    break
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                    # A kept-alive connection the server closed as it was reused (seen with vLLM's uvicorn under
                    # load, as either error): any HTTP client retries that on a new connection, as hallurun does.
                    counts["reconnects"] += 1
                    if attempt == 2:
                        raise
            counts["latency_s_sum"] += time.perf_counter() - sent  # with elapsed_s: the mean number in flight
            counts["ok" if resp.status == 200 else "errors"] += 1
            found = _COMPLETION_TOKENS.search(body, max(0, len(body) - 512))  # the usage chunk comes last
            counts["completion_tokens"] += int(found[1]) if found else 0

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        began, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    return {"elapsed_s": elapsed, "cpu_s": cpu, **counts}


def upstream(url: str, prompts: list[str], threads: int = UPSTREAM_THREADS, model: str = MODEL,
             max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    """HalluLens' `call_vllm_api`: a fresh `openai.OpenAI` per prompt, not streamed, in a pool of threads."""
    import openai

    def call(text: str) -> tuple[str | None, int]:
        client = openai.OpenAI(base_url=url + "/v1", api_key="NOT A REAL KEY")
        completion = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                    max_tokens=max_tokens, temperature=0.0, top_p=1.0)
        tokens = completion.usage.completion_tokens if completion.usage else 0
        return completion.choices[0].message.content, tokens

    began, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        answers = list(pool.map(call, prompts))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    ok = sum(1 for text, _ in answers if text)
    return {"elapsed_s": elapsed, "cpu_s": cpu, "ok": ok, "errors": len(answers) - ok,
            "completion_tokens": sum(tokens for _, tokens in answers)}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("client", choices=["bare", "upstream"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=UPSTREAM_THREADS)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    args = parser.parse_args(argv)
    prompts = load_prompts(args.dataset, args.limit)
    if args.client == "bare":
        result = asyncio.run(bare(args.url, prompts, args.concurrency, args.model, args.max_tokens))
    else:
        result = upstream(args.url, prompts, args.concurrency, args.model, args.max_tokens)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main(sys.argv[1:])
