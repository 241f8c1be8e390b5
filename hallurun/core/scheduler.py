"""The scheduler: keeps up to `concurrency` requests in flight and reacts to what the watchdog sees.

It owns three kinds of task under one TaskGroup: `concurrency` workers (each takes the next item whenever it
may and runs it to its end), the monitor (wedges, crashes, stalled streams) and the flusher (checkpoint batches).
Recovery from a wedge, a crash or an outage is done by the monitor alone, so there is exactly one restart per
incident however many requests notice it: it cancels the workers whose requests are in flight, puts their items
back, restarts the server once and replaces the workers. An outage (requests refused) is waited out first: an
item never fails, nor spends an attempt, because the server was not there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from tenacity import RetryCallState

from hallurun.config import RunConfig
from hallurun.core.counters import RunStats
from hallurun.core.poison import PoisonTracker
from hallurun.errors import ServerError
from hallurun.server.supervisor import ServerStartError, Supervisor
from hallurun.store.checkpoint import Checkpoint
from hallurun.store.dataset import Item
from hallurun.store.durable import write_atomic
from hallurun.store.events import EventLog
from hallurun.wire.client import Client, Completion
from hallurun.wire.policy import RequestError, RetryPolicy, ServerDown, is_connect_failure, is_stale_connection
from hallurun.wire.watchdog import Activity, Flight, inspect

POISON = "poison.json"  # the evidence against suspects of poison, across sessions
FLUSH_INTERVAL = 0.2  # seconds between checkpoint batches
FLUSH_BATCH = 512  # a batch this large is written at once


def idle_workers_may_act(*, queued: bool, running: int) -> bool:
    """Whether the end of a job gives the workers waiting for one something to do: a job put back in the queue,
    or nothing left running (a suspect of poison may now go alone; after one that ran alone, the others may go
    again; or every item has settled). Any other end leaves them nothing. Once the dataset is exhausted, each
    worker whose job ends joins the waiters, and waking them all at every later end made a 1,000-item run at
    concurrency 256 check for work 16,135 times instead of 1,511, in the tail of the run, on the cores the
    server needs to finish it."""
    return queued or running == 0


def _load_poison(path: Path) -> PoisonTracker:
    """The evidence an earlier session left, if any."""
    try:
        return PoisonTracker.from_json(orjson.loads(path.read_bytes()))
    except (OSError, orjson.JSONDecodeError):
        return PoisonTracker()


class RestartBudgetExhausted(ServerError):
    """The server needed more restarts than `--max-restarts` allows."""


@dataclass(eq=False)
class Job:
    """An item and the attempts it has spent; a requeued job keeps its count."""

    item: Item
    attempts: int = 0


@dataclass(eq=False)
class _Running:
    job: Job
    flight: Flight
    task: asyncio.Task[None]


class Scheduler:
    """Runs every unsettled item to a result or a recorded failure."""

    def __init__(self, config: RunConfig, items: Iterator[Item], checkpoint: Checkpoint, events: EventLog,
                 supervisor: Supervisor, client: Client, activity: Activity, stats: RunStats) -> None:
        self.config = config
        self.checkpoint = checkpoint
        self.events = events
        self.supervisor = supervisor
        self.client = client
        self.activity = activity
        self.stats = stats
        self.policy = RetryPolicy(max_attempts=config.max_attempts)
        self.poison = _load_poison(config.run_dir / POISON)
        self._items = (item for item in items if not checkpoint.is_settled(item.id))
        self._items_left = True
        self._front: deque[Job] = deque()  # requeued jobs, ahead of fresh items
        self._solo: deque[Job] = deque()  # suspects of poison, each run with nothing else in flight
        self._running: dict[str, _Running] = {}
        self._solo_in_flight = 0  # suspects of poison in flight (0 or 1): nothing else may start meanwhile
        self._gate = asyncio.Event()  # open while dispatch may proceed; closed during a restart
        self._changed = asyncio.Event()  # something an idle worker waits on has changed
        self._trouble = asyncio.Event()  # a request could not reach the server (refused, or its process gone)
        self._finished = asyncio.Event()  # every item settled, or a fatal error
        self._flush_soon = asyncio.Event()  # a checkpoint batch is full
        self._fatal: Exception | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._workers: set[asyncio.Task[None]] = set()
        self._boarded_since_start = 0  # items dispatched to the current server process since it started

    async def run(self) -> None:
        """Dispatch until every item is settled. Raises RestartBudgetExhausted or ServerStartError."""
        loop = asyncio.get_running_loop()
        self.activity.touch(loop.time())
        self._gate.set()
        self.stats.server_state = "running"
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                monitor = tg.create_task(self._monitor(), name="monitor")
                flusher = tg.create_task(self._flusher(), name="flusher")
                self._top_up_workers()
                await self._finished.wait()
                monitor.cancel()
                flusher.cancel()
                for worker in self._workers:
                    worker.cancel()
        finally:
            self.checkpoint.flush()
        if self._fatal is not None:
            raise self._fatal

    # -- dispatch ---------------------------------------------------------------------------------------
    # A fixed pool of workers rather than a task per item: at thousands of requests a second, creating and
    # scheduling a task per item (and waking a dispatcher after each) was a tenth of the client's CPU.

    def _top_up_workers(self) -> None:
        assert self._tg is not None
        self._workers = {w for w in self._workers if not w.done()}
        while len(self._workers) < self.config.concurrency:
            worker = self._tg.create_task(self._worker())
            self._workers.add(worker)

    async def _worker(self) -> None:
        """Run one job at a time, taking the next whenever it may go, until every item is settled."""
        me = asyncio.current_task()
        assert me is not None
        while True:
            if me.cancelling():
                # A cancel swallowed below us must still end this worker: a recovery is waiting for it.
                raise asyncio.CancelledError
            self._changed.clear()
            if self._fatal is not None:
                return
            # A closed gate means a recovery is under way: its jobs are on their way back to the queue.
            if self._gate.is_set():
                job, solo = self._next_job()
                if job is not None:
                    await self._run_job(job, self._board(job, solo, me))
                    continue
                if self._all_settled():
                    self._finished.set()
                    return
            await self._changed.wait()

    def _all_settled(self) -> bool:
        return not self._running and not self._front and not self._solo and not self._items_left

    def _next_job(self) -> tuple[Job | None, bool]:
        """The next job to send, if one may go now, and whether it must run alone. (The concurrency cap is the
        size of the worker pool: a worker asking holds no job.)"""
        if self._solo_in_flight:
            return None, False
        if self._solo:
            return (self._solo.popleft(), True) if not self._running else (None, False)
        while True:
            job = self._take()
            if job is None:
                return None, False
            if self.poison.is_suspect(job.item.id):
                self._solo.append(job)
                return self._next_job()
            return job, False

    def _take(self) -> Job | None:
        if self._front:
            return self._front.popleft()
        if self._items_left:
            item = next(self._items, None)
            if item is not None:
                return Job(item)
            self._items_left = False
        return None

    def _board(self, job: Job, solo: bool, worker: asyncio.Task[None]) -> Flight:
        """Register `job` as in flight on `worker`; its Flight is what the watchdog reads."""
        flight = Flight(job.item.id, solo=solo)  # on the wire once its attempt is sent
        self._running[job.item.id] = _Running(job, flight, worker)
        self._boarded_since_start += 1
        self._solo_in_flight += solo
        self.stats.in_flight = len(self._running)
        return flight

    def _requeue_front(self, jobs: list[Job]) -> None:
        for job in reversed(jobs):
            self._front.appendleft(job)

    # -- one item --------------------------------------------------------------------------------------

    async def _run_job(self, job: Job, flight: Flight) -> None:
        began = asyncio.get_running_loop().time()
        try:
            completion = await self._with_retries(job, flight)
        except RequestError as exc:
            self._record_failure(job, exc.reason, str(exc))
        except ServerDown:
            # Not the item's fault: it goes back without spending an attempt, and waits while the monitor finds
            # out whether the server comes back by itself or must be restarted.
            self._requeue_front([job])
            self._gate.clear()
            self._trouble.set()
        else:
            self._record_result(job, completion, asyncio.get_running_loop().time() - began)
        finally:
            self._running.pop(job.item.id, None)
            self._solo_in_flight -= flight.solo
            self.stats.in_flight = len(self._running)
            if idle_workers_may_act(queued=bool(self._front or self._solo), running=len(self._running)):
                self._changed.set()

    async def _with_retries(self, job: Job, flight: Flight) -> Completion:
        spent = job.attempts
        try:
            return await self._attempt(job, flight)
        except RequestError as exc:
            failure: RequestError | None = exc
        # Most items need one attempt, and tenacity's loop costs a tenth of the client's CPU at high request
        # rates, so it is entered only after a failure. It replays that failure as its own first attempt, so
        # its stops and waits are exactly those it would have chosen had it run the first attempt itself.
        async for attempt in self.policy.retrying(spent, self._on_retry):
            with attempt:
                if failure is not None:
                    replayed, failure = failure, None
                    raise replayed
                return await self._attempt(job, flight)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _attempt(self, job: Job, flight: Flight) -> Completion:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.request_timeout) as deadline:
                # On the wire only inside the attempt's timeout: a flight between attempts (sleeping before a
                # retry) has no deadline to cut and no clock to be judged silent by.
                now = loop.time()
                flight.new_attempt(now, deadline)
                self.activity.sent(now)
                try:
                    try:
                        completion = await self.client.complete(job.item.prompt, flight)
                    except aiohttp.ClientError as exc:
                        if not is_stale_connection(exc):
                            raise
                        # Sent again at once, within the same attempt: the server dropped the connection, not
                        # the request. A second failure takes the ordinary way below.
                        self.stats.resent += 1
                        flight.new_attempt(loop.time())  # judged by its own stream, not the dropped one's clocks
                        completion = await self.client.complete(job.item.prompt, flight)
                finally:
                    flight.end_attempt()
                    self.activity.ended(loop.time())
        except aiohttp.ClientError as exc:
            # A refusal is the server being down, whatever its process does; a connection that broke under a
            # request is the item's failure unless the server turns out to be gone: its process exited, or it no
            # longer answers /health (an external server going away resets every stream on it: the chaos suite
            # saw items fail as `connection` from one outage).
            if (is_connect_failure(exc) or await self.supervisor.has_exited()
                    or not await self.supervisor.answers()):
                raise ServerDown(f"{type(exc).__name__}: {exc}") from exc
            job.attempts += 1
            raise RequestError("connection", f"{type(exc).__name__}: {exc}", retryable=True) from exc
        except TimeoutError:
            job.attempts += 1
            if flight.stalled:
                raise RequestError("stalled", "the stream went quiet while the server kept streaming others",
                                   retryable=True) from None
            raise RequestError("request_timeout", f"no answer within {self.config.request_timeout}s",
                               retryable=True) from None
        except RequestError:
            job.attempts += 1
            raise
        job.attempts += 1
        return completion

    def _on_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1

    def _record_result(self, job: Job, completion: Completion, latency: float) -> None:
        self.poison.forget(job.item.id)
        record = {
            "id": job.item.id,
            **job.item.record,
            "generation": completion.text,
            "finish_reason": completion.finish_reason,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "latency_s": round(latency, 4),
            "attempts": job.attempts,
        }
        record["id"] = job.item.id
        if self.checkpoint.add_result(record):
            self.stats.done += 1
        self._maybe_flush()

    def _record_failure(self, job: Job, reason: str, error: str) -> None:
        self.poison.forget(job.item.id)
        if self.checkpoint.add_failure(job.item.id, reason, error, job.attempts):
            self.stats.failed += 1
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self.checkpoint.pending >= FLUSH_BATCH:
            self._flush_soon.set()

    # -- monitoring and recovery -----------------------------------------------------------------------

    async def _flusher(self) -> None:
        while True:
            # Batches are cut by time, or sooner by size.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_INTERVAL):
                    await self._flush_soon.wait()
            self._flush_soon.clear()
            await self.checkpoint.flush_in_thread()

    async def _monitor(self) -> None:
        loop = asyncio.get_running_loop()
        tick = min(1.0, self.config.stall_timeout / 5)
        while self._fatal is None:
            try:
                async with asyncio.timeout(tick):
                    await self._trouble.wait()
            except TimeoutError:
                pass
            if self.supervisor.managed and self.supervisor.returncode is not None:
                await self._recover("server_exited")
                continue
            if self._trouble.is_set():
                await self._outage()
                continue
            flights = [r.flight for r in self._running.values()]
            metrics = self.stats.metrics
            queue_seen = metrics.sampled_at if metrics.waiting else None
            verdict = inspect(loop.time(), flights, self.activity, self.config.stall_timeout, queue_seen)
            if verdict.wedged:
                await self._recover("wedge", quiet_s=round(verdict.quiet_for, 2))
                continue
            for flight in verdict.stalled:
                flight.cut(loop.time())

    async def _outage(self) -> None:
        """Requests could not reach the server: wait for it to answer again, restarting it only if it does not.
        Meanwhile the gate stays closed and the items that were refused wait at the front of the queue."""
        if await self.supervisor.has_exited():
            await self._recover("server_exited")
            return
        self.stats.server_state = "unreachable"
        self.events.emit("server_unreachable", in_flight=len(self._running))
        began = time.monotonic()
        back = await self.supervisor.wait_answering(began + self.supervisor.restart_wait)
        waited = round(time.monotonic() - began, 2)
        if back:
            self.events.emit("server_back", waited_s=waited)
            self._reopen()
        elif self.supervisor.managed and self.supervisor.returncode is not None:
            await self._recover("server_exited")
        else:
            await self._recover("unreachable", waited_s=waited)

    async def _recover(self, cause: str, **detail: object) -> None:
        """Stop everything in flight, put it back, restart the server once, reopen dispatch."""
        self._gate.clear()
        running = list(self._running.values())
        ids = [r.job.item.id for r in running]
        quarantine: list[str] = []
        solo: str | None = None
        if cause == "wedge":
            self.stats.wedges += 1
            # Only requests on the wire met the wedge; one sleeping before a retry was not waiting on it.
            wire = [r.job.item.id for r in running if r.flight.on_wire]
            solo = next((r.job.item.id for r in running if r.flight.solo), None)
            flat = self.stats.metrics.tokens_flat_for(asyncio.get_running_loop().time())
            self.events.emit("hang_detected", in_flight=len(ids), on_wire=len(wire), items=ids[:64],
                             tokens_flat_s=None if flat is None else round(flat, 1), **detail)
            quarantine = self.poison.on_wedge(wire, solo, fresh=self._boarded_since_start == 1)
            # Kept for the next session: a resume after Ctrl-C (or a spent --max-restarts) goes on from this
            # evidence instead of paying for it again. Wedges are rare, so one small write each costs nothing.
            write_atomic(self.config.run_dir / POISON, orjson.dumps(self.poison.to_json()))
        elif cause == "server_exited":
            self.stats.crashes += 1
            self.events.emit("server_exited", returncode=self.supervisor.returncode, in_flight=len(ids))
        for r in running:
            r.task.cancel()
        await asyncio.gather(*(r.task for r in running), return_exceptions=True)
        back = []
        for r in running:
            if r.job.item.id in quarantine:
                self._quarantine(r.job)
            else:
                back.append(r.job)
        if cause == "wedge" and not self.config.enable_restart:
            self._requeue_front(self._spend_attempt(back))
            self._reopen()
            return
        if cause == "wedge" and solo is not None and back:
            # A suspect that wedged the server alone (it runs with nothing else in flight, so `back` is that one
            # job) and was not convicted goes alone again, first: the next evidence is then that of the freshly
            # started server this restart brings.
            self._solo.appendleft(back.pop())
        self._requeue_front(back)
        if not self.config.enable_restart:
            what = "exited" if cause == "server_exited" else f"did not answer for {detail.get('waited_s')} s"
            self._fail(ServerStartError(f"the server {what} and ENABLE_SERVER_RESTART is off"))
            return
        if self.stats.restarts >= self.config.max_restarts:
            self._fail(RestartBudgetExhausted(
                f"the server needed more than --max-restarts={self.config.max_restarts} restarts"))
            return
        self.stats.restarts += 1
        self.stats.server_state = "restarting"
        try:
            took = await self.supervisor.restart()
        except ServerStartError as exc:
            self._fail(exc)
            return
        self.client.retarget(self.supervisor.base_url)
        self._boarded_since_start = 0
        self.events.emit("server_restarted", cause=cause, restarts=self.stats.restarts, startup_s=round(took, 2),
                         requeued=len(running) - len(quarantine), managed=self.supervisor.managed)
        self._reopen()

    def _reopen(self) -> None:
        self._trouble.clear()
        self.activity.touch(asyncio.get_running_loop().time())
        self.stats.server_state = "running"
        self._gate.set()
        self._top_up_workers()  # in place of those cancelled with their requests
        self._changed.set()

    def _fail(self, exc: Exception) -> None:
        # Set here rather than left to a worker: the recovery may have cancelled every one of them.
        self._fatal = exc
        self._finished.set()

    def _spend_attempt(self, jobs: list[Job]) -> list[Job]:
        """Without restarts a wedge is only a timeout: each job pays an attempt, and may run out."""
        keep = []
        for job in jobs:
            job.attempts += 1
            if job.attempts >= self.config.max_attempts:
                self._record_failure(job, "stalled", "the server stopped answering and restarts are disabled")
            else:
                keep.append(job)
        return keep

    def _quarantine(self, job: Job) -> None:
        self.stats.quarantined += 1
        self._record_failure(job, "poison", "the server wedged each time this item was in flight, the last two times "
                                            "alone on a freshly started server")
        self.events.emit("item_quarantined", id=job.item.id)
