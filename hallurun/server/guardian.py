"""The guardian: a tiny sidecar that stops the server's process trees if hallurun dies without doing so.

hallurun keeps the write end of a pipe to the guardian's stdin and tells it, line by line, which launch is about
to start (`?TOKEN`, before the fork: a hallurun killed between the fork and the next line still leaves the
guardian the token to sweep by), which servers it owns (`+PGID TOKEN`) and which it has already stopped
(`-PGID`). When the pipe reaches EOF (hallurun has exited by any means, `kill -9` included) the guardian
terminates every server still listed: TERM, a grace period, then KILL.
This covers what a parent-death signal cannot: the server's own children.

A server's tree is more than its process group: a helper that calls `setsid` (a daemon, a worker pool) leaves
the group and the session. Every process of a launch inherits `HALLURUN_SERVER_ID=TOKEN` in its environment, so
the tree is: the server's session, plus every process that carries its token. The token is per launch, not per
run directory, so that a guardian still reaping a killed hallurun's server never touches the server of the
`resume` that followed it. This module also holds the `/proc` reading that finds a tree, for the supervisor.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the guardian process itself starts without asyncio
    import asyncio

GRACE_SECONDS = 5.0
SERVER_ID_ENV = "HALLURUN_SERVER_ID"
POLL_SECONDS = 0.05  # no event tells us when processes outside our own children have exited


@dataclass(frozen=True)
class Server:
    """One launched server: its process group (== its session, since it leads a new one; 0 while the launch is
    only announced) and its token."""

    pgid: int
    token: str

    @property
    def marker(self) -> bytes:
        """The environment entry every process of this launch carries."""
        return f"{SERVER_ID_ENV}={self.token}".encode()


def tree_pids(servers: Iterable[Server], exclude: Iterable[int] = ()) -> set[int]:
    """Live processes (not zombies) of these servers' trees: in one of their sessions, or carrying a token."""
    sessions = {s.pgid for s in servers if s.pgid > 0}
    markers = {s.marker for s in servers}
    skip = {os.getpid(), *exclude}
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            if fields[0] == b"Z":
                continue
            if int(fields[3]) not in sessions:
                # Only our own user's environments are readable; another user's process is not ours anyway.
                with open(f"/proc/{name}/environ", "rb") as fh:
                    if markers.isdisjoint(fh.read().split(b"\0")):
                        continue
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        found.add(int(name))
    return found


def signal_trees(servers: Iterable[Server], sig: int, exclude: Iterable[int] = ()) -> set[int]:
    """Send `sig` to each server's process group and to every other process of its tree; returns those pids."""
    servers = list(servers)
    for server in servers:
        if server.pgid > 0:  # 0 would be the caller's own group
            _signal_group(server.pgid, sig)
    pids = tree_pids(servers, exclude)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    return pids


def reap_trees(servers: Iterable[Server], grace: float = GRACE_SECONDS, exclude: Iterable[int] = ()) -> None:
    """TERM every tree, wait up to `grace` for them to exit, then KILL what remains."""
    servers = list(servers)
    signal_trees(servers, signal.SIGTERM, exclude)
    deadline = time.monotonic() + grace
    while tree_pids(servers, exclude) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    signal_trees(servers, signal.SIGKILL, exclude)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def read_protocol(lines: Iterable[str]) -> dict[str, Server]:
    """The servers still owned once `lines` (the guardian's stdin) end, by token: `?TOKEN` announces a launch,
    `+PGID TOKEN` adds its server, `-PGID` removes it."""
    servers: dict[str, Server] = {}
    for line in lines:
        line = line.strip()
        if line.startswith("?"):
            servers[line[1:]] = Server(0, line[1:])
        elif line.startswith("+"):
            pgid, _, token = line[1:].partition(" ")
            servers[token] = Server(int(pgid), token)
        elif line.startswith("-"):
            gone = int(line[1:])
            servers = {token: server for token, server in servers.items() if server.pgid != gone}
    return servers


def main() -> None:
    """Read servers from stdin until EOF, then reap the trees still owned."""
    # The guardian must outlive hallurun's terminal signals to do its job.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    servers = read_protocol(sys.stdin)
    if servers:
        reap_trees(servers.values())


class Guardian:
    """hallurun's handle on its guardian process."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "hallurun.server.guardian"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, text=True,
        )
        self._exit_watch: tuple[asyncio.AbstractEventLoop, int] | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        """False once the guardian process has exited (someone killed it)."""
        return self._proc.poll() is None

    def on_exit(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        """Have `loop` call `callback` if the guardian process exits before `close`: a pidfd becomes readable."""
        pidfd = os.pidfd_open(self._proc.pid)
        self._exit_watch = (loop, pidfd)
        loop.add_reader(pidfd, callback)

    def _say(self, line: str) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # dead guardian, or a closed pipe: its replacement is told instead
            pass

    def expect(self, token: str) -> None:
        """A launch with this token is about to start."""
        self._say(f"?{token}")

    def watch(self, server: Server) -> None:
        self._say(f"+{server.pgid} {server.token}")

    def release(self, pgid: int) -> None:
        self._say(f"-{pgid}")

    def forget(self) -> None:
        """Stop watching the guardian's exit (it is being closed, or has died and been replaced)."""
        if self._exit_watch is not None:
            loop, pidfd = self._exit_watch
            self._exit_watch = None
            loop.remove_reader(pidfd)
            os.close(pidfd)

    def close(self) -> None:
        """End the guardian; servers still watched are reaped by it."""
        self.forget()
        if self._proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=GRACE_SECONDS + 2)
        except subprocess.TimeoutExpired:
            self._proc.kill()


if __name__ == "__main__":
    main()
