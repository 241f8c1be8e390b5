"""What a task folder gives hallurun besides its task.json and data: its code, as one `TaskPlugin` value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hallurun.eval.scoring import Scoring

if TYPE_CHECKING:  # the generators run request stages; the plugin only names them
    from hallurun.core.stage import Settings


@dataclass(frozen=True)
class Generated:
    """A dataset a generator wrote: where, how many records it kept, and how many requests failed."""

    out: Path
    kept: int
    failed: int

    @property
    def complete(self) -> bool:
        """Every request answered and something kept (else the command line ends with 1, as for failed items)."""
        return self.kept > 0 and self.failed == 0


@dataclass(frozen=True)
class Generator:
    """Builds a dataset for the task with a generator model (`hallurun generate --task NAME`)."""

    # (documents file, how many to draft, seed, output file or None for the default, stage settings)
    run: Callable[[Path, int, int, Path | None, Settings], Generated]
    about: str  # one line for `hallurun tasks` and `generate --help`


@dataclass(frozen=True)
class TaskPlugin:
    """A built-in task: its folder (task.json, data) and its code."""

    folder: Path
    scoring: Scoring | None = None  # how `hallurun eval` scores it; None: it has no evaluation
    generator: Generator | None = None
