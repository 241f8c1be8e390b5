"""Reading vLLM's Prometheus `/metrics`: queue depth, KV-cache use and generated tokens, for the display and as
a second witness of a wedge (a flat token counter while requests are in flight).

Reading it is not free for the server: vLLM renders the page (~50 KB) in its API server's event loop, which then
serves no stream for that while (7–16 ms here, up to 0.3 s under load). On a CPU-bound server a read every 2 s
was enough to tip vLLM into a pace of 14–39 tokens per engine step instead of 91–98, for whichever client was
sending (`docs/benchmarks.md`, section 5). So the page is read seldom while the streams flow, and often only
once they go quiet, which is when the token counter has something to say.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection
from dataclasses import dataclass

import aiohttp

from hallurun.wire.watchdog import Activity

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
TOKENS = "vllm:generation_tokens_total"
KV_CACHE = "vllm:kv_cache_usage_perc"
WATCHED = (RUNNING, WAITING, TOKENS, KV_CACHE)
QUIET_INTERVAL = 2.0  # how often to read while no byte has come for this long (a wedge may be forming)


def parse(text: str, names: Collection[str] = WATCHED) -> dict[str, float]:
    """Sum each of the named metrics over its label sets (one per model, or per engine with data parallelism)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end < 0:
            continue
        name = line[:name_end]
        if name not in names:
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        totals[name] = totals.get(name, 0.0) + value
    return totals


@dataclass
class ServerMetrics:
    """The latest sample, and how long the token counter has stood still."""

    running: float | None = None
    waiting: float | None = None
    kv_cache: float | None = None
    tokens: float | None = None
    tokens_per_s: float | None = None
    tokens_changed_at: float | None = None  # loop time the counter last moved (or was first seen)
    sampled_at: float | None = None

    def update(self, values: dict[str, float], now: float) -> None:
        self.running = values.get(RUNNING)
        self.waiting = values.get(WAITING)
        self.kv_cache = values.get(KV_CACHE)
        tokens = values.get(TOKENS)
        if tokens is not None:
            if self.tokens is None or tokens != self.tokens:
                if self.tokens is not None and self.sampled_at is not None and tokens > self.tokens:
                    self.tokens_per_s = (tokens - self.tokens) / max(now - self.sampled_at, 1e-6)
                self.tokens_changed_at = now  # a restart resets the counter: that is movement too
            else:
                self.tokens_per_s = 0.0
            self.tokens = tokens
        self.sampled_at = now

    def tokens_flat_for(self, now: float) -> float | None:
        """Seconds the generated-token counter has not moved, or None if it was never read."""
        if self.tokens_changed_at is None:
            return None
        return now - self.tokens_changed_at

    def describe(self) -> str:
        if self.sampled_at is None:
            return ""
        parts = []
        if self.running is not None:
            parts.append(f"running {self.running:.0f}")
        if self.waiting is not None:
            parts.append(f"waiting {self.waiting:.0f}")
        if self.kv_cache is not None:
            parts.append(f"kv {self.kv_cache:.0%}")
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:.0f} tok/s")
        return " · ".join(parts)


def poll_due(now: float, last_read: float | None, last_byte: float, interval: float) -> bool:
    """Whether to read `/metrics` now: at once until a read has succeeded (`last_read` None), then `interval`
    seconds after the last read while the server streams, and QUIET_INTERVAL once no byte has come for that
    long."""
    if last_read is None:
        return True
    quiet = now - last_byte >= QUIET_INTERVAL
    return now - last_read >= (QUIET_INTERVAL if quiet else interval)


async def poll(session: aiohttp.ClientSession, base_url: Callable[[], str], metrics: ServerMetrics,
               activity: Activity, interval: float) -> None:
    """Sample `/metrics` as `poll_due` says until cancelled; with `interval` 0, or against a server without the
    page, never. `base_url` is asked at each read: a relaunched server may listen on another port."""
    if interval <= 0:
        return
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=QUIET_INTERVAL)
    last_read: float | None = None
    while True:
        if poll_due(loop.time(), last_read, activity.last, interval):
            began, answered = loop.time(), False
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
                async with session.get(base_url() + "/metrics", timeout=timeout) as resp:
                    if resp.status == 404:
                        return
                    if resp.status == 200:
                        metrics.update(parse(await resp.text()), loop.time())
                        answered = True
            # Once the page has been read, a failed read counts too: a server too loaded to answer in time is
            # not asked again a second later. Before that, the server may still be loading: try every second.
            if answered or last_read is not None:
                last_read = began
        await asyncio.sleep(QUIET_INTERVAL / 2)
