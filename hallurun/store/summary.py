"""`hallurun status`: what a run directory says about its run, read without disturbing it."""

from __future__ import annotations

import fcntl
import os
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from hallurun.store import manifest
from hallurun.store.checkpoint import FAILURES, RESULTS, read_records
from hallurun.store.events import EVENTS
from hallurun.store.lock import LOCK


def _running_pid(run_dir: Path) -> int | None:
    """The pid holding the run's lock, or None if no hallurun is running it."""
    path = run_dir / LOCK
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return int(orjson.loads(os.pread(fd, 4096, 0))["pid"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return -1  # held, by a holder that has not written its pid yet
    finally:
        os.close(fd)
    return None


def summarize(run_dir: Path) -> dict[str, Any]:
    """Counts of a run: total, done, failed (by reason), restarts, wedges, and whether it is running now."""
    saved = manifest.read(run_dir)
    done = {str(r["id"]) for r in read_records(run_dir / RESULTS) if "id" in r}
    failures = {str(r["id"]): r.get("reason", "") for r in read_records(run_dir / FAILURES) if "id" in r}
    failed = {k: v for k, v in failures.items() if k not in done}
    events: Counter[str] = Counter()
    replicas: dict[int, dict[str, Any]] = {}
    last = None
    for record in read_records(run_dir / EVENTS):
        last = record
        events[str(record.get("event"))] += 1
        index = record.get("replica")
        if isinstance(index, int):
            _count_replica(replicas.setdefault(index, _replica_counts(index)), record)
    total = int(saved["dataset"]["count"])
    pid = _running_pid(run_dir)
    return {
        "run_dir": str(run_dir),
        "task": saved["config"]["task"],
        "model": saved["config"]["model"],
        "total": total,
        "done": len(done),
        "failed": len(failed),
        "pending": max(0, total - len(done) - len(failed)),
        "failures_by_reason": dict(Counter(failed.values())),
        "restarts": events["server_restarted"],
        "wedges": events["hang_detected"],
        "crashes": events["server_exited"],
        "quarantined": events["item_quarantined"],
        "finished": last is not None and last.get("event") == "run_finished",
        "running_pid": pid,
        "last_event": last,
        "replicas": [replicas[i] for i in sorted(replicas)] if len(replicas) > 1 else [],
    }


def _replica_counts(index: int) -> dict[str, Any]:
    return {"replica": index, "restarts": 0, "wedges": 0, "crashes": 0, "retired": None, "window_s": None}


def _count_replica(counts: dict[str, Any], record: dict[str, Any]) -> None:
    event = record.get("event")
    if event == "server_restarted":
        counts["restarts"] += 1
    elif event == "hang_detected":
        counts["wedges"] += 1
        counts["window_s"] = record.get("window_s", counts["window_s"])
    elif event == "server_exited":
        counts["crashes"] += 1
    elif event == "replica_retired":
        counts["retired"] = record.get("reason") or "retired"
    elif event == "server_started":
        counts["retired"] = None  # a later session started it again


def describe(summary: dict[str, Any]) -> list[str]:
    """`hallurun status`'s lines for a summary from `summarize`: what the run is doing, its counts, its server's
    trouble and its failures by reason."""
    state = ("finished" if summary["finished"] else
             f"running (pid {summary['running_pid']})" if summary["running_pid"] else "stopped")
    lines = [
        f"{summary['run_dir']}: {summary['task']} on {summary['model']} — {state}",
        f"  {summary['done']}/{summary['total']} done, {summary['failed']} failed, {summary['pending']} pending",
        f"  restarts {summary['restarts']} (wedges {summary['wedges']}, crashes {summary['crashes']}), "
        f"quarantined {summary['quarantined']}",
    ]
    lines += [f"  failed: {reason}: {count}" for reason, count in sorted(summary["failures_by_reason"].items())]
    for r in summary.get("replicas", []):
        fate = f"retired: {r['retired']}" if r["retired"] else "serving or stopped"
        window = "" if r["window_s"] is None else f", last wedge window {r['window_s']} s"
        lines.append(f"  replica {r['replica']}: restarts {r['restarts']} (wedges {r['wedges']}, crashes "
                     f"{r['crashes']}){window}; {fate}")
    return lines
