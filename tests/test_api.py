"""The Python API: the README's example, run as written; a run inside a host's event loop, which keeps going
meanwhile; a cancelled run that stops its server and resumes; typed options and cheap imports."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

import hallurun
from tests.conftest import REPO, Hallurun, events, read_jsonl, server_processes, wait_until, write_dataset


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run in this process reads its environment: none of the caller's hallurun settings apply here."""
    for key in list(os.environ):
        if key.startswith("HALLURUN_") or key in {"ENABLE_SERVER_RESTART", "SERVER_RESTART_WAIT_TIME"}:
            monkeypatch.delenv(key)


def readme_example() -> str:
    """The fenced Python block of the README's "Python API" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "the README's Python API section has no ```python block"
    return found.group(1)


def test_the_readme_example_runs_as_written(hallurun: Hallurun, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=hallurun.env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Each print() of the example says, in its comment, what it prints.
    said = [line.split("#", 1)[1].strip() for line in readme_example().splitlines() if line.startswith("print(")]
    assert said and proc.stdout.splitlines() == said
    assert len(read_jsonl(tmp_path / "runs" / "api-demo" / "generation.jsonl")) == 10
    assert len(events(tmp_path / "runs" / "api-demo", "server_started")) == 1  # the resume launched none


def test_run_async_works_inside_a_host_event_loop_that_keeps_going(tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 60)
    run_dir = tmp_path / "run"

    mock = hallurun.ServerSpec(kind="mock", args=("--latency", "0.02"))

    async def host() -> tuple[hallurun.RunResult, list[float], float, float]:
        ticks: list[float] = []

        async def tick() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        async with asyncio.TaskGroup() as group:
            ticker = group.create_task(tick())
            await asyncio.sleep(0.05)
            began = time.monotonic()
            result = await hallurun.run_async(tmp_path / "data.jsonl", model="m", server=mock, run_dir=run_dir,
                                              options=hallurun.RunOptions(concurrency=4))
            ended = time.monotonic()
            ticker.cancel()
        return result, ticks, began, ended

    result, ticks, began, ended = asyncio.run(host())
    assert (result.status, result.exit_code, result.total, result.done, result.failed) == ("complete", 0, 60, 60, 0)
    assert result.run_dir == run_dir
    # The host's task ran all along the run (a server start included): the loop never stalled for long.
    during = [t for t in ticks if began <= t <= ended]
    assert len(during) > 20
    assert max(b - a for a, b in itertools.pairwise([began, *during, ended])) < 1.0
    assert Counter(r["id"] for r in read_jsonl(run_dir / "results.jsonl")) == Counter(ids)
    assert not server_processes(run_dir)


def test_cancelling_run_async_stops_the_server_and_leaves_a_resumable_run(tmp_path: Path) -> None:
    ids = write_dataset(tmp_path / "data.jsonl", 300)
    run_dir = tmp_path / "run"
    handle = hallurun.RunHandle()
    mock = hallurun.ServerSpec(kind="mock", args=("--latency", "0.05"))

    async def cancel_midway() -> tuple[bool, list[int]]:
        task = asyncio.create_task(hallurun.run_async(tmp_path / "data.jsonl", model="m", server=mock,
                                                      run_dir=run_dir, options=hallurun.RunOptions(concurrency=4),
                                                      handle=handle))
        deadline = time.monotonic() + 60
        while len(read_jsonl(run_dir / "results.jsonl")) < 20:
            assert time.monotonic() < deadline and not task.done(), "no results came"
            await asyncio.sleep(0.05)
        pids = server_processes(run_dir)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return task.cancelled(), pids
        return False, pids

    cancelled, pids = asyncio.run(cancel_midway())
    assert cancelled  # asyncio's convention: a cancelled task ends cancelled
    assert pids and not server_processes(run_dir)
    for pid in pids:  # no orphan: every process of the server's tree is gone
        assert not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    assert handle.result is not None
    assert (handle.result.status, handle.result.exit_code) == ("interrupted", 130)
    assert 20 <= handle.result.done < 300
    assert events(run_dir, "interrupted")[0]["while_stopping"] is False

    resumed = hallurun.resume(run_dir, options=hallurun.RunOptions(concurrency=32),
                              server=hallurun.ServerOptions(args=()))  # without the latency
    assert (resumed.status, resumed.done, resumed.failed) == ("complete", 300, 0)
    assert Counter(r["id"] for r in read_jsonl(run_dir / "results.jsonl")) == Counter(ids)
    assert len(read_jsonl(run_dir / "generation.jsonl")) == 300


def test_a_cancellation_while_the_server_stops_after_every_item_settled_leaves_the_run_complete(
        tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 20)
    run_dir = tmp_path / "run"
    handle = hallurun.RunHandle()
    slow_to_stop = hallurun.ServerSpec(kind="mock", args=("--term-delay", "3"))

    def stopping() -> bool:
        log = run_dir / "server.log"
        return log.exists() and "mock: SIGTERM" in log.read_text(errors="replace")

    async def cancel_while_stopping() -> bool:
        task = asyncio.create_task(hallurun.run_async(tmp_path / "data.jsonl", model="m", server=slow_to_stop,
                                                      run_dir=run_dir, handle=handle))
        deadline = time.monotonic() + 60
        while not stopping():
            assert time.monotonic() < deadline and not task.done(), "the server was not stopped"
            await asyncio.sleep(0.05)
        assert handle.stopping
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return task.cancelled()
        return False

    assert asyncio.run(cancel_while_stopping())
    assert handle.result is not None and handle.result.status == "complete"
    assert len(read_jsonl(run_dir / "generation.jsonl")) == 20
    assert events(run_dir, "interrupted")[0]["while_stopping"] is True and events(run_dir, "run_finished")
    assert not server_processes(run_dir)


def test_usage_errors_are_raised_before_any_work(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data.jsonl", 3)
    with pytest.raises(hallurun.UsageError, match="--temperature must not be negative"):
        hallurun.run(tmp_path / "data.jsonl", model="m", server="mock", run_dir=tmp_path / "run",
                     sampling=hallurun.SamplingOverrides(temperature=-1.0))
    with pytest.raises(hallurun.UsageError, match="unknown task 'no-such-task'"):
        hallurun.run("no-such-task", model="m", server="mock", run_dir=tmp_path / "run")
    with pytest.raises(hallurun.UsageError, match="no such run directory"):
        hallurun.resume(tmp_path / "nothing-here")
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(hallurun.UsageError, match="a hallurun run directory"):
        hallurun.resume(tmp_path / "not-a-run")
    assert not (tmp_path / "not-a-run" / "lock").exists()  # a folder that holds no run is left as it was
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_options_are_typed_values() -> None:
    with pytest.raises(TypeError):
        hallurun.RunOptions(concurrancy=8)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        hallurun.RunOptions(8)  # type: ignore[misc]
    given = hallurun.RunOptions(concurrency=8).over(hallurun.RunOptions(concurrency=2, max_attempts=3))
    assert (given.concurrency, given.max_attempts, given.stall_timeout) == (8, 3, None)
    spec = hallurun.ServerOptions(port=9000, args=("--x",)).over(hallurun.ServerSpec(kind="mock", host="0.0.0.0"))
    assert (spec.kind, spec.host, spec.port, spec.args, spec.startup_timeout) == ("mock", "0.0.0.0", 9000, ("--x",),
                                                                                    900.0)


def test_a_result_maps_each_ending_to_the_command_lines_exit_code(tmp_path: Path) -> None:
    codes = {status: hallurun.RunResult(tmp_path, status, 1, 0, 0).exit_code  # type: ignore[arg-type]
             for status in ("complete", "failed_items", "interrupted", "server_failed", "server_refused",
                            "run_dir_unwritable", "dataset_changed")}
    assert codes == {"complete": 0, "failed_items": 1, "interrupted": 130, "server_failed": 3, "server_refused": 2,
                     "run_dir_unwritable": 74, "dataset_changed": 2}


def test_import_hallurun_stays_cheap() -> None:
    heavy = "('aiohttp', 'rich', 'hallurun.api', 'hallurun.core.runner')"
    probe = ("import sys, hallurun, hallurun.cli; print(hallurun.__version__); "
             f"print(sorted(m for m in {heavy} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == [hallurun.__version__, "[]"]
    assert set(hallurun.__all__) <= set(dir(hallurun))
    assert hallurun.run_async is hallurun.api.run_async



SYNC_RUN = """
import sys
import hallurun
try:
    hallurun.run(sys.argv[1], model="m", run_dir=sys.argv[2], options=hallurun.RunOptions(concurrency=4),
                 server=hallurun.ServerSpec(kind="mock", args=("--latency", "0.05", "--term-delay", "30")))
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    sys.stdin.read()  # the process lives on, as a notebook does, until the test has looked
    try:
        hallurun.resume(sys.argv[2], server=hallurun.ServerOptions(args=("--latency", "0")))
    except hallurun.HallurunError as exc:
        print(f"resume failed: {exc}")
    else:
        print("resumed")
