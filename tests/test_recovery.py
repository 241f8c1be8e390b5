"""Recovery decisions end to end: what hallurun does about backoffs, outages, cuts, wedging servers and streams
without an end marker. Real hallurun processes against real server processes (the mock, or a stand-in)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    MOCK_STARTUP_DEADLINE,
    Hallurun,
    MockServer,
    events,
    free_port,
    mock_command,
    mock_health,
    read_jsonl,
    start_mock,
    stop_mock,
    wait_until,
    write_dataset,
)
from tests.test_inference import assert_exactly_once, mock_run

ERRING_SERVER = Path(__file__).resolve().parent / "erring_server.py"


def _await_health(url: str, proc: subprocess.Popen[bytes]) -> None:
    wait_until(lambda: proc.poll() is not None or mock_health(url) == 200, MOCK_STARTUP_DEADLINE,
               f"{url}/health")
    assert proc.poll() is None, f"server exited with {proc.returncode}"


@pytest.fixture
def erring(request: pytest.FixtureRequest) -> Iterator[str]:
    """A stand-in server that answers the readiness probe and refuses every stream with `request.param`."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ERRING_SERVER), "--port", str(port), "--status",
                             str(request.param), "--retry-after", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _await_health(url, proc)
        yield url
    finally:
        proc.kill()
        proc.wait(10)


def _no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.parametrize(("n", "opts", "faults", "code"), [
    # In-band stream errors: the retried item sleeps in backoff, longer than the stall timeout, holding the
    # clocks of a stream that had sent data while the others stream on. Attempts enough that none runs out.
    (120, ("--max-attempts", "10"), ("stream-error-rate:0.3",), 0),
    # A request timeout that fires on streams longer than it: the same, with the attempt's timeout expired.
    (40, ("--max-attempts", "3", "--request-timeout", "0.4"), (), 1),
], ids=["stream-errors", "request-timeout"])
def test_a_cut_never_touches_an_attempt_that_has_ended(hallurun: Hallurun, tmp_path: Path, n: int,
                                                       opts: tuple[str, ...], faults: tuple[str, ...],
                                                       code: int) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", n)
    run_dir = tmp_path / "run"
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir, "--concurrency", "8", "--stall-timeout", "1",
                    *opts, faults=faults, server_args=("--token-rate", "30"), timeout=240)
    _no_traceback(proc)
    assert proc.returncode == code, proc.stdout + proc.stderr
    failures = read_jsonl(run_dir / "failures.jsonl")
    assert_exactly_once(run_dir, ids, failed={f["id"] for f in failures})
    # A timed-out request fails as one; a cut (for a stream that went quiet) never stands in for it.
    assert {f["reason"] for f in failures} <= {"request_timeout"}


@pytest.mark.parametrize(("erring", "reason"), [(500, "http_500"), (429, "rate_limited")], indirect=["erring"],
                         ids=["500", "429-retry-after"])
def test_requests_sleeping_before_a_retry_are_not_a_silent_server(hallurun: Hallurun, tmp_path: Path, erring: str,
                                                                   reason: str) -> None:
    # Every stream is refused at once, so everything in flight spends its time in backoff or Retry-After sleeps
    # longer than the stall timeout; nothing is on the wire to be silent.
    # One at a time, so that no other item's answer breaks the silence of a sleep (backoffs reach 2-3 s, the
    # Retry-After is 2 s; the stall timeout is 1 s).
    ids = write_dataset(tmp_path / "data.jsonl", 4)
    run_dir = tmp_path / "run"
    proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m", "--server-url", erring,
                        "--run-dir", str(run_dir), "--concurrency", "1", "--stall-timeout", "1",
                        "--max-attempts", "4", "--restart-wait", "10", timeout=180)
    _no_traceback(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failures = read_jsonl(run_dir / "failures.jsonl")
    assert sorted(f["id"] for f in failures) == ids
    assert {(f["reason"], f["attempts"]) for f in failures} == {(reason, 4)}
    assert not events(run_dir, "hang_detected")
    assert not events(run_dir, "restart_requested") and not events(run_dir, "server_restarted")


def test_items_wait_for_an_external_server_that_goes_away_and_comes_back(hallurun: Hallurun, tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 400)
    run_dir = tmp_path / "run"
    server = start_mock(tmp_path, "--latency", "0.02")
    log = tmp_path / "hallurun.log"
    run = hallurun.start("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "m",
                         "--server-url", server.url, "--run-dir", str(run_dir), "--concurrency", "8",
                         "--stall-timeout", "10", "--restart-wait", "60", log=log)
    back: MockServer | None = None
    try:
        wait_until(lambda: len(read_jsonl(run_dir / "results.jsonl")) >= 40, 60, "some results")
        stop_mock(server)  # gone: every connection refused, the streams in flight reset
        # Items must wait, not burn their attempts: come back once the run has noticed the outage, or once
        # items have started to fail (what happened before).
        wait_until(lambda: events(run_dir, "server_unreachable") or read_jsonl(run_dir / "failures.jsonl"), 60,
                   "the run to notice the outage")
        back = _restart_mock_on(server.port, tmp_path)
        assert run.wait(120) == 0, log.read_text()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if back is not None:
            stop_mock(back)
    assert "Traceback" not in log.read_text()
    assert_exactly_once(run_dir, ids)
    assert read_jsonl(run_dir / "failures.jsonl") == []
    assert events(run_dir, "server_unreachable") and events(run_dir, "server_back")
    assert not events(run_dir, "restart_requested") and not events(run_dir, "server_restarted")


def _restart_mock_on(port: int, directory: Path) -> MockServer:
    """A new mock server on the port of one that was stopped (an external supervisor bringing it back)."""
    stdout, stderr = directory / f"mock-{port}-again.out", directory / f"mock-{port}-again.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(mock_command(port), stdout=out, stderr=err)
    server = MockServer(proc, port, stdout, stderr)
    _await_health(server.url, proc)
    return server


def test_a_server_that_wedges_every_few_requests_convicts_no_item_of_poison(hallurun: Hallurun,
                                                                            tmp_path: Path) -> None:
    # Each server process answers 5 generations (the readiness probe is one) and then wedges: at concurrency 16
    # most items are in flight at two wedges, so they run alone as suspects, and some of them meet the wedge of
    # a server that had already served other suspects. No item here wedges anything.
    ids = write_dataset(tmp_path / "data.jsonl", 30)
    run_dir = tmp_path / "run"
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir, "--concurrency", "16", "--stall-timeout", "2",
                    "--max-restarts", "60", faults=("hang-after:5",), timeout=600)
    _no_traceback(proc)
    failures = read_jsonl(run_dir / "failures.jsonl")
    assert not [f for f in failures if f["reason"] == "poison"], failures
    assert not events(run_dir, "item_quarantined")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)


