"""A sweep's folder: a folder per model (`SWEEP/<label>/`, with its server's log and lifetime events) holding
an ordinary run folder per task (`SWEEP/<label>/<task>/`, each with its own `eval/`), `sweep.json` (the spec the
sweep was started with), `lock` while it runs, and the report.

A spec may change under a sweep only by adding models or tasks: anything else would mix results of two
different sweeps in one table, so it is refused, naming the key."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from hallurun.store import manifest
from hallurun.store import summary as run_summary
from hallurun.store.durable import write_atomic
from hallurun.sweep.spec import ModelSpec, SpecError, SweepSpec
from hallurun.tasks import registry

ACCEPTED = "sweep.json"


def task_name(task: str) -> str:
    """A task's name, as its run folders are named."""
    return registry.resolve(task).name


def run_dir(folder: Path, model: ModelSpec, task: str) -> Path:
    """The run folder of `model` on `task`."""
    return folder / model.label / task_name(task)


def is_sweep(folder: Path) -> bool:
    """Whether `folder` holds a sweep."""
    return (folder / ACCEPTED).is_file()


def accepted(folder: Path) -> dict[str, Any]:
    """What `sweep.json` holds: the spec's identity and where it was read from."""
    try:
        return orjson.loads((folder / ACCEPTED).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise SpecError(f"{folder / ACCEPTED}: unreadable ({exc})") from None


def accept(spec: SweepSpec) -> None:
    """Start the sweep's folder, or check that `spec` only adds models or tasks to the sweep already there, and
    record it. Raises SpecError naming the first key that changed."""
    spec.folder.mkdir(parents=True, exist_ok=True)
    new = spec.identity()
    if is_sweep(spec.folder):
        _check_only_adds(spec, accepted(spec.folder)["identity"], new)
    elif any(spec.folder.iterdir()):
        raise SpecError(f"{spec.folder}: not empty and holds no sweep; give the spec another `folder`")
    record = {"identity": new, "source": str(spec.source.resolve()), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_atomic(spec.folder / ACCEPTED, orjson.dumps(record, option=orjson.OPT_INDENT_2))


def _check_only_adds(spec: SweepSpec, old: dict[str, Any], new: dict[str, Any]) -> None:
    where = f"{spec.source}: "
    changed = f"differs from the sweep in {spec.folder}; a spec may only add models or tasks to a sweep"
    for key in ("limit", "sampling", "judge"):
        if old.get(key) != new[key]:
            raise SpecError(f"{where}{key}: {changed}")
    for task in old.get("tasks", []):
        if task not in new["tasks"]:
            raise SpecError(f"{where}tasks: {task!r} is in the sweep and missing here; {changed.split('; ')[1]}")
    ours = {m["label"]: m for m in new["models"]}
    for model in old.get("models", []):
        if model["label"] not in ours:
            raise SpecError(f"{where}models: {model['label']!r} is in the sweep and missing here; "
                            f"{changed.split('; ')[1]}")
        if ours[model["label"]] != model:
            index = [m["label"] for m in new["models"]].index(model["label"])
            raise SpecError(f"{where}models[{index}] ({model['label']}): {changed}")


def judged_runs(folder: Path) -> list[Path]:
    """The sweep's run folders that hold eval results, by model then task (as the spec lists them)."""
    identity = accepted(folder)["identity"]
    paths = [folder / m["label"] / task_name(t) for m in identity["models"] for t in identity["tasks"]]
    return [path for path in paths if (path / "eval_results.json").is_file()]


def grid(folder: Path) -> dict[str, Any]:
    """`hallurun status SWEEP`: each model's run of each task: its state and counts, and whether it is judged."""
    identity = accepted(folder)["identity"]
    tasks = [task_name(t) for t in identity["tasks"]]
    rows = []
    for model in identity["models"]:
        cells = {}
        for task in tasks:
            path = folder / model["label"] / task
            if not (path / manifest.MANIFEST).is_file():
                cells[task] = {"state": "not started"}
                continue
            summary = run_summary.summarize(path)
            state = ("judged" if (path / "eval_results.json").is_file() and summary["finished"] else
                     "answered" if summary["finished"] else
                     "running" if summary["running_pid"] else "stopped")
            cells[task] = {"state": state, "done": summary["done"], "failed": summary["failed"],
                           "total": summary["total"], "restarts": summary["restarts"]}
        rows.append({"model": model["name"], "label": model["label"], "runs": cells})
    return {"sweep": str(folder), "tasks": tasks, "judge": identity["judge"]["model"] or "heuristic", "models": rows,
            "report": str(folder / "report.md") if (folder / "report.md").is_file() else None}


def describe(grid_: dict[str, Any]) -> list[str]:
    """`hallurun status SWEEP`'s lines."""
    lines = [f"{grid_['sweep']}: sweep of {len(grid_['models'])} model(s) over {', '.join(grid_['tasks'])}; judge "
             f"{grid_['judge']}" + (f"; report {grid_['report']}" if grid_["report"] else "")]
    for row in grid_["models"]:
        cells = []
        for task in grid_["tasks"]:
            cell = row["runs"][task]
            counts = f" {cell['done']}/{cell['total']}" if "done" in cell else ""
            cells.append(f"{task} {cell['state']}{counts}")
        lines.append(f"  {row['label']}: " + "; ".join(cells))
    return lines
