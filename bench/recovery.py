"""Sections 2 and 3: recovery from wedges, and a poison input, for hallurun and for HalluLens' restart protocol.

Both clients face the same loud mock (`bench/loud_mock.py`), which says in its log each time a fault wedges it, so
wedges are counted on the server's side and restarts beyond one per wedge show up as a storm. hallurun launches
and relaunches its mock itself (`--server mock`); HalluLens' client gets the outside supervisor its setup assumes
(`bench.hallulens.SupervisedMock`). Every duration of both is divided by `scale`: HalluLens' 60 s timeout, 30 s
restart wait, 5 s sleeps and systemd's RestartSec 5 s; hallurun's 30 s stall timeout and 30 s restart wait; and
the server's own start (SERVER_START_S, as a model load would take) through the mock's `startup-delay` fault.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    MODEL,
    PYTHON,
    count_wedges,
    exactly_once,
    free_port,
    read_jsonl,
    run_hallurun,
    run_json,
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
HALLURUN_RESTART_WAIT_S = 30.0
RESTART_SEC = 5.0  # systemd's RestartSec in HalluLens' recommended unit


def _num(value: float) -> str:
    return f"{value:g}"


def mock_args(scale: float, *faults: str) -> list[str]:
    args = ["--latency", _num(LATENCY), "--fault", f"startup-delay:{_num(SERVER_START_S / scale)}"]
    for fault in faults:
        args += ["--fault", fault]
    return args


@dataclass
class Outcome:
    """One client's run over one dataset, as the tables need it."""

    client: str
    finished: bool
    wall_s: float  # the request phase: from a ready server to the last answer
    wedges: int  # announced by the server
    restarts: int
    lost: int
    duplicated: int
    bad_ids: list[str]  # hallurun: failures.jsonl; HalluLens: placeholder generations
    generations: dict[str, str] = field(repr=False)
    reproduce: list[str]
    detail: dict[str, Any] = field(default_factory=dict)

    def intact(self, reference: Outcome) -> int:
        """Items whose generation is exactly the one the fault-free run gave."""
        return sum(1 for key, text in reference.generations.items() if self.generations.get(key) == text)


def hallurun_side(work: Path, name: str, dataset: Path, ids: list[str], faults: tuple[str, ...], scale: float,
                  timeout: float) -> Outcome:
    """hallurun as a user runs it, with its two timeouts scaled; it launches and relaunches the mock itself."""
    run_dir = work / name
    options = ["--task", str(dataset), "--model", MODEL, "--server", "mock", "--concurrency", str(CONCURRENCY),
               "--stall-timeout", _num(HALLURUN_STALL_S / scale),
               "--restart-wait", _num(HALLURUN_RESTART_WAIT_S / scale)]
    server = ["--", *mock_args(scale, *faults)]
    run = run_hallurun(["inference", *options, "--run-dir", str(run_dir),
                        "--server-python", str(shim_python(work)), *server], run_dir, timeout=timeout)
    results = read_jsonl(run_dir / "results.jsonl")
    failures = read_jsonl(run_dir / "failures.jsonl")
    lost, duplicated = exactly_once(run_dir, ids)
    quarantined = run.first("item_quarantined")
    return Outcome(
        client="hallurun", finished=run.returncode in (0, 1), wall_s=run.request_phase_s,
        wedges=count_wedges(run_dir / "server.log"), restarts=run.count("server_restarted"), lost=lost,
        duplicated=duplicated,
        bad_ids=[str(f["id"]) for f in failures], generations={str(r["id"]): r["generation"] for r in results},
        reproduce=[shown(["hallurun", "inference", *options, *server], work)],
        detail={"exit_code": run.returncode, "hangs_detected": run.count("hang_detected"),
                "failure_reasons": sorted({str(f["reason"]) for f in failures}),
                "quarantined": [e["id"] for e in run.events if e["event"] == "item_quarantined"],
                # The quarantine is decided inside the recovery from a wedge, before that wedge's restart.
                "wedges_until_quarantine": None if quarantined is None else
                sum(1 for e in run.events if e["event"] == "hang_detected" and e["t"] <= quarantined["t"])},
    )


