"""The adaptive silence window, driven without sockets: a replica's `Pace` learns from plain timestamps fed
through `Flight.data`, and `inspect` judges with it."""

from __future__ import annotations

import math

import pytest

from hallurun.wire.watchdog import (
    BUCKET_S,
    BUCKETS,
    FLOOR_S,
    GAP_FACTOR,
    PREFILL_STEP_CHARS,
    TTFB_FACTOR,
    WARM_FIRST_BYTES,
    WARM_SPAN_S,
    Activity,
    Flight,
    Pace,
    inspect,
)

CEILING = 30.0  # the default --stall-timeout


def steady(pace: Pace, start: float, until: float, *, streams: int = 4, ttfb: float = 0.2, gap: float = 0.03,
           tokens: int = 20, chars: int = 300) -> float:
    """Healthy traffic from `start` to at least `until`: rounds of `streams` requests sent together, each with
    its first byte `ttfb` after it went out and then a token every `gap`. Returns the whole second at or after
    the last byte, so that the times a test adds to it stay exact."""
    flights = [Flight(f"s{n}", pace=pace, prompt_chars=chars) for n in range(streams)]
    t = start
    while t < until:
        for flight in flights:
            flight.new_attempt(t)
        for k in range(tokens):
            for flight in flights:
                flight.data(t + ttfb + k * gap)
        for flight in flights:
            flight.end_attempt()
        t += ttfb + (tokens - 1) * gap
    return float(math.ceil(t))


def waiting(now: float, pace: Pace, chars: int = 300) -> Flight:
    """A request that went on the wire at `now` and has had no byte yet."""
    flight = Flight("waiting", pace=pace, prompt_chars=chars)
    flight.new_attempt(now)
    return flight


def test_a_fresh_pace_keeps_the_ceiling() -> None:
    assert Pace().window(100.0, CEILING) == CEILING
    assert Pace().window(100.0, CEILING, waiting_chars=10**6) == CEILING


def test_warm_up_needs_enough_first_bytes_over_enough_time() -> None:
    few = Pace()
    flight = Flight("one", pace=few)
    for n in range(WARM_FIRST_BYTES - 1):  # one too few, over a whole minute
        flight.new_attempt(n * 2.0)
        flight.data(n * 2.0 + 0.2)
    assert few.window(62.0, CEILING) == CEILING
    flight.new_attempt(62.0)
    flight.data(62.2)  # the 32nd
    assert few.window(63.0, CEILING) == FLOOR_S

    rushed = Pace()
    end = steady(rushed, 100.0, 100.0 + WARM_SPAN_S / 2)  # hundreds of first bytes, but over 5 s
    assert end - 100.0 < WARM_SPAN_S
    assert rushed.window(end, CEILING) == CEILING
    end = steady(rushed, end, 100.0 + WARM_SPAN_S + 1)
    assert rushed.window(end, CEILING) == FLOOR_S


def test_without_a_warm_pace_the_verdicts_are_todays() -> None:
    cold = Pace()
    flights = [waiting(0.0, cold)]
    for now in (5.0, 29.9, 30.0):
        today = inspect(now, flights, Activity(last=0.0), CEILING)
        assert inspect(now, flights, Activity(last=0.0), CEILING, pace=cold, tokens_flat=now) == today
        assert today.window == CEILING
    assert not inspect(29.9, flights, Activity(last=0.0), CEILING, pace=cold).wedged
    assert inspect(30.0, flights, Activity(last=0.0), CEILING, pace=cold).wedged


def test_steady_streams_shrink_the_window_to_the_floor() -> None:
    pace = Pace()
    end = steady(pace, 0.0, 120.0)  # tokens every 30 ms, first bytes at 0.2 s: what the mock serves
    assert pace.window(end, CEILING) == FLOOR_S <= 5.0
    # The floor also holds for a slower steady engine: the terms stay under it.
    slower = Pace()
    end = steady(slower, 0.0, 120.0, ttfb=0.5, gap=0.1)
    assert slower.window(end, CEILING) == FLOOR_S
    # A ceiling below the floor (a tiny --stall-timeout) still wins.
    assert pace.window(end, 1.0) == 1.0


def test_the_window_follows_the_slowest_healthy_gap_and_first_byte() -> None:
    pace = Pace()
    end = steady(pace, 0.0, 60.0, streams=16, gap=0.8)
    assert pace.window(end, CEILING) == pytest.approx(GAP_FACTOR * 0.8)
    slow_start = Pace()
    end = steady(slow_start, 0.0, 60.0, ttfb=1.5)
    assert slow_start.window(end, CEILING) == pytest.approx(TTFB_FACTOR * 1.5)


