"""The run's lifecycle log, `events.jsonl`: one line per event, written and fsynced as it happens."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

EVENTS = "events.jsonl"


class EventLog:
    """Appends events such as `server_started`, `hang_detected`, `server_restarted`, `run_finished`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / EVENTS
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event now; events are rare, so each is made durable on its own."""
        now = time.time()
        record = {"time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
                  "t": round(now, 3), "event": event, **fields}
        os.write(self._fd, orjson.dumps(record) + b"\n")
        os.fsync(self._fd)
        return record

    def close(self) -> None:
        os.close(self._fd)
