"""The layout of a sharded run: one shared folder RUN holding a complete run folder per shard,
`RUN/shard-I-of-N/`, each written by the one hallurun that runs that shard. Nothing at the top of RUN is written
by a shard (so no lock has to span hosts); `hallurun merge` writes it, once, at the end."""

from __future__ import annotations

import re
from pathlib import Path

from hallurun.config import Shard

_FOLDER = re.compile(r"shard-(\d+)-of-(\d+)")


def find(run_dir: Path) -> list[tuple[Shard, Path]]:
    """The shard folders in `run_dir`, by N then I (a folder named like a shard of no possible run is left out)."""
    found = []
    try:
        entries = list(run_dir.iterdir())
    except OSError:
        return []
    for path in entries:
        match = _FOLDER.fullmatch(path.name)
        if match and path.is_dir():
            index, count = int(match[1]), int(match[2])
            if 0 <= index < count and path.name == Shard(index, count).folder:  # not shard-01-of-4
                found.append((Shard(index, count), path))
    return sorted(found, key=lambda pair: (pair[0].count, pair[0].index))


def shard_of(run_dir: Path) -> tuple[Path, Shard] | None:
    """The shared folder and the shard, when `run_dir` is a shard's folder (by its name); else None."""
    match = _FOLDER.fullmatch(run_dir.name)
    if match is None or not int(match[1]) < int(match[2]):
        return None
    return run_dir.parent, Shard(int(match[1]), int(match[2]))


def not_merged(run_dir: Path) -> str | None:
    """What to tell a user who points a command at a sharded run that has not been merged; None if it is not one."""
    found = find(run_dir)
    if not found:
        return None
    names = ", ".join(path.name for _, path in found[:3]) + (", …" if len(found) > 3 else "")
    return (f"{run_dir} holds the shards of a sharded run ({names}), not merged yet: `hallurun merge {run_dir}` "
            f"joins them; a shard continues with `hallurun resume {run_dir}/shard-I-of-N`")