"""


def test_a_second_ctrl_c_in_the_sync_api_kills_the_server_and_lets_the_stop_finish(hallurun: Hallurun,
                                                                                     tmp_path: Path) -> None:
    # With a plain asyncio.run, the second Ctrl-C raised KeyboardInterrupt at once and the loop's teardown cancelled
    # the run's stop midway: the caller's process went on with the server still running (the guardian reaps it
    # only when that process ends), and the run's worker threads could outlive its lock.
    ids = write_dataset(tmp_path / "data.jsonl", 300)
    run_dir = tmp_path / "run"
    script = tmp_path / "sync_run.py"
    script.write_text(SYNC_RUN)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "data.jsonl"), str(run_dir)],
                            cwd=tmp_path, env=hallurun.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(read_jsonl(run_dir / "results.jsonl")) >= 20, 60, "results")
        pids = server_processes(run_dir)
        proc.send_signal(signal.SIGINT)
        # The mock takes 30 s to exit after SIGTERM: the stop is under way, and would wait that out.
        wait_until(lambda: events(run_dir, "server_stopping"), 30, "the stop to begin")
        proc.send_signal(signal.SIGINT)
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "KeyboardInterrupt"
        # The caller's process is alive and the run has stopped: no server of it is left.
        assert pids and not server_processes(run_dir)
        proc.stdin.close()
        proc.wait(timeout=120)
        out = proc.stdout.read()
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
    # In the same process, the run resumes: its lock was released once its files were closed.
    assert out.strip() == "resumed", out + err
    assert events(run_dir, "interrupted")
    assert Counter(r["id"] for r in read_jsonl(run_dir / "results.jsonl")) == Counter(ids)


SYNC_RUN_IN_SCAN = """
import sys
import hallurun
from hallurun.store.lock import LockError, RunLock
try:
    hallurun.run(sys.argv[1], model="m", run_dir=sys.argv[2], server="mock")
