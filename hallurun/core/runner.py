"""A run from start to end: the run directory, its lock and manifest, the server, the scheduler, the exit code.

`start` begins (or continues) a run from a fresh configuration; `resume` continues one from its manifest.
Both return the process exit code; errors a user can fix are raised as `UsageError` (exit code 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console

from hallurun.config import ConfigError, RunConfig, ServerSpec
from hallurun.core.counters import RunStats
from hallurun.core.progress import live, progress_line, summary_table
from hallurun.core.scheduler import RestartBudgetExhausted, Scheduler
from hallurun.errors import (
    EXIT_FAILED_ITEMS,
    EXIT_INTERRUPTED,
    EXIT_IO,
    EXIT_OK,
    EXIT_SERVER,
    EXIT_USAGE,
    UsageError,
)
from hallurun.server import launch as engine
from hallurun.server.supervisor import PortInUse, ServerRefusesRun, ServerStartError, Supervisor, free_port
from hallurun.store import manifest
from hallurun.store.checkpoint import Checkpoint
from hallurun.store.dataset import DatasetChanged, DatasetError, DatasetInfo, Item, iter_items, scan
from hallurun.store.durable import RunDirWriteError, fsync_dir
from hallurun.store.events import EventLog
from hallurun.store.lock import LockError, RunLock
from hallurun.wire.client import Client
from hallurun.wire.metrics import poll
from hallurun.wire.watchdog import Activity

# A second Ctrl-C waits at most this long for a batch being written: a batch whose thread has not started yet
# cannot finish while this very handler holds the event loop, and that lines simply run again after a resume.
SECOND_SIGNAL_FLUSH_S = 2.0
GENERATION = "generation.jsonl"
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


def start(config: RunConfig, console: Console | None = None) -> int:
    """Start a run, or continue it if its directory already holds the same run."""
    try:
        config.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--run-dir {config.run_dir}: cannot create it ({exc.strerror or exc})") from None
    # Absolute, so that `hallurun resume` finds the data from any working directory.
    config = dataclasses.replace(config, dataset=config.dataset.absolute())
    with _Session(config.run_dir) as session:
        info = _preflight(config)
        if (config.run_dir / manifest.MANIFEST).exists():
            try:
                existing = manifest.read(config.run_dir)
                same = existing["fingerprint"] == manifest.fingerprint(config, info.sha256)
            except manifest.ManifestError as exc:
                raise UsageError(f"{exc}; the folder holds a damaged run: choose another --run-dir") from None
            except (KeyError, TypeError):
                raise UsageError(f"{config.run_dir / manifest.MANIFEST}: field 'fingerprint' missing; the folder "
                                 "holds a damaged run: choose another --run-dir") from None
            if not same:
                raise UsageError(f"{config.run_dir} holds a different run (task, model, sampling or data differ); "
                                 f"use `hallurun resume {config.run_dir}` or choose another --run-dir")
        _write_manifest(config, info)
        return session.drive(config, info, console or Console(soft_wrap=True), resumed=False)


def resume(run_dir: Path, overrides: dict[str, Any], *, retry_failed: bool = False, force: bool = False,
           console: Console | None = None) -> int:
    """Continue a run from its manifest. Only operational settings may be overridden."""
    with _Session(run_dir) as session:
        try:
            saved = manifest.read(run_dir)
            config = RunConfig.from_json(saved["config"])
            # The manifest's dataset path is absolute (older runs kept a relative one in their configuration).
            config = dataclasses.replace(config, run_dir=run_dir, retry_failed=retry_failed,
                                         dataset=Path(saved["dataset"]["path"]), **overrides)
            started_with = str(saved["dataset"]["sha256"])
        except (manifest.ManifestError, ConfigError) as exc:
            raise UsageError(str(exc)) from None
        except (KeyError, TypeError) as exc:
            raise UsageError(f"{run_dir / manifest.MANIFEST}: unreadable configuration ({exc})") from None
        info = _preflight(config)
        if info.sha256 != started_with:
            if not force:
                raise UsageError(f"{config.dataset}: the dataset changed since this run started (sha256 "
                                 f"{started_with[:12]} → {info.sha256[:12]}); "
                                 "restore it, or pass --force to continue with the new file")
            _write_manifest(config, info)
        return session.drive(config, info, console or Console(soft_wrap=True), resumed=True,
                             changed=info.sha256 != started_with)


def _write_manifest(config: RunConfig, info: DatasetInfo) -> None:
    try:
        manifest.write(config, info)
    except RunDirWriteError as exc:
        raise UsageError(f"{exc}; nothing was run") from None


def _preflight(config: RunConfig) -> DatasetInfo:
    """Everything checked before any work starts: the data, the host, the server's Python; the tiny model built."""
    info = _scan(config)
    _check_host(config)
    _check_server_python(config)
    _prepare_model(config)
    return info


