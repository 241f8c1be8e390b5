"""`hallurun merge RUN`: join the shards of a sharded run into one run folder, each id exactly once.

The shards are checked first, all of them, and every problem is one line (a missing shard with the command that
starts it, an unfinished one with the command that finishes it, a shard of another N, dataset, model or
sampling); nothing is written unless every check passes. Then RUN/results.jsonl, failures.jsonl and
generation.jsonl are written in dataset order, each to a temporary file made durable and renamed into place, and
the merged manifest last, so that RUN holds a merged run only once all three are whole.

Memory stays flat in the answers: the join keeps one 8-byte offset per dataset position (each shard's results
and failures name their item's `dataset_index`, and the position decides the shard), and the answers are copied
from the shards' files line by line. A million results over 16 shards: see docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from hallurun import __version__
from hallurun.config import ConfigError, RunConfig, Shard
from hallurun.errors import UsageError
from hallurun.store import manifest, shards
from hallurun.store.checkpoint import FAILURES, GENERATION, RESULTS
from hallurun.store.dataset import DatasetError, iter_items, sha256_of
from hallurun.store.durable import RunDirWriteError, fsync_dir, write_atomic
from hallurun.store.lock import RunLock

_NONE = -1  # a position no shard has settled


class MergeRefused(UsageError):
    """The shards cannot be merged as they are: one line per problem, each saying what to do."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\nerror: ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Merged:
    """What a merge wrote."""

    run_dir: Path
    shards: int
    results: int
    failures: int
    generation: int  # lines of generation.jsonl (the results whose question is the dataset's)
    seconds: float


@dataclass(frozen=True)
class _Part:
    shard: Shard
    path: Path
    config: RunConfig
    sha256: str
    count: int  # the dataset's records (after --limit), as the shard's validation counted them


@dataclass(frozen=True)
class _Data:
    """The dataset the shards ran: its file, as they fingerprinted and counted it."""

    path: Path
    sha256: str
    count: int


def merge(run_dir: Path) -> Merged:
    """Check the shards of `run_dir` and write the merged run. Raises MergeRefused (exit 2), one line per problem."""
    started = time.monotonic()
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run directory")
    with contextlib.suppress(manifest.ManifestError):
        if manifest.merged_from(manifest.read(run_dir)) is None:
            raise MergeRefused([f"{run_dir} holds an unsharded run of its own, which a merge would overwrite; move "
                                "the shards to a folder of their own"])
    with ExitStack() as locks:
        # Two merges of one run at once would race for the same files; a shard that runs meanwhile would change
        # under the merge. Each held lock is RunDirBusy (75: try again later).
        _hold(locks, run_dir)
        parts = _parts(run_dir)
        for part in parts:
            _hold(locks, part.path)
        first = parts[0]
        info = _dataset(first)
        settled = _settled(parts, info)
        counts = _write(run_dir, parts, info, settled)
        _write_manifest(run_dir, first, info, parts, counts)
    results, failures, generation = counts
    return Merged(run_dir, len(parts), results, failures, generation, time.monotonic() - started)


def _hold(locks: ExitStack, folder: Path) -> None:
    lock = RunLock(folder)
    lock.acquire()
    locks.callback(lock.release)


def _parts(run_dir: Path) -> list[_Part]:
    """Every shard of the run, checked to be one run's: same N, same task, model, sampling and data, none missing."""
    found = shards.find(run_dir)
    if not found:
        raise MergeRefused([f"{run_dir}: no shard folders (shard-I-of-N) in it; nothing to merge"])
    counts = Counter(shard.count for shard, _ in found)
    n = counts.most_common(1)[0][0]
    problems = [f"{path}: a shard of {shard.count}, but the others are shards of {n}; it is another sharded run's: "
                f"move it out of {run_dir}" for shard, path in found if shard.count != n]
    parts: list[_Part] = []
    for shard, path in found:
        if shard.count != n:
            continue
        try:
            saved = manifest.read(path)
            config = RunConfig.from_json(saved["config"])
            parts.append(_Part(shard, path, config, str(saved["dataset"]["sha256"]), int(saved["dataset"]["count"])))
        except manifest.ManifestError as exc:
            problems.append(f"{exc}; start it again with --run-dir {run_dir} --shard {shard}")
        except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as exc:
            problems.append(f"{path / manifest.MANIFEST}: unreadable configuration ({exc})")
    identities = Counter(_identity(part) for part in parts)
    if identities:
        reference = identities.most_common(1)[0][0]
        model = next(part for part in parts if _identity(part) == reference)
        for part in parts:
            if _identity(part) != reference:
                problems.append(f"{part.path}: {_differs(part, model)} from the other shards'; it belongs to "
                                f"another run: move it out of {run_dir}")
            elif part.config.shard != part.shard:
                problems.append(f"{part.path}: its manifest says shard {part.config.shard}; the folder's name is "
                                f"shard {part.shard}")
        have = {part.shard.index for part in parts}
        problems += [f"{run_dir / Shard(i, n).folder}: missing; start it with: "
                     f"{_start_command(model.config, run_dir, Shard(i, n))}" for i in range(n) if i not in have]
    if problems:
        raise MergeRefused(problems)
    return sorted(parts, key=lambda part: part.shard.index)