except KeyboardInterrupt:
    lock = RunLock(hallurun.api.Path(sys.argv[2]))
    try:
        lock.acquire()
    except LockError as exc:
        print(f"lock held: {exc}")
    else:
        print("lock free")
"""


def _sigint_pending(pid: int) -> bool:
    """Whether a SIGINT sent to `pid` is still pending, not yet delivered to its handler (/proc/PID/status)."""
    bit = 1 << (signal.SIGINT - 1)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & bit:
            return True
    return False


def test_two_ctrl_c_while_the_sync_api_validates_the_dataset_leave_the_lock_free(hallurun: Hallurun,
                                                                                 tmp_path: Path) -> None:
    # Validating a million records takes seconds, in a worker thread that holds the run lock. With a plain
    # asyncio.run the second Ctrl-C tore the loop down without undoing what that thread did: the lock stayed held
    # by the caller's own process, and the next hallurun.resume there was refused.
    data, run_dir = tmp_path / "data.jsonl", tmp_path / "run"
    data.write_bytes(b"".join(orjson.dumps({"prompt": f"q {i}"}) + b"\n" for i in range(1_000_000)))
    script = tmp_path / "sync_run.py"
    script.write_text(SYNC_RUN_IN_SCAN)
    proc = subprocess.Popen([sys.executable, str(script), str(data), str(run_dir)], cwd=tmp_path, env=hallurun.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (run_dir / "lock").exists(), 30, "the run to take its lock")
        proc.send_signal(signal.SIGINT)
        # Two signals pending at once are one: the second is sent once the first has been delivered.
        wait_until(lambda: not _sigint_pending(proc.pid), 10, "the first SIGINT to be delivered")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert out.strip() == "lock free", out + err
    assert not (run_dir / "manifest.json").exists()  # interrupted before any work: nothing was started
