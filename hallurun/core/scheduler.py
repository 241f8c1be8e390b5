"""The scheduler: keeps up to `concurrency` requests in flight on each replica of the pool and reacts to what
the watchdog sees on each.

It owns, under one TaskGroup, the flusher (checkpoint batches) and a lane per replica: the lane starts its
server, then runs its monitor (wedges, crashes, stalled streams), and its `concurrency` workers each take the
next item whenever the replica may take one and run it to its end. All workers take from one queue, so an item
goes to whichever healthy replica has a free slot first: dispatch to the least loaded, by construction.
Recovery from a wedge, a crash or an outage is done by the replica's monitor alone, so there is exactly one
restart per incident however many requests notice it: it cancels the workers whose requests are in flight on
that replica, puts their items back at the front of the queue (the other replicas take them at once, no attempt
charged), restarts that server once and replaces the workers; the other replicas never pause. An outage
(requests refused) is waited out first: an item never fails, nor spends an attempt, because a server was not
there. A replica that cannot be started again is retired, and the run goes on with the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
from tenacity import RetryCallState

from hallurun.config import RunConfig
from hallurun.core.counters import RunStats
from hallurun.core.poison import PoisonTracker
from hallurun.core.replica import Job, Replica, Running
from hallurun.errors import ServerError
from hallurun.server.supervisor import PortInUse, ServerRefusesRun, ServerStartError
from hallurun.store.checkpoint import Checkpoint
from hallurun.store.dataset import Item
from hallurun.store.durable import write_atomic
from hallurun.wire.client import Completion
from hallurun.wire.policy import RequestError, RetryPolicy, ServerDown, is_connect_failure, is_stale_connection
from hallurun.wire.watchdog import Flight, inspect

POISON = "poison.json"  # the evidence against suspects of poison, across sessions
FLUSH_INTERVAL = 0.2  # seconds between checkpoint batches
FLUSH_BATCH = 512  # a batch this large is written at once
# How long (in windows) a silent engine has to answer one token before it is wedged. The bench's bursty mock
# (pauses of 3-6 s at a 2 s window) restarted healthy replicas with only the silence to go on.
PROBE_WINDOWS = 2.0


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


class Scheduler:
    """Runs every unsettled item to a result or a recorded failure, on every replica of the pool."""

    def __init__(self, config: RunConfig, items: Iterator[Item], checkpoint: Checkpoint, stats: RunStats,
                 replicas: list[Replica], say: Callable[[str], None] = lambda line: None) -> None:
        self.config = config
        self.checkpoint = checkpoint
        self.stats = stats
        self.replicas = replicas
        self.say = say  # a line on screen (a replica retired)
        stats.replicas = [r.stats for r in replicas]
        self.policy = RetryPolicy(max_attempts=config.max_attempts)
        self.poison = _load_poison(config.run_dir / POISON)
        self._items = (item for item in items if not checkpoint.is_settled(item.id))
        self._items_left = True
        self._front: deque[Job] = deque()  # requeued jobs, ahead of fresh items
        self._solo: deque[Job] = deque()  # suspects of poison, each run with nothing else in flight on its replica
        self._solo_host: Replica | None = None  # the replica that runs the suspects now (it drains for them)
        self._changed = asyncio.Event()  # something an idle worker waits on has changed
        self._finished = asyncio.Event()  # every item settled, or a fatal error
        self._flush_soon = asyncio.Event()  # a checkpoint batch is full
        self._fatal: Exception | None = None
        self._tg: asyncio.TaskGroup | None = None

    async def run(self) -> None:
        """Start every replica and dispatch until every item is settled. Raises RestartBudgetExhausted or
        ServerStartError (PortInUse, ServerRefusesRun) once no replica is left to serve."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                flusher = tg.create_task(self._flusher(), name="flusher")
                lanes = [tg.create_task(self._lane(r), name=f"replica-{r.index}") for r in self.replicas]
                await self._finished.wait()
                flusher.cancel()
                for task in lanes:
                    task.cancel()
                for r in self.replicas:
                    for worker in r.workers:
                        worker.cancel()
        finally:
            self.checkpoint.flush()
        if self._fatal is not None:
            raise self._fatal

    async def _lane(self, r: Replica) -> None:
        """One replica's life in the run: its first start, then its monitor until the run ends or it retires."""
        try:
            if r.supervisor.up:
                await r.supervisor.fits(self.config)  # lent by the command, still up from an earlier stage
            else:
                await r.supervisor.start()
        except (PortInUse, ServerRefusesRun) as exc:
            self._fail(exc)  # the user's --port or --max-tokens: no other replica does better
            return
        except ServerStartError as exc:
            await self._retire(r, exc)
            return
        r.client.retarget(r.supervisor.base_url)
        self._reopen(r)
        await self._monitor(r)

    # -- dispatch ---------------------------------------------------------------------------------------
    # A fixed pool of workers rather than a task per item: at thousands of requests a second, creating and
    # scheduling a task per item (and waking a dispatcher after each) was a tenth of the client's CPU.

    def _top_up_workers(self, r: Replica) -> None:
        assert self._tg is not None
        r.workers = {w for w in r.workers if not w.done()}
        while len(r.workers) < self.config.concurrency:
            r.workers.add(self._tg.create_task(self._worker(r)))

    async def _worker(self, r: Replica) -> None:
        """Run one job at a time on replica `r`, taking the next whenever it may go, until every item is settled."""
        me = asyncio.current_task()
        assert me is not None
        while True:
            if me.cancelling():
                # A cancel swallowed below us must still end this worker: a recovery is waiting for it.
                raise asyncio.CancelledError
            self._changed.clear()
            if self._fatal is not None or r.retired:
                return
            # A closed gate means a recovery of this replica is under way: its jobs are on their way back.
            if r.gate.is_set():
                job, solo = self._next_job(r)
                if job is not None:
                    await self._run_job(r, job, self._board(r, job, solo, me))
                    continue
                if self._all_settled():
                    self._finished.set()
                    return
            await self._changed.wait()

    def _all_settled(self) -> bool:
        # A recovery holds its jobs between cancelling them and putting them back: while the other replicas go on,
        # "nothing queued, nothing running" is not yet "all settled" (a pool of two once ended three items short).
        return (not self._front and not self._solo and not self._items_left
                and not any(r.running or r.held for r in self.replicas))

    def _next_job(self, r: Replica) -> tuple[Job | None, bool]:
        """The next job to send to `r`, if one may go now, and whether it must run alone there. (The concurrency
        cap is the size of the replica's worker pool: a worker asking holds no job.) Suspects of poison go to one
        replica at a time, which stops taking other work until it has nothing in flight; the others go on."""
        if r.solo_in_flight:
            return None, False
        while True:
            if self._solo and self._solo_host in (None, r):
                self._solo_host = r
                return (self._solo.popleft(), True) if not r.running else (None, False)
            job = self._take()
            if job is None:
                return None, False
            if self.poison.is_suspect(job.item.id):
                self._solo.append(job)
                continue
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

    def _release_solo_host(self) -> None:
        """The replica that ran suspects may take other work again once none is waiting or running there."""
        host = self._solo_host
        if host is not None and (host.retired or (not self._solo and not host.solo_in_flight)):
            self._solo_host = None

    def _board(self, r: Replica, job: Job, solo: bool, worker: asyncio.Task[None]) -> Flight:
        """Register `job` as in flight on `r`; its Flight is what the watchdog reads."""
        flight = Flight(job.item.id, solo=solo, pace=r.pace, prompt_chars=len(job.item.prompt))
        r.running[job.item.id] = Running(job, flight, worker)
        r.boarded_since_start += 1
        r.solo_in_flight += solo
        r.stats.in_flight = len(r.running)
        self.stats.in_flight += 1
        return flight

    def _requeue_front(self, jobs: list[Job]) -> None:
        for job in reversed(jobs):
            self._front.appendleft(job)
        if jobs:
            self._changed.set()  # the other replicas take them at once

    # -- one item --------------------------------------------------------------------------------------

    async def _run_job(self, r: Replica, job: Job, flight: Flight) -> None:
        began = asyncio.get_running_loop().time()
        try:
            completion = await self._with_retries(r, job, flight)
        except RequestError as exc:
            self._record_failure(job, exc.reason, str(exc))
        except ServerDown:
            # Not the item's fault: it goes back without spending an attempt (another replica may take it), and
            # this replica waits while its monitor finds out whether the server comes back by itself or must be
            # restarted.
            self._requeue_front([job])
            r.gate.clear()
            r.trouble.set()
        else:
            self._record_result(job, completion, asyncio.get_running_loop().time() - began)
        finally:
            r.running.pop(job.item.id, None)
            r.solo_in_flight -= flight.solo
            r.stats.in_flight = len(r.running)
            self.stats.in_flight -= 1
            if flight.solo and not r.held:
                # Not while a recovery holds it: a suspect that wedged its replica alone goes alone again, first,
                # on that replica, freshly started; released here, another replica (one that had served others)
                # took it, and the two passed it to and fro, never convicting it (a pool of two spent all twenty
                # restarts on one poison input).
                self._release_solo_host()
            if idle_workers_may_act(queued=bool(self._front or self._solo), running=len(r.running)):
                self._changed.set()

    async def _with_retries(self, r: Replica, job: Job, flight: Flight) -> Completion:
        spent = job.attempts
        try:
            return await self._attempt(r, job, flight)
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
                return await self._attempt(r, job, flight)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _attempt(self, r: Replica, job: Job, flight: Flight) -> Completion:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.request_timeout) as deadline:
                # On the wire only inside the attempt's timeout: a flight between attempts (sleeping before a
                # retry) has no deadline to cut and no clock to be judged silent by.
                now = loop.time()
                flight.new_attempt(now, deadline)
                r.activity.sent(now)
                try:
                    try:
                        completion = await r.client.complete(job.item.prompt, flight)
                    except aiohttp.ClientError as exc:
                        if not is_stale_connection(exc):
                            raise
                        # Sent again at once, within the same attempt: the server dropped the connection, not
                        # the request. A second failure takes the ordinary way below.
                        self.stats.resent += 1
                        flight.new_attempt(loop.time())  # judged by its own stream, not the dropped one's clocks
                        completion = await r.client.complete(job.item.prompt, flight)
                finally:
                    flight.end_attempt()
                    r.activity.ended(loop.time())
        except aiohttp.ClientError as exc:
            # A refusal is the server being down, whatever its process does; a connection that broke under a
            # request is the item's failure unless the server turns out to be gone: its process exited, or it no
            # longer answers /health (an external server going away resets every stream on it: the chaos suite
            # saw items fail as `connection` from one outage).
            if (is_connect_failure(exc) or await r.supervisor.has_exited()
                    or not await r.supervisor.answers()):
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
            "done_at": round(time.time(), 3),  # the run's timeline draws its throughput from these
            # Where the item sits in the dataset: `hallurun merge` joins the shards' answers by it.
            "dataset_index": job.item.position,
        }
        record["id"] = job.item.id
        if self.checkpoint.add_result(record):
            self.stats.done += 1
        self._maybe_flush()

    def _record_failure(self, job: Job, reason: str, error: str) -> None:
        self.poison.forget(job.item.id)
        if self.checkpoint.add_failure(job.item.id, reason, error, job.attempts, job.item.position):
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

    async def _monitor(self, r: Replica) -> None:
        loop = asyncio.get_running_loop()
        tick = min(1.0, self.config.stall_timeout / 5)
        pace = r.pace if self.config.adaptive_window else None
        while self._fatal is None and not r.retired:
            try:
                async with asyncio.timeout(tick):
                    await r.trouble.wait()
            except TimeoutError:
                pass
            if r.supervisor.managed and r.supervisor.returncode is not None:
                await self._recover(r, "server_exited")
                continue
            if r.trouble.is_set():
                await self._outage(r)
                continue
            now = loop.time()
            metrics = r.stats.metrics
            queue_seen = metrics.sampled_at if metrics.waiting else None
            verdict = inspect(now, [x.flight for x in r.running.values()], r.activity, self.config.stall_timeout,
                              queue_seen, pace=pace, tokens_flat=metrics.tokens_flat_for(now))
            ceiling = self.config.stall_timeout
            r.stats.window = ceiling if pace is None else pace.window(now, ceiling)
            if verdict.wedged:
                if verdict.quiet_for < ceiling and not await self._confirmed(r, verdict.window):
                    continue
                await self._recover(r, "wedge", quiet_s=round(loop.time() - r.activity.last, 2),
                                    window_s=round(verdict.window, 2))
                continue
            for flight in verdict.stalled:
                flight.cut(now)

    async def _confirmed(self, r: Replica, window: float) -> bool:
        """Below the ceiling, silence alone is not trusted: the engine is asked for one token (at most once per
        silence), and a wedge is one that answers nothing within two more windows while its streams stay quiet
        (a pause shorter than about three windows passes; a real wedge is found in about three windows, still
        far under the ceiling).
        An engine that pauses longer than it ever did (a first long preemption, a burst of long prefills) would
        otherwise be restarted healthy; a pause seen this way is learnt, so the window allows it next time."""
        silence = r.activity.last
        if r.doubted == silence:
            return False  # asked already during this silence: only the ceiling ends it now
        loop = asyncio.get_running_loop()
        asked = loop.time()
        answered = await r.supervisor.generates(within=PROBE_WINDOWS * window)
        resumed = r.activity.last > silence
        if not (answered or resumed):
            return True
        r.doubted = silence
        if resumed:
            r.pace.gap(loop.time(), r.activity.last - silence)  # the longest pause this engine has shown
        r.events.emit("silence_explained", quiet_s=round(asked - silence, 2), window_s=round(window, 2),
                      probe_answered=answered, streams_resumed=resumed)
        return False

    async def _outage(self, r: Replica) -> None:
        """Requests could not reach the server: wait for it to answer again, restarting it only if it does not.
        Meanwhile its gate stays closed, and the items that were refused wait at the front of the queue (or go
        to another replica)."""
        if await r.supervisor.has_exited():
            await self._recover(r, "server_exited")
            return
        r.stats.state = "unreachable"
        r.events.emit("server_unreachable", in_flight=len(r.running))
        began = time.monotonic()
        back = await r.supervisor.wait_answering(began + r.supervisor.restart_wait)
        waited = round(time.monotonic() - began, 2)
        if back:
            r.events.emit("server_back", waited_s=waited)
            self._reopen(r)
        elif r.supervisor.managed and r.supervisor.returncode is not None:
            await self._recover(r, "server_exited")
        else:
            await self._recover(r, "unreachable", waited_s=waited)

    async def _recover(self, r: Replica, cause: str, **detail: object) -> None:
        """Stop everything in flight on `r`, put it back, restart its server once, reopen dispatch to it."""
        r.gate.clear()
        running = list(r.running.values())
        ids = [x.job.item.id for x in running]
        quarantine: list[str] = []
        solo: str | None = None
        if cause == "wedge":
            self.stats.wedges += 1
            r.stats.wedges += 1
            # Only requests on the wire met the wedge; one sleeping before a retry was not waiting on it.
            wire = [x.job.item.id for x in running if x.flight.on_wire]
            solo = next((x.job.item.id for x in running if x.flight.solo), None)
            flat = r.stats.metrics.tokens_flat_for(asyncio.get_running_loop().time())
            # Evidence from any replica counts: a poison input wedges whichever server it is sent to.
            quarantine = self.poison.on_wedge(wire, solo, fresh=r.boarded_since_start == 1)
            # Kept for the next session: a resume after Ctrl-C (or a spent --max-restarts) goes on from this
            # evidence instead of paying for it again. Wedges are rare, so one small write each costs nothing.
            # Written before the event: a kill -9 between the two once left a wedge on record whose evidence was
            # lost, and the input wedged the server six times instead of at most five (chaos seed 50020).
            write_atomic(self.config.run_dir / POISON, orjson.dumps(self.poison.to_json()))
            r.events.emit("hang_detected", in_flight=len(ids), on_wire=len(wire), items=ids[:64],
                          tokens_flat_s=None if flat is None else round(flat, 1), **detail)
        elif cause == "server_exited":
            self.stats.crashes += 1
            r.events.emit("server_exited", returncode=r.supervisor.returncode, in_flight=len(ids))
        r.held = len(running)
        for x in running:
            x.task.cancel()
        await asyncio.gather(*(x.task for x in running), return_exceptions=True)
        r.held = 0
        back = []
        for x in running:
            if x.job.item.id in quarantine:
                self._quarantine(r, x.job)
            else:
                back.append(x.job)
        if cause == "wedge" and not self.config.enable_restart:
            self._requeue_front(self._spend_attempt(back))
            self._reopen(r)
            return
        if cause == "wedge" and solo is not None and back:
            # A suspect that wedged the server alone (it runs with nothing else in flight, so `back` is that one
            # job) and was not convicted goes alone again, first, on this replica: the next evidence is then that
            # of the freshly started server this restart brings.
            self._solo.appendleft(back.pop())
        self._requeue_front(back)
        self._release_solo_host()
        if not self.config.enable_restart:
            what = "exited" if cause == "server_exited" else f"did not answer for {detail.get('waited_s')} s"
            await self._retire(r, ServerStartError(f"the server {what} and ENABLE_SERVER_RESTART is off"))
            return
        if r.stats.restarts >= self.config.max_restarts:
            await self._retire(r, RestartBudgetExhausted(
                f"the server needed more than --max-restarts={self.config.max_restarts} restarts"))
            return
        r.stats.restarts += 1
        self.stats.restarts += 1
        r.stats.state = "restarting"
        try:
            took = await r.supervisor.restart()
        except ServerStartError as exc:
            await self._retire(r, exc)
            return
        r.client.retarget(r.supervisor.base_url)
        r.boarded_since_start = 0
        r.events.emit("server_restarted", cause=cause, restarts=r.stats.restarts, startup_s=round(took, 2),
                      requeued=len(running) - len(quarantine), managed=r.supervisor.managed)
        self._reopen(r)

    def _reopen(self, r: Replica) -> None:
        r.trouble.clear()
        r.activity.touch(asyncio.get_running_loop().time())
        r.stats.state = "running"
        r.gate.set()
        self._top_up_workers(r)  # in place of those cancelled with their requests
        self._changed.set()

    async def _retire(self, r: Replica, exc: ServerError) -> None:
        """`r` cannot serve again (it did not start, or needed too many restarts): the run goes on with the other
        replicas, and fails with `exc` when none is left."""
        r.retired = True
        r.gate.clear()
        r.stats.state = "retired"
        for worker in r.workers:
            worker.cancel()  # idle: its jobs were put back before this
        self._release_solo_host()
        left = sum(not x.retired for x in self.replicas)
        if len(self.replicas) > 1:
            reason = str(exc).splitlines()[0]
            r.events.emit("replica_retired", reason=reason, left=left)
            self.say(f"replica {r.index} retired ({reason}); {left} of {len(self.replicas)} replicas go on")
        if not left:
            self._fail(exc)
            return
        self._changed.set()
        await r.supervisor.stop()  # at once: a wedged engine must not keep its GPU until the run ends

    def _fail(self, exc: Exception) -> None:
        # Set here rather than left to a worker: the recovery may have cancelled every one of them.
        if self._fatal is None:
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

    def _quarantine(self, r: Replica, job: Job) -> None:
        self.stats.quarantined += 1
        self._record_failure(job, "poison", "the server wedged each time this item was in flight, the last two times "
                                            "alone on a freshly started server")
        r.events.emit("item_quarantined", id=job.item.id)