def _check_host(config: RunConfig) -> None:
    """A `--host` a launched server cannot listen on is bad usage, found before anything starts."""
    if config.server.kind == "external":
        return
    try:
        free_port(config.server.host)
    except OSError as exc:  # socket.gaierror included: a name that does not resolve
        raise UsageError(f"--host {config.server.host}: a server cannot listen there ({exc.strerror or exc}); "
                         "give an IPv4 address of this machine, such as 127.0.0.1") from None


def _check_server_python(config: RunConfig) -> None:
    """A `--server-python` that cannot run is bad usage, found before anything starts."""
    python = config.server.python
    if python is None or config.server.kind == "external":
        return
    if "/" not in python:
        if shutil.which(python) is None:
            raise UsageError(f"--server-python {python}: not found on PATH")
        return
    path = Path(python).expanduser()
    if not path.is_file():
        raise UsageError(f"--server-python {python}: no such file")
    if not os.access(path, os.X_OK):
        raise UsageError(f"--server-python {python}: not executable")


def _scan(config: RunConfig) -> DatasetInfo:
    try:
        return scan(config.dataset, config.limit)
    except DatasetError as exc:
        raise UsageError(str(exc)) from None


def _prepare_model(config: RunConfig) -> None:
    """Build the tiny model before the run starts (it takes seconds, and must not stall the event loop)."""
    if config.server.kind != "vllm":
        return
    try:
        engine.model_path(config.model)
    except ImportError as exc:
        raise UsageError(f"--model {config.model} needs torch, transformers and tokenizers here ({exc}); "
                         "run `make install`") from None


def saved_server(run_dir: Path) -> ServerSpec:
    """The server a run was started with, from its manifest (for `resume` to change only what is given)."""
    try:
        return RunConfig.from_json(manifest.read(run_dir)["config"]).server
    except manifest.ManifestError as exc:
        raise UsageError(str(exc)) from None
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise UsageError(f"{run_dir / manifest.MANIFEST}: unreadable configuration ({exc})") from None


def resume_command(run_dir: Path) -> str:
    return f"hallurun resume {run_dir}"


@dataclass
class _Outcome:
    code: int
    message: str = ""


class _Session:
    """Holds the run directory's lock for one invocation and drives the run."""

    def __init__(self, run_dir: Path) -> None:
        if not run_dir.is_dir():
            raise UsageError(f"{run_dir}: no such run directory")
        self.lock = RunLock(run_dir)

    def __enter__(self) -> _Session:
        try:
            self.lock.acquire()
        except LockError as exc:
            raise UsageError(str(exc)) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()

    def drive(self, config: RunConfig, info: DatasetInfo, console: Console, *, resumed: bool,
              changed: bool = False) -> int:
        try:
            checkpoint = Checkpoint(config.run_dir)
        except RunDirWriteError as exc:
            return _report_io(config, exc)
        try:
            events = EventLog(config.run_dir)
        except RunDirWriteError as exc:
            checkpoint.close()
            return _report_io(config, exc)
        stats = RunStats(total=info.count)
        try:
            outcome = self._run(config, info, checkpoint, events, stats, console, resumed=resumed, changed=changed)
        finally:
            try:
                checkpoint.close()
            except RunDirWriteError as exc:
                outcome = _Outcome(EXIT_IO, str(exc))
        return _finish(config, info, checkpoint, events, stats, outcome, console)

    @staticmethod
    def _run(config: RunConfig, info: DatasetInfo, checkpoint: Checkpoint, events: EventLog, stats: RunStats,
             console: Console, *, resumed: bool, changed: bool) -> _Outcome:
        try:
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
            events.emit("run_resumed" if resumed else "run_started", total=info.count, done=stats.done,
                        failed=stats.failed, repaired_bytes=checkpoint.repaired_bytes)
            if checkpoint.repaired_bytes:
                console.print(f"repaired a torn last line ({checkpoint.repaired_bytes} bytes) in {config.run_dir}")
            console.print(f"hallurun: {config.task} on {config.model}: {stats.settled}/{info.count} already "
                          f"settled; run dir {config.run_dir}; resume with `{resume_command(config.run_dir)}`",
                          highlight=False)
            with _Latch() as latch:
                return asyncio.run(_drive(config, info, checkpoint, events, stats, console, latch))
        except RunDirWriteError as exc:
            return _Outcome(EXIT_IO, str(exc))


