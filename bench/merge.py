"""Section 7: merge. `hallurun merge` of a sharded run: a synthetic run of M results over 16 shards, made as
hallurun makes them (each shard's manifest written by the library; results in completion order, with every field
the scheduler writes, and a few failures), merged by the real command in a process of its own.

Its peak memory is wait4's `ru_maxrss` for that process, exact (taken by a bare launcher: see LAUNCHER),
beside a bare `hallurun --version`'s as the floor. The merge keeps one 8-byte offset and one 8-byte dataset digest
per item and copies the answers line by line, so from one M to the next its peak should grow by tens of bytes per
item, far less than the ~0.7 KB of each result line; `growth_bytes_per_item` says what it did. Its output is
checked too: every result line the very bytes a shard holds, in dataset order, each id once over results and
failures, and generation.jsonl one line per result with its answer.

The shards' files are fresh in the page cache (as after a run's last shard): the time is the merge's, not the
disk's.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.common import MODEL, PYTHON, REPO, hallurun_cmd, kill_group, median, record, shown

SHARDS = 16
TASK = "precisewikiqa"
FAIL_EVERY = 997  # positions p with p % FAIL_EVERY == FAIL_AT failed (about 0.1%); the others have an answer
FAIL_AT = 3
DONE_AT = 1_760_000_000.0
# Answers are cut from this text at a place and of a length that differ from item to item: 330-470 characters.
TEXT = ("The old stone bridge of the city was first known in the year of the long song, when the people of the "
        "north built it across the river; the chronicles name its builder, a mason of the valley, and its first "
        "toll, and it has carried the north road ever since, through two floods and a siege. ") * 4
CHUNK = 8192  # lines per write


@dataclass(frozen=True)
class MergePlan:
    sizes: tuple[int, ...]  # M: results of one run, each merged in a run of its own
    shards: int = SHARDS
    timeout_s: float = 900.0


def failed(position: int) -> bool:
    return position % FAIL_EVERY == FAIL_AT


def generation(position: int) -> str:
    """A ~400-character answer (330-470), different for every item."""
    start = position * 7919 % 280
    return TEXT[start:start + 330 + position % 141]


def result_line(position: int) -> bytes:
    """Item `position`'s line in its shard's results.jsonl, with the fields the scheduler writes
    (hallurun.core.scheduler `_record_result`), in its order."""
    item = record(position)
    text = generation(position)
    return orjson.dumps({
        "id": item["id"], **item, "generation": text, "finish_reason": "stop" if position % 50 else "length",
        "prompt_tokens": 21 + position % 7, "completion_tokens": len(text) // 4,
        "latency_s": round(0.5 + (position * 7919 % 1000) / 250, 4), "attempts": 1 + (position % 211 == 0),
        "done_at": round(DONE_AT + (position * 7919 % 3_600_000) / 1000, 3), "dataset_index": position,
    }) + b"\n"


def failure_line(position: int) -> bytes:
    return orjson.dumps({"id": record(position)["id"], "reason": "request_error",
                         "error": "HTTP 500: the server said no, four times", "attempts": 4,
                         "dataset_index": position}) + b"\n"


def _write_chunked(path: Path, lines: Iterator[bytes]) -> int:
    """Write `lines` in big writes; the bytes written."""
    size = 0
    with path.open("wb", buffering=1 << 20) as fh:
        chunk: list[bytes] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) == CHUNK:
                block = b"".join(chunk)
                fh.write(block)
                size += len(block)
                chunk.clear()
        block = b"".join(chunk)
        fh.write(block)
        size += len(block)
    return size


def build_run(run_dir: Path, dataset: Path, items: int, shards: int) -> dict[str, Any]:
    """The dataset and a finished sharded run of it in `run_dir`, as `hallurun inference --shard I/N` leaves it."""
    from hallurun.config import Shard, build
    from hallurun.store import manifest
    from hallurun.store.dataset import scan

    began = time.monotonic()
    dataset_bytes = _write_chunked(dataset, (orjson.dumps(record(i)) + b"\n" for i in range(items)))
    info = scan(dataset)
    results_bytes = failures = 0
    for index in range(shards):
        shard = Shard(index, shards)
        folder = run_dir / shard.folder
        folder.mkdir(parents=True)
        config = build(task=TASK, dataset=dataset, model=MODEL, run_dir=folder, server="mock", shard=shard)
        manifest.write(config, info)
        rng = random.Random(index)
        answered = [p for p in range(index, items, shards) if not failed(p)]
        lost = [p for p in range(index, items, shards) if failed(p)]
        rng.shuffle(answered)  # completion order, not dataset order
        rng.shuffle(lost)
        results_bytes += _write_chunked(folder / "results.jsonl", map(result_line, answered))
        _write_chunked(folder / "failures.jsonl", map(failure_line, lost))
        failures += len(lost)
        (folder / "events.jsonl").write_bytes(orjson.dumps({"t": DONE_AT + 3600, "event": "run_finished"}) + b"\n")
    os.sync()  # so that the merge is not timed against the writeback of what was just written
    return {"dataset_mb": dataset_bytes / 2**20, "results_on_disk_mb": results_bytes / 2**20,
            "answer_bytes_per_item": results_bytes / (items - failures), "failures": failures,
            "build_s": time.monotonic() - began}


# Runs the measured command and reports its exit code, wait4's peak RSS (KiB) and wall time. Not Popen and wait4
# from the bench itself: Linux starts a child's ru_maxrss at the high-water RSS of the memory it was spawned from
# (exec records the old mm's peak in it; with vfork that mm is the parent's), so a child of the bench reads at
# least the bench's own peak (measured here: `hallurun --version`, 16 MB on its own, read 311 MB from a parent that
# had touched 300 MB, 45 MB from bench.run). This launcher is a bare interpreter, below any hallurun command.
LAUNCHER = """import os, sys, time
began = time.monotonic()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, 2, 1)])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, time.monotonic() - began)
"""


def timed(cmd: list[str], log: Path, timeout: float) -> tuple[int, float, float, str]:
    """(exit code, wall seconds, peak RSS MB from wait4, output) of `cmd` run to its end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HALLURUN_")}
    with log.open("wb") as out:
        # The launcher's stdout is its report; the command's stdout and stderr go to the log.
        proc = subprocess.Popen([PYTHON, "-c", LAUNCHER, *cmd], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=out, process_group=0)
        try:
            report, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise RuntimeError(f"{shown(cmd)} ran past {timeout}s; see {log}") from None
    said = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"the launcher of {shown(cmd)} exited {proc.returncode}: {said.strip()[-500:]}")
    code, maxrss_kib, wall = report.split()
    return int(code), float(wall), int(maxrss_kib) / 1024, said


