"""The crash-safe checkpoint: append-only JSONL logs of finished and failed items.

A line is the unit of truth. An item is done once its line is in `results.jsonl`; lines are written in small
batches, each batch flushed and fsynced, so a crash loses at most the batch in hand (those items simply run
again) and can tear at most the last line, which `repair` cuts off on the next open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from hallurun.store.durable import RunDirWriteError, fsync_dir, write_atomic

RESULTS = "results.jsonl"
FAILURES = "failures.jsonl"
GENERATION = "generation.jsonl"  # HalluLens' format, written from the results when a run is complete


def repair(path: Path) -> int:
    """Cut a torn last line (one without its newline) off `path`. Returns the number of bytes dropped."""
    if not path.exists():
        return 0
    with path.open("rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        # Walk back to the last newline; a torn tail is short, so read backwards in small blocks.
        end = size
        keep = 0
        while end > 0:
            start = max(0, end - 65536)
            fh.seek(start)
            block = fh.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
        return size - keep


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Yield each complete JSON line of a log; unparseable lines are skipped (they can only be a torn tail)."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return
            try:
                yield orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue


class JsonlLog:
    """An append-only JSONL file written in fsynced batches.

    `append` only buffers; `take` hands the buffered bytes to whoever writes them, and `write` puts them on
    disk durably. Splitting the two lets the run write from a worker thread without blocking its event loop.
    A batch is on disk whole or not at all: a write that fails part-way (disk full, file size limit) is cut back
    off the file and its bytes are kept for the next try, so a later write can never leave a fragment mid-file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: list[bytes] = []
        created = not path.exists()
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if created:
                fsync_dir(path.parent)  # else a power loss can lose the file with every fsynced line in it
        except OSError as exc:
            raise RunDirWriteError(path, exc) from None

    def append(self, record: dict[str, Any]) -> None:
        self._pending.append(orjson.dumps(record) + b"\n")

    @property
    def pending(self) -> int:
        return len(self._pending)

    def take(self) -> bytes:
        data = b"".join(self._pending)
        self._pending.clear()
        return data

    def put_back(self, data: bytes) -> None:
        """Return a batch that could not be written to the front of what is pending."""
        if data:
            self._pending.insert(0, data)

    def write(self, data: bytes) -> None:
        """Append `data` and fsync, or raise RunDirWriteError with the file as it was. Safe from a worker thread."""
        try:
            size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise RunDirWriteError(self.path, exc) from None
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)  # shrinking needs no space
            raise RunDirWriteError(self.path, exc) from None

    def flush(self) -> None:
        if self._pending:
            data = self.take()
            try:
                self.write(data)
            except RunDirWriteError:
                self.put_back(data)
                raise

    def close(self) -> None:
        """Flush and close; the file is closed even when the flush fails (which then raises)."""
        try:
            self.flush()
        finally:
            os.close(self._fd)


