"""A run from start to end: the run directory, its lock and manifest, the server, the scheduler, how it ended.

`start_async` begins (or continues) a run from a fresh configuration; `resume_async` continues one from its
manifest. Both are coroutines that work inside any running event loop and return a `RunResult`; errors a user can
fix before any work starts are raised as `UsageError` (exit code 2). They own no signal and never exit the
process: cancelling the run's task is the interrupt. The run then stops gracefully (dispatch stops, the items in
flight go back, results are flushed, the server's tree is stopped, the summary and the resume command are
printed), leaves its result on the `RunHandle` (status "interrupted"; "complete" when every item had settled, as
when the cancellation comes while the server is being stopped), and raises the cancellation again, as asyncio
asks of a cancelled task (so that `asyncio.timeout`, TaskGroups and `task.cancelled()` mean what they say).
Blocking preparation (validating the dataset, building the tiny model, reading the checkpoint, writing the
final files) runs in worker threads, so the host's event loop keeps going meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console

from hallurun.config import RunConfig, RunOptions, ServerOptions
from hallurun.core import preparation, timeline
from hallurun.core.counters import ReplicaStats, RunStats
from hallurun.core.handle import RunHandle
from hallurun.core.preparation import Prepared
from hallurun.core.progress import live, progress_line, summary_table
from hallurun.core.replica import Replica
from hallurun.core.result import RunResult, Status
from hallurun.core.scheduler import RestartBudgetExhausted, Scheduler
from hallurun.core.uncancellable import in_thread, to_the_end
from hallurun.errors import EXIT_FAILED_ITEMS, EXIT_OK, UsageError
from hallurun.server import pool
from hallurun.server.supervisor import PortInUse, ServerRefusesRun, ServerStartError, Supervisor, stop_all
from hallurun.store import manifest
from hallurun.store.checkpoint import GENERATION, Checkpoint
from hallurun.store.dataset import DatasetChanged, DatasetInfo, Item, iter_items
from hallurun.store.durable import RunDirWriteError, fsync_dir
from hallurun.store.events import EventLog
from hallurun.wire.client import Client
from hallurun.wire.metrics import poll
from hallurun.wire.watchdog import Activity

API_KEY_ENV = "HALLURUN_API_KEY"


def default_run_dir(task: str, model: str, root: Path = Path("runs")) -> Path:
    """`runs/<task>-<model>-<timestamp>`, with the model name made safe for a path."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/").split("/")[-1])
    return root / f"{task}-{safe}-{time.strftime('%Y%m%d-%H%M%S')}"


