"""Sections 2 and 3: recovery from wedges, and a poison input, for hallurun and for HalluLens' restart protocol.

Both clients face the same loud mock (`bench/loud_mock.py`), which says in its log each time a fault wedges it, so
wedges are counted on the server's side and restarts beyond one per wedge show up as a storm. hallurun launches
and relaunches its mock itself (`--server mock`); HalluLens' client gets the outside supervisor its setup assumes
(`bench.hallulens.SupervisedMock`). Every duration of both is divided by `scale`: HalluLens' 60 s timeout, 5 s
sleeps and systemd's RestartSec 5 s; hallurun's 30 s stall timeout; and the server's own start (SERVER_START_S, as
a model load would take) through the mock's `startup-delay` fault. The one exception is the restart wait of both
(30 s): a deadline for the server's start, which has a part that does not scale (see `restart_wait`).

A client that stops before it has settled every item (hallurun's exit 3, a crash, the bench's timeout) is reported
as aborted, with its exit code and the reason it gave: its unsettled items are not "lost", since it never claimed
to have finished them (hallurun's run can be resumed). *lost* counts only the items a finished client left out.
"""

from __future__ import annotations

import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.common import (
    MODEL,
    PYTHON,
    REPO,
    count_wedges,
    exactly_once,
    free_port,
    last_line,
    mock_server,
    read_jsonl,
    run_hallurun,
    shown,
    write_dataset,
)
from bench.hallulens import ERROR_PLACEHOLDER, TIMEOUT_PLACEHOLDER, SupervisedMock
from bench.loud_mock import shim_python

SCALE = 10.0
SERVER_START_S = 20.0  # a model reload, as HalluLens' own log shows (~25 s); the mock sleeps SERVER_START_S / scale
LATENCY = 0.05
CONCURRENCY = 64
HALLURUN_STALL_S = 30.0  # hallurun's defaults, before scaling
RESTART_WAIT_S = 30.0  # hallurun's default floor and HalluLens' SERVER_RESTART_WAIT_TIME, before scaling
RESTART_SEC = 5.0  # systemd's RestartSec in HalluLens' recommended unit
# The scaled restart wait is at least this many times the mock's measured start. The start has a part that no
# scale divides (interpreter start and imports: ~0.4 s here), so at ÷20 the mock took 1.4–1.6 s to start against
# a restart wait of 30 / 20 = 1.5 s, and hallurun rightly gave up with exit 3 (issue 13, item 18); the real
# setting has the wait above the start (30 s against a ~20–25 s reload). 3× leaves room for a loaded machine's
# slower starts; hallurun's own default is 2× its first startup.
RESTART_MARGIN = 3.0


def _num(value: float) -> str:
    return f"{value:g}"


def mock_args(scale: float, *faults: str) -> list[str]:
    args = ["--latency", _num(LATENCY), "--fault", f"startup-delay:{_num(SERVER_START_S / scale)}"]
    for fault in faults:
        args += ["--fault", fault]
    return args


def restart_wait(scale: float, measured_start_s: float) -> float:
    """The restart wait both clients get at `scale`: 30 s scaled, but never under RESTART_MARGIN times the
    server's start as measured on this machine, rounded up to a tenth of a second."""
    return math.ceil(max(RESTART_WAIT_S / scale, RESTART_MARGIN * measured_start_s) * 10) / 10


def measure_start(scale: float, work: Path) -> float:
    """Seconds the loud mock takes here from launch to its first healthy answer, with the startup delay of
    `scale`: what a restart really waits for, interpreter start included."""
    began = time.monotonic()
    with mock_server(mock_args(scale), work / "start-measure.server.log"):
        return time.monotonic() - began


@dataclass(frozen=True)
class Timing:
    """The durations a section's runs share."""

    scale: float
    mock_start_s: float  # measured at the start of the section
    restart_wait_s: float

    @classmethod
    def measured(cls, scale: float, work: Path) -> Timing:
        start = measure_start(scale, work)
        return cls(scale, round(start, 2), restart_wait(scale, start))

    def row(self) -> dict[str, Any]:
        return {"scale": self.scale, "mock_start_s": self.mock_start_s, "restart_wait_s": self.restart_wait_s}


@dataclass(frozen=True)
class Ended:
    """How a client's run ended: finished (every item settled, as far as the client claims), or aborted."""

    finished: bool
    exit_code: int | None  # None: killed by the bench at its timeout
    reason: str | None = None  # why it stopped, in its own words (aborted only)
    not_done: int = 0  # items neither returned nor failed when it stopped (aborted only)

    def row(self) -> dict[str, Any]:
        return {"finished": self.finished, "exit_code": self.exit_code, "reason": self.reason,
                "not_done": self.not_done}