def _identity(part: _Part) -> bytes:
    return orjson.dumps(manifest.identity(part.config, part.sha256), option=orjson.OPT_SORT_KEYS)


def _differs(part: _Part, model: _Part) -> str:
    """Which part of a shard's identity is not the run's, in words."""
    mine, theirs = manifest.identity(part.config, part.sha256), manifest.identity(model.config, model.sha256)
    if mine["dataset_sha256"] != theirs["dataset_sha256"]:
        return f"its dataset (sha256 {part.sha256[:12]}) is not the one ({model.sha256[:12]})"
    names = ", ".join(key for key in mine if mine[key] != theirs[key])
    return f"its {names} differ"


def _start_command(config: RunConfig, run_dir: Path, shard: Shard) -> str:
    """The command that starts `shard` of the run `config` is a shard of."""
    words = ["hallurun", "inference", "--task", config.task_ref or config.task, "--model", config.model,
             "--dataset", str(config.dataset)]
    if config.limit is not None:
        words += ["--limit", str(config.limit)]
    sampling = config.sampling
    words += ["--api", sampling.api, "--max-tokens", str(sampling.max_tokens), "--temperature",
              str(sampling.temperature), "--top-p", str(sampling.top_p)]
    if sampling.seed is not None:
        words += ["--seed", str(sampling.seed)]
    words += ["--run-dir", str(run_dir), "--shard", str(shard)]
    return shlex.join(words)


def _dataset(part: _Part) -> _Data:
    """The dataset the shards ran, checked to be the same file. Hashed, not validated again: the shards validated
    it, and each answer is checked against its record as it is joined (same id, same question)."""
    path = part.config.dataset
    try:
        sha256 = sha256_of(path)
    except OSError as exc:
        raise MergeRefused([f"{path}: cannot read it ({exc.strerror or exc}); the shards ran it, and merge reads "
                            "it again to write generation.jsonl"]) from None
    if sha256 != part.sha256:
        raise MergeRefused([f"{path}: changed since the shards ran (sha256 {part.sha256[:12]} → {sha256[:12]}); "
                            "restore it to merge"])
    return _Data(path, sha256, part.count)


def _settled(parts: list[_Part], info: _Data) -> array[int]:
    """Where each dataset position's answer (2·offset) or failure (2·offset + 1) is, in its shard's file;
    every shard checked to be finished and to hold only its own items, each once."""
    where = array("q", [_NONE]) * info.count
    problems: list[str] = []
    for part in parts:
        own = 0
        for path, line_no, offset, record in _records(part.path / RESULTS):
            problem = _place(where, part.shard, info.count, path, line_no, record, 2 * offset)
            if problem:
                problems.append(problem)
            else:
                own += 1
        for path, line_no, offset, record in _records(part.path / FAILURES):
            position = record.get("dataset_index")
            if (isinstance(position, int) and 0 <= position < info.count and part.shard.holds(position)
                    and where[position] != _NONE):
                continue  # answered after it failed (`resume --retry-failed`), or failed twice: the first stands
            problem = _place(where, part.shard, info.count, path, line_no, record, 2 * offset + 1)
            if problem:
                problems.append(problem)
            else:
                own += 1
        size = part.shard.size(info.count)
        if own < size:
            problems.append(f"{part.path}: {size - own} of its {size} items not settled; finish it with: "
                            f"hallurun resume {part.path}")
    if problems:
        raise MergeRefused(problems[:20] + ([f"… and {len(problems) - 20} more"] if len(problems) > 20 else []))
    return where


def _place(where: array[int], shard: Shard, count: int, path: Path, line_no: int, record: dict[str, Any],
           value: int) -> str | None:
    """Note one settled item at its position; the problem, in one line, if it cannot be this shard's."""
    position = record.get("dataset_index")
    if isinstance(position, bool) or not isinstance(position, int):
        return f"{path}:{line_no}: field 'dataset_index': missing or not an integer"
    if not 0 <= position < count:
        return f"{path}:{line_no}: field 'dataset_index': {position} is not a position of the dataset's {count}"
    if not shard.holds(position):
        return (f"{path}:{line_no}: item {record.get('id')!r} (position {position}) belongs to shard "
                f"{position % shard.count}, not to this one")
    if where[position] != _NONE:
        return f"{path}:{line_no}: item {record.get('id')!r} is settled twice in this shard"
    where[position] = value
    return None


