"""hallurun against the real vLLM engine (its CPU build here) serving the built-in tiny model.

These run in `make test` and so in CI; select or skip them with `-m vllm` / `-m "not vllm"`. They cause the
production failures for real: a wedged engine core (SIGSTOP: /health stays 200, no tokens), a dead engine core
(SIGKILL), and `kill -9` of hallurun itself.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Hallurun, events, read_jsonl, server_processes, wait_until, write_dataset
from tests.test_inference import assert_exactly_once

pytestmark = pytest.mark.vllm

STARTUP = 300  # seconds a cold vLLM start may take on a busy 2-core machine


@pytest.fixture(scope="module", autouse=True)
def _vllm_is_installed() -> None:
    # Not a skip: `make test` installs vLLM, so its absence is a broken setup, not an optional feature.
    assert importlib.util.find_spec("vllm") is not None, "vLLM is not installed here: run `make install`"


def engine_cores(run_dir: Path) -> list[int]:
    """Pids of the run's `VLLM::EngineCore` processes (vLLM renames the engine's process title)."""
    cores = []
    for pid in server_processes(run_dir):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/comm").read_bytes()
        except OSError:
            continue
        if b"VLLM::EngineCor" in title:
            cores.append(pid)
    return cores


def start_vllm_run(hallurun: Hallurun, tmp_path: Path, n: int, *opts: str) -> tuple[subprocess.Popen, Path, list[str]]:
    ids = write_dataset(tmp_path / "data.jsonl", n)
    run_dir = tmp_path / "run"
    proc = hallurun.start("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "tiny", "--run-dir",
                          str(run_dir), "--max-tokens", "32", "--startup-timeout", str(STARTUP), *opts,
                          log=tmp_path / "hallurun.log")
    return proc, run_dir, ids


def test_a_run_completes_exactly_once_and_a_too_long_prompt_fails_fast(hallurun: Hallurun, tmp_path: Path) -> None:
    too_long = "item-00007"
    ids = write_dataset(tmp_path / "data.jsonl", 80,
                        prompt=lambda i: " ".join(["history"] * 5000) if i == 7 else f"Tell me about river {i}.")
    run_dir = tmp_path / "run"
    proc = hallurun.run("inference", "--task", str(tmp_path / "data.jsonl"), "--model", "tiny", "--run-dir",
                        str(run_dir), "--max-tokens", "32", "--startup-timeout", str(STARTUP), timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_exactly_once(run_dir, ids, failed={too_long})
    (failure,) = read_jsonl(run_dir / "failures.jsonl")
    assert failure["id"] == too_long and failure["reason"] == "http_400" and failure["attempts"] == 1
    results = read_jsonl(run_dir / "results.jsonl")
    assert all(r["completion_tokens"] and r["finish_reason"] in {"stop", "length"} for r in results)
    assert not events(run_dir, "server_restarted")
    assert "vllm.entrypoints.openai.api_server" in (run_dir / "server.log").read_text()
    assert not server_processes(run_dir)


def test_real_engine_death_is_recovered_with_one_restart(hallurun: Hallurun, tmp_path: Path) -> None:
    # (The real wedge, an engine core stopped while its API server answers /health, is the replica test's below.)
    proc, run_dir, ids = start_vllm_run(hallurun, tmp_path, 160, "--concurrency", "16", "--stall-timeout", "10")
    try:
        wait_until(lambda: len(read_jsonl(run_dir / "results.jsonl")) >= 40, STARTUP, "first results")
        # Engine death: vLLM's API server notices and exits; hallurun relaunches at once.
        (core,) = wait_until(lambda: engine_cores(run_dir), 10, "the engine core")
        os.kill(core, signal.SIGKILL)
        assert proc.wait(900) == 0, (tmp_path / "hallurun.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_exactly_once(run_dir, ids)
    restarts = events(run_dir, "server_restarted")
    assert [r["cause"] for r in restarts] == ["server_exited"]
    assert not events(run_dir, "hang_detected")
    assert not server_processes(run_dir)


def _session_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])


def test_a_wedged_replica_of_two_is_restarted_alone_while_the_other_serves(hallurun: Hallurun,
                                                                         tmp_path: Path) -> None:
    # Each replica's engine gets a core of its own (server.pool.cpu_shares): both start on this 2-core machine.
    proc, run_dir, ids = start_vllm_run(hallurun, tmp_path, 240, "--replicas", "2", "--concurrency", "8",
                                        "--stall-timeout", "10")
    try:
        wait_until(lambda: len(read_jsonl(run_dir / "results.jsonl")) >= 40, STARTUP, "first results")
        cores = wait_until(lambda: len(engine_cores(run_dir)) == 2 and engine_cores(run_dir), 30, "two engines")
        leaders = {e["pid"]: e["replica"] for e in events(run_dir, "server_started")}
        wedged = leaders[_session_of(cores[0])]
        os.kill(cores[0], signal.SIGSTOP)  # one engine stops; its API server keeps answering /health
        assert proc.wait(900) == 0, (tmp_path / "hallurun.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_exactly_once(run_dir, ids)
    (hang,) = events(run_dir, "hang_detected")
    assert hang["replica"] == wedged
    # The window learned this engine's pace: found within it, and never later than the --stall-timeout ceiling;
    # vLLM's own token counter, read every 2 s once the streams went quiet, stood still too.
    assert hang["window_s"] <= 10 and hang["quiet_s"] >= hang["window_s"]
    assert hang["tokens_flat_s"] is not None and hang["tokens_flat_s"] >= 2
    # Its stop was that replica's alone, and the other replica never paused: it settled the rest meanwhile
    # (often before the relaunch of a CPU engine was even up; a restart that did finish is the wedged one's).
    assert events(run_dir, "server_stopping")[0]["replica"] == wedged
    assert all(e["replica"] == wedged for e in events(run_dir, "server_restarted"))
    assert [r for r in read_jsonl(run_dir / "results.jsonl") if r["done_at"] > hang["t"]]
    assert (run_dir / "server-0.log").exists() and (run_dir / "server-1.log").exists()
    assert not server_processes(run_dir)


def test_kill_9_of_hallurun_leaves_no_vllm_process_and_resume_finishes(hallurun: Hallurun, tmp_path: Path) -> None:
    proc, run_dir, ids = start_vllm_run(hallurun, tmp_path, 300, "--concurrency", "8")
    wait_until(lambda: len(read_jsonl(run_dir / "results.jsonl")) >= 20, STARTUP, "first results")
    tree = server_processes(run_dir)
    assert len(tree) >= 2 and engine_cores(run_dir)  # API server, engine core (and helpers)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_until(lambda: not server_processes(run_dir), 60, "every vLLM process to be gone")
    done = hallurun.run("resume", str(run_dir), timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_exactly_once(run_dir, ids)
