"""A command made of several runs (the stages of `hallurun eval` or `hallurun generate`) on one event loop, so
that a server launched for its first stage serves every later one: a 70B judge loads once per command, not once
per judge question and retry.

The stages are driven by synchronous code (a task's scoring asks its judge one question after another), so that
code runs in a worker thread (`in_one_loop`), and each stage's run is sent back to the command's loop by the
`Host`, the stages' `Executor`. The servers live in the `Lender`, one pool per model and server setting,
launched when a stage first needs it and stopped when the command ends. While a stage borrows a pool, the
server's events (starts, restarts, POST /restart) go to that stage's `events.jsonl` and are tagged with their
replica, as in any run; between stages and at the end they go to the pool's own `events.jsonl`, beside its
`server.log`, in the folder of the first stage that needed it (`RUN/eval/<judge>/` for a judge).

Ctrl-C: the first one stops the stage in progress gracefully (its result is "interrupted", and the job's code
says how to continue) and no later stage begins; the servers are stopped when the job's thread has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from hallurun.config import RunConfig, ServerSpec
from hallurun.core.handle import RunHandle
from hallurun.core.result import RunResult
from hallurun.core.uncancellable import to_the_end
from hallurun.server import pool
from hallurun.server.supervisor import Supervisor, stop_all
from hallurun.store.durable import RunDirWriteError
from hallurun.store.events import EventLog

T = TypeVar("T")
Main = Callable[[RunHandle], Coroutine[Any, Any, RunResult]]


class _Lent:
    """One pool of servers that outlives the runs that borrow it, and the log of its life between them."""

    def __init__(self, events: EventLog, supervisors: list[Supervisor]) -> None:
        self.events, self.supervisors = events, supervisors


class Lender:
    """Servers that live as long as the command: one pool per (model, server setting), lent to each run."""

    def __init__(self, handle: RunHandle, environ: dict[str, str] | None = None) -> None:
        self.handle = handle  # the command's: a second Ctrl-C kills every pool from there
        self.environ = dict(os.environ) if environ is None else environ
        self._pools: dict[tuple[str, ServerSpec], _Lent] = {}
        self._session: aiohttp.ClientSession | None = None

    def lend(self, config: RunConfig, events: EventLog, env: dict[str, str],
             api_key: str | None) -> tuple[aiohttp.ClientSession, list[Supervisor]]:
        """The session and the supervisors for `config`'s server, made on first use; their events now go to the
        borrowing run's `events` (each tagged with its replica). Their servers are started by the run's
        scheduler when not up yet, and stay up when it ends."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector,
                                                  timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))
        key = (config.model, config.server)
        lent = self._pools.get(key)
        if lent is None:
            folder = config.run_dir.parent  # the first stage's folder's parent: RUN/eval/<judge>/ for a judge
            home = _home_config(config, folder)
            log = EventLog(folder)
            supervisors = [Supervisor(home, log.tagged(replica=slot.index), self._session, env, api_key=api_key,
                                      slot=slot) for slot in pool.slots(config.server, self.environ)]
            lent = self._pools[key] = _Lent(log, supervisors)
            self.handle.attach(supervisors=[s for p in self._pools.values() for s in p.supervisors])
        for supervisor in lent.supervisors:
            supervisor.events = events.tagged(replica=supervisor.slot.index)
        return self._session, lent.supervisors

    def give_back(self, supervisors: list[Supervisor]) -> None:
        """The run that borrowed `supervisors` has ended: their events go to the pool's own log again (the run's
        is about to close)."""
        for lent in self._pools.values():
            if lent.supervisors is supervisors:
                for supervisor in supervisors:
                    supervisor.events = lent.events.tagged(replica=supervisor.slot.index)

    async def release(self, config: RunConfig) -> None:
        """Stop the pool `config`'s runs borrowed, whole, now (a sweep's next model needs the GPUs); a later run
        of it launches a new one."""
        lent = self._pools.pop((config.model, config.server), None)
        if lent is None:
            return
        try:
            await stop_all(lent.supervisors)  # still the handle's meanwhile: a second Ctrl-C kills them
        finally:
            lent.events.close()
            self.handle.attach(supervisors=[s for p in self._pools.values() for s in p.supervisors])

    async def close(self) -> None:
        """Stop every pool's servers whole, then close the session and the pools' logs."""
        try:
            await stop_all([s for lent in self._pools.values() for s in lent.supervisors])
        finally:
            for lent in self._pools.values():
                lent.events.close()
            if self._session is not None:
                await self._session.close()


def _home_config(config: RunConfig, folder: Path) -> RunConfig:
    """The pool's configuration: the first borrower's, living in `folder` (its server.log, the server's working
    directory)."""
    return dataclasses.replace(config, run_dir=folder)


class Host:
    """The stages' `Executor`: called from the job's thread, it runs each stage's run on the command's loop with
    the command's servers, and returns its result (the interrupted one after a Ctrl-C; None when the command was
    interrupted before the stage began)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, lender: Lender, handle: RunHandle) -> None:
        self.loop, self.lender, self.handle = loop, lender, handle
        self._current: asyncio.Task[Any] | None = None
        self._stopped: str | None = None  # the signal that stopped the command, once one has

    def __call__(self, main: Main) -> RunResult | None:
        return asyncio.run_coroutine_threadsafe(self._stage(main), self.loop).result()

    async def _stage(self, main: Main) -> RunResult | None:
        if self._stopped is not None:
            return None  # no stage begins once the command is stopping
        inner = RunHandle(servers=self.lender)
        self._current = asyncio.current_task()
        self.handle.follow(inner)
        try:
            return await main(inner)
        except asyncio.CancelledError:
            if self._stopped is None:
                raise
            return inner.result  # the graceful stop's result, as the runner left it
        finally:
            self._current = None
            self.handle.follow(None)

    def release(self, config: RunConfig) -> None:
        """From the job's thread: stop the servers that `config`'s runs borrowed (`Lender.release`)."""
        asyncio.run_coroutine_threadsafe(to_the_end(self.lender.release(config), lambda again: None),
                                         self.loop).result()

    def stop(self, reason: str) -> None:
        """Stop the stage in progress gracefully, and begin no other. On the command's loop."""
        self._stopped = reason
        if self._current is not None:
            self._current.cancel(reason)


async def in_one_loop(job: Callable[[Host], T], handle: RunHandle) -> T:
    """Run `job(host)` in a worker thread, its stages on this loop (through `host`), and return what it returns
    (or raise what it raises: a stage stopped by Ctrl-C ends the job with its own RunStopped). Every server the
    stages launched is stopped at the end, to its end. A cancellation of this task is the Ctrl-C: it stops the
    stage in progress and waits for the job to end."""
    lender = Lender(handle)
    host = Host(asyncio.get_running_loop(), lender, handle)
    work = asyncio.ensure_future(asyncio.to_thread(job, host))
    me = asyncio.current_task()
    try:
        while True:
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError as exc:
                if work.done():
                    raise
                if me is not None:
                    me.uncancel()  # taken in hand: the job ends by its own account of the stop
                host.stop(str(exc.args[0]) if exc.args and exc.args[0] else "cancelled")
    finally:
        with contextlib.suppress(RunDirWriteError):
            await to_the_end(lender.close(), lambda again: None)
