"""`hallurun status`: what a run directory says about its run, read without disturbing it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from hallurun.config import Shard
from hallurun.store import manifest, shards
from hallurun.store.checkpoint import FAILURES, RESULTS, read_records
from hallurun.store.events import EVENTS
from hallurun.store.lock import running_pid


def summarize(run_dir: Path) -> dict[str, Any]:
    """Counts of a run: total, done, failed (by reason), restarts, wedges, and whether it is running now. For a
    sharded run, its shards' counts (`shards`), summed; a merged run is finished."""
    found = shards.find(run_dir)
    if found and not (run_dir / manifest.MANIFEST).is_file():
        return _sharded(run_dir, found)
    summary = _one(run_dir)
    if summary["merged"]:
        summary["finished"] = True  # merge writes a run only from finished shards
        summary["shards"] = [_shard(path, shard) for shard, path in found if shard.count == summary["merged"]]
        for key in ("restarts", "wedges", "crashes", "quarantined"):
            summary[key] = sum(part.get(key, 0) for part in summary["shards"])
    return summary


def _sharded(run_dir: Path, found: list[tuple[Shard, Path]]) -> dict[str, Any]:
    """A sharded run not merged yet: each shard of the most common N (missing ones too), and the sums."""
    n = Counter(shard.count for shard, _ in found).most_common(1)[0][0]
    there = {shard.index: path for shard, path in found if shard.count == n}
    parts = [_shard(there[i], Shard(i, n)) if i in there else {"shard": f"{i}/{n}", "missing": True,
                                                               "run_dir": str(run_dir / Shard(i, n).folder)}
             for i in range(n)]
    known = [part for part in parts if "total" in part]
    dataset_count = known[0]["dataset_count"] if known else None
    total = sum(part["total"] for part in known)
    if dataset_count is not None:
        total += sum(Shard(i, n).size(dataset_count) for i in range(n) if "total" not in parts[i])
    done, failed = sum(p["done"] for p in known), sum(p["failed"] for p in known)
    return {
        "run_dir": str(run_dir), "sharded": n, "merged": False,
        "task": known[0]["task"] if known else "?", "model": known[0]["model"] if known else "?",
        "total": total, "done": done, "failed": failed, "pending": max(0, total - done - failed),
        "finished": False, "running_pid": None,
        "failures_by_reason": dict(sum((Counter(p["failures_by_reason"]) for p in known), Counter())),
        "shards": parts, "foreign": [str(path) for shard, path in found if shard.count != n],
        **{key: sum(p[key] for p in known) for key in ("restarts", "wedges", "crashes", "quarantined")},
    }


def _shard(path: Path, shard: Shard) -> dict[str, Any]:
    try:
        return {"shard": str(shard), **_one(path)}
    except (manifest.ManifestError, KeyError, TypeError):
        return {"shard": str(shard), "run_dir": str(path), "unreadable": True}


def _one(run_dir: Path) -> dict[str, Any]:
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
    total = int(saved.get("items", saved["dataset"]["count"]))
    pid = running_pid(run_dir)
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
        "dataset_count": int(saved["dataset"]["count"]),
        "merged": manifest.merged_from(saved) or 0,
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


def _state(summary: dict[str, Any]) -> str:
    if summary.get("missing"):
        return "missing"
    if summary.get("unreadable"):
        return "no readable manifest"
    return ("finished" if summary["finished"] else
            f"running (pid {summary['running_pid']})" if summary["running_pid"] else "stopped")


def describe(summary: dict[str, Any]) -> list[str]:
    """`hallurun status`'s lines for a summary from `summarize`: what the run is doing, its counts, its server's
    trouble and its failures by reason; for a sharded run, a line per shard."""
    if summary.get("sharded"):
        parts = summary["shards"]
        ready = sum(1 for part in parts if part.get("finished"))
        state = (f"sharded over {summary['sharded']}, not merged: {ready} of {len(parts)} shards finished" +
                 (" (merge with `hallurun merge " + summary["run_dir"] + "`)" if ready == len(parts) else ""))
    else:
        state = _state(summary) + (f", merged from {summary['merged']} shards" if summary.get("merged") else "")
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
    for part in summary.get("shards", []):
        counts = "" if "total" not in part else (f"{part['done']}/{part['total']} done, {part['failed']} failed, "
                                                 f"restarts {part['restarts']}; ")
        lines.append(f"  shard {part['shard']}: {counts}{_state(part)} ({part['run_dir']})")
    lines += [f"  not of this run: {path} (another N)" for path in summary.get("foreign", [])]
    return lines
