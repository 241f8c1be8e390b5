"""Reading JSONL inputs of every kind (datasets, documents, passages, scripts) with errors that name the line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from hallurun.errors import UsageError


class JsonlError(UsageError, ValueError):
    """A line that is not a JSON object. The message reads `FILE:LINE: what is wrong`."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}" if line is not None else f"{path}: {message}")
        self.path, self.line, self.message = path, line, message


def read_objects(path: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for every non-blank line; JsonlError for a missing file or a bad line."""
    for line_no, _, record in read_lines(path):
        yield line_no, record


def read_lines(path: Path | str) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """Yield (line number, raw line, object) for every non-blank line; JsonlError as `read_objects`."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below, after the error is reported cleanly
    except OSError as exc:
        raise JsonlError(path, None, f"cannot read ({exc.strerror})") from None
    with fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise JsonlError(path, line_no, f"not valid JSON ({exc})") from None
            if not isinstance(record, dict):
                raise JsonlError(path, line_no, "expected a JSON object")
            yield line_no, raw, record