def _asks_the_same(config: RunConfig, info: DatasetInfo) -> Callable[[dict[str, Any]], bool]:
    """Whether a result answers its id's question in the dataset as it is now (a digest per id in memory)."""
    def digest(prompt: object) -> bytes:
        return hashlib.blake2b(str(prompt).encode(), digest_size=8).digest()

    now = {item.id: digest(item.prompt) for item in iter_items(config.dataset, config.limit, expected=info)}
    return lambda result: now.get(str(result.get("id"))) == digest(result.get("prompt"))


def _report_io(config: RunConfig, exc: RunDirWriteError) -> int:
    Console(stderr=True, soft_wrap=True).print(
        f"error: {exc}\nnothing already written is lost; make room, then: {resume_command(config.run_dir)}",
        highlight=False, markup=False)
    return EXIT_IO


class _Items:
    """The run's items, each checked against the dataset as validated at the start. A changed file ends the
    supply (the items in flight still finish) and is kept here for the runner to report, instead of breaking the
    scheduler that reads it."""

    def __init__(self, config: RunConfig, info: DatasetInfo) -> None:
        self.config, self.info = config, info
        self.changed: DatasetChanged | None = None

    def __iter__(self) -> Iterator[Item]:
        try:
            yield from iter_items(self.config.dataset, self.config.limit, expected=self.info)
        except DatasetChanged as exc:
            self.changed = exc

    def all_settled(self, checkpoint: Checkpoint) -> bool:
        """Whether no item needs the server (then none is launched: a finished run only writes its files)."""
        if len(checkpoint.done) + len(checkpoint.failed) < self.info.count:
            return False  # fewer settled than items: no need to read the dataset again to know
        try:
            return all(checkpoint.is_settled(item.id) for item in iter_items(self.config.dataset, self.config.limit,
                                                                             expected=self.info))
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
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

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


