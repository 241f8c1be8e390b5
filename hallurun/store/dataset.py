"""Reading a prompt dataset: JSONL records with a `prompt` string and an optional `id`.

A dataset is read twice: once up front to validate every line and fingerprint the file (so bad input fails
before a server is launched), then lazily while the run dispatches, so memory does not grow with its size. The
validating pass keeps a short digest of every record, and the lazy pass checks each record against it: a file
rewritten in place during a run (a generator script re-run with `>`) is detected at the first changed record, and
nothing but the validated content is ever sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hallurun.config import Shard
from hallurun.store.jsonl import JsonlError, read_lines

DIGEST_BYTES = 8  # per record: a million records cost 8 MB, and a changed line goes unnoticed 1 time in 2**64


class DatasetError(JsonlError):
    """A dataset line is unusable. The message names the file, the line and the field."""


class DatasetChanged(DatasetError):
    """The dataset file no longer holds what the validating pass read."""


@dataclass(frozen=True, slots=True)
class Item:
    """One prompt to run. `record` holds every input field, carried into the results; `position` is its record's
    place in the dataset (0-based), which decides its shard."""

    id: str
    prompt: str
    record: dict[str, Any]
    position: int = 0

    def answered(self, generation: str) -> dict[str, Any]:
        """The item's line in HalluLens' generation.jsonl: its input fields, and the answer as `generation`."""
        return {**self.record, "generation": generation}


@dataclass(frozen=True)
class DatasetInfo:
    """What the validation pass learned about a dataset file."""

    path: Path
    sha256: str
    count: int
    digests: bytes = field(default=b"", repr=False)  # DIGEST_BYTES per record, in file order


def _parse(path: Path, line_no: int, record: dict[str, Any], index: int) -> Item:
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DatasetError(path, line_no, "field 'prompt': must be a non-empty string")
    raw_id = record.get("id", index)
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or raw_id == "":
        raise DatasetError(path, line_no, "field 'id': must be a non-empty string or an integer")
    return Item(id=str(raw_id), prompt=prompt, record=record, position=index)


def _digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw.rstrip(b"\r\n"), digest_size=DIGEST_BYTES).digest()


def _lines(path: Path) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    try:
        yield from read_lines(path)
    except JsonlError as exc:
        raise DatasetError(exc.path, exc.line, exc.message) from None


def _still_valid(path: Path) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """The lines of a file that was valid when validated: a line that no longer parses means it changed."""
    try:
        yield from _lines(path)
    except DatasetChanged:
        raise
    except DatasetError as exc:
        raise DatasetChanged(exc.path, exc.line, f"the file changed during the run ({exc.message})") from None


def iter_items(path: Path, limit: int | None = None, expected: DatasetInfo | None = None,
               shard: Shard | None = None) -> Iterator[Item]:
    """Yield the dataset's items in file order; items without an `id` get their record index. With `shard`, only
    that shard's items (every record is still read, and checked).

    With `expected` (the validating pass's result), every record is checked against it: DatasetChanged is raised
    at the first record that differs, and at a record beyond those validated, before the record is yielded.
    """
    lines = _lines(path) if expected is None else _still_valid(path)
    index = -1
    for index, (line_no, raw, record) in enumerate(lines):
        if limit is not None and index >= limit:
            return
        if expected is not None:
            if index >= expected.count:
                raise DatasetChanged(path, line_no, f"the file changed during the run: it now holds more than the "
                                                    f"{expected.count} records validated at the start")
            if _digest(raw) != expected.digests[index * DIGEST_BYTES:(index + 1) * DIGEST_BYTES]:
                raise DatasetChanged(path, line_no, "the file changed during the run: this record is not the one "
                                                    "validated at the start")
        if shard is None or shard.holds(index):
            yield _parse(path, line_no, record, index)
    if expected is not None and index + 1 < expected.count:
        raise DatasetChanged(path, None, f"the file changed during the run: it now holds {index + 1} of the "
                                         f"{expected.count} records validated at the start")


def scan(path: Path, limit: int | None = None) -> DatasetInfo:
    """Validate every line (up to `limit` records) and fingerprint the whole file.

    Raises DatasetError for a missing file, a bad line or a repeated id.
    """
    if not path.is_file():
        raise DatasetError(path, None, "dataset file not found")
    sha256 = sha256_of(path)
    seen: dict[str, int] = {}
    digests = bytearray()
    for index, (line_no, raw, record) in enumerate(_lines(path)):
        if limit is not None and index >= limit:
            break
        item = _parse(path, line_no, record, index)
        first = seen.setdefault(item.id, line_no)
        if first != line_no:
            raise DatasetError(path, line_no, f"field 'id': {item.id!r} repeats the id on line {first}")
        digests += _digest(raw)
    count = len(digests) // DIGEST_BYTES
    if count == 0:
        raise DatasetError(path, None, "dataset has no records")
    return DatasetInfo(path=path, sha256=sha256, count=count, digests=bytes(digests))


def sha256_of(path: Path) -> str:
    """The sha256 of a whole file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
