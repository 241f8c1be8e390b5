"""The guardian: a tiny sidecar that stops the server's process groups if hallurun dies without doing so.

hallurun keeps the write end of a pipe to the guardian's stdin and tells it, line by line, which process
groups it owns (`+PGID`) and which it has already stopped (`-PGID`). When the pipe reaches EOF (hallurun has
exited by any means, `kill -9` included) the guardian terminates every group still listed: TERM, a grace
period, then KILL. This covers what a parent-death signal cannot: the server's own children.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

GRACE_SECONDS = 5.0


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def reap_groups(groups: set[int], grace: float = GRACE_SECONDS) -> None:
    """TERM every group, wait up to `grace` for them to exit, then KILL what remains."""
    for pgid in groups:
        _signal(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.05)  # no event tells us when another session's group has emptied
    for pgid in groups:
        _signal(pgid, signal.SIGKILL)


def main() -> None:
    """Read group ids from stdin until EOF, then reap the groups still owned."""
    # The guardian must outlive hallurun's terminal signals to do its job.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin:
        line = line.strip()
        if line.startswith("+"):
            groups.add(int(line[1:]))
        elif line.startswith("-"):
            groups.discard(int(line[1:]))
    if groups:
        reap_groups(groups)


class Guardian:
    """hallurun's handle on its guardian process."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "hallurun.guardian"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, text=True,
        )

    def _say(self, line: str) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass

    def watch(self, pgid: int) -> None:
        self._say(f"+{pgid}")

    def release(self, pgid: int) -> None:
        self._say(f"-{pgid}")

    def close(self) -> None:
        """End the guardian; groups still watched are reaped by it."""
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=GRACE_SECONDS + 2)
        except subprocess.TimeoutExpired:
            self._proc.kill()


if __name__ == "__main__":
    main()
