"""What every section needs: datasets, mock servers that never outlive the bench, hallurun as a user runs it,
and the few statistics the tables quote."""

from __future__ import annotations

import contextlib
import os
import pty
import random
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MODEL = "mock"


def hallurun_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "hallurun", *args]


def shown(cmd: Sequence[str], work: Path | None = None) -> str:
    """A command line as a reader would type it: `hallurun ...` and `python ...`, with files in the bench's
    work folder named as if it were the current directory."""
    parts = list(cmd)
    if parts[:3] == [PYTHON, "-m", "hallurun"]:
        parts = ["hallurun", *parts[3:]]
    elif parts and parts[0] == PYTHON:
        parts[0] = "python"
    line = " ".join(parts)
    return line.replace(f"{work}/", "") if work is not None else line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prompt(i: int) -> str:
    return f"Question {i}: in which year was the old stone bridge of city {i} first known?"


REFERENCE = ("The old stone bridge was built across the river in the first years of the city, and people have "
             "known it ever since as the place where the north road meets the long song of the water. ") * 2


def record(i: int, *, reference: bool = False) -> dict[str, Any]:
    """Item `i` of a PreciseWikiQA-shaped dataset; with `reference`, a ~380-character excerpt like the wiki
    sections real question files carry (which run to 1-3 KB), so that the scale section reads lines of a
    realistic order of size."""
    item: dict[str, Any] = {"id": f"q-{i:07d}", "prompt": prompt(i), "answer": str(1800 + i % 200),
                            "h_score_cat": i % 10}
    if reference:
        item["reference"] = REFERENCE
    return item


def write_dataset(path: Path, n: int, *, poison: tuple[int, str] | None = None, reference: bool = False) -> list[str]:
    """`n` items with ids `q-<i>`; `poison=(index, text)` plants TEXT in one prompt."""
    ids = []
    with path.open("wb") as fh:
        for i in range(n):
            item = record(i, reference=reference)
            if poison is not None and poison[0] == i:
                item["prompt"] += " " + poison[1]
            fh.write(orjson.dumps(item) + b"\n")
            ids.append(item["id"])
    return ids


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def events(run_dir: Path, name: str | None = None) -> list[dict[str, Any]]:
    return [e for e in read_jsonl(run_dir / "events.jsonl") if name is None or e["event"] == name]


