"""`hallurun compare`: several runs' evaluation results side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

from hallurun.eval.evaluate import EVAL_DIR, EVAL_RESULTS, EvalError
from hallurun.eval.report import LABELS, METRICS, judge_label, percent

COUNTS = ("items", "scored", "unparseable", "judge_failed", "inference_failed")


def load(run_dir: Path, judge: str | None = None) -> dict[str, Any]:
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


def table(runs: list[tuple[Path, dict[str, Any]]]) -> Table:
    """Metrics as rows, runs as columns; a metric a run's task does not have shows as blank."""
    out = Table(title="hallurun compare", title_justify="left")
    out.add_column("", style="bold")
    for run_dir, _ in runs:
        out.add_column(run_dir.name, justify="right", overflow="fold")
    for key in ("task", "model"):
        out.add_row(key, *(str(r.get(key, "")) for _, r in runs))
    out.add_row("judge", *(judge_label(r) for _, r in runs))
    out.add_section()
    keys: list[str] = []
    for _, r in runs:
        keys += [k for k in METRICS.get(r["evaluator"], ()) if k not in keys]
    for key in keys:
        out.add_row(LABELS.get(key, key), *(percent(r.get(key)) if key in METRICS.get(r["evaluator"], ()) else ""
                                             for _, r in runs))
    out.add_section()
    for key in COUNTS:
        out.add_row(key.replace("_", " "), *(str(r["counts"].get(key, "")) for _, r in runs))
    return out
