"""The tasks hallurun knows: the built-in ones (one folder each under `tasks/`, listed in BUILTIN), and any task
folder a user points `--task` at.

A task folder holds `task.json` (name, description, data file, default sampling, evaluation) and its data. Its
evaluation is either a built-in scoring, named in `"eval"` (`"eval": "precisewikiqa"`), or the folder's own code,
named in `"scoring"` (`"scoring": "scoring.py"`, a file exporting `SCORING`, an `hallurun.eval.scoring.Scoring`).

A run records how it is scored in its manifest's `evaluator`: the built-in scoring's name, or the absolute path of
the folder's scoring file (which is not part of the dataset, so `--dataset` does not lose it). `hallurun eval`
finds the scoring again from that value (`scoring`), so a run is evaluated by the code its task named.

Every built-in plugin is validated when this module loads (`eval.scoring.validate`), and a folder's own scoring
when the folder is read, so an incomplete scoring fails before any request is sent.

Adding a built-in task: its folder (task.json, data, an `__init__.py` that defines `PLUGIN`) and one line below.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from hallurun.config import (
    ConfigError,
    RunConfig,
    RunOptions,
    SamplingOverrides,
    ServerKind,
    ServerSpec,
    Shard,
    sampling_defaults,
)
from hallurun.config import build as build_config
from hallurun.errors import UsageError
from hallurun.eval.scoring import Column, Results, Scoring, ScoringError, validate
from hallurun.tasks.plugin import Generator, TaskPlugin

_PACKAGE = Path(__file__).resolve().parent
SCORING_EXPORT = "SCORING"  # what a task folder's scoring file must define


class TaskError(UsageError):
    """An unknown task name, or a task folder that does not hold what it should."""


def _plugin(name: str) -> TaskPlugin:
    return importlib.import_module(f"hallurun.tasks.{name}").PLUGIN  # type: ignore[no-any-return]


# The built-in tasks, by name (the name in each folder's task.json).
BUILTIN: dict[str, TaskPlugin] = {
    "precisewikiqa": _plugin("precisewikiqa"),
    "mixedentities": _plugin("mixedentities"),
    "longwiki": _plugin("longwiki"),
}


@dataclass(frozen=True)
class Task:
    """A benchmark task: its name, its default dataset and its default sampling."""

    name: str
    description: str
    dataset: Path
    defaults: dict[str, Any] = field(default_factory=dict)  # sampling: api, max_tokens, temperature, top_p
    # How `hallurun eval` scores it, as its runs record it: a built-in scoring's name, the path of the folder's
    # scoring file, or None (no evaluation).
    evaluator: str | None = None
    folder: Path | None = None  # where task.json lives, for tasks that keep more files (prompts, passages)


def tasks_root() -> Path:
    """Where built-in tasks live: the folders beside this module, one per task."""
    return _PACKAGE


def load_task(folder: Path) -> Task:
    """Read one task folder; a scoring file it names is loaded and validated now."""
    task_file = folder / "task.json"
    try:
        declared = orjson.loads(task_file.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise TaskError(f"{task_file}: cannot read it ({exc})") from None
    evaluator = declared.get("eval")
    if declared.get("scoring") is not None:
        if evaluator is not None:
            raise TaskError(f"{task_file}: give \"eval\" (a built-in scoring) or \"scoring\" (a file), not both")
        evaluator = str((folder / declared["scoring"]).resolve())
        scoring(evaluator)  # fail now, not after the run
    elif evaluator is not None and evaluator not in evaluators():
        raise TaskError(f"{task_file}: field 'eval': unknown evaluation {evaluator!r}; use one of "
                        f"{', '.join(evaluators())}, null, or \"scoring\": a file of your own")
    return Task(
        name=declared.get("name", folder.name),
        description=declared.get("description", ""),
        dataset=folder / declared["data"],
        defaults=dict(declared.get("defaults", {})),
        evaluator=evaluator,
        folder=folder,
    )


def builtin_tasks() -> list[Task]:
    """All built-in tasks, by name."""
    return sorted((load_task(plugin.folder) for plugin in BUILTIN.values()), key=lambda t: t.name)


def resolve(name_or_path: str) -> Task:
    """A built-in task by name, a task folder (holding task.json), or an ad-hoc task from a JSONL file."""
    if name_or_path in BUILTIN:
        return load_task(BUILTIN[name_or_path].folder)
    path = Path(name_or_path)
    if (path / "task.json").is_file():
        return load_task(path)
    if path.suffix in {".jsonl", ".json"} or path.exists():
        return Task(name=path.stem, description=f"prompts from {path}", dataset=path)
    names = ", ".join(t.name for t in builtin_tasks())
    raise TaskError(f"unknown task {name_or_path!r}: use one of {names}, or a path to a JSONL file")


def evaluators() -> list[str]:
    """The built-in scorings' names: what `hallurun eval --evaluator` takes."""
    return [name for name, plugin in BUILTIN.items() if plugin.scoring is not None]


def generators() -> dict[str, Generator]:
    """The built-in tasks that can generate their dataset: what `hallurun generate --task` takes."""
    return {name: plugin.generator for name, plugin in BUILTIN.items() if plugin.generator is not None}


# --- finding a scoring ----------------------------------------------------------------------------------