def run_json(cmd: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run a helper that prints one JSON line; a failure raises with the end of what it said on stderr."""
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=timeout)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{shown(cmd)} exited {done.returncode}: " + " | ".join(tail))
    return orjson.loads(done.stdout)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def median_interval(values: Sequence[float], level: float = 0.9, draws: int = 10_000) -> tuple[float, float]:
    """A bootstrap interval for the median of `values`: where the median of another set of as many runs would
    likely fall. For the engine's pairwise ratios this is what a single bench run can tell: pairing adjacent runs
    takes the machine's drift out of each ratio, and the pairs are then close to independent, so resampling them
    is fair. Seeded: the same runs always give the same interval."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    tail = int(draws * (1 - level) / 2)
    return medians[tail], medians[draws - 1 - tail]


# -- server processes -------------------------------------------------------------------------------------


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """KILL the process group `proc` leads (it was started in a session or a group of its own) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait_healthy(url: str, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not healthy(url):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the mock server at {url} exited with code {proc.returncode} while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the mock server at {url} did not answer /health within {timeout}s")
        time.sleep(0.05)  # another process opening its port can only be polled for


@contextlib.contextmanager
def mock_server(args: Sequence[str], log: Path, cpus: set[int] | None = None) -> Iterator[str]:
    """A loud mock server (own session, so its whole group can be killed) for the duration; yields its URL.
    With `cpus`, the server runs on those cores only."""
    port = free_port()
    cmd = [PYTHON, "-m", "bench.loud_mock", "--port", str(port), "--model", MODEL, *args]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, 30, proc)
        yield url
    finally:
        kill_group(proc)


@contextlib.contextmanager
def cores_apart() -> Iterator[set[int] | None]:
    """Yield cores for a server and pin this process (and every client it starts meanwhile) to the others, so
    that a client and the server it measures never share a core: on a machine of two, the scheduler otherwise
    now and then puts both on one, and a run halves its rate by chance. None on a single core."""
    mine = os.sched_getaffinity(0)
    if len(mine) < 2:
        yield None
        return
    server = {max(mine)}
    os.sched_setaffinity(0, mine - server)
    try:
        yield server
    finally:
        os.sched_setaffinity(0, mine)


# -- hallurun as a user runs it -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """hallurun's process, seen from outside at one moment."""

    t: float  # wall clock, as events.jsonl's `t`
    rss_mb: float
    results: int  # lines in results.jsonl
    cpu_s: float  # user + system so far


@dataclass
class HallurunRun:
    """One finished `hallurun` invocation and what its run directory says about it."""

    cmd: list[str]
    run_dir: Path
    returncode: int
    launched_at: float  # wall clock, as events.jsonl's `t`
    wall_s: float  # process start to exit
    events: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0  # user + system, the whole process
    samples: list[Sample] = field(default_factory=list)
    timed_out: bool = False  # killed by the bench at its timeout (only with `kill_on_timeout`)

    def first(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == name), None)

    def count(self, name: str) -> int:
        return sum(1 for e in self.events if e["event"] == name)

    @property
    def request_phase_s(self) -> float:
        """From the first server_started event (server ready, dispatch begins) to the last write of the results
        or failures: the time spent on requests, without interpreter start, dataset scan, server start or the
        end (HalluLens' generation.jsonl)."""
        started = self.first("server_started")
        if started is None:
            raise RuntimeError(f"{self.run_dir}: no server_started event; see {self.run_dir}.output.log")
        return self.requests_ended - started["t"]

    @property
    def requests_ended(self) -> float:
        return max((self.run_dir / name).stat().st_mtime for name in ("results.jsonl", "failures.jsonl"))

    def cpu_at(self, t: float) -> float:
        """CPU seconds used by wall-clock time `t`, interpolated between samples."""
        before = Sample(self.launched_at, 0.0, 0, 0.0)
        for sample in self.samples:
            if sample.t >= t:
                share = (t - before.t) / (sample.t - before.t) if sample.t > before.t else 1.0
                return before.cpu_s + share * (sample.cpu_s - before.cpu_s)
            before = sample
        return before.cpu_s

    @property
    def request_phase_cpu_s(self) -> float:
        """CPU seconds spent in the request phase (needs `sample_every`)."""
        started = self.first("server_started")
        assert started is not None
        return self.cpu_at(self.requests_ended) - self.cpu_at(started["t"])


def _drain(fd: int, sink: Path) -> None:
    with sink.open("ab") as out:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the last holder of the terminal's other side has gone
                return
            if not data:
                return
            out.write(data)


def _status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14 and 15 of stat(5)


def _count_lines(path: Path, state: list[int]) -> int:
    """Lines in an append-only file, reading only what was appended since the last call (state: [offset, n])."""
    try:
        with path.open("rb") as fh:
            fh.seek(state[0])
            data = fh.read()
    except OSError:
        return state[1]
    complete = data.rfind(b"\n") + 1
    state[0] += complete
    state[1] += data.count(b"\n", 0, complete)
    return state[1]


