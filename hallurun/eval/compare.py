"""`hallurun compare`: several runs' evaluation results side by side.

Which metrics a run's results hold is its scoring's headline; the caller finds each run's (the task registry
does, from the run's manifest) and hands them in."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import orjson
from rich.table import Table

from hallurun.eval.errors import EvalError
from hallurun.eval.layout import EVAL_DIR, EVAL_RESULTS
from hallurun.eval.report import judge_label, percent
from hallurun.eval.scoring import Column, Results

COUNTS = ("items", "scored", "unparseable", "judge_failed", "inference_failed")


def load(run_dir: Path, judge: str | None = None) -> Results:
    """A run's latest eval results, or those of one judge (`eval/<judge>/eval_results.json`)."""
    path = run_dir / EVAL_DIR / judge / EVAL_RESULTS if judge else run_dir / EVAL_RESULTS
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir}: no such run directory")
    if not path.is_file():
        hint = f"`hallurun eval {run_dir}" + (f" --judge {judge}`" if judge else "`")
        raise EvalError(f"{path}: not found; evaluate the run first with {hint}")
    try:
        results = orjson.loads(path.read_bytes())
        if not isinstance(results["evaluator"], str) or not isinstance(results["counts"], dict):
            raise TypeError("no evaluator or counts")
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise EvalError(f"{path}: not a hallurun eval result ({exc})") from None
    return results


def table(runs: list[tuple[Path, Results]], headlines: Sequence[Sequence[Column]]) -> Table:
    """Metrics as rows, runs as columns (`headlines`: each run's headline metrics, in the same order); a metric a
    run's task does not have shows as blank."""
    out = Table(title="hallurun compare", title_justify="left")
    out.add_column("", style="bold")
    for run_dir, _ in runs:
        out.add_column(run_dir.name, justify="right", overflow="fold")
    for key in ("task", "model"):
        out.add_row(key, *(str(r.get(key, "")) for _, r in runs))
    out.add_row("judge", *(judge_label(r) for _, r in runs))
    out.add_section()
    labels: dict[str, str] = {}
    for headline in headlines:
        for column in headline:
            labels.setdefault(column.key, column.label)
    owned = [{column.key for column in headline} for headline in headlines]
    for key, label in labels.items():
        out.add_row(label, *(percent(r.get(key)) if key in keys else "" for (_, r), keys in zip(runs, owned,
                                                                                              strict=True)))
    out.add_section()
    for key in COUNTS:
        out.add_row(key.replace("_", " "), *(str(r["counts"].get(key, "")) for _, r in runs))
    return out