def scoring(ref: str) -> Scoring:
    """The scoring a run's `evaluator` names: a built-in one by name, or a task folder's scoring file."""
    plugin = BUILTIN.get(ref)
    if plugin is not None and plugin.scoring is not None:
        return plugin.scoring
    path = Path(ref)
    if path.suffix != ".py":
        raise TaskError(f"unknown evaluator {ref!r}; hallurun scores {', '.join(evaluators())}")
    return _load_scoring_file(path)


@functools.cache  # one import per file: the run's check and its eval share it
def _load_scoring_file(path: Path) -> Scoring:
    """Import a task folder's scoring file by its path and check the SCORING it exports."""
    if not path.is_file():
        raise TaskError(f"{path}: scoring file not found")
    # A module name of its own per file, so that two folders' scoring.py never replace each other.
    name = f"hallurun_task_scoring_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a module up by name while it runs
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: any error in it is reported as theirs, with where it was
        del sys.modules[name]
        raise TaskError(f"{path}: importing it failed ({type(exc).__name__}: {exc})") from None
    found = getattr(module, SCORING_EXPORT, None)
    if not isinstance(found, Scoring):
        raise TaskError(f"{path}: defines no {SCORING_EXPORT} (an hallurun.eval.scoring.Scoring)")
    if found.name in BUILTIN:
        raise TaskError(f"{path}: its scoring is named {found.name!r}, the name of a built-in task's; "
                        "give it a name of its own")
    try:
        return validate(found)
    except ScoringError as exc:
        raise TaskError(f"{path}: {exc}") from None


def scoring_of_run(run_dir: Path, requested: str | None, options: Collection[str] = ()) -> Scoring:
    """How to score a finished run: its task's scoring (from its manifest), or `requested` (`--evaluator`) for a
    run whose task names none. `options` are the names of the task options given, checked against it."""
    from hallurun.eval.answers import recorded  # reads the run; kept out of the registry's import
    from hallurun.eval.errors import EvalError

    head = recorded(run_dir)
    task, own = head.task, head.evaluator
    if requested and own and requested != own:
        raise EvalError(f"{run_dir} is a run of task {task!r}, which is scored as {own}; "
                        f"--evaluator {requested} does not apply to it")
    chosen = requested or own
    if chosen is None:
        raise EvalError(f"{run_dir} is a run of {task!r}, which names no evaluator; pass --evaluator "
                        f"{'|'.join(evaluators())} to score its answers as that task")
    try:
        found = scoring(chosen)
    except TaskError as exc:
        raise EvalError(f"{run_dir}: {exc}") from None
    for option in options:
        if option not in {o.name for o in found.options}:
            owners = [name for name in evaluators()
                      if option in {o.name for o in BUILTIN[name].scoring.options}]  # type: ignore[union-attr]
            raise EvalError(f"--{option} applies to {' and '.join(owners) or 'no'} runs; {run_dir} is scored as "
                            f"{chosen}")
    return found


def headline_of_run(run_dir: Path, results: Results) -> tuple[Column, ...]:
    """The headline metrics of a run's eval results (for `hallurun compare`): its built-in scoring's by name,
    else that of the scoring its manifest records; none when neither can be found."""
    plugin = BUILTIN.get(str(results.get("evaluator")))
    if plugin is not None and plugin.scoring is not None:
        return plugin.scoring.headline
    from hallurun.eval.answers import recorded
    from hallurun.eval.errors import EvalError

    try:
        ref = recorded(run_dir).evaluator
        return scoring(ref).headline if ref else ()
    except (EvalError, TaskError):
        return ()


def _check_builtins() -> None:
    """Every built-in plugin's folder holds its task.json, whose name and evaluation are the plugin's, and every
    scoring is complete: a plugin that would fail in a report fails here, at import."""
    for name, plugin in BUILTIN.items():
        task = load_task(plugin.folder)
        if task.name != name:
            raise TaskError(f"{plugin.folder}/task.json: name {task.name!r}, but the registry lists it as {name!r}")
        if plugin.scoring is not None:
            validate(plugin.scoring)
            if plugin.scoring.name != name or task.evaluator != name:
                raise TaskError(f"{plugin.folder}/task.json: field 'eval' must name its own scoring, {name!r}")


_check_builtins()


# --- a run's configuration ----------------------------------------------------------------------------------

def configure(task: str | Path, *, model: str, run_dir: str | Path | None = None, dataset: str | Path | None = None,
              limit: int | None = None, sampling: SamplingOverrides | None = None,
              server: ServerSpec | ServerKind = "vllm", options: RunOptions | None = None,
              shard: Shard | None = None, environ: Mapping[str, str] | None = None) -> RunConfig:
    """A run's configuration from its task (see `hallurun.api.configure`, which is this)."""
    from hallurun.core.runner import default_run_dir

    found = resolve(str(task))
    if shard is not None and run_dir is None:
        raise ConfigError("--shard needs --run-dir: the folder every shard writes into, on storage they all share")
    folder = Path(run_dir) if run_dir is not None else default_run_dir(found.name, model)
    named = Path(task)
    ref = str(named.resolve()) if named.exists() else str(task)  # how a merge names the command of a shard
    return build_config(task=found.name, dataset=Path(dataset) if dataset is not None else found.dataset,
                        evaluator=found.evaluator, sampling=sampling_defaults(found.defaults), overrides=sampling,
                        model=model, run_dir=folder / shard.folder if shard is not None else folder, limit=limit,
                        server=server, options=options, shard=shard, task_ref=ref, environ=environ)
