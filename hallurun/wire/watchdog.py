"""Wedge detection from missing progress, without trusting `/health`.

A wedged vLLM keeps answering `/health` while producing no tokens, so the only honest signal is bytes arriving
on the generation streams. The rules, as plain functions over small state objects:

- only a request on the wire can be silent: one sleeping before a retry (a backoff, a Retry-After) is waiting
  on nothing, and the silence clock does not run while no request is on the wire;
- the server is wedged when requests are on the wire and no bytes have arrived on any of them for the window
  in force (one verdict for the whole server, however many requests are waiting on it). The window is the stall
  timeout until the replica's `Pace` has seen enough healthy traffic, then what that traffic says a healthy
  silence can last, never more than the stall timeout; below it, a readable token counter must agree (`/metrics`:
  no generation token for the window either);
- a single request is stalled when its stream has started, has gone quiet for the stall timeout (always the
  ceiling, not the window: the other streams progress meanwhile, so waiting costs one item's time, not the
  server's), and the
  server is otherwise making progress: that attempt alone is cut and retried;
- a request with no data yet while others stream is queued inside the server: waiting, not stalled; and so is
  a quiet stream while the server reports requests waiting in its queue (vLLM preempts running requests back
  into it under KV-cache pressure, and they resume where they were).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

# The window a replica's pace allows, as clamp(max(GAP_FACTOR x longest gap, TTFB_FACTOR x longest first byte,
# TTFB_FACTOR x longest first byte per char x waiting chars), FLOOR_S, the stall timeout).
#
# Below 2 s a window wins little and risks much: the monitor ticks once a second and `/metrics` is read every
# 2 s once the streams go quiet, so a wedge is not confirmed much sooner anyway; and a healthy server stalls its
# streams for fractions of a second on its own (rendering `/metrics` alone: up to 0.3 s under load, measured,
# see `wire/metrics.py`), as does a client whose event loop is busy.
FLOOR_S = 2.0
# The factors are judgement, not measurement. Gaps grow with the batch a stream is in and with preemptions, so
# the allowance scales with the worst gap of five minutes rather than adding a fixed margin to it: on a steady
# engine (a token every 10-50 ms) 4x stays far under the floor, and an engine seen to pause 3 s gets 12 s.
GAP_FACTOR = 4.0
# A first byte's maximum already holds the worst queueing of five minutes (a request waiting behind a full
# batch), its largest and most variable part, so it gets less head-room than a gap: 3 x 0.2 s is under the
# floor too.
TTFB_FACTOR = 3.0
# Maxima are kept per 10 s bucket over the last 5 minutes: recent enough to follow a change of load or of
# prompts, long enough to remember an engine's occasional pause (a preemption, a long prefill) between two.
BUCKET_S = 10.0
BUCKETS = 30
# Until the buckets in force hold this many first bytes over this long, the window is the stall timeout: a few
# requests right after a start say little about the server's worst case.
WARM_FIRST_BYTES = 32
WARM_SPAN_S = 10.0
# vLLM prefills a prompt of up to max_num_batched_tokens (2048 to 8192 tokens, ~8000+ characters) in one engine
# step, so a short prompt's first byte waits on the queue and a step, not on its length. Counting each prompt as
# at least this long keeps that fixed cost from being scaled up as if it were prefill time.
PREFILL_STEP_CHARS = 4000
# A waiting prompt longer than twice any prompt seen to its first byte gets the stall timeout: how its prefill
# scales past what was seen is unknown (attention's cost grows faster than the prompt).
EXTRAPOLATE = 2.0
_EMPTY = -(2**62)  # the bucket number of a slot that holds nothing


class Pace:
    """What healthy streams on one server replica look like, for the window in which silence is normal.

    Learned from every attempt's first byte (the time to it, and that time per prompt character) and every
    byte-to-byte gap within a stream, as maxima per `BUCKET_S` bucket over the last `BUCKETS` of them: a slot
    per bucket, reused as the ring turns. Recording runs per SSE read, thousands a second, so it is a few
    comparisons on preallocated lists, whatever the traffic (measured here: `Flight.data` takes 0.36 us with a
    pace, 0.10 us without, and a million reads grow nothing); only `window`, once per monitor tick, walks the
    ring (1.2 us). Only healthy streams teach it: a wedged server sends no byte, so its silence is never
    recorded."""

    __slots__ = ("_bucket", "_chars", "_first_bytes", "_gap", "_since", "_ttfb", "_ttfb_per_char")

    def __init__(self) -> None:
        self._bucket = [_EMPTY] * BUCKETS  # the bucket number each slot holds
        self._since = [0.0] * BUCKETS  # its first observation
        self._first_bytes = [0] * BUCKETS
        self._gap = [0.0] * BUCKETS
        self._ttfb = [0.0] * BUCKETS
        self._ttfb_per_char = [0.0] * BUCKETS
        self._chars = [0] * BUCKETS  # the longest prompt with a first byte, counted as at least PREFILL_STEP_CHARS

    def _slot(self, now: float) -> int:
        bucket = int(now // BUCKET_S)
        slot = bucket % BUCKETS
        if self._bucket[slot] != bucket:  # the ring has turned: the slot held a bucket too old to count
            self._bucket[slot] = bucket
            self._since[slot] = now
            self._first_bytes[slot] = 0
            self._gap[slot] = self._ttfb[slot] = self._ttfb_per_char[slot] = 0.0
            self._chars[slot] = 0
        return slot

    def first_byte(self, now: float, seconds: float, prompt_chars: int = 0) -> None:
        """An attempt's first body byte came `seconds` after it went on the wire; its prompt has `prompt_chars`
        characters (0: unknown)."""
        slot = self._slot(now)
        self._first_bytes[slot] += 1
        if seconds > self._ttfb[slot]:
            self._ttfb[slot] = seconds
        chars = max(prompt_chars, PREFILL_STEP_CHARS)
        per_char = seconds / chars
        if per_char > self._ttfb_per_char[slot]:
            self._ttfb_per_char[slot] = per_char
        if chars > self._chars[slot]:
            self._chars[slot] = chars

    def gap(self, now: float, seconds: float) -> None:
        """A stream's bytes came `seconds` after its previous ones."""
        slot = self._slot(now)
        if seconds > self._gap[slot]:
            self._gap[slot] = seconds

    def window(self, now: float, ceiling: float, waiting_chars: int = 0) -> float:
        """How long the server may be silent, at most `ceiling` (the stall timeout): `ceiling` until warmed up,
        then what the last few minutes of healthy streams allow. `waiting_chars` is the longest prompt on the
        wire that has had no first byte yet."""
        newest = int(now // BUCKET_S)
        first_bytes, since, gap, ttfb, per_char, chars = 0, now, 0.0, 0.0, 0.0, 0
        for slot in range(BUCKETS):
            if not newest - BUCKETS < self._bucket[slot] <= newest:
                continue
            first_bytes += self._first_bytes[slot]
            since = min(since, self._since[slot])
            gap = max(gap, self._gap[slot])
            ttfb = max(ttfb, self._ttfb[slot])
            per_char = max(per_char, self._ttfb_per_char[slot])
            chars = max(chars, self._chars[slot])
        if first_bytes < WARM_FIRST_BYTES or now - since < WARM_SPAN_S or waiting_chars > EXTRAPOLATE * chars:
            return ceiling
        allowed = max(FLOOR_S, GAP_FACTOR * gap, TTFB_FACTOR * ttfb, TTFB_FACTOR * per_char * waiting_chars)
        return min(allowed, ceiling)


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
    pace: Pace | None = field(default=None, repr=False)  # its replica's, taught by this flight's streams
    prompt_chars: int = 0  # the prompt's length, by which its first byte may take longer

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
        """Body bytes arrived: the attempt's first (its time to first byte goes to the pace), or its next (the gap
        since the previous ones does)."""
        if self.first_data is None:
            self.first_data = now
            if self.pace is not None and self.started is not None:
                self.pace.first_byte(now, now - self.started, self.prompt_chars)
        elif self.pace is not None and self.last_data is not None:
            self.pace.gap(now, now - self.last_data)
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
    # The silence the server was allowed (0 with nothing on the wire: nothing was judged). What it saw, not what
    # it decided, so two verdicts alike but for it are equal.
    window: float = field(default=0.0, compare=False)


def inspect(now: float, flights: list[Flight], activity: Activity, stall_timeout: float,
            queue_seen: float | None = None, *, pace: Pace | None = None,
            tokens_flat: float | None = None) -> Silence:
    """Decide whether the server is wedged or single streams have stalled. `queue_seen` is when the server's
    latest metrics sample was taken if that sample showed requests waiting in its queue, else None: a stream
    quiet since before that sample may be one of them. `pace` is the replica's (without one the window is the
    stall timeout); `tokens_flat` is how long its generation-token counter has not moved, None when unknown.

    A silence as long as the stall timeout is a wedge, as it always was. One shorter, but as long as the window
    the pace allows, is one only if the token counter, where readable, has stood still as long: an engine that
    still generates is busy with something hallurun cannot see (a long prefill, another client's requests)."""
    wire = [f for f in flights if f.on_wire]
    if not wire:
        return Silence()
    quiet_for = now - activity.last
    window = stall_timeout
    if pace is not None:
        waiting_chars = max((f.prompt_chars for f in wire if f.first_data is None), default=0)
        window = pace.window(now, stall_timeout, waiting_chars)
    if quiet_for >= stall_timeout or (quiet_for >= window and (tokens_flat is None or tokens_flat >= window)):
        return Silence(wedged=True, quiet_for=quiet_for, window=window)
    stalled = tuple(
        f for f in wire
        if not f.stalled and f.last_data is not None and now - f.last_data >= stall_timeout
        and (queue_seen is None or queue_seen < f.last_data)
    )
    return Silence(stalled=stalled, quiet_for=quiet_for, window=window)
