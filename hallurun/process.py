"""The hallurun process: the event loop a command runs a run in, and what SIGINT and SIGTERM do to it.

The library's run owns no signal: it is a coroutine that stops gracefully when its task is cancelled. This module,
at the command line's layer, owns the process for it:

- the first SIGINT or SIGTERM cancels the run's task, with the signal's name as the cancel message (the run
  records it in its `interrupted` event); the run stops gracefully and its result, "interrupted" (exit code 130),
  or "complete" when every item had settled, is read from the `RunHandle`;
- a second one does not wait for that stop: it kills the server trees at once, flushes what is pending (a bounded
  wait) and exits 130 on the spot;
- while the loop is being set up and torn down, and after it until the process exits, signals are only noted
  (`_Latch`).

The run re-raises the cancellation once it has stopped (asyncio's convention); `run` takes the result from the
handle instead, so the command line ends with the run's own exit code: 130, or 0 for a Ctrl-C during the final
stop of a complete run.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from rich.console import Console

from hallurun.core.handle import RunHandle
from hallurun.core.result import RunResult
from hallurun.errors import EXIT_INTERRUPTED

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A second Ctrl-C waits at most this long for a batch being written: a batch whose thread has not started yet
# cannot finish while this very handler holds the event loop, and that lines simply run again after a resume.
SECOND_SIGNAL_FLUSH_S = 2.0

T = TypeVar("T")
Main = Callable[[RunHandle], Coroutine[Any, Any, T]]


def run(main: Main[T], console: Console) -> T | RunResult | None:
    """Run `main(handle)` (e.g. `lambda h: runner.start_async(cfg, console=c, handle=h)`) in a new event loop
    under hallurun's signal handling, printing the signal messages to `console`. Returns the run's result, also
    when a signal interrupted it; None when it was interrupted before the run began (nothing was done). A command
    of several runs (`core.command.in_one_loop`) returns its own value, or raises its own stop."""
    handle = RunHandle()
    with _Latch() as latch:
        return asyncio.run(_supervise(main, handle, console, latch))


class _Signals:
    """What a signal does to the run in progress: the first cancels it, the second ends the process now."""

    def __init__(self, task: asyncio.Task[Any], handle: RunHandle, console: Console) -> None:
        self.task, self.handle, self.console = task, handle, console
        self.count = 0

    def __call__(self, name: str) -> None:
        self.count += 1
        if self.count == 1:
            if self.handle.stopping:
                # The run's work is over: the cancel lets the stop finish, so a complete run still ends as complete.
                self.console.print(f"\n{name}: already stopping the server (again to kill it at once)",
                                   highlight=False)
            else:
                self.console.print(f"\n{name}: stopping (again to exit at once)", highlight=False)
            self.task.cancel(name)
            return
        # Second signal: no more waiting, but still no orphans and nothing written lost.
        self.handle.kill_servers_now()
        self.handle.flush(wait=SECOND_SIGNAL_FLUSH_S)
        os._exit(EXIT_INTERRUPTED)


async def _supervise(main: Main[T], handle: RunHandle, console: Console, latch: _Latch) -> T | RunResult | None:
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(main(handle), name="hallurun-run")
    on_signal = _Signals(task, handle, console)
    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        for name in latch.take():
            on_signal(name)
        try:
            return await task
        except asyncio.CancelledError:
            if not task.cancelled() or on_signal.count == 0:
                raise  # not our signal's cancellation
            return handle.result
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
        latch.rearm(on_signal.count)


class _Latch:
    """SIGINT and SIGTERM while asyncio.run sets up and tears down its loop, around the loop's own handlers.

    A KeyboardInterrupt raised in the middle of the loop's teardown leaves it half closed (the chaos suite met
    `ValueError: Invalid file descriptor: -1` from its finalizer after a double Ctrl-C), so there a signal is only
    noted: one that came before the loop's handlers were in place is handed to them (`take`); one after is part of
    a stop already under way. A second one still exits at once, as a second Ctrl-C does during the run."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> _Latch:
        for sig in SIGNALS:
            self._saved[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        # The noting handlers stay: the command line's process ends right after its run, and a signal in that
        # ending (the interpreter joining its threads) was a KeyboardInterrupt traceback from `threading._shutdown`
        # on an exit-0 run (chaos seed 0: a Ctrl-C just after the last item). A second one still exits at once.
        return None

    def _note(self, signum: int, frame: object) -> None:
        self.pending.append(signal.Signals(signum).name)
        if len(self.pending) > 1:
            os._exit(EXIT_INTERRUPTED)

    def take(self) -> list[str]:
        """The signals noted so far, now handed on."""
        taken, self.pending = self.pending, []
        return taken

    def rearm(self, handled: int) -> None:
        """Note signals again, after the loop has given SIGINT back to Python's KeyboardInterrupt; after `handled`
        signals the loop already took, the next one is a second signal."""
        self.pending = ["handled by the run"] if handled else []
        for sig in self._saved:
            signal.signal(sig, self._note)
