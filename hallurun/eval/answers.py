"""Reading a finished run for `hallurun eval`: what it recorded about itself, and its answers in dataset order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hallurun.core import runner
from hallurun.eval.errors import EvalError
from hallurun.eval.scoring import Need, Record, Scoring, TaskOptions
from hallurun.store import manifest
from hallurun.store import summary as status
from hallurun.store.checkpoint import RESULTS, read_records
from hallurun.store.jsonl import JsonlError, read_objects


@dataclass(frozen=True)
class Recorded:
    """What a run's manifest says about how to score it."""

    run_dir: Path
    task: str
    evaluator: str | None  # the scoring's reference (a built-in name, or a task folder's scoring file)
    model: str


@dataclass(frozen=True)
class RunInput:
    """What eval reads from a finished run: its identity and its answers in dataset order."""

    run_dir: Path
    task: str
    model: str
    source: Path  # generation.jsonl
    records: list[Record]
    inference_failed: int


def recorded(run_dir: Path) -> Recorded:
    """The task, scoring reference and model a run's manifest records."""
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir}: no such run directory")
    try:
        saved = manifest.read(run_dir)
    except manifest.ManifestError as exc:
        raise EvalError(str(exc)) from None
    cfg = saved.get("config", {})
    own = cfg.get("evaluator")
    return Recorded(run_dir=run_dir, task=str(cfg.get("task", "?")), evaluator=None if own is None else str(own),
                    model=str(cfg.get("model", "?")))


def load_run(run_dir: Path, scoring: Scoring, options: TaskOptions) -> RunInput:
    """Check that `run_dir` is a finished run, and read its answers, each carrying the field `scoring` needs."""
    head = recorded(run_dir)
    try:
        summary = status.summarize(run_dir)
    except manifest.ManifestError as exc:
        raise EvalError(str(exc)) from None
    if summary["running_pid"]:
        raise EvalError(f"{run_dir} is still running (pid {summary['running_pid']}); evaluate it once it finishes")
    if not summary["finished"] or summary["pending"]:
        raise EvalError(f"{run_dir} is not finished ({summary['done']}/{summary['total']} done, "
                        f"{summary['pending']} pending); finish it with `hallurun resume {run_dir}`")
    source = run_dir / runner.GENERATION
    if not source.is_file():
        raise EvalError(f"{source}: not found; finish the run with `hallurun resume {run_dir}`")
    records = _read_answers(run_dir, source, scoring.need_for(options), scoring.name)
    if not records:
        raise EvalError(f"{source}: no answers to evaluate")
    return RunInput(run_dir=run_dir, task=head.task, model=head.model, source=source, records=records,
                    inference_failed=int(summary["failed"]))


def _read_answers(run_dir: Path, source: Path, need: Need, scored_as: str) -> list[Record]:
    """The run's answers in generation.jsonl's (dataset) order, each keyed by the run's own id for that item.

    generation.jsonl is HalluLens' format: dataset records plus `generation`, with failed items missing, so a
    record without an `id` cannot be told apart by its position there (the run gave it its dataset position).
    results.jsonl holds every answer beside its item's id and input fields, written as one line, so it is the
    authority: a generation.jsonl line with an `id` is that item; the lines without one are, in order, the run's
    remaining ids, which are dataset positions, in numeric order. Each pairing is checked (same prompt, same
    answer), and the item's fields are taken from results.jsonl, so an answer only ever sits with its question.
    """
    answers = {str(r["id"]): r for r in read_records(run_dir / RESULTS) if "id" in r}
    try:
        lines = list(read_objects(source))
    except JsonlError as exc:
        raise EvalError(str(exc)) from None
    named = {str(record["id"]) for _, record in lines if "id" in record}
    positional = [i for i in answers if i not in named]
    unnamed = sum(1 for _, record in lines if "id" not in record)
    rebuild = f"rebuild it with `hallurun resume {run_dir}`"
    if unnamed != len(positional) or not all(i.isdecimal() for i in positional):
        raise EvalError(f"{source}: its {len(lines)} answer(s) do not match the {len(answers)} in "
                        f"{run_dir / RESULTS}; {rebuild}")
    by_position = iter(sorted(positional, key=int))
    records = []
    for line_no, line in lines:
        where = f"{source}:{line_no}"
        item_id = str(line["id"]) if "id" in line else next(by_position)
        result = answers.get(item_id)
        if result is None or any(line.get(name) != result.get(name) for name in ("prompt", "generation")):
            raise EvalError(f"{where}: this question and answer are not item {item_id!r} of "
                            f"{run_dir / RESULTS}; {rebuild}")
        record: dict[str, Any] = dict(result)  # also the run's bookkeeping (finish_reason, ...), unread by judges
        for name in ("prompt", "generation"):
            if not isinstance(record.get(name), str):
                raise EvalError(f"{where}: field {name!r}: missing or not a string")
        value = record.get(need.field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            record[need.field] = value = str(value)  # a numeric gold answer such as 1889
        if not isinstance(value, str) or not value.strip():
            raise EvalError(f"{where}: field {need.field!r}: missing; a {scored_as} evaluation needs {need.why}")
        record["id"] = item_id
        records.append(record)
    return records
