"""The clients hallurun is measured against, each run in a fresh interpreter like hallurun itself:

- `bare`: an aiohttp loop with no bookkeeping at all, streaming the same SSE requests hallurun sends and reading
  the whole body: the limit for an HTTP client in Python on this machine.
- `upstream`: HalluLens' own way (`utils/lm.py`): a new OpenAI SDK client for every request, 64 threads.

`python -m bench.baselines bare|upstream --url URL --dataset FILE [--concurrency C] [--limit N]` prints one JSON
line: {"elapsed_s", "cpu_s", "ok", "errors"}, timed from the first request to the last answer (cpu_s: this
process's CPU time, all threads, over the same span).
"""

from __future__ import annotations

import argparse
import asyncio
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


def stream_body(prompt: str) -> bytes:
    """The body hallurun sends for a chat task: one user message, streamed, with the usage chunk."""
    return orjson.dumps({"model": MODEL, "max_tokens": MAX_TOKENS, "temperature": 0.0, "top_p": 1.0, "stream": True,
                         "stream_options": {"include_usage": True},
                         "messages": [{"role": "user", "content": prompt}]})


async def bare(url: str, prompts: list[str], concurrency: int) -> dict[str, Any]:
    """`concurrency` workers pulling from one iterator over one session: nothing but the requests."""
    endpoint = url + "/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    counts = {"ok": 0, "errors": 0}
    pending = iter(prompts)

    async def worker(session: aiohttp.ClientSession) -> None:
        for text in pending:  # shared: each worker takes the next prompt when its last one is answered
            async with session.post(endpoint, data=stream_body(text), headers=headers) as resp:
                await resp.read()
                counts["ok" if resp.status == 200 else "errors"] += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        began, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    return {"elapsed_s": elapsed, "cpu_s": cpu, **counts}


def upstream(url: str, prompts: list[str], threads: int = UPSTREAM_THREADS) -> dict[str, Any]:
    """HalluLens' `call_vllm_api`: a fresh `openai.OpenAI` per prompt, not streamed, in a pool of threads."""
    import openai

    def call(text: str) -> str | None:
        client = openai.OpenAI(base_url=url + "/v1", api_key="NOT A REAL KEY")
        completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                                    max_tokens=MAX_TOKENS, temperature=0.0, top_p=1.0)
        return completion.choices[0].message.content

    began, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        answers = list(pool.map(call, prompts))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    ok = sum(1 for a in answers if a)
    return {"elapsed_s": elapsed, "cpu_s": cpu, "ok": ok, "errors": len(answers) - ok}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("client", choices=["bare", "upstream"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=UPSTREAM_THREADS)
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)
    prompts = load_prompts(args.dataset, args.limit)
    if args.client == "bare":
        result = asyncio.run(bare(args.url, prompts, args.concurrency))
    else:
        result = upstream(args.url, prompts, args.concurrency)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main(sys.argv[1:])