def _records(path: Path) -> Iterator[tuple[Path, int, int, dict[str, Any]]]:
    """(file, line number, byte offset, record) of each whole line; a torn last line (a shard killed while
    writing, not resumed since) is not one."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        offset = 0
        for line_no, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                return
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                yield path, line_no, offset, record
            offset += len(raw)


def _write(run_dir: Path, parts: list[_Part], info: _Data, where: array[int]) -> tuple[int, int, int]:
    """Write results, failures and generation in dataset order, each to a temporary file, and rename the three
    into place once all are whole. Every answer is checked to be its position's item (same id, same question)."""
    targets = [run_dir / RESULTS, run_dir / FAILURES, run_dir / GENERATION]
    temporary = [path.with_name(f".{path.name}.merging") for path in targets]
    counts = [0, 0, 0]
    problems: list[str] = []
    config, n = parts[0].config, parts[0].shard.count
    try:
        with ExitStack() as stack:
            outs: list[IO[bytes]] = [stack.enter_context(path.open("wb", buffering=_BUFFER)) for path in temporary]
            sources = [(_Lines(part.path / RESULTS), _Lines(part.path / FAILURES)) for part in parts]
            for pair in sources:
                for lines in pair:
                    stack.callback(lines.close)
            seen = 0
            for item in iter_items(config.dataset, config.limit):
                seen += 1
                value = where[item.position] if item.position < info.count else _NONE
                if value == _NONE:  # more records than the shards counted: the file changed under the merge
                    break
                raw = sources[item.position % n][value % 2].at(value // 2)
                record = orjson.loads(raw)
                if str(record.get("id")) != item.id or (not value % 2 and record.get("prompt") != item.prompt):
                    problems.append(f"{parts[item.position % n].path}: the answer at position {item.position} is "
                                    f"to item {record.get('id')!r}, not to {item.id!r} with its question")
                    if len(problems) >= 20:
                        break
                    continue
                if value % 2:
                    outs[1].write(raw)
                    counts[1] += 1
                    continue
                outs[0].write(raw)
                outs[2].write(orjson.dumps(item.answered(record.get("generation", ""))) + b"\n")
                counts[0] += 1
                counts[2] += 1
            if seen != info.count and not problems:
                problems.append(f"{info.path}: it now holds {'more' if seen > info.count else 'fewer'} than the "
                                f"{info.count} records the shards ran; restore it to merge")
            if problems:
                raise MergeRefused(problems)
            for out in outs:
                out.flush()
                os.fsync(out.fileno())
        # An earlier merge's manifest goes first: a merge killed among the renames leaves a folder that says
        # "not merged" (and is merged again), never an old manifest over new files.
        (run_dir / manifest.MANIFEST).unlink(missing_ok=True)
        fsync_dir(run_dir)
        for tmp, path in zip(temporary, targets, strict=True):
            os.replace(tmp, path)
        fsync_dir(run_dir)
    except DatasetError as exc:
        raise MergeRefused([f"{exc}; the file changed since the shards ran: restore it to merge"]) from None
    except OSError as exc:
        raise RunDirWriteError(run_dir, exc) from None
    finally:
        for tmp in temporary:
            tmp.unlink(missing_ok=True)
    return counts[0], counts[1], counts[2]


_BUFFER = 1 << 20  # the merged files are written in MiB blocks (8 KiB ones cost a quarter of a merge's time)


class _Lines:
    """Whole lines of a file read at byte offsets with pread: a seek and readline on a buffered file would read
    8 KiB for each ~700-byte answer, in dataset order, which jumps about the file."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY) if path.exists() else None

    def at(self, offset: int) -> bytes:
        assert self._fd is not None
        size, chunks = 2048, []
        while True:
            block = os.pread(self._fd, size, offset)
            cut = block.find(b"\n")
            if cut >= 0 or not block:
                chunks.append(block[:cut + 1] if cut >= 0 else block)
                return b"".join(chunks)
            chunks.append(block)
            offset += len(block)
            size *= 2

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_manifest(run_dir: Path, first: _Part, info: _Data, parts: list[_Part],
                    counts: tuple[int, int, int]) -> None:
    """The merged run's manifest, last: an ordinary run's (so `hallurun eval` reads it as one), no longer a
    shard, with what was merged."""
    config = dataclasses.replace(first.config, run_dir=run_dir, shard=None)
    saved = {
        "hallurun_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fingerprint": manifest.fingerprint(config, info.sha256),
        "dataset": {"path": str(info.path.resolve()), "sha256": info.sha256, "count": info.count},
        "items": info.count,
        "config": config.to_json(),
        "merged": {"shards": len(parts), "folders": [part.path.name for part in parts], "results": counts[0],
                   "failures": counts[1], "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    write_atomic(run_dir / manifest.MANIFEST, orjson.dumps(saved, option=orjson.OPT_INDENT_2))