def test_a_long_prompt_waiting_for_its_first_byte_widens_the_window_in_proportion() -> None:
    pace = Pace()
    end = steady(pace, 0.0, 60.0, ttfb=1.0, chars=8000)  # 1 s to the first byte of an 8000-character prompt
    base = pace.window(end, CEILING)
    assert base == pytest.approx(TTFB_FACTOR * 1.0)
    assert pace.window(end, CEILING, waiting_chars=300) == base  # a short prompt waits no longer than any
    assert pace.window(end, CEILING, waiting_chars=12000) == pytest.approx(base * 12000 / 8000)
    assert pace.window(end, CEILING, waiting_chars=16000) == pytest.approx(base * 16000 / 8000)
    # Past twice the longest prompt seen, nothing says how long its prefill takes: the ceiling.
    assert pace.window(end, CEILING, waiting_chars=16001) == CEILING

    # Through inspect: the longest prompt among those on the wire with no byte yet sets the window.
    long = waiting(end, pace, chars=16000)
    started = Flight("streaming", pace=pace, prompt_chars=10**6)  # has had its first byte: not waiting
    started.new_attempt(end)
    started.data(end + 0.1)
    activity = Activity(last=end + 0.1)
    for flights in ([long], [long, started], [started, long, waiting(end, pace)]):
        assert not inspect(end + 6.0, flights, activity, CEILING, pace=pace, tokens_flat=6.0).wedged
        verdict = inspect(end + 6.2, flights, activity, CEILING, pace=pace, tokens_flat=6.2)
        assert verdict.wedged and verdict.window == pytest.approx(6.0)


def test_short_prompts_are_not_scaled_up_as_if_their_first_byte_were_prefill() -> None:
    pace = Pace()
    end = steady(pace, 0.0, 60.0, ttfb=0.4, chars=20)  # the first byte's cost is the queue and a step
    assert pace.window(end, CEILING, waiting_chars=PREFILL_STEP_CHARS) == FLOOR_S
    # Up to twice that "step" it is extrapolated from it: 3 x 0.4 s x 2.
    assert pace.window(end, CEILING, waiting_chars=2 * PREFILL_STEP_CHARS) == pytest.approx(2.4)


def test_pauses_seen_before_keep_the_window_above_them() -> None:
    pace = Pace()
    end = steady(pace, 0.0, 60.0)
    bursty = Flight("bursty", pace=pace)
    bursty.new_attempt(end)
    bursty.data(end + 0.2)
    bursty.data(end + 3.2)  # the engine paused every stream for 3 s, then went on
    bursty.end_attempt()
    end = steady(pace, end + 4.0, end + 60.0)
    assert pace.window(end, CEILING) == pytest.approx(GAP_FACTOR * 3.0)

    # The same pause again, the counter flat throughout: not a wedge, while any time beyond the window is.
    flights = [waiting(end, pace)]
    activity = Activity(last=end)
    assert not inspect(end + 3.0, flights, activity, CEILING, pace=pace, tokens_flat=3.0).wedged
    assert not inspect(end + 11.9, flights, activity, CEILING, pace=pace, tokens_flat=11.9).wedged
    assert inspect(end + 12.1, flights, activity, CEILING, pace=pace, tokens_flat=12.1).wedged


def test_a_pause_is_forgotten_once_it_is_older_than_the_buckets() -> None:
    pace = Pace()
    end = steady(pace, 0.0, 60.0, streams=16, gap=1.0)
    assert pace.window(end, CEILING) == pytest.approx(GAP_FACTOR * 1.0)
    memory = BUCKET_S * BUCKETS
    later = steady(pace, end, end + memory - 2 * BUCKET_S)
    assert pace.window(later, CEILING) == pytest.approx(GAP_FACTOR * 1.0)  # still within the last 5 minutes
    later = steady(pace, later, end + memory + BUCKET_S)
    assert pace.window(later, CEILING) == FLOOR_S


def test_a_pace_left_idle_past_its_memory_warms_up_again() -> None:
    pace = Pace()
    end = steady(pace, 0.0, 60.0)
    assert pace.window(end, CEILING) == FLOOR_S
    idle = end + BUCKET_S * (BUCKETS + 1)
    assert pace.window(idle, CEILING) == CEILING  # nothing recent: not a floor built on no evidence