@dataclass
class Outcome:
    """One client's run over one dataset, as the tables need it."""

    client: str
    ended: Ended
    wall_s: float | None  # the request phase: from a ready server to the last answer; None if aborted
    wedges: int  # announced by the server
    restarts: int
    lost: int | None  # ids a finished client did not return; None if it aborted
    duplicated: int
    bad_ids: list[str]  # hallurun: failures.jsonl; HalluLens: placeholder generations
    generations: dict[str, str] = field(repr=False)
    reproduce: list[str]
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.ended.finished

    def intact(self, reference: Outcome) -> int | None:
        """Items whose generation is exactly the one the fault-free run gave (None unless both finished)."""
        if not (self.finished and reference.finished):
            return None
        return sum(1 for key, text in reference.generations.items() if self.generations.get(key) == text)


def hallurun_side(work: Path, name: str, dataset: Path, ids: list[str], faults: tuple[str, ...], timing: Timing,
                  timeout: float) -> Outcome:
    """hallurun as a user runs it, with its two timeouts scaled; it launches and relaunches the mock itself."""
    run_dir = work / name
    options = ["--task", str(dataset), "--model", MODEL, "--server", "mock", "--concurrency", str(CONCURRENCY),
               "--stall-timeout", _num(HALLURUN_STALL_S / timing.scale),
               "--restart-wait", _num(timing.restart_wait_s)]
    server = ["--", *mock_args(timing.scale, *faults)]
    run = run_hallurun(["inference", *options, "--run-dir", str(run_dir),
                        "--server-python", str(shim_python(work)), *server], run_dir, timeout=timeout,
                       kill_on_timeout=True)
    results = read_jsonl(run_dir / "results.jsonl")
    failures = read_jsonl(run_dir / "failures.jsonl")
    missing, duplicated = exactly_once(run_dir, ids)
    # Finished means hallurun says so (run_finished: every item in results or failures), not just an exit code.
    finished = run.first("run_finished") is not None and run.returncode in (0, 1) and not run.timed_out
    if finished:
        ended = Ended(True, run.returncode)
    else:
        aborted = run.first("run_aborted")
        output = run_dir.parent / f"{run_dir.name}.output.log"
        reason = (f"killed by the bench after {timeout:g} s" if run.timed_out else
                  str(aborted["reason"]) if aborted is not None else
                  last_line(output.read_text(errors="replace")) if output.exists() else None)
        ended = Ended(False, None if run.timed_out else run.returncode, reason, missing)
    quarantined = run.first("item_quarantined")
    return Outcome(
        client="hallurun", ended=ended, wall_s=run.request_phase_s if finished else None,
        wedges=count_wedges(run_dir / "server.log"), restarts=run.count("server_restarted"),
        lost=missing if finished else None, duplicated=duplicated,
        bad_ids=[str(f["id"]) for f in failures], generations={str(r["id"]): r["generation"] for r in results},
        reproduce=[shown(["hallurun", "inference", *options, *server], work)],
        detail={"exit_code": run.returncode, "hangs_detected": run.count("hang_detected"),
                "failure_reasons": sorted({str(f["reason"]) for f in failures}),
                "quarantined": [e["id"] for e in run.events if e["event"] == "item_quarantined"],
                # The quarantine is decided inside the recovery from a wedge, before that wedge's restart.
                "wedges_until_quarantine": None if quarantined is None else
                sum(1 for e in run.events if e["event"] == "hang_detected" and e["t"] <= quarantined["t"])},
    )


