"""Durable writes to the run directory: whole files that readers see old or new, never half of either; directory
entries made durable; and one error for a run directory that cannot be written."""

from __future__ import annotations

import os
from pathlib import Path

from hallurun.errors import EXIT_IO, HallurunError


class RunDirWriteError(HallurunError):
    """A file of the run directory could not be written (disk full, quota, file size limit, I/O error)."""

    exit_code = EXIT_IO

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"cannot write {path}: {error.strerror or error}")
        self.path, self.error = path, error


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a file just created or renamed into it) survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, rename it over `path`, fsync the directory.
    Raises RunDirWriteError; the old file is then untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunDirWriteError(path, exc) from None
