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

import orjson


class DatasetError(Exception):
    """A dataset line is unusable. The message names the file, the line and the field."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


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


def _parse(path: Path, line_no: int, raw: bytes, index: int) -> Item:
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DatasetError(path, line_no, f"not valid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise DatasetError(path, line_no, "expected a JSON object")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DatasetError(path, line_no, "field 'prompt': must be a non-empty string")
    raw_id = record.get("id", index)
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or raw_id == "":
        raise DatasetError(path, line_no, "field 'id': must be a non-empty string or an integer")
    return Item(id=str(raw_id), prompt=prompt, record=record)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if raw.strip():
                yield line_no, raw


def iter_items(path: Path, limit: int | None = None) -> Iterator[Item]:
    """Yield the dataset's items in file order; items without an `id` get their record index."""
    for index, (line_no, raw) in enumerate(_lines(path)):
        if limit is not None and index >= limit:
            return
        yield _parse(path, line_no, raw, index)


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
    for index, (line_no, raw) in enumerate(_lines(path)):
        if limit is not None and index >= limit:
            break
        item = _parse(path, line_no, raw, index)
        first = seen.setdefault(item.id, line_no)
        if first != line_no:
            raise DatasetError(path, line_no, f"field 'id': {item.id!r} repeats the id on line {first}")
        count += 1
    if count == 0:
        raise DatasetError(path, None, "dataset has no records")
    return DatasetInfo(path=path, sha256=digest.hexdigest(), count=count)