def bare_rss_mb(work: Path) -> float:
    """Peak RSS of `hallurun --version`: the interpreter, click and hallurun's imports, and nothing else."""
    return median([timed(hallurun_cmd("--version"), work / "version.log", 60)[2] for _ in range(3)])


def verify(run_dir: Path, items: int) -> dict[str, Any]:
    """The merged run against what the shards hold, streamed: each result line byte for byte, dataset order,
    each id once over results and failures, generation.jsonl one line per result with its answer."""
    seen = bytearray(items)  # times each position was settled (results and failures)
    stats = {"lost": 0, "duplicated": 0, "out_of_order": 0, "altered": 0, "bad_generation": 0}

    def positions(name: str) -> Iterator[tuple[int, bytes]]:
        last = -1
        with (run_dir / name).open("rb", buffering=1 << 20) as fh:
            for raw in fh:
                position = int(orjson.loads(raw)["id"][2:])
                if position <= last:
                    stats["out_of_order"] += 1
                last = position
                if seen[position] < 255:
                    seen[position] += 1
                yield position, raw

    results = failures = generations = 0
    for position, raw in positions("results.jsonl"):
        results += 1
        stats["altered"] += raw != result_line(position)
    for position, raw in positions("failures.jsonl"):
        failures += 1
        stats["altered"] += raw != failure_line(position)
    with (run_dir / "generation.jsonl").open("rb", buffering=1 << 20) as fh:
        expected = (p for p in range(items) if not failed(p))
        for raw in fh:
            line, position = orjson.loads(raw), next(expected, None)
            generations += 1
            stats["bad_generation"] += (position is None or line["id"] != record(position)["id"]
                                        or line["generation"] != generation(position))
    stats["lost"] = seen.count(0)
    stats["duplicated"] = sum(n - 1 for n in seen if n > 1)
    saved = orjson.loads((run_dir / "manifest.json").read_bytes())
    expected_failures = sum(1 for p in range(FAIL_AT, items, FAIL_EVERY))
    ok = (not any(stats.values()) and results == items - expected_failures and failures == expected_failures
          and generations == results and saved["merged"]["results"] == results
          and saved["merged"]["failures"] == failures and saved.get("config", {}).get("shard") is None)
    return {"merged_results": results, "merged_failures": failures, "generation_lines": generations, **stats,
            "verified": ok}


def merge_run(plan: MergePlan, items: int, work: Path) -> dict[str, Any]:
    folder = work / f"merge-{items}"
    run_dir = folder / "run"
    folder.mkdir()
    try:
        built = build_run(run_dir, folder / "dataset.jsonl", items, plan.shards)
        cmd = hallurun_cmd("merge", str(run_dir))
        code, wall, peak, said = timed(cmd, folder / "merge.log", plan.timeout_s)
        if code != 0:
            raise RuntimeError(f"{shown(cmd, work)} exited {code}: {said.strip()[-500:]}")
        own = re.search(r"\(in ([0-9.]+) s\)", said)
        checked = verify(run_dir, items)
        if not checked["verified"]:
            raise RuntimeError(f"{shown(cmd, work)}: the merged run is not the shards' ({checked})")
        return {"items": items, "shards": plan.shards, **built, "wall_s": wall,
                "merge_s": float(own[1]) if own else None, "results_per_s": checked["merged_results"] / wall,
                "us_per_item": wall / items * 1e6, "peak_rss_mb": peak, **checked,
                "reproduce": shown(cmd, work)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def merge(plan: MergePlan, work: Path) -> list[dict[str, Any]]:
    floor = bare_rss_mb(work)
    rows: list[dict[str, Any]] = []
    for items in sorted(plan.sizes):
        row = merge_run(plan, items, work)
        row["bare_rss_mb"] = floor
        row["over_bare_mb"] = row["peak_rss_mb"] - floor
        row["over_bare_bytes_per_item"] = row["over_bare_mb"] * 2**20 / items
        if rows:  # against the next smaller run: what one more item costs
            smaller = rows[-1]
            more = items - smaller["items"]
            row["growth_bytes_per_item"] = (row["peak_rss_mb"] - smaller["peak_rss_mb"]) * 2**20 / more
            row["time_ratio"] = row["wall_s"] / smaller["wall_s"]
            row["items_ratio"] = items / smaller["items"]
        rows.append(row)
    return rows