def latest_run(root: Path = Path("runs")) -> Path:
    """The most recently created run directory under `root`."""
    found = sorted(root.glob(f"*/{manifest.MANIFEST}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UsageError(f"no runs found under {root}/; give the run directory")
    return found[-1].parent


def resume_command(run_dir: Path) -> str:
    return f"hallurun resume {run_dir}"


async def start_async(config: RunConfig, *, console: Console | None = None, errors: Console | None = None,
                      handle: RunHandle | None = None) -> RunResult:
    """Start a run, or continue it if its directory already holds the same run.

    `console` shows the progress, the summary and the resume command (None: nothing is printed); `errors` the
    error lines (None: standard error when a console is given, else nothing). `handle`, optional, is how the
    owner of the process reaches the run from outside its task (a last resort, and the result of a cancelled run).
    Raises UsageError (ConfigError, DatasetError, ...) for what a user must fix before any work starts.
    """
    return await _session(functools.partial(preparation.for_start, config), resumed=False,
                          out=_Output.of(console, errors), handle=handle or RunHandle())


async def resume_async(run_dir: Path, *, options: RunOptions | None = None, server: ServerOptions | None = None,
                       retry_failed: bool = False, force: bool = False, console: Console | None = None,
                       errors: Console | None = None, handle: RunHandle | None = None) -> RunResult:
    """Continue a run from its manifest. Only what may change between sessions may be given: `options` and the
    server's launch settings (`server`); task, model, sampling and data come from the manifest. `retry_failed`
    runs the items in failures.jsonl again; `force` continues on a dataset file that changed (every item whose
    question changed runs again). The rest as `start_async`."""
    prepare = functools.partial(preparation.for_resume, run_dir, options, server, retry_failed=retry_failed,
                                force=force)
    return await _session(prepare, resumed=True, out=_Output.of(console, errors), handle=handle or RunHandle())


@dataclass(frozen=True)
class _Output:
    """Where a run speaks: the console (progress, summary, hints) and the error lines."""

    console: Console
    errors: Console

    @classmethod
    def of(cls, console: Console | None, errors: Console | None) -> _Output:
        if console is None:
            return cls(Console(quiet=True), errors or Console(quiet=True))
        return cls(console, errors or Console(stderr=True, soft_wrap=True))


@dataclass
class _Outcome:
    status: Status
    message: str = ""


@dataclass
class _Open:
    """A run whose files are open: the checkpoint, the event log, this session's counters."""

    config: RunConfig
    info: DatasetInfo
    checkpoint: Checkpoint
    events: EventLog
    stats: RunStats
    early: _Outcome | None = None  # the run stopped before it could begin (a write that failed)

    def close(self) -> None:
        """Close both files after a cancellation before the run began (what they hold is whole: flushed)."""
        with contextlib.suppress(RunDirWriteError):
            self.checkpoint.close()
        self.events.close()


class _Interrupt:
    """The run's task was cancelled: noted once (the `interrupted` event, saying whether the run's work was
    already over), and raised again once the run has ended."""

    def __init__(self, events: EventLog) -> None:
        self.events = events
        self.error: asyncio.CancelledError | None = None

    def note(self, exc: asyncio.CancelledError, *, stopping: bool) -> None:
        if self.error is not None:
            return
        self.error = exc
        # The cancel message is the signal's name when the command line cancels (task.cancel("SIGINT")).
        reason = str(exc.args[0]) if exc.args and exc.args[0] else "cancelled"
        with contextlib.suppress(RunDirWriteError):
            self.events.emit("interrupted", signal=reason, while_stopping=stopping)

    def keep(self, exc: asyncio.CancelledError) -> None:
        """A cancellation while the final files are written from a worker thread: kept, not written (the event
        log is the thread's then), and raised when the run has ended."""
        if self.error is None:
            self.error = exc


async def _session(prepare: Callable[[], Prepared], *, resumed: bool, out: _Output, handle: RunHandle) -> RunResult:
    """One invocation: prepare (lock, checks), open the files, drive the run, write its ending; lock released."""
    prepared = await in_thread(prepare, undo=Prepared.release)
    try:
        opened = await in_thread(_open, prepared, out, resumed, undo=_close_opened)
        if isinstance(opened, RunResult):
            handle.ended(opened)
            return opened
        return await _run(opened, out, handle)
    finally:
        prepared.release()


def _close_opened(opened: _Open | RunResult) -> None:
    if isinstance(opened, _Open):
        opened.close()


def _open(prepared: Prepared, out: _Output, resumed: bool) -> _Open | RunResult:
    """Write the manifest (a new run, or a changed dataset under --force), open the checkpoint (repairing a torn
    tail) and the event log, and say what the run starts from. In a worker thread."""
    config, info = prepared.config, prepared.info
    if prepared.write_manifest:
        preparation.write_manifest(config, info)
    try:
        checkpoint = Checkpoint(config.run_dir)
    except RunDirWriteError as exc:
        return _report_io(config, info, exc, out)
    try:
        events = EventLog(config.run_dir)
    except RunDirWriteError as exc:
        checkpoint.close()
        return _report_io(config, info, exc, out)
    opened = _Open(config, info, checkpoint, events, RunStats(total=config.items_in(info.count)))
    try:
        _begin(opened, out.console, resumed=resumed, changed=prepared.changed)
    except RunDirWriteError as exc:
        opened.early = _Outcome("run_dir_unwritable", str(exc))
    except BaseException:
        opened.close()  # e.g. the dataset changed again under `resume --force`: no file is left open
        raise
    return opened


def _begin(run: _Open, console: Console, *, resumed: bool, changed: bool) -> None:
    config, info, checkpoint, events, stats = run.config, run.info, run.checkpoint, run.events, run.stats
    if changed:
        # `resume --force` on a changed dataset: an answer to a question that has changed (or gone)
        # answers nothing in the new file, so that item runs again.
        superseded = checkpoint.supersede(_asks_the_same(config, info))
        events.emit("results_superseded", count=len(superseded), items=superseded[:64])
        if superseded:
            console.print(f"{len(superseded)} answer(s) were to questions that have changed; they run again "
                          f"(the old ones are in {config.run_dir / 'results.superseded.jsonl'})",
                          highlight=False)
    if config.retry_failed:
        retried = checkpoint.forget_failures()
        events.emit("failures_retried", count=len(retried))
    stats.done, stats.failed = len(checkpoint.done), len(checkpoint.failed)
    stats.done_at_start = stats.settled
    shard = {} if config.shard is None else {"shard": config.shard.index, "shards": config.shard.count}
    events.emit("run_resumed" if resumed else "run_started", total=stats.total, done=stats.done,
                failed=stats.failed, repaired_bytes=checkpoint.repaired_bytes, **shard)
    if checkpoint.repaired_bytes:
        console.print(f"repaired a torn last line ({checkpoint.repaired_bytes} bytes) in {config.run_dir}")
    of = "" if config.shard is None else f" (shard {config.shard} of {info.count} items)"
    console.print(f"hallurun: {config.task} on {config.model}{of}: {stats.settled}/{stats.total} already "
                  f"settled; run dir {config.run_dir}; resume with `{resume_command(config.run_dir)}`",
                  highlight=False)


async def _run(run: _Open, out: _Output, handle: RunHandle) -> RunResult:
    """Drive the run, then close the checkpoint and write the ending (summary, generation.jsonl) to its end, even
    through a cancellation; the cancellation is raised after, with the result left on the handle."""
    interrupt = _Interrupt(run.events)
    handle.attach(checkpoint=run.checkpoint)
    try:
        outcome = run.early or await _drive(run, out.console, handle, interrupt)
    except BaseException:
        handle.detach_checkpoint()
        run.close()  # an unexpected error (a bug): what was written stays whole
        raise
    handle.begin_stopping()
    handle.detach_checkpoint()
    result = await to_the_end(asyncio.to_thread(_close_and_finish, run, outcome, out), interrupt.keep)
    handle.ended(result)
    if interrupt.error is not None:
        raise interrupt.error
    return result


def _asks_the_same(config: RunConfig, info: DatasetInfo) -> Callable[[dict[str, Any]], bool]:
    """Whether a result answers its id's question in the dataset as it is now (a digest per id in memory)."""
    def digest(prompt: object) -> bytes:
        return hashlib.blake2b(str(prompt).encode(), digest_size=8).digest()

    now = {item.id: digest(item.prompt) for item in iter_items(config.dataset, config.limit, expected=info)}
    return lambda result: now.get(str(result.get("id"))) == digest(result.get("prompt"))


def _report_io(config: RunConfig, info: DatasetInfo, exc: RunDirWriteError, out: _Output) -> RunResult:
    out.errors.print(f"error: {exc}\nnothing already written is lost; make room, then: "
                     f"{resume_command(config.run_dir)}", highlight=False, markup=False)
    return RunResult(config.run_dir, "run_dir_unwritable", total=config.items_in(info.count), done=0, failed=0,
                     message=str(exc))


class _Items:
    """The run's items, each checked against the dataset as validated at the start. A changed file ends the
    supply (the items in flight still finish) and is kept here for the runner to report, instead of breaking the
    scheduler that reads it."""

    def __init__(self, config: RunConfig, info: DatasetInfo) -> None:
        self.config, self.info = config, info
        self.changed: DatasetChanged | None = None

    def __iter__(self) -> Iterator[Item]:
        try:
            yield from self._read()
        except DatasetChanged as exc:
            self.changed = exc

    def _read(self) -> Iterator[Item]:
        return iter_items(self.config.dataset, self.config.limit, expected=self.info, shard=self.config.shard)

    def all_settled(self, checkpoint: Checkpoint) -> bool:
        """Whether no item needs the server (then none is launched: a finished run only writes its files)."""
        if len(checkpoint.done) + len(checkpoint.failed) < self.config.items_in(self.info.count):
            return False  # fewer settled than items: no need to read the dataset again to know
        try:
            return all(checkpoint.is_settled(item.id) for item in self._read())
        except DatasetChanged:
            return False


def api_key(environ: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """The one API key of a run: `HALLURUN_API_KEY`, used by the readiness probe, every request and a launched
    vLLM alike. Read from the environment only, so it never reaches a command line, a log or the manifest."""
    return (os.environ if environ is None else environ).get(API_KEY_ENV) or None


def _server_env(config: RunConfig, key: str | None) -> dict[str, str]:
    env = dict(os.environ)
    # Lets anyone (tests, operators) find every process of this run's server tree.
    env["HALLURUN_RUN_DIR"] = str(config.run_dir.resolve())
    # A VLLM_API_KEY inherited from the user's shell would make a launched vLLM demand a key that hallurun's
    # requests do not send: the launched server gets exactly the run's key, or none.
    env.pop("VLLM_API_KEY", None)
    env.pop(API_KEY_ENV, None)
    if key and config.server.kind != "external":
        env["VLLM_API_KEY"] = key  # vLLM (and the mock, which behaves like it) enforce it from there
    return env


async def _drive(run: _Open, console: Console, handle: RunHandle, interrupt: _Interrupt) -> _Outcome:
    config, info, checkpoint, stats = run.config, run.info, run.checkpoint, run.stats
    items = _Items(config, info)
    display = asyncio.create_task(live(stats, console), name="progress")
    try:
        if not await in_thread(items.all_settled, checkpoint):  # it may read the whole dataset
            await _serve(run, items, handle, interrupt, console)
            if items.changed is None and not await in_thread(items.all_settled, checkpoint):
                # Never "complete" with an item missing: a scheduler that stopped early is a bug, and says so.
                raise RuntimeError("the scheduler ended with items neither done nor failed")
    except asyncio.CancelledError as exc:
        interrupt.note(exc, stopping=handle.stopping)
        # An interrupt as the last items settled (the scheduler winding down) leaves nothing to resume.
        if items.changed is None and items.all_settled(checkpoint):
            return _Outcome("complete")
        return _Outcome("interrupted", "interrupted")
    except (PortInUse, ServerRefusesRun) as exc:
        # The user's choice of port or of --max-tokens, refused at the first start, is bad usage; met at a
        # relaunch (the port taken meanwhile), it is server trouble like any relaunch that fails.
        return _Outcome("server_refused" if stats.restarts == 0 else "server_failed", str(exc))
    except (ServerStartError, RestartBudgetExhausted) as exc:
        return _Outcome("server_failed", str(exc))
    except RunDirWriteError as exc:
        return _Outcome("run_dir_unwritable", str(exc))
    except BaseExceptionGroup as group:
        # A write that failed inside the scheduler's TaskGroup (the flusher, an event) arrives wrapped.
        failed = group.subgroup(RunDirWriteError)
        if failed is None:
            raise
        return _Outcome("run_dir_unwritable", str(_first(failed)))
    finally:
        display.cancel()
        await to_the_end(asyncio.gather(display, return_exceptions=True), interrupt.keep)
    if items.changed is not None:
        return _Outcome("dataset_changed", f"{items.changed}; the items read before the change are kept. Restore "
                                           "the file and resume, or resume with --force to continue with the new one")
    return _Outcome("complete")


async def _serve(run: _Open, items: _Items, handle: RunHandle, interrupt: _Interrupt, console: Console) -> None:
    """The servers and the scheduler, until every item is settled (or the run stops); every server is stopped at
    the end whatever happens, to its end even through a cancellation (a half-stopped server is an orphan)."""
    config, checkpoint, events, stats = run.config, run.checkpoint, run.events, run.stats
    key = api_key()
    env = _server_env(config, key)
    lender = handle.servers
    if lender is None:
        slots = pool.slots(config.server, os.environ)
        connector = aiohttp.TCPConnector(limit=(config.concurrency + 8) * len(slots), limit_per_host=0)
        session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None,
                                                                                             sock_connect=30))
        supervisors = [Supervisor(config, events.tagged(replica=slot.index), session, env, api_key=key, slot=slot)
                       for slot in slots]
    else:
        # The command lends its servers: started by the first run that needs them, stopped when it ends.
        session, supervisors = lender.lend(config, events, env, key)
    try:
        replicas = [_replica(config, supervisor, session, key) for supervisor in supervisors]
        handle.attach(supervisors=supervisors)
        scheduler = Scheduler(config, iter(items), checkpoint, stats, replicas,
                              say=lambda line: console.print(line, highlight=False, markup=False))
        metrics = [asyncio.create_task(poll(session, functools.partial(_base_url, r), r.stats.metrics, r.activity,
                                            config.metrics_interval), name=f"metrics-{r.index}")
                   for r in replicas]
        try:
            await scheduler.run()
        except asyncio.CancelledError as exc:
            interrupt.note(exc, stopping=False)
            raise
        finally:
            # The run's work is over: a cancellation from here on lets the stop finish, so that a complete run
            # still ends as complete (and a second Ctrl-C is the command line's kill_servers_now).
            handle.begin_stopping()
            await to_the_end(_wind_down(metrics, replicas if lender is None else []),
                             functools.partial(interrupt.note, stopping=True))
    finally:
        if lender is not None:
            lender.give_back(supervisors)
        else:
            # Closed to its end too: a cancellation that replaced the error on its way out (a server that could
            # not be started, a full disk) would turn the run's ending into "interrupted" (130).
            await to_the_end(session.close(), functools.partial(interrupt.note, stopping=True))


def _replica(config: RunConfig, supervisor: Supervisor, session: aiohttp.ClientSession, key: str | None) -> Replica:
    activity = Activity()
    client = Client(session, supervisor.base_url, config.model, config.sampling, activity, api_key=key)
    return Replica(supervisor.slot.index, supervisor, client, activity, supervisor.events,
                   ReplicaStats(index=supervisor.slot.index))


def _base_url(replica: Replica) -> str:
    return replica.supervisor.base_url  # asked at each read: a relaunched server may listen on another port


async def _wind_down(metrics: list[asyncio.Task[None]], replicas: list[Replica]) -> None:
    for task in metrics:
        task.cancel()
    await asyncio.gather(*metrics, return_exceptions=True)
    await stop_all([r.supervisor for r in replicas])


def _first(group: BaseExceptionGroup) -> BaseException:
    """The first leaf exception of a (possibly nested) exception group."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def _close_and_finish(run: _Open, outcome: _Outcome, out: _Output) -> RunResult:
    """Close the checkpoint and write the run's ending. In a worker thread (generation.jsonl of a million items
    takes a while); the event log is closed at the end."""
    try:
        run.checkpoint.close()
    except RunDirWriteError as exc:
        outcome = _Outcome("run_dir_unwritable", str(exc))
    result = _finish(run, outcome, out)
    if _worth_a_timeline(run.stats):
        _draw_timeline(run.config.run_dir, out)
    return result


TIMELINE_AFTER_S = 120.0  # a shorter, untroubled session has nothing to look back on (and drawing costs ~0.6 s)


def _worth_a_timeline(stats: RunStats) -> bool:
    troubled = stats.restarts or stats.wedges or stats.crashes or any(r.state == "retired" for r in stats.replicas)
    return bool(troubled) or time.monotonic() - stats.started >= TIMELINE_AFTER_S


def _draw_timeline(run_dir: Path, out: _Output) -> None:
    """`timeline.png`, for a look at the night afterwards; a figure that cannot be drawn costs the run nothing."""
    try:
        drawn = timeline.write(run_dir)
    except OSError as exc:  # a full disk, say: the run is over and whole, only its picture is missing
        out.errors.print(f"warning: timeline.png not drawn ({exc}); "
                         f"`hallurun status {run_dir} --chart` tries again", highlight=False, markup=False)
        return
    if drawn is not None:
        out.console.print(f"timeline: {drawn}", highlight=False)


def _finish(run: _Open, outcome: _Outcome, out: _Output) -> RunResult:
    config, stats, events, console = run.config, run.stats, run.events, out.console
    try:
        console.print(summary_table(stats, f"hallurun {config.task} · {config.model}"))
        console.print(progress_line(stats), highlight=False)
        if outcome.status == "complete":
            outcome = _complete(run, console)
        if outcome.status not in ("complete", "failed_items"):
            _say_why(run, outcome, out)
        return RunResult(config.run_dir, outcome.status, total=stats.total, done=len(run.checkpoint.done),
                         failed=len(run.checkpoint.failed), restarts=stats.restarts, message=outcome.message)
    finally:
        events.close()


def _say_why(run: _Open, outcome: _Outcome, out: _Output) -> None:
    """A run that stopped before it finished: the resume command, and the error line."""
    resume_hint = f"resume with: {resume_command(run.config.run_dir)}"
    if outcome.status == "interrupted":
        out.console.print(f"interrupted; {resume_hint}", highlight=False)
        return
    code = RunResult(run.config.run_dir, outcome.status, 0, 0, 0).exit_code
    with contextlib.suppress(RunDirWriteError):  # the disk may be the trouble; the message below still goes
        run.events.emit("run_aborted", reason=outcome.message.splitlines()[0], exit_code=code)
    if outcome.status == "run_dir_unwritable":
        resume_hint = f"nothing already written is lost; make room, then {resume_hint}"
    out.errors.print(f"error: {outcome.message}\n{resume_hint}", highlight=False, markup=False)


def _complete(run: _Open, console: Console) -> _Outcome:
    """Every item is settled: write generation.jsonl and say how the run ended."""
    config, info, checkpoint, events, stats = run.config, run.info, run.checkpoint, run.events, run.stats
    try:
        written, mismatched = write_generation(config, info, config.run_dir / GENERATION)
        status: Status = "failed_items" if checkpoint.failed else "complete"
        events.emit("run_finished", done=len(checkpoint.done), failed=len(checkpoint.failed),
                    exit_code=EXIT_FAILED_ITEMS if checkpoint.failed else EXIT_OK, retries=stats.retries,
                    resent=stats.resent, generation_written=written, generation_mismatched=mismatched)
    except DatasetChanged as exc:
        return _Outcome("dataset_changed", f"{exc}; {GENERATION} was not written. Restore the file and resume")
    except RunDirWriteError as exc:
        return _Outcome("run_dir_unwritable", str(exc))
    if mismatched:
        console.print(f"{mismatched} answer(s) were given to an earlier version of their question (the dataset "
                      f"changed under --force); they are left out of {GENERATION}", highlight=False)
    if checkpoint.failed:
        console.print(f"{len(checkpoint.failed)} item(s) failed (see {config.run_dir / 'failures.jsonl'}):",
                      highlight=False)
        for item_id, reason in list(checkpoint.failed.items())[:20]:
            console.print(f"  {item_id}: {reason}", highlight=False, markup=False)
        console.print(f"retry them with: {resume_command(config.run_dir)} --retry-failed", highlight=False)
    console.print(f"results: {config.run_dir / 'results.jsonl'}", highlight=False)
    return _Outcome(status)


def write_generation(config: RunConfig, info: DatasetInfo, path: Path) -> tuple[int, int]:
    """Write HalluLens' `generation.jsonl`: input fields plus `generation`, in dataset order, atomically.
    Returns (lines written, answers left out because they answered another version of their question).

    Each answer is paired with its question by the run's own id, and written only when the result's prompt is
    that question's prompt: an answer can only ever sit next to the question it answered. The dataset is read
    checked against `info` (DatasetChanged if it changed). Only byte offsets of the results are held in memory,
    not the generations, so a run of a million items does not need its answers in RAM at the end.
    """
    results = config.run_dir / "results.jsonl"
    offsets: dict[str, int] = {}
    with results.open("rb") as fh:
        offset = 0
        for raw in fh:
            if raw.endswith(b"\n"):
                with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
                    offsets.setdefault(str(orjson.loads(raw)["id"]), offset)
            offset += len(raw)
    tmp = path.with_suffix(".jsonl.tmp")
    written = mismatched = 0
    try:
        with tmp.open("wb") as out, results.open("rb") as fh:
            for item in iter_items(config.dataset, config.limit, expected=info, shard=config.shard):
                where = offsets.get(item.id)
                if where is None:
                    continue
                fh.seek(where)
                result = orjson.loads(fh.readline())
                if result.get("prompt") != item.prompt:
                    mismatched += 1
                    continue
                out.write(orjson.dumps(item.answered(result.get("generation", ""))) + b"\n")
                written += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise RunDirWriteError(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
    return written, mismatched
