"""The decision logic on its own, driven without sockets: wedge verdicts, poison tracking, retry policy,
the assembly of a streamed answer."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import orjson
import pytest
from tenacity import RetryCallState

from hallurun.core.poison import PoisonTracker
from hallurun.core.scheduler import idle_workers_may_act
from hallurun.wire.client import Completion, StreamedAnswer
from hallurun.wire.policy import (
    RequestError,
    RetryPolicy,
    classify_status,
    is_connect_failure,
    is_retryable,
    is_stale_connection,
)
from hallurun.wire.watchdog import Activity, Flight, Silence, inspect


def test_no_flights_is_never_a_wedge() -> None:
    assert inspect(100.0, [], Activity(last=0.0), 30).wedged is False


def test_silence_with_requests_in_flight_is_one_wedge_verdict() -> None:
    flights = [Flight(f"i{n}", started=0.0) for n in range(64)]
    verdict = inspect(31.0, flights, Activity(last=1.0), 30)
    assert verdict.wedged and verdict.stalled == ()


def test_a_quiet_stream_among_streaming_ones_is_stalled_alone() -> None:
    quiet = Flight("quiet", started=0.0)
    quiet.data(1.0)
    busy = Flight("busy", started=0.0)
    busy.data(40.0)
    verdict = inspect(40.0, [quiet, busy], Activity(last=40.0), 30)
    assert not verdict.wedged
    assert verdict.stalled == (quiet,)


def test_a_request_queued_in_the_server_is_waiting_not_stalled() -> None:
    queued = Flight("queued", started=0.0)  # no data yet: the server has not started it
    busy = Flight("busy", started=0.0)
    busy.data(100.0)
    assert inspect(100.0, [queued, busy], Activity(last=100.0), 30) == inspect(100.0, [busy], Activity(100.0), 30)


def test_a_long_generation_that_keeps_streaming_is_never_cut() -> None:
    long = Flight("long", started=0.0)
    for t in range(0, 3600, 5):
        long.data(float(t))
        verdict = inspect(float(t) + 4, [long], Activity(last=float(t)), 30)
        assert not verdict.wedged and not verdict.stalled


def test_a_stream_already_cut_is_not_reported_twice() -> None:
    quiet = Flight("quiet", started=0.0)
    quiet.data(0.0)
    quiet.stalled = True
    assert inspect(50.0, [quiet], Activity(last=45.0), 30).stalled == ()


def test_a_flight_sleeping_before_a_retry_is_not_silent() -> None:
    # Everything in flight sleeps in a backoff or a Retry-After: nothing is waiting on the server.
    sleeping = [Flight(f"i{n}") for n in range(4)]
    assert not sleeping[0].on_wire
    assert inspect(100.0, sleeping, Activity(last=0.0), 30) == Silence()
    # One of them on the wire among the sleepers is judged alone.
    sleeping[0].new_attempt(10.0)
    assert inspect(100.0, sleeping, Activity(last=10.0), 30).wedged


def test_the_silence_clock_starts_when_a_request_goes_on_the_wire_with_none_other_there() -> None:
    activity = Activity(last=0.0)
    activity.sent(5.0)  # the only request on the wire: the clock starts now
    assert activity.last == 5.0
    activity.touch(6.0)  # it ends in an error (an answer: a sign of life); the others sleep before their retries,
    activity.ended(6.0)  # long past the stall timeout
    retry = Flight("r")
    retry.new_attempt(100.0)
    activity.sent(100.0)
    assert activity.last == 100.0 and not inspect(100.0, [retry], activity, 30).wedged
    # A second request sent onto a server already silent does not restart its clock.
    another = Flight("a")
    another.new_attempt(120.0)
    activity.sent(120.0)
    verdict = inspect(130.0, [retry, another], activity, 30)
    assert verdict.wedged and verdict.quiet_for == 30.0


def test_an_ended_attempt_leaves_no_clock_to_be_judged_by() -> None:
    # A stream that sent data and then failed (an in-band error, a request timeout): while the item sleeps
    # before its retry, the others stream on, and its old data clock must not make it "stalled".
    failed = Flight("failed")
    failed.new_attempt(0.0)
    failed.data(1.0)
    failed.end_attempt()
    busy = Flight("busy")
    busy.new_attempt(0.0)
    busy.data(40.0)
    assert inspect(40.0, [failed, busy], Activity(last=40.0), 30) == Silence(quiet_for=0.0)
    assert failed.last_data is None and failed.deadline is None


def test_a_resent_request_is_judged_by_its_own_stream() -> None:
    # Sent again on a new connection after the old one was dropped, it waits in the server's queue: no data
    # of its own yet, so it is queued, not stalled, however long ago the dropped stream's last byte came.
    resent = Flight("resent")
    resent.new_attempt(0.0)
    resent.data(1.0)
    resent.new_attempt(2.0)
    busy = Flight("busy")
    busy.new_attempt(0.0)
    busy.data(100.0)
    assert inspect(100.0, [resent, busy], Activity(last=100.0), 30).stalled == ()


def test_a_quiet_stream_is_not_cut_while_the_server_reports_requests_waiting() -> None:
    # vLLM preempts a running request back into its queue under KV-cache pressure; it resumes later.
    preempted = Flight("preempted")
    preempted.new_attempt(0.0)
    preempted.data(10.0)
    busy = Flight("busy")
    busy.new_attempt(0.0)
    busy.data(50.0)
    flights, activity = [preempted, busy], Activity(last=50.0)
    assert inspect(50.0, flights, activity, 30, queue_seen=45.0).stalled == ()
    # A queue seen only before the stream went quiet, or no queue: the stream itself has stalled.
    assert inspect(50.0, flights, activity, 30, queue_seen=5.0).stalled == (preempted,)
    assert inspect(50.0, flights, activity, 30, queue_seen=None).stalled == (preempted,)


def _cut_outcomes() -> dict[str, object]:
    """Cut attempts in each state they can be in when the monitor looks, with real asyncio timeouts."""

    async def scenario() -> dict[str, object]:
        loop = asyncio.get_running_loop()
        outcome: dict[str, object] = {}
        live = Flight("live")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(None) as deadline:
                live.new_attempt(loop.time(), deadline)
                outcome["live"] = live.cut(loop.time())
                await asyncio.sleep(10)
        outcome["live_stalled"] = live.stalled
        ended = Flight("ended")
        async with asyncio.timeout(None) as deadline:
            ended.new_attempt(loop.time(), deadline)
            ended.data(loop.time())
        ended.end_attempt()
        outcome["ended"] = ended.cut(loop.time())  # a retry sleeping in backoff: nothing to cut
        expiring = Flight("expiring")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0) as deadline:
                expiring.new_attempt(loop.time(), deadline)
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(10)  # the request timeout fires...
                outcome["expiring"] = expiring.cut(loop.time())  # ...and the monitor looks in the same tick
                raise asyncio.CancelledError
        outcome["expiring_stalled"] = expiring.stalled
        return outcome

    return asyncio.run(scenario())


def test_only_a_live_attempt_can_be_cut() -> None:
    assert _cut_outcomes() == {"live": True, "live_stalled": True, "ended": False, "expiring": False,
                               "expiring_stalled": False}


def test_poison_is_quarantined_after_wedging_a_fresh_server_alone_twice() -> None:
    tracker = PoisonTracker()
    assert tracker.on_wedge(["p", "a", "b"]) == []
    assert not tracker.is_suspect("p")
    assert tracker.on_wedge(["p", "a", "c"]) == []
    assert tracker.is_suspect("p") and tracker.is_suspect("a") and not tracker.is_suspect("c")
    tracker.forget("a")  # "a" ran alone and finished: cleared
    assert tracker.on_wedge(["p"], solo="p", fresh=True) == []  # once could be the server's own doing
    assert tracker.is_suspect("p")
    assert tracker.on_wedge(["p"], solo="p", fresh=True) == ["p"]
    assert not tracker.is_suspect("p")


def test_a_suspect_alone_on_a_server_that_had_served_others_is_not_convicted() -> None:
    # A server that wedges every few requests: the suspect happened to be the one running when it did.
    tracker = PoisonTracker()
    tracker.on_wedge(["s", "x"])
    tracker.on_wedge(["s", "y"])
    for _ in range(5):
        assert tracker.on_wedge(["s"], solo="s", fresh=False) == []
    assert tracker.is_suspect("s")
    # Run alone on a fresh server, it finishes: it was innocent, and is forgotten with its evidence.
    tracker.forget("s")
    tracker.on_wedge(["s", "x"])
    tracker.on_wedge(["s", "y"])
    assert tracker.on_wedge(["s"], solo="s", fresh=True) == []
    assert tracker.is_suspect("s")


def test_a_real_poison_costs_a_bounded_number_of_wedges() -> None:
    # The worst case: two wedges among others, one alone after other suspects ran, two alone on fresh servers.
    tracker = PoisonTracker()
    wedges = [(["p", "a"], None, False), (["p", "b"], None, False), (["p"], "p", False), (["p"], "p", True),
              (["p"], "p", True)]
    verdicts = [tracker.on_wedge(ids, solo, fresh=fresh) for ids, solo, fresh in wedges]
    assert verdicts == [[], [], [], [], ["p"]]


def test_a_wedge_with_others_in_flight_does_not_convict_the_solo_suspect() -> None:
    tracker = PoisonTracker()
    tracker.on_wedge(["p", "x"])
    tracker.on_wedge(["p", "x"])
    assert tracker.on_wedge(["p", "x"], solo=None) == []


def test_an_ordinary_end_leaves_idle_workers_asleep() -> None:
    # Once the dataset is exhausted, idle workers wait: a job that ends with others still running and nothing
    # queued gives them nothing to do, and waking all of them at each end was quadratic in the concurrency.
    assert not idle_workers_may_act(queued=False, running=255)


@pytest.mark.parametrize(("queued", "running"), [
    (True, 10),  # a job put back (the server went away under it): someone must take it
    (False, 0),  # nothing runs: a suspect of poison may go alone, the others after it, or every item has settled
])
def test_an_end_that_frees_work_wakes_idle_workers(queued: bool, running: int) -> None:
    assert idle_workers_may_act(queued=queued, running=running)


@pytest.mark.parametrize(("status", "retryable"), [(400, False), (422, False), (404, False), (408, True),
                                                   (429, True), (500, True), (503, True)])
def test_status_classification(status: int, retryable: bool) -> None:
    assert classify_status(status, "body").retryable is retryable


def test_retry_after_is_honoured() -> None:
    exc = classify_status(429, "slow down", "7")
    assert exc.retry_after == 7.0
    policy = RetryPolicy(max_attempts=4)
    state = RetryCallState(retry_object=policy.retrying(0), fn=None, args=(), kwargs={})
    state.set_exception((RequestError, exc, None))
    assert 7.0 <= policy.wait(state) <= 7.1


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, initial_wait=0.5, max_wait=4.0)
    waits = []
    for number in range(1, 9):
        state = RetryCallState(retry_object=policy.retrying(0), fn=None, args=(), kwargs={})
        state.attempt_number = number
        state.set_exception((RequestError, RequestError("http_500", "x", retryable=True), None))
        waits.append(policy.wait(state))
    assert waits[0] < 2.0
    assert all(w <= 4.0 + 1.0 for w in waits)  # jitter adds at most one second
    assert max(waits) >= 4.0


def test_only_retryable_request_errors_are_retried() -> None:
    assert is_retryable(RequestError("http_500", "x", retryable=True))
    assert not is_retryable(RequestError("http_400", "x", retryable=False))
    assert not is_retryable(ValueError("bug"))


def test_a_dropped_kept_alive_connection_is_stale_but_a_refused_one_is_not() -> None:
    # What aiohttp raises when the server closed the connection the request went out on...
    assert is_stale_connection(aiohttp.ServerDisconnectedError())
    assert is_stale_connection(aiohttp.ClientOSError(32, "Can not write request body"))
    assert is_stale_connection(aiohttp.ClientConnectionResetError("Connection lost"))
    # ...and what it raises when there is no server to connect to, or the answer broke off midway.
    refused = aiohttp.ClientConnectorError(None, ConnectionRefusedError(111, "Connect call failed"))  # type: ignore[arg-type]
    assert not is_stale_connection(refused)
    assert not is_stale_connection(aiohttp.ClientPayloadError("Response payload is not completed"))
    assert not is_stale_connection(RequestError("connection", "x", retryable=True))


def test_a_refused_connection_is_an_outage_but_a_broken_one_is_the_items_failure() -> None:
    refused = aiohttp.ClientConnectorError(None, ConnectionRefusedError(111, "Connect call failed"))  # type: ignore[arg-type]
    assert is_connect_failure(refused)
    assert is_connect_failure(aiohttp.ConnectionTimeoutError("Connection timeout to host"))
    assert not is_connect_failure(aiohttp.ServerDisconnectedError())
    assert not is_connect_failure(aiohttp.ClientPayloadError("Response payload is not completed"))
    assert not is_connect_failure(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))


def _chat_chunk(content: str | None = None, finish: str | None = None, usage: dict | None = None) -> bytes:
    choices = [] if content is None and finish is None else [{"index": 0, "delta": {"content": content},
                                                             "finish_reason": finish}]
    return orjson.dumps({"object": "chat.completion.chunk", "choices": choices, "usage": usage})


def test_a_streamed_answer_is_assembled_across_reads_until_done() -> None:
    answer = StreamedAnswer(chat=True)
    assert answer.feed([_chat_chunk("Paris"), _chat_chunk(" is")]) is False
    assert answer.feed([_chat_chunk(" big", finish="stop"),
                        _chat_chunk(usage={"prompt_tokens": 7, "completion_tokens": 3}), b"[DONE]"]) is True
    assert answer.completion() == Completion("Paris is big", "stop", 7, 3)


def test_a_completions_stream_reads_text_not_deltas() -> None:
    answer = StreamedAnswer(chat=False)
    chunk = orjson.dumps({"choices": [{"index": 0, "text": "42", "finish_reason": "length"}]})
    assert answer.feed([chunk, b"[DONE]"]) is True
    assert answer.completion() == Completion("42", "length", None, None)


def test_an_in_band_error_fails_the_attempt_and_may_be_retried() -> None:
    # vLLM sends this after its 200 when the engine dies mid-request, then still sends [DONE].
    error = orjson.dumps({"error": {"message": "EngineCore encountered an issue", "code": 500}})
    with pytest.raises(RequestError) as caught:
        StreamedAnswer(chat=True).feed([_chat_chunk("Par"), error, b"[DONE]"])
    assert caught.value.reason == "stream_error" and caught.value.retryable
    assert "EngineCore encountered an issue" in str(caught.value)


@pytest.mark.parametrize("bad", [b"{not json", b"", b"1,2", b"[1]", b'"text"'])
def test_a_malformed_payload_is_named_even_among_good_ones(bad: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        StreamedAnswer(chat=True).feed([_chat_chunk("a"), bad, _chat_chunk("b")])
    assert caught.value.reason == "bad_stream" and caught.value.retryable
    assert repr(bad)[:-1] in str(caught.value)


def test_nothing_after_done_is_read() -> None:
    answer = StreamedAnswer(chat=True)
    assert answer.feed([_chat_chunk("yes"), b"[DONE]", b"{late garbage"]) is True
    assert answer.completion().text == "yes"


def test_a_finish_reason_ends_an_answer_whose_stream_has_no_done_marker() -> None:
    # Some OpenAI-compatible servers end the body after the last chunk without `data: [DONE]`.
    answer = StreamedAnswer(chat=True)
    assert answer.feed([_chat_chunk("Paris", finish="stop"), _chat_chunk(usage={"prompt_tokens": 7,
                                                                                "completion_tokens": 1})]) is False
    assert answer.finished and answer.completion() == Completion("Paris", "stop", 7, 1)
    cut_short = StreamedAnswer(chat=True)
    cut_short.feed([_chat_chunk("Par")])
    assert not cut_short.finished


def test_the_evidence_against_suspects_round_trips_through_json() -> None:
    tracker = PoisonTracker()
    tracker.on_wedge(["a", "b"])
    tracker.on_wedge(["a"])
    tracker.on_wedge(["a"], solo="a", fresh=True)
    again = PoisonTracker.from_json(orjson.loads(orjson.dumps(tracker.to_json())))
    assert again.is_suspect("a") and not again.is_suspect("b")
    assert again.on_wedge(["a"], solo="a", fresh=True) == ["a"]  # the second fresh solo wedge convicts
    assert PoisonTracker.from_json({"seen": {"x": "many"}, "suspects": "y"}) == PoisonTracker()


def test_silence_before_the_wire_emptied_is_carried_to_the_next_request() -> None:
    # Concurrency 1, --request-timeout 2 s, --stall-timeout 3 s, a wedged server: each attempt is cut at 2 s
    # with no byte, then sleeps before its retry. The silence adds up over the attempts, not over the sleeps.
    activity = Activity(last=0.0)
    attempt = Flight("only")
    activity.sent(10.0)
    attempt.new_attempt(10.0)
    assert not inspect(12.0, [attempt], activity, 3).wedged
    attempt.end_attempt()
    activity.ended(12.0)  # cut by the request timeout: two seconds of silence on the wire
    assert inspect(20.0, [attempt], activity, 3) == Silence()  # sleeping before the retry: not silent
    activity.sent(20.0)
    attempt.new_attempt(20.0)
    verdict = inspect(21.0, [attempt], activity, 3)
    assert verdict.wedged and verdict.quiet_for == 3.0
    # A sign of life (an error answer, a byte) forgives what was carried.
    activity.touch(21.5)
    attempt.end_attempt()
    activity.ended(21.5)
    activity.sent(30.0)
    attempt.new_attempt(30.0)
    assert not inspect(32.0, [attempt], activity, 3).wedged