def hallulens_side(work: Path, name: str, dataset: Path, ids: list[str], faults: tuple[str, ...], timing: Timing,
                   timeout: float) -> Outcome:
    """HalluLens' client on 64 threads against a mock that an outside loop relaunches whenever it exits."""
    out = work / f"{name}.generations.jsonl"
    scale = timing.scale
    args = mock_args(scale, *faults)
    port = free_port()
    with SupervisedMock(args, port, work / f"{name}.server.log", RESTART_SEC / scale) as server:
        cmd = [PYTHON, "-m", "bench.hallulens", "--url", server.url, "--dataset", str(dataset), "--out", str(out),
               "--scale", _num(scale), "--restart-wait", _num(timing.restart_wait_s)]
        code: int | None
        try:
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=timeout)
            code, printed, said = done.returncode, done.stdout, done.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired:
            code, printed, said = None, b"", ""
        restarts = server.restarts
    finished = code == 0
    counters: dict[str, Any] = orjson.loads(printed) if finished else {}
    rows = read_jsonl(out) if finished else []  # upstream writes at the end: an aborted run saved nothing
    generations = {str(r["id"]): r["generation"] for r in rows}
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r["id"])] = counts.get(str(r["id"]), 0) + 1
    missing = sum(1 for i in ids if i not in counts)
    placeholders = [k for k, g in generations.items() if g.startswith((TIMEOUT_PLACEHOLDER, ERROR_PLACEHOLDER))]
    supervisor = (f"while true; do hallurun mock-server --port {port} --model {MODEL} {' '.join(args)}; "
                  f"sleep {_num(RESTART_SEC / scale)}; done &")
    ended = (Ended(True, 0) if finished else
             Ended(False, code, f"killed by the bench after {timeout:g} s" if code is None else last_line(said),
                   missing))
    return Outcome(
        client="HalluLens protocol", ended=ended, wall_s=counters.get("elapsed_s"),
        wedges=count_wedges(work / f"{name}.server.log"), restarts=restarts,
        lost=missing if finished else None, duplicated=sum(n - 1 for n in counts.values() if n > 1),
        bad_ids=placeholders, generations=generations,
        reproduce=[supervisor, shown(cmd, work)],
        detail={k: v for k, v in counters.items() if k != "elapsed_s"} | {"placeholder_ids": placeholders[:5]},
    )


SIDES = (hallurun_side, hallulens_side)


# -- section 2 ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecoveryPlan:
    items: int
    wedge_every: int
    scale: float = SCALE
    timeout_s: float = 600.0


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def recovery(plan: RecoveryPlan, work: Path) -> list[dict[str, Any]]:
    """The same dataset fault-free and with `hang-after:K`, for each client."""
    dataset = work / "recovery.jsonl"
    ids = write_dataset(dataset, plan.items)
    timing = Timing.measured(plan.scale, work)
    rows = []
    for side in SIDES:
        clean = side(work, f"{side.__name__}-clean", dataset, ids, (), timing, plan.timeout_s)
        faulty = side(work, f"{side.__name__}-wedges", dataset, ids, (f"hang-after:{plan.wedge_every}",),
                      timing, plan.timeout_s)
        wedges = max(faulty.wedges, 1)
        extra = None if faulty.wall_s is None or clean.wall_s is None else faulty.wall_s - clean.wall_s
        rows.append({
            "client": faulty.client, "items": plan.items, "wedge_every": plan.wedge_every, **timing.row(),
            "clean_ended": clean.ended.row(), "ended": faulty.ended.row(),
            "clean_s": clean.wall_s, "faulty_s": faulty.wall_s, "slowdown": _ratio(faulty.wall_s, clean.wall_s),
            "wedges": faulty.wedges, "lost_per_wedge_s": _ratio(extra, wedges),
            "restarts": faulty.restarts, "restarts_per_wedge": faulty.restarts / wedges,
            "lost": faulty.lost, "duplicated": faulty.duplicated, "placeholders_or_failures": len(faulty.bad_ids),
            "intact": faulty.intact(clean), "finished": faulty.finished,
            "reproduce": faulty.reproduce, "detail": faulty.detail,
        })
    return rows


# -- section 3 ------------------------------------------------------------------------------------------------

POISON = "POISON-7f3a"


@dataclass(frozen=True)
class PoisonPlan:
    items: int
    poison_at: int
    scale: float = SCALE
    timeout_s: float = 600.0


def poison(plan: PoisonPlan, work: Path) -> list[dict[str, Any]]:
    """One prompt that wedges the server whenever it is in flight (`poison:TEXT`)."""
    dataset = work / "poison.jsonl"
    ids = write_dataset(dataset, plan.items, poison=(plan.poison_at, POISON))
    poison_id = ids[plan.poison_at]
    timing = Timing.measured(plan.scale, work)
    rows = []
    for side in SIDES:
        run = side(work, f"{side.__name__}-poison", dataset, ids, (f"poison:{POISON}",), timing, plan.timeout_s)
        if run.client == "hallurun":
            isolated = poison_id in run.detail["quarantined"]
            wedges_before = run.detail["wedges_until_quarantine"] if isolated else None
        else:
            isolated, wedges_before = False, None  # the protocol has no notion of a bad input
        rows.append({
            "client": run.client, "items": plan.items, **timing.row(), "ended": run.ended.row(),
            "finished": run.finished, "wall_s": run.wall_s, "wedges": run.wedges, "restarts": run.restarts,
            "isolated": isolated, "wedges_until_isolated": wedges_before,
            "poison_generation": run.generations.get(poison_id),
            "others_placeholders_or_failures": sum(1 for i in run.bad_ids if i != poison_id),
            "lost": run.lost, "duplicated": run.duplicated, "reproduce": run.reproduce, "detail": run.detail,
        })
    return rows