@pytest.mark.parametrize("pacing", [(), ("--token-rate", "200")], ids=["one-write", "token-by-token"])
def test_streams_without_an_end_marker_are_whole_answers(hallurun: Hallurun, tmp_path: Path,
                                                         pacing: tuple[str, ...]) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 40)
    run_dir, plain = tmp_path / "run", tmp_path / "plain"
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir, faults=("no-done",), server_args=pacing)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    assert {r["attempts"] for r in read_jsonl(run_dir / "results.jsonl")} == {1}
    # The same answers as from a server that ends its streams with [DONE].
    assert mock_run(hallurun, tmp_path / "data.jsonl", plain, server_args=pacing).returncode == 0
    assert (run_dir / "generation.jsonl").read_bytes() == (plain / "generation.jsonl").read_bytes()


def test_the_evidence_against_a_poison_input_outlives_a_session(hallurun: Hallurun, tmp_path: Path) -> None:
    # Two restarts a session are fewer than convicting a poison input takes: without its evidence kept in the run
    # directory, each resume would start from nothing, spend its budget and end with exit 3, for ever.
    poison = "item-00013"
    ids = write_dataset(tmp_path / "data.jsonl", 40,
                        prompt=lambda i: "Tell me about XYZZY-POISON" if i == 13 else f"What is {i} squared?")
    run_dir = tmp_path / "run"
    first = mock_run(hallurun, tmp_path / "data.jsonl", run_dir, "--concurrency", "8", "--stall-timeout", "1",
                     "--max-restarts", "2", faults=("poison:XYZZY-POISON",))
    assert first.returncode == 3, first.stdout + first.stderr
    codes = []
    for _ in range(3):
        proc = hallurun.run("resume", str(run_dir))
        _no_traceback(proc)
        codes.append(proc.returncode)
        if proc.returncode != 3:
            break
    assert codes[-1] == 1, codes
    assert_exactly_once(run_dir, ids, failed={poison})
    assert [(f["id"], f["reason"]) for f in read_jsonl(run_dir / "failures.jsonl")] == [(poison, "poison")]
    assert len(events(run_dir, "hang_detected")) <= 5  # poison.py's bound, across all the sessions


def test_a_request_timeout_shorter_than_the_stall_timeout_does_not_hide_a_wedge(hallurun: Hallurun,
                                                                                tmp_path: Path) -> None:
    # One request at a time, each cut after 1 s, the wedge window 2 s: only silence carried over from attempt to
    # attempt reveals the wedge. Unseen, every item after it failed as request_timeout.
    ids = write_dataset(tmp_path / "data.jsonl", 20)
    run_dir = tmp_path / "run"
    proc = mock_run(hallurun, tmp_path / "data.jsonl", run_dir, "--concurrency", "1", "--request-timeout", "1",
                    "--stall-timeout", "2", faults=("hang-after:10",))
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids)
    assert events(run_dir, "hang_detected") and events(run_dir, "server_restarted")
