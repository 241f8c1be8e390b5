"""Wedge detection from missing progress, without trusting `/health`.

A wedged vLLM keeps answering `/health` while producing no tokens, so the only honest signal is bytes arriving
on the generation streams. The rules, as plain functions over small state objects:

- the server is wedged when requests are in flight and no bytes have arrived on any of them for the stall
  timeout (one verdict for the whole server, however many requests are waiting on it);
- a single request is stalled when its stream has started, has gone quiet for the stall timeout, and the
  server is otherwise making progress: that request alone is cancelled and retried;
- a request with no data yet while others stream is queued inside the server: waiting, not stalled.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Activity:
    """When the server last showed signs of life: any byte on any request, or the start of waiting on it."""

    last: float = 0.0

    def touch(self, now: float) -> None:
        if now > self.last:
            self.last = now


@dataclass(eq=False)
class Flight:
    """One request on the wire: the clocks the watchdog reads, and the handle to cut its attempt short."""

    item_id: str
    started: float
    solo: bool = False
    first_data: float | None = None  # first body byte (SSE data); headers alone do not count
    last_data: float | None = None
    stalled: bool = False
    deadline: asyncio.Timeout | None = field(default=None, repr=False)

    def new_attempt(self, now: float) -> None:
        self.started = now
        self.first_data = self.last_data = None
        self.stalled = False

    def data(self, now: float) -> None:
        if self.first_data is None:
            self.first_data = now
        self.last_data = now


@dataclass(frozen=True)
class Verdict:
    """What the watchdog found: a wedged server, and/or individual streams to cut."""

    wedged: bool = False
    stalled: tuple[Flight, ...] = ()
    quiet_for: float = 0.0


def inspect(now: float, flights: list[Flight], activity: Activity, stall_timeout: float) -> Verdict:
    """Decide whether the server is wedged or single streams have stalled."""
    if not flights:
        return Verdict()
    quiet_for = now - activity.last
    if quiet_for >= stall_timeout:
        return Verdict(wedged=True, quiet_for=quiet_for)
    stalled = tuple(
        f for f in flights
        if not f.stalled and f.last_data is not None and now - f.last_data >= stall_timeout
    )
    return Verdict(stalled=stalled, quiet_for=quiet_for)