async def _drive(config: RunConfig, info: DatasetInfo, checkpoint: Checkpoint, events: EventLog,
                 stats: RunStats, console: Console, latch: _Latch) -> _Outcome:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    supervisor: Supervisor | None = None
    interrupts = 0
    stopping = False  # the items are settled (or the run has failed) and the server is being stopped

    def on_signal(name: str) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            with contextlib.suppress(RunDirWriteError):
                events.emit("interrupted", signal=name, while_stopping=stopping)
            if stopping:
                # The run's work is over: let the stop finish, so a complete run still ends as complete.
                console.print(f"\n{name}: already stopping the server (again to kill it at once)", highlight=False)
                return
            console.print(f"\n{name}: stopping (again to exit at once)", highlight=False)
            main.cancel()
            return
        # Second signal: no more waiting, but still no orphans and nothing written lost.
        if supervisor is not None:
            supervisor.kill_now()
        with contextlib.suppress(RunDirWriteError):
            checkpoint.flush(wait=SECOND_SIGNAL_FLUSH_S)
        os._exit(EXIT_INTERRUPTED)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    items = _Items(config, info)
    display = asyncio.create_task(live(stats, console), name="progress")
    try:
        for name in latch.take():
            on_signal(name)
        await asyncio.sleep(0)  # where a signal noted before the handlers were in place cancels this task
        if not items.all_settled(checkpoint):
            connector = aiohttp.TCPConnector(limit=config.concurrency + 8, limit_per_host=0)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                key = api_key()
                supervisor = Supervisor(config, events, session, _server_env(config, key), api_key=key)
                activity = Activity()
                client = Client(session, supervisor.base_url, config.model, config.sampling, activity,
                                api_key=key)
                scheduler = Scheduler(config, iter(items), checkpoint, events, supervisor, client, activity, stats)
                metrics = asyncio.create_task(poll(session, lambda: supervisor.base_url, stats.metrics, activity,
                                                   config.metrics_interval), name="metrics")
                try:
                    await supervisor.start()
                    await scheduler.run()
                finally:
                    stopping = True
                    metrics.cancel()
                    await asyncio.gather(metrics, return_exceptions=True)
                    try:
                        await supervisor.stop()
                    finally:
                        supervisor.close()
        stopping = True
    except asyncio.CancelledError:
        if interrupts == 0:
            raise
        main.uncancel()
        # An interrupt as the last items settled (the scheduler winding down) leaves nothing to resume.
        if items.changed is None and items.all_settled(checkpoint):
            return _Outcome(EXIT_OK)
        return _Outcome(EXIT_INTERRUPTED, "interrupted")
    except (PortInUse, ServerRefusesRun) as exc:
        # The user's choice of port or of --max-tokens, refused at the first start, is bad usage; met at a
        # relaunch (the port taken meanwhile), it is server trouble like any relaunch that fails.
        return _Outcome(EXIT_USAGE if stats.restarts == 0 else EXIT_SERVER, str(exc))
    except (ServerStartError, RestartBudgetExhausted) as exc:
        return _Outcome(EXIT_SERVER, str(exc))
    except RunDirWriteError as exc:
        return _Outcome(EXIT_IO, str(exc))
    except BaseExceptionGroup as group:
        # A write that failed inside the scheduler's TaskGroup (the flusher, an event) arrives wrapped.
        failed = group.subgroup(RunDirWriteError)
        if failed is None:
            raise
        return _Outcome(EXIT_IO, str(_first(failed)))
    finally:
        display.cancel()
        await asyncio.gather(display, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        latch.rearm(interrupts)
    if items.changed is not None:
        return _Outcome(EXIT_USAGE, f"{items.changed}; the items read before the change are kept. Restore the "
                                    "file and resume, or resume with --force to continue with the new one")
    return _Outcome(EXIT_OK)


def _first(group: BaseExceptionGroup) -> BaseException:
    """The first leaf exception of a (possibly nested) exception group."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def _finish(config: RunConfig, info: DatasetInfo, checkpoint: Checkpoint, events: EventLog, stats: RunStats,
            outcome: _Outcome, console: Console) -> int:
    try:
        console.print(summary_table(stats, f"hallurun {config.task} · {config.model}"))
        console.print(progress_line(stats), highlight=False)
        if outcome.code == EXIT_OK:
            outcome = _complete(config, info, checkpoint, events, stats, console)
        if outcome.code in (EXIT_OK, EXIT_FAILED_ITEMS):
            return outcome.code
        resume_hint = f"resume with: {resume_command(config.run_dir)}"
        if outcome.code == EXIT_INTERRUPTED:
            console.print(f"interrupted; {resume_hint}", highlight=False)
            return EXIT_INTERRUPTED
        with contextlib.suppress(RunDirWriteError):  # the disk may be the trouble; the message below still goes
            events.emit("run_aborted", reason=outcome.message.splitlines()[0], exit_code=outcome.code)
        if outcome.code == EXIT_IO:
            resume_hint = f"nothing already written is lost; make room, then {resume_hint}"
        errors = Console(stderr=True, soft_wrap=True)
        errors.print(f"error: {outcome.message}\n{resume_hint}", highlight=False, markup=False)
        return outcome.code
    finally:
        events.close()


def _complete(config: RunConfig, info: DatasetInfo, checkpoint: Checkpoint, events: EventLog, stats: RunStats,
              console: Console) -> _Outcome:
    """Every item is settled: write generation.jsonl and say how the run ended."""
    try:
        written, mismatched = write_generation(config, info, config.run_dir / GENERATION)
        code = EXIT_FAILED_ITEMS if checkpoint.failed else EXIT_OK
        events.emit("run_finished", done=len(checkpoint.done), failed=len(checkpoint.failed), exit_code=code,
                    retries=stats.retries, resent=stats.resent, generation_written=written,
                    generation_mismatched=mismatched)
    except DatasetChanged as exc:
        return _Outcome(EXIT_USAGE, f"{exc}; {GENERATION} was not written. Restore the file and resume")
    except RunDirWriteError as exc:
        return _Outcome(EXIT_IO, str(exc))
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
    return _Outcome(code)


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
            for item in iter_items(config.dataset, config.limit, expected=info):
                where = offsets.get(item.id)
                if where is None:
                    continue
                fh.seek(where)
                result = orjson.loads(fh.readline())
                if result.get("prompt") != item.prompt:
                    mismatched += 1
                    continue
                out.write(orjson.dumps({**item.record, "generation": result.get("generation", "")}) + b"\n")
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