def run_hallurun(args: Sequence[str], run_dir: Path, *, timeout: float, terminal: bool = True,
                 sample_every: float = 0.0, kill_on_timeout: bool = False) -> HallurunRun:
    """Run `hallurun ARGS` to its end. With `terminal`, its output goes to a pseudo-terminal, so it draws its live
    display as it does for a user; with `sample_every`, its RSS, CPU time and result count are sampled that
    often. Past `timeout` it raises, or with `kill_on_timeout` is killed and returned with `timed_out` set (for
    the tables that report a client that did not finish rather than stop the bench)."""
    cmd = hallurun_cmd(*args)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f"{run_dir.name}.output.log"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HALLURUN_") and k not in {"ENABLE_SERVER_RESTART", "SERVER_RESTART_WAIT_TIME"}}
    env.update(COLUMNS="120", LINES="40", TERM="xterm-256color")
    reader = None
    if terminal:
        leader, follower = pty.openpty()
        out: Any = follower
        reader = threading.Thread(target=_drain, args=(leader, log), daemon=True)
    else:
        out = log.open("ab")
    launched_at = time.time()
    began = time.monotonic()
    # Its own process group (for kill_group) but the bench's session, as every baseline runs: Linux schedules
    # each session as one group (autogroup), so a client in a session of its own would weigh as much as the
    # whole server's session on a shared core, and a bare loop run so met vLLM's slow pace 7 times in 16 against
    # once in 16 for the same loop in the bench's session (docs/benchmarks.md, section 5).
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                            process_group=0)
    if terminal:
        os.close(follower)
        assert reader is not None
        reader.start()
    else:
        out.close()
    samples: list[Sample] = []
    lines = [0, 0]
    exited = os.pidfd_open(proc.pid)  # readable once hallurun has exited
    timed_out = False
    try:
        deadline = began + timeout
        while True:
            # wait4 rather than poll: its rusage holds this process's own peak RSS, which no sampling can miss.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if not timed_out and time.monotonic() > deadline:
                if not kill_on_timeout:
                    raise RuntimeError(f"{shown(cmd)} ran past {timeout}s; see {log}")
                timed_out = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # reaped by wait4 above once the pidfd says it exited
            if sample_every:
                now, rss, cpu = time.time(), _status_kb(proc.pid, "VmRSS"), _cpu_s(proc.pid)
                if rss is not None and cpu is not None:
                    samples.append(Sample(now, rss / 1024, _count_lines(run_dir / "results.jsonl", lines), cpu))
            # Unless sampling, sleep until the exit: a bench that woke 20 times a second during hallurun's runs
            # only would load the shared cores beside one of the clients it compares and not the other.
            select.select([exited], [], [], sample_every or (None if timed_out else
                                                              max(0.0, deadline - time.monotonic())))
        wall = time.monotonic() - began
    finally:
        os.close(exited)
        # hallurun stops its own server; the group kill is for a bench that fails half way.
        kill_group(proc)
        if reader is not None:
            reader.join(timeout=5)
            os.close(leader)
    return HallurunRun(cmd=cmd, run_dir=run_dir, returncode=proc.returncode, launched_at=launched_at, wall_s=wall,
                       events=events(run_dir),
                       peak_rss_mb=usage.ru_maxrss / 1024, cpu_s=usage.ru_utime + usage.ru_stime, samples=samples,
                       timed_out=timed_out)


_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]")


def last_line(text: str, limit: int = 200) -> str | None:
    """The last non-blank line of a client's output, terminal control sequences removed: what it said as it
    stopped (`error: ...`, a traceback's last line)."""
    lines = [line.strip() for line in _CONTROL.sub("", text).replace("\r", "\n").splitlines()]
    found = next((line for line in reversed(lines) if line), None)
    return None if found is None else found[:limit]


def count_wedges(server_log: Path) -> int:
    """Wedges the loud mock announced in a server log: the truth, whatever the client noticed."""
    from bench.loud_mock import WEDGED_LINE

    if not server_log.exists():
        return 0
    # Whole lines only: the mock now also says `mock: wedged (hang-after) at request N` itself, and counting the
    # text anywhere counted each wedge twice (6 wedges for 3 restarts in a quick run).
    return sum(1 for line in server_log.read_bytes().splitlines() if line.strip() == WEDGED_LINE.encode())


def exactly_once(run_dir: Path, ids: Sequence[str]) -> tuple[int, int]:
    """(lost, duplicated) ids over results.jsonl and failures.jsonl together."""
    seen: dict[str, int] = {}
    for name in ("results.jsonl", "failures.jsonl"):
        for record in read_jsonl(run_dir / name):
            seen[str(record["id"])] = seen.get(str(record["id"]), 0) + 1
    lost = sum(1 for i in ids if i not in seen)
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    return lost, duplicated
