"""hallurun's Python API: run a task's prompts against a supervised server, exactly once, from Python.

    import hallurun
    result = hallurun.run(task, model="meta-llama/Llama-3.1-8B-Instruct", run_dir="runs/x")  # a task name or folder
    result = await hallurun.run_async(...)      # inside any running event loop
    result = hallurun.resume("runs/x")
    found = hallurun.evaluate("runs/x")               # the heuristic judge; judge="MODEL" for an LLM judge
    hallurun.run(task, model=..., run_dir="runs/big", shard=Shard(2, 4))  # one shard, in runs/big/shard-2-of-4
    hallurun.merge("runs/big")                        # every shard joined, each id once; then evaluate it

Every run call returns a `RunResult` (status, counts, `exit_code`); `evaluate` returns an `Evaluated` (the
metrics of each judge, and their agreement). Problems a user must fix before any work starts
(an unknown task, a bad option, a malformed dataset line, a run directory held by another hallurun) are raised
as `UsageError` subclasses. Nothing is printed unless a rich `Console` is given.

The async calls own no signal and never exit the process: cancelling their task is the interrupt. The run stops
gracefully (the server stopped, every result flushed; the run resumes where it stopped) and the cancellation is
raised again, as asyncio asks; the interrupted `RunResult` is then on the `RunHandle`, if one was passed. The
sync calls run the async ones in a new event loop (`core.standalone`): the first Ctrl-C cancels the run (a
graceful stop), a further one kills the server trees at once without abandoning the stop, and KeyboardInterrupt
is raised once the run has stopped (a run that had settled every item returns its result). They install no
SIGTERM handler in the caller's process; `kill -9` or an unhandled SIGTERM still leave no server behind (the
guardian process reaps it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from hallurun.config import (
    RunConfig,
    RunOptions,
    SamplingOverrides,
    ServerKind,
    ServerOptions,
    ServerSpec,
    Shard,
)
from hallurun.core import runner
from hallurun.core.command import Host, in_one_loop
from hallurun.core.handle import RunHandle
from hallurun.core.result import RunResult
from hallurun.core.standalone import run_standalone
from hallurun.errors import EXIT_INTERRUPTED, RunStopped, UsageError
from hallurun.eval.evaluate import Evaluated, evaluate_run
from hallurun.eval.judge import Judge
from hallurun.eval.model_judge import ModelJudge, make_judge
from hallurun.store.lock import RunLock
from hallurun.store.merge import Merged
from hallurun.store.merge import merge as merge_shards
from hallurun.sweep import drive as sweep_drive
from hallurun.sweep import layout as sweep_layout
from hallurun.sweep import spec as sweep_spec
from hallurun.sweep.drive import Swept
from hallurun.tasks import registry

# How a command's event loop is driven: given its coroutine (for a fresh RunHandle), run it to its end and return
# what it returns (None: interrupted before it began). The library's default is `core.standalone.run_standalone`;
# the command line passes `hallurun.process.run`, with its signal handling.
Driver = Callable[[Callable[[RunHandle], Coroutine[Any, Any, Any]]], Any]


def latest_run(root: str | Path = "runs") -> Path:
    """The most recently created run folder under `root`; UsageError when there is none."""
    return runner.latest_run(Path(root))


def configure(task: str | Path, *, model: str, run_dir: str | Path | None = None, dataset: str | Path | None = None,
              limit: int | None = None, sampling: SamplingOverrides | None = None,
              server: ServerSpec | ServerKind = "vllm", options: RunOptions | None = None,
              shard: Shard | None = None, environ: Mapping[str, str] | None = None) -> RunConfig:
    """The configuration `run` uses: `task` (a built-in task's name, a task folder or a JSONL file of prompts)
    with its default sampling and data, and what is given over them. `run_dir` defaults to
    `runs/<task>-<model>-<timestamp>`; `dataset` replaces a built-in task's data with a file of the same format.
    HalluLens' ENABLE_SERVER_RESTART and SERVER_RESTART_WAIT_TIME are read from `environ` (default: the
    process's environment) unless `options` gives them. With `shard`, the run is that shard of a sharded run:
    `run_dir` (required) is the folder all shards share, and this one runs in `run_dir/shard-I-of-N`; join them
    with `merge`. Raises UsageError (TaskError, ConfigError)."""
    return registry.configure(task, model=model, run_dir=run_dir, dataset=dataset, limit=limit, sampling=sampling,
                              server=server, options=options, shard=shard, environ=environ)


async def start_async(config: RunConfig, *, console: Console | None = None,
                      handle: RunHandle | None = None) -> RunResult:
    """Run (or continue) the run a `configure`d RunConfig describes, in the running event loop."""
    return await runner.start_async(config, console=console, handle=handle)


async def run_async(task: str | Path, *, model: str, run_dir: str | Path | None = None,
                    dataset: str | Path | None = None, limit: int | None = None,
                    sampling: SamplingOverrides | None = None, server: ServerSpec | ServerKind = "vllm",
                    options: RunOptions | None = None, shard: Shard | None = None, console: Console | None = None,
                    handle: RunHandle | None = None) -> RunResult:
    """Run a task's prompts (see `configure` for the arguments), in the running event loop, to a `RunResult`;
    a run directory that already holds this run is continued. `server` is "vllm" (launched), "mock" (the
    fault-injecting mock, launched) or a `ServerSpec` (`ServerSpec(url=...)` for a server you run). `console`
    shows what the command line shows (progress, summary, resume hint; None: silent). `handle` reaches the run
    from outside its task, and holds the result of a cancelled one."""
    config = configure(task, model=model, run_dir=run_dir, dataset=dataset, limit=limit, sampling=sampling,
                       server=server, options=options, shard=shard)
    return await start_async(config, console=console, handle=handle)


def run(task: str | Path, *, model: str, run_dir: str | Path | None = None, dataset: str | Path | None = None,
        limit: int | None = None, sampling: SamplingOverrides | None = None,
        server: ServerSpec | ServerKind = "vllm", options: RunOptions | None = None, shard: Shard | None = None,
        console: Console | None = None) -> RunResult:
    """`run_async` in a new event loop, for code that has none running (see the module's note on Ctrl-C)."""
    return run_standalone(lambda handle: run_async(task, model=model, run_dir=run_dir, dataset=dataset, limit=limit,
                                                   sampling=sampling, server=server, options=options, shard=shard,
                                                   console=console, handle=handle))


async def resume_async(run_dir: str | Path | None = None, *, options: RunOptions | None = None,
                       server: ServerOptions | None = None, retry_failed: bool = False, force: bool = False,
                       console: Console | None = None, handle: RunHandle | None = None) -> RunResult:
    """Continue a run from its manifest (default: the most recent under runs/). Task, model, sampling and data
    come from the manifest; `options` and the server's launch settings (`server`: port, python, startup timeout,
    arguments) may change. `retry_failed` runs the failed items again; `force` continues on a changed dataset."""
    chosen = Path(run_dir) if run_dir is not None else runner.latest_run()
    return await runner.resume_async(chosen, options=options, server=server, retry_failed=retry_failed,
                                     force=force, console=console, handle=handle)


def resume(run_dir: str | Path | None = None, *, options: RunOptions | None = None,
           server: ServerOptions | None = None, retry_failed: bool = False, force: bool = False,
           console: Console | None = None) -> RunResult:
    """`resume_async` in a new event loop, for code that has none running (see the module's note on Ctrl-C)."""
    return run_standalone(lambda handle: resume_async(run_dir, options=options, server=server,
                                                      retry_failed=retry_failed, force=force, console=console,
                                                      handle=handle))


def evaluate(run_dir: str | Path | None = None, *, judge: str | None = None, judge_url: str | None = None,
             judge_server: ServerSpec | ServerKind = "vllm", compare_judge: str | None = None,
             evaluator: str | None = None, passages: str | Path | None = None, options: RunOptions | None = None,
             console: Console | None = None, drive: Driver = run_standalone) -> Evaluated:
    """Judge a finished run's answers (default: the most recent run under runs/) as its task scores them, and
    write RUN_DIR/eval_results.json, RUN_DIR/eval/<judge>/ (judgments, results, the task's chart).

    `judge` is a model (its server launched as `judge_server` says, or the one at `judge_url`), or None /
    "heuristic" for the offline, approximate judge. `compare_judge` adds a second judge and measures how often the
    two agree. `evaluator` scores a run of a plain prompt file as a built-in task; `passages` is a task option
    (claims verified against them). `options` are the judge stages' operational options. Every stage runs on one
    event loop, driven by `drive` (the command line passes its signal handling), so that each judge's server is
    launched once for all its stages and retries. Returns every judge's metrics
    (`Evaluated.results`: the first judge's eval_results.json). Raises UsageError subclasses for bad input and
    RunStopped when a judge stage stopped (run the same call again to continue)."""
    chosen = Path(run_dir) if run_dir is not None else runner.latest_run()
    if evaluator is not None and evaluator not in registry.evaluators():
        raise UsageError(f"--evaluator {evaluator}: unknown; use one of {', '.join(registry.evaluators())}")
    server = ServerSpec(kind=judge_server) if isinstance(judge_server, str) else judge_server
    if server.kind == "external" and not (judge_url or server.url):
        raise UsageError("--judge-server external needs --judge-url")
    judges = [make_judge(name, judge_url or server.url, server, options or RunOptions())
              for name in (judge, *((compare_judge,) if compare_judge else ()))]
    if len(judges) > 1 and judges[1].name == judges[0].name:
        raise UsageError(f"--compare-judge {compare_judge} is the judge already given; name a different one")
    task_options = {"passages": Path(passages)} if passages is not None else {}
    scoring = registry.scoring_of_run(chosen, evaluator, task_options)
    shown = console or Console(quiet=True)

    def job(host: Host) -> Evaluated:
        return evaluate_run(chosen, scoring, [_on(host, j) for j in judges], shown, options=task_options)

    done = drive(lambda handle: in_one_loop(job, handle))
    if done is None:
        raise RunStopped(EXIT_INTERRUPTED, "interrupted before the evaluation began")
    return done


def merge(run_dir: str | Path) -> Merged:
    """Join the shards of a sharded run (`run_dir/shard-I-of-N`, each finished) into `run_dir` itself: its
    results.jsonl, failures.jsonl, generation.jsonl (dataset order) and manifest, every id exactly once; then
    `evaluate(run_dir)` scores the whole run. Raises MergeRefused (a UsageError, one line per problem: a missing,
    unfinished or foreign shard) before writing anything."""
    return merge_shards(Path(run_dir))


def sweep(spec: str | Path, *, console: Console | None = None, drive: Driver = run_standalone,
          folder: str | Path | None = None) -> Swept:
    """`hallurun sweep SPEC.toml`: every task of the spec for each of its models (each model's server launched
    once for all its tasks), then its judge loaded once for every run, then SWEEP/report.md, .csv, .json and the
    figures. Run again (or `resume_sweep`), it continues where it stopped and redoes nothing settled; a spec
    changed under its sweep is refused unless it only adds models or tasks. Returns a `Swept` (its `exit_code`:
    0, 1 when items failed, else the first unfinished run's); raises SpecError (a UsageError naming the key) for
    a bad spec, RunStopped when it was stopped. `folder` overrides the spec's."""
    chosen = sweep_spec.load(Path(spec))
    if folder is not None:  # the sweep's folder as found (the spec's may be relative to another directory)
        chosen = dataclasses.replace(chosen, folder=Path(folder))
    planned = sweep_drive.plan(chosen)
    sweep_layout.accept(chosen)
    lock = RunLock(chosen.folder)
    lock.acquire()  # RunDirBusy (75): another hallurun runs this sweep
    try:
        shown = console or Console(quiet=True)
        done = drive(lambda handle: in_one_loop(sweep_drive.job(chosen, planned, shown), handle))
    finally:
        lock.release()
    if done is None:
        raise RunStopped(EXIT_INTERRUPTED, "interrupted before the sweep began")
    return done


def resume_sweep(folder: str | Path, *, console: Console | None = None, drive: Driver = run_standalone) -> Swept:
    """Continue the sweep in `folder` from the spec file it was started with (`sweep`)."""
    source = Path(str(sweep_layout.accepted(Path(folder))["source"]))
    if not source.is_file():
        raise UsageError(f"{Path(folder) / sweep_layout.ACCEPTED}: its spec {source} is gone; run `hallurun sweep "
                         "SPEC.toml` with the spec")
    return sweep(source, console=console, drive=drive, folder=folder)


def is_sweep(folder: str | Path) -> bool:
    """Whether `folder` holds a sweep (`sweep`), not a run."""
    return sweep_layout.is_sweep(Path(folder))


def runs_of(folder: str | Path) -> list[Path]:
    """The run folders of a sweep that have been judged, by model then task; a run folder is itself."""
    chosen = Path(folder)
    return sweep_layout.judged_runs(chosen) if is_sweep(chosen) else [chosen]


def _on(host: Host, judge: Judge) -> Judge:
    """A model judge whose stages run on the command's loop, with its servers."""
    return dataclasses.replace(judge, execute=host) if isinstance(judge, ModelJudge) else judge
