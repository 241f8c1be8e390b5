"""One runner per run directory: an advisory lock that the OS releases when its holder dies, even by kill -9."""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

import orjson

from hallurun.errors import EXIT_BUSY, UsageError

LOCK = "lock"
BRIEF_HOLD_S = 2.0  # far longer than `hallurun status` holds it


class LockError(UsageError):
    """The run directory's lock cannot be taken: its file cannot be opened, or the filesystem has no flock."""


class RunDirBusy(LockError):
    """The run directory is held by another live hallurun: exit 75, for a scheduler "try again later" (an earlier
    attempt of the same shard that has not ended yet, or whose lock the filesystem has not released yet)."""

    exit_code = EXIT_BUSY


class RunLock:
    """Holds `RUN_DIR/lock` for the life of the run."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise LockError naming the holder."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LockError(f"{self.path}: cannot open it ({exc.strerror or exc}); is the run directory "
                            "writable?") from None
        # `hallurun status` takes the lock shared for an instant to see whether a run is live: a start that meets
        # it tries again for a moment rather than refusing.
        deadline = time.monotonic() + BRIEF_HOLD_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)  # flock has no timed wait; a blocking one could wait for a live run forever
                    continue
                holder = self._describe_holder(fd)
                os.close(fd)
                raise RunDirBusy(f"{self.path.parent} is in use by {holder}; wait for it or stop it first") from None
            except OSError as exc:
                # Lustre mounted without `-o flock`, some FUSE filesystems: no lock at all is no safety at all.
                os.close(fd)
                raise LockError(f"{self.path}: this filesystem cannot lock it ({exc.strerror or exc}); put the run "
                                "folder on one that supports flock (Lustre: mount with -o flock; see "
                                "docs/scaling.md)") from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "argv": sys.argv[:3]}
        os.write(fd, orjson.dumps(info) + b"\n")
        self._fd = fd

    @staticmethod
    def _describe_holder(fd: int) -> str:
        try:
            info = orjson.loads(os.pread(fd, 4096, 0))
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
            return f"hallurun pid {info['pid']} on {info['host']} (since {since})"
        except (orjson.JSONDecodeError, KeyError, TypeError, OSError):
            return "another hallurun process"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def running_pid(run_dir: Path) -> int | None:
    """The pid holding the run's lock, or None if no hallurun is running it."""
    path = run_dir / LOCK
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return int(orjson.loads(os.pread(fd, 4096, 0))["pid"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return -1  # held, by a holder that has not written its pid yet
    except OSError:
        return None  # a filesystem without flock (no run could have taken the lock there either)
    finally:
        os.close(fd)
    return None