def hallulens_side(work: Path, name: str, dataset: Path, ids: list[str], faults: tuple[str, ...], scale: float,
                   timeout: float) -> Outcome:
    """HalluLens' client on 64 threads against a mock that an outside loop relaunches whenever it exits."""
    out = work / f"{name}.generations.jsonl"
    args = mock_args(scale, *faults)
    port = free_port()
    with SupervisedMock(args, port, work / f"{name}.server.log", RESTART_SEC / scale) as server:
        cmd = [PYTHON, "-m", "bench.hallulens", "--url", server.url, "--dataset", str(dataset), "--out", str(out),
               "--scale", _num(scale)]
        try:
            counters = run_json(cmd, timeout)
            finished = True
        except subprocess.TimeoutExpired:
            counters, finished = {"elapsed_s": float("nan")}, False  # upstream writes at the end: nothing saved
        restarts = server.restarts
    rows = read_jsonl(out) if finished else []
    generations = {str(r["id"]): r["generation"] for r in rows}
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r["id"])] = counts.get(str(r["id"]), 0) + 1
    placeholders = [k for k, g in generations.items() if g.startswith((TIMEOUT_PLACEHOLDER, ERROR_PLACEHOLDER))]
    supervisor = (f"while true; do hallurun mock-server --port {port} --model {MODEL} {' '.join(args)}; "
                  f"sleep {_num(RESTART_SEC / scale)}; done &")
    return Outcome(
        client="HalluLens protocol", finished=finished, wall_s=counters["elapsed_s"],
        wedges=count_wedges(work / f"{name}.server.log"), restarts=restarts,
        lost=sum(1 for i in ids if i not in counts), duplicated=sum(n - 1 for n in counts.values() if n > 1),
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


def recovery(plan: RecoveryPlan, work: Path) -> list[dict[str, Any]]:
    """The same dataset fault-free and with `hang-after:K`, for each client."""
    dataset = work / "recovery.jsonl"
    ids = write_dataset(dataset, plan.items)
    rows = []
    for side in SIDES:
        clean = side(work, f"{side.__name__}-clean", dataset, ids, (), plan.scale, plan.timeout_s)
        faulty = side(work, f"{side.__name__}-wedges", dataset, ids, (f"hang-after:{plan.wedge_every}",),
                      plan.scale, plan.timeout_s)
        wedges = max(faulty.wedges, 1)
        rows.append({
            "client": faulty.client, "items": plan.items, "wedge_every": plan.wedge_every, "scale": plan.scale,
            "clean_s": clean.wall_s, "faulty_s": faulty.wall_s, "slowdown": faulty.wall_s / clean.wall_s,
            "wedges": faulty.wedges, "lost_per_wedge_s": (faulty.wall_s - clean.wall_s) / wedges,
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
    rows = []
    for side in SIDES:
        run = side(work, f"{side.__name__}-poison", dataset, ids, (f"poison:{POISON}",), plan.scale, plan.timeout_s)
        if run.client == "hallurun":
            isolated = poison_id in run.detail["quarantined"]
            wedges_before = run.detail["wedges_until_quarantine"] if isolated else None
        else:
            isolated, wedges_before = False, None  # the protocol has no notion of a bad input
        rows.append({
            "client": run.client, "items": plan.items, "scale": plan.scale, "finished": run.finished,
            "wall_s": run.wall_s, "wedges": run.wedges, "restarts": run.restarts, "isolated": isolated,
            "wedges_until_isolated": wedges_before, "poison_generation": run.generations.get(poison_id),
            "others_placeholders_or_failures": sum(1 for i in run.bad_ids if i != poison_id),
            "lost": run.lost, "duplicated": run.duplicated, "reproduce": run.reproduce, "detail": run.detail,
        })
    return rows
