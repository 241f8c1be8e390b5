"""The run's lifecycle log, `events.jsonl`: one line per event, written and fsynced as it happens."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from hallurun.store.durable import RunDirWriteError

EVENTS = "events.jsonl"


class Emitter(Protocol):
    """What writes events: the log itself, or a view of it that tags each event (`EventLog.tagged`)."""

    def emit(self, event: str, **fields: Any) -> dict[str, Any]: ...


class EventLog:
    """Appends events such as `server_started`, `hang_detected`, `server_restarted`, `run_finished`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / EVENTS
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirWriteError(self.path, exc) from None

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event now; events are rare, so each is made durable on its own."""
        now = time.time()
        record = {"time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
                  "t": round(now, 3), "event": event, **fields}
        line = orjson.dumps(record) + b"\n"
        size: int | None = None
        try:
            size = os.fstat(self._fd).st_size
            if os.write(self._fd, line) != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # an event is a few hundred bytes
            os.fsync(self._fd)
        except OSError as exc:
            if size is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, size)  # no torn event left for the next one to follow
            raise RunDirWriteError(self.path, exc) from None
        return record

    def tagged(self, **fixed: Any) -> Tagged:
        """A view of this log that adds `fixed` to every event (a server replica's events carry `replica`)."""
        return Tagged(self, fixed)

    def close(self) -> None:
        os.close(self._fd)


class Tagged:
    """Events of one part of a run (a replica), written to the run's log with that part's fields."""

    def __init__(self, log: EventLog, fixed: dict[str, Any]) -> None:
        self.log = log
        self.fixed = fixed

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event with the fixed fields first."""
        return self.log.emit(event, **self.fixed, **fields)
