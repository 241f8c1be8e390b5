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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from hallurun import config as run_config
from hallurun.core import runner
from hallurun.errors import UsageError
from hallurun.store import manifest
from hallurun.store.checkpoint import FAILURES, read_records
from hallurun.store.dataset import DatasetError, scan
from hallurun.store.durable import write_atomic
from hallurun.tasks.registry import Task


class StageError(UsageError):
    """A stage's work folder holds something else than this job would write there (exit code 2)."""


@dataclass(frozen=True)
class Settings:
    """What every stage of one job shares: the model, the server, and the operational options."""

    model: str
    server: dict[str, Any] = field(default_factory=dict)  # config.build's `server` dict
    operational: dict[str, Any] = field(default_factory=dict)  # config.build's `operational` dict
    retry_failed: bool = False


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
        return False  # runner.start reports the mismatch
    tail = deque(read_records(cfg.run_dir / "events.jsonl"), maxlen=1)
    if not tail or tail[0].get("event") != "run_finished":
        return False
    return not (cfg.retry_failed and any(True for _ in read_records(cfg.run_dir / FAILURES)))


def run(name: str, folder: Path, records: list[dict[str, Any]], sampling: dict[str, Any], settings: Settings,
        console: Console, *, run_dir: Path | None = None) -> Outcome:
    """Run one stage: write its prompts, run (or continue) it through `runner.start`, read its generations.

    A stage already finished is not run again, so a rerun of a finished job starts no server.
    Raises StageError, runner.UsageError or config.ConfigError for problems a user must fix.
    """
    prompts = folder / "prompts.jsonl"
    run_dir = run_dir or folder / "run"
    if not records:
        return Outcome(runner.EXIT_OK, {})
    write_once(prompts, records, run_dir)
    task = Task(name=name, description=f"hallurun stage {name}", dataset=prompts, defaults=sampling)
    cfg = run_config.build(task, model=settings.model, run_dir=run_dir, server=settings.server,
                           operational={**settings.operational, "retry_failed": settings.retry_failed})
    try:
        info = scan(prompts)
    except DatasetError as exc:
        raise StageError(str(exc)) from None
    if _finished(cfg, info.sha256):
        console.print(f"{name}: already finished in {cfg.run_dir}", highlight=False)
        code = runner.EXIT_OK
    else:
        code = runner.start(cfg, console)
    if code not in (runner.EXIT_OK, runner.EXIT_FAILED_ITEMS):
        return Outcome(code, {})
    generations = {str(r["id"]): str(r.get("generation") or "") for r in read_records(cfg.run_dir / "results.jsonl")}
    failures = {str(r["id"]): f"{r.get('reason', 'failed')}: {r.get('error', '')}".strip()
                for r in read_records(cfg.run_dir / FAILURES) if str(r.get("id")) not in generations}
    return Outcome(runner.EXIT_FAILED_ITEMS if failures else runner.EXIT_OK, generations, failures)
