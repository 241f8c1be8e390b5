"""`make bench` / `make bench-quick`: every section, a table each, and `bench/results.json`.

    python -m bench.run [--quick] [--section overhead|recovery|poison|scale|engine|replicas|merge|sweep ...]
                        [--out FILE]

Figures are ratios of things measured in the same run on the same machine (2 shared cores here), so compare rows
of one run, not runs of different days. `--keep` leaves the work folder (datasets, run directories, server logs).
The file named by `--out` is merged into, not replaced: the sections run now replace theirs, the others keep
their last figures, and `section_runs` says when and how each section was last run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from bench.common import REPO
from bench.engine import EnginePlan, engine
from bench.merge import MergePlan, merge
from bench.overhead import OverheadPlan, overhead
from bench.recovery import PoisonPlan, RecoveryPlan, poison, recovery
from bench.replicas import MIXED, SHORT, ReplicasPlan, replicas
from bench.report import print_tables
from bench.scale import ScalePlan, scale
from bench.sweep import SweepPlan, sweep

Section = Callable[[Path], list[dict[str, Any]]]

# The wedge runs' lengths obey bench.replicas' sizing: the wedge after the window's 10 s warm-up, the relaunched
# replica back before the end and short of its hang-after count again.
QUICK_REPLICAS = ReplicasPlan(scaling_s=6.0, cold_start_s=5.0, wedge_at_s=12.0,
                              wedge_run_s=((1, 18.0), (2, 22.0), (4, 24.0)), engine_items=0, judge_cold_start_s=5.0,
                              bursts=(replace(MIXED, items=4_000, concurrency=96), replace(SHORT, items=5_000)))

# Sized so that `make bench` takes about 24 minutes here (the replicas section ~8.5 of them) and `make bench-quick`
# about 5 (replicas ~2).
FULL: dict[str, Section] = {
    "overhead": lambda work: overhead(OverheadPlan(items=20_000, seconds=4, upstream_items=300, reps=3), work),
    "recovery": lambda work: recovery(RecoveryPlan(items=2_000, wedge_every=500), work),
    "poison": lambda work: poison(PoisonPlan(items=600, poison_at=200), work),
    "scale": lambda work: scale(ScalePlan(items=200_000, resume_lines=1_000_000), work),
    "engine": lambda work: engine(EnginePlan(items=1000), work),
    "replicas": lambda work: replicas(ReplicasPlan(), work),
    "merge": lambda work: merge(MergePlan(sizes=(100_000, 1_000_000)), work),
    "sweep": lambda work: sweep(SweepPlan(models=3, limit=20), work),
}
QUICK: dict[str, Section] = {
    "overhead": lambda work: overhead(OverheadPlan(items=5_000, seconds=1.5, upstream_items=120, reps=2), work),
    # Every timeout divided by 20 rather than 10: HalluLens' protocol waits out its timeouts, which set the pace.
    # Not the restart wait: it stays above the mock's start as measured here (bench.recovery.restart_wait).
    "recovery": lambda work: recovery(RecoveryPlan(items=500, wedge_every=300, scale=20), work),
    "poison": lambda work: poison(PoisonPlan(items=150, poison_at=70, scale=20), work),
    "scale": lambda work: scale(ScalePlan(items=20_000, resume_lines=100_000), work),
    "engine": lambda work: engine(EnginePlan(items=200, reps=1), work),  # only with --section engine: see QUICK_SKIPS
    # Shorter runs and cold starts, and without its vLLM part (four vLLM cold starts), even with --section.
    "replicas": lambda work: replicas(QUICK_REPLICAS, work),
    "merge": lambda work: merge(MergePlan(sizes=(10_000, 100_000)), work),
    "sweep": lambda work: sweep(SweepPlan(models=2, limit=8), work),
}
# Left out of a plain `--quick` run (two cold starts of real vLLM take over a minute here); `--quick --section
# engine` runs it small.
QUICK_SKIPS = {"engine": "engine: skipped in --quick (two vLLM cold starts); run `python -m bench.run --section "
                         "engine` for it, or `--quick --section engine` for a small version"}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    versions = {name: metadata.version(name) for name in ("hallurun", "aiohttp", "openai", "orjson")}
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], **versions}


def merged(out: Path, results: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    """`results` laid over what `out` already holds: other sections keep their figures. A run of chosen sections
    (`partial`) keeps the file's own run-wide fields (command, machine, duration of the full run)."""
    if not out.exists():
        return results
    old = orjson.loads(out.read_bytes())
    combined = {**results, **old} if partial else dict(results)  # a file this partial run began lacks some
    for key in ("sections", "section_s", "section_runs"):
        combined[key] = {**old.get(key, {}), **results.get(key, {})}
    return combined


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run of every section (about 5 minutes)")
    parser.add_argument("--section", action="append", choices=list(FULL), help="run only this section (repeatable)")
    parser.add_argument("--out", type=Path, help="[default: bench/results.json, or bench/results-quick.json]")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and say where it is")
    args = parser.parse_args(argv)
    plans = QUICK if args.quick else FULL
    out = args.out or REPO / "bench" / ("results-quick.json" if args.quick else "results.json")
    chosen = args.section or [name for name in plans if not (args.quick and name in QUICK_SKIPS)]
    console = Console() if sys.stdout.isatty() else Console(width=150)  # a log file has room for the tables
    work = Path(tempfile.mkdtemp(prefix="hallurun-bench-"))
    command = "python -m bench.run" + (" --quick" if args.quick else "") + "".join(
        f" --section {name}" for name in args.section or [])
    started = datetime.now(UTC).isoformat(timespec="seconds")
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "command": command, "started": started,
                               "machine": machine(), "sections": {}, "section_s": {}, "section_runs": {}}
    began = time.monotonic()
    if not args.section and args.quick:
        for note in QUICK_SKIPS.values():
            console.print(note, highlight=False)
    try:
        for name in chosen:
            console.rule(f"[bold]{name}")
            section_began = time.monotonic()
            results["sections"][name] = plans[name](work)
            results["section_s"][name] = round(time.monotonic() - section_began, 1)
            results["section_runs"][name] = {"command": command, "started": started,
                                             "machine": results["machine"]}
            print_tables({"sections": {name: results["sections"][name]}}, console)
            # Saved section by section, so that a later section's failure does not lose the earlier ones.
            out.write_bytes(orjson.dumps(merged(out, results, partial=True), option=orjson.OPT_INDENT_2) + b"\n")
    finally:
        if args.keep:
            console.print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    took = results["duration_s"] = round(time.monotonic() - began, 1)
    results = merged(out, results, partial=bool(args.section))
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    console.rule("[bold]all sections")
    print_tables(results, console)
    console.print(f"{took:.0f} s in all; written to {out}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
