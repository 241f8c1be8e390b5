"""Run many chaos schedules and summarise what they found: `make chaos SEEDS=200 START=0`.

    .venv/bin/python tests/chaos_run.py --seed 17            # replay one seed, keeping its files
    .venv/bin/python tests/chaos_run.py --seeds 200 --start 0 --jobs 2

Each schedule runs in its own folder under `--root` (default: a new temporary folder); folders of schedules that
kept every invariant are removed unless `--keep`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `tests.chaos` when run as a script

from tests.chaos import Finished, check, describe, happened, make_schedule, run_schedule


def run_one(seed: int, root: Path, keep: bool) -> tuple[Finished, dict[str, list[str]], float, str]:
    """Run one seed's schedule and check it; say what happened, then remove its folder if it passed (unless
    `keep`): the summary reads the run's files."""
    began = time.monotonic()
    run = run_schedule(make_schedule(seed), root / f"seed_{seed}")
    violations = check(run)
    summary = describe(run, violations) if violations else happened(run)
    if not violations and not keep:
        shutil.rmtree(run.root, ignore_errors=True)
    return run, violations, time.monotonic() - began, summary


def main(argv: list[str] | None = None) -> int:
    """Run the seeds asked for; exit 1 if any schedule broke an invariant."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, help="run this one seed (and keep its files)")
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds")
    parser.add_argument("--start", type=int, default=0, help="the first seed")
    parser.add_argument("--jobs", type=int, default=2, help="schedules at once (the machine has 2 cores)")
    parser.add_argument("--root", type=Path, help="folder for the runs [default: a new temporary folder]")
    parser.add_argument("--keep", action="store_true", help="keep the folders of passing schedules too")
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else list(range(args.start, args.start + args.seeds))
    root = args.root or Path(tempfile.mkdtemp(prefix="hallurun-chaos-"))
    keep = args.keep or args.seed is not None
    by_invariant: Counter[str] = Counter()
    failed: list[tuple[int, dict[str, list[str]]]] = []
    print(f"chaos: {len(seeds)} schedule(s) from seed {seeds[0]}, {args.jobs} at a time, in {root}", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_one, seed, root, keep) for seed in seeds]
        for future in as_completed(futures):
            run, violations, took, summary = future.result()
            seed = run.schedule.seed
            if violations:
                failed.append((seed, violations))
                by_invariant.update(violations.keys())
                print(summary, flush=True)
            else:
                print(f"chaos seed {seed}: ok ({took:.0f}s, {run.schedule.mode}; {summary})", flush=True)
    print(f"\nchaos summary: {len(seeds)} schedule(s) ran, {len(failed)} violated an invariant")
    for name, count in by_invariant.most_common():
        seeds_of = sorted(seed for seed, v in failed if name in v)
        print(f"  {name}: {count} schedule(s): seeds {seeds_of}")
    for seed, _ in sorted(failed):
        print(f"  replay: .venv/bin/python tests/chaos_run.py --seed {seed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
