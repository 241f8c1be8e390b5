"""Shared helpers: run hallurun as a real subprocess, start the mock server, write datasets, find a run's server
processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

REPO = Path(__file__).resolve().parent.parent
MOCK_STARTUP_DEADLINE = 15.0


def write_dataset(path: Path, n: int, *, prefix: str = "item", extra: Callable[[int], dict[str, Any]] | None = None,
                  prompt: Callable[[int], str] | None = None) -> list[str]:
    """Write `n` records with ids `<prefix>-<i>` and return the ids."""
    ids = []
    with path.open("wb") as fh:
        for i in range(n):
            item_id = f"{prefix}-{i:05d}"
            record = {"id": item_id, "prompt": prompt(i) if prompt else f"Question number {i}: what is {i} plus 1?",
                      "answer": str(i + 1)}
            if extra:
                record.update(extra(i))
            fh.write(orjson.dumps(record) + b"\n")
            ids.append(item_id)
    return ids


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def events(run_dir: Path, name: str | None = None) -> list[dict[str, Any]]:
    found = read_jsonl(run_dir / "events.jsonl")
    return [e for e in found if name is None or e["event"] == name]


def server_processes(run_dir: Path) -> list[int]:
    """Pids of live processes launched for this run.

    A server leads its own session, so its whole tree shares the session id of a `server_started` pid; processes
    also carry HALLURUN_RUN_DIR in their environment (vLLM's engine overwrites that area with its process title,
    hence both).
    """
    marker = f"HALLURUN_RUN_DIR={run_dir.resolve()}".encode()
    sessions = {e["pid"] for e in events(run_dir, "server_started") if e.get("pid")}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            state, session = fields[0], int(fields[3])
            ours = session in sessions or marker in (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ours and state != "Z":
            pids.append(int(entry.name))
    return pids


@dataclass
class MockServer:
    """A `hallurun mock-server` process on its own port."""

    proc: subprocess.Popen[bytes]
    port: int
    stdout: Path
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mock_command(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "hallurun", "mock-server", "--port", str(port), *args]


def mock_health(url: str) -> int | None:
    """The status `/health` answers, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return resp.status
    except (urllib.error.URLError, OSError):
        return None


def start_mock(directory: Path, *args: str) -> MockServer:
    """Start a mock server with these CLI arguments and return once its `/health` answers 200."""
    port = free_port()
    stdout, stderr = directory / f"mock-{port}.out", directory / f"mock-{port}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(mock_command(port, *args), stdout=out, stderr=err)
    server = MockServer(proc, port, stdout, stderr)
    deadline = time.monotonic() + MOCK_STARTUP_DEADLINE
    while mock_health(server.url) != 200:
        if proc.poll() is not None:
            raise AssertionError(f"mock server exited with {proc.returncode}: {stderr.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"mock server not healthy after {MOCK_STARTUP_DEADLINE}s: {stderr.read_text()}")
        time.sleep(0.05)  # polling /health is the only readiness signal a server gives
    return server


def stop_mock(server: MockServer) -> None:
    if server.proc.poll() is None:
        server.proc.kill()
    server.proc.wait(timeout=10)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Hallurun:
    """Runs the hallurun CLI in a subprocess, as a user would."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for key in list(self.env):
            if key.startswith("HALLURUN_") or key in {"ENABLE_SERVER_RESTART", "SERVER_RESTART_WAIT_TIME"}:
                del self.env[key]

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "hallurun", *args]

    def run(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(*args), cwd=self.cwd, env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)

    def start(self, *args: str, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
        out = log.open("wb") if log else subprocess.DEVNULL
        return subprocess.Popen(self.cmd(*args), cwd=self.cwd, env={**self.env, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT)


@pytest.fixture
def hallurun(tmp_path: Path) -> Hallurun:
    return Hallurun(tmp_path)


@pytest.fixture(autouse=True)
def _no_leftover_servers(tmp_path: Path):
    """Every test must leave no server process behind; kill any survivor so one failure does not cascade."""
    yield
    run_dirs = [m.parent for m in tmp_path.glob("**/manifest.json")]
    deadline = time.monotonic() + 30  # a killed hallurun's guardian may still be reaping its server
    while (survivors := [pid for d in run_dirs for pid in server_processes(d)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not survivors, f"server processes left behind: {survivors}"