def test_a_single_stream_in_flight() -> None:
    pace = Pace()
    end = steady(pace, 0.0, 60.0, streams=1)  # concurrency 1: one request at a time
    assert pace.window(end, CEILING) == FLOOR_S
    only = Flight("only", pace=pace, prompt_chars=300)
    activity = Activity()
    activity.sent(end)
    only.new_attempt(end)
    t = end + 0.2
    for _ in range(200):  # a long answer that keeps streaming is never judged
        only.data(t)
        activity.touch(t)
        verdict = inspect(t + 0.03, [only], activity, CEILING, pace=pace, tokens_flat=0.03)
        assert not verdict.wedged and not verdict.stalled and verdict.window == FLOOR_S
        t += 0.03
    # It goes quiet, the counter with it: the server is wedged (one stream cannot stall "among others").
    last = t - 0.03
    verdict = inspect(last + FLOOR_S - 0.1, [only], activity, CEILING, pace=pace, tokens_flat=FLOOR_S - 0.1)
    assert not verdict.wedged
    verdict = inspect(last + FLOOR_S + 0.1, [only], activity, CEILING, pace=pace, tokens_flat=FLOOR_S + 0.1)
    assert verdict.wedged and verdict.stalled == ()


def test_tokens_moving_prevent_a_wedge_below_the_ceiling_but_not_at_it() -> None:
    pace = Pace()
    end = steady(pace, 0.0, 60.0)
    flights = [waiting(end, pace)]
    activity = Activity(last=end)
    assert not inspect(end + 5.0, flights, activity, CEILING, pace=pace, tokens_flat=0.5).wedged
    assert not inspect(end + 5.0, flights, activity, CEILING, pace=pace, tokens_flat=FLOOR_S - 0.1).wedged
    assert inspect(end + 5.0, flights, activity, CEILING, pace=pace, tokens_flat=FLOOR_S).wedged
    assert inspect(end + 5.0, flights, activity, CEILING, pace=pace, tokens_flat=None).wedged  # unreadable
    assert not inspect(end + CEILING - 0.1, flights, activity, CEILING, pace=pace, tokens_flat=0.0).wedged
    at_ceiling = inspect(end + CEILING, flights, activity, CEILING, pace=pace, tokens_flat=0.0)
    assert at_ceiling.wedged and at_ceiling.window == FLOOR_S


def test_a_wedge_after_steady_traffic_is_declared_within_the_small_window() -> None:
    pace = Pace()
    end = steady(pace, 0.0, 120.0, streams=8)
    activity = Activity(last=end)
    flights = [waiting(end, pace) for _ in range(8)]  # the next round goes out, and nothing comes back
    declared = None
    for tick in range(1, 31):  # the monitor's 1 s ticks, the token counter flat since the last byte
        verdict = inspect(end + tick, flights, activity, CEILING, pace=pace, tokens_flat=float(tick))
        if verdict.wedged:
            declared = verdict
            break
    assert declared is not None
    assert declared.quiet_for == FLOOR_S and declared.window == FLOOR_S


def test_a_quiet_stream_among_progressing_ones_is_still_cut_only_at_the_ceiling() -> None:
    pace = Pace()
    end = steady(pace, 0.0, 60.0)
    quiet, busy = Flight("quiet", pace=pace), Flight("busy", pace=pace)
    quiet.new_attempt(end)
    busy.new_attempt(end)
    quiet.data(end + 0.2)
    busy.data(end + 0.2)
    for now in (end + 5.0, end + CEILING):  # the window is 2 s; the quiet stream's silence, up to 29.8 s
        busy.data(now)
        verdict = inspect(now, [quiet, busy], Activity(last=now), CEILING, pace=pace, tokens_flat=0.0)
        assert not verdict.wedged and verdict.stalled == ()
    now = end + 0.2 + CEILING
    busy.data(now)
    verdict = inspect(now, [quiet, busy], Activity(last=now), CEILING, pace=pace, tokens_flat=0.0)
    assert not verdict.wedged and verdict.stalled == (quiet,)


def test_a_resent_attempt_reports_its_own_first_byte() -> None:
    pace = Pace()
    flight = Flight("resent", pace=pace)
    for n in range(40):
        flight.new_attempt(n * 2.0)
        flight.new_attempt(n * 2.0 + 1.0)  # the kept-alive connection was dropped: sent again at once
        flight.data(n * 2.0 + 1.5)  # 0.5 s after the resend, 1.5 s after the first send
    assert pace.window(80.0, CEILING) == FLOOR_S  # 3 x 0.5 s; counted from the first send, 4.5 s
