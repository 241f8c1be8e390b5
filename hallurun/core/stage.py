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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from hallurun import config as run_config
from hallurun.config import RunOptions, Sampling, ServerSpec
from hallurun.core import runner
from hallurun.core.handle import RunHandle
from hallurun.errors import EXIT_FAILED_ITEMS, EXIT_INTERRUPTED, EXIT_OK, UsageError
from hallurun.store import manifest
from hallurun.store.checkpoint import FAILURES, read_records
from hallurun.store.dataset import DatasetError, scan
from hallurun.store.durable import write_atomic


class StageError(UsageError):
    """A stage's work folder holds something else than this job would write there (exit code 2)."""


@dataclass(frozen=True)
class Settings:
    """What every stage of one job shares: the model, the server, and the operational options.

    `server` and `operational` are typed (`ServerSpec`, `RunOptions`); a mapping of the same names is taken too
    and turned into them here, so that a misspelt name is a TypeError where the settings are made (the eval
    judge and `hallurun generate` still pass mappings until integration). None, or None values in a mapping:
    not given.
    """

    model: str
    server: ServerSpec | Mapping[str, Any] | None = field(default_factory=ServerSpec)
    operational: RunOptions | Mapping[str, Any] | None = field(default_factory=RunOptions)
    retry_failed: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.server, ServerSpec):
            given = {k: v for k, v in (self.server or {}).items() if v is not None}
            if "args" in given:
                given["args"] = tuple(given["args"])
            object.__setattr__(self, "server", ServerSpec(**given))
        if not isinstance(self.operational, RunOptions):
            object.__setattr__(self, "operational", RunOptions(**dict(self.operational or {})))

    @property
    def server_spec(self) -> ServerSpec:
        """The server, typed (as it always is after construction)."""
        assert isinstance(self.server, ServerSpec)
        return self.server

    @property
    def options(self) -> RunOptions:
        """The operational options, typed (as they always are after construction)."""
        assert isinstance(self.operational, RunOptions)
        return self.operational


@dataclass(frozen=True)
class Outcome:
    """A finished stage: its exit code, the generation for every item that got one, and why others failed."""

    code: int
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


def _prepare(name: str, folder: Path, records: list[dict[str, Any]], sampling: Sampling | Mapping[str, Any],
             settings: Settings, console: Console, run_dir: Path | None) -> run_config.RunConfig | Outcome:
    """Write the stage's prompts and build its run's configuration; an Outcome when there is nothing to run."""
    prompts = folder / "prompts.jsonl"
    run_dir = run_dir or folder / "run"
    if not records:
        return Outcome(EXIT_OK, {})
    write_once(prompts, records, run_dir)
    cfg = run_config.build(task=name, dataset=prompts, model=settings.model, run_dir=run_dir,
                           sampling=sampling if isinstance(sampling, Sampling) else Sampling(**sampling),
                           server=settings.server_spec, options=settings.options,
                           retry_failed=settings.retry_failed)
    try:
        info = scan(prompts)
    except DatasetError as exc:
        raise StageError(str(exc)) from None
    if _finished(cfg, info.sha256):
        console.print(f"{name}: already finished in {cfg.run_dir}", highlight=False)
        return _read(cfg, EXIT_OK)
    return cfg


def _read(cfg: run_config.RunConfig, code: int) -> Outcome:
    if code not in (EXIT_OK, EXIT_FAILED_ITEMS):
        return Outcome(code, {})
    generations = {str(r["id"]): str(r.get("generation") or "") for r in read_records(cfg.run_dir / "results.jsonl")}
    failures = {str(r["id"]): f"{r.get('reason', 'failed')}: {r.get('error', '')}".strip()
                for r in read_records(cfg.run_dir / FAILURES) if str(r.get("id")) not in generations}
    return Outcome(EXIT_FAILED_ITEMS if failures else EXIT_OK, generations, failures)


async def run_async(name: str, folder: Path, records: list[dict[str, Any]], sampling: Sampling | Mapping[str, Any],
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
    result = await runner.start_async(cfg, console=console, handle=handle)
    return _read(cfg, result.exit_code)


def run(name: str, folder: Path, records: list[dict[str, Any]], sampling: Sampling | Mapping[str, Any],
        settings: Settings, console: Console, *, run_dir: Path | None = None) -> Outcome:
    """`run_async` for the synchronous commands that call it today (`hallurun eval`, `hallurun generate`): the
    stage runs in an event loop of its own under the command line's signal handling (`hallurun.process`), so a
    Ctrl-C or SIGTERM stops it gracefully (code 130) and a second one at once, as in `hallurun inference`.

    Transitional: it reaches up to the command line's layer for that, until those commands drive `run_async`
    under `hallurun.process.run` themselves (integration).
    """
    from hallurun import process

    cfg = _prepare(name, folder, records, sampling, settings, console, run_dir)
    if isinstance(cfg, Outcome):
        return cfg
    started = cfg
    result = process.run(lambda handle: runner.start_async(started, console=console, handle=handle), console)
    return _read(cfg, EXIT_INTERRUPTED if result is None else result.exit_code)
