"""Built-in tasks: each is a folder under `tasks/` holding `task.json` (data, not code) and its dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from hallurun.errors import UsageError

_PACKAGE = Path(__file__).resolve().parent


class TaskError(UsageError):
    """An unknown task name, or a task folder that does not hold what it should."""


@dataclass(frozen=True)
class Task:
    """A benchmark task: its name, its default dataset and its default sampling."""

    name: str
    description: str
    dataset: Path
    defaults: dict[str, Any] = field(default_factory=dict)
    evaluator: str | None = None  # which evaluation applies: precisewikiqa, mixedentities, longwiki
    folder: Path | None = None  # where task.json lives, for tasks that keep more files (prompts, passages)


def tasks_root() -> Path:
    """Where built-in tasks live: the folders beside this module, one per task."""
    return _PACKAGE


def load_task(folder: Path) -> Task:
    """Read one task folder."""
    spec_path = folder / "task.json"
    try:
        spec = orjson.loads(spec_path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise TaskError(f"{spec_path}: cannot read task spec ({exc})") from None
    return Task(
        name=spec.get("name", folder.name),
        description=spec.get("description", ""),
        dataset=folder / spec["data"],
        defaults=dict(spec.get("defaults", {})),
        evaluator=spec.get("eval"),
        folder=folder,
    )


def builtin_tasks() -> list[Task]:
    """All built-in tasks, by name."""
    root = tasks_root()
    return [load_task(p.parent) for p in sorted(root.glob("*/task.json"))]


def resolve(name_or_path: str) -> Task:
    """A built-in task by name, a task folder (holding task.json), or an ad-hoc task from a JSONL file."""
    for task in builtin_tasks():
        if task.name == name_or_path:
            return task
    path = Path(name_or_path)
    if (path / "task.json").is_file():
        return load_task(path)
    if path.suffix in {".jsonl", ".json"} or path.exists():
        return Task(name=path.stem, description=f"prompts from {path}", dataset=path)
    names = ", ".join(t.name for t in builtin_tasks())
    raise TaskError(f"unknown task {name_or_path!r}: use one of {names}, or a path to a JSONL file")
