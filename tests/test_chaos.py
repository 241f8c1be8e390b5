"""The chaos suite in `make test`: a fixed set of seeded fault schedules, checked against every invariant in
tests/chaos.py, two at a time (as `make chaos` runs them: a schedule mostly waits on its servers, so two share
this 2-core machine without slowing each other much). `make chaos SEEDS=N START=M` runs many more
(tests/chaos_run.py).

CHAOS_SEEDS=N (default 24: CI has 30 minutes for everything; `make chaos` runs hundreds) and CHAOS_START=M
choose the seeds here."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.chaos import check, describe, make_schedule, run_schedule

START = int(os.environ.get("CHAOS_START", "0"))
SEEDS = list(range(START, START + int(os.environ.get("CHAOS_SEEDS", "24"))))
PAIRS = [tuple(SEEDS[i:i + 2]) for i in range(0, len(SEEDS), 2)]


@pytest.mark.parametrize("seeds", PAIRS, ids=lambda seeds: "seeds_" + "_".join(map(str, seeds)))
def test_chaos_schedules_keep_every_invariant(seeds: tuple[int, ...], tmp_path: Path) -> None:
    def one(seed: int) -> str | None:
        run = run_schedule(make_schedule(seed), tmp_path / f"seed_{seed}")
        violations = check(run)
        return describe(run, violations) if violations else None

    with ThreadPoolExecutor(max_workers=len(seeds)) as pool:
        found = [report for report in pool.map(one, seeds) if report]
    assert not found, "\n\n".join(found)


def test_a_seed_always_makes_the_same_schedule() -> None:
    assert [make_schedule(s) for s in range(50)] == [make_schedule(s) for s in range(50)]
    assert len({make_schedule(s) for s in range(50)}) == 50
