"""Running a sweep: every task for one model with one server launch, that server stopped before the next model's
(the GPUs are the next model's), then the judge loaded once for every run's stages, then the report.

It is one job on one event loop (`core.command.in_one_loop`): each run is an ordinary run folder, run by the
ordinary runner, so a sweep stopped anywhere (Ctrl-C, `kill -9`) continues where it stopped when it is run again:
a finished run only rewrites its files (no server is launched for it), a finished judge stage is not asked again.
A run that ends without every item settled (its server could not be kept up) is reported and not judged; the
other models go on, and the sweep's exit code is that run's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from hallurun.config import RunConfig
from hallurun.core import runner
from hallurun.core.command import Host
from hallurun.core.result import RunResult
from hallurun.errors import EXIT_FAILED_ITEMS, EXIT_INTERRUPTED, EXIT_OK, EXIT_SERVER, RunStopped, UsageError
from hallurun.eval.evaluate import evaluate_run
from hallurun.eval.model_judge import ModelJudge, make_judge
from hallurun.sweep import layout, report
from hallurun.sweep.spec import ModelSpec, SpecError, SweepSpec
from hallurun.tasks import registry


@dataclass(frozen=True)
class Cell:
    """One model's run of one task, as the sweep left it."""

    model: ModelSpec
    task: str
    run_dir: Path
    result: RunResult
    judge_failed: bool = False

    @property
    def answered(self) -> bool:
        return self.result.status in ("complete", "failed_items")


@dataclass(frozen=True)
class Swept:
    """A finished sweep: its runs, its report, and the exit code the command ends with."""

    folder: Path
    cells: list[Cell] = field(default_factory=list)
    report: Path | None = None

    @property
    def exit_code(self) -> int:
        """0: every run answered every item and was judged; 1: some items (or judge requests) failed; else the
        code of the first run that could not finish (its server, its disk)."""
        unfinished = next((c.result.exit_code for c in self.cells if not c.answered), None)
        if unfinished is not None:
            return unfinished
        troubled = any(c.result.status == "failed_items" or c.judge_failed for c in self.cells)
        return EXIT_FAILED_ITEMS if troubled else EXIT_OK


Plan = list[tuple[ModelSpec, list[RunConfig]]]


def plan(spec: SweepSpec) -> Plan:
    """Each model's runs, configured before any work starts: a task or a server setting that cannot run is a
    SpecError naming its key (exit 2)."""
    for i, task in enumerate(spec.tasks):
        try:
            registry.resolve(task)
        except UsageError as exc:
            raise SpecError(f"{spec.source}: tasks[{i}]: {exc}") from None
    planned: Plan = []
    for i, model in enumerate(spec.models):
        try:
            planned.append((model, [registry.configure(
                task, model=model.name, run_dir=layout.run_dir(spec.folder, model, task),
                limit=model.limit or spec.limit, sampling=spec.sampling, server=model.server,
                options=spec.options) for task in spec.tasks]))
        except UsageError as exc:
            raise SpecError(f"{spec.source}: models[{i}] ({model.label}): {exc}") from None
    return planned


def job(spec: SweepSpec, planned: Plan, console: Console) -> Callable[[Host], Swept]:
    """The sweep as a job for `core.command.in_one_loop`."""
    return lambda host: _sweep(spec, planned, console, host)


def _sweep(spec: SweepSpec, planned: Plan, console: Console, host: Host) -> Swept:
    cells: list[Cell] = []
    for model, configs in planned:
        for task, config in zip(spec.tasks, configs, strict=True):
            console.rule(f"{model.label} · {config.task}")
            result = host(lambda handle, c=config: runner.start_async(c, console=console, handle=handle))
            if result is None or result.status == "interrupted":
                raise RunStopped(EXIT_INTERRUPTED, _continue(spec))
            cells.append(Cell(model, task, config.run_dir, result))
            if result.exit_code == EXIT_SERVER:
                # Its server could not be started or kept up: its other tasks would only wait for it again.
                console.print(f"{model.label}: its server failed; its other tasks are left for the next try",
                              highlight=False)
                break
        host.release(configs[-1])  # the next model's server needs the GPUs
    judge = make_judge(spec.judge.model, spec.judge.url, spec.judge.server, spec.options)
    if isinstance(judge, ModelJudge):
        judge = dataclasses.replace(judge, execute=host)  # its stages on the sweep's loop, its server loaded once
    judged = []
    for cell in cells:
        if not cell.answered:
            judged.append(cell)
            continue
        console.rule(f"judging {cell.model.label} · {cell.run_dir.name} ({judge.name})")
        try:
            done = evaluate_run(cell.run_dir, registry.scoring_of_run(cell.run_dir, None), [judge], console)
        except RunStopped as exc:
            if exc.exit_code == EXIT_INTERRUPTED:
                raise RunStopped(EXIT_INTERRUPTED, _continue(spec)) from None
            raise
        judged.append(Cell(cell.model, cell.task, cell.run_dir, cell.result, judge_failed=done.judge_failed))
    written = report.write(spec.folder, [(c.model, c.run_dir) for c in judged if c.answered], judge.name, console)
    return Swept(spec.folder, judged, written)


def _continue(spec: SweepSpec) -> str:
    return f"interrupted; run `hallurun sweep {spec.source}` again (or `hallurun resume {spec.folder}`) to continue"