class Checkpoint:
    """The run directory's record of which items are finished, and the writer of new records."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.repaired_bytes = 0
        for name in (RESULTS, FAILURES):
            try:
                self.repaired_bytes += repair(run_dir / name)
            except OSError as exc:
                raise RunDirWriteError(run_dir / name, exc) from None
        self.done: set[str] = {str(r["id"]) for r in read_records(run_dir / RESULTS) if "id" in r}
        self.failed: dict[str, str] = {
            str(r["id"]): str(r.get("reason", "")) for r in read_records(run_dir / FAILURES) if "id" in r
        }
        for item_id in self.done:
            self.failed.pop(item_id, None)
        self.results = JsonlLog(run_dir / RESULTS)
        self.failures = JsonlLog(run_dir / FAILURES)
        self._writing = threading.Lock()  # one writer at a time: a thread's batch, then any flush after it

    def forget_failures(self) -> list[str]:
        """Drop every recorded failure so the items run again (`resume --retry-failed`).

        The old lines are appended to `failures.retried.jsonl` first, then `failures.jsonl` is replaced by an
        empty file atomically: a crash in between leaves them in both (retried again next time), never in neither.
        """
        self.flush()
        ids = sorted(self.failed)
        path = self.run_dir / FAILURES
        if path.exists() and path.stat().st_size:
            history = JsonlLog(self.run_dir / "failures.retried.jsonl")
            try:
                history.write(path.read_bytes())
            finally:
                history.close()
            self.failures.close()
            try:
                write_atomic(path, b"")
            finally:
                self.failures = JsonlLog(path)  # open again either way: `close` must find a live descriptor
        self.failed.clear()
        return ids

    def supersede(self, keep: Callable[[dict[str, Any]], bool]) -> list[str]:
        """Take back the results that `keep` rejects, so their items run again (`resume --force` after their
        questions changed). Their lines move to `results.superseded.jsonl` first, then `results.jsonl` is
        replaced without them atomically: a crash in between leaves them in both, never in neither."""
        self.flush()
        path = self.run_dir / RESULTS
        kept: list[bytes] = []
        dropped: list[bytes] = []
        ids: list[str] = []
        with path.open("rb") as fh:
            for raw in fh:
                try:
                    record = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    kept.append(raw)  # not a result anyone reads; not ours to drop
                    continue
                if isinstance(record, dict) and "id" in record and not keep(record):
                    dropped.append(raw)
                    ids.append(str(record["id"]))
                else:
                    kept.append(raw)
        if not dropped:
            return []
        history = JsonlLog(self.run_dir / "results.superseded.jsonl")
        try:
            history.write(b"".join(dropped))
        finally:
            history.close()
        self.results.close()
        try:
            write_atomic(path, b"".join(kept))
        finally:
            self.results = JsonlLog(path)
        self.done.difference_update(ids)
        return ids

    def is_settled(self, item_id: str) -> bool:
        """True when the item needs no more work: finished, or failed for good."""
        return item_id in self.done or item_id in self.failed

    def add_result(self, record: dict[str, Any]) -> bool:
        """Record a finished item. Returns False (and writes nothing) if its id is already recorded."""
        item_id = str(record["id"])
        if item_id in self.done:
            return False
        self.done.add(item_id)
        self.failed.pop(item_id, None)
        self.results.append(record)
        return True

    def add_failure(self, item_id: str, reason: str, error: str, attempts: int, position: int | None = None) -> bool:
        """Record an item that finally failed (at `position` in the dataset, if known). Returns False if it is
        already finished or failed."""
        if item_id in self.done or item_id in self.failed:
            return False
        self.failed[item_id] = reason
        record: dict[str, Any] = {"id": item_id, "reason": reason, "error": error, "attempts": attempts}
        if position is not None:
            record["dataset_index"] = position
        self.failures.append(record)
        return True

    @property
    def pending(self) -> int:
        return self.results.pending + self.failures.pending

    def flush(self, wait: float | None = None) -> bool:
        """Write and fsync what is pending, after any batch still being written by `flush_in_thread`. With `wait`,
        give up after that many seconds (False): for a last-moment flush from the event loop's own thread."""
        if not self._writing.acquire(timeout=-1 if wait is None else wait):
            return False
        try:
            self.results.flush()
            self.failures.flush()
        finally:
            self._writing.release()
        return True

    async def flush_in_thread(self) -> None:
        """Write what is pending from a worker thread: an fsync can take tens of milliseconds on a busy disk,
        and the event loop must go on reading streams meanwhile."""
        batches = [(log, log.take()) for log in (self.results, self.failures) if log.pending]
        if not batches:
            return
        # Taken here and released by the thread when its batch is on disk, even if this coroutine is cancelled
        # meanwhile: so a `flush` or `close` that follows always finds the earlier batch written.
        self._writing.acquire()

        def write() -> None:
            try:
                for n, (log, data) in enumerate(batches):
                    try:
                        log.write(data)
                    except RunDirWriteError:
                        for later, unwritten in batches[n:]:
                            later.put_back(unwritten)  # so the last flush on the way out tries them again
                        raise
            finally:
                self._writing.release()

        # Shielded: cancelling a write still queued for its thread would drop it, and the lock with it.
        await asyncio.shield(asyncio.to_thread(write))

    def close(self) -> None:
        """Flush and close both logs; both are closed even when a flush fails (which then raises)."""
        with self._writing:
            try:
                self.results.close()
            finally:
                self.failures.close()
