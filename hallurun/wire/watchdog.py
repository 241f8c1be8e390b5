"""Wedge detection from missing progress, without trusting `/health`.

A wedged vLLM keeps answering `/health` while producing no tokens, so the only honest signal is bytes arriving
on the generation streams. The rules, as plain functions over small state objects:

- only a request on the wire can be silent: one sleeping before a retry (a backoff, a Retry-After) is waiting
  on nothing, and the silence clock does not run while no request is on the wire;
- the server is wedged when requests are on the wire and no bytes have arrived on any of them for the stall
  timeout (one verdict for the whole server, however many requests are waiting on it);
- a single request is stalled when its stream has started, has gone quiet for the stall timeout, and the
  server is otherwise making progress: that attempt alone is cut and retried;
- a request with no data yet while others stream is queued inside the server: waiting, not stalled; and so is
  a quiet stream while the server reports requests waiting in its queue (vLLM preempts running requests back
  into it under KV-cache pressure, and they resume where they were).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Activity:
    """When the server last showed signs of life (any byte on any request, or the moment a request went on
    the wire with none other there), and how many requests are on the wire now.

    Silence is counted only while something is on the wire, and it is not forgiven by taking requests off it:
    silence seen before the wire last emptied (a request cut by `--request-timeout` with no byte received) is
    carried to the next request sent. Otherwise a request timeout shorter than the stall timeout, at concurrency
    1, made each attempt start a fresh clock, so a wedged server was never found and every item failed as
    `request_timeout` instead (chaos seed 2060)."""

    last: float = 0.0
    on_wire: int = 0
    carried: float = 0.0  # silence seen on the wire before it emptied, carried to the next request sent

    def touch(self, now: float) -> None:
        """A sign of life: the silence ends here."""
        if now > self.last:
            self.last = now
        self.carried = 0.0

    def sent(self, now: float) -> None:
        """A request went on the wire. With none other there, the silence clock resumes: from now, less what was
        carried (before the first request, or after a sign of life, nothing is)."""
        if self.on_wire == 0:
            self.last = max(self.last, now - self.carried)
        self.on_wire += 1

    def ended(self, now: float) -> None:
        """A request left the wire (answered, failed, cut or cancelled)."""
        self.on_wire -= 1
        if self.on_wire == 0:
            self.carried = max(0.0, now - self.last)


@dataclass(eq=False)
class Flight:
    """One item in flight: the clocks of its current attempt, which the watchdog reads, and the handle to cut
    that attempt short. Between attempts (before the first, while sleeping before a retry) it is off the wire:
    no start, no data clock, no handle."""

    item_id: str
    started: float | None = None  # when the current attempt went on the wire; None while off it
    solo: bool = False
    first_data: float | None = None  # first body byte (SSE data); headers alone do not count
    last_data: float | None = None
    stalled: bool = False  # the watchdog cut this attempt
    deadline: asyncio.Timeout | None = field(default=None, repr=False)

    @property
    def on_wire(self) -> bool:
        return self.started is not None

    def new_attempt(self, now: float, deadline: asyncio.Timeout | None = None) -> None:
        """The attempt goes on the wire (or is sent again on a new connection: judged by its own stream, not the
        dropped one's clocks). `deadline` is the attempt's live timeout; a resend keeps the one it has."""
        self.started = now
        self.first_data = self.last_data = None
        self.stalled = False
        if deadline is not None:
            self.deadline = deadline

    def end_attempt(self) -> None:
        """The attempt left the wire: nothing of it may be judged or cut any more. (`stalled` stays, to name
        the reason of an attempt the watchdog cut.)"""
        self.started = None
        self.first_data = self.last_data = None
        self.deadline = None

    def data(self, now: float) -> None:
        if self.first_data is None:
            self.first_data = now
        self.last_data = now

    def cut(self, now: float) -> bool:
        """Cut the live attempt short (its timeout fires now). False when there is none to cut: off the wire,
        or its timeout has already fired (a `--request-timeout` in the same tick), which a timeout refuses."""
        if self.deadline is None or self.deadline.expired():
            return False
        self.stalled = True
        self.deadline.reschedule(now)
        return True


@dataclass(frozen=True)
class Silence:
    """What the watchdog found in the silence: a wedged server, and/or individual streams to cut."""

    wedged: bool = False
    stalled: tuple[Flight, ...] = ()
    quiet_for: float = 0.0


def inspect(now: float, flights: list[Flight], activity: Activity, stall_timeout: float,
            queue_seen: float | None = None) -> Silence:
    """Decide whether the server is wedged or single streams have stalled. `queue_seen` is when the server's
    latest metrics sample was taken if that sample showed requests waiting in its queue, else None: a stream
    quiet since before that sample may be one of them."""
    wire = [f for f in flights if f.on_wire]
    if not wire:
        return Silence()
    quiet_for = now - activity.last
    if quiet_for >= stall_timeout:
        return Silence(wedged=True, quiet_for=quiet_for)
    stalled = tuple(
        f for f in wire
        if not f.stalled and f.last_data is not None and now - f.last_data >= stall_timeout
        and (queue_seen is None or queue_seen < f.last_data)
    )
    return Silence(stalled=stalled, quiet_for=quiet_for)
