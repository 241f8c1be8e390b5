"""Reading a prompt dataset: JSONL records with a `prompt` string and an optional `id`.

A dataset is read twice: once up front to validate every line and fingerprint the file (so bad input fails
before a server is launched), then lazily while the run dispatches, so memory does not grow with its size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hallurun.jsonl import JsonlError, read_objects


class DatasetError(JsonlError):
    """A dataset line is unusable. The message names the file, the line and the field."""


@dataclass(frozen=True, slots=True)
class Item:
    """One prompt to run. `record` holds every input field, carried into the results."""

    id: str
    prompt: str
    record: dict[str, Any]


@dataclass(frozen=True)
class DatasetInfo:
    """What the validation pass learned about a dataset file."""

    path: Path
    sha256: str
    count: int


def _parse(path: Path, line_no: int, record: dict[str, Any], index: int) -> Item:
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DatasetError(path, line_no, "field 'prompt': must be a non-empty string")
    raw_id = record.get("id", index)
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or raw_id == "":
        raise DatasetError(path, line_no, "field 'id': must be a non-empty string or an integer")
    return Item(id=str(raw_id), prompt=prompt, record=record)


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        yield from read_objects(path)
    except JsonlError as exc:
        raise DatasetError(exc.path, exc.line, exc.message) from None


def iter_items(path: Path, limit: int | None = None) -> Iterator[Item]:
    """Yield the dataset's items in file order; items without an `id` get their record index."""
    for index, (line_no, record) in enumerate(_records(path)):
        if limit is not None and index >= limit:
            return
        yield _parse(path, line_no, record, index)


def scan(path: Path, limit: int | None = None) -> DatasetInfo:
    """Validate every line (up to `limit` records) and fingerprint the whole file.

    Raises DatasetError for a missing file, a bad line or a repeated id.
    """
    if not path.is_file():
        raise DatasetError(path, None, "dataset file not found")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    seen: dict[str, int] = {}
    count = 0
    for index, (line_no, record) in enumerate(_records(path)):
        if limit is not None and index >= limit:
            break
        item = _parse(path, line_no, record, index)
        first = seen.setdefault(item.id, line_no)
        if first != line_no:
            raise DatasetError(path, line_no, f"field 'id': {item.id!r} repeats the id on line {first}")
        count += 1
    if count == 0:
        raise DatasetError(path, None, "dataset has no records")
    return DatasetInfo(path=path, sha256=digest.hexdigest(), count=count)
