"""One request stage of a multi-step job (question generation, its checks) run through the ordinary runner.

A stage is a prompt file plus a run directory inside a work folder:

    WORK/<stage>/prompts.jsonl   the requests, written once (deterministic for the same inputs)
    WORK/<stage>/run/            an ordinary hallurun run: manifest, results.jsonl, events, server.log
                                 (judge stages of `hallurun eval` keep the run in WORK/<stage>/ itself)

so a stage is supervised (wedges, crashes, restarts) and resumable exactly like `hallurun inference`: running
the same job again continues each stage where it stopped and never asks for an item twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from hallurun import config as run_config
from hallurun.config import RunOptions, Sampling, ServerSpec
from hallurun.core import runner
from hallurun.core.handle import RunHandle
from hallurun.core.result import RunResult
from hallurun.core.standalone import run_standalone
from hallurun.errors import EXIT_INTERRUPTED, RunStopped, UsageError
from hallurun.store import manifest
from hallurun.store.checkpoint import FAILURES, read_records
from hallurun.store.dataset import DatasetError, scan
from hallurun.store.durable import write_atomic


class StageError(UsageError):
    """A stage's work folder holds something else than this job would write there (exit code 2)."""


# How a stage's run is driven to its end: given the run's coroutine (for a fresh RunHandle), drive it and return its
# result, or None when it was interrupted before it began. The command line passes `hallurun.process.run`, which
# adds its signal handling; the library's default is a plain event loop of its own.
Executor = Callable[[Callable[[RunHandle], Coroutine[Any, Any, RunResult]]], RunResult | None]


def in_new_loop(main: Callable[[RunHandle], Coroutine[Any, Any, RunResult]]) -> RunResult | None:
    """Drive a stage's run in an event loop of its own (`standalone`: Ctrl-C stops it gracefully, then raises)."""
    return run_standalone(main)


@dataclass(frozen=True)
class Settings:
    """What every stage of one job shares: the model, the server, the operational options, and how each stage's
    run is driven (`execute`)."""

    model: str
    server: ServerSpec = field(default_factory=ServerSpec)
    operational: RunOptions = field(default_factory=RunOptions)
    retry_failed: bool = False
    execute: Executor = in_new_loop


@dataclass(frozen=True)
class Outcome:
    """A finished stage: the generation for every item that got one, and why the others failed."""

    generations: dict[str, str]
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return len(self.failures)


def write_once(path: Path, records: Iterable[dict[str, Any]], run_dir: Path) -> None:
    """Write a prompt file atomically, unless an identical one is there; refuse to replace one a run has used.

    A stage's run is keyed to its prompt file's sha256, so a file must never change under a started run.
    """
    data = b"".join(orjson.dumps(r) + b"\n" for r in records)
    if path.exists() and path.read_bytes() == data:
        return
    if (run_dir / manifest.MANIFEST).exists():
        raise StageError(f"{path} holds different requests than this job would send now (other inputs, options "
                         f"or earlier replies); delete {path.parent.parent} to start over")
    write_atomic(path, data)


def _finished(cfg: run_config.RunConfig, sha256: str) -> bool:
    """True when the stage's run already finished with these requests and nothing is left to retry."""
    try:
        saved = manifest.read(cfg.run_dir)
    except manifest.ManifestError:
        return False
    if saved.get("fingerprint") != manifest.fingerprint(cfg, sha256):
        return False  # the runner reports the mismatch
    tail = deque(read_records(cfg.run_dir / "events.jsonl"), maxlen=1)
    if not tail or tail[0].get("event") != "run_finished":
        return False
    return not (cfg.retry_failed and any(True for _ in read_records(cfg.run_dir / FAILURES)))


def _prepare(name: str, folder: Path, records: list[dict[str, Any]], sampling: Sampling,
             settings: Settings, console: Console, run_dir: Path | None) -> run_config.RunConfig | Outcome:
    """Write the stage's prompts and build its run's configuration; an Outcome when there is nothing to run."""
    prompts = folder / "prompts.jsonl"
    run_dir = run_dir or folder / "run"
    if not records:
        return Outcome({})
    write_once(prompts, records, run_dir)
    cfg = run_config.build(task=name, dataset=prompts, model=settings.model, run_dir=run_dir,
                           sampling=sampling, server=settings.server, options=settings.operational,
                           retry_failed=settings.retry_failed)
    try:
        info = scan(prompts)
    except DatasetError as exc:
        raise StageError(str(exc)) from None
    if _finished(cfg, info.sha256):
        console.print(f"{name}: already finished in {cfg.run_dir}", highlight=False)
        return _read(cfg)
    return cfg


def _settled(cfg: run_config.RunConfig, result: RunResult | None) -> Outcome:
    """The stage's outcome once its run has settled every item; RunStopped when it has not (server trouble: 3,
    interrupted: 130, a run folder that cannot be written: 74), to be continued by running the same job again."""
    if result is None:
        raise RunStopped(EXIT_INTERRUPTED, f"interrupted before stage {cfg.task} began")
    if not result.ok:
        raise RunStopped(result.exit_code, result.message or result.status.replace("_", " "))
    return _read(cfg)


def _read(cfg: run_config.RunConfig) -> Outcome:
    """The generations of a settled stage's run, and why the other items failed."""
    generations = {str(r["id"]): str(r.get("generation") or "") for r in read_records(cfg.run_dir / "results.jsonl")}
    failures = {str(r["id"]): f"{r.get('reason', 'failed')}: {r.get('error', '')}".strip()
                for r in read_records(cfg.run_dir / FAILURES) if str(r.get("id")) not in generations}
    return Outcome(generations, failures)


async def run_async(name: str, folder: Path, records: list[dict[str, Any]], sampling: Sampling,
                    settings: Settings, console: Console, *, run_dir: Path | None = None,
                    handle: RunHandle | None = None) -> Outcome:
    """Run one stage: write its prompts, run (or continue) it through the runner, read its generations.

    A stage already finished is not run again, so a rerun of a finished job starts no server. Cancelling it is an
    interrupt, as for `runner.start_async` (the cancellation is raised after the graceful stop).
    Raises StageError, UsageError or ConfigError for problems a user must fix.
    """
    cfg = _prepare(name, folder, records, sampling, settings, console, run_dir)
    if isinstance(cfg, Outcome):
        return cfg
    return _settled(cfg, await runner.start_async(cfg, console=console, handle=handle))


def run(name: str, folder: Path, records: list[dict[str, Any]], sampling: Sampling, settings: Settings,
        console: Console, *, run_dir: Path | None = None) -> Outcome:
    """`run_async` for synchronous jobs (`hallurun eval`, `hallurun generate`): the stage's run is driven by
    `settings.execute`, an event loop of its own (the command line's comes with its signal handling, so a Ctrl-C
    or SIGTERM stops the stage gracefully, code 130, and a second one at once, as in `hallurun inference`)."""
    cfg = _prepare(name, folder, records, sampling, settings, console, run_dir)
    if isinstance(cfg, Outcome):
        return cfg
    started = cfg
    return _settled(cfg, settings.execute(lambda handle: runner.start_async(started, console=console,
                                                                            handle=handle)))
