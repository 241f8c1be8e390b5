"""Work that a cancellation must not cut short, in a run stopped by cancelling its task.

Stopping a server cut off halfway leaves an orphan; a results file closed halfway leaves a torn line; a worker
thread cannot be stopped at all. Each of these is awaited to its end through any cancellation, and the
cancellation is then raised (or noted, where the run decides what it means) rather than lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def to_the_end(work: Awaitable[T], on_cancel: Callable[[asyncio.CancelledError], None]) -> T:
    """Await `work` to its end even if this task is cancelled meanwhile; each cancellation is handed to
    `on_cancel` (which notes it, for the caller to raise once the run has ended), not raised here."""
    future = asyncio.ensure_future(work)
    while True:
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError as exc:
            if future.cancelled():
                raise  # the work itself was cancelled, not this task: nothing is left to wait for
            on_cancel(exc)


async def in_thread(fn: Callable[..., T], *args: Any, undo: Callable[[T], None] | None = None) -> T:
    """`fn(*args)` in a worker thread, leaving the event loop free (validating a million records takes seconds).

    A thread cannot be stopped: cancelled meanwhile, this waits for it to end, undoes what it did (`undo`, e.g.
    release the lock it took) and then raises the cancellation, so that nothing it did outlives the cancelled run.
    """
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError as cancelled:
        try:
            done = await to_the_end(future, lambda again: None)
        except Exception:
            raise cancelled from None  # what it would have raised no longer matters: the run is cancelled
        if undo is not None:
            undo(done)
        raise
