"""The chaos suite in `make test`: a fixed set of seeded fault schedules, one test per seed, each checked against
every invariant in tests/chaos.py. `make chaos SEEDS=N START=M` runs many more (tests/chaos_run.py).

CHAOS_SEEDS=N (default 30) and CHAOS_START=M choose the seeds here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos import check, describe, make_schedule, run_schedule

SEEDS = range(int(os.environ.get("CHAOS_START", "0")),
              int(os.environ.get("CHAOS_START", "0")) + int(os.environ.get("CHAOS_SEEDS", "30")))


@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"seed_{seed}")
def test_chaos_schedule_keeps_every_invariant(seed: int, tmp_path: Path) -> None:
    run = run_schedule(make_schedule(seed), tmp_path / f"seed_{seed}")
    violations = check(run)
    assert not violations, describe(run, violations)


def test_a_seed_always_makes_the_same_schedule() -> None:
    assert [make_schedule(s) for s in range(50)] == [make_schedule(s) for s in range(50)]
    assert len({make_schedule(s) for s in range(50)}) == 50
