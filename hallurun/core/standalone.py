"""A run driven from synchronous code, in an event loop of its own: the Python API's `run` and `resume`, and a
stage's default executor.

Ctrl-C there must not abandon the run: its blocking work (validating the dataset, writing the final files) runs
in worker threads that cannot be stopped, and the run lock is released only once they are done. With a plain
`asyncio.run`, a second Ctrl-C raises KeyboardInterrupt at once and tears the loop down under those threads (the
lock released while a thread still wrote, or never released in that process). Here the first Ctrl-C cancels the
run's task (the graceful stop: server stopped, results flushed), every further one only hurries it (the server
trees killed at once), and KeyboardInterrupt is raised once the run has stopped. The command line does not use
this: it owns its process, and its second Ctrl-C exits at once (`hallurun.process`).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from hallurun.core.handle import RunHandle
from hallurun.core.result import RunResult

T = TypeVar("T")
Main = Callable[[RunHandle], Coroutine[Any, Any, T]]


def run_standalone(main: Main[T]) -> T | RunResult:
    """Run `main(handle)` in a new event loop to its end; KeyboardInterrupt once an interrupted run has stopped
    (a run that had settled every item when Ctrl-C came returns its result instead). A command of several runs
    (`core.command.in_one_loop`) returns its own value, or raises its own stop."""
    return asyncio.run(_supervised(main))


async def _supervised(main: Main[T]) -> T | RunResult:
    handle = RunHandle()
    task = asyncio.create_task(main(handle), name="hallurun-run")
    interrupts = 0

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            task.cancel("SIGINT")
        else:
            handle.kill_servers_now()

    loop = asyncio.get_running_loop()
    # Signal handlers can only be set from the main thread; elsewhere Ctrl-C does not reach this loop anyway.
    own = threading.current_thread() is threading.main_thread()
    if own:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        try:
            return await task
        except asyncio.CancelledError:
            if interrupts == 0 or not task.cancelled():
                raise  # not our Ctrl-C's cancellation
        if handle.result is not None and handle.result.ok:
            return handle.result  # every item had settled: the Ctrl-C came during the final stop
        raise KeyboardInterrupt
    finally:
        if own:
            loop.remove_signal_handler(signal.SIGINT)
